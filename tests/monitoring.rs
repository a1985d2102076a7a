//! The ready-made monitoring in `docs/`: the Prometheus alert rules and the Grafana dashboard use only
//! metrics Herald has (and valid PromQL, by `promtool`), the alerts fire on what they should (`promtool test
//! rules`), and the Kubernetes example's probes, ports and `HERALD_*` variables are Herald's: a node started
//! with that environment answers the probes' paths on the ports they name.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use herald::testing::free_port;
use herald_tests::cluster::herald_binary;
use herald_tests::{TestServer, WAIT, promtool};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

fn docs(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs")
        .join(path)
}

/// Every `herald_*` metric name in `text`, with a histogram's `_bucket`/`_sum`/`_count` taken off.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("herald_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|b| b.ends_with("_seconds"))
            })
            .unwrap_or(&name);
        names.insert(base.to_owned());
    }
    names
}

/// The metric families a node has.
async fn herald_families() -> BTreeSet<String> {
    let server = TestServer::start("").await;
    server.node.metrics.family_names().into_iter().collect()
}

/// The alert rules are valid, use only Herald's metrics, and pass their own unit tests.
#[tokio::test]
async fn the_alert_rules_are_valid_use_real_metrics_and_fire_as_tested() {
    let dir = docs("monitoring");
    let rules = std::fs::read_to_string(dir.join("alerts.yml")).expect("alerts.yml");
    let families = herald_families().await;
    let used = metric_names(&rules);
    assert!(used.len() >= 8, "{used:?}");
    let unknown: Vec<&String> = used.difference(&families).collect();
    assert!(
        unknown.is_empty(),
        "alerts.yml uses unknown metrics {unknown:?}"
    );
    promtool(&["check", "rules", "alerts.yml"], &dir, "").unwrap_or_else(|e| panic!("{e}"));
    promtool(&["test", "rules", "alerts.test.yml"], &dir, "").unwrap_or_else(|e| panic!("{e}"));

    let parsed: serde_norway::Value = serde_norway::from_str(&rules).expect("YAML");
    let alerts: BTreeSet<String> = parsed["groups"][0]["rules"]
        .as_sequence()
        .expect("rules")
        .iter()
        .filter_map(|rule| rule["alert"].as_str().map(String::from))
        .collect();
    let tests = std::fs::read_to_string(dir.join("alerts.test.yml")).expect("alerts.test.yml");
    for alert in &alerts {
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "alerts.test.yml has no test for {alert}"
        );
    }
}

/// Every panel query of the Grafana dashboard uses Herald's metrics (or the standard `process_*` ones)
/// and is valid PromQL: promtool checks them as recording rules.
#[tokio::test]
async fn the_dashboard_queries_are_valid_promql_over_real_metrics() {
    let text =
        std::fs::read_to_string(docs("monitoring/grafana-dashboard.json")).expect("dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("dashboard JSON");
    let expressions: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|target| target["expr"].as_str().map(String::from))
        .collect();
    assert!(expressions.len() >= 20, "{expressions:?}");
    let families = herald_families().await;
    let used = metric_names(&expressions.join("\n"));
    let unknown: Vec<&String> = used.difference(&families).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard uses unknown metrics {unknown:?}"
    );
    // Every family Herald has is on the dashboard somewhere.
    let missing: Vec<&String> = families.difference(&used).collect();
    assert!(missing.is_empty(), "not on the dashboard: {missing:?}");

    // Grafana's own variables are not PromQL: give them the values Grafana would.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expression) in expressions.iter().enumerate() {
        let expression = expression
            .replace("$__rate_interval", "1m")
            .replace("$job", ".*");
        rules.push_str(&format!(
            "      - record: dashboard:panel_{i}\n        expr: {}\n",
            serde_json::to_string(&expression).expect("quoted")
        ));
    }
    std::fs::write(dir.path().join("dashboard.yml"), rules).expect("write rules");
    promtool(&["check", "rules", "dashboard.yml"], dir.path(), "")
        .unwrap_or_else(|e| panic!("{e}"));
}

/// The values the example's Secret would hold, by key.
const SECRET_VALUES: [(&str, &str); 3] = [
    ("api-key", "an-api-key"),
    ("metrics-key", "a-metrics-key"),
    ("redis-addresses", "[redis://127.0.0.1:6379]"),
];

/// The Deployment's container: its environment (secrets filled in from [`SECRET_VALUES`]), and the
/// manifest's documents.
fn kubernetes_example() -> (Vec<(String, String)>, Vec<serde_norway::Value>) {
    let text = std::fs::read_to_string(docs("kubernetes/herald.yaml")).expect("herald.yaml");
    let documents: Vec<serde_norway::Value> = serde_norway::Deserializer::from_str(&text)
        .map(|document| serde::Deserialize::deserialize(document).expect("a YAML document"))
        .collect();
    let deployment = documents
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let env = container["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .map(|variable| {
            let name = variable["name"].as_str().expect("name").to_owned();
            let value = match variable["value"].as_str() {
                Some(value) => value.to_owned(),
                None => {
                    let key = variable["valueFrom"]["secretKeyRef"]["key"]
                        .as_str()
                        .expect("a value or a secret");
                    SECRET_VALUES
                        .iter()
                        .find(|(k, _)| *k == key)
                        .unwrap_or_else(|| panic!("unknown secret key {key}"))
                        .1
                        .to_owned()
                }
            };
            (name, value)
        })
        .collect();
    (env, documents)
}

fn port_of(address: &str) -> u64 {
    address
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port")
}

/// The example's variables are all configuration keys that `check-config` accepts; its probes name the
/// container port Herald listens on, its metrics port is `metrics.address`'s; the Service and the
/// autoscaler point at the Deployment. Then a node started with that environment (on free ports, with a
/// real Redis) answers the probes' paths and serves `/metrics` with the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_example_matches_herald() {
    let (env, documents) = kubernetes_example();
    let value = |name: &str| {
        env.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{name} is not set"))
    };
    let deployment = documents
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .unwrap();
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let port = |name: &str| {
        container["ports"]
            .as_sequence()
            .expect("ports")
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("no container port {name}"))
    };
    assert_eq!(port("http"), port_of(&value("HERALD_ADDRESS")));
    assert_eq!(port("metrics"), port_of(&value("HERALD_METRICS__ADDRESS")));
    let readiness = &container["readinessProbe"]["httpGet"];
    let liveness = &container["livenessProbe"]["httpGet"];
    assert_eq!(readiness["port"], "http");
    assert_eq!(liveness["port"], "http");
    let readiness_path = readiness["path"]
        .as_str()
        .expect("readiness path")
        .to_owned();
    let liveness_path = liveness["path"].as_str().expect("liveness path").to_owned();
    assert_eq!(readiness_path, "/ready");
    assert_eq!(liveness_path, "/health");
    let service = documents.iter().find(|d| d["kind"] == "Service").unwrap();
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
    let autoscaler = documents
        .iter()
        .find(|d| d["kind"] == "HorizontalPodAutoscaler")
        .unwrap();
    assert_eq!(
        autoscaler["spec"]["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
    let args: Vec<String> = container["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("an argument").to_owned())
        .collect();

    // check-config accepts the environment, and reads every variable as a key.
    let config = tempfile::NamedTempFile::new().expect("config file");
    let checked = std::process::Command::new(herald_binary())
        .arg("check-config")
        .arg(config.path())
        .envs(env.iter().cloned())
        .env("RUST_LOG", "info")
        .output()
        .expect("herald runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(checked.status.success(), "{said}");
    assert!(!said.contains("ignored"), "{said}");

    // A node with that environment, its addresses moved to free loopback ports.
    let redis = herald::testing::RedisServer::start();
    let (http, metrics) = (free_port(), free_port());
    let mut command = tokio::process::Command::new(herald_binary());
    command
        .args(&args)
        .envs(env.iter().cloned())
        .env("HERALD_ADDRESS", format!("127.0.0.1:{http}"))
        .env("HERALD_METRICS__ADDRESS", format!("127.0.0.1:{metrics}"))
        .env(
            "HERALD_ENGINE__REDIS__ADDRESSES",
            format!("[{}]", redis.url()),
        )
        .env("HERALD_PLUGINS__DIR", "")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("herald starts");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.expect("read the log") {
            assert!(line.starts_with('{'), "--log-format json: {line}");
            if line.contains("herald listening") {
                return;
            }
        }
        panic!("herald exited");
    })
    .await
    .expect("herald listens");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    assert_eq!(
        status(format!("http://127.0.0.1:{http}{readiness_path}"), None).await,
        200
    );
    assert_eq!(
        status(format!("http://127.0.0.1:{http}{liveness_path}"), None).await,
        200
    );
    let key = value("HERALD_METRICS__KEY");
    assert_eq!(
        status(format!("http://127.0.0.1:{metrics}/metrics"), Some(&key)).await,
        200
    );
    assert_eq!(
        status(format!("http://127.0.0.1:{metrics}/metrics"), None).await,
        401
    );
    assert_eq!(
        status(format!("http://127.0.0.1:{http}/metrics"), Some(&key)).await,
        404
    );
}

/// The status of a GET, with a bearer key if given.
async fn status(url: String, key: Option<&str>) -> u16 {
    let mut request = reqwest::Client::new().get(url);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.expect("request").status().as_u16()
}
