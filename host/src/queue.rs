//! Queue ingestion: applications append entries to Redis Streams and Herald publishes them (the
//! app → queue → pusher pattern), so a web request never waits for the push.
//!
//! One consumer task per configured stream reads through a consumer group shared by every node, publishes
//! each entry through the same [`Node::publish`] as the server API (plugins' publish chain included) and
//! acknowledges it only after the publish succeeded. Delivery is therefore at least once; each publish
//! carries an idempotency key (the entry's own, or `<stream>:<entry id>`), so a redelivered entry is not
//! published twice within `engine.idempotency_window`. Entries a crashed consumer held are claimed by the
//! others after `claim_idle`. Entries that can never succeed go to the dead-letter stream with the reason,
//! then are acknowledged. A temporary failure leaves the entry pending and retries it with backoff, holding
//! back the entries behind it so a stream is published in order: for as long as it takes when the engine
//! is unreachable, but at most `max_attempts` times when the entry fails by itself (a plugin that traps on
//! its payload, say), after which it is dead-lettered so one poisoned entry cannot stop its stream.
//!
//! The consumer never acknowledges an entry it has not published or dead-lettered.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis::{Cmd, RedisError, Value};
use serde_json::value::RawValue;
use tokio::time::Instant;

use crate::config::QueueConfig;
use crate::engine::redis::connection::{Connection as Link, Target};
use crate::engine::redis::{RedisConfigError, without_password};
use crate::errors::Refusal;
use crate::node::{Node, PublishError, PublishRequest, Source};

/// Connects to the queue's Redis, creates the consumer group on every stream, and starts one consumer task
/// per stream (tracked with the node's tasks, stopped by its `shutdown`). Fails, like the engine, when
/// Redis cannot be reached at start.
pub async fn start(node: Arc<Node>) -> Result<(), StartError> {
    let config = &node.config.queue;
    let consumer = if config.consumer.is_empty() {
        default_consumer_name()
    } else {
        config.consumer.clone()
    };
    let target = target(&node.config)?;
    let mut consumers = Vec::with_capacity(config.streams.len());
    for stream in &config.streams {
        // A command connection per consumer, reconnecting by itself after a failed command.
        let mut link = Link::open(&target, None::<fn(redis::PushInfo) -> Result<(), ()>>)
            .await
            .map_err(|error| StartError::Connect {
                addresses: target
                    .addresses
                    .iter()
                    .map(|a| without_password(a))
                    .collect(),
                error,
            })?;
        create_group(&mut link, stream, &config.group)
            .await
            .map_err(|error| StartError::Group {
                stream: stream.clone(),
                group: config.group.clone(),
                error,
            })?;
        consumers.push(Consumer {
            node: node.clone(),
            link,
            stream: stream.clone(),
            name: consumer.clone(),
            failing: None,
        });
    }
    for consumer in consumers {
        node.sessions.spawn(consumer.run());
    }
    Ok(())
}

/// Why the queue consumers did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The TLS certificates cannot be read.
    #[error(transparent)]
    Tls(#[from] RedisConfigError),
    /// The queue's Redis cannot be reached.
    #[error("cannot connect to Redis at {}: {error}", .addresses.join(", "))]
    Connect {
        /// The addresses tried, passwords replaced.
        addresses: Vec<String>,
        /// What the Redis client says.
        error: RedisError,
    },
    /// The consumer group cannot be created on a stream (e.g. the key holds another type, or the Redis user
    /// may not run `XGROUP`).
    #[error("cannot create consumer group {group:?} on stream {stream:?}: {error}")]
    Group {
        /// The stream key.
        stream: String,
        /// The group (`queue.group`).
        group: String,
        /// What Redis says.
        error: RedisError,
    },
}

/// `<hostname>-<pid>`: unique among running processes and recognisable in `XINFO CONSUMERS`.
fn default_consumer_name() -> String {
    format!("{}-{}", crate::node::hostname(), std::process::id())
}

/// Where the queue's Redis is: `queue.addresses` and `queue.cluster`, or else the engine's. A blocking read
/// legitimately takes `block` before answering, so the command timeout is extended by it.
fn target(config: &crate::config::Config) -> Result<Target, RedisConfigError> {
    let queue = &config.queue;
    let redis = &config.engine.redis;
    if queue.addresses.is_empty() {
        redis.target(&redis.addresses, redis.cluster, true, queue.block)
    } else {
        redis.target(&queue.addresses, queue.cluster, false, queue.block)
    }
}

/// Creates the group reading the stream from its beginning (entries added before Herald first ran are
/// published too), and the stream itself if needed; an existing group is kept as it is.
async fn create_group(link: &mut Link, stream: &str, group: &str) -> Result<(), RedisError> {
    let mut cmd = redis::cmd("XGROUP");
    cmd.arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM");
    match cmd.query_async::<Value>(link).await {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        Err(e) => Err(e),
    }
}

/// One stream entry as read: its id and fields, `None` when it was deleted (trimmed) while pending.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    id: String,
    fields: Option<Vec<(String, Bytes)>>,
}

/// Why the consumer stopped making progress; it backs off and resumes from its own pending entries.
#[derive(Debug)]
enum Stall {
    /// The queue's Redis failed a command.
    Redis(RedisError),
    /// A publish failed temporarily (e.g. the engine is unreachable); the entry stays pending.
    Publish(String),
}

/// Where the consumer is in its round: its own pending entries first (after a start or a stall), then a
/// claim of others' idle entries when due, then new entries.
struct Cursor {
    /// Reading this consumer's own pending entries after this id.
    own_pending: Option<String>,
    /// Where the current claim sweep continues.
    claim: String,
    /// When the next claim sweep starts.
    next_claim: Instant,
    /// The group must be (re)created before reading: after any Redis failure, as Redis may have lost it.
    recreate_group: bool,
}

/// The consumer of one stream.
struct Consumer {
    node: Arc<Node>,
    link: Link,
    stream: String,
    name: String,
    /// The entry at the head of the stream that keeps failing by itself, and its attempts so far.
    failing: Option<(String, u32)>,
}

impl Consumer {
    async fn run(mut self) {
        let config = self.node.config.queue.clone();
        tracing::info!(
            stream = %self.stream,
            group = %config.group,
            consumer = %self.name,
            "queue consumer started"
        );
        let mut cursor = Cursor {
            own_pending: Some("0".into()),
            claim: "0-0".into(),
            next_claim: Instant::now(),
            recreate_group: false,
        };
        let mut backoff = Backoff::new(config.max_backoff);
        let mut stalled: Option<String> = None;
        while !self.node.shutdown.is_cancelled() {
            match self.step(&config, &mut cursor).await {
                Ok(()) => {
                    if let Some(why) = stalled.take() {
                        tracing::info!(stream = %self.stream, after = %why, "queue consumer resumed");
                    }
                    backoff.reset();
                }
                Err(stall) => {
                    // One line per outage, not per retry.
                    let why = match &stall {
                        Stall::Redis(e) if e.is_io_error() || e.is_timeout() => {
                            format!("Redis unreachable: {e}")
                        }
                        Stall::Redis(e) => format!("Redis command failed: {e}"),
                        Stall::Publish(e) => format!("publish failing temporarily: {e}"),
                    };
                    if stalled.is_none() {
                        tracing::warn!(stream = %self.stream, "queue consumer stalled, retrying with backoff: {why}");
                    }
                    stalled = Some(why);
                    cursor.own_pending = Some("0".into());
                    cursor.recreate_group |= matches!(stall, Stall::Redis(_));
                    tokio::select! {
                        () = tokio::time::sleep(backoff.next()) => {}
                        () = self.node.shutdown.cancelled() => {}
                    }
                }
            }
        }
        tracing::info!(stream = %self.stream, "queue consumer stopped");
    }

    /// One round trip's worth of work.
    async fn step(&mut self, config: &QueueConfig, cursor: &mut Cursor) -> Result<(), Stall> {
        if cursor.recreate_group {
            create_group(&mut self.link, &self.stream, &config.group)
                .await
                .map_err(Stall::Redis)?;
            cursor.recreate_group = false;
        }
        if let Some(after) = cursor.own_pending.clone() {
            let mut cmd = redis::cmd("XREADGROUP");
            cmd.arg("GROUP").arg(&config.group).arg(&self.name);
            cmd.arg("COUNT").arg(config.batch);
            cmd.arg("STREAMS").arg(&self.stream).arg(&after);
            let entries = self.read(&cmd).await?;
            cursor.own_pending = entries.last().map(|e| e.id.clone());
            return self.process(config, entries).await;
        }
        if Instant::now() >= cursor.next_claim {
            let mut cmd = redis::cmd("XAUTOCLAIM");
            cmd.arg(&self.stream).arg(&config.group).arg(&self.name);
            cmd.arg(millis(config.claim_idle)).arg(&cursor.claim);
            cmd.arg("COUNT").arg(config.batch);
            let reply: Value = cmd
                .query_async(&mut self.link)
                .await
                .map_err(Stall::Redis)?;
            let (next, entries) = parse_autoclaim(reply).map_err(Stall::Redis)?;
            if !entries.is_empty() {
                tracing::info!(
                    stream = %self.stream,
                    entries = entries.len(),
                    idle = ?config.claim_idle,
                    "queue: took over entries another consumer left unacknowledged"
                );
            }
            if next == "0-0" {
                cursor.claim = next;
                // Half the idle time: an abandoned entry waits at most 1.5 × claim_idle.
                cursor.next_claim = Instant::now() + config.claim_idle / 2;
                self.forget_gone_consumers(config).await?;
                self.measure_lag(config).await?;
            } else {
                cursor.claim = next;
            }
            return self.process(config, entries).await;
        }
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP").arg(&config.group).arg(&self.name);
        cmd.arg("COUNT").arg(config.batch);
        cmd.arg("BLOCK").arg(millis(config.block));
        cmd.arg("STREAMS").arg(&self.stream).arg(">");
        let entries = self.read(&cmd).await?;
        self.process(config, entries).await
    }

    /// Removes from the group the consumers that hold nothing and have not read for
    /// [`GONE_AFTER_CLAIM_IDLES`] × `claim_idle`: nodes that stopped or crashed and whose entries were taken
    /// over. Every restart adds a consumer name (`<host>-<pid>`), so without this the group grows for ever.
    /// A live consumer reads every `block`, so it is never that idle (and would come back by reading).
    async fn forget_gone_consumers(&mut self, config: &QueueConfig) -> Result<(), Stall> {
        let reply: Value = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&self.stream)
            .arg(&config.group)
            .query_async(&mut self.link)
            .await
            .map_err(Stall::Redis)?;
        let gone_after = millis(config.claim_idle.saturating_mul(GONE_AFTER_CLAIM_IDLES));
        for consumer in parse_consumers(reply).map_err(Stall::Redis)? {
            if consumer.name == self.name || consumer.pending > 0 || consumer.idle_ms < gone_after {
                continue;
            }
            let removed: i64 = redis::Script::new(DELETE_CONSUMER_HOLDING_NOTHING)
                .key(&self.stream)
                .arg(&config.group)
                .arg(&consumer.name)
                .invoke_async(&mut self.link)
                .await
                .map_err(Stall::Redis)?;
            if removed == 1 {
                tracing::info!(
                    stream = %self.stream,
                    consumer = %consumer.name,
                    idle = ?Duration::from_millis(consumer.idle_ms),
                    "queue: removed a consumer that has been gone (nothing pending)"
                );
            }
        }
        Ok(())
    }

    /// Reports how far the group is behind on the stream (metrics' `herald_queue_lag`).
    async fn measure_lag(&mut self, config: &QueueConfig) -> Result<(), Stall> {
        let reply: Value = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&self.stream)
            .query_async(&mut self.link)
            .await
            .map_err(Stall::Redis)?;
        if let Some(lag) = parse_group_lag(reply, &config.group) {
            self.node.metrics.queue_lag(&self.stream, lag);
        }
        Ok(())
    }

    async fn read(&mut self, cmd: &Cmd) -> Result<Vec<Entry>, Stall> {
        let reply: Value = cmd
            .query_async(&mut self.link)
            .await
            .map_err(Stall::Redis)?;
        parse_read(reply).map_err(Stall::Redis)
    }

    /// Publishes the entries in order, acknowledging each as soon as it is published or dead-lettered;
    /// stops at the first temporary failure, leaving it and the rest pending.
    async fn process(&mut self, config: &QueueConfig, entries: Vec<Entry>) -> Result<(), Stall> {
        for entry in entries {
            let Some(fields) = &entry.fields else {
                tracing::warn!(stream = %self.stream, id = %entry.id, "queue entry is no longer in the stream (trimmed or deleted); nothing to publish");
                self.ack(config, &entry.id).await?;
                self.node.metrics.queue_entry(&self.stream, "gone");
                continue;
            };
            let outcome = match parse_entry(&self.stream, &entry.id, fields) {
                Ok(request) => match self.node.publish(request).await {
                    Ok(_) => Ok(()),
                    Err(PublishError::EngineUnavailable(error)) => {
                        self.node.metrics.queue_retry(&self.stream);
                        return Err(Stall::Publish(error.to_string()));
                    }
                    Err(PublishError::Refused(Refusal::Error(error))) if error.temporary => {
                        let attempts = self.count_attempt(&entry.id);
                        if config.max_attempts == 0 || attempts < config.max_attempts {
                            self.node.metrics.queue_retry(&self.stream);
                            return Err(Stall::Publish(format!(
                                "{error} (entry {}, attempt {attempts})",
                                entry.id
                            )));
                        }
                        Err(format!("failed {attempts} times, last: {error}"))
                    }
                    Err(PublishError::Refused(refusal)) => {
                        Err(format!("refused: {}", refusal.into_error()))
                    }
                },
                Err(reason) => Err(reason),
            };
            self.failing = None;
            let result = if let Err(reason) = &outcome {
                self.dead_letter(config, &entry.id, fields, reason).await?;
                "dead_lettered"
            } else {
                "published"
            };
            self.ack(config, &entry.id).await?;
            self.node.metrics.queue_entry(&self.stream, result);
        }
        Ok(())
    }

    /// Counts a failed attempt at `id`, the entry that now heads the stream; returns the attempts so far.
    fn count_attempt(&mut self, id: &str) -> u32 {
        match &mut self.failing {
            Some((failing, attempts)) if failing == id => {
                *attempts += 1;
                *attempts
            }
            _ => {
                self.failing = Some((id.to_owned(), 1));
                1
            }
        }
    }

    /// Acknowledges (and deletes, if configured) in one round trip; an entry deleted without being
    /// acknowledged would stay in the pending list for ever, hence the order.
    async fn ack(&mut self, config: &QueueConfig, id: &str) -> Result<(), Stall> {
        let mut pipe = redis::pipe();
        pipe.cmd("XACK")
            .arg(&self.stream)
            .arg(&config.group)
            .arg(id);
        if config.delete_acknowledged {
            pipe.cmd("XDEL").arg(&self.stream).arg(id);
        }
        pipe.exec_async(&mut self.link).await.map_err(Stall::Redis)
    }

    /// Appends the entry, its origin and the reason to the dead-letter stream. The original fields are
    /// kept as they were, so a fixed entry can be added back to the queue as is.
    async fn dead_letter(
        &mut self,
        config: &QueueConfig,
        id: &str,
        fields: &[(String, Bytes)],
        reason: &str,
    ) -> Result<(), Stall> {
        tracing::warn!(stream = %self.stream, id, reason, dead_letter_stream = %config.dead_letter_stream, "queue entry dead-lettered");
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&config.dead_letter_stream);
        if config.dead_letter_max_len > 0 {
            cmd.arg("MAXLEN").arg("~").arg(config.dead_letter_max_len);
        }
        cmd.arg("*");
        cmd.arg("reason").arg(reason);
        cmd.arg("source_stream").arg(&self.stream);
        cmd.arg("source_id").arg(id);
        for (name, value) in fields {
            if !DEAD_LETTER_FIELDS.contains(&name.as_str()) {
                cmd.arg(name).arg(value.as_ref());
            }
        }
        cmd.query_async::<Value>(&mut self.link)
            .await
            .map_err(Stall::Redis)?;
        Ok(())
    }
}

/// Deletes a consumer from the group only if it holds no entry, in one step: deleting a consumer drops its
/// pending entries, so one that came back and read between the check and the deletion must be kept.
const DELETE_CONSUMER_HOLDING_NOTHING: &str = r"
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
";

/// A consumer that has neither read nor held an entry for this many `claim_idle`s is removed from the group.
const GONE_AFTER_CLAIM_IDLES: u32 = 10;

/// One consumer of the group, from `XINFO CONSUMERS`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ConsumerInfo {
    name: String,
    pending: u64,
    idle_ms: u64,
}

/// An `XINFO CONSUMERS` reply: one flat key/value array (RESP2) or map (RESP3) per consumer.
/// An `XINFO` record's fields: a map in RESP3, a flat list of names and values in RESP2.
fn record_fields(record: Value) -> Option<Vec<(Value, Value)>> {
    match record {
        Value::Map(pairs) => Some(pairs),
        Value::Array(flat) => {
            let mut flat = flat.into_iter();
            Some(std::iter::from_fn(|| Some((flat.next()?, flat.next()?))).collect())
        }
        _ => None,
    }
}

/// The value of the field `name` of a record, if it is a non-negative integer.
fn record_number(pairs: &[(Value, Value)], name: &str) -> Option<u64> {
    match record_field(pairs, name) {
        Some(Value::Int(n)) => u64::try_from(*n).ok(),
        _ => None,
    }
}

fn record_field<'a>(pairs: &'a [(Value, Value)], name: &str) -> Option<&'a Value> {
    pairs
        .iter()
        .find(|(key, _)| text(key).as_deref() == Some(name))
        .map(|(_, value)| value)
}

/// The `lag` of `group` in an `XINFO GROUPS` reply: entries of the stream not yet delivered to the group.
/// `None` when Redis does not know it (before 7.0, or after entries were deleted in the middle).
fn parse_group_lag(reply: Value, group: &str) -> Option<u64> {
    let Value::Array(groups) = reply else {
        return None;
    };
    groups
        .into_iter()
        .filter_map(record_fields)
        .find(|pairs| record_field(pairs, "name").and_then(text).as_deref() == Some(group))
        .and_then(|pairs| record_number(&pairs, "lag"))
}

fn parse_consumers(reply: Value) -> Result<Vec<ConsumerInfo>, RedisError> {
    let Value::Array(consumers) = reply else {
        return Err(malformed("XINFO CONSUMERS"));
    };
    consumers
        .into_iter()
        .map(|consumer| {
            let pairs =
                record_fields(consumer).ok_or_else(|| malformed("XINFO CONSUMERS entry"))?;
            let field = |name: &str| record_field(&pairs, name);
            let number = |name: &str| record_number(&pairs, name);
            Ok(ConsumerInfo {
                name: field("name")
                    .and_then(text)
                    .ok_or_else(|| malformed("XINFO CONSUMERS name"))?,
                pending: number("pending").ok_or_else(|| malformed("XINFO CONSUMERS pending"))?,
                idle_ms: number("idle").ok_or_else(|| malformed("XINFO CONSUMERS idle"))?,
            })
        })
        .collect()
}

/// Fields the dead-letter stream adds; an entry's own fields of these names are not copied.
const DEAD_LETTER_FIELDS: [&str; 3] = ["reason", "source_stream", "source_id"];

/// Turns an entry into a publish request, or says why it can never be published.
fn parse_entry(
    stream: &str,
    id: &str,
    fields: &[(String, Bytes)],
) -> Result<PublishRequest, String> {
    let field = |name: &str| {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, value)| value)
    };
    let text = |name: &str| -> Result<Option<&str>, String> {
        field(name)
            .map(|value| std::str::from_utf8(value).map_err(|_| format!("{name} is not UTF-8")))
            .transpose()
    };
    let channel = text("channel")?
        .filter(|c| !c.is_empty())
        .ok_or("missing field channel")?;
    let data = text("data")?.ok_or("missing field data")?;
    let raw: &RawValue =
        serde_json::from_str(data).map_err(|e| format!("data is not JSON: {e}"))?;
    if raw.get().trim() == "null" {
        return Err("data is null".into());
    }
    let tags = match text("tags")? {
        None | Some("") => BTreeMap::new(),
        Some(tags) => serde_json::from_str::<BTreeMap<String, String>>(tags)
            .map_err(|e| format!("tags is not a JSON object of strings: {e}"))?,
    };
    let skip_history = match text("skip_history")? {
        None | Some("" | "0" | "false") => false,
        Some("1" | "true") => true,
        Some(other) => return Err(format!("skip_history is {other:?}, not true or false")),
    };
    let idempotency_key = match text("idempotency_key")? {
        Some(key) if !key.is_empty() => key.to_string(),
        // Entry ids are unique within a stream, so a redelivery of this entry carries the same key.
        _ => format!("{stream}:{id}"),
    };
    Ok(PublishRequest {
        channel: channel.to_string(),
        data: crate::protocol::compact_json(raw.get().trim()),
        info: None,
        tags,
        skip_history,
        source: Source::Queue,
        idempotency_key: Some(idempotency_key),
    })
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn malformed(what: &str) -> RedisError {
    RedisError::from((
        redis::ErrorKind::Parse,
        "unexpected reply from Redis",
        what.to_string(),
    ))
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

/// An `XREADGROUP` reply for one stream (RESP2 array or RESP3 map); nil when nothing arrived in time.
fn parse_read(reply: Value) -> Result<Vec<Entry>, RedisError> {
    let entries = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(streams) => streams.into_iter().next().map(|(_, entries)| entries),
        Value::Array(streams) => match streams.into_iter().next() {
            Some(Value::Array(pair)) => pair.into_iter().nth(1),
            None => None,
            Some(_) => return Err(malformed("XREADGROUP")),
        },
        _ => return Err(malformed("XREADGROUP")),
    };
    match entries {
        Some(entries) => parse_entries(entries),
        None => Ok(Vec::new()),
    }
}

/// An `XAUTOCLAIM` reply: where the sweep continues, and the claimed entries (ids of entries deleted
/// meanwhile, the optional third element, are already dropped from the pending list by Redis).
fn parse_autoclaim(reply: Value) -> Result<(String, Vec<Entry>), RedisError> {
    let Value::Array(parts) = reply else {
        return Err(malformed("XAUTOCLAIM"));
    };
    let mut parts = parts.into_iter();
    let next = parts
        .next()
        .as_ref()
        .and_then(text)
        .ok_or_else(|| malformed("XAUTOCLAIM"))?;
    let entries = parse_entries(parts.next().unwrap_or(Value::Nil))?;
    // Redis 6.2 answers nil for claimed entries deleted meanwhile; they have nothing to publish.
    Ok((
        next,
        entries.into_iter().filter(|e| !e.id.is_empty()).collect(),
    ))
}

fn parse_entries(entries: Value) -> Result<Vec<Entry>, RedisError> {
    let entries = match entries {
        Value::Array(entries) => entries,
        Value::Nil => return Ok(Vec::new()),
        _ => return Err(malformed("stream entries")),
    };
    entries
        .into_iter()
        .map(|entry| {
            let mut parts = match entry {
                Value::Array(parts) => parts.into_iter(),
                Value::Nil => {
                    return Ok(Entry {
                        id: String::new(),
                        fields: None,
                    });
                }
                _ => return Err(malformed("stream entry")),
            };
            let id = parts
                .next()
                .as_ref()
                .and_then(text)
                .ok_or_else(|| malformed("stream entry id"))?;
            let fields = match parts.next() {
                None | Some(Value::Nil) => None,
                Some(Value::Array(flat)) => Some(
                    flat.chunks(2)
                        .map(|pair| match pair {
                            [name, value] => Ok((
                                text(name).ok_or_else(|| malformed("field name"))?,
                                bytes(value).ok_or_else(|| malformed("field value"))?,
                            )),
                            _ => Err(malformed("stream entry fields")),
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                ),
                Some(Value::Map(pairs)) => Some(
                    pairs
                        .iter()
                        .map(|(name, value)| {
                            Ok((
                                text(name).ok_or_else(|| malformed("field name"))?,
                                bytes(value).ok_or_else(|| malformed("field value"))?,
                            ))
                        })
                        .collect::<Result<Vec<_>, RedisError>>()?,
                ),
                Some(_) => return Err(malformed("stream entry fields")),
            };
            Ok(Entry { id, fields })
        })
        .collect()
}

fn bytes(value: &Value) -> Option<Bytes> {
    match value {
        Value::BulkString(bytes) => Some(Bytes::copy_from_slice(bytes)),
        other => text(other).map(Bytes::from),
    }
}

/// Exponential backoff with jitter, so nodes retrying against a recovering Redis do not move in step.
struct Backoff {
    current: Duration,
    max: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(50);

    fn new(max: Duration) -> Self {
        Self {
            current: Self::FIRST.min(max),
            max,
        }
    }

    fn next(&mut self) -> Duration {
        let wait = self.current.mul_f64(rand::random_range(0.5..=1.0));
        self.current = (self.current * 2).min(self.max);
        wait
    }

    fn reset(&mut self) {
        self.current = Self::FIRST.min(self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Vec<(String, Bytes)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), Bytes::copy_from_slice(v.as_bytes())))
            .collect()
    }

    #[test]
    fn an_entry_becomes_a_queue_publish_keyed_by_its_id_unless_it_has_a_key() {
        let request = parse_entry(
            "q",
            "1-0",
            &fields(&[
                ("channel", "news"),
                ("data", "{\"a\":\n 1}"),
                ("tags", "{\"k\":\"v\"}"),
                ("trace", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(request.channel, "news");
        assert_eq!(&request.data[..], b"{\"a\": 1}");
        assert_eq!(request.tags["k"], "v");
        assert_eq!(request.source, Source::Queue);
        assert_eq!(request.idempotency_key.as_deref(), Some("q:1-0"));
        assert!(!request.skip_history);
        let keyed = parse_entry(
            "q",
            "1-0",
            &fields(&[
                ("channel", "news"),
                ("data", "1"),
                ("idempotency_key", "order-7"),
                ("skip_history", "true"),
            ]),
        )
        .unwrap();
        assert_eq!(keyed.idempotency_key.as_deref(), Some("order-7"));
        assert!(keyed.skip_history);
    }

    #[test]
    fn entries_that_can_never_be_published_say_why() {
        let reason = |pairs: &[(&str, &str)]| parse_entry("q", "1-0", &fields(pairs)).unwrap_err();
        assert_eq!(reason(&[("data", "1")]), "missing field channel");
        assert_eq!(reason(&[("channel", "a")]), "missing field data");
        assert!(reason(&[("channel", "a"), ("data", "{oops")]).starts_with("data is not JSON"));
        assert_eq!(
            reason(&[("channel", "a"), ("data", "null")]),
            "data is null"
        );
        assert!(
            reason(&[("channel", "a"), ("data", "1"), ("tags", "[1]")])
                .starts_with("tags is not a JSON object of strings")
        );
        assert!(
            reason(&[("channel", "a"), ("data", "1"), ("skip_history", "maybe")])
                .contains("skip_history")
        );
        let not_utf8 = vec![
            ("channel".to_string(), Bytes::from_static(b"a")),
            ("data".to_string(), Bytes::from_static(b"\xff")),
        ];
        assert_eq!(
            parse_entry("q", "1-0", &not_utf8).unwrap_err(),
            "data is not UTF-8"
        );
    }

    #[test]
    fn consumer_lists_parse_in_both_protocols() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let resp2 = Value::Array(vec![Value::Array(vec![
            bulk("name"),
            bulk("node-1"),
            bulk("pending"),
            Value::Int(2),
            bulk("idle"),
            Value::Int(1500),
            bulk("inactive"),
            Value::Int(-1),
        ])]);
        let resp3 = Value::Array(vec![Value::Map(vec![
            (bulk("name"), bulk("node-1")),
            (bulk("pending"), Value::Int(2)),
            (bulk("idle"), Value::Int(1500)),
        ])]);
        let expected = vec![ConsumerInfo {
            name: "node-1".into(),
            pending: 2,
            idle_ms: 1500,
        }];
        assert_eq!(parse_consumers(resp2).unwrap(), expected);
        assert_eq!(parse_consumers(resp3).unwrap(), expected);
        assert!(parse_consumers(Value::Array(vec![Value::Array(vec![bulk("name")])])).is_err());
        assert!(parse_consumers(Value::Nil).is_err());
    }

    #[test]
    fn read_replies_parse_in_both_protocols_and_keep_deleted_entries_as_empty() {
        let entry =
            |id: &str, fields: Value| Value::Array(vec![Value::BulkString(id.into()), fields]);
        let flat = Value::Array(vec![
            Value::BulkString(b"channel".to_vec()),
            Value::BulkString(b"news".to_vec()),
        ]);
        let entries = Value::Array(vec![entry("1-0", flat), entry("2-0", Value::Nil)]);
        let expected = vec![
            Entry {
                id: "1-0".into(),
                fields: Some(vec![("channel".into(), Bytes::from_static(b"news"))]),
            },
            Entry {
                id: "2-0".into(),
                fields: None,
            },
        ];
        let resp2 = Value::Array(vec![Value::Array(vec![
            Value::BulkString(b"q".to_vec()),
            entries.clone(),
        ])]);
        assert_eq!(parse_read(resp2).unwrap(), expected);
        let resp3 = Value::Map(vec![(Value::BulkString(b"q".to_vec()), entries.clone())]);
        assert_eq!(parse_read(resp3).unwrap(), expected);
        assert!(parse_read(Value::Nil).unwrap().is_empty());
        let claim = Value::Array(vec![
            Value::BulkString(b"0-0".to_vec()),
            entries,
            Value::Array(vec![]),
        ]);
        let (next, claimed) = parse_autoclaim(claim).unwrap();
        assert_eq!(next, "0-0");
        assert_eq!(claimed, expected);
    }

    #[tokio::test]
    async fn a_queue_redis_that_cannot_be_reached_fails_the_start_naming_it_without_password() {
        let port = crate::testing::free_port();
        let mut config = crate::config::Config::default();
        config.queue.enabled = true;
        config.queue.addresses = vec![format!("redis://app:s3cret-pw@127.0.0.1:{port}")];
        config.engine.redis.connect_timeout = Duration::from_millis(500);
        let node = Node::new(config).unwrap();
        let error = start(node).await.unwrap_err();
        assert!(matches!(error, StartError::Connect { .. }), "{error:?}");
        let message = error.to_string();
        assert!(
            message.starts_with(&format!(
                "cannot connect to Redis at redis://app:redacted@127.0.0.1:{port}: "
            )),
            "{message}"
        );
        assert!(!message.contains("s3cret-pw"), "{message}");
    }
}
