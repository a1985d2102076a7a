//! Redis over TLS (`rediss://`), as managed Redis services require: a `redis-server` started with TLS only,
//! its certificate signed by a CA generated here, asking clients for a certificate of their own. The engine
//! and the queue reach it with `[engine.redis.tls]`; a node without the CA, or without a client certificate,
//! refuses to start with the reason. Through a Sentinel over TLS, the primary it names is reached with TLS
//! too, before and after a failover.

use std::path::{Path, PathBuf};

use herald::testing::{RedisSentinel, RedisServer, RedisTls};
use herald_tests::{Client, TestServer, WAIT, config, publication};
use redis::AsyncCommands;
use serde_json::json;

/// A CA, a server certificate and a client certificate it signed, as PEM files in a temporary folder.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "herald test CA");
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA certificate");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write CA");
        for name in ["server", "client"] {
            let params =
                rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                    .expect("params");
            let key = rcgen::KeyPair::generate().expect("key");
            let cert = params.signed_by(&key, &ca).expect("signed certificate");
            std::fs::write(dir.path().join(format!("{name}.pem")), cert.pem()).expect("write cert");
            std::fs::write(dir.path().join(format!("{name}.key")), key.serialize_pem())
                .expect("write key");
        }
        Self { dir }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// A TLS-only Redis that accepts clients with a certificate this CA signed, and no others.
    fn redis(&self) -> RedisServer {
        RedisServer::start_tls(&RedisTls {
            cert: &self.path("server.pem"),
            key: &self.path("server.key"),
            ca: &self.path("ca.pem"),
            require_client_cert: true,
        })
    }

    /// `[engine.redis.tls]` with the CA and, when `client`, the client certificate.
    fn tls_toml(&self, client: bool) -> String {
        let quoted = |path: &Path| format!("{:?}", path.to_str().expect("UTF-8 path"));
        let mut toml = format!(
            "[engine.redis.tls]\nca_file = {}\n",
            quoted(&self.path("ca.pem"))
        );
        if client {
            toml.push_str(&format!(
                "cert_file = {}\nkey_file = {}\n",
                quoted(&self.path("client.pem")),
                quoted(&self.path("client.key"))
            ));
        }
        toml
    }

    /// A client of the test's own, as an application publishing into the queue would be.
    async fn connect(&self, url: &str) -> redis::aio::MultiplexedConnection {
        let read = |file: &str| std::fs::read(self.path(file)).expect("read PEM");
        let certificates = redis::TlsCertificates {
            client_tls: Some(redis::ClientTlsConfig {
                client_cert: read("client.pem"),
                client_key: read("client.key"),
            }),
            root_cert: Some(read("ca.pem")),
        };
        redis::Client::build_with_tls(url, certificates)
            .expect("TLS client")
            .get_multiplexed_async_connection()
            .await
            .expect("connect over TLS")
    }
}

/// The engine over TLS with a client certificate: publications are delivered and kept in history, and the
/// queue (sharing the engine's addresses and certificates) publishes what an application appends.
#[tokio::test]
async fn engine_and_queue_work_over_tls() {
    let pki = Pki::new();
    let redis = pki.redis();
    let url = redis.url();
    assert!(url.starts_with("rediss://"), "{url}");
    let extra = format!(
        "{}\n[channel.defaults]\nhistory_size = 10\nhistory_ttl = \"1m\"\n[queue]\nenabled = true\nblock = \"100ms\"\n",
        pki.tls_toml(true)
    );
    let server = TestServer::start_on_redis(&url, &extra).await;
    let (mut client, _) = Client::connect(&server).await;
    let reply = client.subscribe(json!({"channel": "secure"})).await;
    assert!(reply.get("subscribe").is_some(), "{reply}");
    let published = server.publish("secure", json!({"n": 1})).await;
    assert_eq!(published["offset"], 1, "{published}");
    let push = client.next_push().await;
    assert_eq!(publication(&push, "secure")["data"], json!({"n": 1}));

    let mut app = pki.connect(&url).await;
    let _: String = app
        .xadd(
            "herald:queue",
            "*",
            &[("channel", "secure"), ("data", r#"{"n":2}"#)],
        )
        .await
        .expect("XADD over TLS");
    let push = client.next_push().await;
    assert_eq!(publication(&push, "secure")["data"], json!({"n": 2}));
    let (_, history) = server
        .api("history", json!({"channel": "secure", "limit": -1}))
        .await;
    assert_eq!(
        history["result"]["publications"].as_array().map(Vec::len),
        Some(2),
        "{history}"
    );
}

/// A node that does not trust the server's CA, or that has no client certificate for a server that asks for
/// one, does not start: the error says what failed.
#[tokio::test]
async fn untrusted_or_unauthenticated_tls_refuses_to_start() {
    let pki = Pki::new();
    let redis = pki.redis();
    let engine = |tls: &str| {
        config(&format!(
            "[engine]\ntype = \"redis\"\n[engine.redis]\naddresses = [{:?}]\nconnect_timeout = \"500ms\"\n{tls}",
            redis.url()
        ))
    };
    // The system's roots do not include the test CA.
    let error = herald::server::start(engine(""))
        .await
        .expect_err("an untrusted server certificate");
    assert!(
        error.to_string().to_lowercase().contains("certificate"),
        "{error}"
    );
    // Trusted, but without the client certificate the server requires.
    let error = herald::server::start(engine(&pki.tls_toml(false)))
        .await
        .expect_err("no client certificate");
    assert!(!error.to_string().is_empty());
    // A missing file is a configuration error naming the key.
    let mut with_missing_file = engine("");
    with_missing_file.engine.redis.tls.ca_file = Some("/nonexistent/ca.pem".into());
    let missing = with_missing_file.validate().expect_err("a missing CA file");
    assert!(
        missing.to_string().contains("engine.redis.tls.ca_file"),
        "{missing}"
    );
}

/// Sentinel over TLS: the Sentinel and the primary it names are both reached with TLS and the client
/// certificate, and after `kill -9` of the primary the node publishes through the promoted replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_over_tls_is_followed_through_a_failover() {
    let pki = Pki::new();
    let mut sentinel = RedisSentinel::start_tls(&RedisTls {
        cert: &pki.path("server.pem"),
        key: &pki.path("server.key"),
        ca: &pki.path("ca.pem"),
        require_client_cert: true,
    });
    assert!(sentinel.url().starts_with("rediss://"));
    let extra = format!(
        "[engine.redis]\nsentinel_master = \"{}\"\n{}",
        RedisSentinel::MASTER,
        pki.tls_toml(true)
    );
    let server = TestServer::start_on_redis(&sentinel.url(), &extra).await;
    let (mut client, _) = Client::connect(&server).await;
    let reply = client.subscribe(json!({"channel": "secure"})).await;
    assert!(reply.get("subscribe").is_some(), "{reply}");
    server.publish("secure", json!({"n": 1})).await;
    let push = client.next_push().await;
    assert_eq!(publication(&push, "secure")["data"], json!({"n": 1}));

    sentinel.fail_over();
    // Publishes fail with a temporary error until the node has moved to the new primary.
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    loop {
        let (_, body) = server
            .api("publish", json!({"channel": "secure", "data": {"n": 2}}))
            .await;
        if body.get("result").is_some() {
            break;
        }
        assert_eq!(body["error"]["temporary"], true, "{body}");
        assert!(tokio::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let push = client.next_push().await;
    assert_eq!(publication(&push, "secure")["data"], json!({"n": 2}));
}
