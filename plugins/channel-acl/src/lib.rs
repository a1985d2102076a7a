//! # channel-acl: who may subscribe, publish and read history or presence, per channel pattern
//!
//! Rules are checked in order and the **first rule that matches** the channel, the action and the
//! connection decides: `allow` or `deny`. When no rule matches, `default` decides: `"pass"` (the default)
//! leaves the decision to the namespace configuration (and to later plugins), `"deny"` refuses.
//!
//! ```toml
//! # In Herald's configuration. Or in a file beside the plugin with the same stem (`channel-acl.toml`
//! # beside `channel-acl.wasm`), holding these keys without the `plugins.config.channel-acl` prefix.
//! [plugins.config.channel-acl]
//! default = "pass"                 # "pass" | "deny": what happens when no rule matches
//!
//! # A user may read their own personal channel...
//! [[plugins.config.channel-acl.rules]]
//! pattern = "user:#{user}"         # `*` matches anything, `{user}` the connection's user id
//! actions = ["subscribe", "history", "presence"]
//! who = "authenticated"            # "authenticated" | "anonymous" | "anyone" (default "anyone")
//! effect = "allow"
//!
//! # ...and nobody else's (this rule is reached only when the one above did not match).
//! [[plugins.config.channel-acl.rules]]
//! pattern = "user:*"
//! actions = ["subscribe", "publish", "history", "presence"]
//! effect = "deny"
//!
//! # Anonymous visitors may follow the public channels.
//! [[plugins.config.channel-acl.rules]]
//! pattern = "public:*"
//! actions = ["subscribe", "history"]
//! who = "anonymous"
//! effect = "allow"
//!
//! # Editors may publish news; nobody else may.
//! [[plugins.config.channel-acl.rules]]
//! pattern = "news:*"
//! actions = ["publish"]
//! users = ["editor-1", "editor-2"] # optional: only these user ids
//! effect = "allow"
//!
//! [[plugins.config.channel-acl.rules]]
//! pattern = "news:*"
//! actions = ["publish"]
//! effect = "deny"
//! ```
//!
//! What each verdict does:
//!
//! - **subscribe** (also a subscription refresh): allow accepts the subscription without consulting the
//!   namespace's `allow_subscribe_*` options; deny answers error `103 permission denied`.
//! - **history / presence**: allow grants the read; deny answers `103`.
//! - **publish**: deny answers `103`; allow only *passes*. A publish hook cannot grant publishing, so the
//!   namespace must still enable client publishing (`allow_publish_for_client` and friends): this ACL can
//!   restrict publishing, never widen it. Publications from the server API and the message queue are
//!   trusted and never checked.
//!
//! A `{user}` rule never matches an anonymous connection, and the user id is matched literally (a `*` in a
//! user id is not a wildcard).
//!
//! The ACL's subscribe allow carries no info, data or expiry. Herald keeps the last allow of the chain, so
//! give this plugin a file name that sorts before plugins that grant subscriptions with those (a
//! subscription-token plugin): `10-channel-acl.wasm`, `20-jwt-auth.wasm`.

use herald_sdk::{
    AccessKind, AccessRequest, AccessVerdict, Config, Hooks, Plugin, PublishRequest, PublishSource,
    PublishVerdict, SubscribeAllow, SubscribeRequest, SubscribeVerdict, codes, deny,
};
use serde::Deserialize;

/// The plugin: the rules in order, and what applies when none matches.
pub struct ChannelAcl {
    rules: Vec<Rule>,
    default: NoMatch,
}

/// Something a connection does with a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Action {
    Subscribe,
    Publish,
    History,
    Presence,
}

/// Which connections a rule is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Who {
    Anyone,
    Authenticated,
    Anonymous,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Effect {
    Allow,
    Deny,
}

/// Outcome when no rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum NoMatch {
    Pass,
    Deny,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    rules: Vec<RuleSettings>,
    #[serde(default = "pass")]
    default: NoMatch,
}

fn pass() -> NoMatch {
    NoMatch::Pass
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSettings {
    pattern: String,
    actions: Vec<Action>,
    #[serde(default = "anyone")]
    who: Who,
    /// Restricts the rule to these user ids.
    #[serde(default)]
    users: Option<Vec<String>>,
    effect: Effect,
}

fn anyone() -> Who {
    Who::Anyone
}

/// One piece of a channel pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    /// Any run of characters, possibly empty.
    Star,
    /// The connection's user id, matched literally.
    User,
    /// A literal byte.
    Byte(u8),
}

struct Rule {
    pattern: Vec<Piece>,
    actions: Vec<Action>,
    who: Who,
    users: Option<Vec<String>>,
    effect: Effect,
}

impl Rule {
    fn applies(&self, channel: &str, action: Action, user: &str) -> bool {
        let who_matches = match self.who {
            Who::Anyone => true,
            Who::Authenticated => !user.is_empty(),
            Who::Anonymous => user.is_empty(),
        };
        who_matches
            && self.actions.contains(&action)
            && self
                .users
                .as_ref()
                .is_none_or(|users| users.iter().any(|u| u == user))
            && pattern_matches(&self.pattern, channel, user)
    }
}

/// Splits a pattern into pieces once, at init, so matching needs no string building.
fn compile(pattern: &str) -> Vec<Piece> {
    const USER: &[u8] = b"{user}";
    let bytes = pattern.as_bytes();
    let mut pieces = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at..].starts_with(USER) {
            pieces.push(Piece::User);
            at += USER.len();
        } else {
            pieces.push(match bytes[at] {
                b'*' => Piece::Star,
                byte => Piece::Byte(byte),
            });
            at += 1;
        }
    }
    pieces
}

/// Whether `channel` matches the compiled pattern for `user`.
///
/// The SDK's `pattern::matches` substitutes the user id into the pattern text, which would turn a `*` in a
/// user id into a wildcard; here `{user}` expands to literal bytes, so an id is only ever itself.
fn pattern_matches(pattern: &[Piece], channel: &str, user: &str) -> bool {
    if user.is_empty() && pattern.contains(&Piece::User) {
        return false;
    }
    // `None` is a wildcard, `Some(b)` a literal byte.
    let tokens: Vec<Option<u8>> = pattern
        .iter()
        .flat_map(|piece| match piece {
            Piece::Star => vec![None],
            Piece::Byte(b) => vec![Some(*b)],
            Piece::User => user.bytes().map(Some).collect(),
        })
        .collect();
    glob(&tokens, channel.as_bytes())
}

/// Wildcard matching with backtracking to the last star only: linear in practice.
fn glob(pattern: &[Option<u8>], text: &[u8]) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < text.len() {
        match pattern.get(pi) {
            Some(None) => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(Some(b)) if *b == text[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((star_pi, star_ti)) => {
                    pi = star_pi + 1;
                    ti = star_ti + 1;
                    star = Some((star_pi, star_ti + 1));
                }
                None => return false,
            },
        }
    }
    pattern[pi..].iter().all(Option::is_none)
}

impl ChannelAcl {
    /// The effect of the first matching rule, or `None` when no rule matches and the default is "pass".
    fn decide(&self, channel: &str, action: Action, user: &str) -> Option<Effect> {
        match self
            .rules
            .iter()
            .find(|rule| rule.applies(channel, action, user))
        {
            Some(rule) => Some(rule.effect),
            None => match self.default {
                NoMatch::Pass => None,
                NoMatch::Deny => Some(Effect::Deny),
            },
        }
    }

    fn permission_denied() -> herald_sdk::Deny {
        deny(codes::PERMISSION_DENIED, "permission denied")
    }
}

impl Plugin for ChannelAcl {
    const NAME: &'static str = "channel-acl";
    const VERSION: &'static str = "1.0.0";
    const HOOKS: Hooks = Hooks::SUBSCRIBE.union(Hooks::PUBLISH).union(Hooks::ACCESS);

    fn init(config: Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        let mut rules = Vec::with_capacity(settings.rules.len());
        for (index, rule) in settings.rules.into_iter().enumerate() {
            // Mistakes here would silently never match; refusing to load names the rule instead.
            if rule.pattern.is_empty() {
                return Err(format!("rules[{index}].pattern: must not be empty"));
            }
            if rule.actions.is_empty() {
                return Err(format!("rules[{index}].actions: list at least one action"));
            }
            if rule.users.as_ref().is_some_and(Vec::is_empty) {
                return Err(format!(
                    "rules[{index}].users: empty list matches nobody; omit it instead"
                ));
            }
            if rule.users.is_some() && rule.who == Who::Anonymous {
                return Err(format!(
                    "rules[{index}]: `users` cannot match anonymous connections"
                ));
            }
            rules.push(Rule {
                pattern: compile(&rule.pattern),
                actions: rule.actions,
                who: rule.who,
                users: rule.users,
                effect: rule.effect,
            });
        }
        Ok(ChannelAcl {
            rules,
            default: settings.default,
        })
    }

    fn on_subscribe(&self, request: &SubscribeRequest) -> SubscribeVerdict {
        match self.decide(&request.channel, Action::Subscribe, &request.client.user) {
            Some(Effect::Allow) => SubscribeVerdict::Allow(SubscribeAllow {
                info: None,
                data: None,
                expire_at: None,
            }),
            Some(Effect::Deny) => SubscribeVerdict::Deny(Self::permission_denied()),
            None => SubscribeVerdict::Pass,
        }
    }

    fn on_publish(&self, request: &PublishRequest) -> PublishVerdict {
        // The server API and the queue are the application's backend: trusted, not subject to the ACL.
        if request.source != PublishSource::Client {
            return PublishVerdict::Pass;
        }
        let user = request.publisher.as_ref().map_or("", |p| p.user.as_str());
        match self.decide(&request.channel, Action::Publish, user) {
            Some(Effect::Deny) => PublishVerdict::Deny(Self::permission_denied()),
            // No publish verdict grants: the namespace configuration must allow client publishing too.
            Some(Effect::Allow) | None => PublishVerdict::Pass,
        }
    }

    fn on_access(&self, request: &AccessRequest) -> AccessVerdict {
        let action = match request.kind {
            AccessKind::History => Action::History,
            AccessKind::Presence => Action::Presence,
        };
        match self.decide(&request.channel, action, &request.client.user) {
            Some(Effect::Allow) => AccessVerdict::Allow,
            Some(Effect::Deny) => AccessVerdict::Deny(Self::permission_denied()),
            None => AccessVerdict::Pass,
        }
    }
}

herald_sdk::export!(ChannelAcl);

#[cfg(test)]
mod tests {
    use super::*;

    /// The configuration of the module documentation, as Herald hands it over (JSON).
    const EXAMPLE: &str = r#"{
        "default": "pass",
        "rules": [
            { "pattern": "user:#{user}", "actions": ["subscribe", "history", "presence"],
              "who": "authenticated", "effect": "allow" },
            { "pattern": "user:*", "actions": ["subscribe", "publish", "history", "presence"],
              "effect": "deny" },
            { "pattern": "public:*", "actions": ["subscribe", "history"], "who": "anonymous",
              "effect": "allow" },
            { "pattern": "news:*", "actions": ["publish"], "users": ["editor-1", "editor-2"],
              "effect": "allow" },
            { "pattern": "news:*", "actions": ["publish"], "effect": "deny" }
        ]
    }"#;

    /// A verdict of any hook reduced to what the tests compare, so one set of names serves subscribe,
    /// publish and access.
    #[derive(Debug, PartialEq)]
    enum Outcome {
        Pass,
        Allow,
        Deny(u32, String),
    }
    use Outcome::{Allow, Pass};

    fn denied() -> Outcome {
        Outcome::Deny(103, "permission denied".into())
    }

    fn acl(config: &str) -> ChannelAcl {
        ChannelAcl::init(Config::from_json(config).unwrap()).unwrap()
    }

    fn init_error(config: &str) -> String {
        match ChannelAcl::init(Config::from_json(config).unwrap()) {
            Ok(_) => panic!("config accepted: {config}"),
            Err(e) => e,
        }
    }

    fn subscribe_outcome(verdict: SubscribeVerdict) -> Outcome {
        match verdict {
            SubscribeVerdict::Pass => Pass,
            SubscribeVerdict::Allow(allow) => {
                // The ACL grants the subscription as is: no info, data or expiry of its own.
                assert_eq!(allow, SubscribeAllow::default());
                Allow
            }
            SubscribeVerdict::Deny(d) => Outcome::Deny(d.code, d.reason),
        }
    }

    fn subscribe(acl: &ChannelAcl, user: &str, channel: &str) -> Outcome {
        subscribe_outcome(acl.on_subscribe(&SubscribeRequest::new(channel).user(user)))
    }

    fn publish(acl: &ChannelAcl, source: PublishSource, user: &str, channel: &str) -> Outcome {
        // `source` after `user`: an API or queue publication has no publisher.
        let verdict = acl.on_publish(&PublishRequest::new(channel, "{}").user(user).source(source));
        match verdict {
            PublishVerdict::Pass => Pass,
            PublishVerdict::Deny(d) => Outcome::Deny(d.code, d.reason),
            other => panic!("the ACL only passes or denies publications, got {other:?}"),
        }
    }

    fn client_publish(acl: &ChannelAcl, user: &str, channel: &str) -> Outcome {
        publish(acl, PublishSource::Client, user, channel)
    }

    fn access(acl: &ChannelAcl, kind: AccessKind, user: &str, channel: &str) -> Outcome {
        match acl.on_access(&AccessRequest::new(channel, kind).user(user)) {
            AccessVerdict::Pass => Pass,
            AccessVerdict::Allow => Allow,
            AccessVerdict::Deny(d) => Outcome::Deny(d.code, d.reason),
        }
    }

    /// What Herald's load checks too: every hook implemented is listed in `HOOKS`.
    #[test]
    fn declares_every_hook_it_implements() {
        assert_eq!(herald_sdk::check_hooks(&acl(EXAMPLE)), Ok(()));
    }

    #[test]
    fn users_subscribe_to_their_own_channel_only() {
        let acl = acl(EXAMPLE);
        assert_eq!(subscribe(&acl, "42", "user:#42"), Allow);
        assert_eq!(subscribe(&acl, "42", "user:#43"), denied());
        // A `#` channel naming several users is not "their own".
        assert_eq!(subscribe(&acl, "42", "user:#42,43"), denied());
        // `{user}` never matches anonymous connections; the catch-all deny rule applies.
        assert_eq!(subscribe(&acl, "", "user:#"), denied());
    }

    #[test]
    fn anonymous_may_subscribe_to_public_channels() {
        let acl = acl(EXAMPLE);
        assert_eq!(subscribe(&acl, "", "public:lobby"), Allow);
        // The rule is for anonymous connections only: users fall through to the default (pass).
        assert_eq!(subscribe(&acl, "42", "public:lobby"), Pass);
    }

    #[test]
    fn no_matching_rule_passes_by_default() {
        let acl = acl(EXAMPLE);
        assert_eq!(subscribe(&acl, "42", "chat:room"), Pass);
        assert_eq!(client_publish(&acl, "42", "chat:room"), Pass);
        assert_eq!(access(&acl, AccessKind::Presence, "42", "chat:room"), Pass);
    }

    #[test]
    fn default_deny_refuses_everything_unmatched() {
        let acl = acl(r#"{ "default": "deny",
            "rules": [{ "pattern": "chat:*", "actions": ["subscribe"], "effect": "allow" }] }"#);
        assert_eq!(subscribe(&acl, "", "chat:room"), Allow);
        assert_eq!(subscribe(&acl, "", "other"), denied());
        assert_eq!(client_publish(&acl, "7", "chat:room"), denied());
        assert_eq!(
            access(&acl, AccessKind::History, "7", "chat:room"),
            denied()
        );
        // Trusted sources are never checked, even under default deny.
        assert_eq!(publish(&acl, PublishSource::Api, "", "other"), Pass);
    }

    #[test]
    fn nobody_publishes_news_except_editors() {
        let acl = acl(EXAMPLE);
        assert_eq!(client_publish(&acl, "42", "news:today"), denied());
        assert_eq!(client_publish(&acl, "", "news:today"), denied());
        // An allowed publish passes: the namespace configuration must still permit it.
        assert_eq!(client_publish(&acl, "editor-1", "news:today"), Pass);
    }

    #[test]
    fn api_and_queue_publications_are_not_checked() {
        let acl = acl(EXAMPLE);
        assert_eq!(publish(&acl, PublishSource::Api, "", "news:today"), Pass);
        assert_eq!(publish(&acl, PublishSource::Queue, "", "news:today"), Pass);
    }

    #[test]
    fn a_client_publish_without_publisher_counts_as_anonymous() {
        let acl = acl(r#"{ "rules": [
            { "pattern": "*", "actions": ["publish"], "who": "anonymous", "effect": "deny" }
        ] }"#);
        // Herald never sends this (the builder always gives a client publication a publisher).
        let verdict = acl.on_publish(&PublishRequest {
            publisher: None,
            ..PublishRequest::new("chat", "").source(PublishSource::Client)
        });
        assert_eq!(
            verdict,
            PublishVerdict::Deny(deny(codes::PERMISSION_DENIED, "permission denied"))
        );
    }

    #[test]
    fn history_and_presence_follow_their_own_actions() {
        let acl = acl(EXAMPLE);
        assert_eq!(access(&acl, AccessKind::History, "42", "user:#42"), Allow);
        assert_eq!(access(&acl, AccessKind::Presence, "42", "user:#42"), Allow);
        assert_eq!(
            access(&acl, AccessKind::History, "42", "user:#43"),
            denied()
        );
        // Anonymous may read public history; presence is not granted and falls to the default.
        assert_eq!(access(&acl, AccessKind::History, "", "public:lobby"), Allow);
        assert_eq!(access(&acl, AccessKind::Presence, "", "public:lobby"), Pass);
    }

    #[test]
    fn first_matching_rule_wins() {
        let acl = acl(r#"{ "rules": [
            { "pattern": "chat:*", "actions": ["subscribe"], "effect": "deny" },
            { "pattern": "chat:open", "actions": ["subscribe"], "effect": "allow" }
        ] }"#);
        assert_eq!(subscribe(&acl, "1", "chat:open"), denied());
    }

    #[test]
    fn a_star_in_a_user_id_is_not_a_wildcard() {
        let acl = acl(r#"{ "rules": [
            { "pattern": "private:{user}", "actions": ["subscribe"], "effect": "allow" }
        ] }"#);
        assert_eq!(subscribe(&acl, "*", "private:*"), Allow);
        assert_eq!(subscribe(&acl, "*", "private:alice"), Pass);
        assert_eq!(subscribe(&acl, "a*", "private:abc"), Pass);
    }

    #[test]
    fn patterns() {
        let m = |pattern: &str, channel: &str, user: &str| {
            pattern_matches(&compile(pattern), channel, user)
        };
        assert!(m("chat:*", "chat:room", ""));
        assert!(m("chat:*", "chat:", ""));
        assert!(!m("chat:*", "news:room", ""));
        assert!(m("*:public", "a:b:public", ""));
        assert!(m("a*b*c", "axxbyyc", ""));
        assert!(!m("a*b*c", "axxc", ""));
        assert!(!m("ab*ba", "aba", ""));
        assert!(!m("exact", "exactly", ""));
        assert!(m("*", "", ""));
        assert!(m("dm:{user}:*", "dm:7:inbox", "7"));
        assert!(!m("dm:{user}:*", "dm:77:inbox", "7"));
        assert!(m("{user}", "ünï", "ünï"));
        assert!(m("çhät:*", "çhät:ü", ""));
        assert!(!m("çhät:*", "chat:u", ""));
        // A lone brace or an unknown placeholder is literal text.
        assert!(m("a{b}", "a{b}", ""));
        assert!(m("a{user", "a{user", ""));
    }

    #[test]
    fn refresh_is_checked_like_subscribe() {
        let acl = acl(EXAMPLE);
        assert_eq!(
            subscribe_outcome(
                acl.on_subscribe(&SubscribeRequest::new("user:#43").user("42").refresh(true))
            ),
            denied()
        );
        assert_eq!(
            subscribe_outcome(
                acl.on_subscribe(&SubscribeRequest::new("user:#42").user("42").refresh(true))
            ),
            Allow
        );
    }

    #[test]
    fn empty_config_passes_everything() {
        let acl = acl("");
        assert_eq!(subscribe(&acl, "", "anything"), Pass);
        assert_eq!(client_publish(&acl, "", "anything"), Pass);
        assert_eq!(access(&acl, AccessKind::History, "", "anything"), Pass);
    }

    #[test]
    fn bad_configs_are_rejected_with_the_rule_named() {
        let rule = |fields: &str| {
            init_error(&format!(
                r#"{{ "rules": [{{ "pattern": "a", {fields} }}] }}"#
            ))
        };
        assert!(
            init_error(
                r#"{ "rules": [{ "pattern": "", "actions": ["subscribe"], "effect": "allow" }] }"#
            )
            .contains("rules[0].pattern")
        );
        assert!(rule(r#""actions": [], "effect": "allow""#).contains("rules[0].actions"));
        assert!(rule(r#""actions": ["read"], "effect": "allow""#).contains("read"));
        assert!(rule(r#""actions": ["publish"], "effect": "maybe""#).contains("maybe"));
        assert!(rule(r#""actions": ["publish"]"#).contains("effect"));
        assert!(rule(r#""actions": ["publish"], "effect": "deny", "users": []"#).contains("users"));
        assert!(
            rule(r#""actions": ["publish"], "effect": "deny", "users": ["x"], "who": "anonymous""#)
                .contains("users")
        );
        assert!(
            rule(r#""actions": ["publish"], "effect": "deny", "whom": "anyone""#).contains("whom")
        );
        // Typos are errors rather than silently ignored keys.
        assert!(init_error(r#"{ "rule": [] }"#).contains("rule"));
        assert!(init_error(r#"{ "default": "allow" }"#).contains("allow"));
    }
}
