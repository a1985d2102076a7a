//! A connection to the primary that Redis Sentinel names, following it through a failover.
//!
//! A [`ConnectionManager`] reconnects to the address it was built with, which after a failover is a dead
//! server or a replica. So this link asks the Sentinels where the primary is at start, every
//! [`CHECK_EVERY`], and — every [`ASK_EVERY`] until the primary answers again — whenever a command fails
//! as if the primary were gone (connection lost or refused, a timeout, `READONLY`) or the pub/sub link
//! drops. When the Sentinels name another server, a new manager is built there and the old one dropped;
//! a subscriber link then reports a disconnection (so the engine checks every stream it follows for a
//! gap) and subscribes its channels again on the new primary.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use redis::aio::{
    AsyncPushSender, ConnectionLike, ConnectionManager, ConnectionManagerConfig, SendError,
};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    Cmd, ConnectionAddr, ErrorKind, Pipeline, ProtocolVersion, PushInfo, PushKind, RedisError,
    RedisFuture, RedisResult, ServerErrorKind, TlsCertificates, Value,
};
use tokio::sync::Notify;

/// How often the Sentinels are asked again while the primary does not answer.
const ASK_EVERY: Duration = Duration::from_millis(250);

/// How often the Sentinels are asked when nothing looks wrong: a primary demoted while Herald could still
/// reach it answers reads and pub/sub as before, so only asking finds the move.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Where a subscriber link's pushes go, whichever manager they come from.
type Pushes = Arc<dyn AsyncPushSender>;

/// Where the Sentinels are asked for the primary, and the keys that count the failovers followed.
#[derive(Debug, Clone)]
pub(crate) struct SentinelTarget {
    /// The name the Sentinels monitor the primary under.
    pub master: String,
    /// Counter of failovers (see `stream.lua`).
    pub term_key: String,
    /// Set of the replication ids of the primaries used.
    pub primaries_key: String,
}

/// Counts a primary Herald moves to as a failover, once however many links and nodes move there: a
/// promoted replica has a replication id of its own. KEYS: 1 term, 2 primaries; ARGV: 1 replication id,
/// 2 '1' when moving (at start the primary is only noted).
const NOTE_PRIMARY: &str = "if redis.call('sadd', KEYS[2], ARGV[1]) == 1 and ARGV[2] == '1' then \
    redis.call('incr', KEYS[1]) end return 0";

/// What the link's managers and its follower task share.
struct Shared {
    /// Which manager is current: pushes from a replaced one are dropped.
    generation: AtomicU64,
    /// Wakes the follower: the primary may have moved.
    suspect: Notify,
    pushes: Option<Pushes>,
}

/// The primary now, and how it is reached.
struct Primary {
    /// `host:port` as the Sentinels gave it.
    address: String,
    manager: ConnectionManager,
}

/// A command or subscriber connection to whichever server the Sentinels call the primary.
pub(crate) struct FollowedPrimary {
    shared: Arc<Shared>,
    sentinels: tokio::sync::Mutex<SentinelClient>,
    /// The managers' settings, without a push sender (each manager gets its own).
    config: ConnectionManagerConfig,
    primary: ArcSwap<Primary>,
    target: SentinelTarget,
    /// The pub/sub channels subscribed through this link, to subscribe again on a new primary. Held while
    /// (un)subscribing and while switching, so no subscription lands on a manager being replaced.
    channels: tokio::sync::Mutex<HashSet<String>>,
}

/// The pushes of one manager, passed on while it is the current one.
struct GenerationPushes {
    shared: Arc<Shared>,
    generation: u64,
}

impl AsyncPushSender for GenerationPushes {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        if self.shared.generation.load(Ordering::Acquire) != self.generation {
            return Ok(());
        }
        if info.kind == PushKind::Disconnection {
            self.shared.suspect.notify_one();
        }
        match &self.shared.pushes {
            Some(pushes) => pushes.send(info),
            None => Ok(()),
        }
    }
}

impl FollowedPrimary {
    /// Asks the Sentinels at `sentinels` (`redis://` or `rediss://` URLs; their credentials serve for the
    /// primary too) where the primary is and connects to it. A task follows the primary until the link is
    /// dropped.
    pub(crate) async fn connect(
        sentinels: &[String],
        target: &SentinelTarget,
        tls: Option<&TlsCertificates>,
        config: ConnectionManagerConfig,
        pushes: Option<Pushes>,
    ) -> RedisResult<Arc<Self>> {
        let mut client = sentinel_client(sentinels, &target.master, tls)?;
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            suspect: Notify::new(),
            pushes,
        });
        let (address, primary) = ask(&mut client).await?;
        let primary = open(primary, &address, &config, &shared, 0, target, false).await?;
        tracing::info!(
            master = target.master,
            primary = address,
            "Redis primary found through Sentinel"
        );
        let link = Arc::new(Self {
            shared: shared.clone(),
            sentinels: tokio::sync::Mutex::new(client),
            config,
            primary: ArcSwap::from_pointee(primary),
            target: target.clone(),
            channels: tokio::sync::Mutex::default(),
        });
        let weak = Arc::downgrade(&link);
        tokio::spawn(follow(weak, shared));
        Ok(link)
    }

    fn manager(&self) -> ConnectionManager {
        self.primary.load().manager.clone()
    }

    /// Wakes the follower if `result` failed as if the primary were gone.
    fn watch<T>(shared: &Shared, result: RedisResult<T>) -> RedisResult<T> {
        if let Err(error) = &result
            && primary_may_have_moved(error)
        {
            shared.suspect.notify_one();
        }
        result
    }

    pub(super) async fn subscribe(&self, channel: &str) -> RedisResult<()> {
        let mut channels = self.channels.lock().await;
        let result = self.manager().subscribe(channel).await;
        let result = Self::watch(&self.shared, result);
        // Noted only once it succeeded: the engine undoes its count after a failure, so no unsubscribe
        // follows and a new primary must not get it.
        if result.is_ok() {
            channels.insert(channel.to_owned());
        }
        result
    }

    pub(super) async fn unsubscribe(&self, channel: &str) -> RedisResult<()> {
        let mut channels = self.channels.lock().await;
        channels.remove(channel);
        let result = self.manager().unsubscribe(channel).await;
        Self::watch(&self.shared, result)
    }

    pub(super) fn req_packed_command<'a>(&'a self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let result = self.manager().req_packed_command(cmd).await;
            Self::watch(&self.shared, result)
        })
    }

    pub(super) fn req_packed_commands<'a>(
        &'a self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let result = self
                .manager()
                .req_packed_commands(pipeline, offset, count)
                .await;
            Self::watch(&self.shared, result)
        })
    }

    pub(super) fn get_db(&self) -> i64 {
        self.manager().get_db()
    }

    /// Asks the Sentinels until the primary they name answers; moves there if it is another server.
    /// Returns at once when `suspected` is false and the primary has not moved.
    async fn check(&self, suspected: bool) {
        let mut warned = false;
        loop {
            let round = tokio::time::Instant::now() + ASK_EVERY;
            let current = self.primary.load().address.clone();
            let next = self.generation() + 1;
            let asked = {
                let mut sentinels = self.sentinels.lock().await;
                ask(&mut sentinels).await
            };
            match asked {
                Ok((address, _)) if address == current => {
                    let mut manager = self.manager();
                    // Bounded: a manager reconnecting to a dead server would hold the round for its own
                    // retries.
                    let ping = redis::cmd("PING");
                    let answered =
                        tokio::time::timeout(ASK_EVERY, ping.query_async::<()>(&mut manager)).await;
                    if matches!(answered, Ok(Ok(()))) || !suspected {
                        return;
                    }
                }
                Ok((address, client)) => match open(
                    client,
                    &address,
                    &self.config,
                    &self.shared,
                    next,
                    &self.target,
                    true,
                )
                .await
                {
                    Ok(primary) => return self.switch(primary, &current).await,
                    Err(error) => {
                        if !warned {
                            tracing::warn!(master = self.target.master, primary = address, %error, "cannot reach the Redis primary Sentinel names; asking again");
                            warned = true;
                        }
                    }
                },
                Err(error) => {
                    if !warned {
                        tracing::warn!(master = self.target.master, %error, "no Sentinel names a working Redis primary; asking again");
                        warned = true;
                    }
                    if !suspected {
                        return;
                    }
                }
            }
            tokio::time::sleep_until(round).await;
        }
    }

    fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    /// Makes `primary` the current one: the engine hears of a lost link (publications may be missing)
    /// and the channels are subscribed there.
    async fn switch(&self, primary: Primary, old: &str) {
        let channels = self.channels.lock().await;
        tracing::warn!(
            master = self.target.master,
            from = old,
            to = primary.address,
            "the Redis primary moved (Sentinel failover); following it"
        );
        let mut manager = primary.manager.clone();
        self.primary.store(Arc::new(primary));
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
        if let Some(pushes) = &self.shared.pushes {
            let _ = pushes.send(PushInfo {
                kind: PushKind::Disconnection,
                data: Vec::new(),
            });
        }
        for channel in channels.iter() {
            if let Err(error) = manager.subscribe(channel).await {
                // The manager subscribes again when its own link comes back.
                tracing::warn!(channel, %error, "Redis subscribe on the new primary failed");
            }
        }
    }
}

/// The follower: checks on suspicion and every [`CHECK_EVERY`], until the link is dropped.
async fn follow(link: Weak<FollowedPrimary>, shared: Arc<Shared>) {
    loop {
        let suspected = tokio::select! {
            () = shared.suspect.notified() => true,
            () = tokio::time::sleep(CHECK_EVERY) => false,
        };
        let Some(link) = link.upgrade() else { return };
        link.check(suspected).await;
    }
}

/// The primary's address according to the Sentinels, and a client for it (checked to be a primary).
async fn ask(sentinels: &mut SentinelClient) -> RedisResult<(String, redis::Client)> {
    let client = sentinels.async_get_client().await?;
    let address = match client.get_connection_info().addr() {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
            format!("{host}:{port}")
        }
        other => other.to_string(),
    };
    Ok((address, client))
}

/// A manager for the primary at `address` (of `generation`), its replication id noted — as a failover when
/// `moving` — before any command of Herald's reaches it.
async fn open(
    client: redis::Client,
    address: &str,
    config: &ConnectionManagerConfig,
    shared: &Arc<Shared>,
    generation: u64,
    target: &SentinelTarget,
    moving: bool,
) -> RedisResult<Primary> {
    let mut manager =
        ConnectionManager::new_with_config(client, manager_config(config, shared, generation))
            .await?;
    let replication: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(&mut manager)
        .await?;
    let id = replication
        .lines()
        .find_map(|line| line.strip_prefix("master_replid:"))
        .map(str::trim)
        .unwrap_or_default();
    redis::cmd("EVAL")
        .arg(NOTE_PRIMARY)
        .arg(2)
        .arg(&target.term_key)
        .arg(&target.primaries_key)
        .arg(id)
        .arg(if moving { "1" } else { "0" })
        .query_async::<()>(&mut manager)
        .await?;
    Ok(Primary {
        address: address.to_owned(),
        manager,
    })
}

/// `config` with a push sender for the manager of `generation`, when the link takes pushes.
fn manager_config(
    config: &ConnectionManagerConfig,
    shared: &Arc<Shared>,
    generation: u64,
) -> ConnectionManagerConfig {
    let config = config.clone();
    if shared.pushes.is_none() {
        return config;
    }
    config
        .set_push_sender(GenerationPushes {
            shared: shared.clone(),
            generation,
        })
        .set_automatic_resubscription()
}

/// A client of the Sentinels at `urls`, connecting to the primary with the same credentials and TLS.
fn sentinel_client(
    urls: &[String],
    master: &str,
    tls: Option<&TlsCertificates>,
) -> RedisResult<SentinelClient> {
    let infos = urls
        .iter()
        .map(|url| redis::IntoConnectionInfo::into_connection_info(url.as_str()))
        .collect::<RedisResult<Vec<_>>>()?;
    let Some(first) = infos.first() else {
        return Err(RedisError::from((
            ErrorKind::InvalidClientConfig,
            "no Sentinel address",
        )));
    };
    let secure = matches!(first.addr(), ConnectionAddr::TcpTls { .. });
    let settings = first.redis_settings();
    let mut builder = SentinelClientBuilder::new(
        infos.iter().map(|info| info.addr().clone()),
        master,
        SentinelServerType::Master,
    )?
    .set_client_to_redis_protocol(ProtocolVersion::RESP3)
    .set_client_to_redis_db(settings.db());
    if let Some(username) = settings.username() {
        builder = builder
            .set_client_to_sentinel_username(username)
            .set_client_to_redis_username(username);
    }
    if let Some(password) = settings.password() {
        builder = builder
            .set_client_to_sentinel_password(password)
            .set_client_to_redis_password(password);
    }
    if secure {
        builder = builder.set_client_to_redis_tls_mode(redis::TlsMode::Secure);
        if let Some(certificates) = tls {
            builder = builder
                .set_client_to_sentinel_certificates(certificates.clone())
                .set_client_to_redis_certificates(certificates.clone());
        }
    }
    builder.build()
}

/// Whether `error` is what a gone or demoted primary causes.
fn primary_may_have_moved(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || error.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly)
}
