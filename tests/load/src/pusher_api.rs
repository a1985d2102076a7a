//! Publishing through the Pusher HTTP API: `POST /apps/{app_id}/events`, signed the way the Pusher server
//! libraries sign it. Every Pusher-protocol server serves this endpoint (Herald as well as Sockudo), so
//! comparisons over the Pusher protocol publish through it, one path for every server, rather than through
//! a server's own API.
//!
//! The signature: the query carries `auth_key`, `auth_timestamp` (Unix seconds), `auth_version=1.0` and
//! `body_md5` (hex MD5 of the body); `auth_signature` is the hex HMAC-SHA256, keyed with the app secret,
//! of `"POST\n{path}\n{those parameters sorted by name, k=v joined with &}"`. Pure functions: this builds
//! the URL and body, `publisher` sends them.

use anyhow::{Context as _, bail};
use hmac::{Hmac, Mac as _};
use md5::{Digest as _, Md5};
use sha2::Sha256;

/// The only signature version the protocol has.
const AUTH_VERSION: &str = "1.0";

/// One Pusher app on one server: where its events endpoint is and the credentials that sign for it.
#[derive(Debug, Clone)]
pub(crate) struct PusherApp {
    /// `scheme://host:port/apps/{app_id}/events`, without a query.
    events_url: String,
    /// The URL's path, the part the signature covers.
    path: String,
    /// The app key (`auth_key`).
    key: String,
    /// The app secret (the HMAC key; never sent).
    secret: String,
}

/// One signed trigger: the URL with its query and the JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SignedTrigger {
    /// The events URL with the signed query.
    pub url: String,
    /// `{"name":…,"channels":[…],"data":"…"}`.
    pub body: String,
}

impl PusherApp {
    /// An app whose events endpoint is `events_url` (`http://127.0.0.1:6001/apps/1/events`).
    pub(crate) fn new(events_url: &str, key: &str, secret: &str) -> anyhow::Result<Self> {
        let uri: url::Url = events_url
            .parse()
            .with_context(|| format!("bad Pusher events URL {events_url}"))?;
        if uri.query().is_some() {
            bail!(
                "the Pusher events URL {events_url} must not have a query: the signature adds it"
            );
        }
        let mut segments = uri.path().trim_matches('/').split('/');
        let shaped = segments.next_back() == Some("events")
            && segments.next_back().is_some_and(|id| !id.is_empty())
            && segments.next_back() == Some("apps");
        if !shaped {
            bail!("the Pusher events URL {events_url} should end in /apps/<app id>/events");
        }
        Ok(Self {
            events_url: events_url.to_string(),
            path: uri.path().to_string(),
            key: key.to_string(),
            secret: secret.to_string(),
        })
    }

    /// Triggers `event` on `channel` with `data` (sent as the JSON string Pusher events carry), signed
    /// at `timestamp` (Unix seconds; servers refuse signatures far from their clock).
    pub(crate) fn trigger(
        &self,
        channel: &str,
        event: &str,
        data: &str,
        timestamp: u64,
    ) -> SignedTrigger {
        // Fields in the order of Pusher's documentation (a JSON object's order is free, but this keeps the
        // documented example's body, and so its MD5 and signature, reproducible in the tests).
        let body = format!(
            r#"{{"name":{},"channels":[{}],"data":{}}}"#,
            serde_json::Value::from(event),
            serde_json::Value::from(channel),
            serde_json::Value::from(data)
        );
        let body_md5 = hex::encode(Md5::digest(body.as_bytes()));
        // Already in name order, which is what the string to sign needs.
        let params = [
            ("auth_key", self.key.as_str()),
            ("auth_timestamp", &timestamp.to_string()),
            ("auth_version", AUTH_VERSION),
            ("body_md5", &body_md5),
        ]
        .map(|(name, value)| (name, value.to_string()));
        let signed = params
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join("&");
        let signature = hmac_sha256_hex(&self.secret, &format!("POST\n{}\n{signed}", self.path));
        let query = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params.iter().map(|(name, value)| (*name, value.as_str())))
            .append_pair("auth_signature", &signature)
            .finish();
        SignedTrigger {
            url: format!("{}?{query}", self.events_url),
            body,
        }
    }
}

/// Hex HMAC-SHA256 of `message` keyed with `secret`.
fn hmac_sha256_hex(secret: &str, message: &str) -> String {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(message.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of Pusher's HTTP API documentation (app 3), which every server library and
    /// Herald's own verifier reproduce.
    const KEY: &str = "278d425bdf160c739803";
    const SECRET: &str = "7ad3773142a6692b25b8";
    const TIMESTAMP: u64 = 1_353_088_179;
    const STRING_TO_SIGN: &str = "POST\n/apps/3/events\nauth_key=278d425bdf160c739803\
        &auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f";
    const SIGNATURE: &str = "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c";

    #[test]
    fn the_documented_example_signs_to_the_documented_signature() {
        assert_eq!(hmac_sha256_hex(SECRET, STRING_TO_SIGN), SIGNATURE);
        let app = PusherApp::new("http://127.0.0.1:6001/apps/3/events", KEY, SECRET).unwrap();
        let trigger = app.trigger("project-3", "foo", r#"{"some":"data"}"#, TIMESTAMP);
        assert_eq!(
            trigger.body,
            r#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#
        );
        assert_eq!(
            trigger.url,
            format!(
                "http://127.0.0.1:6001/apps/3/events?auth_key={KEY}&auth_timestamp={TIMESTAMP}\
                 &auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f&auth_signature={SIGNATURE}"
            )
        );
    }

    #[test]
    fn values_are_escaped_in_the_body_and_the_query_but_signed_as_they_are() {
        let app = PusherApp::new("http://h/apps/1/events", "a key&", "s").unwrap();
        let trigger = app.trigger("c\"1", "load", "x", 5);
        let body: serde_json::Value = serde_json::from_str(&trigger.body).unwrap();
        assert_eq!(body["channels"][0], "c\"1");
        assert!(
            trigger
                .url
                .starts_with("http://h/apps/1/events?auth_key=a+key%26&auth_timestamp=5&")
        );
        let md5 = hex::encode(Md5::digest(trigger.body.as_bytes()));
        let expected = hmac_sha256_hex(
            "s",
            &format!(
                "POST\n/apps/1/events\nauth_key=a key&&auth_timestamp=5&auth_version=1.0&body_md5={md5}"
            ),
        );
        assert!(
            trigger
                .url
                .ends_with(&format!("&auth_signature={expected}"))
        );
    }

    #[test]
    fn only_an_events_url_without_a_query_is_accepted() {
        for bad in [
            "http://h/apps/1/events?x=1",
            "http://h/api/publish",
            "http://h/apps//events",
            "not a url",
        ] {
            assert!(PusherApp::new(bad, "k", "s").is_err(), "{bad}");
        }
        assert!(PusherApp::new("http://h:1/prefix/apps/app-1/events", "k", "s").is_ok());
    }
}
