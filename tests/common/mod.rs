//! Test helpers: a real Herald server on a free loopback port, a raw Centrifugo-protocol WebSocket client
//! and a server API client. Every wait is bounded by [`WAIT`] so a broken server fails a test instead of
//! hanging it; nothing here sleeps for a fixed time.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald::config::Config;
use herald::node::Node;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub mod cluster;
pub mod pusher;
pub mod webhooks;

/// Upper bound for any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(10);

/// The API key test servers use.
pub const API_KEY: &str = "test-api-key";

/// The Pusher app of [`PUSHER_CONFIG`]: its id, key and secret.
pub const PUSHER_APP_ID: &str = "1";
/// See [`PUSHER_APP_ID`].
pub const PUSHER_KEY: &str = "herald-key";
/// See [`PUSHER_APP_ID`].
pub const PUSHER_SECRET: &str = "herald-secret";
/// Configuration that serves one Pusher app, with client events on.
pub const PUSHER_CONFIG: &str = r#"
    [pusher]
    app_id = "1"
    key = "herald-key"
    secret = "herald-secret"
    client_events = true
"#;

/// A config with an API key, anonymous connect and an open top-level namespace with history; `extra` TOML
/// is merged over it (later keys win).
pub fn config(extra: &str) -> Config {
    let base = format!(
        r#"
        address = "127.0.0.1:0"
        shutdown_timeout = "5s"
        [client]
        allow_anonymous = true
        [http_api]
        key = "{API_KEY}"
        # Every test client comes from 127.0.0.1: per-address limits are raised except where a test sets them.
        [limits]
        max_connections_per_ip = 100000
        connections_per_second_per_ip = 100000
        commands_per_second = 100000
        command_burst = 100000
        api_requests_per_second_per_ip = 100000
        [channel.defaults]
        history_size = 100
        history_ttl = "5m"
        allow_recovery = true
        allow_positioning = true
        presence = true
        join_leave = true
        allow_subscribe_for_client = true
        allow_subscribe_for_anonymous = true
        allow_history_for_subscriber = true
        allow_history_for_anonymous = true
        allow_presence_for_subscriber = true
        allow_presence_for_anonymous = true
        "#
    );
    let mut merged: toml::Table = base.parse().expect("base config");
    let extra: toml::Table = extra.parse().expect("test config TOML");
    merge(&mut merged, extra);
    Config::from_toml(&toml::to_string(&merged).expect("serialise config"))
        .expect("valid test config")
}

fn merge(into: &mut toml::Table, from: toml::Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

/// A running server.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its core, for direct inspection.
    pub node: Arc<Node>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    /// Starts a server with [`config`]`(extra)`.
    pub async fn start(extra: &str) -> Self {
        Self::start_with(config(extra)).await
    }

    /// Starts a server with exactly this configuration (its address is replaced by a free port).
    pub async fn start_with(config: Config) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let node = herald::server::start(config).await.expect("node");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(herald::server::run(node.clone(), listener, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            node,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Starts a server on the Redis engine at `redis_url`, with connect and command timeouts short enough
    /// that an outage shows within a test's wait; `extra` as for [`TestServer::start`].
    pub async fn start_on_redis(redis_url: &str, extra: &str) -> Self {
        let mut merged: toml::Table = format!(
            r#"
            [engine]
            type = "redis"
            [engine.redis]
            addresses = ["{redis_url}"]
            connect_timeout = "500ms"
            command_timeout = "1s"
            "#
        )
        .parse()
        .expect("redis engine config");
        merge(&mut merged, extra.parse().expect("test config TOML"));
        Self::start(&toml::to_string(&merged).expect("serialise config")).await
    }

    /// `ws://…/connection/websocket`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/connection/websocket", self.addr)
    }

    /// `http://…/api`.
    pub fn api_url(&self) -> String {
        format!("http://{}/api", self.addr)
    }

    /// Calls an API method with the right key; returns the HTTP status and the JSON body.
    pub async fn api(&self, method: &str, body: Value) -> (u16, Value) {
        let response = reqwest::Client::new()
            .post(format!("{}/{method}", self.api_url()))
            .header("X-API-Key", API_KEY)
            .json(&body)
            .send()
            .await
            .expect("api request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("api body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Publishes through the API and returns the result object.
    pub async fn publish(&self, channel: &str, data: Value) -> Value {
        let (status, body) = self
            .api("publish", json!({"channel": channel, "data": data}))
            .await;
        assert_eq!(status, 200, "{body}");
        body.get("result")
            .cloned()
            .unwrap_or_else(|| panic!("publish failed: {body}"))
    }

    /// `GET /api/plugins` with the right key; its `result`.
    pub async fn plugins_status(&self) -> Value {
        let response = reqwest::Client::new()
            .get(format!("{}/plugins", self.api_url()))
            .header("X-API-Key", API_KEY)
            .send()
            .await
            .expect("GET /api/plugins");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        assert_eq!(status, 200, "GET /api/plugins: {text}");
        let body: Value = serde_json::from_str(&text).expect("JSON from /api/plugins");
        body.get("result")
            .cloned()
            .unwrap_or_else(|| panic!("/api/plugins has no result: {body}"))
    }

    /// Triggers shutdown and waits for the server to finish.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().expect("running");
        tokio::time::timeout(WAIT, task)
            .await
            .expect("shutdown within bound")
            .expect("server task")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// What the server sent, as seen by [`Client`].
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// One JSON document (a frame may hold several).
    Json(Value),
    /// A close frame.
    Close(u16, String),
    /// A WebSocket ping frame.
    Ping,
}

/// A raw Centrifugo-protocol client over tokio-tungstenite.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u32,
    pending: VecDeque<Value>,
    /// Answer `{}` pings with `{}` automatically while waiting for replies.
    pub auto_pong: bool,
}

impl Client {
    /// Opens a WebSocket to the server (no `connect` command yet).
    pub async fn open(server: &TestServer) -> Self {
        Self::open_url(&server.ws_url()).await
    }

    /// Opens a WebSocket to a URL.
    pub async fn open_url(url: &str) -> Self {
        Self::open_with_headers(url, &[]).await
    }

    /// Opens a WebSocket to a URL with extra request headers (a browser's cookie, say).
    pub async fn open_with_headers(url: &str, headers: &[(&'static str, &str)]) -> Self {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = url.into_client_request().expect("a WebSocket URL");
        for (name, value) in headers {
            let value = value.parse().expect("a header value");
            request.headers_mut().insert(*name, value);
        }
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
            .await
            .expect("ws open in time")
            .expect("ws open");
        Self {
            ws,
            next_id: 0,
            pending: VecDeque::new(),
            auto_pong: true,
        }
    }

    /// Opens and sends `connect`, returning the connect result.
    pub async fn connect(server: &TestServer) -> (Self, Value) {
        let mut client = Self::open(server).await;
        let reply = client.command("connect", json!({})).await;
        let result = reply
            .get("connect")
            .cloned()
            .unwrap_or_else(|| panic!("connect failed: {reply}"));
        (client, result)
    }

    /// Sends a text frame as is.
    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    /// Sends any WebSocket message.
    pub async fn send_message(&mut self, message: Message) {
        self.ws.send(message).await.expect("send");
    }

    /// Allocates the next command id.
    pub fn next_id(&mut self) -> u32 {
        self.next_id += 1;
        self.next_id
    }

    /// Sends `{"id":N,"<method>":body}` and waits for the reply with that id; pushes received meanwhile
    /// are kept for [`Client::next_push`].
    pub async fn command(&mut self, method: &str, body: Value) -> Value {
        let id = self.next_id();
        let mut command = serde_json::Map::new();
        command.insert("id".into(), id.into());
        command.insert(method.into(), body);
        self.send_text(&Value::Object(command).to_string()).await;
        self.reply(id).await
    }

    /// Like [`Client::command`], but the reply must be the very next message (nothing may arrive first).
    pub async fn call(&mut self, method: &str, body: Value) -> Value {
        let id = self.next_id();
        let mut command = serde_json::Map::new();
        command.insert("id".into(), id.into());
        command.insert(method.into(), body);
        self.send_text(&Value::Object(command).to_string()).await;
        let reply = self.next_json().await;
        assert_eq!(
            reply["id"], id,
            "expected the reply to {method} #{id} first, got {reply}"
        );
        reply
    }

    /// Waits for the reply to command `id`.
    pub async fn reply(&mut self, id: u32) -> Value {
        let is_reply = |v: &Value| v.get("id").and_then(Value::as_u64) == Some(id.into());
        loop {
            if let Some(i) = self.pending.iter().position(is_reply) {
                return self.pending.remove(i).expect("present");
            }
            if let Some(other) = self.read_socket().await {
                panic!("waiting for reply {id}, got {other:?}");
            }
        }
    }

    /// Next push (or reply) not yet consumed, skipping pings.
    pub async fn next_json(&mut self) -> Value {
        if let Some(v) = self.pending.pop_front() {
            return v;
        }
        match self.receive().await {
            Received::Json(v) => v,
            other => panic!("waiting for a message, got {other:?}"),
        }
    }

    /// Next `push` object (`{"channel":…,"pub":…}` etc.).
    pub async fn next_push(&mut self) -> Value {
        let v = self.next_json().await;
        v.get("push")
            .cloned()
            .unwrap_or_else(|| panic!("expected a push, got {v}"))
    }

    /// Receives the next item: one JSON document, a close or a ping. `{}` pings are answered when
    /// `auto_pong` is set and then skipped.
    pub async fn receive(&mut self) -> Received {
        loop {
            if let Some(v) = self.pending.pop_front() {
                return Received::Json(v);
            }
            if let Some(other) = self.read_socket().await {
                return other;
            }
        }
    }

    /// Reads one WebSocket message: JSON documents go to `pending` (answering `{}` pings when `auto_pong`
    /// is set); a close or ping frame is returned.
    async fn read_socket(&mut self) -> Option<Received> {
        let message = tokio::time::timeout(WAIT, self.ws.next())
            .await
            .expect("message in time");
        match message {
            None => Some(Received::Close(1006, "stream ended".into())),
            Some(Err(e)) => Some(Received::Close(1006, format!("error: {e}"))),
            Some(Ok(Message::Text(text))) => {
                assert!(!text.is_empty(), "empty frame");
                for line in text.split('\n') {
                    let value: Value = serde_json::from_str(line)
                        .unwrap_or_else(|e| panic!("bad line {line:?}: {e}"));
                    if value == json!({}) && self.auto_pong {
                        self.send_text("{}").await;
                        continue;
                    }
                    self.pending.push_back(value);
                }
                None
            }
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) = frame
                    .map(|CloseFrame { code, reason }| (u16::from(code), reason.to_string()))
                    .unwrap_or((1005, String::new()));
                // The library queued the answer to the close; send it now, as browsers do, so the server
                // completes the close handshake instead of waiting for it.
                let _ = self.ws.flush().await;
                Some(Received::Close(code, reason))
            }
            Some(Ok(Message::Ping(_))) => Some(Received::Ping),
            Some(Ok(_)) => None,
        }
    }

    /// Reads until the server closes; returns the close code and reason (pushes before it are dropped).
    pub async fn expect_close(&mut self) -> (u16, String) {
        self.pending.clear();
        loop {
            match self.receive().await {
                Received::Close(code, reason) => return (code, reason),
                Received::Json(_) => self.pending.clear(),
                Received::Ping => {}
            }
        }
    }

    /// Sends a WebSocket ping and waits for the matching pong.
    pub async fn ping_pong(&mut self, payload: &'static [u8]) {
        self.ws
            .send(Message::Ping(Bytes::from_static(payload)))
            .await
            .expect("send ping");
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("pong in time");
            match message {
                Some(Ok(Message::Pong(p))) => {
                    assert_eq!(&p[..], payload);
                    return;
                }
                Some(Ok(_)) => {}
                other => panic!("no pong: {other:?}"),
            }
        }
    }

    /// Subscribes and returns the reply.
    pub async fn subscribe(&mut self, body: Value) -> Value {
        self.command("subscribe", body).await
    }
}

/// The `pub` of a publication push, asserting the channel.
pub fn publication(push: &Value, channel: &str) -> Value {
    assert_eq!(push["channel"], channel, "{push}");
    push.get("pub")
        .cloned()
        .unwrap_or_else(|| panic!("not a publication: {push}"))
}

/// The workspace's target folder (`CARGO_TARGET_DIR` when set).
pub fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// The plugin crate `crate_name` built to WebAssembly by `plugins/build`, failing with how to build it when
/// missing.
pub fn built_plugin(crate_name: &str) -> Vec<u8> {
    let path = target_dir()
        .join("wasm32-wasip2/plugin")
        .join(format!("{}.wasm", crate_name.replace('-', "_")));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "plugin {} is missing ({e}): run `./plugins/build` in the workspace first",
            path.display()
        )
    })
}

/// Serves `app` on a free loopback port for the rest of the test (a backend for plugins to ask); its
/// address.
pub async fn serve_loopback(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("its address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A fresh plugin folder holding the scripted test plugin with `script` as its configuration (see
/// `tests/plugins/scripted`), and the `[plugins]` TOML that loads it.
pub fn scripted_plugin(script: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("plugin dir");
    std::fs::write(
        dir.path().join("scripted.wasm"),
        built_plugin("herald-test-scripted"),
    )
    .expect("write plugin");
    std::fs::write(dir.path().join("scripted.toml"), script).expect("write plugin config");
    let toml = format!(
        "[plugins]\ndir = {:?}\n",
        dir.path().to_str().expect("utf-8 path")
    );
    (dir, toml)
}

/// Runs an end-to-end script (stdin closed, killed if the test ends) and asserts it exits 0 and reports
/// `PASS`, printing its output otherwise; `what` names it in failures.
pub async fn assert_script_passes(command: &mut tokio::process::Command, what: &str) {
    const SCRIPT_WAIT: Duration = Duration::from_secs(90);
    let run = command
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(SCRIPT_WAIT, run)
        .await
        .unwrap_or_else(|_| panic!("`{what}` did not finish within {SCRIPT_WAIT:?}"))
        .unwrap_or_else(|e| panic!("cannot start `{what}`: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "`{what}` failed with {}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("PASS"),
        "`{what}` exited 0 without reporting PASS\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    );
}

/// Fails (never skips) unless `node` runs and these npm packages of the end-to-end tests are installed.
pub async fn require_node(packages: &[&str]) {
    const INSTALL: &str =
        "install Node 20+ and run `npm ci --prefix tests/e2e/js` in the repository root";
    match probe("node", &["--version"]).await {
        Ok((true, _)) => {}
        Ok((false, out)) => panic!("`node --version` failed: {out}\n{INSTALL}"),
        Err(e) => panic!("node is not available ({e}); {INSTALL}"),
    }
    for package in packages {
        let manifest = std::path::Path::new(cluster::REPO_ROOT)
            .join(format!("tests/e2e/js/node_modules/{package}/package.json"));
        assert!(
            manifest.is_file(),
            "{} is missing: the JS e2e dependencies are not installed; {INSTALL}",
            manifest.display()
        );
    }
}

/// Fails (never skips) unless `python3` can import these modules (`"centrifuge, websockets"`).
pub async fn require_python(modules: &str) {
    const INSTALL: &str = "install Python 3.11 and run \
        `python3 -m pip install -r tests/e2e/python/requirements.txt` in the repository root";
    match probe("python3", &["-c", &format!("import {modules}")]).await {
        Ok((true, _)) => {}
        Ok((false, out)) => panic!("`import {modules}` failed:\n{out}\n{INSTALL}"),
        Err(e) => panic!("python3 is not available ({e}); {INSTALL}"),
    }
}

/// Runs `program args…` in the repository root: whether it succeeded, with its output; `Err` when it
/// cannot be started.
async fn probe(program: &str, args: &[&str]) -> Result<(bool, String), std::io::Error> {
    let output = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(program)
            .args(args)
            .current_dir(cluster::REPO_ROOT)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("`{program} {args:?}` did not finish in time"))?;
    Ok((
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    ))
}

/// Runs Prometheus' `promtool` (Debian package `prometheus`) with `args` in `dir`, `input` on its standard
/// input: everything it printed, as `Err` when it refused.
pub fn promtool(args: &[&str], dir: &std::path::Path, input: &str) -> Result<String, String> {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) is installed");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write to promtool");
    let output = child.wait_with_output().expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}
