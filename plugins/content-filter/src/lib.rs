//! # content-filter: size limits, blocked words and required fields for publications
//!
//! Checks each publication (JSON data) on the channels it is configured for, in this order:
//!
//! 1. **Size**: data longer than `max_size` bytes is refused (`400 publication too large`) or, with
//!    `on_too_large = "drop"`, silently discarded.
//! 2. **JSON**: when blocked words or required fields are configured, data that is not JSON is refused
//!    (`400 publication is not JSON`).
//! 3. **Required fields**: every JSON pointer in `required_fields` must exist in the data (a `null` value
//!    counts as present), otherwise `400 missing field /text`.
//! 4. **Blocked words**: looked for, case-insensitively, in every string value of the data (object keys are
//!    not inspected). `on_blocked` says what happens on a hit: `"reject"` refuses (`400 blocked content`),
//!    `"drop"` discards silently, `"mask"` replaces each occurrence with `mask` and publishes the result.
//!    With `whole_words = true` (the default) a word only matches between non-alphanumeric characters, so
//!    blocking "ass" leaves "class" alone; `false` matches anywhere inside words.
//!
//! ```toml
//! # In Herald's configuration; or, without the `plugins.config.content-filter` prefix, in
//! # `content-filter.toml` beside `content-filter.wasm`.
//! [plugins.config.content-filter]
//! channels = ["chat:*", "comments:*"] # where the filter applies (`*` wildcard); default: every channel
//! sources = ["client"]                # "client" | "api" | "queue"; default: all three
//! max_size = 4096                     # bytes; default: no limit
//! on_too_large = "reject"             # "reject" | "drop"
//! blocked_words = ["spam", "buy now"]
//! on_blocked = "mask"                 # "reject" | "drop" | "mask"
//! mask = "***"                        # replacement for "mask"
//! whole_words = true
//! required_fields = ["/text"]         # JSON pointers
//! ```
//!
//! A masked publication is re-encoded from the parsed JSON: its meaning is kept, but whitespace is
//! compacted, object keys come out sorted, and numbers beyond 64-bit precision are rounded. Publications
//! without a hit are published byte for byte as sent.

use herald_sdk::pattern::glob;
use herald_sdk::{
    Config, Hooks, Plugin, PublishRequest, PublishSource, PublishVerdict, Transform, deny, json,
};
use serde::Deserialize;
use serde_json::Value;

/// Error code of every refusal: an application error (400–1999), as the reasons are the application's.
const REFUSED: u32 = 400;

/// The plugin, with its rules prepared at init.
pub struct ContentFilter {
    channels: Option<Vec<String>>,
    sources: Option<Vec<PublishSource>>,
    max_size: Option<usize>,
    on_too_large: OnTooLarge,
    /// Lowercased per character (as the text is), longest first so the longest word wins at a position.
    blocked_words: Vec<Vec<char>>,
    on_blocked: OnBlocked,
    mask: String,
    whole_words: bool,
    required_fields: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum OnTooLarge {
    Reject,
    Drop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum OnBlocked {
    Reject,
    Drop,
    Mask,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Source {
    Client,
    Api,
    Queue,
}

impl From<Source> for PublishSource {
    fn from(source: Source) -> Self {
        match source {
            Source::Client => PublishSource::Client,
            Source::Api => PublishSource::Api,
            Source::Queue => PublishSource::Queue,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    channels: Option<Vec<String>>,
    sources: Option<Vec<Source>>,
    max_size: Option<usize>,
    on_too_large: OnTooLarge,
    blocked_words: Vec<String>,
    on_blocked: OnBlocked,
    mask: String,
    whole_words: bool,
    required_fields: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            channels: None,
            sources: None,
            max_size: None,
            on_too_large: OnTooLarge::Reject,
            blocked_words: Vec::new(),
            on_blocked: OnBlocked::Reject,
            mask: "***".into(),
            whole_words: true,
            required_fields: Vec::new(),
        }
    }
}

/// Lowercases per character, the same way the searched text is folded, so both sides agree.
fn fold(text: &str) -> Vec<char> {
    text.chars().flat_map(char::to_lowercase).collect()
}

impl ContentFilter {
    fn applies_to(&self, request: &PublishRequest) -> bool {
        self.sources
            .as_ref()
            .is_none_or(|sources| sources.contains(&request.source))
            && self
                .channels
                .as_ref()
                .is_none_or(|patterns| patterns.iter().any(|p| glob(p, &request.channel)))
    }

    /// Byte ranges of the blocked words in `text`: leftmost first, longest at a position, not overlapping.
    fn blocked_ranges(&self, text: &str) -> Vec<std::ops::Range<usize>> {
        // Each folded character remembers where its original character starts: lowercasing can change a
        // character's length (and count), and the ranges must point into the original text.
        let folded: Vec<(char, usize)> = text
            .char_indices()
            .flat_map(|(at, c)| c.to_lowercase().map(move |l| (l, at)))
            .collect();
        // A match must start and end on whole original characters.
        let on_char_boundary =
            |i: usize| i == 0 || i == folded.len() || folded[i - 1].1 != folded[i].1;
        let offset = |i: usize| folded.get(i).map_or(text.len(), |f| f.1);
        let is_word_char = |c: Option<char>| c.is_some_and(char::is_alphanumeric);

        let mut ranges = Vec::new();
        let mut i = 0;
        'scan: while i < folded.len() {
            if on_char_boundary(i) {
                for word in &self.blocked_words {
                    let end = i + word.len();
                    if end > folded.len()
                        || !on_char_boundary(end)
                        || !folded[i..end].iter().map(|f| f.0).eq(word.iter().copied())
                    {
                        continue;
                    }
                    let range = offset(i)..offset(end);
                    if self.whole_words
                        && (is_word_char(text[..range.start].chars().next_back())
                            || is_word_char(text[range.end..].chars().next()))
                    {
                        continue;
                    }
                    ranges.push(range);
                    i = end;
                    continue 'scan;
                }
            }
            i += 1;
        }
        ranges
    }

    fn contains_blocked(&self, value: &Value) -> bool {
        match value {
            Value::String(text) => !self.blocked_ranges(text).is_empty(),
            Value::Array(items) => items.iter().any(|v| self.contains_blocked(v)),
            Value::Object(fields) => fields.values().any(|v| self.contains_blocked(v)),
            Value::Null | Value::Bool(_) | Value::Number(_) => false,
        }
    }

    /// Masks blocked words in every string of `value`; whether anything changed.
    fn mask_blocked(&self, value: &mut Value) -> bool {
        match value {
            Value::String(text) => {
                let ranges = self.blocked_ranges(text);
                if ranges.is_empty() {
                    return false;
                }
                let mut masked = String::with_capacity(text.len());
                let mut copied_up_to = 0;
                for range in ranges {
                    masked.push_str(&text[copied_up_to..range.start]);
                    masked.push_str(&self.mask);
                    copied_up_to = range.end;
                }
                masked.push_str(&text[copied_up_to..]);
                *text = masked;
                true
            }
            // Every element is visited (no short-circuit): all occurrences are masked.
            Value::Array(items) => items
                .iter_mut()
                .fold(false, |changed, v| self.mask_blocked(v) | changed),
            Value::Object(fields) => fields
                .values_mut()
                .fold(false, |changed, v| self.mask_blocked(v) | changed),
            Value::Null | Value::Bool(_) | Value::Number(_) => false,
        }
    }

    fn refuse(reason: impl Into<String>) -> PublishVerdict {
        PublishVerdict::Deny(deny(REFUSED, reason))
    }
}

impl Plugin for ContentFilter {
    const NAME: &'static str = "content-filter";
    const VERSION: &'static str = "1.0.0";
    const HOOKS: Hooks = Hooks::PUBLISH;

    fn init(config: Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        if settings.channels.as_ref().is_some_and(Vec::is_empty) {
            return Err(
                "channels: an empty list filters nothing; omit it to filter every channel".into(),
            );
        }
        if settings.sources.as_ref().is_some_and(Vec::is_empty) {
            return Err(
                "sources: an empty list filters nothing; omit it to filter every source".into(),
            );
        }
        let mut blocked_words: Vec<Vec<char>> = Vec::with_capacity(settings.blocked_words.len());
        for (index, word) in settings.blocked_words.iter().enumerate() {
            let word = fold(word.trim());
            if word.is_empty() {
                return Err(format!("blocked_words[{index}]: must not be empty"));
            }
            blocked_words.push(word);
        }
        blocked_words.sort_by_key(|word| std::cmp::Reverse(word.len()));
        for (index, field) in settings.required_fields.iter().enumerate() {
            if !field.starts_with('/') {
                return Err(format!(
                    "required_fields[{index}]: `{field}` is not a JSON pointer (write \"/{field}\")"
                ));
            }
        }
        Ok(ContentFilter {
            channels: settings.channels,
            sources: settings
                .sources
                .map(|s| s.into_iter().map(PublishSource::from).collect()),
            max_size: settings.max_size,
            on_too_large: settings.on_too_large,
            blocked_words,
            on_blocked: settings.on_blocked,
            mask: settings.mask,
            whole_words: settings.whole_words,
            required_fields: settings.required_fields,
        })
    }

    fn on_publish(&self, request: &PublishRequest) -> PublishVerdict {
        if !self.applies_to(request) {
            return PublishVerdict::Pass;
        }
        if self.max_size.is_some_and(|max| request.data.len() > max) {
            return match self.on_too_large {
                OnTooLarge::Reject => Self::refuse("publication too large"),
                OnTooLarge::Drop => PublishVerdict::Drop,
            };
        }
        if self.blocked_words.is_empty() && self.required_fields.is_empty() {
            return PublishVerdict::Pass;
        }
        let Ok(mut data) = json::value(&request.data) else {
            return Self::refuse("publication is not JSON");
        };
        if let Some(missing) = self
            .required_fields
            .iter()
            .find(|f| data.pointer(f).is_none())
        {
            return Self::refuse(format!("missing field {missing}"));
        }
        if self.blocked_words.is_empty() {
            return PublishVerdict::Pass;
        }
        match self.on_blocked {
            OnBlocked::Reject if self.contains_blocked(&data) => Self::refuse("blocked content"),
            OnBlocked::Drop if self.contains_blocked(&data) => PublishVerdict::Drop,
            OnBlocked::Mask if self.mask_blocked(&mut data) => {
                PublishVerdict::Transform(Transform {
                    data: Some(json::encode(&data)),
                    tags: None,
                })
            }
            _ => PublishVerdict::Pass,
        }
    }
}

herald_sdk::export!(ContentFilter);

#[cfg(test)]
mod tests {
    use super::*;
    use herald_sdk::ClientInfo;

    /// A verdict reduced to what the tests compare (the SDK's verdicts have no `PartialEq`).
    #[derive(Debug, PartialEq)]
    enum Outcome {
        Pass,
        Drop,
        Deny(String),
        /// Data replaced (tags untouched), as JSON.
        Masked(Value),
    }
    use Outcome::{Drop, Pass};

    fn refused(reason: &str) -> Outcome {
        Outcome::Deny(reason.into())
    }

    fn masked(value: Value) -> Outcome {
        Outcome::Masked(value)
    }

    fn filter(config: &str) -> ContentFilter {
        ContentFilter::init(Config::from_json(config).unwrap()).unwrap()
    }

    fn init_error(config: &str) -> String {
        match ContentFilter::init(Config::from_json(config).unwrap()) {
            Ok(_) => panic!("config accepted: {config}"),
            Err(e) => e,
        }
    }

    fn publish_from(
        filter: &ContentFilter,
        source: PublishSource,
        channel: &str,
        data: &[u8],
    ) -> Outcome {
        let verdict = filter.on_publish(&PublishRequest {
            source,
            publisher: (source == PublishSource::Client).then(|| ClientInfo {
                user: "42".into(),
                client: "c1".into(),
                info: None,
            }),
            channel: channel.into(),
            data: data.to_vec(),
            tags: vec![("k".into(), "v".into())],
        });
        match verdict {
            PublishVerdict::Pass => Pass,
            PublishVerdict::Drop => Drop,
            PublishVerdict::Deny(d) => {
                assert_eq!(d.code, 400);
                Outcome::Deny(d.reason)
            }
            PublishVerdict::Transform(Transform {
                data: Some(data),
                tags: None,
            }) => Outcome::Masked(serde_json::from_slice(&data).expect("masked data stays JSON")),
            other => panic!("unexpected verdict {other:?}"),
        }
    }

    fn publish(filter: &ContentFilter, data: &str) -> Outcome {
        publish_from(filter, PublishSource::Client, "chat:room", data.as_bytes())
    }

    fn words(on_blocked: &str) -> ContentFilter {
        filter(&format!(
            r#"{{ "blocked_words": ["spam", "Buy Now"], "on_blocked": "{on_blocked}" }}"#
        ))
    }

    #[test]
    fn an_empty_config_passes_everything() {
        let f = filter("");
        assert_eq!(publish(&f, r#"{"text":"spam"}"#), Pass);
        // Without content rules the data is not even parsed.
        assert_eq!(publish(&f, "not json"), Pass);
    }

    #[test]
    fn oversized_publications_are_rejected_or_dropped() {
        let reject = filter(r#"{ "max_size": 10 }"#);
        assert_eq!(publish(&reject, r#"{"a":"12"}"#), Pass); // exactly 10 bytes
        assert_eq!(
            publish(&reject, r#"{"a":"123"}"#),
            refused("publication too large")
        );
        let drop = filter(r#"{ "max_size": 10, "on_too_large": "drop" }"#);
        assert_eq!(publish(&drop, r#"{"a":"123"}"#), Drop);
        // Size alone needs no JSON.
        assert_eq!(publish(&drop, "raw"), Pass);
    }

    #[test]
    fn blocked_words_reject_case_insensitively() {
        let f = words("reject");
        assert_eq!(
            publish(&f, r#"{"text":"this is SPAM!"}"#),
            refused("blocked content")
        );
        assert_eq!(
            publish(&f, r#"{"text":"please buy now"}"#),
            refused("blocked content")
        );
        assert_eq!(publish(&f, r#"{"text":"hello"}"#), Pass);
        // Nested strings are inspected; escapes are decoded before matching.
        assert_eq!(
            publish(&f, r#"{"a":[1,{"b":"sp\u0061m"}]}"#),
            refused("blocked content")
        );
        assert_eq!(publish(&f, r#""spam""#), refused("blocked content"));
        // Keys, numbers and booleans are not content.
        assert_eq!(publish(&f, r#"{"spam":true}"#), Pass);
    }

    #[test]
    fn blocked_words_drop() {
        let f = words("drop");
        assert_eq!(publish(&f, r#"{"text":"spam"}"#), Drop);
        assert_eq!(publish(&f, r#"{"text":"ham"}"#), Pass);
    }

    #[test]
    fn whole_words_only_by_default() {
        let f = words("reject");
        assert_eq!(publish(&f, r#"{"text":"antispam filter"}"#), Pass);
        assert_eq!(publish(&f, r#"{"text":"spammer"}"#), Pass);
        assert_eq!(
            publish(&f, r#"{"text":"(spam)"}"#),
            refused("blocked content")
        );
        let anywhere = filter(r#"{ "blocked_words": ["spam"], "whole_words": false }"#);
        assert_eq!(
            publish(&anywhere, r#"{"text":"antispam"}"#),
            refused("blocked content")
        );
    }

    #[test]
    fn masking_replaces_every_occurrence_and_keeps_json_valid() {
        let f = words("mask");
        assert_eq!(
            publish(
                &f,
                r#"{"text":"Spam, spam and \"SPAM\"","n":1,"list":["buy now!","ok"]}"#
            ),
            masked(serde_json::json!({"text":"***, *** and \"***\"","n":1,"list":["***!","ok"]}))
        );
        // No hit: the data is published untouched.
        assert_eq!(publish(&f, r#"{"text":"fine"}"#), Pass);
    }

    #[test]
    fn masking_with_a_custom_mask() {
        let f =
            filter(r#"{ "blocked_words": ["spam"], "on_blocked": "mask", "mask": "[removed]" }"#);
        assert_eq!(
            publish(&f, r#"["spam"]"#),
            masked(serde_json::json!(["[removed]"]))
        );
    }

    #[test]
    fn matching_survives_case_folding_that_changes_lengths() {
        // "İ" (2 bytes) lowercases to "i̇" (two characters); ranges must still point into the original.
        let f = filter(r#"{ "blocked_words": ["straße"], "on_blocked": "mask" }"#);
        assert_eq!(
            publish(&f, r#"{"t":"İ STRASSE Straße İ"}"#),
            masked(serde_json::json!({"t":"İ STRASSE *** İ"}))
        );
        let f = filter(r#"{ "blocked_words": ["ünï"], "on_blocked": "mask" }"#);
        assert_eq!(
            publish(&f, r#"{"t":"ÜNÏ-x"}"#),
            masked(serde_json::json!({"t":"***-x"}))
        );
    }

    #[test]
    fn the_longest_word_wins_at_a_position() {
        let f = filter(r#"{ "blocked_words": ["buy", "buy now"], "on_blocked": "mask" }"#);
        assert_eq!(
            publish(&f, r#"{"t":"buy now, buy"}"#),
            masked(serde_json::json!({"t":"***, ***"}))
        );
    }

    #[test]
    fn required_fields_must_exist() {
        let f = filter(r#"{ "required_fields": ["/text", "/meta/id"] }"#);
        assert_eq!(publish(&f, r#"{"text":"hi","meta":{"id":null}}"#), Pass);
        assert_eq!(
            publish(&f, r#"{"meta":{"id":1}}"#),
            refused("missing field /text")
        );
        assert_eq!(
            publish(&f, r#"{"text":"hi"}"#),
            refused("missing field /meta/id")
        );
        assert_eq!(publish(&f, r#"[1]"#), refused("missing field /text"));
    }

    #[test]
    fn non_json_is_refused_when_content_is_inspected() {
        assert_eq!(
            publish(&words("mask"), "spam"),
            refused("publication is not JSON")
        );
        let f = filter(r#"{ "required_fields": ["/text"] }"#);
        assert_eq!(publish(&f, ""), refused("publication is not JSON"));
    }

    #[test]
    fn checks_run_in_order_size_then_fields_then_words() {
        let f = filter(
            r#"{ "max_size": 20, "required_fields": ["/text"], "blocked_words": ["spam"], "on_blocked": "mask" }"#,
        );
        assert_eq!(
            publish(&f, r#"{"other":"spam spam spam"}"#),
            refused("publication too large")
        );
        assert_eq!(
            publish(&f, r#"{"other":"spam"}"#),
            refused("missing field /text")
        );
        assert_eq!(
            publish(&f, r#"{"text":"spam"}"#),
            masked(serde_json::json!({"text":"***"}))
        );
    }

    #[test]
    fn channels_and_sources_limit_where_the_filter_applies() {
        let f = filter(
            r#"{ "channels": ["chat:*"], "sources": ["client"], "blocked_words": ["spam"] }"#,
        );
        let spam = br#"{"t":"spam"}"#;
        assert_eq!(
            publish_from(&f, PublishSource::Client, "chat:room", spam),
            refused("blocked content")
        );
        assert_eq!(publish_from(&f, PublishSource::Client, "news", spam), Pass);
        assert_eq!(
            publish_from(&f, PublishSource::Api, "chat:room", spam),
            Pass
        );
        assert_eq!(
            publish_from(&f, PublishSource::Queue, "chat:room", spam),
            Pass
        );
    }

    #[test]
    fn bad_configs_are_rejected() {
        assert!(init_error(r#"{ "blocked_words": [" "] }"#).contains("blocked_words[0]"));
        assert!(init_error(r#"{ "required_fields": ["text"] }"#).contains("\"/text\""));
        assert!(init_error(r#"{ "on_blocked": "censor" }"#).contains("censor"));
        assert!(init_error(r#"{ "on_too_large": "mask" }"#).contains("mask"));
        assert!(init_error(r#"{ "channels": [] }"#).contains("channels"));
        assert!(init_error(r#"{ "sources": ["http"] }"#).contains("http"));
        init_error(r#"{ "max_size": -1 }"#);
        assert!(init_error(r#"{ "blocked_word": ["x"] }"#).contains("blocked_word"));
    }
}
#[cfg(test)]
mod scratch_bench {
    use super::*;
    #[test]
    #[ignore]
    fn bench() {
        let f = ContentFilter::init(
            Config::from_json(r#"{"blocked_words":["spam"],"on_blocked":"mask"}"#).unwrap(),
        )
        .unwrap();
        let text = "hello world spam, İstanbul straße ".repeat(3000);
        let data = serde_json::to_vec(&serde_json::json!({"text": text})).unwrap();
        let req = PublishRequest {
            source: PublishSource::Api,
            publisher: None,
            channel: "c".into(),
            data: data.clone(),
            tags: vec![],
        };
        for _ in 0..3 {
            let t = std::time::Instant::now();
            let v: Value = json::value(&data).unwrap();
            let t1 = t.elapsed();
            let r = f.blocked_ranges(v.as_str().unwrap_or(&text));
            let t2 = t.elapsed();
            let _ = f.on_publish(&req);
            let t3 = t.elapsed();
            eprintln!(
                "parse {t1:?} ranges {:?} ({}) full {:?}",
                t2 - t1,
                r.len(),
                t3 - t2
            );
        }
    }
}
