//! Unidirectional connections for clients without an SDK (see [`CentrifugeUni`]): the connect request
//! comes with the opening request and the server only pushes.
//!
//! - `GET /connection/uni_sse?cf_connect=<request>` (or `POST` with the request as body): Server-Sent
//!   Events, what a browser's plain `EventSource` reads;
//! - `POST /connection/uni_http_stream` with the request as body: newline-delimited JSON (`curl -N`);
//! - `GET /connection/uni_websocket`: a WebSocket whose first message is the request; later messages
//!   are ignored.
//!
//! Subscriptions are server-side: a connect plugin's `channels`, or the server API's `subscribe`. The
//! request's `subs` (`{"channel":{"recover":true,"offset":…,"epoch":…}}`) recovers them after a reconnect.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Query, RawQuery, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;

use super::emulation::{Framing, Mode, SseQuery, open, preflight, with_host};
use super::websocket::{Upgrade, admit, connection_info, serve, unbox};
use crate::node::Node;
use crate::protocol::Protocol;
use crate::protocol::centrifuge::CentrifugeUni;
use crate::session::{Incoming, Session};

/// The unidirectional endpoints.
pub fn uni_routes(node: &Node) -> Router<Arc<Node>> {
    let limit = node.config.websocket.max_message_size + 1024;
    Router::new()
        .route(
            "/connection/uni_sse",
            get(uni_sse_handler)
                .post(uni_posted_handler)
                .options(preflight),
        )
        .route(
            "/connection/uni_http_stream",
            post(uni_posted_handler).options(preflight),
        )
        .route("/connection/uni_websocket", get(uni_websocket_handler))
        .layer(DefaultBodyLimit::max(limit))
}

/// `GET /connection/uni_sse?cf_connect=…` (no parameter: an anonymous connect without subscriptions to
/// recover).
async fn uni_sse_handler(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(params): Query<SseQuery>,
    RawQuery(query): RawQuery,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let headers = with_host(headers, &uri);
    let request = Bytes::from(params.cf_connect.unwrap_or_default());
    let query = query.as_deref();
    open(
        &node,
        Mode::Unidirectional,
        peer,
        &headers,
        query,
        request,
        Framing::Events,
    )
}

/// `POST /connection/uni_sse` (for clients that can post) and `POST /connection/uni_http_stream`, with the
/// connect request as body; the path says how the stream is framed.
async fn uni_posted_handler(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let framing = if uri.path().ends_with("/uni_sse") {
        Framing::Events
    } else {
        Framing::Lines
    };
    let headers = with_host(headers, &uri);
    let query = query.as_deref();
    open(
        &node,
        Mode::Unidirectional,
        peer,
        &headers,
        query,
        body,
        framing,
    )
}

/// `GET /connection/uni_websocket`: the first message is the connect request.
async fn uni_websocket_handler(
    State(node): State<Arc<Node>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    RawQuery(raw_query): RawQuery,
    headers: HeaderMap,
    upgrade: Upgrade,
) -> Response {
    let (remote, slot) = match admit(&node, remote, &headers) {
        Ok(admitted) => admitted,
        Err(refused) => return refused.into_response(),
    };
    let mut connection = connection_info(remote, false, &headers, raw_query.as_deref());
    connection.transport = "uni_websocket";
    let connection = Box::new(connection);
    let compression = node.config.websocket.compression.clone();
    upgrade.accept(&[], &compression, move |upgraded| {
        serve(
            node,
            upgraded,
            slot,
            Protocol::CentrifugeUni,
            async move |node, outbound, messages| {
                let mut first = true;
                // The first text message is the request; the client has nothing to say after it.
                let messages = messages.filter_map(move |message| {
                    let message = match message {
                        Incoming::Text(request) if first => {
                            first = false;
                            Some(Incoming::Text(super::emulation::connect_command(&request)))
                        }
                        Incoming::Text(_) | Incoming::Binary(_) => None,
                        other => Some(other),
                    };
                    std::future::ready(message)
                });
                Session::new(node, outbound, unbox(connection), &CentrifugeUni)
                    .run(messages)
                    .await;
            },
        )
    })
}
