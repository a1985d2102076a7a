//! # rate-limit: per-user publish and subscribe rates
//!
//! Counts each user's client publications and subscriptions (an anonymous connection counts as its own
//! user) in fixed windows: past the limit within a window, the request is denied with error
//! `111 too many requests` until the window ends. Publications from the server API and the message queue
//! are the backend's own and never limited.
//!
//! The counts are kept cluster-wide by default (`cluster-state`, contract 0.2: in Redis with the Redis
//! engine, so a user connected to several nodes shares one limit), or per node (`scope = "node"`:
//! `local-state`, no round trip to Redis, each node counting on its own).
//!
//! ```toml
//! [plugins.config.rate-limit]
//! publishes = 20          # client publications per user per window (0: unlimited)
//! subscribes = 50         # subscriptions per user per window, refreshes not counted (0: unlimited)
//! window_ms = 10000       # the window (default 1000)
//! channels = ["*"]        # which channels count (patterns: `*`, `{user}`; default all)
//! except = ["internal:*"] # ...except these
//! scope = "cluster"       # "cluster" (default) or "node"
//! ```
//!
//! Conditions: a window starts at a user's first counted request and lasts `window_ms` (by Redis's clock
//! in the cluster scope); requests are denied rather than let through uncounted when the count cannot be
//! kept — `111` when the state is full (`plugins.state_max_entries`), `100` when Redis cannot be reached
//! or does not answer within the hook's deadline.

use std::time::Duration;

use herald_sdk::{
    Config, Deny, Hooks, Plugin, PublishRequest, PublishSource, PublishVerdict, SubscribeRequest,
    SubscribeVerdict, cluster_state, codes, deny, pattern, state,
};
use serde::Deserialize;

/// The plugin's configuration.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    publishes: u32,
    subscribes: u32,
    window_ms: u64,
    channels: Vec<String>,
    except: Vec<String>,
    scope: Scope,
}

/// Where the counts are kept.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Scope {
    /// In the cluster's state: one limit across nodes.
    #[default]
    Cluster,
    /// In this node's state: each node counts alone.
    Node,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            publishes: 0,
            subscribes: 0,
            window_ms: 1000,
            channels: vec!["*".to_owned()],
            except: Vec::new(),
            scope: Scope::Cluster,
        }
    }
}

/// The plugin: its limits.
pub struct RateLimit {
    settings: Settings,
}

/// What is counted.
#[derive(Debug, Clone, Copy)]
enum Action {
    Publish,
    Subscribe,
}

impl RateLimit {
    fn counted(&self, channel: &str, user: &str) -> bool {
        let s = &self.settings;
        s.channels
            .iter()
            .any(|p| pattern::matches(p, channel, user))
            && !s.except.iter().any(|p| pattern::matches(p, channel, user))
    }

    /// Counts one `action` by `who` (a user id, or `client:<id>` for an anonymous connection); the
    /// refusal when it is over the limit or cannot be counted.
    fn count(&self, action: Action, who: &str) -> Result<(), Deny> {
        let (limit, name) = match action {
            Action::Publish => (self.settings.publishes, "publish"),
            Action::Subscribe => (self.settings.subscribes, "subscribe"),
        };
        if limit == 0 {
            return Ok(());
        }
        let window = Duration::from_millis(self.settings.window_ms);
        let key = format!("{name}:{who}");
        let count = match self.settings.scope {
            Scope::Node => state::incr(&key, 1, window).ok_or_else(state_full)?,
            Scope::Cluster => {
                cluster_state::incr(&key, 1, window).map_err(|error| match error {
                    cluster_state::Error::Full => state_full(),
                    error => deny(
                        codes::INTERNAL,
                        format!("rate limit cannot be counted: {error:?}"),
                    ),
                })?
            }
        };
        match count <= i64::from(limit) {
            true => Ok(()),
            false => Err(deny(
                codes::TOO_MANY_REQUESTS,
                format!(
                    "too many {name} requests: at most {limit} per {} ms",
                    self.settings.window_ms
                ),
            )),
        }
    }
}

/// The refusal when the count cannot be kept because the state is full, whichever scope.
fn state_full() -> Deny {
    deny(codes::TOO_MANY_REQUESTS, "rate limit state is full")
}

/// Who a connection counts as: its user, or its own connection when anonymous.
fn who(user: &str, client: &str) -> String {
    if user.is_empty() {
        format!("client:{client}")
    } else {
        format!("user:{user}")
    }
}

impl Plugin for RateLimit {
    const NAME: &'static str = "rate-limit";
    const VERSION: &'static str = "0.1.0";
    const HOOKS: Hooks = Hooks::SUBSCRIBE.union(Hooks::PUBLISH);

    fn init(config: Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        if settings.window_ms == 0 {
            return Err("window_ms must be greater than 0".into());
        }
        Ok(Self { settings })
    }

    fn on_subscribe(&self, request: &SubscribeRequest) -> SubscribeVerdict {
        let client = &request.client;
        if request.refresh || !self.counted(&request.channel, &client.user) {
            return SubscribeVerdict::Pass;
        }
        match self.count(Action::Subscribe, &who(&client.user, &client.client)) {
            Ok(()) => SubscribeVerdict::Pass,
            Err(refusal) => SubscribeVerdict::Deny(refusal),
        }
    }

    fn on_publish(&self, request: &PublishRequest) -> PublishVerdict {
        let (PublishSource::Client, Some(publisher)) = (&request.source, &request.publisher) else {
            return PublishVerdict::Pass;
        };
        if !self.counted(&request.channel, &publisher.user) {
            return PublishVerdict::Pass;
        }
        match self.count(Action::Publish, &who(&publisher.user, &publisher.client)) {
            Ok(()) => PublishVerdict::Pass,
            Err(refusal) => PublishVerdict::Deny(refusal),
        }
    }
}

herald_sdk::export!(RateLimit);

#[cfg(test)]
mod tests {
    use super::*;

    use herald_sdk::ClientInfo;

    fn plugin(json: &str) -> RateLimit {
        state::clear();
        cluster_state::clear();
        cluster_state::fail_with(None);
        RateLimit::init(Config::from_json(json).expect("valid JSON")).expect("init")
    }

    fn too_many(reason: &str) -> PublishVerdict {
        PublishVerdict::Deny(deny(codes::TOO_MANY_REQUESTS, reason))
    }

    #[test]
    fn publishes_are_limited_per_user_within_a_window() {
        let plugin = plugin(r#"{"publishes": 2, "window_ms": 60000}"#);
        let by = |user: &str| PublishRequest::new("chat", "{}").user(user);
        assert_eq!(plugin.on_publish(&by("42")), PublishVerdict::Pass);
        assert_eq!(plugin.on_publish(&by("42")), PublishVerdict::Pass);
        assert_eq!(
            plugin.on_publish(&by("42")),
            too_many("too many publish requests: at most 2 per 60000 ms")
        );
        assert_eq!(
            plugin.on_publish(&by("7")),
            PublishVerdict::Pass,
            "another user"
        );
        // The backend's own publications are not counted.
        let api = PublishRequest::new("chat", "{}").source(PublishSource::Api);
        assert_eq!(plugin.on_publish(&api), PublishVerdict::Pass);
    }

    #[test]
    fn anonymous_connections_count_one_by_one_and_exceptions_are_free() {
        let plugin = plugin(r#"{"subscribes": 1, "except": ["internal:*"]}"#);
        let anonymous = |client: &str| {
            SubscribeRequest::new("news").client(ClientInfo::anonymous().client(client))
        };
        assert_eq!(plugin.on_subscribe(&anonymous("a")), SubscribeVerdict::Pass);
        assert!(matches!(
            plugin.on_subscribe(&anonymous("a")),
            SubscribeVerdict::Deny(_)
        ));
        assert_eq!(plugin.on_subscribe(&anonymous("b")), SubscribeVerdict::Pass);
        let internal =
            SubscribeRequest::new("internal:jobs").client(ClientInfo::anonymous().client("a"));
        assert_eq!(plugin.on_subscribe(&internal), SubscribeVerdict::Pass);
        let refresh = anonymous("a").refresh(true);
        assert_eq!(plugin.on_subscribe(&refresh), SubscribeVerdict::Pass);
    }

    #[test]
    fn node_and_cluster_counts_are_kept_apart() {
        let node = plugin(r#"{"publishes": 1, "scope": "node"}"#);
        let request = PublishRequest::new("chat", "{}").user("42");
        assert_eq!(node.on_publish(&request), PublishVerdict::Pass);
        assert!(matches!(node.on_publish(&request), PublishVerdict::Deny(_)));
        assert_eq!(state::get("publish:user:42"), Some(b"2".to_vec()));
        assert_eq!(cluster_state::get("publish:user:42"), Ok(None));

        let cluster = plugin(r#"{"publishes": 1}"#);
        assert_eq!(cluster.on_publish(&request), PublishVerdict::Pass);
        assert_eq!(
            cluster_state::get("publish:user:42"),
            Ok(Some(b"1".to_vec()))
        );
        assert_eq!(state::get("publish:user:42"), None);
    }

    #[test]
    fn an_unreachable_cluster_state_fails_closed() {
        let plugin = plugin(r#"{"publishes": 5}"#);
        cluster_state::fail_with(Some(cluster_state::Error::Unavailable("redis down".into())));
        let request = PublishRequest::new("chat", "{}").user("42");
        match plugin.on_publish(&request) {
            PublishVerdict::Deny(refusal) => assert_eq!(refusal.code, codes::INTERNAL),
            other => panic!("{other:?}"),
        }
        cluster_state::fail_with(Some(cluster_state::Error::Full));
        assert_eq!(
            plugin.on_publish(&request),
            too_many("rate limit state is full")
        );
        cluster_state::fail_with(None);
        assert_eq!(plugin.on_publish(&request), PublishVerdict::Pass);
    }

    #[test]
    fn unlimited_by_default_and_a_zero_window_is_refused() {
        let plugin = plugin("");
        for _ in 0..100 {
            let request = PublishRequest::new("chat", "{}").user("42");
            assert_eq!(plugin.on_publish(&request), PublishVerdict::Pass);
        }
        assert!(RateLimit::init(Config::from_json(r#"{"window_ms": 0}"#).unwrap()).is_err());
    }
}
