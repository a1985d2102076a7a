//! The HTTP server API (`POST /api/<method>`, Centrifugo's shape) through which backends publish and manage
//! connections. Every method goes through the same [`Node`] operations as client commands.
//!
//! Authentication: `X-API-Key: <key>`, `Authorization: apikey <key>` or `?api_key=<key>`, compared in
//! constant time. With no key configured the API answers 401 to everything unless `http_api.insecure` is set.
//! Errors are `200 {"error":{code,message}}`, or HTTP statuses with `X-Centrifugo-Error-Mode: transport`.
//!
//! A bad body is judged by one rule, Centrifugo's: a body that cannot be decoded as the method's request
//! (not JSON, not an object, a value of the wrong type) is HTTP `400` with a plain-text message in either
//! error mode, as Centrifugo answers a body it cannot unmarshal; a body that decodes but lacks a value the
//! method needs (a field absent, `null` or empty — `channel`, `data`, `channels` —, or out of range) is the
//! API error `107`, which follows the error mode like every other API error. Absent and `null` fields read
//! as empty values, as Go's `encoding/json` reads them in Centrifugo, so "missing" and "empty" are one case.
//!
//! Before any of that, every request passes the per-address [`ApiGuard`](crate::limits::ApiGuard): over the request rate, or after
//! too many wrong keys, it gets `429` with `Retry-After` and is not looked at. Its body must then arrive
//! within `limits.handshake_timeout` (`408` otherwise) and fit `http_api.max_body_size` (`413`, at once when
//! `Content-Length` announces more), so a slow or endless body cannot hold a connection.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use subtle::ConstantTimeEq;

use crate::channel::ChannelOverrides;
use crate::config::HttpApiConfig;
use crate::control::{self, Action, Command, Target};
use crate::disconnect::Disconnect;
use crate::engine::{HistoryFilter, StreamPosition};
use crate::errors::{ClientError, Refusal};
use crate::glob;
use crate::hub::ServerSubscribe;
use crate::limits::ApiRefused;
use crate::node::{Node, PublishRequest, Source};
use crate::policy::Grant;
use crate::protocol::centrifuge::encode::{Object, write_history_result, write_presence_result};
use crate::protocol::compact_json;

/// The HTTP API surface: the `/api` routes merged with `other_apis` (the Pusher HTTP API's routes, which the
/// server passes in: the two APIs are peers and neither imports the other), all under one body limit and
/// the node's [`ApiGuard`](crate::limits::ApiGuard).
pub fn router(node: Arc<Node>, other_apis: Router<Arc<Node>>) -> Router {
    let limit = node.config.http_api.max_body_size;
    Router::new()
        .route("/api/{method}", post(handle))
        .route("/api/plugins", get(plugins))
        .merge(other_apis)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            node.clone(),
            guard_requests,
        ))
        .with_state(node)
}

/// Applies the node's [`ApiGuard`](crate::limits::ApiGuard) around a request that presents a credential (every API request, the
/// admin page's login). Failed authentications are counted from the `401` the handlers answer, so the one
/// place that decides about a credential (for the API, [`authorized`]) stays the only one.
pub async fn guard_requests(
    State(node): State<Arc<Node>>,
    request: Request,
    next: Next,
) -> Response {
    // Without a peer (the router driven outside the server) there is no address to keep budgets for.
    let Some(address) = client_ip(&node, &request) else {
        return next.run(request).await;
    };
    let guard = &node.api_guard;
    if let Err(refused) = guard.check(address) {
        tracing::debug!(%address, reason = %refused, "API request refused");
        node.metrics.limit_refused(refused.limit());
        return too_many_requests(refused);
    }
    let request = match read_body(&node, request).await {
        Ok(request) => request,
        Err(refusal) => return refusal,
    };
    let response = next.run(request).await;
    if response.status() == StatusCode::UNAUTHORIZED
        && let Some(refused) = guard.failed(address)
    {
        // The failure that used up the allowance is answered like the ones that will follow it.
        node.metrics.limit_refused(refused.limit());
        return too_many_requests(refused);
    }
    response
}

/// Reads the whole body within the deadline and the size limit, so handlers never wait on the client.
async fn read_body(node: &Node, request: Request) -> Result<Request, Response> {
    let limit = node.config.http_api.max_body_size;
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|length| length > limit as u64) {
        return Err(StatusCode::PAYLOAD_TOO_LARGE.into_response());
    }
    let (parts, body) = request.into_parts();
    let deadline = node.config.limits.handshake_timeout;
    match tokio::time::timeout(deadline, Limited::new(body, limit).collect()).await {
        Ok(Ok(collected)) => Ok(Request::from_parts(parts, Body::from(collected.to_bytes()))),
        Ok(Err(error)) if error.is::<LengthLimitError>() => {
            Err(StatusCode::PAYLOAD_TOO_LARGE.into_response())
        }
        Ok(Err(_)) => {
            Err((StatusCode::BAD_REQUEST, "request body could not be read").into_response())
        }
        Err(_) => Err((
            StatusCode::REQUEST_TIMEOUT,
            "request body not received in time",
        )
            .into_response()),
    }
}

/// The client address of an HTTP request: the peer, or what a trusted proxy says it forwards.
pub fn client_ip(node: &Node, request: &Request) -> Option<IpAddr> {
    let ConnectInfo(peer) = request.extensions().get::<ConnectInfo<SocketAddr>>()?;
    Some(
        node.admission
            .request_client_address(*peer, request.headers())
            .ip(),
    )
}

/// `429` with a `Retry-After` in whole seconds (at least 1).
fn too_many_requests(refused: ApiRefused) -> Response {
    let seconds = crate::limits::retry_after_seconds(refused.retry_after());
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, HeaderValue::from(seconds))],
        refused.to_string(),
    )
        .into_response()
}

fn authorized(config: &HttpApiConfig, headers: &HeaderMap, query: Option<&str>) -> bool {
    if config.insecure {
        return true;
    }
    if config.key.is_empty() {
        return false;
    }
    let from_header = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    let from_authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("apikey "));
    let from_query = query.and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "api_key")
            .map(|(_, v)| v.into_owned())
    });
    let expected = config.key.expose().as_bytes();
    let matches = |given: &str| bool::from(given.as_bytes().ct_eq(expected));
    from_header.is_some_and(matches)
        || from_authorization.is_some_and(matches)
        || from_query.as_deref().is_some_and(matches)
}

async fn handle(
    State(node): State<Arc<Node>>,
    Path(method): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !authorized(&node.config.http_api, &headers, query.as_deref()) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let transport_errors = headers
        .get("x-centrifugo-error-mode")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"transport"));
    answer(&node, &method, &body, transport_errors).await
}

/// Runs server API `method` with a JSON `body` for a caller already authorised (the API's key, or the
/// admin page's session) and answers as the API does; `transport_errors` as `X-Centrifugo-Error-Mode:
/// transport` asks.
pub async fn answer(node: &Node, method: &str, body: &[u8], transport_errors: bool) -> Response {
    let answered = if method == "batch" {
        batch(node, body).await
    } else {
        dispatch(node, method, body).await.map(|inner| {
            let mut out = Vec::with_capacity(inner.len() + 12);
            out.extend_from_slice(b"{\"result\":");
            out.extend(inner);
            out.push(b'}');
            out
        })
    };
    match answered {
        Ok(body) => json(StatusCode::OK, body),
        Err(ApiError::Malformed(message)) => (StatusCode::BAD_REQUEST, message).into_response(),
        Err(ApiError::Client(error)) => {
            let body = error_body(&error);
            if transport_errors {
                json(transport_status(error.code), body_inner_error(&error))
            } else {
                json(StatusCode::OK, body)
            }
        }
    }
}

/// `batch`: the commands run in order (or all at once with `parallel`), each answered in its place of
/// `{"replies":[…]}` with its result under its method's name or its error, as Centrifugo answers.
async fn batch(node: &Node, body: &[u8]) -> Result<Vec<u8>, ApiError> {
    let b: BatchBody = parse(body)?;
    let run = |command: BTreeMap<String, Box<RawValue>>| async move {
        let mut methods = command.into_iter();
        let (method, body) = match (methods.next(), methods.next()) {
            (Some(one), None) => one,
            _ => {
                let error = ClientError::BAD_REQUEST.with_message("a command names one method");
                return (String::new(), Err(ApiError::Client(error)));
            }
        };
        if method == "batch" {
            let error = ClientError::BAD_REQUEST.with_message("batches do not nest");
            return (method, Err(ApiError::Client(error)));
        }
        let outcome = Box::pin(dispatch(node, &method, body.get().as_bytes())).await;
        (method, outcome)
    };
    let replies = if b.parallel {
        futures_util::future::join_all(b.commands.into_iter().map(run)).await
    } else {
        let mut replies = Vec::with_capacity(b.commands.len());
        for command in b.commands {
            replies.push(run(command).await);
        }
        replies
    };
    let mut out = Vec::with_capacity(64 * replies.len());
    let mut o = Object::open(&mut out);
    o.array("replies", replies, |out, (method, outcome)| {
        let mut reply = Object::open(out);
        match outcome {
            Ok(inner) => reply.key(&method).extend(inner),
            Err(ApiError::Client(error)) => {
                reply.object("error", |e| write_error(e, &error));
            }
            Err(ApiError::Malformed(message)) => {
                let error = ClientError::BAD_REQUEST.with_message(message);
                reply.object("error", |e| write_error(e, &error));
            }
        }
        reply.close();
    });
    o.close();
    Ok(out)
}

/// `GET /api/plugins`: loaded plugins with their counters, and files that failed to load.
async fn plugins(
    State(node): State<Arc<Node>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    if !authorized(&node.config.http_api, &headers, query.as_deref()) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let body = serde_json::json!({"result": plugins_report(&node)});
    json(StatusCode::OK, body.to_string().into_bytes())
}

/// Loaded plugins with their counters, and files that failed to load (`/api/plugins`' result).
pub fn plugins_report(node: &Node) -> serde_json::Value {
    let millis = |at: std::time::SystemTime| {
        at.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    };
    let loaded: Vec<serde_json::Value> = node
        .plugins
        .loaded()
        .iter()
        .map(|p| {
            let stats = &p.stats;
            // By hook and kind, never by message: what a guest panics with stays in the log.
            let reasons: Vec<serde_json::Value> = stats
                .failure_counts()
                .into_iter()
                .map(|(hook, kind, count)| serde_json::json!({"hook": hook, "reason": kind.as_str(), "count": count}))
                .collect();
            let limits = p.limits();
            serde_json::json!({
                "file": p.file,
                "name": p.metadata.name,
                "version": p.metadata.version,
                "hooks": crate::plugin::hook_names(p.metadata.hooks),
                "sha256": p.hash,
                "code": p.tier.as_str(),
                "contract": p.contract().version(),
                "capabilities": p.capabilities(),
                "loaded_at_ms": millis(p.loaded_at),
                "deadline_ms": limits.deadline.as_secs_f64() * 1000.0,
                "memory_limit": limits.memory,
                "calls": stats.calls.load(std::sync::atomic::Ordering::Relaxed),
                "denies": stats.denies.load(std::sync::atomic::Ordering::Relaxed),
                "failures": stats.failures.load(std::sync::atomic::Ordering::Relaxed),
                "failure_reasons": reasons,
                "http_requests": p.http().stats.requests.load(std::sync::atomic::Ordering::Relaxed),
                "http_failures": p.http().stats.failure_counts().into_iter()
                    .map(|(reason, count)| serde_json::json!({"reason": reason, "count": count}))
                    .collect::<Vec<_>>(),
            })
        })
        .collect();
    let errors: Vec<serde_json::Value> = node
        .plugins
        .load_errors()
        .into_iter()
        .map(|(file, e)| serde_json::json!({"file": file, "at_ms": millis(e.at), "error": e.error.to_string()}))
        .collect();
    serde_json::json!({"plugins": loaded, "load_errors": errors})
}

enum ApiError {
    /// The body cannot be decoded as the method's request: HTTP 400 whatever the error mode.
    Malformed(String),
    /// A well-formed request that failed.
    Client(ClientError),
}

impl From<ClientError> for ApiError {
    fn from(error: ClientError) -> Self {
        Self::Client(error)
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        Self::Client(refusal.into_error())
    }
}

/// Decodes a request body; only a body that is not the method's JSON shape fails here (missing values are
/// the method's to refuse with `107`).
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::Malformed(format!("malformed request body: {e}")))
}

fn json(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn transport_status(code: u32) -> StatusCode {
    match code {
        102 | 104 => StatusCode::NOT_FOUND,
        107 | 108 => StatusCode::BAD_REQUEST,
        112 => StatusCode::RANGE_NOT_SATISFIABLE,
        113 => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn write_error(o: &mut Object<'_>, error: &ClientError) {
    o.u64("code", error.code.into())
        .str("message", &error.message)
        .flag("temporary", error.temporary);
}

fn error_body(error: &ClientError) -> Vec<u8> {
    let mut out = Vec::new();
    let mut o = Object::open(&mut out);
    o.object("error", |e| write_error(e, error));
    o.close();
    out
}

fn body_inner_error(error: &ClientError) -> Vec<u8> {
    let mut out = Vec::new();
    let mut o = Object::open(&mut out);
    write_error(&mut o, error);
    o.close();
    out
}

/// Reads an absent or `null` field as its empty value, as Centrifugo (Go's `encoding/json`) does, so that
/// `"channel": null` is refused like a missing channel (`107`), not as a body of the wrong shape (`400`).
fn null_as_empty<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// A method's result object (the caller puts it under `result`, or in a batch's reply).
fn result(write: impl FnOnce(&mut Object<'_>)) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    let mut o = Object::open(&mut out);
    write(&mut o);
    o.close();
    out
}

#[derive(Deserialize)]
struct BatchBody {
    #[serde(default, deserialize_with = "null_as_empty")]
    commands: Vec<BTreeMap<String, Box<RawValue>>>,
    #[serde(default, deserialize_with = "null_as_empty")]
    parallel: bool,
}

#[derive(Deserialize)]
struct PublishBody {
    #[serde(default, deserialize_with = "null_as_empty")]
    channel: String,
    data: Option<Box<RawValue>>,
    /// The payload in base64, when `data` is absent (it must still decode to JSON).
    b64data: Option<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    skip_history: bool,
    #[serde(default, deserialize_with = "null_as_empty")]
    tags: BTreeMap<String, String>,
    /// A repeat with the same key within the idempotency window is not published again.
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
struct BroadcastBody {
    #[serde(default, deserialize_with = "null_as_empty")]
    channels: Vec<String>,
    data: Option<Box<RawValue>>,
    b64data: Option<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    skip_history: bool,
    #[serde(default, deserialize_with = "null_as_empty")]
    tags: BTreeMap<String, String>,
    /// Applies to each channel separately.
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
struct ChannelBody {
    #[serde(default, deserialize_with = "null_as_empty")]
    channel: String,
}

#[derive(Deserialize)]
struct SincePosition {
    #[serde(default, deserialize_with = "null_as_empty")]
    offset: u64,
    #[serde(default, deserialize_with = "null_as_empty")]
    epoch: String,
}

#[derive(Deserialize)]
struct HistoryBody {
    #[serde(default, deserialize_with = "null_as_empty")]
    channel: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    limit: i64,
    since: Option<SincePosition>,
    #[serde(default, deserialize_with = "null_as_empty")]
    reverse: bool,
}

/// `info` takes no parameters, but its body is held to the same rule as the others.
#[derive(Deserialize)]
struct InfoBody {}

#[derive(Deserialize)]
struct ChannelsBody {
    #[serde(default, deserialize_with = "null_as_empty")]
    pattern: String,
}

#[derive(Deserialize)]
struct DisconnectCode {
    /// Absent is 0, refused as out of range (`107`) like any other invalid code.
    #[serde(default, deserialize_with = "null_as_empty")]
    code: u16,
    #[serde(default, deserialize_with = "null_as_empty")]
    reason: String,
}

#[derive(Deserialize)]
struct DisconnectBody {
    #[serde(default, deserialize_with = "null_as_empty")]
    user: String,
    client: Option<String>,
    session: Option<String>,
    /// Connections (client ids) to leave connected.
    #[serde(default, deserialize_with = "null_as_empty")]
    whitelist: Vec<String>,
    disconnect: Option<DisconnectCode>,
}

#[derive(Deserialize)]
struct UnsubscribeBody {
    #[serde(default, deserialize_with = "null_as_empty")]
    user: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    channel: String,
    client: Option<String>,
    session: Option<String>,
}

/// Centrifugo's wrapper for an optional boolean.
#[derive(Deserialize)]
struct BoolValue {
    value: bool,
}

#[derive(Deserialize, Default)]
struct OverrideBody {
    presence: Option<BoolValue>,
    join_leave: Option<BoolValue>,
    force_push_join_leave: Option<BoolValue>,
    force_positioning: Option<BoolValue>,
    force_recovery: Option<BoolValue>,
}

#[derive(Deserialize)]
struct SubscribeBody {
    #[serde(default, deserialize_with = "null_as_empty")]
    user: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    channel: String,
    client: Option<String>,
    session: Option<String>,
    info: Option<Box<RawValue>>,
    b64info: Option<String>,
    data: Option<Box<RawValue>>,
    b64data: Option<String>,
    recover_since: Option<SincePosition>,
    #[serde(rename = "override", default, deserialize_with = "null_as_empty")]
    overrides: OverrideBody,
}

#[derive(Deserialize)]
struct RefreshBody {
    #[serde(default, deserialize_with = "null_as_empty")]
    user: String,
    client: Option<String>,
    session: Option<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    expired: bool,
    /// Unix seconds; absent or 0: the connections no longer expire.
    #[serde(default, deserialize_with = "null_as_empty")]
    expire_at: u64,
}

/// The JSON a request carries as `field` (raw) or `b64field` (base64 of the JSON text); `None` when
/// neither is set. Payloads are JSON on every protocol, so base64 must decode to JSON too.
fn json_field(
    raw: Option<Box<RawValue>>,
    b64: Option<String>,
    field: &str,
) -> Result<Option<bytes::Bytes>, ClientError> {
    if let Some(raw) = raw.filter(|raw| raw.get().trim() != "null") {
        return Ok(Some(compact_json(raw.get().trim())));
    }
    let Some(b64) = b64 else {
        return Ok(None);
    };
    let invalid =
        || ClientError::BAD_REQUEST.with_message(format!("b64{field} must be base64 of JSON"));
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| invalid())?;
    let text = std::str::from_utf8(&decoded).map_err(|_| invalid())?;
    serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(|_| invalid())?;
    Ok(Some(compact_json(text.trim())))
}

/// A publication's payload: `data`, or `b64data`.
fn payload(
    data: Option<Box<RawValue>>,
    b64data: Option<String>,
) -> Result<bytes::Bytes, ClientError> {
    json_field(data, b64data, "data")?
        .ok_or_else(|| ClientError::BAD_REQUEST.with_message("data required"))
}

/// Connections are named by user and client id: Herald has no session ids to name them by.
fn no_session(session: Option<&String>) -> Result<(), ClientError> {
    match session {
        Some(session) if !session.is_empty() => Err(ClientError::BAD_REQUEST
            .with_message("session is not supported: name the connection by client")),
        _ => Ok(()),
    }
}

/// The JSON text of an optional payload, for a control command.
fn text(json: Option<bytes::Bytes>) -> Option<String> {
    json.map(|json| String::from_utf8_lossy(&json).into_owned())
}

fn require(channel: &str) -> Result<(), ClientError> {
    if channel.is_empty() {
        Err(ClientError::BAD_REQUEST.with_message("channel required"))
    } else {
        Ok(())
    }
}

fn write_position(o: &mut Object<'_>, position: &StreamPosition) {
    o.u64_nonzero("offset", position.offset)
        .str_nonempty("epoch", &position.epoch);
}

async fn dispatch(node: &Node, method: &str, body: &[u8]) -> Result<Vec<u8>, ApiError> {
    match method {
        "publish" => {
            let b: PublishBody = parse(body)?;
            require(&b.channel)?;
            let data = payload(b.data, b.b64data)?;
            let position = node
                .publish(PublishRequest {
                    channel: b.channel,
                    data,
                    info: None,
                    tags: b.tags,
                    skip_history: b.skip_history,
                    source: Source::Api,
                    idempotency_key: b.idempotency_key,
                })
                .await
                .map_err(Refusal::from)?;
            Ok(result(|o| write_position(o, &position)))
        }
        "broadcast" => {
            let b: BroadcastBody = parse(body)?;
            if b.channels.is_empty() {
                return Err(ClientError::BAD_REQUEST
                    .with_message("channels required")
                    .into());
            }
            let data = payload(b.data, b.b64data)?;
            let mut responses = Vec::with_capacity(b.channels.len());
            for channel in b.channels {
                let outcome = match require(&channel) {
                    Ok(()) => node
                        .publish(PublishRequest {
                            channel,
                            data: data.clone(),
                            info: None,
                            tags: b.tags.clone(),
                            skip_history: b.skip_history,
                            source: Source::Api,
                            idempotency_key: b.idempotency_key.clone(),
                        })
                        .await
                        .map_err(|e| Refusal::from(e).into_error()),
                    Err(e) => Err(e),
                };
                responses.push(outcome);
            }
            Ok(result(|o| {
                o.array("responses", &responses, |out, outcome| {
                    let mut item = Object::open(out);
                    match outcome {
                        Ok(position) => item.object("result", |r| write_position(r, position)),
                        Err(error) => item.object("error", |e| write_error(e, error)),
                    };
                    item.close();
                });
            }))
        }
        "history" => {
            let b: HistoryBody = parse(body)?;
            require(&b.channel)?;
            let since = b.since.map(|s| StreamPosition {
                offset: s.offset,
                epoch: s.epoch,
            });
            if b.reverse && since.as_ref().is_some_and(|s| s.offset == 0) {
                return Err(ClientError::BAD_REQUEST
                    .with_message("reverse history needs a since offset")
                    .into());
            }
            let limit = if b.limit < 0 {
                None
            } else {
                Some(b.limit as usize)
            };
            let found = node
                .history(
                    &b.channel,
                    &HistoryFilter {
                        since,
                        limit,
                        reverse: b.reverse,
                    },
                    Grant::server(),
                )
                .await?;
            Ok(result(|o| {
                write_history_result(o, &found.publications, &found.position)
            }))
        }
        "history_remove" => {
            let b: ChannelBody = parse(body)?;
            require(&b.channel)?;
            node.remove_history(&b.channel).await?;
            Ok(result(|_| {}))
        }
        "presence" => {
            let b: ChannelBody = parse(body)?;
            require(&b.channel)?;
            let presence = node.presence(&b.channel, Grant::server()).await?;
            Ok(result(|o| write_presence_result(o, &presence)))
        }
        "presence_stats" => {
            let b: ChannelBody = parse(body)?;
            require(&b.channel)?;
            let stats = node.presence_stats(&b.channel, Grant::server()).await?;
            Ok(result(|o| {
                o.u64("num_clients", stats.num_clients.into())
                    .u64("num_users", stats.num_users.into());
            }))
        }
        "channels" => {
            let b: ChannelsBody = if body.is_empty() {
                ChannelsBody {
                    pattern: String::new(),
                }
            } else {
                parse(body)?
            };
            let mut channels: Vec<(String, u64)> = crate::counts::channels(node)
                .await
                .map_err(ClientError::from)?
                .into_iter()
                .filter(|(name, _)| b.pattern.is_empty() || glob::matches(&b.pattern, name))
                .collect();
            channels.sort();
            Ok(result(|o| {
                o.object("channels", |c| {
                    for (name, count) in &channels {
                        c.object(name, |info| {
                            info.u64("num_clients", *count);
                        });
                    }
                });
            }))
        }
        "info" => {
            if !body.is_empty() {
                let InfoBody {} = parse(body)?;
            }
            let nodes = crate::nodes::list(node).await;
            Ok(result(|o| {
                o.array("nodes", &nodes, |out, info| {
                    let mut n = Object::open(out);
                    n.str("uid", &info.uid)
                        .str("name", &info.name)
                        .str("version", &info.version);
                    n.u64("num_clients", info.num_clients)
                        .u64("num_users", info.num_users);
                    n.u64("num_channels", info.num_channels)
                        .u64("num_subs", info.num_subs);
                    n.u64("uptime", info.uptime);
                    n.close();
                });
            }))
        }
        "disconnect" => {
            let b: DisconnectBody = parse(body)?;
            let disconnect = match b.disconnect {
                Some(d) if (3000..5000).contains(&d.code) && d.reason.len() <= 120 => Disconnect {
                    code: d.code,
                    reason: d.reason.into(),
                },
                Some(_) => {
                    return Err(ClientError::BAD_REQUEST
                        .with_message("disconnect code must be within 3000..4999 and the reason under 120 bytes")
                        .into());
                }
                None => Disconnect::FORCE_DISCONNECT,
            };
            no_session(b.session.as_ref())?;
            let target = Target {
                user: b.user,
                client: b.client,
                except: b.whitelist,
            };
            control::send(
                &*node.engine.broker,
                &Command::disconnect(target, &disconnect),
            )
            .await
            .map_err(ClientError::from)?;
            Ok(result(|_| {}))
        }
        "subscribe" => {
            let b: SubscribeBody = parse(body)?;
            require(&b.channel)?;
            no_session(b.session.as_ref())?;
            node.namespace(&b.channel)?;
            let o = b.overrides;
            let request = ServerSubscribe {
                channel: b.channel,
                info: text(json_field(b.info, b.b64info, "info")?),
                data: text(json_field(b.data, b.b64data, "data")?),
                recover_since: b.recover_since.map(|s| StreamPosition {
                    offset: s.offset,
                    epoch: s.epoch,
                }),
                overrides: ChannelOverrides {
                    presence: o.presence.map(|v| v.value),
                    join_leave: o.join_leave.map(|v| v.value),
                    force_push_join_leave: o.force_push_join_leave.map(|v| v.value),
                    force_positioning: o.force_positioning.map(|v| v.value),
                    force_recovery: o.force_recovery.map(|v| v.value),
                },
            };
            let target = Target::connections(b.user, b.client);
            command(node, target, Action::Subscribe(request)).await
        }
        "unsubscribe" => {
            let b: UnsubscribeBody = parse(body)?;
            require(&b.channel)?;
            no_session(b.session.as_ref())?;
            node.namespace(&b.channel)?;
            let target = Target::connections(b.user, b.client);
            let action = Action::Unsubscribe { channel: b.channel };
            command(node, target, action).await
        }
        "refresh" => {
            let b: RefreshBody = parse(body)?;
            no_session(b.session.as_ref())?;
            let target = Target::connections(b.user, b.client);
            let action = Action::Refresh {
                expired: b.expired,
                expire_at: (b.expire_at > 0).then_some(b.expire_at),
            };
            command(node, target, action).await
        }
        _ => Err(ClientError::METHOD_NOT_FOUND.into()),
    }
}

/// Sends a command to the target's sessions on every node; answers with an empty result.
async fn command(node: &Node, target: Target, action: Action) -> Result<Vec<u8>, ApiError> {
    control::send(&*node.engine.broker, &Command { target, action })
        .await
        .map_err(ClientError::from)?;
    Ok(result(|_| {}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_key() {
        let config = HttpApiConfig {
            key: "very-secret-key".into(),
            ..Default::default()
        };
        let printed = format!("{config:?} {config:#?}");
        assert!(!printed.contains("very-secret-key"), "{printed}");
        assert!(printed.contains("[redacted]"), "{printed}");
    }

    #[test]
    fn keys_are_checked_from_every_place() {
        let config = HttpApiConfig {
            key: "secret".into(),
            ..Default::default()
        };
        let mut headers = HeaderMap::new();
        assert!(!authorized(&config, &headers, None));
        assert!(authorized(&config, &headers, Some("api_key=secret")));
        assert!(!authorized(&config, &headers, Some("api_key=secre")));
        headers.insert("x-api-key", "secret".parse().unwrap());
        assert!(authorized(&config, &headers, None));
        headers.insert("x-api-key", "wrong".parse().unwrap());
        assert!(!authorized(&config, &headers, None));
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "apikey secret".parse().unwrap());
        assert!(authorized(&config, &headers, None));
        let off = HttpApiConfig::default();
        assert!(!authorized(&off, &HeaderMap::new(), Some("api_key=")));
        let insecure = HttpApiConfig {
            insecure: true,
            ..Default::default()
        };
        assert!(authorized(&insecure, &HeaderMap::new(), None));
    }
}
