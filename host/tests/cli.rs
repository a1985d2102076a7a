//! The `herald` binary: configuration checking and signal-driven graceful shutdown.

use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

const HERALD: &str = env!("CARGO_BIN_EXE_herald");
const WAIT: Duration = Duration::from_secs(10);

fn write_config(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
    file
}

fn check_config(text: &str) -> (bool, String) {
    let file = write_config(text);
    let output = std::process::Command::new(HERALD)
        .arg("check-config")
        .arg(file.path())
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

/// A valid file passes; the embedded default (printed by `default-config`) is itself valid.
#[test]
fn check_config_accepts_valid_files() {
    let (ok, out) = check_config("[client]\nallow_anonymous = true\n");
    assert!(ok, "{out}");
    let default = std::process::Command::new(HERALD)
        .arg("default-config")
        .output()
        .unwrap();
    assert!(default.status.success());
    let (ok, out) = check_config(&String::from_utf8(default.stdout).unwrap());
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
            "channel regex",
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
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tokio::process::Command::new(HERALD)
        .args(["serve", "--address", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("herald listening") {
                return;
            }
        }
        panic!("herald exited before listening");
    })
    .await
    .expect("herald starts");
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
    let output = std::process::Command::new(HERALD)
        .args(["plugin", "check"])
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// `herald plugin check` accepts a valid plugin and names it, its version and hooks.
#[test]
fn plugin_check_describes_a_valid_plugin() {
    let (ok, out) = plugin_check(&[fixture("herald_test_hostile").as_os_str()]);
    assert!(ok, "{out}");
    assert!(
        out.contains("plugin hostile 1.0.0 (hooks: connect, subscribe, publish) ok"),
        "{out}"
    );
}

/// Garbage, a core module and a plugin whose init refuses its configuration are rejected with the reason.
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
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tokio::process::Command::new(HERALD)
        .args(["serve", "--address", &format!("127.0.0.1:{port}")])
        .current_dir(workdir.path())
        .env("HERALD_PLUGINS__DIR", "plugins")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("herald listening") {
                return;
            }
            seen.push(line);
        }
        panic!("herald exited before listening: {seen:#?}");
    })
    .await
    .expect("herald starts");
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
