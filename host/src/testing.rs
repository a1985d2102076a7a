//! Real Redis servers for tests: a standalone `redis-server`, a primary with a replica watched by a Redis
//! Sentinel, or a three-master Redis Cluster, each on free loopback ports with its own data directory,
//! stopped when dropped.
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

impl RedisTls<'_> {
    /// The server's TLS arguments.
    fn server_arguments(&self) -> Vec<String> {
        let path = |path: &Path| path.display().to_string();
        vec![
            "--tls-cert-file".to_owned(),
            path(self.cert),
            "--tls-key-file".to_owned(),
            path(self.key),
            "--tls-ca-cert-file".to_owned(),
            path(self.ca),
            "--tls-auth-clients".to_owned(),
            if self.require_client_cert {
                "yes"
            } else {
                "no"
            }
            .to_owned(),
        ]
    }

    /// `redis-cli`'s arguments to reach such a server, presenting the server's own certificate.
    fn cli_arguments(&self) -> Vec<String> {
        let path = |path: &Path| path.display().to_string();
        vec![
            "--tls".to_owned(),
            "--cacert".to_owned(),
            path(self.ca),
            "--cert".to_owned(),
            path(self.cert),
            "--key".to_owned(),
            path(self.key),
        ]
    }
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
        Self::start_on(&[], tls.server_arguments())
    }

    /// A TLS-only server with extra arguments; it replicates over TLS (`--replicaof` names a TLS port),
    /// presenting its own certificate.
    pub fn start_tls_with(tls: &RedisTls<'_>, extra: &[&str]) -> Self {
        let mut arguments = tls.server_arguments();
        arguments.extend(["--tls-replication".to_owned(), "yes".to_owned()]);
        Self::start_on(extra, arguments)
    }

    fn start_on(extra: &[&str], tls: Vec<String>) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        // A port can be taken between choosing and binding it; try a few.
        for _ in 0..5 {
            let port = free_port();
            if let Some(process) = spawn(&server_arguments(port, dir.path(), extra, &tls), READY) {
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

    /// Freezes the server (SIGSTOP): it neither answers nor replicates until [`Self::resume`].
    pub fn pause(&self) {
        self.process.signal("-STOP");
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&self) {
        self.process.signal("-CONT");
    }

    /// Starts a new, empty server on the same port (after [`Self::kill`]): an outage that lost all data.
    pub fn restart_empty(&mut self) {
        self.kill();
        for _ in 0..50 {
            let arguments = server_arguments(self.port, self._dir.path(), &[], &self.tls);
            if let Some(process) = spawn(&arguments, READY) {
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
    fn signal(&self, signal: &str) {
        if let Some(pid) = self.pid {
            let _ = Command::new("kill")
                .args([signal, &pid.to_string()])
                .status();
        }
    }

    fn kill(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        drop(self.guard.stdin.take());
        let _ = self.guard.wait();
    }
}

/// What a server prints once it accepts connections.
const READY: &str = "Ready to accept connections";

/// The arguments of a server on `port` keeping its files in `dir`. With `tls` arguments the port is its TLS
/// port and there is no plain one.
fn server_arguments(port: u16, dir: &Path, extra: &[&str], tls: &[String]) -> Vec<String> {
    let mut arguments = if tls.is_empty() {
        vec!["--port".to_owned(), port.to_string()]
    } else {
        vec![
            "--port".to_owned(),
            "0".to_owned(),
            "--tls-port".to_owned(),
            port.to_string(),
        ]
    };
    arguments.extend(tls.iter().cloned());
    arguments.extend(
        [
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
        ]
        .map(str::to_owned),
    );
    arguments.push(dir.display().to_string());
    arguments.extend(extra.iter().map(|argument| (*argument).to_owned()));
    arguments
}

/// Starts `redis-server arguments` and waits for a line containing `ready`; `None` if it exits first (port
/// taken).
fn spawn(arguments: &[String], ready: &str) -> Option<Process> {
    let mut guard = Command::new("sh")
        .arg("-c")
        .arg(r#"redis-server "$@" & echo "pid $!"; read -r _; kill -9 $! 2>/dev/null"#)
        .arg("redis-guard")
        .args(arguments)
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
                Ok(line) if line.contains(ready) => break true,
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

/// How long a Sentinel set-up may take to reach a state (sync, discovery, a promotion).
const SENTINEL_WAIT: Duration = Duration::from_secs(30);

/// A primary, its replica and one Redis Sentinel watching them (quorum 1, a primary is judged down after
/// 500 ms), so a test can fail the primary over.
#[derive(Debug)]
pub struct RedisSentinel {
    /// The primary at start.
    pub primary: RedisServer,
    /// Its replica, promoted by a failover.
    pub replica: RedisServer,
    sentinel: Process,
    /// The Sentinel's port.
    pub port: u16,
    /// `redis-cli`'s TLS arguments; empty for plain servers.
    cli: Vec<String>,
    _dir: tempfile::TempDir,
}

impl RedisSentinel {
    /// The name the Sentinel monitors the primary under.
    pub const MASTER: &str = "herald-primary";

    /// Starts the three and returns once the replica is in sync and the Sentinel knows it, so a failover
    /// can pick it.
    pub fn start() -> Self {
        Self::start_on(None)
    }

    /// The same with TLS only, everywhere: clients, replication and the Sentinel's own links.
    pub fn start_tls(tls: &RedisTls<'_>) -> Self {
        Self::start_on(Some(tls))
    }

    fn start_on(tls: Option<&RedisTls<'_>>) -> Self {
        let primary = match tls {
            Some(tls) => RedisServer::start_tls_with(tls, &[]),
            None => RedisServer::start(),
        };
        let primary_port = primary.port.to_string();
        let follow = ["--replicaof", "127.0.0.1", &primary_port];
        let replica = match tls {
            Some(tls) => RedisServer::start_tls_with(tls, &follow),
            None => RedisServer::start_with(&follow),
        };
        let cli = tls.map(RedisTls::cli_arguments).unwrap_or_default();
        wait_until("the replica is in sync", SENTINEL_WAIT, || {
            redis_cli_with(&cli, replica.port, &["info", "replication"])
                .contains("master_link_status:up")
        });
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config = dir.path().join("sentinel.conf");
        // The replica is declared rather than discovered: discovery waits for the Sentinel's 10 s INFO round.
        std::fs::write(
            &config,
            format!(
                "sentinel monitor {master} 127.0.0.1 {primary_port} 1\n\
                 sentinel down-after-milliseconds {master} 500\n\
                 sentinel failover-timeout {master} 3000\n\
                 sentinel known-replica {master} 127.0.0.1 {replica}\n",
                master = Self::MASTER,
                replica = replica.port,
            ),
        )
        .expect("write the Sentinel's config");
        for _ in 0..5 {
            let port = free_port();
            let mut arguments = vec![config.display().to_string(), "--sentinel".to_owned()];
            match tls {
                Some(tls) => {
                    arguments.extend(["--port", "0", "--tls-port"].map(str::to_owned));
                    arguments.push(port.to_string());
                    arguments.extend(tls.server_arguments());
                    arguments.extend(["--tls-replication", "yes"].map(str::to_owned));
                }
                None => arguments.extend(["--port".to_owned(), port.to_string()]),
            }
            arguments.extend(["--bind", "127.0.0.1", "--dir"].map(str::to_owned));
            arguments.push(dir.path().display().to_string());
            if let Some(sentinel) = spawn(&arguments, "+monitor master") {
                let sentinel = Self {
                    primary,
                    replica,
                    sentinel,
                    port,
                    cli,
                    _dir: dir,
                };
                wait_until("the Sentinel sees the replica", SENTINEL_WAIT, || {
                    let replicas = sentinel.cli(port, &["sentinel", "replicas", Self::MASTER]);
                    replicas.lines().any(|line| line == "slave")
                        && replicas.contains("master-link-status\nok")
                });
                return sentinel;
            }
        }
        panic!("redis-server --sentinel did not start");
    }

    /// `redis://127.0.0.1:<port>` of the Sentinel (`rediss://` with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.cli.is_empty() {
            "redis"
        } else {
            "rediss"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// `redis-cli -p port arguments…` against any of the three, over TLS when they use it.
    pub fn cli(&self, port: u16, arguments: &[&str]) -> String {
        redis_cli_with(&self.cli, port, arguments)
    }

    /// The port of the server the Sentinel names as primary now.
    pub fn primary_port(&self) -> u16 {
        let answer = self.cli(
            self.port,
            &["sentinel", "get-master-addr-by-name", Self::MASTER],
        );
        answer
            .lines()
            .nth(1)
            .and_then(|port| port.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Kills the primary (SIGKILL) and returns once the Sentinel names the replica instead.
    pub fn fail_over(&mut self) {
        self.primary.kill();
        self.await_failover();
    }

    /// Returns once the Sentinel names the replica as primary.
    pub fn await_failover(&self) {
        let replica = self.replica.port;
        wait_until("the Sentinel promotes the replica", SENTINEL_WAIT, || {
            self.primary_port() == replica
        });
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        self.sentinel.kill();
    }
}

/// `redis-cli -p port arguments…`'s output (empty when it fails).
pub fn redis_cli(port: u16, arguments: &[&str]) -> String {
    redis_cli_with(&[], port, arguments)
}

fn redis_cli_with(connection: &[String], port: u16, arguments: &[&str]) -> String {
    Command::new("redis-cli")
        .args(connection)
        .args(["-p", &port.to_string()])
        .args(arguments)
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .unwrap_or_default()
}

/// Polls `done` every 50 ms for up to `within`: for state another process reaches on its own clock.
fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < within, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
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
            wait_until("the cluster is ready", Duration::from_secs(10), || {
                redis_cli(node.port, &["cluster", "info"]).contains("cluster_state:ok")
            });
        }
    }
}
