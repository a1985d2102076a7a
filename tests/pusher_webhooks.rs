//! Pusher webhooks from a real Herald to a real HTTP receiver: channel_occupied / channel_vacated,
//! member_added / member_removed (once per user, before the channel is vacated), client_event, the
//! signature headers the Pusher server libraries check, the `event_types` filter, and redelivery of a
//! batch the receiver refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use herald::protocol::pusher::sign;
use herald_tests::pusher::Pusher;
use herald_tests::{PUSHER_CONFIG, PUSHER_KEY, PUSHER_SECRET, TestServer, WAIT};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// What the receiver got: every event of every accepted batch, in order, after checking each batch's
/// headers and signature.
struct Receiver {
    url: String,
    events: mpsc::UnboundedReceiver<Value>,
    pending: std::collections::VecDeque<Value>,
}

#[derive(Clone)]
struct Endpoint {
    batches: mpsc::UnboundedSender<Value>,
    /// Requests to refuse with 500 before accepting.
    refuse: Arc<AtomicUsize>,
}

async fn hook(State(endpoint): State<Endpoint>, headers: HeaderMap, body: Bytes) -> StatusCode {
    // Problems are reported to the test through the channel: a panic here would only drop the request.
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let batch: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let now = herald_tests::pusher::now() * 1000;
    let problem = if header("x-pusher-key") != PUSHER_KEY {
        Some("wrong X-Pusher-Key")
    } else if header("content-type") != "application/json" {
        Some("not application/json")
    } else if header("x-pusher-signature") != sign::webhook_signature(PUSHER_SECRET, &body) {
        Some("a signature the server libraries would reject")
    } else if batch["time_ms"]
        .as_i64()
        .is_none_or(|t| (now - t).abs() > 60_000)
    {
        Some("time_ms is not now")
    } else {
        None
    };
    if let Some(problem) = problem {
        let _ = endpoint
            .batches
            .send(json!({"problem": problem, "batch": batch}));
        return StatusCode::BAD_REQUEST;
    }
    if endpoint
        .refuse
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        let _ = endpoint.batches.send(json!({"refused": batch["events"]}));
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let _ = endpoint.batches.send(batch);
    StatusCode::OK
}

impl Receiver {
    /// A receiver on a free loopback port that refuses the first `refuse` requests.
    async fn start(refuse: usize) -> Self {
        let (batches, events) = mpsc::unbounded_channel();
        let endpoint = Endpoint {
            batches,
            refuse: Arc::new(AtomicUsize::new(refuse)),
        };
        let app = Router::new()
            .route("/hook", post(hook))
            .with_state(endpoint);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url,
            events,
            pending: Default::default(),
        }
    }

    /// The next batch as received (`{"refused": events}` for a refused one).
    async fn next_batch(&mut self) -> Value {
        let batch = tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("a webhook in time")
            .expect("receiver running");
        assert!(batch.get("problem").is_none(), "{batch}");
        batch
    }

    /// The next event of the accepted batches, in order.
    async fn next(&mut self) -> Value {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return event;
            }
            let batch = self.next_batch().await;
            if let Some(events) = batch["events"].as_array() {
                self.pending.extend(events.iter().cloned());
            }
        }
    }
}

async fn server(receiver: &Receiver, event_types: &[&str]) -> TestServer {
    TestServer::start(&format!(
        "{PUSHER_CONFIG}\n[[pusher.webhooks]]\nurl = {:?}\nevent_types = {:?}",
        receiver.url, event_types
    ))
    .await
}

#[tokio::test]
async fn channels_members_and_client_events_reach_the_webhook() {
    let mut receiver = Receiver::start(0).await;
    let server = server(&receiver, &[]).await;
    let mut ada = Pusher::connect(server.addr).await;
    ada.subscribed("news", None).await;
    assert_eq!(
        receiver.next().await,
        json!({"name": "channel_occupied", "channel": "news"})
    );

    let presence = ada
        .subscribe_presence(
            "presence-room",
            r#"{"user_id":"1","user_info":{"name":"Ada"}}"#,
        )
        .await;
    assert_eq!(presence["event"], "pusher_internal:subscription_succeeded");
    let mut events = vec![receiver.next().await, receiver.next().await];
    events.sort_by_key(|e| e["name"].as_str().map(str::to_owned));
    assert_eq!(
        events,
        [
            json!({"name": "channel_occupied", "channel": "presence-room"}),
            json!({"name": "member_added", "channel": "presence-room", "user_id": "1"}),
        ]
    );

    let mut bob = Pusher::connect(server.addr).await;
    let joined = bob
        .subscribe_presence("presence-room", r#"{"user_id":"2"}"#)
        .await;
    assert_eq!(joined["event"], "pusher_internal:subscription_succeeded");
    assert_eq!(
        receiver.next().await,
        json!({"name": "member_added", "channel": "presence-room", "user_id": "2"})
    );
    bob.send(json!({"event": "client-wave", "channel": "presence-room", "data": {"hi": true}}))
        .await;
    assert_eq!(ada.next().await["event"], "pusher_internal:member_added");
    let wave = ada.next().await;
    assert_eq!(
        (wave["event"].as_str(), wave["user_id"].as_str()),
        (Some("client-wave"), Some("2"))
    );
    assert_eq!(
        receiver.next().await,
        json!({"name": "client_event", "channel": "presence-room", "event": "client-wave",
               "data": "{\"hi\":true}", "socket_id": bob.socket_id, "user_id": "2"})
    );

    // Ada leaves: she is removed from the room before the room is vacated.
    drop(ada);
    let mut left = Vec::new();
    for _ in 0..2 {
        left.push(receiver.next().await);
    }
    assert!(
        left.contains(&json!({"name": "channel_vacated", "channel": "news"})),
        "{left:?}"
    );
    assert!(
        left.contains(
            &json!({"name": "member_removed", "channel": "presence-room", "user_id": "1"})
        ),
        "{left:?}"
    );
    drop(bob);
    assert_eq!(
        receiver.next().await,
        json!({"name": "member_removed", "channel": "presence-room", "user_id": "2"})
    );
    assert_eq!(
        receiver.next().await,
        json!({"name": "channel_vacated", "channel": "presence-room"})
    );
}

#[tokio::test]
async fn event_types_filter_and_refused_batches_are_sent_again() {
    let mut receiver = Receiver::start(1).await;
    let server = server(&receiver, &["channel_vacated"]).await;
    let mut pusher = Pusher::connect(server.addr).await;
    pusher.subscribed("news", None).await;
    pusher
        .send(json!({"event": "pusher:unsubscribe", "data": {"channel": "news"}}))
        .await;
    let vacated = json!([{"name": "channel_vacated", "channel": "news"}]);
    // Refused once, then delivered again, the same events; occupied was filtered out.
    assert_eq!(receiver.next_batch().await, json!({"refused": vacated}));
    assert_eq!(receiver.next_batch().await["events"], vacated);
}

#[tokio::test]
async fn a_cache_channel_without_an_event_is_a_cache_miss() {
    let mut receiver = Receiver::start(0).await;
    let server = server(&receiver, &["cache_miss"]).await;
    let mut pusher = Pusher::connect(server.addr).await;
    pusher.subscribed("cache-empty", None).await;
    assert_eq!(pusher.next().await["event"], "pusher:cache_miss");
    assert_eq!(
        receiver.next().await,
        json!({"name": "cache_miss", "channel": "cache-empty"})
    );
}
