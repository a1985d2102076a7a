//! Parts for the cluster tests: Herald as real processes (`herald serve --config FILE`) that a test can kill
//! (`SIGKILL`), stop gracefully (`SIGTERM`) and restart on the same port; nginx in front of them with the
//! configuration the README recommends; a [`Publisher`] that keeps publishing through whichever nodes are
//! up (idempotency keys make its retries harmless); and [`Follower`]s, raw Centrifugo clients that move to
//! another node when theirs goes away and recover, recording every publication they see so a test can check
//! that none was lost or duplicated.
//!
//! Children are started through `setpriv --pdeathsig` (util-linux), so none outlives the test. Every wait is
//! bounded; nothing sleeps except the publisher's pacing and the backoff between reconnect attempts.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rustix::process::{Pid, Signal, kill_process};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{API_KEY, WAIT, target_dir};

/// Upper bound for the slow steps of a cluster scenario: a node starting or stopping, clients moving and
/// recovering, everyone catching up. Only a failing test waits this long.
pub const CLUSTER_WAIT: Duration = Duration::from_secs(60);

/// The repository root.
pub const REPO_ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The `herald` binary, built on first use with `cargo build --workspace --tests`: exactly the build
/// `cargo test --workspace` makes (host's own integration tests need the binary, and the features are
/// unified over the whole workspace, this crate's `testing` included), so after `./tests/run` nothing is
/// rebuilt. (`cargo build -p herald` resolves features for herald alone and rebuilt tokio and everything
/// above it, a minute of CI.)
pub fn herald_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let output = std::process::Command::new(cargo)
            .args(["build", "--quiet", "--workspace", "--tests"])
            .current_dir(REPO_ROOT)
            .stdin(Stdio::null())
            .output()
            .expect("cargo runs");
        assert!(
            output.status.success(),
            "building the herald binary failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let binary = target_dir().join("debug/herald");
        assert!(binary.is_file(), "{} is missing", binary.display());
        binary
    })
}

/// The configuration file of a cluster node: [`crate::config`]`(extra)` on the Redis engine at `redis_url`
/// (presence entries of a dead node expire after 3 s), with room for every publication a scenario makes
/// in history and in one recovery. `extra` wins over all of it.
pub fn node_config(redis_url: &str, extra: &str) -> String {
    let cluster = format!(
        r#"
        [client]
        recovery_max_publication_limit = 10000
        [channel.defaults]
        history_size = 10000
        [engine]
        type = "redis"
        [engine.redis]
        addresses = ["{redis_url}"]
        presence_ttl = "3s"
        "#
    );
    let mut merged: toml::Table = cluster.parse().expect("cluster config");
    super::merge(&mut merged, extra.parse().expect("test config TOML"));
    let config = crate::config(&toml::to_string(&merged).expect("serialise config"));
    toml::to_string(&config).expect("the configuration serialises to TOML")
}

/// Lines a child wrote to stderr, as they come; the sender is dropped when the stream ends.
type Lines = watch::Receiver<Vec<String>>;

/// Reads `stream` line by line into a [`Lines`] until it ends.
fn collect_lines(stream: impl AsyncRead + Unpin + Send + 'static) -> Lines {
    let (sender, receiver) = watch::channel(Vec::new());
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            sender.send_modify(|all| all.push(line));
        }
    });
    receiver
}

/// Waits until a line contains `needle`; `Err` with the output when the stream ends first.
async fn wait_for_line(lines: &mut Lines, needle: &str) -> Result<(), String> {
    let found = tokio::time::timeout(CLUSTER_WAIT, async {
        lines
            .wait_for(|all| all.iter().any(|line| line.contains(needle)))
            .await
            .is_ok()
    })
    .await;
    match found {
        Ok(true) => Ok(()),
        Ok(false) => Err(lines.borrow().join("\n")),
        Err(_) => panic!(
            "no line with {needle:?} within {CLUSTER_WAIT:?}:\n{}",
            lines.borrow().join("\n")
        ),
    }
}

fn signal(child: &Child, signal: Signal) {
    let pid = child
        .id()
        .and_then(|pid| Pid::from_raw(pid as i32))
        .expect("the child is running");
    kill_process(pid, signal).expect("signal the child");
}

/// `herald serve --config FILE --address ADDR` as a child process on a loopback port it keeps across
/// restarts.
pub struct HeraldProcess {
    /// Where it listens.
    pub addr: SocketAddr,
    config_file: PathBuf,
    child: Option<Child>,
    stderr: Lines,
    /// What earlier runs wrote, for failure messages.
    history: String,
    _dir: tempfile::TempDir,
}

impl HeraldProcess {
    /// Writes `config` (TOML, e.g. from [`node_config`]) to a file and starts a node with it on a free
    /// port, returning once it listens.
    pub async fn start(config: &str) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config_file = dir.path().join("herald.toml");
        std::fs::write(&config_file, config).expect("write the config file");
        let mut node = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            config_file,
            child: None,
            stderr: watch::channel(Vec::new()).1,
            history: String::new(),
            _dir: dir,
        };
        let mut failures = String::new();
        // A free port can be taken before the node binds it; try a few.
        for _ in 0..5 {
            node.addr.set_port(herald::testing::free_port());
            match node.spawn().await {
                Ok(()) => return node,
                Err(output) => failures.push_str(&output),
            }
        }
        panic!("herald did not start:\n{failures}");
    }

    async fn spawn(&mut self) -> Result<(), String> {
        let mut child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--"])
            .arg(herald_binary())
            .arg("serve")
            .arg("--config")
            .arg(&self.config_file)
            .args(["--address", &self.addr.to_string()])
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("setpriv (util-linux) and herald run");
        self.stderr = collect_lines(child.stderr.take().expect("piped stderr"));
        self.child = Some(child);
        let started = wait_for_line(&mut self.stderr, "herald listening").await;
        if started.is_err() {
            self.reap().await;
        }
        started
    }

    /// `ws://…/connection/websocket`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/connection/websocket", self.addr)
    }

    /// `http://…/api`.
    pub fn api_url(&self) -> String {
        format!("http://{}/api", self.addr)
    }

    /// Calls a server API method on this node.
    pub async fn api(&self, method: &str, body: Value) -> (u16, Value) {
        api_call(&self.api_url(), method, body)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// How many clients are connected to this node (its entry, named by its address, in the server API's
    /// `info`, which lists every node of the cluster).
    pub async fn local_clients(&self) -> u64 {
        let (status, body) = self.api("info", json!({})).await;
        assert_eq!(status, 200, "{body}");
        let name = self.addr.to_string();
        body["result"]["nodes"]
            .as_array()
            .and_then(|nodes| nodes.iter().find(|node| node["name"] == name.as_str()))
            .unwrap_or_else(|| panic!("{name} is not in the node list: {body}"))["num_clients"]
            .as_u64()
            .unwrap_or(0)
    }

    /// Waits until the node has logged a line containing `needle` (in its current run).
    pub async fn wait_for_log(&mut self, needle: &str) {
        if let Err(output) = wait_for_line(&mut self.stderr, needle).await {
            panic!("the node ended before logging {needle:?}:\n{output}");
        }
    }

    /// Everything the node logged, over all its runs.
    pub fn log(&self) -> String {
        format!("{}{}", self.history, self.stderr.borrow().join("\n"))
    }

    /// Kills the node at once (`SIGKILL`, as `kill -9` or a crash) and waits until it is gone.
    pub async fn kill(&mut self) {
        let child = self.child.as_mut().expect("running");
        child.start_kill().expect("SIGKILL");
        self.reap().await;
    }

    /// Freezes the node (`SIGSTOP`): its sockets stay open but it does nothing until killed. Returns once
    /// every thread is stopped: `kill` only queues the signal, and a thread still running on the other core
    /// could deliver one more message before it stops.
    pub async fn freeze(&self) {
        let child = self.child.as_ref().expect("running");
        signal(child, Signal::STOP);
        let tasks = PathBuf::from(format!("/proc/{}/task", child.id().expect("running")));
        let all_stopped = || {
            std::fs::read_dir(&tasks)
                .expect("read the node's threads")
                .flatten()
                .all(|task| {
                    // `pid (comm) S ...`: the state follows the last `)`.
                    let stat =
                        std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
                    let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
                    matches!(state, Some(Some('T' | 't')) | None)
                })
        };
        tokio::time::timeout(WAIT, async {
            while !all_stopped() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the node did not stop after SIGSTOP"));
    }

    /// Stops the node gracefully (`SIGTERM`) and returns its exit status.
    pub async fn terminate(&mut self) -> ExitStatus {
        signal(self.child.as_ref().expect("running"), Signal::TERM);
        self.reap().await
    }

    async fn reap(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let status = tokio::time::timeout(CLUSTER_WAIT, child.wait())
            .await
            .unwrap_or_else(|_| panic!("herald did not exit in time:\n{}", self.log()))
            .expect("wait for herald");
        // The rest of its output, up to the end of the stream.
        let _ = tokio::time::timeout(WAIT, self.stderr.wait_for(|_| false)).await;
        self.history = format!("{}\n--- exited: {status} ---\n", self.log());
        self.stderr = watch::channel(Vec::new()).1;
        status
    }

    /// Starts the node again on the same port with the same configuration.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "restart a stopped node only");
        if let Err(output) = self.spawn().await {
            panic!("herald did not restart on {}:\n{output}", self.addr);
        }
    }
}

/// Calls `POST {api_url}/{method}` with the test API key; `Err` when there is no HTTP answer.
pub async fn api_call(api_url: &str, method: &str, body: Value) -> Result<(u16, Value), String> {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    let client = CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(WAIT)
            .build()
            .expect("HTTP client")
    });
    let response = client
        .post(format!("{api_url}/{method}"))
        .header("X-API-Key", API_KEY)
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("{api_url}/{method}: {e}"))?;
    let status = response.status().as_u16();
    let text = response
        .text()
        .await
        .map_err(|e| format!("{api_url}/{method}: {e}"))?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

/// nginx (the Debian package's `/usr/sbin/nginx`) on a free loopback port, load balancing two Herald nodes
/// with `tests/nginx/herald.conf.template`, the configuration the README recommends. Its prefix, pid file
/// and temporary files are in a temporary folder; its error log goes to the test's output on failure.
pub struct Nginx {
    /// Where it listens.
    pub addr: SocketAddr,
    child: Child,
    stderr: Lines,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// The template with its placeholders filled in.
    pub fn render_template(listen: SocketAddr, nodes: [SocketAddr; 2]) -> String {
        let template =
            std::fs::read_to_string(Path::new(REPO_ROOT).join("tests/nginx/herald.conf.template"))
                .expect("read tests/nginx/herald.conf.template");
        let rendered = template
            .replace("${HERALD_LISTEN}", &listen.to_string())
            .replace("${HERALD_NODE_1}", &nodes[0].to_string())
            .replace("${HERALD_NODE_2}", &nodes[1].to_string());
        assert!(
            !rendered.contains("${HERALD_"),
            "unknown placeholder left in the template:\n{rendered}"
        );
        rendered
    }

    /// Starts nginx in front of `nodes` and returns once its worker runs.
    pub async fn start(nodes: [SocketAddr; 2]) -> Self {
        let mut failures = String::new();
        for _ in 0..5 {
            let addr = SocketAddr::from(([127, 0, 0, 1], herald::testing::free_port()));
            let dir = tempfile::tempdir().expect("a temporary directory");
            let prefix = dir.path();
            std::fs::write(
                prefix.join("herald.conf"),
                Self::render_template(addr, nodes),
            )
            .expect("write herald.conf");
            // As root, nginx would switch its workers to `nobody`, who cannot use this folder.
            let user = if rustix::process::geteuid().is_root() {
                "user root;"
            } else {
                ""
            };
            let main = format!(
                r#"
                {user}
                worker_processes 1;
                pid {prefix}/nginx.pid;
                error_log stderr notice;
                events {{ worker_connections 1024; }}
                http {{
                    access_log off;
                    client_body_temp_path {prefix}/client_body;
                    proxy_temp_path {prefix}/proxy;
                    fastcgi_temp_path {prefix}/fastcgi;
                    uwsgi_temp_path {prefix}/uwsgi;
                    scgi_temp_path {prefix}/scgi;
                    include {prefix}/herald.conf;
                }}
                "#,
                prefix = prefix.display()
            );
            std::fs::write(prefix.join("nginx.conf"), main).expect("write nginx.conf");
            // On the test's end nginx gets SIGTERM (fast shutdown), so its worker goes too.
            let mut child = Command::new("setpriv")
                .args(["--pdeathsig", "TERM", "--", "nginx", "-p"])
                .arg(prefix)
                .arg("-c")
                .arg(prefix.join("nginx.conf"))
                .args(["-e", "stderr", "-g", "daemon off;"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("nginx runs (apt-get install nginx)");
            let mut stderr = collect_lines(child.stderr.take().expect("piped stderr"));
            match wait_for_line(&mut stderr, "start worker process ").await {
                Ok(()) => {
                    return Self {
                        addr,
                        child,
                        stderr,
                        _dir: dir,
                    };
                }
                Err(output) => {
                    let _ = child.wait().await;
                    failures.push_str(&output);
                }
            }
        }
        panic!("nginx did not start:\n{failures}");
    }

    /// `ws://…/connection/websocket` through nginx.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/connection/websocket", self.addr)
    }

    /// `http://…/api` through nginx.
    pub fn api_url(&self) -> String {
        format!("http://{}/api", self.addr)
    }

    /// What nginx logged so far.
    pub fn log(&self) -> String {
        self.stderr.borrow().join("\n")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // Fast shutdown: the master stops its worker and exits (tokio reaps it). A SIGKILL would orphan the
        // worker.
        if let Some(pid) = self.child.id().and_then(|pid| Pid::from_raw(pid as i32)) {
            let _ = kill_process(pid, Signal::TERM);
        }
    }
}

/// One publication the [`Publisher`] made: `data = {"n": n}` got `offset` in `epoch`.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    /// The sequence number in the data.
    pub n: u64,
    /// Its offset in the channel's stream.
    pub offset: u64,
    /// The stream's epoch.
    pub epoch: String,
}

/// Publishes `{"n": 1}`, `{"n": 2}`, … to one channel through the server API, one every `every`, each
/// through the next of the current targets. A publish that fails (node gone, connection cut, error reply)
/// is retried on the next target with the same `idempotency_key`, so each `n` is published exactly once.
pub struct Publisher {
    stop: watch::Sender<bool>,
    targets: watch::Sender<Vec<String>>,
    published: watch::Receiver<Vec<Published>>,
    task: JoinHandle<Result<(), String>>,
}

impl Publisher {
    /// Starts publishing to `channel` through `targets` (server API base URLs, `http://…/api`).
    pub fn start(channel: &str, targets: Vec<String>, every: Duration) -> Self {
        let (stop, stopped) = watch::channel(false);
        let (targets, current) = watch::channel(targets);
        let (record, published) = watch::channel(Vec::new());
        let channel = channel.to_owned();
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut next_target = 0usize;
            for n in 1.. {
                ticker.tick().await;
                if *stopped.borrow() {
                    return Ok(());
                }
                let body = json!({
                    "channel": channel,
                    "data": {"n": n},
                    "idempotency_key": format!("{channel}-{n}"),
                });
                let mut failures = Vec::new();
                let position = loop {
                    let url = {
                        let targets = current.borrow();
                        targets[next_target % targets.len()].clone()
                    };
                    next_target += 1;
                    match api_call(&url, "publish", body.clone()).await {
                        Ok((200, reply)) if reply["result"]["offset"].as_u64().is_some() => {
                            break reply["result"].clone();
                        }
                        Ok((status, reply)) => failures.push(format!("{url}: {status} {reply}")),
                        Err(error) => failures.push(error),
                    }
                    if failures.len() >= 100 {
                        return Err(format!("publish n={n} kept failing: {failures:#?}"));
                    }
                    // Back off before the next attempt, as a real publisher would.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                };
                record.send_modify(|all| {
                    all.push(Published {
                        n,
                        offset: position["offset"].as_u64().unwrap_or(0),
                        epoch: position["epoch"].as_str().unwrap_or("").to_owned(),
                    })
                });
            }
            Ok(())
        });
        Self {
            stop,
            targets,
            published,
            task,
        }
    }

    /// Publishes through these targets from the next attempt on.
    pub fn set_targets(&self, targets: Vec<String>) {
        self.targets.send_replace(targets);
    }

    /// How many publications were made so far.
    pub fn count(&self) -> usize {
        self.published.borrow().len()
    }

    /// Waits until `count` publications were made.
    pub async fn wait_for_count(&mut self, count: usize) {
        let reached = tokio::time::timeout(CLUSTER_WAIT, async {
            self.published
                .wait_for(|all| all.len() >= count)
                .await
                .is_ok()
        })
        .await;
        assert!(
            reached == Ok(true),
            "the publisher did not reach {count} publications (made {}); is it failing?",
            self.count()
        );
    }

    /// Stops after the publication in progress (and its retries) and returns every publication made, after
    /// checking that their offsets are contiguous in one epoch.
    pub async fn stop(self) -> Vec<Published> {
        self.stop.send_replace(true);
        let outcome = tokio::time::timeout(CLUSTER_WAIT, self.task)
            .await
            .expect("the publisher stops in time")
            .expect("the publisher task");
        if let Err(error) = outcome {
            panic!("{error}");
        }
        let published = self.published.borrow().clone();
        assert!(!published.is_empty(), "nothing was published");
        for pair in published.windows(2) {
            assert_eq!(
                pair[1].offset,
                pair[0].offset + 1,
                "API offsets are not contiguous: {pair:?}"
            );
            assert_eq!(pair[1].epoch, pair[0].epoch, "the epoch changed: {pair:?}");
        }
        published
    }
}

/// A subscribe after the first one, on a new connection.
#[derive(Debug, Clone)]
pub struct Resubscribe {
    /// Where the follower went.
    pub url: String,
    /// `recovered: true` in the reply (a follower stops at a resubscribe that is not recovered).
    pub recovered: bool,
    /// How many missed publications the reply carried.
    pub replayed: usize,
}

/// What a [`Follower`] saw.
#[derive(Debug, Clone, Default)]
pub struct FollowerLog {
    /// Every publication, in the order received (live or replayed): `(offset, n)` with `n` from
    /// `data = {"n": n}`.
    pub publications: Vec<(u64, u64)>,
    /// The position its first subscribe returned (`offset` = the stream top then).
    pub first_position: Option<(u64, String)>,
    /// Every subscribe after the first.
    pub resubscribes: Vec<Resubscribe>,
    /// Why each subscribed connection ended: `close 3001 shutdown`, `connection lost: …`.
    pub disconnects: Vec<String>,
    /// Connection attempts that did not get as far as a subscription.
    pub failed_attempts: Vec<String>,
    /// The client id of each connection.
    pub clients: Vec<String>,
    /// The first broken guarantee (gap, duplicate, not recovered, epoch change); the follower stops there.
    pub violation: Option<String>,
}

impl FollowerLog {
    /// A readable account for failure messages: publications as offset ranges, then everything else.
    pub fn summary(&self) -> String {
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for &(offset, _) in &self.publications {
            match ranges.last_mut() {
                Some((_, end)) if *end + 1 == offset => *end = offset,
                _ => ranges.push((offset, offset)),
            }
        }
        let ranges: Vec<String> = ranges
            .iter()
            .map(|(start, end)| format!("{start}..={end}"))
            .collect();
        format!(
            "publications (offsets): [{}]\nfirst position: {:?}\nresubscribes: {:?}\ndisconnects: {:?}\n\
             failed attempts: {:?}\nclients: {:?}\nviolation: {:?}",
            ranges.join(", "),
            self.first_position,
            self.resubscribes,
            self.disconnects,
            self.failed_attempts,
            self.clients,
            self.violation
        )
    }

    /// The offset of the last publication seen, or of the first subscribe.
    pub fn last_offset(&self) -> u64 {
        self.publications
            .last()
            .map(|&(offset, _)| offset)
            .or_else(|| self.first_position.as_ref().map(|(offset, _)| *offset))
            .unwrap_or(0)
    }
}

/// A client following one channel: it connects to the first of its URLs, subscribes (recoverable and
/// positioned), checks that offsets arrive contiguously, and when its connection ends it connects to the
/// next URL and resubscribes with `recover`, requiring `recovered: true`. It runs until dropped.
pub struct Follower {
    /// Names it in failures.
    pub name: String,
    log: watch::Receiver<FollowerLog>,
    task: JoinHandle<()>,
}

impl Follower {
    /// Starts following `channel` through `urls` (WebSocket URLs, tried in turn).
    pub fn start(name: &str, urls: Vec<String>, channel: &str) -> Self {
        let (sender, log) = watch::channel(FollowerLog::default());
        let task = tokio::spawn(follow(urls, channel.to_owned(), sender));
        Self {
            name: name.to_owned(),
            log,
            task,
        }
    }

    /// What it saw so far.
    pub fn log(&self) -> FollowerLog {
        self.log.borrow().clone()
    }

    /// Waits until `done` holds for its log, failing at a violation or after [`CLUSTER_WAIT`].
    pub async fn wait_for(
        &mut self,
        what: &str,
        mut done: impl FnMut(&FollowerLog) -> bool,
    ) -> FollowerLog {
        let outcome = tokio::time::timeout(CLUSTER_WAIT, async {
            self.log
                .wait_for(|log| log.violation.is_some() || done(log))
                .await
                .map(|_| ())
        })
        .await;
        let log = self.log();
        match outcome {
            Ok(Ok(())) if log.violation.is_none() => log,
            Ok(Ok(())) => panic!(
                "follower {}: {} (while waiting for {what}); {}",
                self.name,
                log.violation.as_deref().unwrap_or_default(),
                log.summary()
            ),
            Ok(Err(_)) => panic!(
                "follower {} stopped while waiting for {what}; {}",
                self.name,
                log.summary()
            ),
            Err(_) => panic!(
                "follower {}: no {what} within {CLUSTER_WAIT:?}; {}",
                self.name,
                log.summary()
            ),
        }
    }

    /// Waits until it saw the publication at `offset`.
    pub async fn wait_for_offset(&mut self, offset: u64) -> FollowerLog {
        self.wait_for(&format!("offset {offset}"), |log| {
            log.last_offset() >= offset
        })
        .await
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Stops the publisher, waits until every follower has its last publication and asserts that each saw
/// exactly what was published ([`assert_saw_everything`]); returns what was published.
pub async fn stop_and_check_everyone(
    publisher: Publisher,
    followers: &mut [Follower],
) -> Vec<Published> {
    let published = publisher.stop().await;
    let top = published.last().expect("published").offset;
    for follower in followers.iter_mut() {
        follower.wait_for_offset(top).await;
        assert_saw_everything(follower, &published);
    }
    published
}

/// Asserts that the follower saw exactly what was published, in order, each once: it subscribed before the
/// first publication, so its publications must be `published` itself.
pub fn assert_saw_everything(follower: &Follower, published: &[Published]) {
    let log = follower.log();
    let name = &follower.name;
    assert!(
        log.violation.is_none(),
        "follower {name}: {}",
        log.summary()
    );
    let (_, epoch) = log
        .first_position
        .clone()
        .unwrap_or_else(|| panic!("follower {name} never subscribed"));
    assert_eq!(
        epoch, published[0].epoch,
        "follower {name}: the epoch changed"
    );
    let expected: Vec<(u64, u64)> = published.iter().map(|p| (p.offset, p.n)).collect();
    if log.publications != expected {
        let missing: Vec<_> = expected
            .iter()
            .filter(|p| !log.publications.contains(p))
            .collect();
        panic!(
            "follower {name} saw {} publications, {} were published; missing {missing:?}; {}",
            log.publications.len(),
            expected.len(),
            log.summary()
        );
    }
    for resubscribe in &log.resubscribes {
        assert!(resubscribe.recovered, "follower {name}: {}", log.summary());
    }
}

/// How one connection of a follower ended.
enum Ended {
    /// Before it was subscribed: try the next URL after a short backoff.
    Failed(String),
    /// After it was subscribed: move on to the next URL at once.
    Lost(String),
    /// A broken guarantee: stop.
    Violation(String),
}

async fn follow(urls: Vec<String>, channel: String, log: watch::Sender<FollowerLog>) {
    let mut position: Option<(u64, String)> = None;
    for attempt in 0.. {
        let url = &urls[attempt % urls.len()];
        match follow_once(url, &channel, &mut position, &log).await {
            Ended::Violation(violation) => {
                log.send_modify(|log| log.violation = Some(violation));
                return;
            }
            Ended::Lost(reason) => log.send_modify(|log| log.disconnects.push(reason)),
            Ended::Failed(reason) => {
                log.send_modify(|log| log.failed_attempts.push(format!("{url}: {reason}")));
                // Reconnect backoff, as the SDKs do.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One connection of a follower: connect, subscribe (recovering from `position`), then read publications
/// until the connection ends.
async fn follow_once(
    url: &str,
    channel: &str,
    position: &mut Option<(u64, String)>,
    log: &watch::Sender<FollowerLog>,
) -> Ended {
    let mut conn = match Conn::open(url).await {
        Ok(conn) => conn,
        Err(reason) => return Ended::Failed(reason),
    };
    let reply = match conn.request(1, json!({"id": 1, "connect": {}})).await {
        Ok(reply) => reply,
        Err(reason) => return Ended::Failed(reason),
    };
    let Some(client) = reply["connect"]["client"].as_str() else {
        return Ended::Failed(format!("connect: {reply}"));
    };
    log.send_modify(|log| log.clients.push(client.to_owned()));
    let mut subscribe = json!({"channel": channel, "recoverable": true, "positioned": true});
    if let Some((offset, epoch)) = position.as_ref() {
        subscribe["recover"] = true.into();
        subscribe["offset"] = (*offset).into();
        subscribe["epoch"] = epoch.as_str().into();
    }
    let reply = match conn
        .request(2, json!({"id": 2, "subscribe": subscribe}))
        .await
    {
        Ok(reply) => reply,
        Err(reason) => return Ended::Failed(reason),
    };
    let Some(result) = reply.get("subscribe") else {
        // A temporary error (the engine briefly unreachable, the node shutting down) is retried.
        if reply["error"]["temporary"].as_bool() == Some(true) {
            return Ended::Failed(format!("subscribe: {reply}"));
        }
        return Ended::Violation(format!("subscribe refused: {reply}"));
    };
    let flag = |name: &str| result[name].as_bool().unwrap_or(false);
    let epoch = result["epoch"].as_str().unwrap_or("").to_owned();
    match position.as_ref() {
        None => {
            if !flag("recoverable") || !flag("positioned") || epoch.is_empty() {
                return Ended::Violation(format!("first subscribe: {reply}"));
            }
            let top = result["offset"].as_u64().unwrap_or(0);
            *position = Some((top, epoch.clone()));
            log.send_modify(|log| log.first_position = Some((top, epoch)));
        }
        Some((_, our_epoch)) => {
            if !flag("was_recovering") || !flag("recovered") || epoch != *our_epoch {
                return Ended::Violation(format!("resubscribe not recovered: {reply}"));
            }
            let replay = result["publications"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            log.send_modify(|log| {
                log.resubscribes.push(Resubscribe {
                    url: url.to_owned(),
                    recovered: true,
                    replayed: replay.len(),
                })
            });
            for publication in &replay {
                if let Err(violation) = accept(publication, position, log) {
                    return Ended::Violation(violation);
                }
            }
        }
    }
    loop {
        let message = match conn.next().await {
            Ok(message) => message,
            Err(reason) => return Ended::Lost(reason),
        };
        let push = &message["push"];
        if push["channel"] != channel {
            continue;
        }
        if let Some(publication) = push.get("pub") {
            if let Err(violation) = accept(publication, position, log) {
                return Ended::Violation(violation);
            }
        } else if let Some(unsubscribe) = push.get("unsubscribe") {
            // E.g. 2500 "insufficient state" after a gap: resubscribe with recovery (on a new connection).
            return Ended::Lost(format!("unsubscribe push {unsubscribe}"));
        }
    }
}

/// Records a publication that must come right after `position`.
fn accept(
    publication: &Value,
    position: &mut Option<(u64, String)>,
    log: &watch::Sender<FollowerLog>,
) -> Result<(), String> {
    let (last, _) = position.as_mut().expect("subscribed");
    let offset = publication["offset"].as_u64().unwrap_or(0);
    if offset != *last + 1 {
        let what = if offset <= *last { "duplicate" } else { "gap" };
        return Err(format!(
            "{what}: offset {offset} after {last}: {publication}"
        ));
    }
    *last = offset;
    let n = publication["data"]["n"].as_u64().unwrap_or(0);
    log.send_modify(|log| log.publications.push((offset, n)));
    Ok(())
}

/// A WebSocket speaking the Centrifugo JSON protocol, failing softly: every error is a reason string.
struct Conn {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pending: VecDeque<Value>,
}

impl Conn {
    async fn open(url: &str) -> Result<Self, String> {
        match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url)).await {
            Ok(Ok((ws, _))) => Ok(Self {
                ws,
                pending: VecDeque::new(),
            }),
            Ok(Err(error)) => Err(format!("open: {error}")),
            Err(_) => Err("open: timed out".into()),
        }
    }

    /// Sends a command and waits (bounded) for the reply with its id; other messages stay queued.
    async fn request(&mut self, id: u64, command: Value) -> Result<Value, String> {
        self.ws
            .send(Message::text(command.to_string()))
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut skipped = VecDeque::new();
        let reply = tokio::time::timeout(WAIT, async {
            loop {
                let message = self.next().await?;
                if message["id"].as_u64() == Some(id) {
                    return Ok(message);
                }
                skipped.push_back(message);
            }
        })
        .await
        .unwrap_or_else(|_| Err(format!("no reply to command {id} in time")));
        // What came before the reply goes first; what came after it (in the same frame) stays queued.
        skipped.append(&mut self.pending);
        self.pending = skipped;
        reply
    }

    /// The next JSON document, answering `{}` pings; `Err` when the connection ends.
    async fn next(&mut self) -> Result<Value, String> {
        loop {
            if let Some(message) = self.pending.pop_front() {
                return Ok(message);
            }
            match self.ws.next().await {
                None => return Err("connection lost".into()),
                Some(Err(error)) => return Err(format!("connection lost: {error}")),
                Some(Ok(Message::Text(text))) => {
                    for line in text.split('\n') {
                        let message: Value = serde_json::from_str(line)
                            .map_err(|e| format!("bad JSON {line:?}: {e}"))?;
                        if message == json!({}) {
                            self.ws
                                .send(Message::text("{}"))
                                .await
                                .map_err(|e| format!("pong: {e}"))?;
                        } else {
                            self.pending.push_back(message);
                        }
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(match frame {
                        Some(frame) => format!("close {} {}", u16::from(frame.code), frame.reason),
                        None => "close without code".into(),
                    });
                }
                Some(Ok(_)) => {}
            }
        }
    }
}

/// An SDK scenario script run as a child that talks with the test over lines: it prints `STEP …` lines
/// when it needs the test to act, and reads `go` from stdin to continue.
pub struct SdkScript {
    what: String,
    child: Child,
    stdin: ChildStdin,
    stdout: Lines,
    stderr: Lines,
}

impl SdkScript {
    /// Starts `program script` in the repository root with these environment variables.
    pub fn start(program: &str, script: &str, env: &[(&str, String)]) -> Self {
        let mut child = Command::new(program)
            .arg(script)
            .current_dir(REPO_ROOT)
            .envs(env.iter().map(|(name, value)| (*name, value.as_str())))
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{program} {script}`: {e}"));
        Self {
            what: format!("{program} {script}"),
            stdin: child.stdin.take().expect("piped stdin"),
            stdout: collect_lines(child.stdout.take().expect("piped stdout")),
            stderr: collect_lines(child.stderr.take().expect("piped stderr")),
            child,
        }
    }

    fn output(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout.borrow().join("\n"),
            self.stderr.borrow().join("\n")
        )
    }

    /// Waits for the line that starts with `prefix` and returns it.
    pub async fn wait_for_line(&mut self, prefix: &str) -> String {
        let found = tokio::time::timeout(CLUSTER_WAIT, async {
            self.stdout
                .wait_for(|lines| lines.iter().any(|line| line.starts_with(prefix)))
                .await
                .is_ok()
        })
        .await;
        if found != Ok(true) {
            panic!(
                "`{}` printed no {prefix:?} line:\n{}",
                self.what,
                self.output()
            );
        }
        let lines = self.stdout.borrow();
        lines
            .iter()
            .find(|line| line.starts_with(prefix))
            .cloned()
            .expect("found")
    }

    /// Tells the script to go on.
    pub async fn go(&mut self) {
        self.stdin
            .write_all(b"go\n")
            .await
            .unwrap_or_else(|e| panic!("`{}` stopped early ({e}):\n{}", self.what, self.output()));
    }

    /// Waits for the script to end and asserts it exited 0 after printing `PASS`.
    pub async fn assert_passes(mut self) {
        let status = tokio::time::timeout(Duration::from_secs(90), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("`{}` did not finish:\n{}", self.what, self.output()))
            .expect("wait for the script");
        // The rest of its output.
        let _ = tokio::time::timeout(WAIT, self.stdout.wait_for(|_| false)).await;
        let _ = tokio::time::timeout(WAIT, self.stderr.wait_for(|_| false)).await;
        let passed = self
            .stdout
            .borrow()
            .iter()
            .any(|line| line.starts_with("PASS"));
        assert!(
            status.success() && passed,
            "`{}` failed with {status}\n{}",
            self.what,
            self.output()
        );
    }
}

/// Calls the server API with `call` until `done` accepts the result, failing after [`CLUSTER_WAIT`] with
/// `what`. For state that changes on a clock (presence expiry, stale node entries, nodes announcing
/// themselves every few seconds), which nobody can wait for as an event.
pub async fn api_until<F, Fut>(what: &str, mut call: F, done: impl Fn(&Value) -> bool) -> Value
where
    F: FnMut() -> Fut,
    Fut: Future<Output = (u16, Value)>,
{
    let deadline = tokio::time::Instant::now() + CLUSTER_WAIT;
    loop {
        let (status, body) = call().await;
        assert_eq!(status, 200, "{body}");
        if done(&body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}; last answer: {body:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
