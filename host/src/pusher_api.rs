//! The Pusher HTTP API under `/apps/{app_id}/…`: what the Pusher server libraries (pusher-http-php, the
//! `pusher` packages for Node and Python, Laravel's broadcaster) call to trigger events and ask about
//! channels. Another entrance to the same publish path as Herald's own API.
//!
//! Every request is signed with the app secret (`auth_signature` over method, path and sorted query,
//! `body_md5` for the body) and must be recent (`pusher.timestamp_window`). Success is `200` with a JSON
//! body, as the libraries require; errors are real 4xx/5xx codes with a plain-text reason.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Extension;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::channel::ChannelKind;
use crate::control::{self, Command, Target};
use crate::disconnect::Disconnect;
use crate::engine::EngineError;
use crate::errors::Refusal;
use crate::node::{Node, PublishError, PublishRequest, Source};
use crate::protocol::pusher::codec;
use crate::protocol::pusher::sign::{self, ApiRequest};
use crate::pusher_app::PusherApp;

/// The app a request was signed for, as the handlers receive it.
type App = Extension<Arc<PusherApp>>;

/// Most channels one trigger may name (Pusher's limit).
const MAX_CHANNELS_PER_TRIGGER: usize = 100;
/// Most events in one `batch_events` request (Pusher's limit).
const MAX_BATCH: usize = 10;
/// Longest event name (Pusher's limit).
const MAX_EVENT_NAME: usize = 200;

/// The `/apps/{app_id}/…` routes; served with the `/api` routes, under the same request guard (which has
/// already read the body within its limits), each request verified by [`signed_only`] first.
pub fn routes(node: Arc<Node>) -> Router<Arc<Node>> {
    Router::new()
        .route("/apps/{app_id}/events", post(events))
        .route("/apps/{app_id}/batch_events", post(batch_events))
        .route("/apps/{app_id}/channels", get(channels))
        .route("/apps/{app_id}/channels/{channel}", get(channel))
        .route("/apps/{app_id}/channels/{channel}/users", get(users))
        .route(
            "/apps/{app_id}/users/{user_id}/terminate_connections",
            post(terminate_connections),
        )
        // The Python library leaves out the app part of this one path; the key names the app.
        .route(
            "/users/{user_id}/terminate_connections",
            post(terminate_connections),
        )
        .route_layer(axum::middleware::from_fn_with_state(node, signed_only))
}

/// Lets through only requests for a configured, enabled app signed with its secret, handing the app to
/// the handler.
async fn signed_only(State(node): State<Arc<Node>>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    // The guard in front buffered the body and enforced its size limit.
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return bad_request("request body could not be read").into_response();
    };
    let query = query_pairs(&parts.uri);
    let app = match parts.uri.path().strip_prefix("/apps/") {
        Some(rest) => {
            let id = rest.split('/').next().unwrap_or_default();
            node.pusher.by_id(id).ok_or_else(|| unknown_app(id))
        }
        // Without the app in the path, the key it was signed with names it.
        None => {
            let key = query.iter().find(|(name, _)| name == "auth_key");
            let key = key.map_or("", |(_, key)| key.as_str());
            node.pusher.by_key(key).ok_or_else(|| unknown_app(key))
        }
    };
    let app = match app {
        Ok(app) => app.clone(),
        Err(failure) => return failure.into_response(),
    };
    if let Err(failure) = verify(&node, &app, &parts.method, &parts.uri, &query, &body) {
        return failure.into_response();
    }
    parts.extensions.insert(app);
    next.run(Request::from_parts(parts, Body::from(body))).await
}

fn unknown_app(name: &str) -> Failure {
    Failure(StatusCode::NOT_FOUND, format!("unknown app {name:?}"))
}

/// A refusal: status and plain-text reason.
struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

fn bad_request(reason: impl Into<String>) -> Failure {
    Failure(StatusCode::BAD_REQUEST, reason.into())
}

fn ok(body: Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// The request's query parameters, URL-decoded.
fn query_pairs(uri: &Uri) -> Vec<(String, String)> {
    uri.query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default()
}

/// Checks that the request is signed with the app's secret, and that the app is enabled.
fn verify(
    node: &Node,
    app: &PusherApp,
    method: &Method,
    uri: &Uri,
    query: &[(String, String)],
    body: &[u8],
) -> Result<(), Failure> {
    let config = app.config();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let request = ApiRequest {
        method: method.as_str(),
        path: uri.path(),
        query,
        body,
    };
    sign::verify_api_request(
        &config.key,
        config.secret.expose(),
        now,
        node.config.pusher.timestamp_window.as_secs(),
        &request,
    )
    .map_err(|error| {
        tracing::debug!(%error, "pusher API request refused");
        Failure(StatusCode::UNAUTHORIZED, error.to_string())
    })?;
    if !config.enabled {
        return Err(Failure(StatusCode::FORBIDDEN, "the app is disabled".into()));
    }
    Ok(())
}

/// One event to trigger, as `events` and the items of `batch_events` carry it.
#[derive(Debug, Deserialize)]
struct Trigger {
    name: String,
    /// A string by the protocol; anything else is taken as the JSON it is.
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    socket_id: Option<String>,
    #[serde(default)]
    info: Option<String>,
}

/// A trigger checked against the protocol's rules and the limits, ready to publish.
struct Checked {
    name: String,
    data: bytes::Bytes,
    channels: Vec<String>,
    socket_id: Option<String>,
    info: Vec<String>,
}

fn check(app: &PusherApp, trigger: Trigger) -> Result<Checked, Failure> {
    let config = app.config();
    if trigger.name.is_empty() || trigger.name.len() > MAX_EVENT_NAME {
        return Err(bad_request(format!(
            "event name must be 1 to {MAX_EVENT_NAME} characters"
        )));
    }
    if trigger.name.starts_with("pusher:") || trigger.name.starts_with("pusher_internal:") {
        return Err(bad_request(
            "event names starting with pusher: are reserved",
        ));
    }
    let data = match trigger.data {
        None => String::new(),
        Some(Value::String(text)) => text,
        Some(other) => other.to_string(),
    };
    if data.len() > config.max_event_bytes {
        return Err(Failure(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "event data is {} bytes, more than the {} allowed",
                data.len(),
                config.max_event_bytes
            ),
        ));
    }
    let channels = match (trigger.channels, trigger.channel) {
        (Some(channels), None) => channels,
        (None, Some(channel)) => vec![channel],
        _ => return Err(bad_request("give either channels or channel")),
    };
    if channels.is_empty() || channels.len() > MAX_CHANNELS_PER_TRIGGER {
        return Err(bad_request(format!(
            "give 1 to {MAX_CHANNELS_PER_TRIGGER} channels"
        )));
    }
    if let Some(bad) = channels
        .iter()
        .find(|c| !codec::valid_channel_name(c, config.max_channel_name_length))
    {
        return Err(bad_request(format!("invalid channel name {bad:?}")));
    }
    if channels.len() > 1
        && channels
            .iter()
            .any(|c| ChannelKind::of(c) == ChannelKind::PrivateEncrypted)
    {
        return Err(bad_request(
            "an event for an encrypted channel must name that channel alone",
        ));
    }
    if let Some(socket_id) = &trigger.socket_id
        && !valid_socket_id(socket_id)
    {
        return Err(bad_request(format!("invalid socket_id {socket_id:?}")));
    }
    Ok(Checked {
        name: trigger.name,
        data: codec::publication_data(&data),
        channels,
        socket_id: trigger.socket_id,
        info: info_attributes(trigger.info.as_deref()),
    })
}

/// `<digits>.<digits>`, the shape every socket id has.
fn valid_socket_id(socket_id: &str) -> bool {
    socket_id.split_once('.').is_some_and(|(a, b)| {
        [a, b]
            .iter()
            .all(|part| !part.is_empty() && part.bytes().all(|c| c.is_ascii_digit()))
    })
}

fn info_attributes(info: Option<&str>) -> Vec<String> {
    info.map(|info| {
        info.split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect()
    })
    .unwrap_or_default()
}

/// Publishes a checked trigger to each of its channels and reports the asked-for channel attributes.
async fn publish(
    node: &Node,
    app: &PusherApp,
    checked: Checked,
) -> Result<Map<String, Value>, Failure> {
    let mut tags = BTreeMap::from([(codec::EVENT_TAG.to_owned(), checked.name)]);
    if let Some(socket_id) = checked.socket_id {
        tags.insert(codec::EXCLUDE_TAG.to_owned(), socket_id);
    }
    for channel in &checked.channels {
        node.publish(PublishRequest {
            channel: app.channel(channel),
            data: checked.data.clone(),
            tags: tags.clone(),
            source: Source::Api,
            ..PublishRequest::default()
        })
        .await
        .map_err(|error| match error {
            PublishError::EngineUnavailable(error) => {
                Failure(StatusCode::SERVICE_UNAVAILABLE, error.message.to_string())
            }
            PublishError::Refused(Refusal::Error(error)) => bad_request(error.message.to_string()),
            PublishError::Refused(Refusal::Disconnect(disconnect)) => {
                bad_request(disconnect.reason.to_string())
            }
        })?;
    }
    let mut attributes = Map::new();
    if !checked.info.is_empty() {
        for channel in &checked.channels {
            attributes.insert(
                channel.clone(),
                Value::Object(
                    channel_attributes(node, &app.channel(channel), &checked.info).await?,
                ),
            );
        }
    }
    Ok(attributes)
}

/// The attributes `info` asks for: `subscription_count` (connections subscribed on every node) and, for
/// presence channels, `user_count` (distinct users on every node). `channel` is Herald's name for it.
async fn channel_attributes(
    node: &Node,
    channel: &str,
    info: &[String],
) -> Result<Map<String, Value>, Failure> {
    let mut attributes = Map::new();
    for attribute in info {
        match attribute.as_str() {
            "subscription_count" => {
                let count = crate::counts::subscribers(node, channel)
                    .await
                    .map_err(counts_unavailable)?;
                attributes.insert("subscription_count".into(), count.into());
            }
            "user_count" if ChannelKind::of(channel) == ChannelKind::Presence => {
                let stats = node
                    .engine
                    .presence
                    .presence_stats(channel)
                    .await
                    .map_err(presence_unavailable(channel))?;
                attributes.insert("user_count".into(), stats.num_users.into());
            }
            "user_count" => {
                return Err(bad_request(
                    "user_count is only available for presence channels",
                ));
            }
            other => return Err(bad_request(format!("unknown info attribute {other:?}"))),
        }
    }
    Ok(attributes)
}

/// `POST /apps/{app_id}/events`.
async fn events(
    State(node): State<Arc<Node>>,
    Extension(app): App,
    body: Bytes,
) -> Result<Response, Failure> {
    let trigger: Trigger = serde_json::from_slice(&body)
        .map_err(|error| bad_request(format!("invalid event: {error}")))?;
    let checked = check(&app, trigger)?;
    within_rate(&app, 1)?;
    let attributes = publish(&node, &app, checked).await?;
    if attributes.is_empty() {
        Ok(ok(json!({})))
    } else {
        Ok(ok(json!({ "channels": attributes })))
    }
}

/// `POST /apps/{app_id}/batch_events`: up to ten events, each checked before any is published.
async fn batch_events(
    State(node): State<Arc<Node>>,
    Extension(app): App,
    body: Bytes,
) -> Result<Response, Failure> {
    #[derive(Deserialize)]
    struct Batch {
        batch: Vec<Trigger>,
    }
    let Batch { batch } = serde_json::from_slice(&body)
        .map_err(|error| bad_request(format!("invalid batch: {error}")))?;
    if batch.len() > MAX_BATCH {
        return Err(bad_request(format!("at most {MAX_BATCH} events per batch")));
    }
    let checked = batch
        .into_iter()
        .map(|trigger| check(&app, trigger))
        .collect::<Result<Vec<_>, _>>()?;
    within_rate(&app, checked.len())?;
    let wants_info = checked.iter().any(|c| !c.info.is_empty());
    let mut results = Vec::with_capacity(checked.len());
    for event in checked {
        let channel = event.channels[0].clone();
        let mut attributes = publish(&node, &app, event).await?;
        results.push(attributes.remove(&channel).unwrap_or_else(|| json!({})));
    }
    if wants_info {
        Ok(ok(json!({ "batch": results })))
    } else {
        Ok(ok(json!({})))
    }
}

/// `GET /apps/{app_id}/channels`: occupied channels on every node, optionally by prefix.
async fn channels(
    State(node): State<Arc<Node>>,
    Extension(app): App,
    uri: Uri,
) -> Result<Response, Failure> {
    let query = query_pairs(&uri);
    let param = |name: &str| {
        query
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    let prefix = param("filter_by_prefix").unwrap_or("");
    let info = info_attributes(param("info"));
    if info.iter().any(|a| a == "user_count") && !prefix.starts_with("presence-") {
        return Err(bad_request("user_count needs filter_by_prefix=presence-"));
    }
    let max_len = app.config().max_channel_name_length;
    let mut listed = Map::new();
    let mut occupied: Vec<String> = crate::counts::channels(&node)
        .await
        .map_err(counts_unavailable)?
        .into_keys()
        .collect();
    occupied.sort();
    for channel in occupied {
        // Other apps' channels, channels only the Centrifugo protocol can name, and users' private
        // channels are not listed.
        let Some(name) = app.name_of(&channel) else {
            continue;
        };
        if !name.starts_with(prefix)
            || !codec::valid_channel_name(name, max_len)
            || matches!(ChannelKind::of(name), ChannelKind::ServerToUser(_))
        {
            continue;
        }
        let attributes = if info.iter().any(|a| a == "user_count") {
            channel_attributes(&node, &channel, &["user_count".to_owned()]).await?
        } else {
            Map::new()
        };
        listed.insert(name.to_owned(), Value::Object(attributes));
    }
    Ok(ok(json!({ "channels": listed })))
}

/// `GET /apps/{app_id}/channels/{channel}`: whether it is occupied (on any node), with `info` attributes.
async fn channel(
    State(node): State<Arc<Node>>,
    Extension(app): App,
    Path((_app_id, name)): Path<(String, String)>,
    uri: Uri,
) -> Result<Response, Failure> {
    let query = query_pairs(&uri);
    if !codec::valid_channel_name(&name, app.config().max_channel_name_length) {
        return Err(bad_request(format!("invalid channel name {name:?}")));
    }
    let channel = app.channel(&name);
    let info = info_attributes(
        query
            .iter()
            .find(|(key, _)| key == "info")
            .map(|(_, value)| value.as_str()),
    );
    let mut body = channel_attributes(&node, &channel, &info).await?;
    let occupied = match body.get("subscription_count").and_then(Value::as_u64) {
        Some(count) => count > 0,
        None => {
            crate::counts::subscribers(&node, &channel)
                .await
                .map_err(counts_unavailable)?
                > 0
        }
    };
    body.insert("occupied".into(), occupied.into());
    Ok(ok(Value::Object(body)))
}

/// `GET /apps/{app_id}/channels/{channel}/users`: the ids of a presence channel's users, on every node.
async fn users(
    State(node): State<Arc<Node>>,
    Extension(app): App,
    Path((_app_id, name)): Path<(String, String)>,
) -> Result<Response, Failure> {
    if !codec::valid_channel_name(&name, app.config().max_channel_name_length)
        || ChannelKind::of(&name) != ChannelKind::Presence
    {
        return Err(bad_request(
            "users can only be listed for presence channels",
        ));
    }
    let channel = app.channel(&name);
    let present = node
        .engine
        .presence
        .presence(&channel)
        .await
        .map_err(presence_unavailable(&channel))?;
    let mut ids: Vec<&str> = present.values().map(|info| info.user.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let users: Vec<Value> = ids.into_iter().map(|id| json!({ "id": id })).collect();
    Ok(ok(json!({ "users": users })))
}

/// `POST /apps/{app_id}/users/{user_id}/terminate_connections`: closes the user's connections on every
/// node (Pusher clients get 4009 and stay disconnected).
async fn terminate_connections(
    State(node): State<Arc<Node>>,
    Extension(app): App,
    Path(params): Path<HashMap<String, String>>,
) -> Response {
    let user = params.get("user_id").map_or("", String::as_str);
    if user.is_empty() {
        // "" is every connection that never signed in.
        return bad_request("a user id is required").into_response();
    }
    let target = Target::connections(app.user(user), None);
    let command = Command::disconnect(target, &Disconnect::FORCE_DISCONNECT);
    if let Err(error) = control::send(&*node.engine.broker, &command).await {
        tracing::warn!(user, %error, "terminate_connections could not reach the cluster");
        return Failure(StatusCode::SERVICE_UNAVAILABLE, error.to_string()).into_response();
    }
    tracing::info!(user, "pusher API terminated a user's connections");
    ok(json!({}))
}

/// `429` unless `events` more events are within the app's `max_api_events_per_second`.
fn within_rate(app: &PusherApp, events: usize) -> Result<(), Failure> {
    if app.api_events_allowed(events) {
        Ok(())
    } else {
        Err(Failure(
            StatusCode::TOO_MANY_REQUESTS,
            "the app's event rate is exceeded".into(),
        ))
    }
}

/// `503` for a presence read the engine could not answer.
fn counts_unavailable(error: EngineError) -> Failure {
    tracing::warn!(%error, "subscriber counts read failed");
    Failure(StatusCode::SERVICE_UNAVAILABLE, error.to_string())
}

fn presence_unavailable(channel: &str) -> impl FnOnce(EngineError) -> Failure + '_ {
    move |error| {
        tracing::warn!(channel, %error, "presence read failed");
        Failure(StatusCode::SERVICE_UNAVAILABLE, error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_ids_are_two_numbers() {
        assert!(valid_socket_id("123.456"));
        for bad in ["123", ".1", "1.", "1.2.3", "a.1", "1.-2", ""] {
            assert!(!valid_socket_id(bad), "{bad}");
        }
    }

    #[test]
    fn info_lists_are_split_and_trimmed() {
        assert_eq!(
            info_attributes(Some("user_count, subscription_count,")),
            vec!["user_count", "subscription_count"]
        );
        assert!(info_attributes(None).is_empty());
    }
}
