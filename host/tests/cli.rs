//! The `herald` binary: configuration checking, signal-driven graceful shutdown, and reloading the
//! configuration file's Pusher apps.

use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald::config::FOREIGN_VARIABLE_EXAMPLES;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

const HERALD: &str = env!("CARGO_BIN_EXE_herald");
const WAIT: Duration = Duration::from_secs(10);

fn write_config(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
    file
}

/// Runs the binary to completion; whether it succeeded and everything it printed.
fn herald<I, S>(args: I) -> (bool, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let output = std::process::Command::new(HERALD)
        .args(args)
        .env_remove("HERALD_HTTP_API__KEY")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn check_config(text: &str) -> (bool, String) {
    let file = write_config(text);
    herald([
        std::ffi::OsStr::new("check-config"),
        file.path().as_os_str(),
    ])
}

/// Starts `herald serve` on a free port and waits until it listens; returns the child, its port and the
/// log lines printed until it listened (the `herald listening` line included).
async fn serve(
    configure: impl FnOnce(&mut tokio::process::Command),
) -> (tokio::process::Child, u16, Vec<String>) {
    let (child, port, seen, _) = serve_logging(configure).await;
    (child, port, seen)
}

/// As [`serve`], with the log lines printed after it listened, as they come.
async fn serve_logging(
    configure: impl FnOnce(&mut tokio::process::Command),
) -> (
    tokio::process::Child,
    u16,
    Vec<String>,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut command = tokio::process::Command::new(HERALD);
    command
        .args(["serve", "--address", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    configure(&mut command);
    let mut child = command.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let listening = line.contains("herald listening");
            seen.push(line);
            if listening {
                return;
            }
        }
        panic!("herald exited before listening: {seen:#?}");
    })
    .await
    .expect("herald starts");
    // Keep draining the log so the child never blocks on a full pipe, whether or not anyone reads it.
    let (later, later_lines) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = later.send(line);
        }
    });
    (child, port, seen, later_lines)
}

/// `herald serve --config FILE` reloads the file's Pusher apps on SIGHUP and when the file changes: a
/// disabled app's open connection is closed with 4003.
#[tokio::test]
async fn serve_reloads_its_pusher_apps_on_sighup_and_when_the_file_changes() {
    let app = |enabled: bool| {
        format!(
            "[[pusher.apps]]\nid = \"2\"\nkey = \"key-two\"\nsecret = \"secret-two\"\nenabled = {enabled}\n"
        )
    };
    let file = write_config(&app(true));
    let path = file.path().to_owned();
    let (child, port, _, mut log) = serve_logging(|command| {
        command.arg("--config").arg(&path);
    })
    .await;
    let url = format!("ws://127.0.0.1:{port}/app/key-two?protocol=7");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let established = ws.next().await.unwrap().unwrap();
    assert!(
        established
            .to_text()
            .unwrap()
            .contains("pusher:connection_established"),
        "{established:?}"
    );

    let pid = child.id().unwrap().to_string();
    let hangup = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(hangup.success());
    tokio::time::timeout(WAIT, async {
        while let Some(line) = log.recv().await {
            if line.contains("configuration reloaded") {
                return;
            }
        }
        panic!("herald exited");
    })
    .await
    .expect("SIGHUP reloads the file");

    std::fs::write(&path, app(false)).unwrap();
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(frame)))) => return u16::from(frame.code),
                Some(Ok(_)) => continue,
                other => panic!("no close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("closed in time");
    assert_eq!(closed, 4003);
}

/// A valid file passes; the embedded default (printed by `default-config`) is itself valid.
#[test]
fn check_config_accepts_valid_files() {
    let (ok, out) = check_config("[client]\nallow_anonymous = true\n");
    assert!(ok, "{out}");
    let (ok, default) = herald(["default-config"]);
    assert!(ok, "{default}");
    let (ok, out) = check_config(&default);
    assert!(ok, "{out}");
}

/// Problems are reported with the key they concern, and the exit status says so.
#[test]
fn check_config_names_the_wrong_key() {
    for (config, key) in [
        (
            "[client]\nping_interval = \"soon\"\n",
            "client.ping_interval",
        ),
        ("[client]\nping_intervall = \"5s\"\n", "ping_intervall"),
        (
            "[channel.namespaces.chat]\nallow_recovery = true\n",
            "channel.namespaces.chat",
        ),
        (
            "[channel.defaults]\nchannel_regex = \"(\"\n",
            "channel.defaults.channel_regex",
        ),
        ("address = 5\n", "address"),
    ] {
        let (ok, out) = check_config(config);
        assert!(!ok, "{config} was accepted");
        assert!(out.contains(key), "{config}: {out}");
    }
}

/// Insecure settings are accepted with a warning.
#[test]
fn check_config_warns_about_insecure_settings() {
    let (ok, out) = check_config(
        "[http_api]\ninsecure = true\n[channel.defaults]\nallow_publish_for_anonymous = true\n",
    );
    assert!(ok, "{out}");
    assert!(out.contains("warning: http_api.insecure"), "{out}");
    assert!(out.contains("allow_publish_for_anonymous"), "{out}");
}

/// SIGTERM closes connected clients with 3001 (they reconnect elsewhere) and the process exits cleanly.
#[tokio::test]
async fn sigterm_closes_clients_with_shutdown_and_exits() {
    let (mut child, port, _) = serve(|_| {}).await;
    let url = format!("ws://127.0.0.1:{port}/connection/websocket");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(Message::text("{\"id\":1,\"connect\":{}}"))
        .await
        .unwrap();
    let reply = ws.next().await.unwrap().unwrap();
    assert!(reply.to_text().unwrap().contains("\"client\""), "{reply:?}");

    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let close = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (u16::from(frame.code), frame.reason.to_string());
                }
                Some(Ok(_)) => continue,
                other => panic!("no close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("close in time");
    assert_eq!(close, (3001, "shutdown".to_string()));
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("exits in time")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

fn fixture(name: &str) -> std::path::PathBuf {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm32-wasip2/plugin")
        .join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: run plugins/build first",
        path.display()
    );
    path
}

fn plugin_check(args: &[&std::ffi::OsStr]) -> (bool, String) {
    herald(
        [
            std::ffi::OsStr::new("plugin"),
            std::ffi::OsStr::new("check"),
        ]
        .into_iter()
        .chain(args.iter().copied()),
    )
}

/// `herald plugin check` accepts a valid plugin and names it, its version and hooks, the contract version
/// it targets and the capabilities it imports.
#[test]
fn plugin_check_describes_a_valid_plugin() {
    let (ok, out) = plugin_check(&[fixture("herald_test_hostile").as_os_str()]);
    assert!(ok, "{out}");
    assert!(
        out.contains(
            "plugin hostile 1.0.0 (hooks: connect, subscribe, publish; contract herald:plugin@0.2.0; \
             capabilities: none beyond logging and the clock) ok"
        ),
        "{out}"
    );
    let (ok, out) = plugin_check(&[fixture("herald_test_scripted").as_os_str()]);
    assert!(ok, "{out}");
    assert!(out.contains("capabilities: http)"), "{out}");
}

/// Garbage, a core module, a plugin whose init refuses its configuration and one that implements a hook it
/// does not declare are rejected with the reason.
#[test]
fn plugin_check_rejects_bad_plugins() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"not wasm at all").unwrap();
    let (ok, out) = plugin_check(&[garbage.as_os_str()]);
    assert!(!ok && out.contains("not a valid component"), "{out}");

    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let (ok, out) = plugin_check(&[core.as_os_str()]);
    assert!(!ok && out.contains("rejected"), "{out}");

    let config = dir.path().join("fail.toml");
    std::fs::write(&config, "fail_init = true\n").unwrap();
    let (ok, out) = plugin_check(&[
        fixture("herald_test_hostile").as_os_str(),
        "--config".as_ref(),
        config.as_os_str(),
    ]);
    assert!(
        !ok && out.contains("refusing to start: fail_init is set"),
        "{out}"
    );

    let (ok, out) = plugin_check(&[fixture("herald_test_undeclared").as_os_str()]);
    assert!(
        !ok && out.contains(
            "init refused: plugin `undeclared` implements on_subscribe but does not declare \
             Hooks::SUBSCRIBE in HOOKS"
        ),
        "{out}"
    );
}

/// `herald serve` with a relative plugin folder (as in the README's command) loads the plugins in it.
#[tokio::test]
async fn serve_loads_plugins_from_a_relative_folder() {
    let workdir = tempfile::tempdir().unwrap();
    std::fs::create_dir(workdir.path().join("plugins")).unwrap();
    std::fs::copy(
        fixture("herald_test_hostile"),
        workdir.path().join("plugins/10-hostile.wasm"),
    )
    .unwrap();
    let (_child, _port, seen) = serve(|command| {
        command
            .current_dir(workdir.path())
            .env("HERALD_PLUGINS__DIR", "plugins");
    })
    .await;
    assert!(
        seen.iter()
            .any(|l| l.contains("plugin loaded") && l.contains("10-hostile.wasm")),
        "{seen:#?}"
    );
    assert!(
        workdir.path().join("plugins/.cache").is_dir(),
        "compiled plugins are cached beside them"
    );
}

/// `herald serve` starts in a pod beside a Service named `herald`: the variables Kubernetes injects are
/// ignored, each named in the debug log (never with its value); a misspelt key under a real section is
/// ignored with a warning; a real key among them applies (the API key opens the API).
#[tokio::test]
async fn serve_starts_beside_kubernetes_service_variables() {
    let (_child, port, seen) = serve(|command| {
        command
            .env("RUST_LOG", "info,herald::config=debug")
            .envs(FOREIGN_VARIABLE_EXAMPLES)
            .env("HERALD_CLIENT__PING_INTERVL", "5s")
            .env("HERALD_HTTP_API__KEY", "key-from-the-pod-spec");
    })
    .await;
    let field = |line: &str, field: &str| line.split_whitespace().any(|word| word == field);
    for (name, value) in FOREIGN_VARIABLE_EXAMPLES {
        assert!(
            seen.iter()
                .any(|l| l.contains("DEBUG") && field(l, &format!("variable={name}"))),
            "{name} is not logged as ignored: {seen:#?}"
        );
        if value.len() > 4 {
            assert!(
                !seen.iter().any(|l| l.contains(value)),
                "{value} logged: {seen:#?}"
            );
        }
    }
    assert!(
        seen.iter()
            .any(|l| l.contains("WARN") && field(l, "variable=HERALD_CLIENT__PING_INTERVL")),
        "{seen:#?}"
    );
    let status = http_post(
        port,
        "/api/info",
        "X-API-Key: key-from-the-pod-spec\r\n",
        "{}",
    )
    .await;
    assert_eq!(status, 200, "HERALD_HTTP_API__KEY applies");
}

/// Logs written to a pipe (a file, a log collector) are plain text: no ANSI colour escape anywhere.
#[tokio::test]
async fn logs_to_a_pipe_carry_no_colour_codes() {
    let (_child, _port, seen) = serve(|command| {
        command.env_remove("NO_COLOR");
    })
    .await;
    assert!(seen.iter().any(|l| l.contains("INFO")), "{seen:#?}");
    for line in &seen {
        assert!(!line.contains('\x1b'), "colour codes in {line:?}");
    }
}

/// The fields every JSON log line has, by name and type, and its event's own fields beside them.
fn assert_json_log_lines(seen: &[String]) -> Vec<serde_json::Value> {
    let objects: Vec<serde_json::Value> = seen
        .iter()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
        })
        .collect();
    for object in &objects {
        for field in ["timestamp", "level", "target", "message"] {
            assert!(object[field].is_string(), "no {field} in {object}");
        }
    }
    let listening = objects
        .iter()
        .find(|o| o["message"] == "herald listening (websocket at /connection/websocket)")
        .expect("the listening line");
    assert_eq!(listening["level"], "INFO");
    assert_eq!(listening["target"], "herald");
    assert!(
        listening["address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    objects
}

/// `--log-format json` writes one JSON object per line with stable field names, from the first line on.
#[tokio::test]
async fn log_format_json_writes_one_object_per_line() {
    let (_child, _port, seen) = serve(|command| {
        command.arg("--log-format").arg("json");
    })
    .await;
    assert_json_log_lines(&seen);
}

/// The format and the level come from the configuration's `[log]`, so from `HERALD_LOG__*` too; `RUST_LOG`
/// when set wins over the level.
#[tokio::test]
async fn log_format_and_level_come_from_the_configuration() {
    // The JSON log lines of a node whose `[log]` comes from the environment, with `RUST_LOG` as given.
    async fn logged_with(rust_log: Option<&str>) -> Vec<serde_json::Value> {
        let (_child, _port, seen) = serve(|command| {
            match rust_log {
                Some(level) => command.env("RUST_LOG", level),
                None => command.env_remove("RUST_LOG"),
            }
            .env("HERALD_LOG__FORMAT", "json")
            .env("HERALD_LOG__LEVEL", "info,herald::config=debug")
            .env("HERALD_SERVICE_HOST", "10.0.0.7");
        })
        .await;
        assert_json_log_lines(&seen)
    }
    let objects = logged_with(None).await;
    assert!(
        objects
            .iter()
            .any(|o| o["level"] == "DEBUG" && o["variable"] == "HERALD_SERVICE_HOST"),
        "the configured level lets the debug line through: {objects:#?}"
    );
    let objects = logged_with(Some("info")).await;
    assert!(
        !objects.iter().any(|o| o["level"] == "DEBUG"),
        "RUST_LOG=info wins: {objects:#?}"
    );
}

/// Sends one HTTP/1.1 POST to the server on `port` and returns the status code.
async fn http_post(port: u16, target: &str, headers: &str, body: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let request = format!(
        "POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut response))
        .await
        .expect("response in time")
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
}

/// The API key and a plugin's configured secret never reach the log, even at trace level, while the server
/// is driven through the paths that could print them: start-up with the whole configuration, a plugin
/// whose init refuses its (secret) value, wrong keys until the address is refused, the right key in each
/// place Centrifugo accepts it, a malformed body; nor does `check-config` print them.
#[tokio::test]
async fn secrets_are_never_logged() {
    const KEY: &str = "api-key-7f3c9a1e5b";
    const PLUGIN_SECRET: &str = "plugin-secret-4d2b8e6a";
    let workdir = tempfile::tempdir().unwrap();
    std::fs::create_dir(workdir.path().join("plugins")).unwrap();
    std::fs::copy(
        fixture("herald_test_hostile"),
        workdir.path().join("plugins/10-hostile.wasm"),
    )
    .unwrap();
    let config = workdir.path().join("herald.toml");
    std::fs::write(
        &config,
        format!(
            "[http_api]\nkey = \"{KEY}\"\n[plugins]\ndir = \"plugins\"\n\
             [plugins.config.hostile]\nfail_init = \"{PLUGIN_SECRET}\"\n\
             [limits]\napi_auth_failures_per_minute = 2\n"
        ),
    )
    .unwrap();

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tokio::process::Command::new(HERALD)
        .args([
            "serve",
            "--address",
            &format!("127.0.0.1:{port}"),
            "--config",
        ])
        .arg(&config)
        .current_dir(workdir.path())
        // Everything of Herald and the HTTP/WebSocket stack; the compiler's trace (megabytes of IR) is noise.
        .env(
            "RUST_LOG",
            "info,herald=trace,hyper=trace,hyper_util=trace,axum=trace,tungstenite=trace,tokio_tungstenite=trace",
        )
        .env_remove("HERALD_HTTP_API__KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (log_tx, mut log_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    for output in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let log_tx = log_tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(output).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = log_tx.send(line);
            }
        });
    }
    drop(log_tx);
    let mut log = Vec::new();
    tokio::time::timeout(WAIT, async {
        while let Some(line) = log_rx.recv().await {
            let listening = line.contains("herald listening");
            log.push(line);
            if listening {
                return;
            }
        }
        panic!("herald exited before listening: {log:#?}");
    })
    .await
    .expect("herald starts");

    for (headers, target) in [
        (format!("X-API-Key: {KEY}\r\n"), "/api/info".to_string()),
        (
            format!("Authorization: apikey {KEY}\r\n"),
            "/api/info".to_string(),
        ),
        (String::new(), format!("/api/info?api_key={KEY}")),
    ] {
        assert_eq!(http_post(port, &target, &headers, "{}").await, 200);
    }
    let malformed = http_post(port, "/api/publish", &format!("X-API-Key: {KEY}\r\n"), "{").await;
    assert_eq!(malformed, 400);
    let mut statuses = Vec::new();
    for guess in 0..4 {
        let headers = format!("X-API-Key: wrong-{guess}\r\n");
        statuses.push(http_post(port, "/api/info", &headers, "{}").await);
    }
    assert_eq!(statuses, [401, 401, 429, 429]);

    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    tokio::time::timeout(WAIT, async {
        while let Some(line) = log_rx.recv().await {
            log.push(line);
        }
    })
    .await
    .expect("herald exits and its output ends");
    let log = log.join("\n");
    assert!(
        log.contains("init refused: ") && log.contains("[redacted]"),
        "the refusal path must have run: {log}"
    );
    assert!(
        log.contains("too many failed API authentications"),
        "the back-off path must have run: {log}"
    );
    for secret in [KEY, PLUGIN_SECRET] {
        assert!(!log.contains(secret), "{secret} was logged:\n{log}");
    }

    let (_, checked) = herald([std::ffi::OsStr::new("check-config"), config.as_os_str()]);
    for secret in [KEY, PLUGIN_SECRET] {
        assert!(
            !checked.contains(secret),
            "check-config printed {secret}: {checked}"
        );
    }
}
