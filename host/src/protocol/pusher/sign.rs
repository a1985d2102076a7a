//! Pusher Channels signatures: channel authorization (private, presence, encrypted), user signin,
//! webhook signing, and HTTP API request signing (auth_version 1.0).
//!
//! Pure functions over strings and bytes, no I/O and no configuration lookup: callers pass the app's key
//! and secret. Every comparison of a signature runs in constant time, and no error or message ever
//! contains the secret.

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// The only HTTP API signing scheme Pusher defines.
const AUTH_VERSION: &str = "1.0";

/// The signature a subscribe frame must carry (after `"{key}:"`), computed by the app backend with the
/// shared secret so Herald can trust a channel grant without calling the backend. Presence (and any
/// channel with `channel_data`) signs the exact `channel_data` string the client sent, never a
/// re-serialisation of it.
pub fn channel_signature(
    secret: &str,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
) -> String {
    match channel_data {
        Some(data) => hmac_hex(secret, &[socket_id, ":", channel, ":", data]),
        None => hmac_hex(secret, &[socket_id, ":", channel]),
    }
}

/// Decides a subscription to a private, presence or encrypted channel. Checks the key part too (Reverb
/// only compares the signature), and compares the signature in constant time so a client cannot learn
/// it byte by byte.
pub fn channel_auth_valid(
    key: &str,
    secret: &str,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
    auth: &str,
) -> bool {
    let expected = channel_signature(secret, socket_id, channel, channel_data);
    auth_matches(key, &expected, auth)
}

/// The signature of a `pusher:signin` (after `"{key}:"`): the backend signs
/// `"{socket_id}::user::{user_data}"` over the exact `user_data` string, which binds the user identity to
/// this one connection.
pub fn user_signature(secret: &str, socket_id: &str, user_data: &str) -> String {
    hmac_hex(secret, &[socket_id, "::user::", user_data])
}

/// Decides a `pusher:signin` (see [`user_signature`]), in constant time like channel grants.
pub fn user_auth_valid(
    key: &str,
    secret: &str,
    socket_id: &str,
    user_data: &str,
    auth: &str,
) -> bool {
    let expected = user_signature(secret, socket_id, user_data);
    auth_matches(key, &expected, auth)
}

/// The `X-Pusher-Signature` header of a webhook, over the raw body as sent, so receivers (the Pusher
/// server libraries) can tell Herald's webhooks from forged ones.
pub fn webhook_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = new_mac(secret);
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// An HTTP API request as received: query parameters already URL-decoded, in any order.
///
/// Borrowed so the HTTP layer can verify a request before it copies or parses anything.
#[derive(Debug, Clone, Copy)]
pub struct ApiRequest<'a> {
    /// HTTP method; signed upper-case, as every Pusher library sends it.
    pub method: &'a str,
    /// The path the library signed (`/apps/{app_id}/…`), without any deployment prefix.
    pub path: &'a str,
    /// Every query parameter, URL-decoded, including the `auth_*` ones and `body_md5`.
    pub query: &'a [(String, String)],
    /// The raw request body.
    pub body: &'a [u8],
}

/// Why an HTTP API request was refused (all answer 401). Messages follow hosted Pusher's, so users of
/// the Pusher libraries recognise them, and never contain the secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApiAuthError {
    /// A required parameter (`auth_key`, `auth_timestamp`, `auth_version`, `auth_signature`) is missing.
    #[error("Missing required parameter: {0}")]
    Missing(&'static str),
    /// `auth_key` is not the app's key.
    #[error("Unknown auth_key")]
    UnknownKey,
    /// `auth_version` is not "1.0".
    #[error("Unsupported auth_version \"{0}\": only 1.0 is supported")]
    UnsupportedVersion(String),
    /// `auth_timestamp` is not an integer or is too far from the server's clock; both times are shown
    /// because clock skew is the usual cause.
    #[error(
        "Timestamp expired: given auth_timestamp ({sent}) is not unix seconds within the allowed \
         window of server time ({now})"
    )]
    Timestamp {
        /// The `auth_timestamp` sent.
        sent: String,
        /// The server's time, unix seconds.
        now: i64,
    },
    /// `body_md5` is missing while the body is not empty, or is not the MD5 of the body.
    #[error("body_md5 is missing or does not match the MD5 of the request body")]
    BodyMd5,
    /// The signature does not match. The expected string to sign is shown (with newlines escaped) because
    /// it pinpoints most client mistakes; the secret never is.
    #[error(
        "Invalid signature: you should have sent HmacSHA256Hex(\"{}\", your_secret_key), \
         but you sent \"{sent}\"",
        .string_to_sign.replace('\n', "\\n")
    )]
    Signature {
        /// What the signature should have been made over.
        string_to_sign: String,
        /// The `auth_signature` sent.
        sent: String,
    },
}

/// Authenticates an HTTP API call the way hosted Pusher does, so every Pusher server library works
/// unchanged, and additionally enforces the timestamp window (soketi and Reverb do not, which lets a
/// captured request be replayed forever). `body_md5`, when present, is signed and checked even for an
/// empty body, because pusher-http-python sends md5("") on GETs.
pub fn verify_api_request(
    key: &str,
    secret: &str,
    now_unix: i64,
    window_secs: u64,
    request: &ApiRequest<'_>,
) -> Result<(), ApiAuthError> {
    let query = request.query;
    let auth_key = param(query, "auth_key").ok_or(ApiAuthError::Missing("auth_key"))?;
    let timestamp =
        param(query, "auth_timestamp").ok_or(ApiAuthError::Missing("auth_timestamp"))?;
    let version = param(query, "auth_version").ok_or(ApiAuthError::Missing("auth_version"))?;
    let sent = param(query, "auth_signature").ok_or(ApiAuthError::Missing("auth_signature"))?;

    if auth_key != key {
        return Err(ApiAuthError::UnknownKey);
    }
    if version != AUTH_VERSION {
        return Err(ApiAuthError::UnsupportedVersion(version.to_owned()));
    }
    let in_window = timestamp
        .parse::<i64>()
        .is_ok_and(|sent| now_unix.abs_diff(sent) <= window_secs);
    if !in_window {
        return Err(ApiAuthError::Timestamp {
            sent: timestamp.to_owned(),
            now: now_unix,
        });
    }
    match param(query, "body_md5") {
        Some(sent_md5) if sent_md5.eq_ignore_ascii_case(&body_md5(request.body)) => {}
        None if request.body.is_empty() => {}
        _ => return Err(ApiAuthError::BodyMd5),
    }

    let string_to_sign = string_to_sign(request.method, request.path, query);
    let expected = hmac_hex(secret, &[&string_to_sign]);
    if constant_time_eq(&expected, sent) {
        Ok(())
    } else {
        Err(ApiAuthError::Signature {
            string_to_sign,
            sent: sent.to_owned(),
        })
    }
}

/// Signs a request the way the Pusher server libraries do (used by Herald's tests and tools), returning
/// the full query parameter list: `params` plus `auth_key`, `auth_timestamp`, `auth_version=1.0`,
/// `body_md5` (only when the body is non-empty) and `auth_signature`.
pub fn sign_api_request(
    key: &str,
    secret: &str,
    method: &str,
    path: &str,
    params: &[(String, String)],
    body: &[u8],
    timestamp: i64,
) -> Vec<(String, String)> {
    let mut query = params.to_vec();
    query.push(("auth_key".to_owned(), key.to_owned()));
    query.push(("auth_timestamp".to_owned(), timestamp.to_string()));
    query.push(("auth_version".to_owned(), AUTH_VERSION.to_owned()));
    if !body.is_empty() {
        query.push(("body_md5".to_owned(), body_md5(body)));
    }
    let signature = hmac_hex(secret, &[&string_to_sign(method, path, &query)]);
    query.push(("auth_signature".to_owned(), signature));
    query
}

/// `"{METHOD}\n{PATH}\n{k=v&…}"`: every parameter but `auth_signature`, keys lower-cased and sorted
/// (stably, so repeated keys keep their order), values as decoded, not re-encoded.
fn string_to_sign(method: &str, path: &str, query: &[(String, String)]) -> String {
    let mut params: Vec<(String, &str)> = query
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
        .filter(|(k, _)| k != "auth_signature")
        .collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));

    let mut out = String::with_capacity(method.len() + path.len() + 2 + 32 * params.len());
    out.push_str(&method.to_ascii_uppercase());
    out.push('\n');
    out.push_str(path);
    out.push('\n');
    for (i, (k, v)) in params.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// The first value of a query parameter, matching the key case-insensitively as the signed string does.
fn param<'q>(query: &'q [(String, String)], name: &str) -> Option<&'q str> {
    query
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn body_md5(body: &[u8]) -> String {
    hex::encode(Md5::digest(body))
}

/// Checks `auth` = `"{key}:{signature}"`. Splits at the last ':' (a hex signature has none), so any key
/// works; a missing ':' or a truncated signature simply fails.
fn auth_matches(key: &str, expected_signature: &str, auth: &str) -> bool {
    let Some((key_part, signature)) = auth.rsplit_once(':') else {
        return false;
    };
    // Both comparisons always run, so timing does not reveal which part was wrong.
    let key_ok = constant_time_eq(key, key_part);
    let signature_ok = constant_time_eq(expected_signature, signature);
    key_ok & signature_ok
}

/// Constant time for equal lengths; lengths themselves are public (a signature is always 64 hex digits).
fn constant_time_eq(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

fn hmac_hex(secret: &str, parts: &[&str]) -> String {
    let mut mac = new_mac(secret);
    for part in parts {
        mac.update(part.as_bytes());
    }
    hex::encode(mac.finalize().into_bytes())
}

fn new_mac(secret: &str) -> HmacSha256 {
    // HMAC is defined for keys of every length (long keys are hashed), so this cannot fail.
    HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length")
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "278d425bdf160c739803";
    const SECRET: &str = "7ad3773142a6692b25b8";
    const SOCKET: &str = "1234.1234";
    const PRIVATE_SIG: &str = "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4";
    const PRESENCE_DATA: &str = r#"{"user_id":10,"user_info":{"name":"Mr. Channels"}}"#;

    const EVENT_BODY: &str =
        r#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
    const EVENT_BODY_MD5: &str = "ec365a775a4cd0599faeb73354201b6f";
    const EVENT_TIMESTAMP: i64 = 1353088179;
    const EVENT_STRING_TO_SIGN: &str = "POST\n/apps/3/events\nauth_key=278d425bdf160c739803\
        &auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f";
    const EVENT_SIG: &str = "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c";
    const EMPTY_MD5: &str = "d41d8cd98f00b204e9800998ecf8427e";
    const WINDOW: u64 = 600;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn verify(
        method: &str,
        path: &str,
        query: &[(String, String)],
        body: &[u8],
        now: i64,
    ) -> Result<(), ApiAuthError> {
        let request = ApiRequest {
            method,
            path,
            query,
            body,
        };
        verify_api_request(KEY, SECRET, now, WINDOW, &request)
    }

    /// The documented HTTP example's query, as a library would send it (arrival order unsorted).
    /// The documented event request's query with one parameter's value replaced.
    fn event_query_with(key: &str, value: &str) -> Vec<(String, String)> {
        let mut query = event_query();
        for (k, v) in &mut query {
            if k == key {
                *v = value.to_owned();
            }
        }
        query
    }

    fn event_query() -> Vec<(String, String)> {
        q(&[
            ("body_md5", EVENT_BODY_MD5),
            ("auth_version", "1.0"),
            ("auth_key", KEY),
            ("auth_signature", EVENT_SIG),
            ("auth_timestamp", "1353088179"),
        ])
    }

    // --- channel authorization -------------------------------------------------------------------

    #[test]
    fn private_channel_vector() {
        assert_eq!(
            channel_signature(SECRET, SOCKET, "private-foobar", None),
            PRIVATE_SIG
        );
        let auth = format!("{KEY}:{PRIVATE_SIG}");
        assert!(channel_auth_valid(
            KEY,
            SECRET,
            SOCKET,
            "private-foobar",
            None,
            &auth
        ));
    }

    #[test]
    fn channel_auth_rejects_other_channel_or_socket() {
        let auth = format!("{KEY}:{PRIVATE_SIG}");
        assert!(!channel_auth_valid(
            KEY,
            SECRET,
            SOCKET,
            "private-other",
            None,
            &auth
        ));
        assert!(!channel_auth_valid(
            KEY,
            SECRET,
            "1234.1235",
            "private-foobar",
            None,
            &auth
        ));
        assert!(!channel_auth_valid(
            KEY,
            "other-secret",
            SOCKET,
            "private-foobar",
            None,
            &auth
        ));
    }

    #[test]
    fn channel_auth_rejects_wrong_key_part() {
        let auth = format!("278d425bdf160c739804:{PRIVATE_SIG}");
        assert!(!channel_auth_valid(
            KEY,
            SECRET,
            SOCKET,
            "private-foobar",
            None,
            &auth
        ));
        let auth = format!(":{PRIVATE_SIG}");
        assert!(!channel_auth_valid(
            KEY,
            SECRET,
            SOCKET,
            "private-foobar",
            None,
            &auth
        ));
    }

    #[test]
    fn channel_auth_rejects_wrong_signature() {
        let mut wrong = PRIVATE_SIG.to_owned();
        wrong.replace_range(63.., "5");
        let auth = format!("{KEY}:{wrong}");
        assert!(!channel_auth_valid(
            KEY,
            SECRET,
            SOCKET,
            "private-foobar",
            None,
            &auth
        ));
    }

    #[test]
    fn channel_auth_rejects_truncated_or_malformed_auth() {
        for auth in [
            format!("{KEY}:{}", &PRIVATE_SIG[..63]),
            format!("{KEY}:"),
            format!("{KEY}:{PRIVATE_SIG}0"),
            format!("{KEY}:{PRIVATE_SIG}:"),
            format!("{KEY}{PRIVATE_SIG}"),
            PRIVATE_SIG.to_owned(),
            KEY.to_owned(),
            String::new(),
            ":".to_owned(),
        ] {
            assert!(
                !channel_auth_valid(KEY, SECRET, SOCKET, "private-foobar", None, &auth),
                "{auth:?} must be rejected"
            );
        }
    }

    #[test]
    fn presence_signs_the_exact_channel_data() {
        let sig = channel_signature(SECRET, SOCKET, "presence-foobar", Some(PRESENCE_DATA));
        assert_eq!(sig.len(), 64);
        assert_ne!(
            sig,
            channel_signature(SECRET, SOCKET, "presence-foobar", None)
        );
        // Same as signing the documented message directly.
        let message = format!("{SOCKET}:presence-foobar:{PRESENCE_DATA}");
        assert_eq!(sig, webhook_signature(SECRET, message.as_bytes()));

        let auth = format!("{KEY}:{sig}");
        assert!(channel_auth_valid(
            KEY,
            SECRET,
            SOCKET,
            "presence-foobar",
            Some(PRESENCE_DATA),
            &auth
        ));
        // Re-serialised JSON (same value, different bytes) must not verify.
        let reserialised = r#"{"user_id": 10, "user_info": {"name": "Mr. Channels"}}"#;
        assert!(!channel_auth_valid(
            KEY,
            SECRET,
            SOCKET,
            "presence-foobar",
            Some(reserialised),
            &auth
        ));
        assert!(!channel_auth_valid(
            KEY,
            SECRET,
            SOCKET,
            "presence-foobar",
            None,
            &auth
        ));
    }

    // --- user signin -----------------------------------------------------------------------------

    #[test]
    fn user_auth_signs_socket_user_marker_and_user_data() {
        let user_data = r#"{"id":"77","user_info":{"name":"Ann"}}"#;
        let message = format!("{SOCKET}::user::{user_data}");
        let sig = webhook_signature(SECRET, message.as_bytes());
        let auth = format!("{KEY}:{sig}");
        assert!(user_auth_valid(KEY, SECRET, SOCKET, user_data, &auth));

        assert!(!user_auth_valid(
            "other-key",
            SECRET,
            SOCKET,
            user_data,
            &auth
        ));
        assert!(!user_auth_valid(KEY, SECRET, "1234.1235", user_data, &auth));
        assert!(!user_auth_valid(
            KEY,
            SECRET,
            SOCKET,
            r#"{"id":"78"}"#,
            &auth
        ));
        assert!(!user_auth_valid(
            KEY,
            SECRET,
            SOCKET,
            user_data,
            &format!("{KEY}:{}", &sig[..60])
        ));
        assert!(!user_auth_valid(KEY, SECRET, SOCKET, user_data, &sig));

        // A channel-style signature over the same strings is not a signin signature.
        let channel_style = channel_signature(SECRET, SOCKET, user_data, None);
        assert!(!user_auth_valid(
            KEY,
            SECRET,
            SOCKET,
            user_data,
            &format!("{KEY}:{channel_style}")
        ));
    }

    // --- webhooks --------------------------------------------------------------------------------

    #[test]
    fn webhook_signature_is_hmac_of_raw_body() {
        // The documented HTTP example is HMAC-SHA256 over a known string: reuse it as a vector.
        assert_eq!(
            webhook_signature(SECRET, EVENT_STRING_TO_SIGN.as_bytes()),
            EVENT_SIG
        );
        let body = br#"{"time_ms":1,"events":[]}"#;
        assert_ne!(
            webhook_signature(SECRET, body),
            webhook_signature("other", body)
        );
        assert_eq!(webhook_signature(SECRET, b"").len(), 64);
    }

    // --- HTTP API: documented example -----------------------------------------------------------

    #[test]
    fn documented_http_example_verifies() {
        assert_eq!(body_md5(EVENT_BODY.as_bytes()), EVENT_BODY_MD5);
        assert_eq!(
            verify(
                "POST",
                "/apps/3/events",
                &event_query(),
                EVENT_BODY.as_bytes(),
                EVENT_TIMESTAMP
            ),
            Ok(())
        );
    }

    #[test]
    fn documented_http_example_signs() {
        let query = sign_api_request(
            KEY,
            SECRET,
            "POST",
            "/apps/3/events",
            &[],
            EVENT_BODY.as_bytes(),
            EVENT_TIMESTAMP,
        );
        assert_eq!(
            query,
            q(&[
                ("auth_key", KEY),
                ("auth_timestamp", "1353088179"),
                ("auth_version", "1.0"),
                ("body_md5", EVENT_BODY_MD5),
                ("auth_signature", EVENT_SIG),
            ])
        );
        assert_eq!(
            string_to_sign("POST", "/apps/3/events", &query),
            EVENT_STRING_TO_SIGN
        );
    }

    #[test]
    fn sign_then_verify_round_trip() {
        let params = q(&[
            ("info", "user_count,subscription_count"),
            ("filter_by_prefix", "presence-"),
        ]);
        for (method, body) in [("GET", &b""[..]), ("POST", EVENT_BODY.as_bytes())] {
            let query = sign_api_request(
                KEY,
                SECRET,
                method,
                "/apps/3/channels",
                &params,
                body,
                1_700_000_000,
            );
            assert_eq!(&query[..2], &params[..], "params come first, unchanged");
            assert_eq!(param(&query, "body_md5").is_some(), !body.is_empty());
            assert_eq!(
                verify(method, "/apps/3/channels", &query, body, 1_700_000_000),
                Ok(())
            );
            // Signed for one method/path only.
            let other_method = if method == "GET" { "POST" } else { "GET" };
            assert!(matches!(
                verify(
                    other_method,
                    "/apps/3/channels",
                    &query,
                    body,
                    1_700_000_000
                ),
                Err(ApiAuthError::Signature { .. })
            ));
            assert!(matches!(
                verify(method, "/apps/4/channels", &query, body, 1_700_000_000),
                Err(ApiAuthError::Signature { .. })
            ));
        }
    }

    #[test]
    fn values_are_signed_decoded_not_reencoded() {
        let params = q(&[
            ("filter_by_prefix", "presence-a b&c=d"),
            ("info", "user_count"),
        ]);
        let query = sign_api_request(KEY, SECRET, "GET", "/apps/3/channels", &params, b"", 5);
        assert_eq!(
            string_to_sign("GET", "/apps/3/channels", &query),
            "GET\n/apps/3/channels\nauth_key=278d425bdf160c739803&auth_timestamp=5&auth_version=1.0\
             &filter_by_prefix=presence-a b&c=d&info=user_count"
        );
        assert_eq!(verify("GET", "/apps/3/channels", &query, b"", 5), Ok(()));
    }

    // --- HTTP API: body_md5 ----------------------------------------------------------------------

    #[test]
    fn get_with_md5_of_empty_body_is_accepted() {
        // pusher-http-python: body_md5=md5("") on GETs, and it is part of the signed string.
        let params = q(&[("body_md5", EMPTY_MD5)]);
        let query = sign_api_request(KEY, SECRET, "GET", "/apps/3/channels", &params, b"", 1000);
        assert_eq!(query.iter().filter(|(k, _)| k == "body_md5").count(), 1);
        assert!(
            string_to_sign("GET", "/apps/3/channels", &query)
                .contains(&format!("body_md5={EMPTY_MD5}"))
        );
        assert_eq!(verify("GET", "/apps/3/channels", &query, b"", 1000), Ok(()));

        // Dropping it after signing breaks the signature (it was signed).
        let without: Vec<_> = query
            .iter()
            .filter(|(k, _)| k != "body_md5")
            .cloned()
            .collect();
        assert!(matches!(
            verify("GET", "/apps/3/channels", &without, b"", 1000),
            Err(ApiAuthError::Signature { .. })
        ));
    }

    #[test]
    fn get_without_body_md5_is_accepted() {
        // pusher-http-php: no body_md5 on GETs.
        let query = sign_api_request(
            KEY,
            SECRET,
            "GET",
            "/apps/3/channels/presence-x/users",
            &[],
            b"",
            1000,
        );
        assert!(param(&query, "body_md5").is_none());
        assert_eq!(
            verify(
                "GET",
                "/apps/3/channels/presence-x/users",
                &query,
                b"",
                1000
            ),
            Ok(())
        );
    }

    #[test]
    fn body_without_body_md5_is_rejected() {
        let query = sign_api_request(
            KEY,
            SECRET,
            "POST",
            "/apps/3/events",
            &[],
            b"",
            EVENT_TIMESTAMP,
        );
        assert_eq!(
            verify(
                "POST",
                "/apps/3/events",
                &query,
                EVENT_BODY.as_bytes(),
                EVENT_TIMESTAMP
            ),
            Err(ApiAuthError::BodyMd5)
        );
    }

    #[test]
    fn body_md5_mismatch_is_rejected() {
        let query = sign_api_request(
            KEY,
            SECRET,
            "POST",
            "/apps/3/events",
            &[],
            b"{}",
            EVENT_TIMESTAMP,
        );
        assert_eq!(
            verify(
                "POST",
                "/apps/3/events",
                &query,
                EVENT_BODY.as_bytes(),
                EVENT_TIMESTAMP
            ),
            Err(ApiAuthError::BodyMd5)
        );
        // md5("") sent with a non-empty body.
        let query = sign_api_request(
            KEY,
            SECRET,
            "POST",
            "/apps/3/events",
            &q(&[("body_md5", EMPTY_MD5)]),
            b"",
            EVENT_TIMESTAMP,
        );
        assert_eq!(
            verify("POST", "/apps/3/events", &query, b"{}", EVENT_TIMESTAMP),
            Err(ApiAuthError::BodyMd5)
        );
        // A non-empty md5 with an empty body.
        let mut query = event_query();
        query.retain(|(k, _)| k != "body_md5");
        query.push(("body_md5".to_owned(), "not-hex".to_owned()));
        assert_eq!(
            verify("GET", "/apps/3/events", &query, b"", EVENT_TIMESTAMP),
            Err(ApiAuthError::BodyMd5)
        );
    }

    // --- HTTP API: timestamp ---------------------------------------------------------------------

    #[test]
    fn timestamp_inside_window_is_accepted() {
        let body = EVENT_BODY.as_bytes();
        for now in [
            EVENT_TIMESTAMP,
            EVENT_TIMESTAMP + WINDOW as i64,
            EVENT_TIMESTAMP - WINDOW as i64,
        ] {
            assert_eq!(
                verify("POST", "/apps/3/events", &event_query(), body, now),
                Ok(()),
                "now = {now}"
            );
        }
    }

    #[test]
    fn timestamp_outside_window_is_rejected() {
        let body = EVENT_BODY.as_bytes();
        for now in [
            EVENT_TIMESTAMP + WINDOW as i64 + 1,
            EVENT_TIMESTAMP - WINDOW as i64 - 1,
            i64::MAX,
            i64::MIN,
        ] {
            assert_eq!(
                verify("POST", "/apps/3/events", &event_query(), body, now),
                Err(ApiAuthError::Timestamp {
                    sent: "1353088179".to_owned(),
                    now
                }),
                "now = {now}"
            );
        }
    }

    #[test]
    fn non_integer_timestamp_is_rejected() {
        for sent in ["", "abc", "1353088179.5", "99999999999999999999999"] {
            let query = event_query_with("auth_timestamp", sent);
            assert_eq!(
                verify(
                    "POST",
                    "/apps/3/events",
                    &query,
                    EVENT_BODY.as_bytes(),
                    EVENT_TIMESTAMP
                ),
                Err(ApiAuthError::Timestamp {
                    sent: sent.to_owned(),
                    now: EVENT_TIMESTAMP
                })
            );
        }
    }

    #[test]
    fn zero_window_accepts_only_the_exact_second() {
        let request = ApiRequest {
            method: "POST",
            path: "/apps/3/events",
            query: &event_query(),
            body: EVENT_BODY.as_bytes(),
        };
        assert_eq!(
            verify_api_request(KEY, SECRET, EVENT_TIMESTAMP, 0, &request),
            Ok(())
        );
        assert!(matches!(
            verify_api_request(KEY, SECRET, EVENT_TIMESTAMP + 1, 0, &request),
            Err(ApiAuthError::Timestamp { .. })
        ));
    }

    // --- HTTP API: key order and case --------------------------------------------------------------

    #[test]
    fn unsorted_and_upper_case_query_keys_verify() {
        let params = q(&[("info", "user_count"), ("filter_by_prefix", "presence-")]);
        let signed = sign_api_request(KEY, SECRET, "GET", "/apps/3/channels", &params, b"", 1000);

        // Upper-case every key and reverse the order: the signed string is the same.
        let shuffled: Vec<_> = signed
            .iter()
            .rev()
            .map(|(k, v)| (k.to_ascii_uppercase(), v.clone()))
            .collect();
        assert_eq!(
            verify("GET", "/apps/3/channels", &shuffled, b"", 1000),
            Ok(())
        );

        // A client that signed upper-case keys also verifies: keys are lower-cased before sorting.
        let upper = q(&[("INFO", "user_count"), ("Filter_By_Prefix", "presence-")]);
        let signed = sign_api_request(KEY, SECRET, "get", "/apps/3/channels", &upper, b"", 1000);
        assert_eq!(
            string_to_sign("get", "/apps/3/channels", &signed),
            "GET\n/apps/3/channels\nauth_key=278d425bdf160c739803&auth_timestamp=1000&auth_version=1.0\
             &filter_by_prefix=presence-&info=user_count"
        );
        assert_eq!(
            verify("GET", "/apps/3/channels", &signed, b"", 1000),
            Ok(())
        );
    }

    #[test]
    fn tampered_parameter_fails_signature() {
        let params = q(&[("info", "user_count")]);
        let mut query =
            sign_api_request(KEY, SECRET, "GET", "/apps/3/channels", &params, b"", 1000);
        query[0].1 = "subscription_count".to_owned();
        assert!(matches!(
            verify("GET", "/apps/3/channels", &query, b"", 1000),
            Err(ApiAuthError::Signature { .. })
        ));
        // An added parameter is signed too.
        let mut query =
            sign_api_request(KEY, SECRET, "GET", "/apps/3/channels", &params, b"", 1000);
        query.push(("filter_by_prefix".to_owned(), "private-".to_owned()));
        assert!(matches!(
            verify("GET", "/apps/3/channels", &query, b"", 1000),
            Err(ApiAuthError::Signature { .. })
        ));
    }

    // --- HTTP API: errors ------------------------------------------------------------------------

    #[test]
    fn missing_parameters_are_named() {
        for name in [
            "auth_key",
            "auth_timestamp",
            "auth_version",
            "auth_signature",
        ] {
            let mut query = event_query();
            query.retain(|(k, _)| k != name);
            assert_eq!(
                verify(
                    "POST",
                    "/apps/3/events",
                    &query,
                    EVENT_BODY.as_bytes(),
                    EVENT_TIMESTAMP
                ),
                Err(ApiAuthError::Missing(name))
            );
            assert_eq!(
                ApiAuthError::Missing(name).to_string(),
                format!("Missing required parameter: {name}")
            );
        }
        assert_eq!(
            verify("GET", "/apps/3/channels", &[], b"", 0),
            Err(ApiAuthError::Missing("auth_key"))
        );
    }

    #[test]
    fn unknown_key_is_rejected() {
        let request = ApiRequest {
            method: "POST",
            path: "/apps/3/events",
            query: &event_query(),
            body: EVENT_BODY.as_bytes(),
        };
        assert_eq!(
            verify_api_request("another-key", SECRET, EVENT_TIMESTAMP, WINDOW, &request),
            Err(ApiAuthError::UnknownKey)
        );
    }

    #[test]
    fn unsupported_version_is_rejected() {
        let query = event_query_with("auth_version", "2.0");
        assert_eq!(
            verify(
                "POST",
                "/apps/3/events",
                &query,
                EVENT_BODY.as_bytes(),
                EVENT_TIMESTAMP
            ),
            Err(ApiAuthError::UnsupportedVersion("2.0".to_owned()))
        );
    }

    #[test]
    fn wrong_secret_reports_the_string_to_sign_but_not_the_secret() {
        let request = ApiRequest {
            method: "POST",
            path: "/apps/3/events",
            query: &event_query(),
            body: EVENT_BODY.as_bytes(),
        };
        let error =
            verify_api_request(KEY, "wrong-secret", EVENT_TIMESTAMP, WINDOW, &request).unwrap_err();
        assert_eq!(
            error,
            ApiAuthError::Signature {
                string_to_sign: EVENT_STRING_TO_SIGN.to_owned(),
                sent: EVENT_SIG.to_owned(),
            }
        );
        let message = error.to_string();
        assert_eq!(
            message,
            format!(
                "Invalid signature: you should have sent HmacSHA256Hex(\"{}\", your_secret_key), \
                 but you sent \"{EVENT_SIG}\"",
                EVENT_STRING_TO_SIGN.replace('\n', "\\n")
            )
        );
        assert!(message.contains(r#"HmacSHA256Hex("POST\n/apps/3/events\nauth_key="#));
        assert!(!message.contains('\n'));
        assert!(!message.contains("wrong-secret"));
        assert!(!message.contains(SECRET));
    }

    #[test]
    fn wrong_or_truncated_signature_is_rejected() {
        let mut flipped = EVENT_SIG.to_owned();
        flipped.replace_range(..1, "e");
        for sent in ["", &EVENT_SIG[..63], &flipped, &format!("{EVENT_SIG}0")] {
            let query = event_query_with("auth_signature", sent);
            assert_eq!(
                verify(
                    "POST",
                    "/apps/3/events",
                    &query,
                    EVENT_BODY.as_bytes(),
                    EVENT_TIMESTAMP
                ),
                Err(ApiAuthError::Signature {
                    string_to_sign: EVENT_STRING_TO_SIGN.to_owned(),
                    sent: sent.to_owned(),
                })
            );
        }
    }
}
