//! The server: one port for WebSocket, the server API and health checks (with TLS when configured);
//! graceful shutdown.
//!
//! Shutdown is passed in as a future so the binary can use signals and tests anything else. When it
//! resolves: stop accepting, close every client with 3001 (Pusher clients 4200; they reconnect elsewhere), let in-flight API
//! requests finish, and give up waiting after `shutdown_timeout`.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::node::Node;
use crate::transport::tls::Certificates;
use crate::{admin, api, pusher_api, transport};

/// Starts a node and what runs beside it: the plugin watcher (when `plugins.watch` is on), the announcer
/// that keeps this node in the cluster's node list, the publisher of its subscriber counts, `/metrics` on its own address (when
/// `metrics.address` is set), and the queue consumers (when `queue.enabled`), after
/// the plugins are loaded so every entry goes through their publish chain.
pub async fn start(config: Config) -> anyhow::Result<Arc<Node>> {
    let node = Node::start(config).await?;
    if node.config.plugins.watch {
        crate::plugin::watch::start(node.plugins.clone(), node.shutdown.clone())?;
    }
    crate::nodes::start(node.clone());
    crate::counts::start(node.clone());
    serve_metrics_address(&node).await?;
    if node.config.queue.enabled {
        crate::queue::start(node.clone())
            .await
            .map_err(|error| anyhow::anyhow!("queue: {error}"))?;
    }
    Ok(node)
}

/// Every route, for serving or for tests.
pub fn app(node: Arc<Node>) -> Router {
    let mut router = Router::new();
    // Only for the Autobahn|Testsuite: the echo endpoint answers anyone, so it exists only when asked for.
    if node.config.websocket.conformance_echo {
        router = router.route("/conformance/echo", get(transport::echo_handler));
    }
    router
        .route("/connection/websocket", get(transport::websocket_handler))
        .route("/app/{key}", get(transport::pusher_handler))
        .merge(transport::emulation_routes(&node))
        .merge(transport::uni_routes(&node))
        .route(
            "/health",
            get(|| async {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    "{}",
                )
            }),
        )
        .route("/ready", get(ready))
        .merge(metrics_on_main_address(&node))
        .with_state(node.clone())
        .merge(admin::router(node.clone()))
        .merge(api::router(node.clone(), pusher_api::routes(node)))
}

/// `/metrics` on the main address, when metrics are on and have no address of their own.
fn metrics_on_main_address(node: &Node) -> Router<Arc<Node>> {
    let metrics = &node.config.metrics;
    if metrics.enabled && metrics.address.is_none() {
        Router::new().route("/metrics", get(scrape))
    } else {
        Router::new()
    }
}

/// The Prometheus text exposition; with `metrics.key` set, only for `Authorization: Bearer <key>` (401
/// otherwise, compared in constant time).
async fn scrape(
    axum::extract::State(node): axum::extract::State<Arc<Node>>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use subtle::ConstantTimeEq;
    let key = node.config.metrics.key.expose().as_bytes();
    if !key.is_empty() {
        let presented = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !bool::from(presented.as_bytes().ct_eq(key)) {
            return (
                axum::http::StatusCode::UNAUTHORIZED,
                [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
                "metrics need Authorization: Bearer <metrics.key>\n",
            )
                .into_response();
        }
    }
    (
        [(axum::http::header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        node.render_metrics().await,
    )
        .into_response()
}

/// Serves `/metrics` alone on `metrics.address` (plain HTTP) until the node shuts down; the listener is
/// bound before this returns, so a bad address fails the start.
async fn serve_metrics_address(node: &Arc<Node>) -> std::io::Result<()> {
    let metrics = &node.config.metrics;
    let Some(address) = metrics.address.filter(|_| metrics.enabled) else {
        return Ok(());
    };
    let listener = TcpListener::bind(address).await.map_err(|error| {
        std::io::Error::new(error.kind(), format!("metrics.address {address}: {error}"))
    })?;
    tracing::info!(%address, "metrics at /metrics on their own address");
    let router = Router::new()
        .route("/metrics", get(scrape))
        .with_state(node.clone());
    let shutdown = node.shutdown.clone().cancelled_owned();
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(%error, "the metrics listener failed");
        }
    });
    Ok(())
}

/// Readiness for load balancers and Kubernetes: 200 while this node should get new clients, 503 with the
/// reasons otherwise (`/health` only says the process answers).
async fn ready(
    axum::extract::State(node): axum::extract::State<Arc<Node>>,
) -> impl axum::response::IntoResponse {
    let (status, body) = match node.readiness().await {
        Ok(()) => (
            axum::http::StatusCode::OK,
            serde_json::json!({ "ready": true }),
        ),
        Err(reasons) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "ready": false, "reasons": reasons }),
        ),
    };
    (status, axum::Json(body))
}

/// Serves on `listener` until `shutdown` resolves, then shuts down gracefully.
pub async fn run(
    node: Arc<Node>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let tls = if node.config.tls.enabled() {
        let certificates = Certificates::load(&node.config.tls).map_err(std::io::Error::other)?;
        certificates
            .watch(node.shutdown.clone())
            .map_err(std::io::Error::other)?;
        let config = transport::tls::server_config(certificates).map_err(std::io::Error::other)?;
        Some((config, node.config.tls.handshake_timeout))
    } else {
        None
    };
    let limits = &node.config.limits;
    let proxy = limits.proxy_protocol.then(|| transport::ProxyProtocol {
        trusted: limits.trusted_proxies.clone(),
        timeout: limits.handshake_timeout,
    });
    let listener = transport::Listener::new(listener, tls, proxy)?;
    let server = transport::http::serve(
        listener,
        app(node.clone()),
        limits.handshake_timeout,
        node.shutdown.clone(),
    );
    let mut server = std::pin::pin!(server);
    tokio::select! {
        () = &mut server => return Ok(()),
        _ = shutdown => {}
    }
    let sessions = node.hub.stats().clients;
    tracing::info!(
        sessions,
        "shutting down: closing client connections (3001 shutdown; Pusher clients 4200, reconnect now)"
    );
    node.shutdown.cancel();
    node.sessions.close();
    let drained = tokio::time::timeout(node.config.shutdown_timeout, async {
        (&mut server).await;
        node.sessions.wait().await;
        // The last connections' member and vacancy events are in the webhook queues by now.
        node.pusher.stopped().await;
    })
    .await;
    match drained {
        Ok(()) => Ok(()),
        Err(_) => {
            tracing::warn!(timeout = ?node.config.shutdown_timeout, "shutdown timeout reached; dropping what is left");
            Ok(())
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
