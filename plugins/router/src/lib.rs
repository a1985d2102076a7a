//! # router: deliver publications to channels derived from their data or tags
//!
//! Each rule applies to publications on the channels matching `from` (`*` wildcard) and names target
//! channels in one of three ways:
//!
//! - **by a data field**: `field` is a JSON pointer into the publication's data; its value fills `{value}` in
//!   the `to` templates. A string or a number is one value; an array of strings and numbers is one value
//!   per element (fan-out to several users).
//! - **by a tag**: `tag` names a publication tag whose value fills `{value}`.
//! - **statically**: neither `field` nor `tag`; `to` lists fixed channels (a copy of every publication).
//!
//! Instead of (or beside) `to` templates, `map` picks channels by the value: `{ critical = ["oncall"] }`.
//!
//! Every matching rule contributes; the publication goes to the union of their channels, plus its original
//! channel when any contributing rule has `keep_original = true` (the default). A rule whose field or tag is
//! missing, of another type, or whose value is unusable contributes nothing; when no rule contributes the
//! publication passes unchanged.
//!
//! ```toml
//! # In Herald's configuration. Or in a file beside the plugin with the same stem (`router.toml`
//! # beside `router.wasm`), holding these keys without the `plugins.config.router` prefix.
//! [plugins.config.router]
//! max_channels = 64              # more targets than this refuses the publication (400)
//!
//! # An order event also reaches its customer's personal channel.
//! [[plugins.config.router.rules]]
//! from = "orders"
//! field = "/user_id"             # {"user_id": 42, ...} → user:#42
//! to = "user:#{value}"           # one template, or a list
//! keep_original = true
//!
//! # Alerts fan out to their region's channel...
//! [[plugins.config.router.rules]]
//! from = "alerts"
//! tag = "region"                 # tag region=eu → alerts:eu
//! to = "alerts:{value}"
//!
//! # ...and critical ones also page the on-call channel.
//! [[plugins.config.router.rules]]
//! from = "alerts"
//! tag = "severity"
//! map = { critical = ["oncall:pager", "ops:alerts"], warning = "ops:alerts" }
//!
//! # Drafts the backend publishes are moved to the archive, not copied.
//! [[plugins.config.router.rules]]
//! from = "drafts:*"
//! to = "archive:drafts"
//! keep_original = false
//! sources = ["api"]              # "client" | "api" | "queue"; default all three
//! ```
//!
//! Values come from publishers, so a value that could change a channel's meaning is not used: empty, or
//! containing whitespace, control characters or any of `: # , * $ { }` (namespace, user-limited channel and
//! private channel syntax) — `{"user_id": "1,2"}` must not reach `user:#1,2`. Routed publications are not
//! checked by the channel ACL of their new channels: route client publications only where that is intended.

use std::collections::{BTreeMap, BTreeSet};

use herald_sdk::pattern::glob;
use herald_sdk::{
    Config, Hooks, Level, Plugin, PublishRequest, PublishSource, PublishVerdict, Route, deny, json,
    log,
};
use serde::Deserialize;
use serde_json::Value;

/// Placeholder in `to` templates.
const VALUE: &str = "{value}";

/// Characters that carry meaning in channel names: a value containing one is not routed.
const FORBIDDEN_IN_VALUES: &[char] = &[':', '#', ',', '*', '$', '{', '}'];

/// The plugin: rules in configuration order.
pub struct Router {
    rules: Vec<Rule>,
    max_channels: usize,
}

use herald_sdk::SourceName as Source;

/// A single string or a list of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    rules: Vec<RuleSettings>,
    #[serde(default = "default_max_channels")]
    max_channels: usize,
}

fn default_max_channels() -> usize {
    64
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSettings {
    from: String,
    field: Option<String>,
    tag: Option<String>,
    to: Option<OneOrMany>,
    map: Option<BTreeMap<String, OneOrMany>>,
    #[serde(default = "yes")]
    keep_original: bool,
    sources: Option<Vec<Source>>,
}

fn yes() -> bool {
    true
}

/// Where a rule's value comes from.
enum Key {
    Field(String),
    Tag(String),
    /// Static rule: no value.
    None,
}

struct Rule {
    from: String,
    key: Key,
    to: Vec<String>,
    map: BTreeMap<String, Vec<String>>,
    keep_original: bool,
    sources: Option<Vec<PublishSource>>,
}

impl Rule {
    /// Validates one rule; errors start with the key at fault (`.field: ...`) or `: ` for the whole rule.
    fn new(rule: RuleSettings) -> Result<Self, String> {
        if rule.from.is_empty() {
            return Err(".from: must not be empty".into());
        }
        let key = match (rule.field, rule.tag) {
            (Some(_), Some(_)) => return Err(": give `field` or `tag`, not both".into()),
            (Some(field), None) if !field.starts_with('/') => {
                return Err(format!(
                    ".field: `{field}` is not a JSON pointer (write \"/{field}\")"
                ));
            }
            (Some(field), None) => Key::Field(field),
            (None, Some(tag)) if tag.is_empty() => return Err(".tag: must not be empty".into()),
            (None, Some(tag)) => Key::Tag(tag),
            (None, None) => Key::None,
        };
        let to = rule.to.map(OneOrMany::into_vec).unwrap_or_default();
        let map: BTreeMap<String, Vec<String>> = rule
            .map
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_vec()))
            .collect();
        if to.is_empty() && map.is_empty() {
            return Err(": give `to` or `map`: the channels to route to".into());
        }
        if to
            .iter()
            .chain(map.values().flatten())
            .any(String::is_empty)
        {
            return Err(": a target channel is empty".into());
        }
        if matches!(key, Key::None) {
            if to.iter().any(|t| t.contains(VALUE)) {
                return Err(".to: `{value}` needs a `field` or a `tag` to take it from".into());
            }
            if !map.is_empty() {
                return Err(".map: needs a `field` or a `tag` to look up".into());
            }
        }
        if rule.sources.as_ref().is_some_and(Vec::is_empty) {
            return Err(".sources: an empty list routes nothing; omit it for all sources".into());
        }
        Ok(Rule {
            from: rule.from,
            key,
            to,
            map,
            keep_original: rule.keep_original,
            sources: rule
                .sources
                .map(|s| s.into_iter().map(PublishSource::from).collect()),
        })
    }

    fn applies_to(&self, request: &PublishRequest) -> bool {
        self.sources
            .as_ref()
            .is_none_or(|s| s.contains(&request.source))
            && glob(&self.from, &request.channel)
    }

    /// The channels for one value: templates filled in, then the map's entry.
    fn channels_for<'a>(&'a self, value: &'a str) -> impl Iterator<Item = String> + 'a {
        let templated = self
            .to
            .iter()
            .map(move |template| template.replace(VALUE, value));
        templated.chain(self.map.get(value).into_iter().flatten().cloned())
    }
}

/// A usable value from a JSON field: strings and numbers as text, arrays element by element.
fn field_values(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Number(n) => vec![n.to_string()],
        Value::Array(items) => items
            .iter()
            .filter_map(|item| match item {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .collect(),
        Value::Null | Value::Bool(_) | Value::Object(_) => Vec::new(),
    }
}

fn is_safe_value(value: &str) -> bool {
    !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || FORBIDDEN_IN_VALUES.contains(&c))
}

impl Plugin for Router {
    const NAME: &'static str = "router";
    const VERSION: &'static str = "1.0.0";
    const HOOKS: Hooks = Hooks::PUBLISH;

    fn init(config: Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        if settings.max_channels == 0 {
            return Err("max_channels: must be at least 1".into());
        }
        let rules = settings
            .rules
            .into_iter()
            .enumerate()
            .map(|(index, rule)| Rule::new(rule).map_err(|e| format!("rules[{index}]{e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Router {
            rules,
            max_channels: settings.max_channels,
        })
    }

    fn on_publish(&self, request: &PublishRequest) -> PublishVerdict {
        // Parsed at most once, and only when a matching rule reads a field. `None` inside: not JSON.
        let mut data: Option<Option<Value>> = None;
        let mut targets = Targets::new(self.max_channels);
        let mut keep_original = false;
        let mut unusable = 0;

        for rule in self.rules.iter().filter(|rule| rule.applies_to(request)) {
            let values: Vec<String> = match &rule.key {
                Key::None => vec![String::new()],
                Key::Tag(tag) => request
                    .tags
                    .iter()
                    .filter(|(k, _)| k == tag)
                    .map(|(_, v)| v.clone())
                    .collect(),
                Key::Field(pointer) => {
                    let data = data.get_or_insert_with(|| json::value(&request.data).ok());
                    data.as_ref()
                        .and_then(|d| d.pointer(pointer))
                        .map(field_values)
                        .unwrap_or_default()
                }
            };
            let mut produced = false;
            for value in values {
                // A static rule's single empty value fills no placeholder (init made sure there is none).
                if !matches!(rule.key, Key::None) && !is_safe_value(&value) {
                    unusable += 1;
                    continue;
                }
                for channel in rule.channels_for(&value) {
                    produced = true;
                    if !targets.add(channel) {
                        return PublishVerdict::Deny(deny(400, "too many target channels"));
                    }
                }
            }
            keep_original |= produced && rule.keep_original;
        }

        if unusable > 0 {
            log(
                Level::Debug,
                &format!(
                    "{}: {unusable} value(s) unusable in a channel name",
                    request.channel
                ),
            );
        }
        if targets.channels.is_empty() {
            return PublishVerdict::Pass;
        }
        PublishVerdict::Route(Route {
            channels: targets.channels,
            keep_original,
        })
    }
}

/// The target channels of one publication, each once, in the order the rules name them.
struct Targets {
    channels: Vec<String>,
    seen: BTreeSet<String>,
    max: usize,
}

impl Targets {
    fn new(max: usize) -> Self {
        Targets {
            channels: Vec::new(),
            seen: BTreeSet::new(),
            max,
        }
    }

    /// Adds `channel` unless already there; false once there are more than allowed, so a huge array in a
    /// publication is refused as soon as it overflows rather than expanded in full.
    fn add(&mut self, channel: String) -> bool {
        if self.seen.insert(channel.clone()) {
            self.channels.push(channel);
        }
        self.channels.len() <= self.max
    }
}

herald_sdk::export!(Router);

#[cfg(test)]
mod tests {
    use super::*;

    /// The configuration of the module documentation, as Herald hands it over (JSON).
    const EXAMPLE: &str = r#"{
        "max_channels": 64,
        "rules": [
            { "from": "orders", "field": "/user_id", "to": "user:#{value}", "keep_original": true },
            { "from": "alerts", "tag": "region", "to": "alerts:{value}" },
            { "from": "alerts", "tag": "severity",
              "map": { "critical": ["oncall:pager", "ops:alerts"], "warning": "ops:alerts" } },
            { "from": "drafts:*", "to": "archive:drafts", "keep_original": false, "sources": ["api"] }
        ]
    }"#;

    /// A verdict reduced to what the tests compare: a route as its channels and `keep_original`.
    #[derive(Debug, PartialEq)]
    enum Outcome {
        Pass,
        Route(Vec<String>, bool),
        Deny(String),
    }
    use Outcome::Pass;

    fn routed(channels: &[&str], keep_original: bool) -> Outcome {
        Outcome::Route(
            channels.iter().map(|c| c.to_string()).collect(),
            keep_original,
        )
    }

    fn router(config: &str) -> Router {
        Router::init(Config::from_json(config).unwrap()).unwrap()
    }

    fn init_error(config: &str) -> String {
        match Router::init(Config::from_json(config).unwrap()) {
            Ok(_) => panic!("config accepted: {config}"),
            Err(e) => e,
        }
    }

    fn publish_full(
        router: &Router,
        source: PublishSource,
        channel: &str,
        data: &str,
        tags: &[(&str, &str)],
    ) -> Outcome {
        // `source` after `user`: an API or queue publication has no publisher.
        let request = PublishRequest::new(channel, data)
            .user("42")
            .source(source)
            .tags(tags.iter().copied());
        let verdict = router.on_publish(&request);
        match verdict {
            PublishVerdict::Pass => Pass,
            PublishVerdict::Route(route) => Outcome::Route(route.channels, route.keep_original),
            PublishVerdict::Deny(d) => {
                assert_eq!(d.code, 400);
                Outcome::Deny(d.reason)
            }
            other => panic!("the router only routes, passes or denies, got {other:?}"),
        }
    }

    fn publish(router: &Router, channel: &str, data: &str) -> Outcome {
        publish_full(router, PublishSource::Client, channel, data, &[])
    }

    fn publish_tagged(router: &Router, channel: &str, tags: &[(&str, &str)]) -> Outcome {
        publish_full(router, PublishSource::Api, channel, "{}", tags)
    }

    /// What Herald's load checks too: every hook implemented is listed in `HOOKS`.
    #[test]
    fn declares_every_hook_it_implements() {
        assert_eq!(herald_sdk::check_hooks(&router(EXAMPLE)), Ok(()));
    }

    #[test]
    fn routes_by_a_data_field() {
        let r = router(EXAMPLE);
        assert_eq!(
            publish(&r, "orders", r#"{"user_id":42,"total":10}"#),
            routed(&["user:#42"], true)
        );
        assert_eq!(
            publish(&r, "orders", r#"{"user_id":"alice"}"#),
            routed(&["user:#alice"], true)
        );
        // Other channels are untouched.
        assert_eq!(publish(&r, "orders:eu", r#"{"user_id":42}"#), Pass);
    }

    #[test]
    fn a_missing_or_unusable_field_passes() {
        let r = router(EXAMPLE);
        assert_eq!(publish(&r, "orders", r#"{"total":10}"#), Pass);
        assert_eq!(publish(&r, "orders", r#"{"user_id":null}"#), Pass);
        assert_eq!(publish(&r, "orders", r#"{"user_id":true}"#), Pass);
        assert_eq!(publish(&r, "orders", r#"{"user_id":{"id":1}}"#), Pass);
        assert_eq!(publish(&r, "orders", "not json"), Pass);
    }

    #[test]
    fn arrays_fan_out_to_each_element() {
        let r = router(EXAMPLE);
        assert_eq!(
            publish(&r, "orders", r#"{"user_id":[1,"b",null,1]}"#),
            routed(&["user:#1", "user:#b"], true)
        );
    }

    #[test]
    fn values_that_would_change_a_channel_are_not_used() {
        let r = router(EXAMPLE);
        for bad in [
            r#""1,2""#,
            r#""a:b""#,
            r#""*""#,
            r#""""#,
            r#""a b""#,
            r##""#1""##,
            r#""$x""#,
            r#""{value}""#,
        ] {
            assert_eq!(
                publish(&r, "orders", &format!(r#"{{"user_id":{bad}}}"#)),
                Pass,
                "{bad}"
            );
        }
        // The good elements of an array still route.
        assert_eq!(
            publish(&r, "orders", r#"{"user_id":["1,2","3"]}"#),
            routed(&["user:#3"], true)
        );
    }

    #[test]
    fn routes_by_tag_and_by_map_and_unions_the_rules() {
        let r = router(EXAMPLE);
        assert_eq!(
            publish_tagged(&r, "alerts", &[("region", "eu")]),
            routed(&["alerts:eu"], true)
        );
        assert_eq!(
            publish_tagged(&r, "alerts", &[("region", "eu"), ("severity", "critical")]),
            routed(&["alerts:eu", "oncall:pager", "ops:alerts"], true)
        );
        assert_eq!(
            publish_tagged(&r, "alerts", &[("severity", "warning")]),
            routed(&["ops:alerts"], true)
        );
        // A value the map does not list, or no tag at all: nothing to route.
        assert_eq!(publish_tagged(&r, "alerts", &[("severity", "info")]), Pass);
        assert_eq!(publish_tagged(&r, "alerts", &[]), Pass);
    }

    #[test]
    fn static_routes_and_sources() {
        let r = router(EXAMPLE);
        assert_eq!(
            publish_full(&r, PublishSource::Api, "drafts:1", "{}", &[]),
            routed(&["archive:drafts"], false)
        );
        // The rule is for the server API only.
        assert_eq!(
            publish_full(&r, PublishSource::Client, "drafts:1", "{}", &[]),
            Pass
        );
        assert_eq!(
            publish_full(&r, PublishSource::Queue, "drafts:1", "{}", &[]),
            Pass
        );
    }

    #[test]
    fn the_original_is_kept_when_any_contributing_rule_keeps_it() {
        let r = router(
            r#"{ "rules": [
                { "from": "a", "to": "moved", "keep_original": false },
                { "from": "a", "field": "/x", "to": "copy:{value}" },
                { "from": "a", "field": "/y", "to": "moved" }
            ] }"#,
        );
        assert_eq!(publish(&r, "a", "{}"), routed(&["moved"], false));
        assert_eq!(
            publish(&r, "a", r#"{"x":1}"#),
            routed(&["moved", "copy:1"], true)
        );
        // Duplicates across rules collapse; the third rule keeps the original (the default).
        assert_eq!(publish(&r, "a", r#"{"y":1}"#), routed(&["moved"], true));
    }

    #[test]
    fn templates_and_wildcards() {
        let r = router(
            r#"{ "rules": [
                { "from": "orders:*", "field": "/customer/id", "to": ["user:#{value}", "audit:{value}-{value}"] }
            ] }"#,
        );
        assert_eq!(
            publish(&r, "orders:eu", r#"{"customer":{"id":7.5}}"#),
            routed(&["user:#7.5", "audit:7.5-7.5"], true)
        );
    }

    #[test]
    fn too_many_targets_are_refused() {
        let r = router(
            r#"{ "max_channels": 2, "rules": [{ "from": "o", "field": "/u", "to": "user:#{value}" }] }"#,
        );
        assert_eq!(
            publish(&r, "o", r#"{"u":[1,2]}"#),
            routed(&["user:#1", "user:#2"], true)
        );
        assert_eq!(
            publish(&r, "o", r#"{"u":[1,2,3]}"#),
            Outcome::Deny("too many target channels".into())
        );
        // Repeated values are one target each.
        assert_eq!(
            publish(&r, "o", r#"{"u":[1,1,2,1,"1"]}"#),
            routed(&["user:#1", "user:#2"], true)
        );
        let huge: Vec<u32> = (0..100_000).collect();
        assert_eq!(
            publish(&r, "o", &serde_json::json!({ "u": huge }).to_string()),
            Outcome::Deny("too many target channels".into())
        );
    }

    #[test]
    fn an_empty_config_passes_everything() {
        assert_eq!(publish(&router(""), "orders", r#"{"user_id":1}"#), Pass);
    }

    #[test]
    fn bad_configs_are_rejected() {
        let rule = |fields: &str| init_error(&format!(r#"{{ "rules": [{{ {fields} }}] }}"#));
        assert!(rule(r#""from": "", "to": "x""#).contains("rules[0].from"));
        assert!(rule(r#""from": "a""#).contains("`to` or `map`"));
        assert!(rule(r#""from": "a", "field": "/x", "tag": "t", "to": "x""#).contains("not both"));
        assert!(rule(r#""from": "a", "field": "x", "to": "x""#).contains("\"/x\""));
        assert!(rule(r#""from": "a", "tag": "", "to": "x""#).contains("rules[0].tag"));
        assert!(rule(r#""from": "a", "to": "user:{value}""#).contains("{value}"));
        assert!(rule(r#""from": "a", "map": { "x": "y" }"#).contains("map"));
        assert!(rule(r#""from": "a", "to": ["ok", ""]"#).contains("empty"));
        assert!(rule(r#""from": "a", "to": "x", "sources": []"#).contains("sources"));
        assert!(rule(r#""from": "a", "to": "x", "sources": ["http"]"#).contains("http"));
        assert!(rule(r#""from": "a", "to": "x", "keep": true"#).contains("keep"));
        assert!(init_error(r#"{ "max_channels": 0 }"#).contains("max_channels"));
    }
}
