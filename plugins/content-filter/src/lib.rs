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
//!    blocking "spam" leaves "antispam" alone; `false` matches anywhere inside words.
//!
//! ```toml
//! # In Herald's configuration. Or in a file beside the plugin with the same stem (`content-filter.toml`
//! # beside `content-filter.wasm`), holding these keys without the `plugins.config.content-filter` prefix.
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
//!
//! Inspection takes time in proportion to the data, and each hook call has a deadline (10 ms by default;
//! a call that overruns fails closed with error 100). Keep `max_size` at 64 KiB or below, or raise the
//! deadline for this plugin (`[plugins.limits.content-filter] deadline = "25ms"`).

use std::borrow::Cow;
use std::ops::Range;

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
    blocked_words: Vec<BlockedWord>,
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

use herald_sdk::SourceName as Source;

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

/// A blocked word, lowercased character by character exactly as the searched text is.
struct BlockedWord {
    folded: String,
    chars: Vec<char>,
}

impl BlockedWord {
    fn new(word: &str) -> Self {
        let chars: Vec<char> = word.chars().flat_map(char::to_lowercase).collect();
        BlockedWord {
            folded: chars.iter().collect(),
            chars,
        }
    }
}

/// `text` lowercased, when lowercasing maps every character to one character of the same UTF-8 length (so
/// byte offsets in the result are byte offsets in `text`): true of ASCII and nearly all real text.
fn fold_in_place(text: &str) -> Option<Cow<'_, str>> {
    if text.is_ascii() {
        // Most strings in a publication are short and already lower case: no copy for them.
        if !text.bytes().any(|b| b.is_ascii_uppercase()) {
            return Some(Cow::Borrowed(text));
        }
        return Some(Cow::Owned(text.to_ascii_lowercase()));
    }
    let mut folded = String::with_capacity(text.len());
    for c in text.chars() {
        // The common case first: the general lowercasing looks every character up in a table.
        if c.is_ascii() {
            folded.push(c.to_ascii_lowercase());
            continue;
        }
        let mut lower = c.to_lowercase();
        let first = lower.next()?;
        if lower.next().is_some() || first.len_utf8() != c.len_utf8() {
            return None;
        }
        folded.push(first);
    }
    Some(Cow::Owned(folded))
}

fn is_word_char(c: Option<char>) -> bool {
    c.is_some_and(char::is_alphanumeric)
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
    fn blocked_ranges(&self, text: &str) -> Vec<Range<usize>> {
        let mut found = match fold_in_place(text) {
            Some(folded) => self.occurrences_in_place(&folded),
            None => self.occurrences_shifted(text),
        };
        if self.whole_words {
            found.retain(|r| {
                !is_word_char(text[..r.start].chars().next_back())
                    && !is_word_char(text[r.end..].chars().next())
            });
        }
        found.sort_unstable_by_key(|r| (r.start, std::cmp::Reverse(r.end)));
        let mut taken_up_to = 0;
        found.retain(|r| {
            let free = r.start >= taken_up_to;
            if free {
                taken_up_to = r.end;
            }
            free
        });
        found
    }

    /// Every occurrence (overlapping ones too) of every word, when folding kept the offsets: a substring
    /// search per word, which is what keeps large publications within the hook's deadline.
    fn occurrences_in_place(&self, folded: &str) -> Vec<Range<usize>> {
        let mut found = Vec::new();
        for word in &self.blocked_words {
            let step = word.chars[0].len_utf8();
            let mut from = 0;
            while let Some(at) = folded[from..].find(&word.folded) {
                let start = from + at;
                found.push(start..start + word.folded.len());
                from = start + step;
            }
        }
        found
    }

    /// Every occurrence of every word when lowercasing changes lengths ("İ" becomes two characters):
    /// character by character, each folded character remembering where its original one starts.
    fn occurrences_shifted(&self, text: &str) -> Vec<Range<usize>> {
        let mut folded: Vec<(char, usize)> = Vec::with_capacity(text.len());
        for (at, c) in text.char_indices() {
            if c.is_ascii() {
                folded.push((c.to_ascii_lowercase(), at));
            } else {
                folded.extend(c.to_lowercase().map(|l| (l, at)));
            }
        }
        // A match must start and end on whole original characters.
        let on_char_boundary =
            |i: usize| i == 0 || i == folded.len() || folded[i - 1].1 != folded[i].1;
        let offset = |i: usize| folded.get(i).map_or(text.len(), |f| f.1);
        let mut found = Vec::new();
        for start in (0..folded.len()).filter(|&i| on_char_boundary(i)) {
            for word in &self.blocked_words {
                let end = start + word.chars.len();
                if end <= folded.len()
                    && on_char_boundary(end)
                    && folded[start..end]
                        .iter()
                        .map(|f| f.0)
                        .eq(word.chars.iter().copied())
                {
                    found.push(offset(start)..offset(end));
                }
            }
        }
        found
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
        let mut blocked_words = Vec::with_capacity(settings.blocked_words.len());
        for (index, word) in settings.blocked_words.iter().enumerate() {
            if word.trim().is_empty() {
                return Err(format!("blocked_words[{index}]: must not be empty"));
            }
            blocked_words.push(BlockedWord::new(word.trim()));
        }
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

    /// A verdict reduced to what the tests compare: a masked payload as JSON, so tests need not spell its
    /// bytes.
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
        // `source` after `user`: an API or queue publication has no publisher.
        let request = PublishRequest::new(channel, data)
            .user("42")
            .source(source)
            .tags([("k", "v")]);
        let verdict = filter.on_publish(&request);
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

    /// What Herald's load checks too: every hook implemented is listed in `HOOKS`.
    #[test]
    fn declares_every_hook_it_implements() {
        assert_eq!(herald_sdk::check_hooks(&filter("")), Ok(()));
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
        // The Kelvin sign (3 bytes) lowercases to a 1-byte "k".
        let f = filter(r#"{ "blocked_words": ["kill"], "on_blocked": "mask" }"#);
        assert_eq!(
            publish(&f, "{\"t\":\"\u{212A}ILL it, \u{212A}\"}"),
            masked(serde_json::json!({"t":"*** it, \u{212A}"}))
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
    fn overlapping_occurrences_are_all_considered() {
        // The occurrence at 1 is inside "xab"; the one at 4 overlaps it and is a whole phrase.
        let f = filter(r#"{ "blocked_words": ["ab ab"], "on_blocked": "mask" }"#);
        assert_eq!(
            publish(&f, r#"["xab ab ab"]"#),
            masked(serde_json::json!(["xab ***"]))
        );
        let f =
            filter(r#"{ "blocked_words": ["aa"], "on_blocked": "mask", "whole_words": false }"#);
        assert_eq!(
            publish(&f, r#"["aaaaa"]"#),
            masked(serde_json::json!(["******a"]))
        );
    }

    #[test]
    fn the_fast_and_the_general_search_agree() {
        let f = filter(
            r#"{ "blocked_words": ["spam", "ünï", "Straße", "aa", "buy now"], "whole_words": false }"#,
        );
        for text in [
            "",
            "SPAM spam Spam",
            "aaaa",
            "ÜNÏ ünï Ünï",
            "STRASSE straße",
            "buy now buy  now",
            "ÀÉÎ spam",
        ] {
            let folded = fold_in_place(text).expect("lowercasing keeps these lengths");
            let mut fast = f.occurrences_in_place(&folded);
            let mut general = f.occurrences_shifted(text);
            fast.sort_by_key(|r| (r.start, r.end));
            general.sort_by_key(|r| (r.start, r.end));
            assert_eq!(fast, general, "{text}");
        }
        assert!(fold_in_place("İ").is_none() && fold_in_place("\u{212A}").is_none()); // İ and the Kelvin sign
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
