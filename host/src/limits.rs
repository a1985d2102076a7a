//! Admission and rate limits: how many connections the server, and each client address, may hold; how fast
//! an address may open them; how fast one connection may send commands. Refusals are decided here, the
//! transport and the session turn them into an HTTP 503 or a `111` / `3013`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

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
    /// Proxies (addresses or CIDR ranges) whose `X-Forwarded-For` header is believed for the client address.
    /// Default: none — the socket's peer address is the client.
    pub trusted_proxies: Vec<IpNet>,
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
        }
    }
}

impl LimitsConfig {
    /// Checks the values; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
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
        ] {
            if value == 0 {
                return Err(format!("{key}: must be greater than 0"));
            }
        }
        Ok(())
    }
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

/// Counts connections and decides whether a new one may open.
#[derive(Debug)]
pub struct Admission {
    config: LimitsConfig,
    total: AtomicUsize,
    per_address: Mutex<HashMap<IpAddr, usize>>,
    rate: DefaultKeyedRateLimiter<IpAddr>,
    admitted: AtomicUsize,
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
        let mut per_address = self
            .admission
            .per_address
            .lock()
            .unwrap_or_else(|p| p.into_inner());
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
        let mut per_address = self.per_address.lock().unwrap_or_else(|p| p.into_inner());
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

    /// The client's address: the peer, or — when the peer is a trusted proxy — the last address in
    /// `X-Forwarded-For` that is not itself a trusted proxy.
    pub fn client_address(&self, peer: SocketAddr, forwarded_for: Option<&str>) -> SocketAddr {
        let trusted = |ip: &IpAddr| {
            self.config
                .trusted_proxies
                .iter()
                .any(|net| net.contains(ip))
        };
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
            limiter: RateLimiter::direct(quota),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
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
