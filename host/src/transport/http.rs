//! HTTP/1.1, and HTTP/2 where a TLS client chose it, on the connections the [`Listener`] accepted (hyper),
//! with a deadline on every HTTP/1.1 request head.
//!
//! axum's own `serve` gives no way to bound how long a client may take to send its request head, so a client
//! that opens a connection and trickles (or never sends) its request would hold it forever. Here every
//! connection runs with `limits.handshake_timeout` as hyper's header-read timeout: the WebSocket upgrade
//! request must arrive within it, and an idle keep-alive API connection is closed after it. Upgraded
//! WebSocket connections leave hyper and are bounded by the session's own deadlines instead.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Listener;
use super::tls::speaks_http2;

/// Serves `app` on every connection `listener` accepts until `shutdown`, then lets each connection finish
/// its request in flight and returns when all have.
pub async fn serve(
    mut listener: Listener,
    app: Router,
    header_timeout: Duration,
    shutdown: CancellationToken,
) {
    let connections = TaskTracker::new();
    loop {
        let (io, remote) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = axum::serve::Listener::accept(&mut listener) => accepted,
        };
        let (app, shutdown) = (app.clone(), shutdown.clone());
        connections.spawn(async move {
            // Handlers read the client address as axum's `ConnectInfo`, as with `axum::serve`.
            let service =
                hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(remote));
                    tower_service::Service::call(&mut app.clone(), request)
                });
            let result = if speaks_http2(&io) {
                // Requests are streams of the connection: none is an upgrade, and the TLS handshake's
                // deadline bounded the connection's start.
                let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .serve_connection(TokioIo::new(io), service);
                until_shutdown(connection, &shutdown, |c| c.graceful_shutdown()).await
            } else {
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .serve_connection(TokioIo::new(io), service)
                    .with_upgrades();
                until_shutdown(connection, &shutdown, |c| c.graceful_shutdown()).await
            };
            if let Err(error) = result {
                log_connection_error(remote, &error);
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Runs a connection until it ends; at `shutdown`, lets its requests in flight finish first.
async fn until_shutdown<C>(
    connection: C,
    shutdown: &CancellationToken,
    graceful: impl FnOnce(std::pin::Pin<&mut C>),
) -> Result<(), hyper::Error>
where
    C: Future<Output = Result<(), hyper::Error>>,
{
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => result,
        _ = shutdown.cancelled() => {
            graceful(connection.as_mut());
            connection.await
        }
    }
}

/// Connection-level failures are the client's doing (a timeout, a reset, garbage): debug level only.
fn log_connection_error(remote: SocketAddr, error: &hyper::Error) {
    if error.is_timeout() {
        tracing::debug!(%remote, "HTTP request head not received in time; connection closed");
    } else {
        tracing::debug!(%remote, %error, "HTTP connection ended with an error");
    }
}
