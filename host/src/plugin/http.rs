//! Outbound HTTP for plugins (`herald:plugin/http`, from 0.2): each plugin's permissions
//! (`[plugins.http.<name>]`: allowed URL prefixes, timeout, response size, requests in flight) and the
//! requests themselves, made on the async runtime while the plugin's instance waits suspended.
//!
//! Nothing is reachable by default: a plugin without a section, or a URL under none of its prefixes, gets
//! `not-allowed`. A prefix matches by scheme, host and port exactly and by path segments (an allowed
//! `https://api.example.com/auth` covers `/auth` and `/auth/x`, not `/authx` nor `api.example.com.evil`).
//! Redirects are not followed, so an allowed URL cannot send a request elsewhere. A request is bounded by
//! the plugin's timeout and by what is left of its hook's deadline, its response by the size limit.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use super::bindings::herald::plugin::http::{Error, Request, Response};

/// One plugin's `[plugins.http.<name>]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginHttpConfig {
    /// URL prefixes the plugin may request (`https://backend.internal/herald/`); none by default.
    pub allow: Vec<String>,
    /// How long one request may take, headers to the last body byte (default 2 s); the hook's deadline
    /// bounds it too.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Largest response body, in bytes (default 1 MiB).
    pub max_response_bytes: usize,
    /// Requests the plugin may have in flight at once over all its instances (default 64); more get
    /// `too-many-requests` at once.
    pub max_concurrent: usize,
}

impl Default for PluginHttpConfig {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            timeout: Duration::from_secs(2),
            max_response_bytes: 1024 * 1024,
            max_concurrent: 64,
        }
    }
}

impl PluginHttpConfig {
    /// Checks the prefixes and bounds; the error says what is wrong (the caller names the key).
    pub fn validate(&self) -> Result<(), String> {
        for prefix in &self.allow {
            Prefix::parse(prefix)?;
        }
        if self.timeout.is_zero() || self.max_concurrent == 0 {
            return Err("timeout and max_concurrent must be greater than 0".into());
        }
        Ok(())
    }
}

/// An allowed prefix, parsed.
#[derive(Debug, Clone)]
struct Prefix {
    scheme: String,
    host: String,
    port: Option<u16>,
    path: String,
}

impl Prefix {
    fn parse(text: &str) -> Result<Self, String> {
        let url = url::Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("{text:?} is not an http or https URL"));
        }
        let host = url
            .host_str()
            .ok_or_else(|| format!("{text:?} has no host"))?;
        Ok(Self {
            scheme: url.scheme().to_owned(),
            host: host.to_owned(),
            port: url.port_or_known_default(),
            path: url.path().trim_end_matches('/').to_owned(),
        })
    }

    fn covers(&self, url: &url::Url) -> bool {
        let path = url.path();
        url.scheme() == self.scheme
            && url.host_str() == Some(self.host.as_str())
            && url.port_or_known_default() == self.port
            && path
                .strip_prefix(self.path.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }
}

/// How many requests a plugin made and how many failed, by why (`/api/plugins`).
#[derive(Debug, Default)]
pub struct HttpStats {
    /// Requests asked for.
    pub requests: AtomicU64,
    /// Failures: not allowed, timeout, too large, too many in flight, unavailable.
    failures: [AtomicU64; 5],
}

/// The names of [`HttpStats`]' failure kinds, in order.
pub const HTTP_FAILURES: [&str; 5] = [
    "not_allowed",
    "timeout",
    "too_large",
    "too_many_requests",
    "unavailable",
];

impl HttpStats {
    fn failed(&self, error: &Error) {
        let kind = match error {
            Error::NotAllowed(_) => 0,
            Error::Timeout => 1,
            Error::TooLarge => 2,
            Error::TooManyRequests => 3,
            Error::Unavailable(_) => 4,
        };
        self.failures[kind].fetch_add(1, Ordering::Relaxed);
    }

    /// The failure counts that are not zero, by kind.
    pub fn failure_counts(&self) -> Vec<(&'static str, u64)> {
        HTTP_FAILURES
            .iter()
            .zip(&self.failures)
            .map(|(kind, count)| (*kind, count.load(Ordering::Relaxed)))
            .filter(|(_, count)| *count > 0)
            .collect()
    }
}

/// The HTTP client every plugin's requests go through (one connection pool), built at the first request
/// a plugin is allowed to make: a node whose plugins ask nothing never builds it.
type SharedClient = Arc<OnceLock<reqwest::Client>>;

/// One plugin's outbound HTTP: its permissions, its requests in flight and its counters.
#[derive(Debug)]
pub struct PluginHttp {
    client: SharedClient,
    allow: Vec<Prefix>,
    config: PluginHttpConfig,
    in_flight: Arc<Semaphore>,
    /// What it asked for and what failed.
    pub stats: HttpStats,
}

impl PluginHttp {
    fn new(config: PluginHttpConfig, client: SharedClient) -> Self {
        Self {
            client,
            allow: config
                .allow
                .iter()
                .filter_map(|prefix| Prefix::parse(prefix).ok())
                .collect(),
            in_flight: Arc::new(Semaphore::new(config.max_concurrent)),
            config,
            stats: HttpStats::default(),
        }
    }

    /// Makes `request` within the plugin's bounds and what is left until `deadline`.
    pub async fn fetch(
        &self,
        request: Request,
        deadline: Option<Instant>,
    ) -> Result<Response, Error> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let outcome = self.exchange(request, deadline).await;
        if let Err(error) = &outcome {
            self.stats.failed(error);
        }
        outcome
    }

    async fn exchange(
        &self,
        request: Request,
        deadline: Option<Instant>,
    ) -> Result<Response, Error> {
        let url = url::Url::parse(&request.url)
            .map_err(|e| Error::NotAllowed(format!("{:?} is not a URL: {e}", request.url)))?;
        if !self.allow.iter().any(|prefix| prefix.covers(&url)) {
            return Err(Error::NotAllowed(format!(
                "{url} is not under an allowed prefix"
            )));
        }
        let _permit = self
            .in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| Error::TooManyRequests)?;
        let left = deadline.map_or(self.config.timeout, |deadline| {
            deadline.saturating_duration_since(Instant::now())
        });
        let within = self.config.timeout.min(left);
        let method = reqwest::Method::from_bytes(request.method.as_bytes())
            .map_err(|_| Error::Unavailable(format!("{:?} is not a method", request.method)))?;
        let client = self.client.get_or_init(|| {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("an HTTP client without custom TLS builds")
        });
        let mut builder = client.request(method, url).body(request.body);
        for (name, value) in &request.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let limit = self.config.max_response_bytes;
        let exchange = async {
            let mut response = builder
                .send()
                .await
                .map_err(|e| Error::Unavailable(describe(&e)))?;
            let status = response.status().as_u16();
            let headers = response
                .headers()
                .iter()
                .filter_map(|(name, value)| {
                    Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
                })
                .collect();
            if response
                .content_length()
                .is_some_and(|length| length > limit as u64)
            {
                return Err(Error::TooLarge);
            }
            let mut body = Vec::new();
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| Error::Unavailable(describe(&e)))?
            {
                if body.len() + chunk.len() > limit {
                    return Err(Error::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Response {
                status,
                headers,
                body,
            })
        };
        tokio::time::timeout(within, exchange)
            .await
            .unwrap_or(Err(Error::Timeout))
    }
}

/// A request error with its causes on one line (reqwest's top message alone says little).
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Every plugin's outbound HTTP, by plugin name (`[plugins.http]`; a plugin without a section may reach
/// nothing), kept across the plugin's reloads like its state, counters included.
#[derive(Debug, Default)]
pub struct HttpPolicies {
    config: BTreeMap<String, PluginHttpConfig>,
    plugins: Mutex<BTreeMap<String, Arc<PluginHttp>>>,
    client: SharedClient,
}

impl HttpPolicies {
    /// The policies of `[plugins.http]` (validated before).
    pub fn new(config: &BTreeMap<String, PluginHttpConfig>) -> Self {
        Self {
            config: config.clone(),
            ..Self::default()
        }
    }

    /// The outbound HTTP of the plugin named `plugin`: its section's, or one that allows nothing.
    pub fn of(&self, plugin: &str) -> Arc<PluginHttp> {
        crate::sync::lock(&self.plugins)
            .entry(plugin.to_owned())
            .or_insert_with(|| {
                let config = self.config.get(plugin).cloned().unwrap_or_default();
                Arc::new(PluginHttp::new(config, self.client.clone()))
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered(prefix: &str, url: &str) -> bool {
        Prefix::parse(prefix)
            .unwrap()
            .covers(&url::Url::parse(url).unwrap())
    }

    #[test]
    fn prefixes_match_by_origin_and_path_segments() {
        assert!(covered(
            "https://api.example.com/auth",
            "https://api.example.com/auth"
        ));
        assert!(covered(
            "https://api.example.com/auth/",
            "https://api.example.com/auth/x?y=1"
        ));
        assert!(covered(
            "https://api.example.com",
            "https://api.example.com/anything"
        ));
        assert!(covered(
            "https://api.example.com:443/",
            "https://api.example.com/x"
        ));
        assert!(!covered(
            "https://api.example.com/auth",
            "https://api.example.com/authx"
        ));
        assert!(!covered(
            "https://api.example.com",
            "https://api.example.com.evil.net/"
        ));
        assert!(!covered(
            "https://api.example.com",
            "http://api.example.com/"
        ));
        assert!(!covered(
            "https://api.example.com",
            "https://api.example.com:8443/"
        ));
        assert!(!covered(
            "https://api.example.com/a",
            "https://user@other.net/a"
        ));
        assert!(Prefix::parse("ftp://x/").is_err());
        assert!(Prefix::parse("not a url").is_err());
    }

    #[tokio::test]
    async fn nothing_is_reachable_without_a_section() {
        let http = HttpPolicies::default().of("plugin");
        let request = Request {
            method: "GET".into(),
            url: "http://127.0.0.1:9/".into(),
            headers: Vec::new(),
            body: Vec::new(),
        };
        let outcome = http.fetch(request, None).await;
        assert!(matches!(outcome, Err(Error::NotAllowed(_))), "{outcome:?}");
        assert_eq!(http.stats.failure_counts(), [("not_allowed", 1)]);
    }
}
