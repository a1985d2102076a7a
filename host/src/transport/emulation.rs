//! Bidirectional emulation over plain HTTP, for clients whose WebSocket is blocked (corporate proxies,
//! some carriers, old middleboxes): centrifuge-js's `http_stream` and `sse` transports.
//!
//! The server-to-client half is one long response whose request carries the connect command: newline-
//! delimited JSON on `POST /connection/http_stream` (the body is the command), Server-Sent Events on
//! `GET /connection/sse` (the `cf_connect` query parameter is). The client-to-server half is
//! `POST /emulation` with `{"session", "node", "data"}`: the commands in `data` reach the session named by
//! `session` as if read from its socket. The session does not know which transport it has; the connect
//! reply names the session and this node so the client can address its commands. Behind a load balancer
//! the request may reach another node: that node passes the commands on through the engine, on the
//! holding node's own channel, so no sticky sessions are needed.
//!
//! The stream ends with a disconnect push (`{"push":{"disconnect":{…}}}`), the emulation's close frame.
//! Responses are marked uncacheable and unbuffered (`Cache-Control: no-cache`, `X-Accel-Buffering: no`);
//! the protocol's own pings keep an idle stream moving through proxies. Cross-origin requests obey the same
//! origin allow-list as WebSocket upgrades (answered with CORS headers, preflights included).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Extension, Query, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::BytesMut;
use futures_channel::mpsc;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;

use super::websocket::{admit, connection_info, origin_allowed};
use crate::control::{EmulationSink, send_to_node};
use crate::disconnect::Disconnect;
use crate::limits::{AddressRate, Slot};
use crate::node::Node;
use crate::outbound::{Batch, Outbound, Outgoing};
use crate::protocol::Frame;
use crate::protocol::centrifuge::emulation::EmulationRequest;
use crate::protocol::centrifuge::{Centrifuge, CentrifugeProtobuf, CentrifugeUni, Codec, uni};
use crate::session::{Incoming, Session};

/// Client commands waiting for their session, per session: a client that posts to this node faster than
/// its session handles them is held at the door (its POST waits); commands passed on from other nodes
/// cannot wait, and a session with this many waiting is closed as flooding (`3013`) rather than buffered
/// without bound or losing commands.
const WAITING_COMMANDS: usize = 64;

/// The emulated sessions of this node: where an emulation request's commands go.
#[derive(Debug)]
pub(super) struct Emulations {
    sessions: Mutex<HashMap<Arc<str>, Emulated>>,
    /// `limits.emulation_requests_per_second_per_ip`.
    requests: AddressRate,
}

/// One emulated session, as the requests that bring its commands reach it.
#[derive(Debug, Clone)]
struct Emulated {
    /// futures' bounded channel allocates per message, where tokio's allocates a block of 32 slots (1.8
    /// KiB) up front: most streamed sessions only ever get pongs through it.
    commands: mpsc::Sender<Incoming>,
    outbound: Arc<Outbound>,
}

impl Emulations {
    /// The session, for a request that waits for room in its channel. The clone is a sender of its own,
    /// which the channel lets put one command past its bound: at most one per request in flight.
    fn session(&self, session: &str) -> Option<Emulated> {
        crate::sync::lock(&self.sessions).get(session).cloned()
    }
}

impl EmulationSink for Emulations {
    /// Hands on commands from another node without waiting: through the registry's own sender (a clone
    /// would get a slot of its own each time, and the bound would never be reached), closing the session
    /// with `TOO_MANY_REQUESTS` once it is full.
    fn deliver(&self, session: &str, data: Bytes, binary: bool) {
        let mut sessions = crate::sync::lock(&self.sessions);
        let Some(emulated) = sessions.get_mut(session) else {
            return;
        };
        if let Err(error) = emulated.commands.try_send(incoming(data, binary))
            && error.is_full()
        {
            emulated.outbound.close(Disconnect::TOO_MANY_REQUESTS);
        }
    }
}

/// A client message as the session reads it.
fn incoming(data: Bytes, binary: bool) -> Incoming {
    if binary {
        Incoming::Binary(data)
    } else {
        Incoming::Text(data)
    }
}

/// The routes of the emulation, sharing one registry of sessions.
pub fn emulation_routes(node: &Node) -> Router<Arc<Node>> {
    // The commands of one request are bounded like one WebSocket message, with room for the envelope.
    let limit = node.config.websocket.max_message_size.saturating_mul(2) + 1024;
    let emulations = Arc::new(Emulations {
        sessions: Mutex::default(),
        requests: AddressRate::per_second(node.config.limits.emulation_requests_per_second_per_ip),
    });
    node.control.serve_emulation(emulations.clone());
    Router::new()
        .route(
            "/connection/http_stream",
            post(http_stream_handler).options(preflight),
        )
        .route("/connection/sse", get(sse_handler).options(preflight))
        .route("/emulation", post(emulation_handler).options(preflight))
        .layer(DefaultBodyLimit::max(limit))
        .layer(Extension(emulations))
}

/// How the stream frames each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// One JSON message per line, or Protobuf's own length-delimited messages (`http_stream`).
    Lines,
    /// One Server-Sent Event per message (`sse`).
    Events,
}

impl Framing {
    /// The transport's name in metrics' `transport` label.
    fn transport(self, mode: &Mode) -> &'static str {
        match (self, mode) {
            (Self::Lines, Mode::Emulated(_)) => "http_stream",
            (Self::Events, Mode::Emulated(_)) => "sse",
            (Self::Lines, Mode::Unidirectional) => "uni_http_stream",
            (Self::Events, Mode::Unidirectional) => "uni_sse",
        }
    }

    fn content_type(self, binary: bool) -> &'static str {
        match self {
            Self::Lines if binary => "application/octet-stream",
            Self::Lines => "application/json",
            Self::Events => "text/event-stream",
        }
    }

    /// Appends `frame` in this framing: a JSON text (which holds no raw line breaks) as a line or an
    /// event (with `id` as the event's id); a Protobuf frame as it is, already length-delimited.
    fn append(self, out: &mut BytesMut, frame: &Frame, id: Option<&str>) {
        let message = frame.bytes();
        match self {
            Self::Lines if frame.is_binary() => out.extend_from_slice(message),
            Self::Lines => {
                out.extend_from_slice(message);
                out.extend_from_slice(b"\n");
            }
            Self::Events => {
                if let Some(id) = id {
                    out.extend_from_slice(b"id: ");
                    out.extend_from_slice(id.as_bytes());
                    out.extend_from_slice(b"\n");
                }
                for line in message.split(|&byte| byte == b'\n') {
                    out.extend_from_slice(b"data: ");
                    out.extend_from_slice(line);
                    out.extend_from_slice(b"\n");
                }
                out.extend_from_slice(b"\n");
            }
        }
    }
}

/// `POST /connection/http_stream`: the body is the connect command.
async fn http_stream_handler(
    State(node): State<Arc<Node>>,
    Extension(emulations): Extension<Arc<Emulations>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let headers = with_host(headers, &uri);
    open(
        &node,
        Mode::Emulated(emulations),
        peer,
        &headers,
        query.as_deref(),
        body,
        Framing::Lines,
    )
}

/// The SSE request's parameters.
#[derive(Debug, Deserialize)]
pub(super) struct SseQuery {
    /// The connect command (JSON), as an EventSource cannot send a body.
    #[serde(default)]
    pub(super) cf_connect: Option<String>,
}

/// `GET /connection/sse?cf_connect=…`.
async fn sse_handler(
    State(node): State<Arc<Node>>,
    Extension(emulations): Extension<Arc<Emulations>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(params): Query<SseQuery>,
    RawQuery(query): RawQuery,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let headers = with_host(headers, &uri);
    let Some(connect) = params.cf_connect else {
        return refusal(
            &node,
            &headers,
            StatusCode::BAD_REQUEST,
            "cf_connect is missing",
        );
    };
    open(
        &node,
        Mode::Emulated(emulations),
        peer,
        &headers,
        query.as_deref(),
        Bytes::from(connect),
        Framing::Events,
    )
}

/// What kind of session a stream carries.
pub(super) enum Mode {
    /// Bidirectional, its later commands coming through `POST /emulation`.
    Emulated(Arc<Emulations>),
    /// Unidirectional: the request was the client's only message (see [`CentrifugeUni`]).
    Unidirectional,
}

/// Admits a streaming request like a WebSocket upgrade, starts its session with the request's commands and
/// answers with the stream.
pub(super) fn open(
    node: &Arc<Node>,
    mode: Mode,
    peer: SocketAddr,
    headers: &HeaderMap,
    query: Option<&str>,
    commands: Bytes,
    framing: Framing,
) -> Response {
    // centrifuge-js speaks Protobuf over HTTP streaming only: SSE is text, the unidirectional protocol JSON.
    let binary = asks_protobuf(headers, query);
    if binary && (framing == Framing::Events || matches!(mode, Mode::Unidirectional)) {
        return refusal(
            node,
            headers,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "SSE and unidirectional streams speak JSON; Protobuf goes over http_stream or WebSocket",
        );
    }
    let (remote, slot) = match admit(node, peer, headers) {
        Ok(admitted) => admitted,
        Err((status, reason)) => return refusal(node, headers, status, &reason),
    };
    // A browser's EventSource reconnecting on its own names where it was in `Last-Event-ID`.
    let positioned = matches!(mode, Mode::Unidirectional) && framing == Framing::Events;
    let commands = match headers.get("last-event-id") {
        Some(id) if positioned => uni::with_last_event_id(&commands, id.to_str().unwrap_or("")),
        _ => commands,
    };
    if commands.len() > node.config.websocket.max_message_size {
        return refusal(
            node,
            headers,
            StatusCode::PAYLOAD_TOO_LARGE,
            "the connect command is over websocket.max_message_size",
        );
    }
    if !binary && std::str::from_utf8(&commands).is_err() {
        return refusal(
            node,
            headers,
            StatusCode::BAD_REQUEST,
            "the connect command is not UTF-8",
        );
    }
    let mut connection = connection_info(remote, false, headers, query);
    connection.transport = framing.transport(&mode);
    let outbound = Arc::new(Outbound::new(node.config.client.max_queue_bytes));
    let positions = positioned.then(|| uni::Positions::asked(&commands));
    let (codec, commands, later, registration): (&'static dyn Codec, _, _, _) = match mode {
        Mode::Emulated(emulations) => {
            let session: Arc<str> = uuid::Uuid::new_v4().to_string().into();
            connection.emulation = Some(session.clone());
            let (sender, receiver) = mpsc::channel(WAITING_COMMANDS);
            let emulated = Emulated {
                commands: sender,
                outbound: outbound.clone(),
            };
            crate::sync::lock(&emulations.sessions).insert(session.clone(), emulated);
            let codec: &'static dyn Codec = if binary {
                &CentrifugeProtobuf
            } else {
                &Centrifuge
            };
            (
                codec,
                incoming(commands, binary),
                Some(receiver),
                Some((emulations, session)),
            )
        }
        // Nothing comes after the request: the session ends when the stream closes its queue.
        Mode::Unidirectional => (
            &CentrifugeUni,
            Incoming::Text(connect_command(&commands)),
            None,
            None,
        ),
    };
    start_session(
        node,
        outbound.clone(),
        connection,
        codec,
        commands,
        later,
        slot,
    );
    let stream = Stream {
        outbound,
        codec,
        registration,
        positions,
        framing,
        batch: Batch::default(),
        ended: false,
    };
    let body = Body::from_stream(futures_util::stream::unfold(stream, |mut stream| async {
        let chunk = stream.next_chunk().await?;
        Some((Ok::<_, std::convert::Infallible>(chunk), stream))
    }));
    let mut response = Response::new(body);
    let response_headers = response.headers_mut();
    response_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(framing.content_type(binary)),
    );
    response_headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response_headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    allow_origin(response_headers, headers);
    response
}

/// Runs the session on its own task: its messages are the request's commands, then what emulation
/// requests bring (`later`; nothing for a unidirectional stream), until the stream is gone and closes the
/// session's queue.
fn start_session(
    node: &Arc<Node>,
    outbound: Arc<Outbound>,
    connection: crate::session::ConnectionInfo,
    codec: &'static dyn Codec,
    commands: Incoming,
    later: Option<mpsc::Receiver<Incoming>>,
    slot: Slot,
) {
    let tracked = node.clone();
    let node = node.clone();
    tracked.sessions.spawn(async move {
        let first = futures_util::stream::once(async move { commands });
        let rest = futures_util::stream::unfold(later, |mut later| async move {
            let incoming = match &mut later {
                Some(receiver) => receiver.next().await?,
                None => std::future::pending().await,
            };
            Some((incoming, later))
        });
        Session::new(node, outbound.clone(), connection, codec)
            .run(first.chain(rest))
            .await;
        // Ends the stream when the client went away first (nothing more is owed then).
        outbound.close(Disconnect::CONNECTION_CLOSED);
        drop(slot);
    });
}

/// The response side of one streamed session. Dropped when the response ends or the client goes away:
/// then it closes the session's queue (which ends the session) and takes it out of the registry.
struct Stream {
    outbound: Arc<Outbound>,
    /// The session's encoding, for the disconnect push that ends the stream.
    codec: &'static dyn Codec,
    /// An emulated session's registry and name (none for a unidirectional one).
    registration: Option<(Arc<Emulations>, Arc<str>)>,
    /// Where a unidirectional SSE client is, written as each event's id.
    positions: Option<uni::Positions>,
    framing: Framing,
    batch: Batch,
    ended: bool,
}

/// A unidirectional client's connect request (`{"token":…,"subs":…}`, or nothing) as the connect command
/// the session expects.
pub(super) fn connect_command(request: &[u8]) -> Bytes {
    let request = std::str::from_utf8(request).unwrap_or_default().trim();
    let request = if request.is_empty() { "{}" } else { request };
    Bytes::from(format!(r#"{{"id":1,"connect":{request}}}"#))
}

impl Stream {
    /// The next bytes of the response; `None` once it is over.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.ended {
            return None;
        }
        loop {
            self.outbound.next_batch_into(&mut self.batch).await;
            let mut out = BytesMut::new();
            for item in self.batch.items.drain(..) {
                match item {
                    Outgoing::Frame(frame) => {
                        let positions = self.positions.as_mut();
                        let id = positions
                            .and_then(|p| p.observe(frame.bytes()).then(|| p.event_id()))
                            .flatten();
                        self.framing.append(&mut out, &frame, id.as_deref());
                    }
                    // Pings are protocol messages here; these belong to WebSocket.
                    Outgoing::TransportPing | Outgoing::Raw(_) => {}
                }
            }
            if let Some(close) = self.batch.close.take() {
                self.ended = true;
                if close != Disconnect::CONNECTION_CLOSED {
                    let push = self.codec.disconnect_push(&close);
                    self.framing.append(&mut out, &push, None);
                }
            }
            if !out.is_empty() || self.ended {
                return Some(out.freeze());
            }
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if let Some((emulations, session)) = &self.registration {
            crate::sync::lock(&emulations.sessions).remove(session);
        }
        self.outbound.close(Disconnect::CONNECTION_CLOSED);
    }
}

/// `POST /emulation`: hands the commands to the session, here or through the engine on the node holding
/// it; `204` once they are on their way, or when the session is gone from this node (its stream has ended
/// or ends now); `503` when they cannot be passed on (the engine is unreachable); `429` past the
/// address's `limits.emulation_requests_per_second_per_ip`.
async fn emulation_handler(
    State(node): State<Arc<Node>>,
    Extension(emulations): Extension<Arc<Emulations>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let headers = with_host(headers, &uri);
    if !allowed(&node, &headers) {
        return refusal(&node, &headers, StatusCode::FORBIDDEN, "origin not allowed");
    }
    let address = node.admission.request_client_address(peer, &headers).ip();
    if let Err(retry_after) = emulations.requests.check(address) {
        tracing::debug!(%address, "emulation request refused: too many requests");
        node.metrics
            .limit_refused("emulation_requests_per_second_per_ip");
        let mut response = refusal(
            &node,
            &headers,
            StatusCode::TOO_MANY_REQUESTS,
            "too many requests",
        );
        let seconds = crate::limits::retry_after_seconds(retry_after);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        return response;
    }
    let request = match EmulationRequest::decode(&body, asks_protobuf(&headers, None)) {
        Ok(request) => request,
        Err(error) => {
            let reason = format!("not an emulation request: {error}");
            return refusal(&node, &headers, StatusCode::BAD_REQUEST, &reason);
        }
    };
    // Node ids are UUIDs: anything much longer is not one, and would name a channel in the engine.
    if request.node.len() > 64 || request.session.len() > 64 {
        return refusal(
            &node,
            &headers,
            StatusCode::BAD_REQUEST,
            "not a session or node of this server",
        );
    }
    let commands = request.data;
    if commands.len() > node.config.websocket.max_message_size {
        return refusal(
            &node,
            &headers,
            StatusCode::PAYLOAD_TOO_LARGE,
            "the commands are over websocket.max_message_size",
        );
    }
    match emulations.session(&request.session) {
        Some(mut emulated) => {
            // Waits for room (the request is the backpressure); a closed channel is a session that just
            // ended: its stream ends too.
            let _ = emulated
                .commands
                .send(incoming(commands, request.binary))
                .await;
        }
        None if !request.node.is_empty() && request.node != node.id => {
            let emulated = crate::control::Emulated {
                session: request.session,
                data: commands,
                binary: request.binary,
            };
            if let Err(error) = send_to_node(&*node.engine.broker, &request.node, &emulated).await {
                let reason = format!("cannot reach the session's node: {error}");
                return refusal(&node, &headers, StatusCode::SERVICE_UNAVAILABLE, &reason);
            }
        }
        None => {}
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    allow_origin(response.headers_mut(), &headers);
    response
}

/// A CORS preflight: allowed for origins a WebSocket upgrade would be allowed from.
pub(super) async fn preflight(
    State(node): State<Arc<Node>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let headers = with_host(headers, &uri);
    if !allowed(&node, &headers) {
        return StatusCode::FORBIDDEN.into_response();
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    let response_headers = response.headers_mut();
    allow_origin(response_headers, &headers);
    response_headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    response_headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("content-type, accept"),
    );
    response_headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    response
}

/// The request's headers with `Host` filled in from the URI's authority when absent: HTTP/2 names the host
/// in `:authority` only, and the origin checks compare a browser's `Origin` with the host it asked.
pub(super) fn with_host(mut headers: HeaderMap, uri: &Uri) -> HeaderMap {
    if !headers.contains_key(header::HOST)
        && let Some(authority) = uri.authority()
        && let Ok(value) = HeaderValue::from_str(authority.as_str())
    {
        headers.insert(header::HOST, value);
    }
    headers
}

/// Whether the request's origin may use the emulation: the WebSocket upgrades' rule.
fn allowed(node: &Node, request: &HeaderMap) -> bool {
    let origin = request.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = request.get(header::HOST).and_then(|v| v.to_str().ok());
    origin_allowed(origin, host, &node.config.websocket.allowed_origins)
}

/// Echoes an allowed request's `Origin` (the caller checked it), with credentials allowed: the SDKs send
/// cookies to their own site, and a connect plugin may read them.
fn allow_origin(response: &mut HeaderMap, request: &HeaderMap) {
    let Some(origin) = request.get(header::ORIGIN) else {
        return;
    };
    response.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    response.insert(
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
    response.append(header::VARY, HeaderValue::from_static("origin"));
}

/// A refused request: the status and the reason as text, with CORS headers for an allowed origin so a
/// browser script can read it.
fn refusal(node: &Node, request: &HeaderMap, status: StatusCode, reason: &str) -> Response {
    let mut response = (status, format!("{reason}\n")).into_response();
    if allowed(node, request) {
        allow_origin(response.headers_mut(), request);
    }
    response
}

/// Whether the request asks for Protobuf (the SDKs say so in the query or by content type).
fn asks_protobuf(headers: &HeaderMap, query: Option<&str>) -> bool {
    let by_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|value| value.starts_with("application/octet-stream"));
    by_type || super::query_asks_protobuf(query)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_from_other_nodes_past_the_bound_close_the_session() {
        let emulations = Emulations {
            sessions: Mutex::default(),
            requests: AddressRate::per_second(1000),
        };
        let (commands, _never_read) = mpsc::channel(WAITING_COMMANDS);
        let outbound = Arc::new(Outbound::new(1 << 20));
        let emulated = Emulated {
            commands,
            outbound: outbound.clone(),
        };
        crate::sync::lock(&emulations.sessions).insert("s".into(), emulated);
        // The bound, and the registry's sender's own slot.
        for _ in 0..=WAITING_COMMANDS {
            emulations.deliver("s", Bytes::from_static(b"{}"), false);
        }
        assert!(!outbound.is_closed(), "within the bound");
        emulations.deliver("s", Bytes::from_static(b"{}"), false);
        assert_eq!(outbound.close_reason(), Some(Disconnect::TOO_MANY_REQUESTS));
    }

    #[test]
    fn each_framing_keeps_messages_apart() {
        let text = |text: &str| Frame::new(text.as_bytes().to_vec());
        let mut lines = BytesMut::new();
        Framing::Lines.append(&mut lines, &text(r#"{"id":1}"#), Some("ignored"));
        Framing::Lines.append(&mut lines, &text("{}"), None);
        assert_eq!(&lines[..], b"{\"id\":1}\n{}\n");
        // Protobuf frames are length-delimited already.
        Framing::Lines.append(&mut lines, &Frame::binary(vec![1, 8]), None);
        assert_eq!(&lines[lines.len() - 2..], &[1, 8]);
        // A line break inside a message (none in compact JSON, but nothing may end an event early) becomes
        // a second `data:` line of the same event.
        let mut events = BytesMut::new();
        Framing::Events.append(&mut events, &text("{\"a\":\n1}"), None);
        Framing::Events.append(&mut events, &text("{}"), Some("a=1.e"));
        assert_eq!(
            &events[..],
            b"data: {\"a\":\ndata: 1}\n\nid: a=1.e\ndata: {}\n\n"
        );
    }
}
