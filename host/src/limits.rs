//! Admission and rate limits: how many connections the server, and each client address, may hold; how fast
//! an address may open them; how fast one connection may send commands; how fast an address may call the
//! HTTP API and how often it may present a wrong API key. Refusals are decided here; the transport, the
//! session and the API turn them into an HTTP 503 or 429, or a `111` / `3013`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The `[limits]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Connections the server holds at most (default 100,000); more get HTTP 503 at upgrade.
    pub max_connections: usize,
    /// Connections one client address holds at most (default 1,000); more get HTTP 503.
    pub max_connections_per_ip: usize,
    /// New connections per second one client address may open (default 100; the same number as burst).
    pub connections_per_second_per_ip: u32,
    /// Commands per second one connection may send (default 100), with bursts up to `command_burst`;
    /// more get error `111 too many requests`.
    pub commands_per_second: u32,
    /// Commands one connection may send at once before the rate applies (default 200).
    pub command_burst: u32,
    /// Refused commands in a row after which the connection is closed with `3013` (default 50).
    pub disconnect_after_refused_commands: u32,
    /// Proxies (addresses or CIDR ranges) whose `X-Forwarded-For` header (and PROXY protocol header, with
    /// `proxy_protocol`) is believed for the client address. Default: none — the socket's peer is the client.
    #[serde(deserialize_with = "addresses_or_ranges")]
    pub trusted_proxies: Vec<IpNet>,
    /// Expect a PROXY protocol header (v1 or v2) on connections from `trusted_proxies` and take the client
    /// address from it (default off). Connections from other peers are served as they are, so nobody else
    /// can claim an address.
    pub proxy_protocol: bool,
    /// How long a new connection may take to send its PROXY header and each HTTP request head (the WebSocket
    /// upgrade included), how long an API request's body may take (then HTTP 408), and how long an idle
    /// keep-alive API connection is kept (default 10 s). Slow or silent connections are closed after it.
    /// TLS handshakes have their own `tls.handshake_timeout`.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// HTTP API requests per second one client address may make (default 1,000, also the burst); more get
    /// HTTP 429.
    pub api_requests_per_second_per_ip: u32,
    /// Failed API authentications one client address may make per minute (default 10, also the burst); past
    /// that, every API request from the address gets HTTP 429 for `api_auth_backoff`.
    pub api_auth_failures_per_minute: u32,
    /// How long an address that kept presenting wrong API keys is refused (default 1 min).
    #[serde(with = "humantime_serde")]
    pub api_auth_backoff: Duration,
    /// `POST /emulation` requests (the commands of HTTP-streaming and SSE clients) per second one client
    /// address may make (default 1,000, also the burst); more get HTTP 429. Each connection's commands
    /// are limited by `commands_per_second` besides; this bounds what one address can make a node pass on
    /// to other nodes.
    pub emulation_requests_per_second_per_ip: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            max_connections_per_ip: 1_000,
            connections_per_second_per_ip: 100,
            commands_per_second: 100,
            command_burst: 200,
            disconnect_after_refused_commands: 50,
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
            handshake_timeout: Duration::from_secs(10),
            api_requests_per_second_per_ip: 1_000,
            api_auth_failures_per_minute: 10,
            api_auth_backoff: Duration::from_secs(60),
            emulation_requests_per_second_per_ip: 1_000,
        }
    }
}

/// Reads a list of `10.0.0.7` or `10.0.0.0/8` entries: a plain address is the range of just itself.
fn addresses_or_ranges<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<IpNet>, D::Error> {
    let entries: Vec<String> = serde::Deserialize::deserialize(deserializer)?;
    entries
        .iter()
        .map(|entry| {
            entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "{entry:?} is neither an IP address nor a CIDR range"
                    ))
                })
        })
        .collect()
}

impl LimitsConfig {
    /// Checks the values; the error names the key.
    pub fn validate(&self) -> Result<(), LimitsConfigError> {
        for (key, value) in [
            ("limits.max_connections", self.max_connections as u64),
            (
                "limits.max_connections_per_ip",
                self.max_connections_per_ip as u64,
            ),
            (
                "limits.connections_per_second_per_ip",
                self.connections_per_second_per_ip.into(),
            ),
            (
                "limits.commands_per_second",
                self.commands_per_second.into(),
            ),
            ("limits.command_burst", self.command_burst.into()),
            (
                "limits.disconnect_after_refused_commands",
                self.disconnect_after_refused_commands.into(),
            ),
            (
                "limits.api_requests_per_second_per_ip",
                self.api_requests_per_second_per_ip.into(),
            ),
            (
                "limits.api_auth_failures_per_minute",
                self.api_auth_failures_per_minute.into(),
            ),
            (
                "limits.emulation_requests_per_second_per_ip",
                self.emulation_requests_per_second_per_ip.into(),
            ),
            (
                "limits.handshake_timeout",
                self.handshake_timeout.as_millis() as u64,
            ),
            (
                "limits.api_auth_backoff",
                self.api_auth_backoff.as_millis() as u64,
            ),
        ] {
            if value == 0 {
                return Err(LimitsConfigError::Zero { key });
            }
        }
        if self.proxy_protocol && self.trusted_proxies.is_empty() {
            return Err(LimitsConfigError::ProxyProtocolWithoutTrustedProxies);
        }
        Ok(())
    }
}

/// Why `[limits]` is refused; each names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsConfigError {
    /// A limit, rate or timeout that must be positive is 0.
    #[error("{key}: must be greater than 0")]
    Zero {
        /// The key, `limits.…`.
        key: &'static str,
    },
    /// `proxy_protocol` is on with no trusted proxy to accept PROXY headers from.
    #[error(
        "limits.proxy_protocol: needs limits.trusted_proxies (PROXY headers are read only from them)"
    )]
    ProxyProtocolWithoutTrustedProxies,
}

fn nonzero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

/// Why a new connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The server holds `max_connections`.
    #[error("the server is at its connection limit")]
    ServerFull,
    /// The address holds `max_connections_per_ip`.
    #[error("too many connections from this address")]
    TooManyFromAddress,
    /// The address opens connections faster than allowed.
    #[error("connecting too fast")]
    TooFast,
}

impl Refused {
    /// The limit that refused, named by its configuration key (metrics' `limit` label).
    pub fn limit(self) -> &'static str {
        match self {
            Self::ServerFull => "max_connections",
            Self::TooManyFromAddress => "max_connections_per_ip",
            Self::TooFast => "connections_per_second_per_ip",
        }
    }
}

/// Counts connections and decides whether a new one may open.
#[derive(Debug)]
pub struct Admission {
    config: LimitsConfig,
    total: AtomicUsize,
    per_address: Mutex<HashMap<IpAddr, usize>>,
    rate: DefaultKeyedRateLimiter<IpAddr>,
    admitted: AtomicUsize,
    /// The clock every connection's command limiter reads. Made once: creating one calibrates the CPU's
    /// counter (`cpuid`), which was a quarter of the server's CPU while accepting connections.
    clock: DefaultClock,
}

/// Holds a connection's place; dropping it frees the place.
#[derive(Debug)]
pub struct Slot {
    admission: Arc<Admission>,
    address: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admission.total.fetch_sub(1, Ordering::Relaxed);
        let mut per_address = crate::sync::lock(&self.admission.per_address);
        if let Some(count) = per_address.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                per_address.remove(&self.address);
            }
        }
    }
}

impl Admission {
    /// Admission per `config`.
    pub fn new(config: &LimitsConfig) -> Arc<Self> {
        let per_second = nonzero(config.connections_per_second_per_ip);
        Arc::new(Self {
            config: config.clone(),
            total: AtomicUsize::new(0),
            per_address: Mutex::new(HashMap::new()),
            rate: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(per_second)),
            admitted: AtomicUsize::new(0),
            clock: DefaultClock::default(),
        })
    }

    /// Admits a connection from `address`, or says why not.
    pub fn admit(self: &Arc<Self>, address: IpAddr) -> Result<Slot, Refused> {
        if self
            .admitted
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(4096)
        {
            // Forget addresses whose budget is full again, so the rate table does not grow forever.
            self.rate.retain_recent();
        }
        if self.rate.check_key(&address).is_err() {
            return Err(Refused::TooFast);
        }
        let mut per_address = crate::sync::lock(&self.per_address);
        if self.total.load(Ordering::Relaxed) >= self.config.max_connections {
            return Err(Refused::ServerFull);
        }
        let count = per_address.entry(address).or_default();
        if *count >= self.config.max_connections_per_ip {
            return Err(Refused::TooManyFromAddress);
        }
        *count += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(Slot {
            admission: self.clone(),
            address,
        })
    }

    /// Whether `ip` is one of `trusted_proxies`.
    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        self.config
            .trusted_proxies
            .iter()
            .any(|net| net.contains(&ip))
    }

    /// The client address of an HTTP request from `peer` with `headers`: see [`Admission::client_address`].
    pub fn request_client_address(
        &self,
        peer: SocketAddr,
        headers: &axum::http::HeaderMap,
    ) -> SocketAddr {
        let forwarded_for = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
        self.client_address(peer, forwarded_for)
    }

    /// The client's address: the peer, or — when the peer is a trusted proxy — the last address in
    /// `X-Forwarded-For` that is not itself a trusted proxy.
    pub fn client_address(&self, peer: SocketAddr, forwarded_for: Option<&str>) -> SocketAddr {
        let trusted = |ip: &IpAddr| self.is_trusted_proxy(*ip);
        if !trusted(&peer.ip()) {
            return peer;
        }
        let client = forwarded_for
            .into_iter()
            .flat_map(|header| header.rsplit(','))
            .filter_map(|entry| entry.trim().parse::<IpAddr>().ok())
            .find(|ip| !trusted(ip));
        client.map_or(peer, |ip| SocketAddr::new(ip, peer.port()))
    }

    /// A command rate limiter for one connection.
    pub fn command_rate(&self) -> CommandRate {
        let quota = Quota::per_second(nonzero(self.config.commands_per_second))
            .allow_burst(nonzero(self.config.command_burst));
        CommandRate {
            limiter: RateLimiter::direct_with_clock(quota, self.clock.clone()),
            refused_in_a_row: 0,
            disconnect_after: self.config.disconnect_after_refused_commands,
        }
    }
}

/// What to do with a command under the connection's rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Handle it.
    Allow,
    /// Refuse it (`111`).
    Refuse,
    /// Refused too often in a row: close the connection (`3013`).
    Disconnect,
}

/// One connection's command rate.
#[derive(Debug)]
pub struct CommandRate {
    limiter: DefaultDirectRateLimiter,
    refused_in_a_row: u32,
    disconnect_after: u32,
}

impl CommandRate {
    /// Counts one command.
    pub fn check(&mut self) -> Verdict {
        if self.limiter.check().is_ok() {
            self.refused_in_a_row = 0;
            return Verdict::Allow;
        }
        self.refused_in_a_row += 1;
        if self.refused_in_a_row >= self.disconnect_after {
            Verdict::Disconnect
        } else {
            Verdict::Refuse
        }
    }
}

/// Why an HTTP API request was refused before it was looked at (HTTP 429).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ApiRefused {
    /// The address calls the API faster than `api_requests_per_second_per_ip`.
    #[error("too many requests")]
    TooFast {
        /// When the next request may be made.
        retry_after: Duration,
    },
    /// The address presented too many wrong keys and is in its back-off period.
    #[error("too many failed authentications")]
    BackingOff {
        /// When the back-off ends.
        retry_after: Duration,
    },
}

impl ApiRefused {
    /// The limit that refused, named by its configuration key (metrics' `limit` label).
    pub fn limit(&self) -> &'static str {
        match self {
            Self::TooFast { .. } => "api_requests_per_second_per_ip",
            Self::BackingOff { .. } => "api_auth_failures_per_minute",
        }
    }

    /// How long the client should wait before retrying.
    pub fn retry_after(&self) -> Duration {
        match *self {
            Self::TooFast { retry_after } | Self::BackingOff { retry_after } => retry_after,
        }
    }
}

/// A `Retry-After` value: whole seconds, at least 1.
pub fn retry_after_seconds(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

/// A request rate per client address (the whole second's worth may come at once). Addresses whose budget
/// is full again are forgotten now and then, so it holds only the addresses seen lately.
#[derive(Debug)]
pub struct AddressRate {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    checked: AtomicUsize,
}

impl AddressRate {
    /// `per_second` requests per second per address (0 is taken as 1).
    pub fn per_second(per_second: u32) -> Self {
        let per_second = nonzero(per_second);
        Self {
            limiter: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(per_second)),
            checked: AtomicUsize::new(0),
        }
    }

    /// Whether `address` may make a request now; if not, how long until it may.
    pub fn check(&self, address: IpAddr) -> Result<(), Duration> {
        if self
            .checked
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(4096)
        {
            self.limiter.retain_recent();
        }
        self.limiter
            .check_key(&address)
            .map_err(|not_until| not_until.wait_time_from(self.limiter.clock().now()))
    }
}

/// Guards the HTTP API per client address: a request rate, and a back-off for addresses that keep presenting
/// wrong keys, so a key cannot be guessed at line speed. It refuses at once instead of delaying answers:
/// a delayed answer would hold a connection and a task per attempt, which is what an attacker wants.
#[derive(Debug)]
pub struct ApiGuard {
    requests: AddressRate,
    failures: DefaultKeyedRateLimiter<IpAddr>,
    /// Addresses in back-off, with when it ends. Entries are dropped when they are found expired, and the
    /// whole table is swept now and then, so it holds at most the addresses blocked in the last back-off.
    blocked: Mutex<HashMap<IpAddr, Instant>>,
    backoff: Duration,
    checked: AtomicUsize,
}

impl ApiGuard {
    /// A guard per `config`.
    pub fn new(config: &LimitsConfig) -> Self {
        let failures = nonzero(config.api_auth_failures_per_minute);
        Self {
            requests: AddressRate::per_second(config.api_requests_per_second_per_ip),
            // The allowance refills evenly over the minute, and the whole minute's worth may be used at once.
            failures: RateLimiter::keyed(Quota::per_minute(failures)),
            blocked: Mutex::new(HashMap::new()),
            backoff: config.api_auth_backoff,
            checked: AtomicUsize::new(0),
        }
    }

    /// Whether a request from `address` may be looked at.
    pub fn check(&self, address: IpAddr) -> Result<(), ApiRefused> {
        let now = Instant::now();
        if self
            .checked
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(4096)
        {
            // Forget addresses whose budgets are full again and back-offs that ended.
            self.failures.retain_recent();
            self.blocked().retain(|_, until| *until > now);
        }
        {
            let mut blocked = self.blocked();
            if let Some(&until) = blocked.get(&address) {
                if until > now {
                    return Err(ApiRefused::BackingOff {
                        retry_after: until - now,
                    });
                }
                blocked.remove(&address);
            }
        }
        self.requests
            .check(address)
            .map_err(|retry_after| ApiRefused::TooFast { retry_after })
    }

    /// Records a failed authentication from `address`. Past the allowance the address starts its back-off,
    /// and the refusal is returned so this very request can already be answered with it.
    pub fn failed(&self, address: IpAddr) -> Option<ApiRefused> {
        if self.failures.check_key(&address).is_ok() {
            return None;
        }
        self.blocked()
            .insert(address, Instant::now() + self.backoff);
        tracing::warn!(%address, backoff = ?self.backoff, "too many failed API authentications; refusing the address for a while");
        Some(ApiRefused::BackingOff {
            retry_after: self.backoff,
        })
    }

    fn blocked(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Instant>> {
        crate::sync::lock(&self.blocked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn trusted_proxies_are_addresses_or_ranges() {
        let config = crate::config::Config::from_toml(
            "[limits]\ntrusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\", \"::1\"]\n",
        )
        .expect("valid");
        let trusted = &config.limits.trusted_proxies;
        assert_eq!(trusted.len(), 3);
        assert!(trusted[0].contains(&ip("127.0.0.1")) && !trusted[0].contains(&ip("127.0.0.2")));
        assert!(trusted[1].contains(&ip("10.9.8.7")));
        let wrong =
            crate::config::Config::from_toml("[limits]\ntrusted_proxies = [\"localhost\"]\n");
        let error = wrong.expect_err("not an address").to_string();
        assert!(error.contains("localhost"), "{error}");
    }

    #[test]
    fn connections_are_counted_per_address_and_in_total() {
        let admission = Admission::new(&LimitsConfig {
            max_connections: 3,
            max_connections_per_ip: 2,
            ..LimitsConfig::default()
        });
        let a1 = admission.admit(ip("10.0.0.1")).unwrap();
        let _a2 = admission.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(
            admission.admit(ip("10.0.0.1")).unwrap_err(),
            Refused::TooManyFromAddress
        );
        let _b1 = admission.admit(ip("10.0.0.2")).unwrap();
        assert_eq!(
            admission.admit(ip("10.0.0.3")).unwrap_err(),
            Refused::ServerFull
        );
        drop(a1);
        assert!(
            admission.admit(ip("10.0.0.1")).is_ok(),
            "a closed connection frees its place"
        );
    }

    #[test]
    fn connecting_too_fast_is_refused() {
        let admission = Admission::new(&LimitsConfig {
            connections_per_second_per_ip: 3,
            ..LimitsConfig::default()
        });
        let _held: Vec<_> = (0..3)
            .map(|_| admission.admit(ip("10.0.0.1")).unwrap())
            .collect();
        assert_eq!(
            admission.admit(ip("10.0.0.1")).unwrap_err(),
            Refused::TooFast
        );
        assert!(
            admission.admit(ip("10.0.0.2")).is_ok(),
            "other addresses have their own budget"
        );
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let admission = Admission::new(&LimitsConfig {
            trusted_proxies: vec![
                "127.0.0.0/8".parse().unwrap(),
                "10.1.0.0/16".parse().unwrap(),
            ],
            ..LimitsConfig::default()
        });
        let proxy: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let stranger: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        assert_eq!(
            admission.client_address(proxy, Some("203.0.113.9")).ip(),
            ip("203.0.113.9")
        );
        assert_eq!(
            admission
                .client_address(proxy, Some("198.51.100.1, 203.0.113.9, 10.1.2.3"))
                .ip(),
            ip("203.0.113.9")
        );
        assert_eq!(
            admission.client_address(stranger, Some("203.0.113.9")),
            stranger,
            "spoofed header ignored"
        );
        assert_eq!(admission.client_address(proxy, Some("garbage")), proxy);
        assert_eq!(admission.client_address(proxy, None), proxy);
    }

    #[test]
    fn api_requests_over_the_rate_are_refused_per_address() {
        let guard = ApiGuard::new(&LimitsConfig {
            api_requests_per_second_per_ip: 2,
            ..LimitsConfig::default()
        });
        assert!(guard.check(ip("10.0.0.1")).is_ok());
        assert!(guard.check(ip("10.0.0.1")).is_ok());
        let refused = guard.check(ip("10.0.0.1")).unwrap_err();
        assert!(matches!(refused, ApiRefused::TooFast { .. }), "{refused:?}");
        assert!(refused.retry_after() <= Duration::from_secs(1));
        assert!(
            guard.check(ip("10.0.0.2")).is_ok(),
            "other addresses have their own budget"
        );
    }

    #[test]
    fn repeated_auth_failures_start_a_back_off() {
        let guard = ApiGuard::new(&LimitsConfig {
            api_auth_failures_per_minute: 2,
            api_auth_backoff: Duration::from_secs(30),
            ..LimitsConfig::default()
        });
        assert_eq!(guard.failed(ip("10.0.0.1")), None);
        assert_eq!(guard.failed(ip("10.0.0.1")), None);
        assert!(
            guard.check(ip("10.0.0.1")).is_ok(),
            "failures within the allowance"
        );
        assert!(matches!(
            guard.failed(ip("10.0.0.1")),
            Some(ApiRefused::BackingOff { .. })
        ));
        match guard.check(ip("10.0.0.1")) {
            Err(ApiRefused::BackingOff { retry_after }) => {
                assert!(
                    retry_after > Duration::from_secs(25) && retry_after <= Duration::from_secs(30)
                )
            }
            other => panic!("expected a back-off, got {other:?}"),
        }
        assert!(guard.check(ip("10.0.0.2")).is_ok(), "per address");
    }

    #[test]
    fn zero_limits_and_timeouts_are_rejected() {
        for (bad, key) in [
            (
                LimitsConfig {
                    api_requests_per_second_per_ip: 0,
                    ..LimitsConfig::default()
                },
                "limits.api_requests_per_second_per_ip",
            ),
            (
                LimitsConfig {
                    handshake_timeout: Duration::ZERO,
                    ..LimitsConfig::default()
                },
                "limits.handshake_timeout",
            ),
        ] {
            assert_eq!(bad.validate(), Err(LimitsConfigError::Zero { key }));
        }
        assert!(LimitsConfig::default().validate().is_ok());
    }

    #[test]
    fn commands_over_the_rate_are_refused_then_disconnected() {
        let admission = Admission::new(&LimitsConfig {
            commands_per_second: 1,
            command_burst: 2,
            disconnect_after_refused_commands: 3,
            ..LimitsConfig::default()
        });
        let mut rate = admission.command_rate();
        assert_eq!(rate.check(), Verdict::Allow);
        assert_eq!(rate.check(), Verdict::Allow);
        assert_eq!(rate.check(), Verdict::Refuse);
        assert_eq!(rate.check(), Verdict::Refuse);
        assert_eq!(rate.check(), Verdict::Disconnect);
    }
}
