//! Pusher webhooks: telling the app's backend that channels became occupied or vacated, that presence
//! members came and went, and which client events were sent.
//!
//! Each `[[pusher.webhooks]]` URL gets its own bounded queue and delivery task, so a slow or failing
//! receiver never holds back another or the connections producing events: [`Webhooks::send`] only queues
//! (dropping the event, with a warning, when the queue is full). The task batches what is queued into one
//! signed POST (`{"time_ms": …, "events": […]}` with `X-Pusher-Key` and `X-Pusher-Signature`, as the
//! Pusher server libraries expect), and retries a batch the receiver refused or could not be reached for
//! with exponential backoff for [`RETRY_FOR`], holding back the events behind it so they arrive in order.
//! A batch still failing after that is dropped with a warning. When the node shuts down, each task makes
//! one last attempt to deliver what is queued, bounded by [`FLUSH_DEADLINE`].
//!
//! Delivery is at least once: a batch whose answer was lost is sent again. `time_ms` is stamped at each
//! attempt (and the body signed again), so receivers that reject stale webhooks (the Python library allows
//! 300 s) accept a retried batch too.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::engine::now_ms;
use crate::protocol::pusher::sign::webhook_signature;

/// Events waiting per URL; beyond this, new events for that URL are dropped.
pub const QUEUE_CAPACITY: usize = 10_000;

/// Most events in one POST.
pub const MAX_BATCH: usize = 100;

/// How long a batch waits after its first event for more (soketi's batching window).
pub const BATCH_WINDOW: Duration = Duration::from_millis(50);

/// The first wait before retrying a failed batch; it doubles up to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_secs(1);

/// The longest wait between two attempts.
pub const RETRY_MAX: Duration = Duration::from_secs(60);

/// How long a failing batch is retried before it is dropped (hosted Pusher retries for about 5 minutes).
pub const RETRY_FOR: Duration = Duration::from_secs(5 * 60);

/// One request's time limit, answer included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the last flush may take once the node shuts down.
pub const FLUSH_DEADLINE: Duration = Duration::from_secs(3);

/// The event names, as `event_types` lists them and the body's `name` fields carry them.
const EVENT_NAMES: [&str; 6] = [
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
    "cache_miss",
];

/// Every event type (bit `i` is `EVENT_NAMES[i]`).
const ALL_EVENTS: u8 = (1 << EVENT_NAMES.len()) - 1;

/// One `[[pusher.webhooks]]` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where to POST.
    pub url: String,
    /// Which events go there (`channel_occupied`, `channel_vacated`, `member_added`, `member_removed`,
    /// `client_event`); empty = all.
    pub event_types: Vec<String>,
}

impl WebhookConfig {
    /// Checks what serde cannot: an `http://` or `https://` URL with a host, and known event types. The
    /// error names the field; callers prefix the entry.
    pub fn validate(&self) -> Result<(), WebhookConfigError> {
        match url::Url::parse(&self.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
            Ok(_) => return Err(WebhookConfigError::NotHttp(self.url.clone())),
            Err(error) => {
                return Err(WebhookConfigError::NotAUrl {
                    url: self.url.clone(),
                    error,
                });
            }
        }
        if let Some(unknown) = self
            .event_types
            .iter()
            .find(|name| !EVENT_NAMES.contains(&name.as_str()))
        {
            return Err(WebhookConfigError::UnknownEventType(unknown.clone()));
        }
        Ok(())
    }

    /// The event types this webhook receives, as a bit set.
    fn mask(&self) -> u8 {
        if self.event_types.is_empty() {
            return ALL_EVENTS;
        }
        self.event_types
            .iter()
            .filter_map(|name| EVENT_NAMES.iter().position(|known| known == name))
            .fold(0, |mask, i| mask | 1 << i)
    }
}

/// Why a `[[pusher.webhooks]]` entry is refused. Each names the field; the configuration prefixes the entry
/// (`pusher.webhooks[0].url: …`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookConfigError {
    /// The URL parses but is not `http://` or `https://` with a host.
    #[error("url: {0:?} is not an http:// or https:// URL")]
    NotHttp(String),
    /// The URL does not parse.
    #[error("url: {url:?} is not a URL: {error}")]
    NotAUrl {
        /// The configured URL.
        url: String,
        /// What the URL parser says.
        error: url::ParseError,
    },
    /// An event type Herald does not send.
    #[error("event_types: {0:?} is not one of {events}", events = EVENT_NAMES.join(", "))]
    UnknownEventType(String),
}

/// An event, as Pusher's webhook body lists it.
#[derive(Debug, Clone, PartialEq)]
pub enum WebhookEvent {
    /// A channel got its first subscriber.
    ChannelOccupied {
        /// The channel.
        channel: String,
    },
    /// A channel lost its last subscriber.
    ChannelVacated {
        /// The channel.
        channel: String,
    },
    /// A user joined a presence channel.
    MemberAdded {
        /// The presence channel.
        channel: String,
        /// The member's user id.
        user_id: String,
    },
    /// A user left a presence channel.
    MemberRemoved {
        /// The presence channel.
        channel: String,
        /// The member's user id.
        user_id: String,
    },
    /// A client event (`client-*`) was relayed.
    ClientEvent {
        /// The channel.
        channel: String,
        /// The event name.
        event: String,
        /// The event data as the client sent it (raw JSON text).
        data: Option<String>,
        /// The sender's socket id.
        socket_id: String,
        /// The presence member's user id, on presence channels.
        user_id: Option<String>,
    },
    /// A subscriber of a cache channel found no event to get.
    CacheMiss {
        /// The cache channel.
        channel: String,
    },
}

impl WebhookEvent {
    /// The event's `name` in the webhook body (and in `event_types`).
    pub fn name(&self) -> &'static str {
        EVENT_NAMES[self.index()]
    }

    fn index(&self) -> usize {
        match self {
            Self::ChannelOccupied { .. } => 0,
            Self::ChannelVacated { .. } => 1,
            Self::MemberAdded { .. } => 2,
            Self::MemberRemoved { .. } => 3,
            Self::ClientEvent { .. } => 4,
            Self::CacheMiss { .. } => 5,
        }
    }

    /// The object in the body's `events`: fields in Pusher's order, the optional ones only when present.
    fn wire(&self) -> WireEvent<'_> {
        let mut wire = WireEvent {
            name: self.name(),
            channel: "",
            event: None,
            data: None,
            socket_id: None,
            user_id: None,
        };
        match self {
            Self::ChannelOccupied { channel }
            | Self::ChannelVacated { channel }
            | Self::CacheMiss { channel } => {
                wire.channel = channel;
            }
            Self::MemberAdded { channel, user_id } | Self::MemberRemoved { channel, user_id } => {
                wire.channel = channel;
                wire.user_id = Some(user_id);
            }
            Self::ClientEvent {
                channel,
                event,
                data,
                socket_id,
                user_id,
            } => {
                wire.channel = channel;
                wire.event = Some(event);
                // Pusher sends the data as the client sent it, inside a JSON string.
                wire.data = data.as_deref();
                wire.socket_id = Some(socket_id);
                wire.user_id = user_id.as_deref();
            }
        }
        wire
    }
}

#[derive(Serialize)]
struct WireEvent<'a> {
    name: &'static str,
    channel: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    socket_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
}

#[derive(Serialize)]
struct WireBody<'a> {
    time_ms: i64,
    events: Vec<WireEvent<'a>>,
}

/// The POST body for `events`, stamped `time_ms`.
fn encode_body(time_ms: i64, events: &[WebhookEvent]) -> Vec<u8> {
    let body = WireBody {
        time_ms,
        events: events.iter().map(WebhookEvent::wire).collect(),
    };
    serde_json::to_vec(&body).expect("webhook body serializes")
}

/// The delivery knobs; tests shorten them.
#[derive(Debug, Clone, Copy)]
struct Timing {
    queue: usize,
    max_batch: usize,
    batch_window: Duration,
    retry_first: Duration,
    retry_max: Duration,
    retry_for: Duration,
    request_timeout: Duration,
    flush_deadline: Duration,
}

const TIMING: Timing = Timing {
    queue: QUEUE_CAPACITY,
    max_batch: MAX_BATCH,
    batch_window: BATCH_WINDOW,
    retry_first: RETRY_FIRST,
    retry_max: RETRY_MAX,
    retry_for: RETRY_FOR,
    request_timeout: REQUEST_TIMEOUT,
    flush_deadline: FLUSH_DEADLINE,
};

/// The sender: cheap to clone; `send` never waits. The default sends nowhere, like [`Webhooks::start`]
/// without webhooks.
#[derive(Clone, Default)]
pub struct Webhooks {
    /// `None` when no webhook is configured, so `send` costs one branch.
    targets: Option<Arc<[Target]>>,
    /// The delivery tasks; closed from the start, so [`Webhooks::stopped`] waits for these only.
    tasks: TaskTracker,
    counts: Arc<EventCounts>,
}

/// Events by what became of them, over every URL (for metrics).
#[derive(Debug, Default)]
pub struct EventCounts {
    /// Delivered (a 2xx answer).
    pub sent: AtomicU64,
    /// Given up: still failing after retrying, or not delivered by the shutdown deadline.
    pub failed: AtomicU64,
    /// Dropped because the URL's queue was full.
    pub dropped: AtomicU64,
}

/// One URL's side of the queue.
struct Target {
    url: Arc<str>,
    /// The event types it receives ([`WebhookConfig::mask`]).
    events: u8,
    queue: mpsc::Sender<WebhookEvent>,
    /// Events dropped since the last warning, and when that warning was (ms since the epoch): a full queue
    /// logs at most once a second instead of once per event.
    dropped: AtomicU64,
    warned_ms: AtomicI64,
    counts: Arc<EventCounts>,
}

impl Target {
    fn push(&self, event: WebhookEvent) {
        match self.queue.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(event)) => {
                self.counts.dropped.fetch_add(1, Ordering::Relaxed);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                let now = now_ms();
                let last = self.warned_ms.load(Ordering::Relaxed);
                if now - last >= 1000
                    && self
                        .warned_ms
                        .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    let dropped = self.dropped.swap(0, Ordering::Relaxed);
                    tracing::warn!(
                        url = %self.url,
                        dropped,
                        last = event.name(),
                        capacity = self.queue.max_capacity(),
                        "webhook queue full; dropping events"
                    );
                }
            }
            // The delivery task has stopped: the node is shutting down.
            Err(mpsc::error::TrySendError::Closed(event)) => {
                tracing::debug!(url = %self.url, event = event.name(), "webhook event after shutdown dropped");
            }
        }
    }
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<&str> = self
            .targets
            .iter()
            .flat_map(|t| t.iter().map(|t| &*t.url))
            .collect();
        f.debug_struct("Webhooks").field("urls", &urls).finish()
    }
}

impl Webhooks {
    /// Starts one delivery task per configured URL (none when `hooks` is empty, and then `send` is a no-op).
    /// key/secret: the app's, for X-Pusher-Key / X-Pusher-Signature. Tasks end when `shutdown` is cancelled
    /// (after one last attempt to flush what is queued, bounded by a short deadline).
    ///
    /// Entries that fail [`WebhookConfig::validate`] (configuration validation refuses them first) are
    /// skipped with an error log line. Delivery needs a Tokio runtime: started outside one, webhooks are
    /// disabled with an error log line.
    pub fn start(
        hooks: &[WebhookConfig],
        key: &str,
        secret: &str,
        shutdown: CancellationToken,
    ) -> Self {
        Self::start_with(hooks, key, secret, shutdown, TIMING)
    }

    fn start_with(
        hooks: &[WebhookConfig],
        key: &str,
        secret: &str,
        shutdown: CancellationToken,
        timing: Timing,
    ) -> Self {
        let tasks = TaskTracker::new();
        tasks.close();
        let hooks: Vec<&WebhookConfig> = hooks
            .iter()
            .filter(|hook| match hook.validate() {
                Ok(()) => true,
                Err(error) => {
                    tracing::error!(url = %hook.url, %error, "webhook skipped: invalid configuration");
                    false
                }
            })
            .collect();
        if hooks.is_empty() {
            return Self {
                targets: None,
                tasks,
                counts: Arc::default(),
            };
        }
        if tokio::runtime::Handle::try_current().is_err() {
            tracing::error!("webhooks disabled: started outside a Tokio runtime");
            return Self {
                targets: None,
                tasks,
                counts: Arc::default(),
            };
        }
        // A redirect is an answer other than 2xx, as for Pusher: retried, never followed.
        let builder = reqwest::Client::builder()
            .timeout(timing.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")));
        // Tests' receivers are local: a proxy set in the environment must not get in between.
        #[cfg(test)]
        let builder = builder.no_proxy();
        let client = match builder.build() {
            Ok(client) => client,
            Err(error) => {
                tracing::error!(error = %describe(&error), "webhooks disabled: cannot create the HTTP client");
                return Self {
                    targets: None,
                    tasks,
                    counts: Arc::default(),
                };
            }
        };
        let counts = Arc::new(EventCounts::default());
        let mut targets = Vec::with_capacity(hooks.len());
        for hook in hooks {
            let url: Arc<str> = hook.url.as_str().into();
            let (queue, events) = mpsc::channel(timing.queue);
            let delivery = Delivery {
                client: client.clone(),
                url: url.clone(),
                key: key.to_string(),
                secret: secret.to_string(),
                timing,
                shutdown: shutdown.clone(),
                failing: false,
                counts: counts.clone(),
            };
            tasks.spawn(delivery.run(events));
            tracing::info!(%url, event_types = ?hook.event_types, "webhook enabled");
            targets.push(Target {
                url,
                events: hook.mask(),
                queue,
                dropped: AtomicU64::new(0),
                warned_ms: AtomicI64::new(0),
                counts: counts.clone(),
            });
        }
        Self {
            targets: Some(targets.into()),
            tasks,
            counts,
        }
    }

    /// Events by what became of them so far.
    pub fn counts(&self) -> &EventCounts {
        &self.counts
    }

    /// Events waiting in the queues of every URL.
    pub fn queued(&self) -> usize {
        self.targets.as_deref().map_or(0, |targets| {
            targets
                .iter()
                .map(|t| t.queue.max_capacity() - t.queue.capacity())
                .sum()
        })
    }

    /// Whether any webhook is configured (callers skip work for nothing).
    pub fn enabled(&self) -> bool {
        self.targets.is_some()
    }

    /// Queues an event for every webhook whose `event_types` include it. A full queue ([`QUEUE_CAPACITY`]
    /// events per URL) drops the event with a warn log line (at most one a second per URL, counting the
    /// events dropped since the previous one): it never blocks the caller.
    ///
    /// The body carrying the event is stamped (`time_ms`) when it is sent: at most [`BATCH_WINDOW`] later
    /// unless the receiver is failing.
    pub fn send(&self, event: WebhookEvent) {
        let Some(targets) = &self.targets else {
            return;
        };
        let bit = 1 << event.index();
        let Some(last) = targets.iter().rposition(|t| t.events & bit != 0) else {
            return;
        };
        for target in targets[..last].iter().filter(|t| t.events & bit != 0) {
            target.push(event.clone());
        }
        targets[last].push(event);
    }

    /// Resolves once every delivery task has ended: after `shutdown` is cancelled and the last flush is
    /// done (or its deadline passed). At once when no webhook is configured. A shutdown awaits this so the
    /// runtime does not stop under the flush.
    pub async fn stopped(&self) {
        self.tasks.wait().await;
    }
}

/// What became of a batch.
enum Outcome {
    /// Delivered, or dropped after retrying.
    Done,
    /// Shutdown came while it waited to be retried: the last flush tries it once more.
    Interrupted(Vec<WebhookEvent>),
    /// The flush deadline passed during a request: nothing more is sent.
    Stopped,
}

/// One URL's delivery task.
struct Delivery {
    client: reqwest::Client,
    url: Arc<str>,
    key: String,
    secret: String,
    timing: Timing,
    shutdown: CancellationToken,
    /// The last attempt failed (logged once when it starts and once when it ends).
    failing: bool,
    counts: Arc<EventCounts>,
}

impl Delivery {
    fn counted(&self, count: &AtomicU64, events: usize) {
        count.fetch_add(events as u64, Ordering::Relaxed);
    }

    async fn run(mut self, mut events: mpsc::Receiver<WebhookEvent>) {
        let carried = loop {
            let batch = self.gather(&mut events).await;
            if self.shutdown.is_cancelled() {
                break batch;
            }
            if batch.is_empty() {
                // Every sender is gone and the queue is empty: nothing can arrive any more.
                return;
            }
            match self.deliver(batch).await {
                Outcome::Done => {}
                Outcome::Interrupted(batch) => break batch,
                Outcome::Stopped => return,
            }
        };
        self.flush(events, carried).await;
    }

    /// Waits for an event, then for more during the batching window, up to a full batch. Empty when the
    /// shutdown came first or every sender is gone; cut short by the shutdown.
    async fn gather(&self, events: &mut mpsc::Receiver<WebhookEvent>) -> Vec<WebhookEvent> {
        let first = tokio::select! {
            biased;
            event = events.recv() => event,
            () = self.shutdown.cancelled() => None,
        };
        let Some(first) = first else {
            return Vec::new();
        };
        let mut batch = Vec::with_capacity(self.timing.max_batch.min(16));
        batch.push(first);
        let window = tokio::time::sleep(self.timing.batch_window);
        tokio::pin!(window);
        while batch.len() < self.timing.max_batch {
            // Whatever is queued already joins without a trip through the timer.
            if let Ok(event) = events.try_recv() {
                batch.push(event);
                continue;
            }
            tokio::select! {
                biased;
                event = events.recv() => match event {
                    Some(event) => batch.push(event),
                    None => break,
                },
                () = &mut window => break,
                () = self.shutdown.cancelled() => break,
            }
        }
        batch
    }

    /// Sends a batch, retrying with backoff while it fails, for up to `retry_for`.
    async fn deliver(&mut self, batch: Vec<WebhookEvent>) -> Outcome {
        let started = Instant::now();
        let mut wait = self.timing.retry_first;
        loop {
            let attempt = tokio::select! {
                result = self.post(&batch) => result,
                () = after_shutdown(&self.shutdown, self.timing.flush_deadline) => {
                    tracing::warn!(url = %self.url, events = batch.len(), "webhook request still running at the shutdown deadline; batch dropped");
                    self.counted(&self.counts.failed, batch.len());
                    return Outcome::Stopped;
                }
            };
            let error = match attempt {
                Ok(()) => {
                    self.counted(&self.counts.sent, batch.len());
                    if self.failing {
                        self.failing = false;
                        tracing::info!(url = %self.url, "webhook recovered");
                    }
                    return Outcome::Done;
                }
                Err(error) => error,
            };
            if !self.failing {
                self.failing = true;
                tracing::info!(url = %self.url, %error, "webhook failing, retrying");
            } else {
                tracing::debug!(url = %self.url, %error, retry_in = ?wait, "webhook attempt failed");
            }
            if started.elapsed() + wait > self.timing.retry_for {
                tracing::warn!(
                    url = %self.url,
                    events = batch.len(),
                    %error,
                    retried_for = ?started.elapsed(),
                    "webhook batch dropped: still failing after retrying"
                );
                self.counted(&self.counts.failed, batch.len());
                return Outcome::Done;
            }
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return Outcome::Interrupted(batch),
                () = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(self.timing.retry_max);
        }
    }

    /// The last attempt at shutdown: sends what is queued (and whatever the closing connections still
    /// queue, until the queue stays empty for a batching window), each batch once, until the deadline.
    async fn flush(&self, mut events: mpsc::Receiver<WebhookEvent>, carried: Vec<WebhookEvent>) {
        let mut pending = carried;
        let mut sent = 0usize;
        let mut lost = 0usize;
        let flushed = tokio::time::timeout(self.timing.flush_deadline, async {
            loop {
                while pending.len() < self.timing.max_batch {
                    match tokio::time::timeout(self.timing.batch_window, events.recv()).await {
                        Ok(Some(event)) => pending.push(event),
                        Ok(None) | Err(_) => break,
                    }
                }
                if pending.is_empty() {
                    break;
                }
                match self.post(&pending).await {
                    Ok(()) => sent += pending.len(),
                    Err(error) => {
                        lost += pending.len();
                        tracing::warn!(url = %self.url, events = pending.len(), %error, "webhook batch dropped at shutdown");
                    }
                }
                pending.clear();
            }
        })
        .await;
        events.close();
        if flushed.is_err() {
            let left = pending.len() + events.len();
            lost += left;
            tracing::warn!(url = %self.url, events = left, deadline = ?self.timing.flush_deadline, "webhook flush deadline reached; dropping what is left");
        }
        self.counted(&self.counts.sent, sent);
        self.counted(&self.counts.failed, lost);
        tracing::debug!(url = %self.url, sent, lost, "webhook delivery stopped");
    }

    /// One attempt: the body stamped now and signed, POSTed; `Err` describes a transport error or a
    /// non-2xx answer.
    async fn post(&self, events: &[WebhookEvent]) -> Result<(), String> {
        let body = encode_body(now_ms(), events);
        let signature = webhook_signature(&self.secret, &body);
        let response = self
            .client
            .post(&*self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Pusher-Key", &self.key)
            .header("X-Pusher-Signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|error| describe(&error))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("answered {status}"));
        }
        // Read the answer so the connection can be reused; its content does not matter.
        let _ = response.bytes().await;
        Ok(())
    }
}

/// Resolves `grace` after `shutdown` is cancelled.
async fn after_shutdown(shutdown: &CancellationToken, grace: Duration) {
    shutdown.cancelled().await;
    tokio::time::sleep(grace).await;
}

/// An error with its causes (reqwest's own message leaves out why a request failed).
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use axum::http::{HeaderMap, Method, StatusCode};
    use hmac::{Hmac, Mac};
    use serde_json::{Value, json};
    use sha2::Sha256;

    use super::*;

    const KEY: &str = "app-key";
    const SECRET: &str = "app-secret";

    /// Short retries, so failing receivers do not make tests slow.
    const FAST: Timing = Timing {
        retry_first: Duration::from_millis(1),
        retry_max: Duration::from_millis(4),
        ..TIMING
    };

    /// A request the receiver got.
    struct Received {
        method: Method,
        headers: HeaderMap,
        body: Vec<u8>,
    }

    impl Received {
        fn json(&self) -> Value {
            serde_json::from_slice(&self.body).expect("the body is JSON")
        }

        fn events(&self) -> Value {
            self.json()["events"].clone()
        }

        fn header(&self, name: &str) -> &str {
            self.headers
                .get(name)
                .unwrap_or_else(|| panic!("header {name} is missing"))
                .to_str()
                .expect("an ASCII header")
        }
    }

    /// A local HTTP server recording every request; `answer(n, body)` decides the status of the n-th
    /// (from 0).
    struct Receiver {
        url: String,
        requests: mpsc::UnboundedReceiver<Received>,
    }

    impl Receiver {
        async fn start(
            answer: impl Fn(usize, &[u8]) -> StatusCode + Send + Sync + 'static,
        ) -> Self {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/webhooks", listener.local_addr().unwrap());
            let (record, requests) = mpsc::unbounded_channel();
            let answer = Arc::new(answer);
            let count = Arc::new(AtomicUsize::new(0));
            let app = axum::Router::new().fallback(
                move |method: Method, headers: HeaderMap, body: bytes::Bytes| {
                    let n = count.fetch_add(1, Ordering::SeqCst);
                    let status = answer(n, &body);
                    let _ = record.send(Received {
                        method,
                        headers,
                        body: body.to_vec(),
                    });
                    async move { status }
                },
            );
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            Self { url, requests }
        }

        fn ok() -> impl Fn(usize, &[u8]) -> StatusCode + Send + Sync + 'static {
            |_, _| StatusCode::OK
        }

        async fn next(&mut self) -> Received {
            tokio::time::timeout(Duration::from_secs(10), self.requests.recv())
                .await
                .expect("a webhook request within 10 s")
                .expect("the receiver runs")
        }

        fn hook(&self, event_types: &[&str]) -> WebhookConfig {
            WebhookConfig {
                url: self.url.clone(),
                event_types: event_types.iter().map(|s| s.to_string()).collect(),
            }
        }
    }

    fn occupied(channel: &str) -> WebhookEvent {
        WebhookEvent::ChannelOccupied {
            channel: channel.into(),
        }
    }

    fn vacated(channel: &str) -> WebhookEvent {
        WebhookEvent::ChannelVacated {
            channel: channel.into(),
        }
    }

    fn member_added(channel: &str, user_id: &str) -> WebhookEvent {
        WebhookEvent::MemberAdded {
            channel: channel.into(),
            user_id: user_id.into(),
        }
    }

    fn signature(body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    #[test]
    fn events_are_encoded_as_pusher_lists_them() {
        let events = [
            occupied("c"),
            vacated("c"),
            member_added("presence-x", "42"),
            WebhookEvent::MemberRemoved {
                channel: "presence-x".into(),
                user_id: "42".into(),
            },
            WebhookEvent::ClientEvent {
                channel: "presence-x".into(),
                event: "client-hello".into(),
                data: Some(r#"{"a":1}"#.into()),
                socket_id: "1.2".into(),
                user_id: Some("42".into()),
            },
            WebhookEvent::ClientEvent {
                channel: "private-x".into(),
                event: "client-hi".into(),
                data: None,
                socket_id: "3.4".into(),
                user_id: None,
            },
        ];
        let body = String::from_utf8(encode_body(1_700_000_000_123, &events)).unwrap();
        assert_eq!(
            body,
            concat!(
                r#"{"time_ms":1700000000123,"events":["#,
                r#"{"name":"channel_occupied","channel":"c"},"#,
                r#"{"name":"channel_vacated","channel":"c"},"#,
                r#"{"name":"member_added","channel":"presence-x","user_id":"42"},"#,
                r#"{"name":"member_removed","channel":"presence-x","user_id":"42"},"#,
                r#"{"name":"client_event","channel":"presence-x","event":"client-hello","#,
                r#""data":"{\"a\":1}","socket_id":"1.2","user_id":"42"},"#,
                r#"{"name":"client_event","channel":"private-x","event":"client-hi","socket_id":"3.4"}"#,
                "]}"
            )
        );
        let names: Vec<&str> = events.iter().map(WebhookEvent::name).collect();
        assert_eq!(
            names,
            [
                "channel_occupied",
                "channel_vacated",
                "member_added",
                "member_removed",
                "client_event",
                "client_event"
            ]
        );
    }

    #[test]
    fn config_reads_and_validates() {
        let hook: WebhookConfig = toml::from_str(
            "url = \"https://example.com/hook\"\nevent_types = [\"member_added\", \"client_event\"]",
        )
        .unwrap();
        assert_eq!(hook.validate(), Ok(()));
        assert_eq!(hook.mask(), 1 << 2 | 1 << 4);
        assert_eq!(
            WebhookConfig {
                url: "http://h".into(),
                ..Default::default()
            }
            .mask(),
            ALL_EVENTS
        );
        assert!(toml::from_str::<WebhookConfig>("url = \"http://h\"\nfilter = 1").is_err());
        let bad_type = WebhookConfig {
            url: "http://h/x".into(),
            event_types: vec!["subscription_count".into()],
        };
        assert_eq!(
            bad_type.validate(),
            Err(WebhookConfigError::UnknownEventType(
                "subscription_count".into()
            ))
        );
        assert!(
            bad_type
                .validate()
                .unwrap_err()
                .to_string()
                .starts_with("event_types: \"subscription_count\" is not one of channel_occupied")
        );
        for url in [
            "",
            "example.com/hook",
            "ftp://example.com/",
            "unix:/tmp/sock",
        ] {
            let hook = WebhookConfig {
                url: url.into(),
                ..Default::default()
            };
            let error = hook.validate().unwrap_err();
            assert!(
                matches!(
                    error,
                    WebhookConfigError::NotHttp(_) | WebhookConfigError::NotAUrl { .. }
                ),
                "{url}: {error:?}"
            );
            assert!(error.to_string().starts_with("url:"), "{url}");
        }
    }

    #[tokio::test]
    async fn events_are_batched_into_one_signed_post() {
        let mut receiver = Receiver::start(Receiver::ok()).await;
        let shutdown = CancellationToken::new();
        let webhooks = Webhooks::start(&[receiver.hook(&[])], KEY, SECRET, shutdown.clone());
        assert!(webhooks.enabled());
        webhooks.send(occupied("presence-x"));
        webhooks.send(member_added("presence-x", "42"));
        webhooks.send(WebhookEvent::ClientEvent {
            channel: "presence-x".into(),
            event: "client-hello".into(),
            data: Some(r#"{"text":"hi"}"#.into()),
            socket_id: "123.456".into(),
            user_id: Some("42".into()),
        });

        let request = receiver.next().await;
        assert_eq!(request.method, Method::POST);
        assert_eq!(request.header("content-type"), "application/json");
        assert_eq!(request.header("x-pusher-key"), KEY);
        assert_eq!(
            request.header("x-pusher-signature"),
            signature(&request.body)
        );
        let body = request.json();
        let time_ms = body["time_ms"].as_i64().expect("time_ms is an integer");
        assert!(
            (now_ms() - time_ms).abs() < 5_000,
            "time_ms {time_ms} is not now"
        );
        assert_eq!(
            body["events"],
            json!([
                {"name": "channel_occupied", "channel": "presence-x"},
                {"name": "member_added", "channel": "presence-x", "user_id": "42"},
                {"name": "client_event", "channel": "presence-x", "event": "client-hello",
                 "data": "{\"text\":\"hi\"}", "socket_id": "123.456", "user_id": "42"},
            ])
        );
        assert_eq!(
            body.as_object().unwrap().len(),
            2,
            "only time_ms and events"
        );

        // Later events go in a later batch.
        webhooks.send(vacated("presence-x"));
        assert_eq!(
            receiver.next().await.events(),
            json!([{"name": "channel_vacated", "channel": "presence-x"}])
        );
        shutdown.cancel();
        webhooks.stopped().await;
    }

    #[tokio::test]
    async fn each_url_gets_the_event_types_it_lists() {
        let mut members = Receiver::start(Receiver::ok()).await;
        let mut channels = Receiver::start(Receiver::ok()).await;
        let mut everything = Receiver::start(Receiver::ok()).await;
        let shutdown = CancellationToken::new();
        let webhooks = Webhooks::start(
            &[
                members.hook(&["member_added", "member_removed"]),
                channels.hook(&["channel_occupied", "channel_vacated"]),
                everything.hook(&[]),
            ],
            KEY,
            SECRET,
            shutdown.clone(),
        );
        let client_event = WebhookEvent::ClientEvent {
            channel: "private-x".into(),
            event: "client-x".into(),
            data: Some("1".into()),
            socket_id: "1.1".into(),
            user_id: None,
        };
        webhooks.send(occupied("presence-x"));
        webhooks.send(member_added("presence-x", "7"));
        webhooks.send(client_event);
        webhooks.send(vacated("presence-x"));

        assert_eq!(
            members.next().await.events(),
            json!([{"name": "member_added", "channel": "presence-x", "user_id": "7"}])
        );
        assert_eq!(
            channels.next().await.events(),
            json!([
                {"name": "channel_occupied", "channel": "presence-x"},
                {"name": "channel_vacated", "channel": "presence-x"},
            ])
        );
        let all = everything.next().await.events();
        let names: Vec<&str> = all
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "channel_occupied",
                "member_added",
                "client_event",
                "channel_vacated"
            ]
        );
        shutdown.cancel();
        webhooks.stopped().await;
    }

    #[tokio::test]
    async fn a_refused_batch_is_retried_whole_and_in_order() {
        let mut receiver = Receiver::start(|n, _| match n {
            0 | 1 => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::OK,
        })
        .await;
        let shutdown = CancellationToken::new();
        let webhooks =
            Webhooks::start_with(&[receiver.hook(&[])], KEY, SECRET, shutdown.clone(), FAST);
        webhooks.send(occupied("a"));
        webhooks.send(occupied("b"));
        let first = receiver.next().await;
        // Queued while the first batch is failing: it waits behind it.
        webhooks.send(occupied("c"));
        let second = receiver.next().await;
        let third = receiver.next().await;
        let fourth = receiver.next().await;

        let batch = json!([
            {"name": "channel_occupied", "channel": "a"},
            {"name": "channel_occupied", "channel": "b"},
        ]);
        for attempt in [&first, &second, &third] {
            assert_eq!(attempt.events(), batch);
            assert_eq!(
                attempt.header("x-pusher-signature"),
                signature(&attempt.body)
            );
        }
        assert_eq!(
            fourth.events(),
            json!([{"name": "channel_occupied", "channel": "c"}])
        );
        shutdown.cancel();
        webhooks.stopped().await;
        assert!(
            receiver.requests.try_recv().is_err(),
            "nothing else was sent"
        );
    }

    #[tokio::test]
    async fn a_batch_failing_for_too_long_is_dropped_and_the_next_goes_out() {
        let mut receiver = Receiver::start(|_, body| {
            if String::from_utf8_lossy(body).contains("doomed") {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            }
        })
        .await;
        let shutdown = CancellationToken::new();
        let timing = Timing {
            retry_for: Duration::from_millis(20),
            ..FAST
        };
        let webhooks =
            Webhooks::start_with(&[receiver.hook(&[])], KEY, SECRET, shutdown.clone(), timing);
        webhooks.send(occupied("doomed"));
        assert_eq!(
            receiver.next().await.events(),
            json!([{"name": "channel_occupied", "channel": "doomed"}])
        );
        webhooks.send(occupied("fine"));
        let mut attempts = 1;
        let delivered = loop {
            let request = receiver.next().await;
            if request.events()[0]["channel"] == "doomed" {
                attempts += 1;
            } else {
                break request;
            }
        };
        assert!(attempts >= 2, "the failing batch was retried");
        assert_eq!(
            delivered.events(),
            json!([{"name": "channel_occupied", "channel": "fine"}])
        );
        shutdown.cancel();
        webhooks.stopped().await;
    }

    #[tokio::test]
    async fn a_full_queue_drops_new_events() {
        let mut receiver = Receiver::start(Receiver::ok()).await;
        let shutdown = CancellationToken::new();
        let timing = Timing { queue: 2, ..FAST };
        let webhooks =
            Webhooks::start_with(&[receiver.hook(&[])], KEY, SECRET, shutdown.clone(), timing);
        // The delivery task does not run between these calls (single-threaded runtime).
        for channel in ["a", "b", "c", "d", "e"] {
            webhooks.send(occupied(channel));
        }
        assert_eq!(
            receiver.next().await.events(),
            json!([
                {"name": "channel_occupied", "channel": "a"},
                {"name": "channel_occupied", "channel": "b"},
            ])
        );
        webhooks.send(occupied("f"));
        assert_eq!(
            receiver.next().await.events(),
            json!([{"name": "channel_occupied", "channel": "f"}])
        );
        shutdown.cancel();
        webhooks.stopped().await;
    }

    #[tokio::test]
    async fn shutdown_flushes_what_is_queued() {
        let mut receiver = Receiver::start(Receiver::ok()).await;
        let shutdown = CancellationToken::new();
        let webhooks = Webhooks::start(&[receiver.hook(&[])], KEY, SECRET, shutdown.clone());
        webhooks.send(occupied("a"));
        webhooks.send(vacated("a"));
        shutdown.cancel();
        webhooks.stopped().await;
        assert_eq!(
            receiver.next().await.events(),
            json!([
                {"name": "channel_occupied", "channel": "a"},
                {"name": "channel_vacated", "channel": "a"},
            ])
        );
        // After the tasks stopped, sending is harmless.
        webhooks.send(occupied("late"));
    }

    #[tokio::test]
    async fn shutdown_tries_a_batch_waiting_for_its_retry_once_more() {
        let mut receiver = Receiver::start(|n, _| {
            if n == 0 {
                StatusCode::BAD_GATEWAY
            } else {
                StatusCode::OK
            }
        })
        .await;
        let shutdown = CancellationToken::new();
        let timing = Timing {
            retry_first: Duration::from_secs(3600),
            retry_for: Duration::from_secs(7200),
            ..TIMING
        };
        let webhooks =
            Webhooks::start_with(&[receiver.hook(&[])], KEY, SECRET, shutdown.clone(), timing);
        webhooks.send(member_added("presence-x", "1"));
        let refused = receiver.next().await;
        webhooks.send(vacated("presence-x"));
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), webhooks.stopped())
            .await
            .expect("the tasks stop without waiting for the retry");
        // The refused batch goes first, the event queued behind it joins it in the last flush.
        assert_eq!(
            receiver.next().await.events(),
            json!([
                {"name": "member_added", "channel": "presence-x", "user_id": "1"},
                {"name": "channel_vacated", "channel": "presence-x"},
            ])
        );
        assert_eq!(refused.events()[0]["name"], "member_added");
        assert!(
            receiver.requests.try_recv().is_err(),
            "nothing else was sent"
        );
    }

    #[tokio::test]
    async fn without_webhooks_send_does_nothing() {
        let shutdown = CancellationToken::new();
        let webhooks = Webhooks::start(&[], KEY, SECRET, shutdown.clone());
        assert!(!webhooks.enabled());
        webhooks.send(occupied("a"));
        webhooks.clone().send(member_added("presence-a", "1"));
        webhooks.stopped().await;

        let default = Webhooks::default();
        assert!(!default.enabled());
        default.send(vacated("a"));

        // Invalid entries are skipped, leaving nothing to send to.
        let invalid = WebhookConfig {
            url: "not a url".into(),
            ..Default::default()
        };
        let skipped = Webhooks::start(&[invalid], KEY, SECRET, shutdown.clone());
        assert!(!skipped.enabled());
        skipped.send(occupied("a"));
        shutdown.cancel();
    }

    #[test]
    fn outside_a_runtime_webhooks_are_disabled_not_a_panic() {
        let hook = WebhookConfig {
            url: "http://127.0.0.1:9/hook".into(),
            ..Default::default()
        };
        let webhooks = Webhooks::start(&[hook], KEY, SECRET, CancellationToken::new());
        assert!(!webhooks.enabled());
        webhooks.send(occupied("a"));
    }
}
