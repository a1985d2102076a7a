//! Herald behind a load balancer: real nginx (the Debian package) on loopback in front of two real
//! `herald serve` processes on one Redis, configured with `tests/nginx/herald.conf.template` — the
//! configuration the README recommends. Clients connect through nginx, one node is killed (`kill -9`), and
//! the clients come back through nginx to the other node and recover what they missed: raw protocol
//! clients under steady traffic, and the official SDKs (centrifuge-js, centrifuge-python), which reconnect
//! by themselves. centrifuge-js on HTTP streaming and SSE works through nginx's round-robin without
//! sticky sessions.
//!
//! The SDK tests need `npm ci --prefix tests/e2e/js` and
//! `python3 -m pip install -r tests/e2e/python/requirements.txt` (as `./tests/run` does); without them they
//! fail with those instructions.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use herald::testing::RedisServer;
use herald_tests::cluster::{
    Follower, HeraldProcess, Nginx, Publisher, REPO_ROOT, SdkScript, node_config,
    stop_and_check_everyone,
};
use herald_tests::{API_KEY, require_node, require_python};
use serde_json::json;

/// Two nodes on one Redis, behind nginx. The nodes believe nginx's `X-Forwarded-For`; clients may
/// publish.
async fn cluster_behind_nginx(redis: &RedisServer) -> ([HeraldProcess; 2], Nginx) {
    let config = node_config(
        &redis.url(),
        r#"
        [limits]
        trusted_proxies = ["127.0.0.1/32"]
        [channel.defaults]
        allow_publish_for_client = true
        allow_publish_for_anonymous = true
        "#,
    );
    let nodes = [
        HeraldProcess::start(&config).await,
        HeraldProcess::start(&config).await,
    ];
    let nginx = Nginx::start([nodes[0].addr, nodes[1].addr]).await;
    (nodes, nginx)
}

/// Which node holds the connections (the other one has none).
async fn holder(nodes: &[HeraldProcess; 2], connections: u64) -> usize {
    let counts = [
        nodes[0].local_clients().await,
        nodes[1].local_clients().await,
    ];
    match counts {
        [n, 0] if n == connections => 0,
        [0, n] if n == connections => 1,
        _ => panic!("expected {connections} connection(s) on one node, found {counts:?}"),
    }
}

/// The template is valid nginx configuration once its placeholders are filled in (`nginx -t`).
#[test]
fn recommended_nginx_config_is_valid() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let listen = SocketAddr::from(([127, 0, 0, 1], 8080));
    let nodes = [
        SocketAddr::from(([127, 0, 0, 1], 8001)),
        SocketAddr::from(([127, 0, 0, 1], 8002)),
    ];
    std::fs::write(
        dir.path().join("herald.conf"),
        Nginx::render_template(listen, nodes),
    )
    .expect("write");
    let conf = dir.path().join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "pid {0}/nginx.pid;\nevents {{}}\nhttp {{ include {0}/herald.conf; }}\n",
            dir.path().display()
        ),
    )
    .expect("write");
    let output = std::process::Command::new("nginx")
        .arg("-t")
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf)
        .args(["-e", "stderr"])
        .output()
        .expect("nginx runs (apt-get install nginx)");
    assert!(
        output.status.success(),
        "nginx -t: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The README's "Behind nginx" configuration is the tested template (its comment header aside).
#[test]
fn readme_shows_the_tested_nginx_config() {
    let read = |file: &str| {
        std::fs::read_to_string(Path::new(REPO_ROOT).join(file))
            .unwrap_or_else(|e| panic!("read {file}: {e}"))
    };
    let template = read("tests/nginx/herald.conf.template");
    let body = template
        .lines()
        .skip_while(|line| line.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let readme = read("README.md");
    assert!(
        readme.contains(&format!("```nginx\n{}\n```", body.trim())),
        "README.md must show tests/nginx/herald.conf.template (without its header comment) in an nginx block"
    );
}

/// Clients connected through nginx, publications flowing through nginx's `/api/`: one node is killed, its
/// clients reconnect through nginx (which skips the dead node) and recover; every client sees every
/// publication exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_come_back_through_nginx_and_recover() {
    let redis = RedisServer::start();
    let (mut nodes, nginx) = cluster_behind_nginx(&redis).await;
    let channel = "behind-nginx";
    let mut followers: Vec<Follower> = (0..6)
        .map(|i| Follower::start(&format!("#{i}"), vec![nginx.ws_url()], channel))
        .collect();
    for follower in &mut followers {
        follower
            .wait_for("the first subscribe", |log| log.first_position.is_some())
            .await;
    }
    // nginx spreads them: kill the node holding more of them.
    let on_first = nodes[0].local_clients().await;
    let on_second = nodes[1].local_clients().await;
    assert_eq!(on_first + on_second, 6, "every client is connected");
    let victim = usize::from(on_second > on_first);
    let moved = on_first.max(on_second) as usize;

    let publisher = Publisher::start(channel, vec![nginx.api_url()], Duration::from_millis(10));
    for follower in &mut followers {
        let target = follower.log().publications.len() + 10;
        follower
            .wait_for("live publications", |log| log.publications.len() >= target)
            .await;
    }
    nodes[victim].kill().await;
    let mut recovered = 0;
    for follower in &mut followers {
        // Each either stayed on the survivor or moved and recovered; both keep receiving.
        let target = follower.log().publications.len() + 10;
        let log = follower
            .wait_for("publications after the kill", |log| {
                log.publications.len() >= target
            })
            .await;
        recovered += usize::from(!log.resubscribes.is_empty());
    }
    stop_and_check_everyone(publisher, &mut followers).await;
    assert!(
        recovered >= moved,
        "{recovered} clients recovered, {moved} were on the killed node\nnginx:\n{}",
        nginx.log()
    );
    assert_eq!(nodes[1 - victim].local_clients().await, 6);
}

/// Runs an SDK failover script through nginx: the script subscribes and sees live publications, then
/// prints `STEP failover`; the test freezes the node the SDK is connected to, publishes n=4..7 through the
/// other node (so they are surely missed), and kills the frozen node. The SDK must reconnect through nginx
/// by itself and recover exactly n=4..7 (`recovered: true`, contiguous offsets), then get n=8 live.
async fn sdk_failover(program: &str, script: &str, channel: &str) {
    let redis = RedisServer::start();
    let (mut nodes, nginx) = cluster_behind_nginx(&redis).await;
    let mut run = SdkScript::start(
        program,
        script,
        &[
            ("HERALD_WS_URL", nginx.ws_url()),
            ("HERALD_API_URL", nginx.api_url()),
            ("HERALD_API_KEY", API_KEY.to_owned()),
            ("HERALD_CHANNEL", channel.to_owned()),
        ],
    );
    run.wait_for_line("STEP failover").await;
    let victim = holder(&nodes, 1).await;
    nodes[victim].freeze().await;
    for n in 4..=7 {
        let (status, body) = nodes[1 - victim]
            .api(
                "publish",
                json!({"channel": channel, "data": {"n": n}, "idempotency_key": format!("{channel}-{n}")}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    nodes[victim].kill().await;
    run.assert_passes().await;
}

/// centrifuge-js through nginx survives `kill -9` of its node and recovers exactly what it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn centrifuge_js_fails_over_through_nginx() {
    require_node(&["centrifuge", "ws"]).await;
    sdk_failover("node", "tests/e2e/js/failover.js", "sdk-js-failover").await;
}

/// centrifuge-python through nginx does the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn centrifuge_python_fails_over_through_nginx() {
    require_python("centrifuge").await;
    sdk_failover(
        "python3",
        "tests/e2e/python/failover.py",
        "sdk-python-failover",
    )
    .await;
}

/// centrifuge-js on HTTP streaming and on SSE through nginx's round-robin, without sticky sessions: the
/// stream stays on one node while the commands land on either, and the node that does not hold the session
/// passes them on through Redis. Connect, subscribe, publish, a server-side disconnect and recovery; the
/// Protobuf build's commands too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn centrifuge_js_emulation_needs_no_sticky_sessions() {
    require_node(&["centrifuge", "ws", "eventsource"]).await;
    let redis = RedisServer::start();
    let (_nodes, nginx) = cluster_behind_nginx(&redis).await;
    for (transport, protocol) in [
        ("http_stream", "json"),
        ("sse", "json"),
        ("http_stream", "protobuf"),
    ] {
        let run = SdkScript::start(
            "node",
            "tests/e2e/js/emulation.js",
            &[
                ("HERALD_BASE_URL", format!("http://{}", nginx.addr)),
                ("HERALD_API_URL", nginx.api_url()),
                ("HERALD_API_KEY", API_KEY.to_owned()),
                ("HERALD_CHANNEL", format!("balanced-{transport}-{protocol}")),
                ("HERALD_TRANSPORT", transport.to_owned()),
                ("HERALD_PROTOCOL", protocol.to_owned()),
            ],
        );
        run.assert_passes().await;
    }
}
