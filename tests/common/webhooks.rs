//! A Pusher webhook receiver on a free loopback port: it checks every batch's headers and signature the way
//! the server libraries do and hands the test the events, in order.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use herald::protocol::pusher::sign;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::{PUSHER_KEY, PUSHER_SECRET, WAIT};

/// What the receiver got: every event of every accepted batch, in order, after checking each batch's
/// headers and signature.
pub struct WebhookReceiver {
    /// Where it listens (`http://127.0.0.1:…/hook`).
    pub url: String,
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
    let now = crate::pusher::now() * 1000;
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

impl WebhookReceiver {
    /// A receiver on a free loopback port that refuses the first `refuse` requests.
    pub async fn start(refuse: usize) -> Self {
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
    pub async fn next_batch(&mut self) -> Value {
        let batch = tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("a webhook in time")
            .expect("receiver running");
        assert!(batch.get("problem").is_none(), "{batch}");
        batch
    }

    /// The next event of the accepted batches, in order.
    pub async fn next(&mut self) -> Value {
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
