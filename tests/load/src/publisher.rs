//! The publisher: sends up to M stamped messages, through the server's HTTP publish endpoint or through the
//! subscribed clients themselves, either at a fixed rate or as fast as the server delivers them (a window of
//! messages in flight). It records what each message should reach; it never reads deliveries itself.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};

use crate::measure::Tally;
use crate::pusher_api::PusherApp;
use crate::wire::{self, Protocol, Stamp};

/// How messages leave the tool.
#[derive(Debug)]
pub(crate) enum Route {
    /// `POST` to the server's publish endpoint.
    Http {
        /// The HTTP client (keeps connections alive).
        client: reqwest::Client,
        /// Which API, and its address and credentials.
        api: HttpApi,
        /// Requests in flight at most.
        concurrency: usize,
    },
    /// Subscribed clients publish to their first channel, taking turns.
    Clients {
        /// Per publishing connection: its first channel's index and a sender to its task.
        publishers: Vec<(usize, mpsc::Sender<String>)>,
    },
}

/// The HTTP API messages are published through.
#[derive(Debug)]
pub(crate) enum HttpApi {
    /// The server's own publish endpoint (Herald's `/api/publish`, the peers' `/publish`), in the dialect's
    /// request shape ([`wire::http_publish`]).
    Own {
        /// The publish URL.
        url: String,
        /// Sent as `X-API-Key` when set.
        api_key: Option<String>,
    },
    /// The Pusher HTTP API, each request signed (the same path for every Pusher-protocol server).
    Pusher(PusherApp),
}

impl HttpApi {
    /// The request that publishes `payload` to `channel`.
    fn request(
        &self,
        client: &reqwest::Client,
        protocol: Protocol,
        channel: &str,
        payload: &str,
    ) -> reqwest::RequestBuilder {
        match self {
            Self::Own { url, api_key } => {
                let (url, body) = wire::http_publish(protocol, url, channel, payload);
                let request = client.post(url).body(body);
                match api_key {
                    Some(key) => request.header("X-API-Key", key),
                    None => request,
                }
            }
            Self::Pusher(app) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                let trigger = app.trigger(channel, wire::PUSHER_EVENT, payload, now);
                client
                    .post(trigger.url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(trigger.body)
            }
        }
    }
}

/// How many, how big, how fast.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// The dialect.
    pub protocol: Protocol,
    /// Messages to publish at most.
    pub messages: u64,
    /// Stop publishing after this long even if fewer were sent.
    pub duration: Duration,
    /// Payload size in bytes.
    pub size: usize,
    /// Messages per second; `None` publishes as fast as deliveries keep up (see `window`).
    pub rate: Option<f64>,
    /// At maximum rate: how many messages' worth of deliveries may be outstanding.
    pub window: u64,
    /// Channel names, by index.
    pub channels: Arc<Vec<String>>,
}

/// What the publisher did.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Published {
    /// Messages handed to the network.
    pub messages: u64,
    /// Publish requests that failed (HTTP error or status) or could not be handed to a client.
    pub failed: u64,
    /// Seconds from the first send to the last.
    pub seconds: f64,
}

/// After this long without a single delivery the maximum-rate window stops waiting (deliveries were lost,
/// e.g. a connection was dropped) and the loss shows in the report.
const STALL: Duration = Duration::from_secs(2);

/// Publishes according to `plan`.
pub(crate) async fn publish(plan: Plan, route: Route, tally: Arc<Tally>) -> Published {
    let started = Instant::now();
    let mut published = Published::default();
    let http_slots = match &route {
        Route::Http { concurrency, .. } => Arc::new(Semaphore::new((*concurrency).max(1))),
        Route::Clients { .. } => Arc::new(Semaphore::new(1)),
    };
    let failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut written_off = 0u64;
    for seq in 0..plan.messages {
        if started.elapsed() >= plan.duration {
            break;
        }
        let (channel, client) = match &route {
            Route::Http { .. } => ((seq % plan.channels.len() as u64) as usize, None),
            Route::Clients { publishers } => {
                if publishers.is_empty() {
                    break;
                }
                let (channel, sender) = &publishers[(seq % publishers.len() as u64) as usize];
                (*channel, Some(sender))
            }
        };
        let receivers = tally.subscribers(channel);
        match plan.rate {
            Some(rate) => pace(started, seq, rate).await,
            None => {
                wait_for_window(&tally, u64::from(receivers) * plan.window, &mut written_off).await
            }
        }
        let channel_name = &plan.channels[channel];
        match (&route, client) {
            (Route::Http { client, api, .. }, _) => {
                let Ok(permit) = http_slots.clone().acquire_owned().await else {
                    break;
                };
                let stamp = Stamp {
                    sent_ns: tally.now_ns(),
                    seq,
                };
                let request = api.request(
                    client,
                    plan.protocol,
                    channel_name,
                    &wire::payload(stamp, plan.size),
                );
                tally.expect(seq, receivers);
                let failures = failures.clone();
                let tally = tally.clone();
                tokio::spawn(async move {
                    let outcome = request.send().await;
                    drop(permit);
                    let failure = match outcome {
                        Ok(response) if response.status().is_success() => None,
                        Ok(response) => Some(format!("publish: HTTP {}", response.status())),
                        Err(e) => Some(format!("publish: {e}")),
                    };
                    if let Some(failure) = failure {
                        failures.fetch_add(1, Ordering::Relaxed);
                        tally.record_error(failure);
                    }
                });
            }
            (Route::Clients { .. }, Some(sender)) => {
                let stamp = Stamp {
                    sent_ns: tally.now_ns(),
                    seq,
                };
                // Command ids above any handshake id (subscribes use 2..=channels+1).
                let command_id = 1_000_000u32.wrapping_add(seq as u32);
                let frame = wire::client_publish(
                    plan.protocol,
                    channel_name,
                    &wire::payload(stamp, plan.size),
                    command_id,
                );
                tally.expect(seq, receivers);
                if sender.send(frame).await.is_err() {
                    failures.fetch_add(1, Ordering::Relaxed);
                    tally.record_error("publish: the publishing connection is gone");
                }
            }
            (Route::Clients { .. }, None) => break,
        }
        published.messages += 1;
    }
    if let Route::Http { concurrency, .. } = &route {
        // Wait for the requests in flight.
        let _ = http_slots.acquire_many((*concurrency).max(1) as u32).await;
    }
    published.seconds = started.elapsed().as_secs_f64();
    published.failed = failures.load(Ordering::Relaxed);
    published
}

/// Waits until message `seq` is due at `rate` messages per second from `started`.
async fn pace(started: Instant, seq: u64, rate: f64) {
    let due = started + Duration::from_secs_f64(seq as f64 / rate);
    if due > Instant::now() {
        tokio::time::sleep_until(due.into()).await;
    }
}

/// Waits while more than `limit` deliveries are outstanding, or until deliveries stall; deliveries still
/// outstanding at a stall are counted in `written_off` (they show as lost in the report) so the window
/// keeps working for the messages after it.
async fn wait_for_window(tally: &Tally, limit: u64, written_off: &mut u64) {
    let mut last_delivered = tally.delivered.load(Ordering::Relaxed);
    let mut last_progress = Instant::now();
    loop {
        let delivered = tally.delivered.load(Ordering::Relaxed);
        let outstanding = tally
            .expected
            .load(Ordering::Relaxed)
            .saturating_sub(delivered)
            .saturating_sub(*written_off);
        if outstanding <= limit {
            return;
        }
        if delivered != last_delivered {
            last_delivered = delivered;
            last_progress = Instant::now();
        } else if last_progress.elapsed() >= STALL {
            tally.record_error("publisher: deliveries stalled, window released");
            *written_off += outstanding;
            return;
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}
