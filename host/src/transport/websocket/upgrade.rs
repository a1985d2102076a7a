//! The WebSocket opening handshake (RFC 6455 §4.2) on an HTTP/1.1 request, as an axum extractor.
//!
//! Herald takes the upgraded connection back from hyper as the socket it accepted (plain TCP or TLS) rather
//! than as a boxed stream, so that the fan-out can write into it directly and an idle connection keeps no
//! buffers; the accept key comes from tungstenite's handshake module.

use std::future::Future;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use futures_util::future::OptionFuture;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::config::CompressionConfig;
use crate::transport::socket::Socket;

use super::deflate::{self, Deflate};
use crate::transport::tls::Connection;

/// A valid WebSocket upgrade request, ready to be accepted.
#[derive(Debug)]
pub struct Upgrade {
    on_upgrade: OnUpgrade,
    key: HeaderValue,
    offered: Option<HeaderValue>,
    /// The `Sec-WebSocket-Extensions` offers, every header line joined.
    extensions: String,
}

/// An accepted connection, handed over by hyper: its socket, the bytes hyper read past the handshake, and
/// the compression negotiated.
#[derive(Debug)]
pub(in crate::transport) struct Upgraded {
    pub(in crate::transport) socket: Socket,
    pub(in crate::transport) read_ahead: bytes::Bytes,
    pub(in crate::transport) deflate: Option<Deflate>,
}

/// Why a request is not a WebSocket upgrade: the status and a plain reason.
#[derive(Debug)]
pub struct NotAnUpgrade(StatusCode, &'static str);

impl IntoResponse for NotAnUpgrade {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

/// Whether a comma-separated header lists `token` (case-insensitive).
fn lists(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value.to_str().is_ok_and(|value| {
            value
                .split(',')
                .any(|item| item.trim().eq_ignore_ascii_case(token))
        })
    })
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = NotAnUpgrade;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let headers = &parts.headers;
        if parts.method != Method::GET {
            return Err(NotAnUpgrade(
                StatusCode::METHOD_NOT_ALLOWED,
                "WebSocket upgrades use GET",
            ));
        }
        if !lists(headers, header::CONNECTION, "upgrade") {
            return Err(NotAnUpgrade(
                StatusCode::BAD_REQUEST,
                "Connection header did not include 'upgrade'",
            ));
        }
        if !lists(headers, header::UPGRADE, "websocket") {
            return Err(NotAnUpgrade(
                StatusCode::BAD_REQUEST,
                "Upgrade header did not include 'websocket'",
            ));
        }
        if headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .map(HeaderValue::as_bytes)
            != Some(b"13")
        {
            return Err(NotAnUpgrade(
                StatusCode::BAD_REQUEST,
                "Sec-WebSocket-Version header did not include '13'",
            ));
        }
        let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
            return Err(NotAnUpgrade(
                StatusCode::BAD_REQUEST,
                "Sec-WebSocket-Key header missing",
            ));
        };
        let offered = headers.get(header::SEC_WEBSOCKET_PROTOCOL).cloned();
        let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
            return Err(NotAnUpgrade(
                StatusCode::UPGRADE_REQUIRED,
                "connection cannot be upgraded",
            ));
        };
        let extensions = headers
            .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .collect::<Vec<_>>()
            .join(", ");
        Ok(Self {
            on_upgrade,
            key,
            offered,
            extensions,
        })
    }
}

impl Upgrade {
    /// Whether the client offered subprotocol `protocol`.
    pub(in crate::transport) fn offers(&self, protocol: &str) -> bool {
        self.offered
            .as_ref()
            .and_then(|offered| offered.to_str().ok())
            .is_some_and(|offered| offered.split(',').any(|p| p.trim() == protocol))
    }

    /// Accepts the upgrade: the `101` response (with the first subprotocol the client offered that is in
    /// `protocols`, and permessage-deflate when `compression` allows one of the client's offers), and a
    /// task that runs `serve` on the connection once hyper hands it over.
    pub(in crate::transport) fn accept<F, Fut>(
        self,
        protocols: &[&str],
        compression: &CompressionConfig,
        serve: F,
    ) -> Response
    where
        F: FnOnce(Upgraded) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (deflate, extension) = deflate::negotiate(&self.extensions, compression).unzip();
        let chosen = self.offered.as_ref().and_then(|offered| {
            let offered = offered.to_str().ok()?;
            offered
                .split(',')
                .map(str::trim)
                .find(|candidate| protocols.contains(candidate))
                .map(str::to_owned)
        });
        // `then`, not an async block: the serving future replaces the wait for the upgrade instead of
        // sitting beside `serve`'s captures, and an idle connection's memory is mostly this task.
        tokio::spawn(self.on_upgrade.then(move |upgraded| {
            OptionFuture::from(into_socket(upgraded).map(|(socket, read_ahead)| {
                serve(Upgraded {
                    socket,
                    read_ahead,
                    deflate,
                })
            }))
            .map(drop)
        }));
        let mut response = Response::new(axum::body::Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        let accept = derive_accept_key(self.key.as_bytes());
        if let Ok(accept) = HeaderValue::from_str(&accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        if let Some(chosen) = chosen.and_then(|chosen| HeaderValue::from_str(&chosen).ok()) {
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, chosen);
        }
        if let Some(extension) = extension.and_then(|e| HeaderValue::from_str(&e).ok()) {
            headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, extension);
        }
        response
    }
}

/// The socket of an upgraded connection and the bytes hyper read ahead of the handshake's end; `None`
/// (logged) when the upgrade failed.
fn into_socket(
    upgraded: hyper::Result<hyper::upgrade::Upgraded>,
) -> Option<(Socket, bytes::Bytes)> {
    let upgraded = match upgraded {
        Ok(upgraded) => upgraded,
        Err(error) => {
            tracing::debug!(%error, "websocket upgrade failed");
            return None;
        }
    };
    match upgraded.downcast::<TokioIo<Connection>>() {
        Ok(parts) => Some(Socket::from_upgraded(parts.io.into_inner(), parts.read_buf)),
        // A plain TCP connection, as axum's own `serve` hands them over (unit tests use it).
        Err(upgraded) => match upgraded.downcast::<TokioIo<tokio::net::TcpStream>>() {
            Ok(parts) => Some((Socket::plain(parts.io.into_inner()), parts.read_buf)),
            Err(_) => {
                tracing::error!("upgraded connection of an unknown kind; dropped");
                None
            }
        },
    }
}
