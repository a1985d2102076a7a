//! The server: one port for WebSocket, the server API and health checks (with TLS when configured);
//! graceful shutdown.
//!
//! Shutdown is passed in as a future so the binary can use signals and tests anything else. When it
//! resolves: stop accepting, close every client with 3001 (they reconnect elsewhere), let in-flight API
//! requests finish, and give up waiting after `shutdown_timeout`.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;

use crate::node::Node;
use crate::transport::tls::Certificates;
use crate::{api, transport};

/// Every route, for serving or for tests.
pub fn app(node: Arc<Node>) -> Router {
    Router::new()
        .route("/connection/websocket", get(transport::websocket_handler))
        .route(
            "/health",
            get(|| async {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    "{}",
                )
            }),
        )
        .with_state(node.clone())
        .merge(api::router(node))
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
    // The tap is what lets axum hand the remote address of our own listener to the handlers.
    let listener = transport::Listener::new(listener, tls)?.tap_io(|_| {});
    let stop_accepting = node.shutdown.clone();
    let server = axum::serve(
        listener,
        app(node.clone()).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stop_accepting.cancelled_owned());
    let mut server = std::pin::pin!(server.into_future());
    tokio::select! {
        result = &mut server => return result,
        _ = shutdown => {}
    }
    let sessions = node.hub.stats().clients;
    tracing::info!(
        sessions,
        "shutting down: closing client connections with 3001"
    );
    node.shutdown.cancel();
    node.sessions.close();
    let drained = tokio::time::timeout(node.config.shutdown_timeout, async {
        let result = (&mut server).await;
        node.sessions.wait().await;
        result
    })
    .await;
    match drained {
        Ok(result) => result,
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
