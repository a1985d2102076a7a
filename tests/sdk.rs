//! End to end with the official SDKs, run as child processes against a real Herald: the recovery scenarios
//! `tests/e2e/js/recover.js` (centrifuge-js) and `tests/e2e/python/recover.py` (centrifuge-python) in JSON
//! and Protobuf, a mixed JSON/Protobuf channel (`mixed.js`), delta compression (`delta.js`), all of them
//! with permessage-deflate too, and the server API through `cent` (`cent_api.py`).
//!
//! They need Node 20+ with `npm ci --prefix tests/e2e/js` done, and Python 3.11 with
//! `python3 -m pip install -r tests/e2e/python/requirements.txt`. A missing toolchain or dependency fails the
//! test with those instructions; it is never skipped.

use herald_tests::{API_KEY, TestServer, require_node, require_python};
use tokio::process::Command;

/// The repository root, where the scripts' relative paths start.
const REPO_ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// Compression on for every message (`min_size = 0`): what the SDK tests run with to go compressed.
const DEFLATE_EVERYTHING: &str = "[websocket.compression]\nenabled = true\nmin_size = 0";

/// What a scenario script is told to run its SDK in the Protobuf encoding.
const PROTOBUF: &[(&str, &str)] = &[("HERALD_PROTOCOL", "protobuf")];

/// Runs one SDK scenario script against `server` on `channel`, with `env` besides the usual variables, and
/// asserts exit status 0, printing the script's stdout and stderr otherwise.
async fn run_scenario(
    server: &TestServer,
    program: &str,
    script: &str,
    channel: &str,
    env: &[(&str, &str)],
) {
    let mut run = Command::new(program);
    run.envs(env.iter().copied());
    run.arg(script)
        .current_dir(REPO_ROOT)
        .env("HERALD_WS_URL", server.ws_url())
        .env("HERALD_API_URL", server.api_url())
        .env("HERALD_API_KEY", API_KEY)
        .env("HERALD_CHANNEL", channel)
        .env("PYTHONUNBUFFERED", "1");
    herald_tests::assert_script_passes(&mut run, &format!("{program} {script}")).await;
}

/// centrifuge-js 5.8 connects, receives live publications with contiguous offsets, survives a forced
/// reconnect (API disconnect 3011) and recovers exactly the publications it missed, without duplicates.
#[tokio::test]
async fn centrifuge_js_recovers_after_forced_reconnect() {
    require_node(&["centrifuge", "ws"]).await;
    let server = TestServer::start("").await;
    run_scenario(
        &server,
        "node",
        "tests/e2e/js/recover.js",
        "e2e-js-recover",
        &[],
    )
    .await;
}

/// centrifuge-js's Protobuf build does the same over binary frames.
#[tokio::test]
async fn centrifuge_js_protobuf_recovers_after_forced_reconnect() {
    require_node(&["centrifuge", "ws"]).await;
    let server = TestServer::start("").await;
    run_scenario(
        &server,
        "node",
        "tests/e2e/js/recover.js",
        "e2e-js-protobuf-recover",
        PROTOBUF,
    )
    .await;
}

/// centrifuge-python 0.7 does the same: live delivery, forced reconnect, exact recovery, no duplicates.
#[tokio::test]
async fn centrifuge_python_recovers_after_forced_reconnect() {
    require_python("centrifuge, websockets").await;
    let server = TestServer::start("").await;
    run_scenario(
        &server,
        "python3",
        "tests/e2e/python/recover.py",
        "e2e-python-recover",
        &[],
    )
    .await;
}

/// centrifuge-python in Protobuf mode (`use_protobuf=True`) does the same.
#[tokio::test]
async fn centrifuge_python_protobuf_recovers_after_forced_reconnect() {
    require_python("centrifuge, websockets").await;
    let server = TestServer::start("").await;
    run_scenario(
        &server,
        "python3",
        "tests/e2e/python/recover.py",
        "e2e-python-protobuf-recover",
        PROTOBUF,
    )
    .await;
}

/// One channel, a JSON and a Protobuf subscriber (centrifuge-js and its Protobuf build): publications from
/// the API, the JSON client and the Protobuf client reach both, in the same order with the same data and
/// offsets; a Protobuf publish of bytes that are not JSON is refused with 107 and reaches nobody.
#[tokio::test]
async fn json_and_protobuf_subscribers_share_a_channel() {
    require_node(&["centrifuge", "ws"]).await;
    let server = TestServer::start(
        "[channel.defaults]\nallow_publish_for_subscriber = true\nallow_publish_for_anonymous = true",
    )
    .await;
    run_scenario(&server, "node", "tests/e2e/js/mixed.js", "e2e-mixed", &[]).await;
}

/// cent 5.2 (Centrifugo's Python server API library), sync and async clients: every method of its set
/// against a real Herald, each result checked against what Herald did to two connected centrifuge-python
/// clients; the Centrifugo PRO methods are answered with 104.
#[tokio::test]
async fn cent_drives_every_server_api_method() {
    require_python("cent, centrifuge, websockets").await;
    let server = TestServer::start("").await;
    run_scenario(
        &server,
        "python3",
        "tests/e2e/python/cent_api.py",
        "e2e-cent",
        &[],
    )
    .await;
}

/// permessage-deflate with the real clients: `ws` (under centrifuge-js, JSON and Protobuf) and Python's
/// `websockets` (under centrifuge-python) offer it, Herald takes it, and every message, both ways,
/// compressed: the mixed channel and recovery scenarios pass byte for byte, with shared compression and
/// with per-connection context takeover.
#[tokio::test]
async fn sdks_work_compressed() {
    require_node(&["centrifuge", "ws"]).await;
    require_python("centrifuge, websockets").await;
    for takeover in [false, true] {
        let server = TestServer::start(&format!(
            "{DEFLATE_EVERYTHING}\ncontext_takeover = {takeover}\n[channel.defaults]\nallow_publish_for_subscriber = true\nallow_publish_for_anonymous = true"
        ))
        .await;
        scenarios_pass_compressed(&server).await;
    }
}

/// The mixed channel (checking that `ws` negotiated compression) and centrifuge-python's recovery.
async fn scenarios_pass_compressed(server: &TestServer) {
    run_scenario(
        server,
        "node",
        "tests/e2e/js/mixed.js",
        "e2e-deflate-mixed",
        &[("HERALD_EXPECT_DEFLATE", "1")],
    )
    .await;
    run_scenario(
        server,
        "python3",
        "tests/e2e/python/recover.py",
        "e2e-deflate-python-recover",
        PROTOBUF,
    )
    .await;
}

/// The namespace the delta scenario publishes in: fossil deltas allowed, with history for recovery.
const DELTA_NAMESPACE: &str = r#"
[channel.namespaces.deltas]
history_size = 100
history_ttl = "5m"
allow_recovery = true
allow_positioning = true
allow_subscribe_for_client = true
allow_subscribe_for_anonymous = true
allowed_delta_types = ["fossil"]
"#;

/// Delta compression with centrifuge-js (`delta: 'fossil'`), JSON and Protobuf builds, beside a plain
/// subscriber: a stream of slowly changing documents arrives byte-exact, mostly as deltas, through a
/// forced reconnect and recovery; a namespace without `allowed_delta_types` refuses it with 107. Run with
/// permessage-deflate on as well, so the two compressions are checked together.
#[tokio::test]
async fn delta_compression_is_byte_exact() {
    require_node(&["centrifuge", "ws"]).await;
    for extra in ["", DEFLATE_EVERYTHING] {
        let server = TestServer::start(&format!("{DELTA_NAMESPACE}\n{extra}")).await;
        run_scenario(
            &server,
            "node",
            "tests/e2e/js/delta.js",
            "deltas:doc",
            &[("HERALD_PLAIN_CHANNEL", "doc")],
        )
        .await;
    }
}
