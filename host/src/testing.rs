//! Real Redis servers for tests: a standalone `redis-server` or a three-master Redis Cluster, each on free
//! loopback ports with its own data directory, stopped when dropped.
//!
//! Used by the engine's own tests and (through the `testing` feature) by the integration tests; it needs
//! `redis-server` on the PATH (Debian package `redis-server`).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

/// A `redis-server` process on 127.0.0.1.
#[derive(Debug)]
pub struct RedisServer {
    process: Process,
    /// The port it listens on (TLS only, for a server started with [`RedisServer::start_tls`]).
    pub port: u16,
    /// The TLS arguments it was started with, kept for a restart; empty for a plain server.
    tls: Vec<String>,
    _dir: tempfile::TempDir,
}

/// The PEM files of a TLS Redis server: its certificate and key, and the CA whose certificates it accepts
/// from clients (when it asks for one).
#[derive(Debug, Clone)]
pub struct RedisTls<'a> {
    /// The server's certificate.
    pub cert: &'a Path,
    /// Its key.
    pub key: &'a Path,
    /// The CA that signs client certificates.
    pub ca: &'a Path,
    /// Refuse clients without a certificate signed by `ca` (`tls-auth-clients yes`).
    pub require_client_cert: bool,
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

impl RedisServer {
    /// Starts a server without persistence and returns once it accepts connections.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments (`--name value` pairs).
    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_on(extra, Vec::new())
    }

    /// Starts a server that speaks only TLS (Debian's `redis-server` is built with it).
    pub fn start_tls(tls: &RedisTls<'_>) -> Self {
        let path = |path: &Path| path.display().to_string();
        let tls = vec![
            "--tls-cert-file".to_owned(),
            path(tls.cert),
            "--tls-key-file".to_owned(),
            path(tls.key),
            "--tls-ca-cert-file".to_owned(),
            path(tls.ca),
            "--tls-auth-clients".to_owned(),
            if tls.require_client_cert { "yes" } else { "no" }.to_owned(),
        ];
        Self::start_on(&[], tls)
    }

    fn start_on(extra: &[&str], tls: Vec<String>) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        // A port can be taken between choosing and binding it; try a few.
        for _ in 0..5 {
            let port = free_port();
            if let Some(process) = spawn(port, dir.path(), extra, &tls) {
                return Self {
                    process,
                    port,
                    tls,
                    _dir: dir,
                };
            }
        }
        panic!("redis-server did not start (is it installed?)");
    }

    /// `redis://127.0.0.1:<port>`, or `rediss://` for a TLS server.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_empty() {
            "redis"
        } else {
            "rediss"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Stops the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts a new, empty server on the same port (after [`Self::kill`]): an outage that lost all data.
    pub fn restart_empty(&mut self) {
        self.kill();
        for _ in 0..50 {
            if let Some(process) = spawn(self.port, self._dir.path(), &[], &self.tls) {
                self.process = process;
                return;
            }
            // The old socket may still be in TIME_WAIT-like teardown for a moment.
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("redis-server did not restart on port {}", self.port);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `redis-server` run through a small shell guard that kills it when our end of the guard's stdin
/// closes, so no server outlives the test process, even one that is killed or keeps a server in a static.
#[derive(Debug)]
struct Process {
    guard: Child,
    /// The server's pid; `None` when the guard never reported one.
    pid: Option<u32>,
}

impl Process {
    fn kill(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        drop(self.guard.stdin.take());
        let _ = self.guard.wait();
    }
}

/// Starts `redis-server` and waits for its "Ready to accept connections" line; `None` if it exits first
/// (port taken). With `tls` arguments the port is its TLS port and there is no plain one.
fn spawn(port: u16, dir: &Path, extra: &[&str], tls: &[String]) -> Option<Process> {
    let ports = if tls.is_empty() {
        vec!["--port".to_owned(), port.to_string()]
    } else {
        vec![
            "--port".to_owned(),
            "0".to_owned(),
            "--tls-port".to_owned(),
            port.to_string(),
        ]
    };
    let mut guard = Command::new("sh")
        .arg("-c")
        .arg(r#"redis-server "$@" & echo "pid $!"; read -r _; kill -9 $! 2>/dev/null"#)
        .arg("redis-guard")
        .args(&ports)
        .args(tls)
        .args(["--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("sh and redis-server run (apt-get install redis-server)");
    let stdout = guard.stdout.take().expect("piped stdout");
    // Read on a thread of its own, which keeps draining the output afterwards so a chatty server never
    // blocks on a full pipe: the guard keeps the pipe open after a server that failed to start has
    // exited, so a blocking read here would wait for ever instead of trying another port.
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let pid: Option<u32> = received
        .recv_timeout(Duration::from_secs(10))
        .ok()
        .and_then(|line| line.strip_prefix("pid ")?.trim().parse().ok());
    let mut process = Process { guard, pid };
    let started = Instant::now();
    let ready = pid.is_some_and(|pid| {
        loop {
            match received.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if line.contains("Ready to accept connections") => break true,
                Ok(_) => {}
                Err(RecvTimeoutError::Disconnected) => break false,
                Err(RecvTimeoutError::Timeout) => {
                    let alive = Path::new(&format!("/proc/{pid}")).exists();
                    if !alive || started.elapsed() > Duration::from_secs(30) {
                        break false;
                    }
                }
            }
        }
    });
    if !ready {
        process.kill();
        return None;
    }
    Some(process)
}

/// A Redis Cluster of three masters (no replicas) on loopback.
#[derive(Debug)]
pub struct RedisCluster {
    /// The masters.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers and joins them (`redis-cli --cluster create`), returning once
    /// every slot is served.
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|n| {
                let config_file = format!("nodes-{n}-{}.conf", std::process::id());
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &config_file,
                ])
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        let status = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .expect("redis-cli runs");
        assert!(status.success(), "redis-cli --cluster create failed");
        let cluster = Self { nodes };
        cluster.wait_until_ready();
        cluster
    }

    /// `redis://` URLs of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    fn wait_until_ready(&self) {
        // Slots propagate by gossip; a node answers `cluster_state:ok` once it sees all of them covered.
        for node in &self.nodes {
            for attempt in 0.. {
                let output = Command::new("redis-cli")
                    .args(["-p", &node.port.to_string(), "cluster", "info"])
                    .output()
                    .expect("redis-cli runs");
                if String::from_utf8_lossy(&output.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(attempt < 200, "the cluster did not become ready");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}
