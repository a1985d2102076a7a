//! `[log]`: how Herald writes its log — human text or one JSON object per line — and at which level;
//! [`install`] sets up the process's tracing subscriber from it.
//!
//! The level is an `EnvFilter` directive (`info`, `warn,herald::plugin=debug`), taken from `RUST_LOG` when
//! that is set (the Rust convention, handy for a one-off run) and from `log.level` otherwise (so
//! `HERALD_LOG__LEVEL` works like every other key). Text carries colour only on a terminal.

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

/// The `[log]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// What to log: a level (`error`, `warn`, `info`, `debug`, `trace`) or filter directives
    /// (`info,herald::plugin=debug`). `RUST_LOG`, when set, wins (default `info`).
    pub level: String,
    /// `text` (for people) or `json` (one object per line for a log collector); `--log-format` wins
    /// (default `text`).
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `2026-12-05T17:20:01.123Z  INFO herald::server: herald listening address=…`.
    Text,
    /// `{"timestamp":"…","level":"INFO","target":"herald::server","message":"herald listening","address":"…"}`:
    /// the event's fields at the top level beside those four, which every line has.
    Json,
}

/// Why `[log]` is refused.
#[derive(Debug, thiserror::Error)]
pub enum LogConfigError {
    /// `log.level` does not parse as filter directives.
    #[error("log.level: {0}")]
    Level(String),
}

impl LogConfig {
    /// Checks that the level parses.
    pub fn validate(&self) -> Result<(), LogConfigError> {
        EnvFilter::builder()
            .parse(&self.level)
            .map(drop)
            .map_err(|error| LogConfigError::Level(error.to_string()))
    }

    /// The filter in force: `RUST_LOG` when it is set and parses, else `log.level`, else `info`.
    fn filter(&self, rust_log: Option<&str>) -> EnvFilter {
        rust_log
            .filter(|value| !value.trim().is_empty())
            .and_then(|value| EnvFilter::builder().parse(value).ok())
            .or_else(|| EnvFilter::builder().parse(&self.level).ok())
            .unwrap_or_else(|| EnvFilter::new("info"))
    }
}

/// Installs the global subscriber writing to standard error; colour only when `stderr_is_terminal` and
/// `NO_COLOR` is unset or empty (<https://no-color.org>). Called once, by the binary.
pub fn install(config: &LogConfig, stderr_is_terminal: bool) {
    let filter = config.filter(std::env::var("RUST_LOG").ok().as_deref());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.format {
        LogFormat::Text => builder
            .with_ansi(colours(
                stderr_is_terminal,
                std::env::var_os("NO_COLOR").as_deref(),
            ))
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}

/// Whether log lines carry ANSI colour codes: only on a terminal, where something renders them. Written to a
/// file, a pipe or a log collector (systemd, Docker, Kubernetes) they would be escape-code noise in every
/// line. `NO_COLOR` set to anything but the empty string turns them off on a terminal too.
fn colours(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|value| value.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(colours(true, None));
        assert!(colours(true, Some("".as_ref())));
        assert!(!colours(true, Some("1".as_ref())));
        assert!(!colours(false, None));
        assert!(!colours(false, Some("1".as_ref())));
    }

    #[test]
    fn a_level_that_does_not_parse_is_refused_naming_the_key() {
        let config = LogConfig {
            level: "info,herald=loud".into(),
            ..LogConfig::default()
        };
        let error = config.validate().unwrap_err().to_string();
        assert!(error.starts_with("log.level: "), "{error}");
        assert!(LogConfig::default().validate().is_ok());
    }

    #[test]
    fn rust_log_wins_over_the_configured_level_unless_empty_or_unparsable() {
        let config = LogConfig {
            level: "warn".into(),
            ..LogConfig::default()
        };
        assert_eq!(config.filter(None).to_string(), "warn");
        assert_eq!(config.filter(Some("debug")).to_string(), "debug");
        assert_eq!(config.filter(Some(" ")).to_string(), "warn");
        assert_eq!(config.filter(Some("=[")).to_string(), "warn");
    }
}
