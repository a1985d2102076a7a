//! Fuzzes the HTTP server API: `POST /api/<method>` with an arbitrary body, through the real router and a
//! fresh in-memory node per input (so an input's outcome never depends on the ones before it).
//!
//! Input format: the method name, a newline, then the body — so seeds are readable files. Beyond "never
//! panics", it checks that the server never answers 5xx to a request it could parse, and that every 200
//! body is valid JSON (results embed client payloads verbatim).

#![no_main]

use std::net::SocketAddr;
use std::sync::LazyLock;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use herald::config::Config;
use herald::node::Node;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

/// History, presence and recovery on for `ns:` channels and the defaults, so every method has work to do.
/// (No `channel_regex`: compiling it for every node made the run three times slower.)
const CONFIG: &str = r#"
[http_api]
insecure = true

[channel.defaults]
history_size = 4
history_ttl = "1m"
presence = true
allow_recovery = true

[channel.namespaces.ns]
history_size = 2
history_ttl = "1m"
presence = true
join_leave = true
"#;

static CONFIGURED: LazyLock<Config> =
    LazyLock::new(|| Config::from_toml(CONFIG).expect("the fuzz configuration is valid"));

// Built once: building a runtime per input would dominate the run.
static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
});

fuzz_target!(|data: &[u8]| {
    let (method, body) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    // A method that cannot be a path segment never reaches the handler; that is the router's business.
    let Ok(method) = std::str::from_utf8(method) else {
        return;
    };
    if method.is_empty()
        || !method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return;
    }
    // Created outside the runtime so the memory engine starts no background sweeper for it.
    let node = Node::new(CONFIGURED.clone()).expect("a node");
    let mut request = Request::post(format!("/api/{method}"))
        .body(Body::from(body.to_vec()))
        .expect("a request");
    request
        .extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
    let app = herald::server::app(node);
    RUNTIME.block_on(async move {
        let response = app
            .oneshot(request)
            .await
            .expect("the router is infallible");
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("a buffered body");
        assert!(
            !status.is_server_error(),
            "{method}: {status} {}",
            String::from_utf8_lossy(&body)
        );
        if status == StatusCode::OK {
            if let Err(error) = serde_json::from_slice::<serde_json::Value>(&body) {
                panic!(
                    "{method}: 200 body is not JSON ({error}): {}",
                    String::from_utf8_lossy(&body)
                );
            }
        }
    });
});
