//! # rate-limit: per-user publish and subscribe rates
//!
//! Counts each user's client publications and subscriptions (an anonymous connection counts as its own
//! user) in fixed windows, in the plugin's node-local state (contract 0.2), which every instance of the
//! plugin on the node shares: past the limit within a window, the request is denied with error
//! `111 too many requests` until the window ends. Publications from the server API and the message queue
//! are the backend's own and never limited.
//!
//! ```toml
//! [plugins.config.rate-limit]
//! publishes = 20          # client publications per user per window (0: unlimited)
//! subscribes = 50         # subscriptions per user per window, refreshes not counted (0: unlimited)
//! window_ms = 10000       # the window (default 1000)
//! channels = ["*"]        # which channels count (patterns: `*`, `{user}`; default all)
//! except = ["internal:*"] # ...except these
//! ```
//!
//! Conditions: the counts are per node (a user connected to two nodes gets the limit on each); a window
//! starts at a user's first counted request and lasts `window_ms`; when the state is full (see
//! `plugins.state_max_entries`) requests are denied rather than let through uncounted.

use std::time::Duration;

use herald_sdk::{
    Config, Hooks, Plugin, PublishRequest, PublishSource, PublishVerdict, SubscribeRequest,
    SubscribeVerdict, codes, deny, pattern, state,
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
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            publishes: 0,
            subscribes: 0,
            window_ms: 1000,
            channels: vec!["*".to_owned()],
            except: Vec::new(),
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

    /// Counts one `action` by `who` (a user id, or `client:<id>` for an anonymous connection); `Err`
    /// with the reason when it is over the limit.
    fn count(&self, action: Action, who: &str) -> Result<(), String> {
        let (limit, name) = match action {
            Action::Publish => (self.settings.publishes, "publish"),
            Action::Subscribe => (self.settings.subscribes, "subscribe"),
        };
        if limit == 0 {
            return Ok(());
        }
        let window = Duration::from_millis(self.settings.window_ms);
        match state::incr(&format!("{name}:{who}"), 1, window) {
            Some(count) if count <= i64::from(limit) => Ok(()),
            Some(_) => Err(format!(
                "too many {name} requests: at most {limit} per {} ms",
                self.settings.window_ms
            )),
            None => Err("rate limit state is full".to_owned()),
        }
    }
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
            Err(reason) => SubscribeVerdict::Deny(deny(codes::TOO_MANY_REQUESTS, reason)),
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
            Err(reason) => PublishVerdict::Deny(deny(codes::TOO_MANY_REQUESTS, reason)),
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
    fn unlimited_by_default_and_a_zero_window_is_refused() {
        let plugin = plugin("");
        for _ in 0..100 {
            let request = PublishRequest::new("chat", "{}").user("42");
            assert_eq!(plugin.on_publish(&request), PublishVerdict::Pass);
        }
        assert!(RateLimit::init(Config::from_json(r#"{"window_ms": 0}"#).unwrap()).is_err());
    }
}
