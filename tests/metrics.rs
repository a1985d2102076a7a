//! `/metrics`: the Prometheus text exposition, checked by Prometheus' own tools — `promtool check metrics`
//! lints what Herald serves, and a real Prometheus server scrapes a node and sees a lost Redis link within
//! seconds — and the counts a connection, a subscription, a publication and a disconnect leave behind.

use std::process::{Command, Stdio};
use std::time::Duration;

use herald::testing::{RedisServer, free_port};
use herald_tests::{Client, TestServer, WAIT};
use serde_json::{Value, json};

const METRICS_KEY: &str = "scrape-key";

/// Scrapes `/metrics` on `address` with `key` (if any): the status and the body.
async fn scrape(address: impl std::fmt::Display, key: Option<&str>) -> (u16, String) {
    let mut request = reqwest::Client::new().get(format!("http://{address}/metrics"));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.expect("metrics request");
    let status = response.status().as_u16();
    (status, response.text().await.expect("metrics body"))
}

/// The value of the sample written exactly as `series` (`name{labels}` with labels in the exposition's
/// order), if there is one.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.parse().ok()
    })
}

/// Scrapes until `series` has `value` (counts settle as the server handles what the test did).
async fn wait_for_sample(server: &TestServer, series: &str, value: f64) -> String {
    tokio::time::timeout(WAIT, async {
        loop {
            let (_, text) = scrape(server.addr, Some(METRICS_KEY)).await;
            if sample(&text, series) == Some(value) {
                return text;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{series} never became {value}"))
}

fn metrics_config() -> String {
    format!("[metrics]\nenabled = true\nkey = \"{METRICS_KEY}\"\n[channel.namespaces.chat]\n")
}

/// A connection, a subscription, an API publication delivered to it and the client leaving show up under
/// their names and labels, and the whole exposition passes promtool's parser and linter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_session_is_counted_and_promtool_accepts_the_exposition() {
    let server = TestServer::start(&metrics_config()).await;
    let centrifuge = r#"protocol="centrifuge",transport="websocket""#;

    let (mut client, _) = Client::connect(&server).await;
    let reply = client.call("subscribe", json!({"channel": "news"})).await;
    assert!(reply.get("error").is_none(), "{reply}");
    let text = wait_for_sample(
        &server,
        &format!("herald_subscriptions{{{centrifuge}}}"),
        1.0,
    )
    .await;
    assert_eq!(
        sample(&text, &format!("herald_connections{{{centrifuge}}}")),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, &format!("herald_connects_total{{{centrifuge}}}")),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"herald_commands_total{command="subscribe",protocol="centrifuge"}"#
        ),
        Some(1.0)
    );

    server.publish("news", json!({"n": 1})).await;
    let push = client.next_push().await;
    assert_eq!(push["pub"]["data"], json!({"n": 1}), "{push}");
    let text = scrape(server.addr, Some(METRICS_KEY)).await.1;
    assert_eq!(
        sample(
            &text,
            r#"herald_publications_total{namespace="",source="api"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, r#"herald_deliveries_total{protocol="centrifuge"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"herald_publish_duration_seconds_count{source="api"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, r#"herald_engine_calls_total{operation="publish"}"#),
        Some(1.0)
    );
    assert!(
        sample(
            &text,
            r#"herald_transport_sent_bytes_total{protocol="centrifuge",transport="websocket"}"#
        )
        .is_some_and(|bytes| bytes > 0.0),
        "{text}"
    );
    assert_eq!(sample(&text, "herald_ready"), Some(1.0));
    assert_eq!(
        sample(
            &text,
            r#"herald_publications_total{namespace="chat",source="queue"}"#
        ),
        Some(0.0),
        "configured namespaces are listed from the start"
    );

    // An error reply is counted under its command and code.
    let reply = client
        .call("history", json!({"channel": "nowhere:x"}))
        .await;
    assert_eq!(reply["error"]["code"], 102, "{reply}");
    let text = scrape(server.addr, Some(METRICS_KEY)).await.1;
    assert_eq!(
        sample(
            &text,
            r#"herald_command_errors_total{code="102",command="history",protocol="centrifuge"}"#
        ),
        Some(1.0),
        "{text}"
    );

    drop(client);
    let text = wait_for_sample(&server, &format!("herald_connections{{{centrifuge}}}"), 0.0).await;
    assert_eq!(
        sample(&text, &format!("herald_subscriptions{{{centrifuge}}}")),
        Some(0.0)
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("herald_disconnects_total{")
                && l.contains("protocol=\"centrifuge\"")),
        "{text}"
    );
    herald_tests::promtool(&["check", "metrics"], std::path::Path::new("."), &text)
        .unwrap_or_else(|problems| panic!("promtool: {problems}\n{text}"));
}

/// With `metrics.key` set, a scrape without it (or with another) gets 401; off by default, there is no
/// `/metrics` at all.
#[tokio::test]
async fn metrics_need_their_key_and_are_off_by_default() {
    let server = TestServer::start(&metrics_config()).await;
    assert_eq!(scrape(server.addr, None).await.0, 401);
    assert_eq!(scrape(server.addr, Some("guess")).await.0, 401);
    assert_eq!(scrape(server.addr, Some(METRICS_KEY)).await.0, 200);
    // The server API key does not open them either.
    assert_eq!(
        scrape(server.addr, Some(herald_tests::API_KEY)).await.0,
        401
    );

    let off = TestServer::start("").await;
    assert_eq!(scrape(off.addr, None).await.0, 404);
}

/// `metrics.address` serves `/metrics` there, and not on the main address.
#[tokio::test]
async fn metrics_on_an_address_of_their_own() {
    let port = free_port();
    let server = TestServer::start(&format!(
        "[metrics]\nenabled = true\naddress = \"127.0.0.1:{port}\"\n"
    ))
    .await;
    let (status, text) = scrape(format!("127.0.0.1:{port}"), None).await;
    assert_eq!(status, 200);
    assert!(text.contains("herald_build_info{version="), "{text}");
    assert_eq!(scrape(server.addr, None).await.0, 404);
}

/// A real Prometheus server scrapes a node on the Redis engine (with the metrics key as its bearer
/// token): `herald_ready` is 1, then Redis goes away and within seconds `/ready` answers 503 and
/// Prometheus holds `herald_ready 0` and a failed engine call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_a_node_and_sees_the_engine_link_go_down() {
    let mut redis = RedisServer::start();
    let server = TestServer::start_on_redis(
        &redis.url(),
        &format!("[metrics]\nenabled = true\nkey = \"{METRICS_KEY}\"\n"),
    )
    .await;
    let prometheus = Prometheus::start(&server.addr.to_string());

    assert_eq!(prometheus.wait_for("herald_ready", 1.0).await, 1.0);

    redis.kill();
    let ready = tokio::time::timeout(WAIT, async {
        loop {
            let response = reqwest::get(format!("http://{}/ready", server.addr))
                .await
                .expect("ready request");
            if response.status().as_u16() == 503 {
                return response.json::<Value>().await.expect("JSON");
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("/ready turns 503 once Redis is gone");
    assert_eq!(ready["ready"], false, "{ready}");
    assert_eq!(prometheus.wait_for("herald_ready", 0.0).await, 0.0);
    let failed = prometheus
        .wait_for_at_least(r#"herald_engine_errors_total{operation="ready"}"#, 1.0)
        .await;
    assert!(failed >= 1.0);
}

/// A Prometheus server on a free loopback port scraping one target every second; stopped when dropped.
struct Prometheus {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Self {
        let dir = tempfile::tempdir().expect("prometheus dir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: herald\n    authorization:\n      credentials: {METRICS_KEY}\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("write prometheus.yml");
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian package prometheus) is installed");
        Self {
            child,
            port,
            _dir: dir,
        }
    }

    /// The latest value of an instant query, if Prometheus has one yet.
    async fn query(&self, query: &str) -> Option<f64> {
        let response = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .query(&[("query", query)])
            .send()
            .await
            .ok()?;
        let body: Value = response.json().await.ok()?;
        body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    /// Queries until the value satisfies `done` (scrapes come every second; Prometheus takes a moment to
    /// start), within 30 s.
    async fn wait_until(&self, query: &str, done: impl Fn(f64) -> bool) -> f64 {
        let waited = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Some(value) = self.query(query).await.filter(|v| done(*v)) {
                    return value;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
        waited.unwrap_or_else(|_| panic!("Prometheus never had the expected {query}"))
    }

    async fn wait_for(&self, query: &str, value: f64) -> f64 {
        self.wait_until(query, |v| v == value).await
    }

    async fn wait_for_at_least(&self, query: &str, value: f64) -> f64 {
        self.wait_until(query, |v| v >= value).await
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The README's metrics table names exactly the `herald_*` families a node has.
#[tokio::test]
async fn the_readme_lists_exactly_the_exported_metrics() {
    let server = TestServer::start(&metrics_config()).await;
    let exported: std::collections::BTreeSet<String> =
        server.node.metrics.family_names().into_iter().collect();
    let text = scrape(server.addr, Some(METRICS_KEY)).await.1;
    for line in text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE herald_"))
    {
        let name = format!("herald_{}", line.split(' ').next().unwrap_or_default());
        assert!(
            exported.contains(&name),
            "{name} is exported but not listed"
        );
    }
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let section = readme
        .split("\n## Metrics\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a Metrics section");
    let documented: std::collections::BTreeSet<String> = section
        .lines()
        .filter(|line| line.starts_with("| `herald_"))
        .flat_map(|line| {
            let first_cell = line.split('|').nth(1).unwrap_or_default();
            first_cell
                .split('`')
                .filter(|part| part.starts_with("herald_"))
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(exported, documented);
}
