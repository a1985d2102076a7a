//! The Pusher protocol's WebSocket endpoint, `/app/{key}`: pusher-js and Laravel Echo connect here.
//!
//! The upgrade passes the same checks as every WebSocket (origin, connection limits); the app key and the
//! protocol version are answered inside the WebSocket, as Pusher clients expect: a `pusher:error`, then
//! the close code that tells them not to retry.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::node::Node;
use crate::protocol::pusher::close;

use super::websocket::{Upgrade, admit, connection_info, serve, unbox};
use crate::protocol::Protocol;
use crate::session::pusher::{PusherSession, refusal};

/// The query pusher-js sends (`protocol=7&client=js&version=8.6.0&flash=false`); only the protocol
/// version matters.
#[derive(Debug, Deserialize)]
pub struct PusherQuery {
    protocol: Option<String>,
}

/// The protocol versions served: 7 is current; 5 and 6 differ only in what this server does not use.
const PROTOCOL_VERSIONS: std::ops::RangeInclusive<u32> = 5..=7;

/// The axum handler for `/app/{key}`.
pub async fn pusher_handler(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(key): Path<String>,
    Query(query): Query<PusherQuery>,
    RawQuery(raw_query): RawQuery,
    headers: HeaderMap,
    upgrade: Upgrade,
) -> Response {
    if !node.pusher.any() {
        return (StatusCode::NOT_FOUND, "the Pusher protocol is not enabled").into_response();
    }
    let (remote, slot) = match admit(&node, peer, &headers) {
        Ok(admitted) => admitted,
        Err(refused) => return refused.into_response(),
    };
    let supported = query.protocol.as_deref().is_none_or(|version| {
        version
            .parse::<u32>()
            .is_ok_and(|version| PROTOCOL_VERSIONS.contains(&version))
    });
    let admitted = match node.pusher.by_key(&key) {
        None => {
            tracing::info!(%remote, "pusher connection refused: unknown app key");
            Err(close::UNKNOWN_APP)
        }
        Some(_) if !supported => {
            tracing::info!(%remote, protocol = ?query.protocol, "pusher connection refused: protocol version");
            Err(close::UNSUPPORTED_PROTOCOL)
        }
        Some(app) => Ok(app),
    };
    // Boxed until the session takes it, as on the Centrifugo endpoint.
    let connection = Box::new(connection_info(
        remote,
        false,
        &headers,
        raw_query.as_deref(),
    ));
    let compression = node.config.websocket.compression.clone();
    upgrade.accept(&[], &compression, move |upgraded| {
        serve(
            node,
            upgraded,
            slot,
            Protocol::Pusher,
            async move |node, outbound, messages| {
                // The app's place is taken here, where the connection it counts exists.
                let counted = admitted.and_then(|app| {
                    let counted = app.connect(&outbound).inspect_err(|refused| {
                        tracing::info!(%remote, app_id = %app.config().id, reason = %refused.reason, "pusher connection refused");
                    })?;
                    Ok((app, counted))
                });
                match counted {
                    // pusher-js reads the reason from a `pusher:error` first, then the close.
                    Err(disconnect) => {
                        outbound.push(refusal(&disconnect));
                        outbound.close(disconnect);
                    }
                    Ok((app, counted)) => {
                        PusherSession::new(node, app, counted, outbound, unbox(connection))
                            .run(messages)
                            .await
                    }
                }
            },
        )
    })
}
