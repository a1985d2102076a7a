//! A raw Pusher-protocol (v7) client over the shared test [`Client`], and the Pusher HTTP API signed the
//! way the server libraries sign it, for the app of [`PUSHER_CONFIG`](crate::PUSHER_CONFIG). Everything
//! takes the address of a node, so in-process servers and `herald serve` processes are driven alike.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use herald::protocol::pusher::sign;
use serde_json::{Value, json};

use crate::{Client, PUSHER_APP_ID, PUSHER_KEY, PUSHER_SECRET};

/// A Pusher app's credentials, as its clients and its backend hold them.
#[derive(Debug, Clone, Copy)]
pub struct App {
    /// The id in API paths.
    pub id: &'static str,
    /// The key clients connect with.
    pub key: &'static str,
    /// The secret that signs.
    pub secret: &'static str,
}

/// The app of [`PUSHER_CONFIG`](crate::PUSHER_CONFIG).
pub const APP: App = App {
    id: PUSHER_APP_ID,
    key: PUSHER_KEY,
    secret: PUSHER_SECRET,
};

/// A raw Pusher-protocol client: the shared test client reading one JSON event per message.
pub struct Pusher {
    /// The WebSocket underneath, for raw frames and closes.
    pub client: Client,
    /// The id the server gave this connection in `pusher:connection_established`.
    pub socket_id: String,
    /// The app it connected to, whose secret signs its authorisations.
    pub app: App,
}

impl Pusher {
    /// Connects to the node at `addr` with the app key and reads `pusher:connection_established`.
    pub async fn connect(addr: SocketAddr) -> Self {
        Self::connect_to(addr, APP).await
    }

    /// Connects to the node at `addr` as a client of `app` and reads `pusher:connection_established`.
    pub async fn connect_to(addr: SocketAddr, app: App) -> Self {
        let mut client =
            Client::open_url(&url(addr, app.key, "?protocol=7&client=js&version=8.6.0")).await;
        let established = client.next_json().await;
        assert_eq!(
            established["event"], "pusher:connection_established",
            "{established}"
        );
        let socket_id = data(&established)["socket_id"]
            .as_str()
            .expect("socket_id")
            .to_owned();
        Self {
            client,
            socket_id,
            app,
        }
    }

    /// Sends one event.
    pub async fn send(&mut self, message: Value) {
        self.client.send_text(&message.to_string()).await;
    }

    /// The next event the server sent.
    pub async fn next(&mut self) -> Value {
        self.client.next_json().await
    }

    /// Subscribes and returns the answer (`subscription_succeeded` or `subscription_error`).
    pub async fn subscribe(&mut self, channel: &str, auth: Option<String>) -> Value {
        let mut data = json!({ "channel": channel });
        if let Some(auth) = auth {
            data["auth"] = auth.into();
        }
        self.send(json!({"event": "pusher:subscribe", "data": data}))
            .await;
        self.next().await
    }

    /// Subscribes, asserting it succeeds.
    pub async fn subscribed(&mut self, channel: &str, auth: Option<String>) {
        let answer = self.subscribe(channel, auth).await;
        assert_eq!(
            (answer["event"].as_str(), answer["channel"].as_str()),
            (
                Some("pusher_internal:subscription_succeeded"),
                Some(channel)
            ),
            "{answer}"
        );
    }

    /// Subscribes to a presence channel as the member `channel_data` describes (sent and signed as this
    /// exact string, as pusher-js and the server libraries do) and returns the answer.
    pub async fn subscribe_presence(&mut self, channel: &str, channel_data: &str) -> Value {
        let auth = format!(
            "{}:{}",
            self.app.key,
            sign::channel_signature(
                self.app.secret,
                &self.socket_id,
                channel,
                Some(channel_data)
            )
        );
        self.send(json!({
            "event": "pusher:subscribe",
            "data": {"channel": channel, "auth": auth, "channel_data": channel_data},
        }))
        .await;
        self.next().await
    }

    /// Signs in as `user_data` the way pusher-js does after asking the app backend; returns the answer.
    pub async fn sign_in(&mut self, user_data: &str) -> Value {
        let auth = format!(
            "{}:{}",
            self.app.key,
            sign::user_signature(self.app.secret, &self.socket_id, user_data)
        );
        self.send(
            json!({"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}}),
        )
        .await;
        self.next().await
    }

    /// What the app backend would answer pusher-js's authorisation request for a private channel with.
    pub fn auth(&self, channel: &str) -> String {
        format!(
            "{}:{}",
            self.app.key,
            sign::channel_signature(self.app.secret, &self.socket_id, channel, None)
        )
    }
}

/// `ws://{addr}/app/{key}{query}`.
pub fn url(addr: SocketAddr, key: &str, query: &str) -> String {
    format!("ws://{addr}/app/{key}{query}")
}

/// The current Unix time in seconds, as `auth_timestamp` carries it.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// Sends a Pusher HTTP API request to the node at `addr`, signed like the server libraries do (with
/// `secret` and `timestamp`); returns the status and the body.
pub async fn signed(
    addr: SocketAddr,
    method: &str,
    path: &str,
    params: &[(&str, &str)],
    body: Option<Value>,
    secret: &str,
    timestamp: i64,
) -> (u16, String) {
    send_signed(
        addr,
        (APP.key, secret),
        method,
        path,
        params,
        body,
        timestamp,
    )
    .await
}

/// A request of `app`'s backend to the node at `addr`, signed with its key and secret now; the status and
/// the body as JSON (a string when it is not JSON).
pub async fn signed_as(
    addr: SocketAddr,
    app: App,
    method: &str,
    path: &str,
    params: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, Value) {
    let credentials = (app.key, app.secret);
    let (status, body) = send_signed(addr, credentials, method, path, params, body, now()).await;
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

async fn send_signed(
    addr: SocketAddr,
    (key, secret): (&str, &str),
    method: &str,
    path: &str,
    params: &[(&str, &str)],
    body: Option<Value>,
    timestamp: i64,
) -> (u16, String) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let params: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let query = sign::sign_api_request(
        key,
        secret,
        method,
        path,
        &params,
        body.as_bytes(),
        timestamp,
    );
    let client = reqwest::Client::new();
    let url = format!("http://{addr}{path}");
    let request = match method {
        "GET" => client.get(url),
        _ => client
            .post(url)
            .header("content-type", "application/json")
            .body(body),
    };
    let response = request.query(&query).send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

/// `POST /apps/1/events` to the node at `addr`, correctly signed.
pub async fn trigger(addr: SocketAddr, body: Value) -> (u16, String) {
    signed(
        addr,
        "POST",
        &format!("/apps/{PUSHER_APP_ID}/events"),
        &[],
        Some(body),
        PUSHER_SECRET,
        now(),
    )
    .await
}

/// Triggers the event `body` describes through the node at `addr`, asserting it is accepted (`200 {}`).
pub async fn triggered(addr: SocketAddr, body: Value) {
    let (status, answer) = trigger(addr, body.clone()).await;
    assert_eq!(
        (status, answer.as_str()),
        (200, "{}"),
        "trigger {body} on {addr}"
    );
}

/// A correctly signed `GET` of the Pusher HTTP API on the node at `addr`; the status and the body as
/// JSON (a string when it is not JSON).
pub async fn get(addr: SocketAddr, path: &str, params: &[(&str, &str)]) -> (u16, Value) {
    signed_as(addr, APP, "GET", path, params, None).await
}

/// The `data` of a Pusher event, parsed from its string.
pub fn data(event: &Value) -> Value {
    serde_json::from_str(event["data"].as_str().expect("data is a string")).expect("data is JSON")
}
