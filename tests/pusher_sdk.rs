//! End to end with the real Pusher libraries against Herald's Pusher Channels (protocol 7) adapter:
//! `tests/e2e/js/pusher.js` drives pusher-js 8.6 clients and the `pusher` Node server library 5.3 (public and
//! private channels, socket_id exclusion, client events, a failed channel auth, Herald's own API publishing to
//! Pusher clients, channel queries, the 10 KiB data limit, a wrong secret, and presence: pusher-js's
//! `members`, member_added / member_removed once per user, the users and user_count queries),
//! `tests/e2e/js/echo.mjs` drives Laravel Echo 2.5 on pusher-js (`listen` with and without the `App.Events`
//! namespace, a private channel with a whisper, `join` with `here` / `joining` / `leaving`, `toOthers()`), and
//! `tests/e2e/python/pusher_api.py` drives the `pusher` Python server library 3.3 with a raw protocol-7
//! WebSocket client (trigger, trigger_batch, channel queries signed with body_md5 on GETs, a wrong secret,
//! ping/pong, a presence channel signed by the library's `authenticate`), and `tests/e2e/js/pusher-data.js`
//! checks that data keeps its JavaScript type between pusher-js, centrifuge-js, the `pusher` library's
//! triggers and Herald's API, and `tests/e2e/js/pusher-flood.js` that a flooding pusher-js client is told
//! 4100. All run as child processes against a real Herald.
//!
//! They need Node 20+ with `npm ci --prefix tests/e2e/js` done, and Python 3.11 with
//! `python3 -m pip install -r tests/e2e/python/requirements.txt`. A missing toolchain or dependency fails the
//! test with those instructions; it is never skipped.

use herald_tests::{
    API_KEY, PUSHER_APP_ID as APP_ID, PUSHER_CONFIG, PUSHER_KEY as APP_KEY,
    PUSHER_SECRET as APP_SECRET, TestServer, require_node, require_python, scripted_plugin,
};
use tokio::process::Command;

/// The repository root, where the scripts' relative paths start.
const REPO_ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// Runs one scenario script against `server` and asserts exit status 0 and PASS, printing the script's
/// stdout and stderr otherwise.
async fn run_scenario(server: &TestServer, program: &str, script: &str) {
    let mut run = Command::new(program);
    run.arg(script)
        .current_dir(REPO_ROOT)
        .env("HERALD_PUSHER_HOST", server.addr.ip().to_string())
        .env("HERALD_PUSHER_PORT", server.addr.port().to_string())
        .env("HERALD_PUSHER_APP_ID", APP_ID)
        .env("HERALD_PUSHER_KEY", APP_KEY)
        .env("HERALD_PUSHER_SECRET", APP_SECRET)
        .env("HERALD_WS_URL", server.ws_url())
        .env("HERALD_API_URL", server.api_url())
        .env("HERALD_API_KEY", API_KEY)
        .env("PYTHONUNBUFFERED", "1");
    herald_tests::assert_script_passes(&mut run, &format!("{program} {script}")).await;
}

/// pusher-js 8.6 and the Node `pusher` library 5.3, as a Laravel app would use them: subscriptions to public
/// and private channels (authorised by the library's `authorizeChannel`), triggers with and without
/// `socket_id`, client events to the other subscriber only, a wrong channel signature failing that channel
/// alone (401) with the connection kept, a native Herald publish arriving as a Pusher event, channel
/// queries, 413 above 10 KiB and 401 for a wrong secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pusher_js_and_the_node_server_library_work_unchanged() {
    require_node(&["pusher-js", "pusher"]).await;
    let server = TestServer::start(PUSHER_CONFIG).await;
    run_scenario(&server, "node", "tests/e2e/js/pusher.js").await;
}

/// Data keeps its type between the protocols: centrifuge-js 5.8 and Herald's API publishing strings that spell
/// JSON (`"123"`, `"true"`, `"{\"a\":1}"`, `" 1 "`), other strings, numbers, booleans, null, objects and arrays
/// reach pusher-js 8.6 as the same JavaScript value; the Node `pusher` library's triggers reach pusher-js as
/// hosted Pusher delivers them and centrifuge-js as the same value; pusher-js client events reach the other
/// pusher-js client and centrifuge-js unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_keeps_its_type_between_pusher_js_and_centrifuge_js() {
    require_node(&["pusher-js", "pusher", "centrifuge", "ws"]).await;
    // centrifuge-js subscribes to the private channel as a plugin allows it (the channel policy refuses a
    // Pusher private channel to a Centrifugo client nothing vouches for).
    let (_plugins, plugins) = scripted_plugin("allow_subscribe = [\"private-lossless\"]\n");
    let server = TestServer::start(&format!(
        "{PUSHER_CONFIG}\n[channel.defaults]\nallow_publish_for_subscriber = true\n\
         allow_publish_for_anonymous = true\n{plugins}"
    ))
    .await;
    run_scenario(&server, "node", "tests/e2e/js/pusher-data.js").await;
}

/// A pusher-js 8.6 client flooding events past the message rate is closed with 4100 (over capacity, reconnect
/// after a backoff) and reports that code, not 1006: the server reads and drops the rest of the flood after its
/// close frame instead of resetting the connection under the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_pusher_js_client_is_told_4100() {
    require_node(&["pusher-js"]).await;
    let server = TestServer::start(&format!(
        "{PUSHER_CONFIG}\n[limits]\ncommands_per_second = 1\ncommand_burst = 1\n\
         disconnect_after_refused_commands = 3000"
    ))
    .await;
    run_scenario(&server, "node", "tests/e2e/js/pusher-flood.js").await;
}

/// Laravel Echo 2.5 (`broadcaster: 'pusher'` on pusher-js 8.6) as a Laravel front end uses it, with the Node
/// `pusher` library as the backend: `listen('.OrderShipped')` and the namespaced `listen('OrderShipped')`
/// (event `App\Events\OrderShipped`), a private channel through Echo's `authorizer` with a whisper to the
/// other instance only, `join` with `here` / `joining` / `leaving`, and `toOthers()` (`socket_id` from
/// `Echo.socketId()`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn laravel_echo_works_unchanged() {
    require_node(&["laravel-echo", "pusher-js", "pusher"]).await;
    let server = TestServer::start(PUSHER_CONFIG).await;
    run_scenario(&server, "node", "tests/e2e/js/echo.mjs").await;
}

/// The Python `pusher` library 3.3 with a raw protocol-7 WebSocket client: handshake, public and private
/// subscriptions (auth from the library's `authenticate`), `trigger`, `trigger_batch`, `channels_info` and
/// `channel_info` (GETs signed with `body_md5`), `PusherBadAuth` for a wrong secret, and ping/pong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_server_library_and_a_raw_client_work_unchanged() {
    require_python("pusher, websockets.asyncio.client").await;
    let server = TestServer::start(PUSHER_CONFIG).await;
    run_scenario(&server, "python3", "tests/e2e/python/pusher_api.py").await;
}
