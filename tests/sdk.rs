//! End to end with the official SDKs: the recovery scenarios `tests/e2e/js/recover.js` (centrifuge-js) and
//! `tests/e2e/python/recover.py` (centrifuge-python) run as child processes against a real Herald.
//!
//! They need Node 20+ with `npm ci --prefix tests/e2e/js` done, and Python 3.11 with
//! `python3 -m pip install -r tests/e2e/python/requirements.txt`. A missing toolchain or dependency fails the
//! test with those instructions; it is never skipped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use herald_tests::{API_KEY, TestServer};
use tokio::process::Command;

/// The repository root, where the scripts' relative paths start.
const REPO_ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// Upper bound for one script run; the scripts themselves give up after 30 s.
const SCRIPT_WAIT: Duration = Duration::from_secs(90);

fn repo_path(relative: &str) -> PathBuf {
    Path::new(REPO_ROOT).join(relative)
}

/// Runs `program args…` in the repo root and returns whether it succeeded, with its output; `Err` when it
/// cannot be started.
async fn probe(program: &str, args: &[&str]) -> Result<(bool, String), std::io::Error> {
    let output = tokio::time::timeout(
        SCRIPT_WAIT,
        Command::new(program)
            .args(args)
            .current_dir(REPO_ROOT)
            .stdin(Stdio::null())
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

/// Fails (never skips) unless node and the JS dependencies are installed.
async fn require_node() {
    const INSTALL: &str =
        "install Node 20+ and run `npm ci --prefix tests/e2e/js` in the repository root";
    match probe("node", &["--version"]).await {
        Ok((true, _)) => {}
        Ok((false, out)) => panic!("`node --version` failed: {out}\n{INSTALL}"),
        Err(e) => panic!("node is not available ({e}); {INSTALL}"),
    }
    for package in ["centrifuge", "ws"] {
        let manifest = repo_path(&format!("tests/e2e/js/node_modules/{package}/package.json"));
        assert!(
            manifest.is_file(),
            "{} is missing: the JS e2e dependencies are not installed; {INSTALL}",
            manifest.display()
        );
    }
}

/// Fails (never skips) unless python3 and centrifuge-python are installed.
async fn require_python() {
    const INSTALL: &str = "install Python 3.11 and run \
        `python3 -m pip install -r tests/e2e/python/requirements.txt` in the repository root";
    match probe("python3", &["-c", "import centrifuge, websockets"]).await {
        Ok((true, _)) => {}
        Ok((false, out)) => {
            panic!("centrifuge-python is not importable:\n{out}\n{INSTALL}")
        }
        Err(e) => panic!("python3 is not available ({e}); {INSTALL}"),
    }
}

/// Runs one SDK scenario script against `server` on `channel` and asserts exit status 0, printing the
/// script's stdout and stderr otherwise.
async fn run_scenario(server: &TestServer, program: &str, script: &str, channel: &str) {
    let mut run = Command::new(program);
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
    require_node().await;
    let server = TestServer::start("").await;
    run_scenario(&server, "node", "tests/e2e/js/recover.js", "e2e-js-recover").await;
}

/// centrifuge-python 0.7 does the same: live delivery, forced reconnect, exact recovery, no duplicates.
#[tokio::test]
async fn centrifuge_python_recovers_after_forced_reconnect() {
    require_python().await;
    let server = TestServer::start("").await;
    run_scenario(
        &server,
        "python3",
        "tests/e2e/python/recover.py",
        "e2e-python-recover",
    )
    .await;
}
