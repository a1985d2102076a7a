//! # jwt-auth: Centrifugo-style JWT authentication for Herald
//!
//! Verifies the connection token sent with `connect`/`refresh` and the subscription token sent with
//! `subscribe`/`sub_refresh`, with Centrifugo's claim semantics (see `shared/protocols/centrifuge.md` §6).
//! Signatures are checked by the `jsonwebtoken` crate with its pure-Rust (RustCrypto) backend.
//!
//! Hooks: `connect` and `subscribe`. A request without a token is passed on untouched: Herald's own
//! configuration (anonymous connections, namespace permissions) or later plugins decide it.
//!
//! ## Configuration
//!
//! Given in Herald's configuration under the plugin's name (`jwt-auth`), or in a TOML file beside the `.wasm`
//! named after the file's stem: `jwt-auth.wasm` (as `plugins/build` installs it) reads `jwt-auth.toml`, with
//! the same keys at top level. The file wins over Herald's table.
//!
//! ```toml
//! [plugins.config.jwt-auth]
//! hmac_secret = "a-long-random-secret"        # HS256, HS384, HS512
//! # RS256, RS384, RS512: an SPKI ("PUBLIC KEY"), PKCS#1 ("RSA PUBLIC KEY") or certificate PEM
//! rsa_public_key = """
//! -----BEGIN PUBLIC KEY-----
//! ...
//! -----END PUBLIC KEY-----
//! """
//! ecdsa_public_key = "-----BEGIN PUBLIC KEY-----\n...\n-----END PUBLIC KEY-----\n"  # ES256 (P-256), ES384 (P-384)
//! eddsa_public_key = "-----BEGIN PUBLIC KEY-----\n...\n-----END PUBLIC KEY-----\n"  # EdDSA (Ed25519)
//! # Keys published by an identity provider (Keycloak, Auth0, Cognito): tokens whose header names a `kid`
//! # are checked with that key of the set (RSA, EC or Ed25519; never a symmetric key).
//! jwks_url = "https://auth.example/realms/app/protocol/openid-connect/certs"
//! jwks_cache_ttl_ms = 3600000        # how long a fetched set is trusted (default 1 h)
//! jwks_refresh_interval_ms = 10000   # at most one refetch for an unknown `kid` per this (default 10 s)
//! audience = "herald"              # optional: tokens must carry this `aud`
//! issuer = "https://auth.example"  # optional: tokens must carry this `iss`
//! allow_anonymous_tokens = false   # optional: accept connection tokens with an empty `sub`
//! ```
//!
//! At least one of `hmac_secret`, `rsa_public_key`, `ecdsa_public_key`, `eddsa_public_key` and `jwks_url`
//! is required (empty strings count as absent); unknown keys are rejected so that a misspelt `audience` cannot silently switch a check off. A
//! token's header `alg` must belong to a configured key: an HS256 token is invalid when only an RSA key is
//! configured, and `none` is never accepted.
//!
//! ## Claims
//!
//! Common to both tokens:
//! * `exp` (unix seconds, integer or fractional): the token is expired when `now >= exp`. No `exp` means it
//!   never expires. `nbf` is checked when present (`now < nbf` counts as expired, as in Centrifugo). Time is
//!   Herald's clock ([`herald_sdk::now_seconds`]), with no leeway.
//! * `aud`/`iss`: checked only when configured; then they are required.
//! * `expire_at`: overrides `exp` as the connection's (or subscription's) expiry; `0` means never expires.
//!   `exp` is still validated.
//! * `info`: JSON, becomes the connection info (connect) or the channel info (subscribe), byte for byte.
//!
//! Connection token (`connect`, `refresh`):
//! * `sub`: the user id. An empty `sub` is refused unless `allow_anonymous_tokens` is set.
//! * `channels`: channels Herald subscribes the connection to server-side (not permissions).
//! * `subs`: map channel → options; its channels are added to `channels`. The per-channel `info`, `data` and
//!   `override` are not applied yet.
//! * `channel`: forbidden (it marks a subscription token).
//! * On `refresh`, `sub` must equal the connection's current user.
//!
//! Subscription token (`subscribe`, `sub_refresh`):
//! * `channel`: required, must equal the requested channel.
//! * `sub`: must equal the connection's user.
//! * `client`: optional; when set, must equal the connection id.
//! * `data`: JSON returned to the client in the subscribe reply.
//!
//! `b64info`/`b64data` (Protobuf only), `meta` and `override` are ignored.
//!
//! ## JWKS
//!
//! With `jwks_url`, the set is fetched when a token first needs it (Herald's outbound HTTP, contract 0.2:
//! allow the URL in `[plugins.http.jwt-auth]` and give the plugin a deadline that covers the request) and
//! kept in the plugin's shared state, so every instance on the node uses one fetch. A token whose `kid` is
//! not in the set triggers a refetch — key rotation works without a reload — at most once per
//! `jwks_refresh_interval_ms` per node, so a stream of made-up `kid`s cannot turn into a stream of requests.
//! A set older than `jwks_cache_ttl_ms` is fetched again. When the set cannot be fetched, the decision
//! fails closed: connect closes with `3004` (the SDK reconnects later), subscribe gets error `100`
//! (temporary).
//!
//! ## Codes
//!
//! | Situation | connect | refresh | subscribe | sub_refresh |
//! |---|---|---|---|---|
//! | malformed, bad signature, unknown/unconfigured `alg`, `aud`/`iss` mismatch | close 3500 | close 3500 | error 103 | close 3500 |
//! | `channel` claim in a connection token | close 3500 | close 3500 | | |
//! | `channel` claim missing from a subscription token | | | error 103 | close 3500 |
//! | `exp` passed or `nbf` not reached | error 109 | close 3005 | error 109 | error 109 |
//! | empty `sub` without `allow_anonymous_tokens` | close 3507 | close 3507 | | |
//! | `sub` differs from the connection's user | | close 3500 | close 3500 | close 3500 |
//! | `channel` or `client` mismatch | | | close 3500 | close 3500 |
//!
//! Close reasons are plain text ("invalid token", "connection expired", "permission denied"); the detail of
//! a refusal goes to Herald's log at debug level (never the token itself).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;

use herald_sdk::{
    Config, ConnectAllow, ConnectRequest, ConnectVerdict, Deny, Hooks, Level, Plugin,
    SubscribeAllow, SubscribeRequest, SubscribeVerdict, codes, deny, http, state,
};
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny};
use serde_json::value::RawValue;

/// The plugin: the configured verification keys and claim checks.
pub struct JwtAuth {
    hmac: Option<DecodingKey>,
    rsa: Option<DecodingKey>,
    ecdsa: Option<DecodingKey>,
    eddsa: Option<DecodingKey>,
    jwks: Option<Jwks>,
    /// Audience and issuer checks shared by every token; `algorithms` is set per token.
    validation: Validation,
    allow_anonymous_tokens: bool,
}

/// The configuration (see the crate documentation).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    hmac_secret: Option<String>,
    rsa_public_key: Option<String>,
    ecdsa_public_key: Option<String>,
    eddsa_public_key: Option<String>,
    jwks_url: Option<String>,
    jwks_cache_ttl_ms: Option<u64>,
    jwks_refresh_interval_ms: Option<u64>,
    audience: Option<String>,
    issuer: Option<String>,
    allow_anonymous_tokens: bool,
}

/// The shared-state key of the fetched set (`<fetched at, ms>\n<the JWKS JSON>`).
const JWKS_KEY: &str = "jwks";
/// The shared-state counter that rate-limits refetches.
const JWKS_REFRESH_KEY: &str = "jwks:refresh";

/// Keys published at a JWKS URL, shared by the plugin's instances through its state.
struct Jwks {
    url: String,
    cache_ttl_ms: u64,
    refresh_interval: Duration,
    /// This instance's parsed copy and when the set was fetched (ms).
    parsed: RefCell<Option<(u64, JwkSet)>>,
}

/// Why no key could be found for a token.
enum KeyError {
    /// The token cannot be valid (unknown `kid`, no key for its `alg`): the token's fault.
    Invalid(String),
    /// The key set could not be fetched: nobody's fault, try later.
    Unavailable(String),
}

impl Jwks {
    /// The key `kid` names, fetching the set when this node has none, a stale one, or one without `kid`.
    fn key(&self, kid: &str) -> Result<DecodingKey, KeyError> {
        let now = herald_sdk::now_ms();
        if let Some(key) = self.cached(kid, now) {
            return key;
        }
        // Another instance may have fetched it meanwhile.
        if let Some((fetched, set)) = state::get(JWKS_KEY).as_deref().and_then(parse_stored) {
            self.parsed.replace(Some((fetched, set)));
            if let Some(key) = self.cached(kid, now) {
                return key;
            }
        }
        let window = self.refresh_interval;
        let fresh_enough = self
            .parsed
            .borrow()
            .as_ref()
            .is_some_and(|(fetched, _)| now < fetched + self.cache_ttl_ms);
        if fresh_enough && state::incr(JWKS_REFRESH_KEY, 1, window) != Some(1) {
            return Err(KeyError::Invalid(format!(
                "unknown kid {kid:?} (the key set was refetched less than {} ms ago)",
                window.as_millis()
            )));
        }
        let response = http::fetch(&http::Request::get(&self.url))
            .map_err(|e| KeyError::Unavailable(format!("cannot fetch the key set: {e:?}")))?;
        if response.status != 200 {
            return Err(KeyError::Unavailable(format!(
                "the key set answered {}",
                response.status
            )));
        }
        let set: JwkSet = serde_json::from_slice(&response.body)
            .map_err(|e| KeyError::Unavailable(format!("the key set is not a JWKS: {e}")))?;
        let mut stored = format!("{now}\n").into_bytes();
        stored.extend_from_slice(&response.body);
        // A full state only costs other instances a fetch of their own.
        state::set(JWKS_KEY, &stored, Duration::from_millis(self.cache_ttl_ms));
        self.parsed.replace(Some((now, set)));
        self.cached(kid, now)
            .unwrap_or_else(|| Err(KeyError::Invalid(format!("unknown kid {kid:?}"))))
    }

    /// The key from this instance's copy, if the copy is fresh and has `kid`.
    fn cached(&self, kid: &str, now: u64) -> Option<Result<DecodingKey, KeyError>> {
        let parsed = self.parsed.borrow();
        let (fetched, set) = parsed.as_ref()?;
        if now >= fetched + self.cache_ttl_ms {
            return None;
        }
        let jwk = set.find(kid)?;
        if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
            return Some(Err(KeyError::Invalid(format!(
                "kid {kid:?} is a symmetric key, which a key set must not publish"
            ))));
        }
        Some(
            DecodingKey::from_jwk(jwk)
                .map_err(|e| KeyError::Invalid(format!("kid {kid:?} is not a usable key: {e}"))),
        )
    }
}

/// `<fetched at>\n<JWKS>` as stored.
fn parse_stored(stored: &[u8]) -> Option<(u64, JwkSet)> {
    let newline = stored.iter().position(|&b| b == b'\n')?;
    let fetched = std::str::from_utf8(&stored[..newline]).ok()?.parse().ok()?;
    let set = serde_json::from_slice(&stored[newline + 1..]).ok()?;
    Some((fetched, set))
}

/// The claims Herald uses, from either kind of token.
#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default, deserialize_with = "numeric_date")]
    exp: Option<u64>,
    #[serde(default, deserialize_with = "numeric_date")]
    nbf: Option<u64>,
    #[serde(default, deserialize_with = "numeric_date")]
    expire_at: Option<u64>,
    #[serde(default)]
    info: Option<Box<RawValue>>,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    subs: BTreeMap<String, IgnoredAny>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    client: Option<String>,
}

/// A JWT NumericDate: seconds since the epoch, integer or fractional (truncated); negative counts as 0.
fn numeric_date<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    let number = Option::<serde_json::Number>::deserialize(deserializer)?;
    Ok(number.map(|n| {
        n.as_u64()
            .unwrap_or_else(|| n.as_f64().map_or(0, |f| f.max(0.0) as u64))
    }))
}

impl Claims {
    /// The user id (`""` when `sub` is absent).
    fn user(&self) -> &str {
        self.sub.as_deref().unwrap_or_default()
    }

    /// `Ok` when `now` lies in the token's validity window (`nbf <= now < exp`).
    fn check_time(&self, now: u64) -> Result<(), String> {
        if let Some(exp) = self.exp
            && now >= exp
        {
            return Err(format!("token expired at {exp} (now {now})"));
        }
        if let Some(nbf) = self.nbf
            && now < nbf
        {
            return Err(format!("token not valid before {nbf} (now {now})"));
        }
        Ok(())
    }

    /// When the connection or subscription expires: `expire_at` (0 = never), else `exp`.
    fn expire_at(&self) -> Option<u64> {
        match self.expire_at {
            Some(0) => None,
            Some(at) => Some(at),
            None => self.exp,
        }
    }

    /// Server-side channels: `channels`, then the keys of `subs` not already listed.
    fn server_channels(&mut self) -> Vec<String> {
        let mut channels = std::mem::take(&mut self.channels);
        for channel in std::mem::take(&mut self.subs).into_keys() {
            if !channels.contains(&channel) {
                channels.push(channel);
            }
        }
        channels
    }
}

fn raw_bytes(value: Option<Box<RawValue>>) -> Option<Vec<u8>> {
    value.map(|raw| raw.get().as_bytes().to_vec())
}

/// Logs why a token was refused (the token itself is never logged) and builds the refusal.
fn refuse(code: u32, reason: &str, detail: &str) -> Deny {
    herald_sdk::log(Level::Debug, &format!("{reason} ({code}): {detail}"));
    deny(code, reason)
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

impl JwtAuth {
    /// Builds the plugin from its settings; errors name the faulty key.
    fn from_settings(settings: Settings) -> Result<Self, String> {
        let hmac = non_empty(settings.hmac_secret)
            .map(|secret| DecodingKey::from_secret(secret.as_bytes()));
        let rsa = non_empty(settings.rsa_public_key)
            .map(|pem| DecodingKey::from_rsa_pem(pem.as_bytes()))
            .transpose()
            .map_err(|e| {
                format!("invalid configuration: rsa_public_key is not an RSA public key PEM: {e}")
            })?;
        let ecdsa = non_empty(settings.ecdsa_public_key)
            .map(|pem| DecodingKey::from_ec_pem(pem.as_bytes()))
            .transpose()
            .map_err(|e| {
                format!("invalid configuration: ecdsa_public_key is not an EC public key PEM: {e}")
            })?;
        let eddsa = non_empty(settings.eddsa_public_key)
            .map(|pem| DecodingKey::from_ed_pem(pem.as_bytes()))
            .transpose()
            .map_err(|e| {
                format!(
                    "invalid configuration: eddsa_public_key is not an Ed25519 public key PEM: {e}"
                )
            })?;
        let jwks = non_empty(settings.jwks_url).map(|url| Jwks {
            url,
            cache_ttl_ms: settings.jwks_cache_ttl_ms.unwrap_or(3_600_000),
            refresh_interval: Duration::from_millis(
                settings.jwks_refresh_interval_ms.unwrap_or(10_000),
            ),
            parsed: RefCell::new(None),
        });
        if hmac.is_none() && rsa.is_none() && ecdsa.is_none() && eddsa.is_none() && jwks.is_none() {
            return Err("invalid configuration: no key to verify tokens with; set at least one of hmac_secret, \
                        rsa_public_key, ecdsa_public_key, eddsa_public_key and jwks_url"
                .into());
        }

        let mut validation = Validation::new(Algorithm::HS256);
        validation.required_spec_claims.clear();
        // exp and nbf are checked against Herald's clock in `Claims::check_time`.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        match non_empty(settings.audience) {
            Some(audience) => {
                validation.set_audience(&[audience]);
                validation.required_spec_claims.insert("aud".into());
            }
            // Centrifugo checks `aud` only when configured.
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = non_empty(settings.issuer) {
            validation.set_issuer(&[issuer]);
            validation.required_spec_claims.insert("iss".into());
        }
        Ok(Self {
            hmac,
            rsa,
            ecdsa,
            eddsa,
            jwks,
            validation,
            allow_anonymous_tokens: settings.allow_anonymous_tokens,
        })
    }

    /// Checks the token's signature (with the key its `kid` or its `alg` names), shape, `aud` and `iss`;
    /// not its times.
    fn verify(&self, token: &str) -> Result<Claims, KeyError> {
        let invalid = |detail: String| KeyError::Invalid(detail);
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| invalid(format!("malformed token: {e}")))?;
        let from_set;
        let key = match (&self.jwks, header.kid.as_deref()) {
            (Some(jwks), Some(kid)) => {
                from_set = jwks.key(kid)?;
                Some(&from_set)
            }
            _ => match header.alg {
                Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => self.hmac.as_ref(),
                Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => self.rsa.as_ref(),
                Algorithm::ES256 | Algorithm::ES384 => self.ecdsa.as_ref(),
                Algorithm::EdDSA => self.eddsa.as_ref(),
                _ => None,
            },
        };
        let key =
            key.ok_or_else(|| invalid(format!("no key configured for alg {:?}", header.alg)))?;
        let mut validation = self.validation.clone();
        validation.algorithms = vec![header.alg];
        jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map(|data| data.claims)
            .map_err(|e| invalid(format!("token rejected: {e}")))
    }

    /// `on_connect` at the time `now` (unix seconds).
    fn connect_at(&self, request: &ConnectRequest, now: u64) -> ConnectVerdict {
        if request.token.is_empty() {
            return ConnectVerdict::Pass;
        }
        let invalid = |detail: &str| {
            ConnectVerdict::Deny(refuse(codes::INVALID_TOKEN, "invalid token", detail))
        };
        let mut claims = match self.verify(&request.token) {
            Ok(claims) => claims,
            Err(KeyError::Invalid(detail)) => return invalid(&detail),
            Err(KeyError::Unavailable(detail)) => {
                return ConnectVerdict::Deny(refuse(3004, "internal server error", &detail));
            }
        };
        if claims.channel.as_deref().is_some_and(|c| !c.is_empty()) {
            return invalid("a connection token must not carry a channel claim");
        }
        if let Err(detail) = claims.check_time(now) {
            return ConnectVerdict::Deny(if request.refresh {
                refuse(codes::CONNECTION_EXPIRED, "connection expired", &detail)
            } else {
                refuse(codes::TOKEN_EXPIRED, "token expired", &detail)
            });
        }
        if claims.user().is_empty() && !self.allow_anonymous_tokens {
            return ConnectVerdict::Deny(refuse(
                codes::DISCONNECT_PERMISSION_DENIED,
                "permission denied",
                "empty sub and allow_anonymous_tokens is off",
            ));
        }
        if request.refresh && claims.user() != request.user {
            return invalid("refresh token is for another user");
        }
        ConnectVerdict::Allow(ConnectAllow {
            user: claims.user().to_owned(),
            expire_at: claims.expire_at(),
            channels: claims.server_channels(),
            info: raw_bytes(claims.info),
            data: None,
        })
    }

    /// `on_subscribe` at the time `now` (unix seconds).
    fn subscribe_at(&self, request: &SubscribeRequest, now: u64) -> SubscribeVerdict {
        // A Pusher connection's token is the app backend's channel signature (`key:hex`), which the host
        // checks; a JWT never contains `:`.
        if request.token.is_empty() || request.token.contains(':') {
            return SubscribeVerdict::Pass;
        }
        // A bad sub_refresh token closes the connection; a bad subscribe token is an error reply.
        let bad = |detail: &str| {
            SubscribeVerdict::Deny(if request.refresh {
                refuse(codes::INVALID_TOKEN, "invalid token", detail)
            } else {
                refuse(codes::PERMISSION_DENIED, "permission denied", detail)
            })
        };
        let mismatch = |detail: &str| {
            SubscribeVerdict::Deny(refuse(codes::INVALID_TOKEN, "invalid token", detail))
        };
        let claims = match self.verify(&request.token) {
            Ok(claims) => claims,
            Err(KeyError::Invalid(detail)) => return bad(&detail),
            Err(KeyError::Unavailable(detail)) => {
                return SubscribeVerdict::Deny(refuse(codes::INTERNAL, "internal error", &detail));
            }
        };
        let Some(channel) = claims.channel.as_deref().filter(|c| !c.is_empty()) else {
            return bad("a subscription token needs a channel claim");
        };
        if let Err(detail) = claims.check_time(now) {
            return SubscribeVerdict::Deny(refuse(codes::TOKEN_EXPIRED, "token expired", &detail));
        }
        if channel != request.channel {
            return mismatch("subscription token is for another channel");
        }
        if claims.user() != request.client.user {
            return mismatch("subscription token is for another user");
        }
        if let Some(client) = claims.client.as_deref().filter(|c| !c.is_empty())
            && client != request.client.client
        {
            return mismatch("subscription token is for another connection");
        }
        SubscribeVerdict::Allow(SubscribeAllow {
            expire_at: claims.expire_at(),
            info: raw_bytes(claims.info),
            data: raw_bytes(claims.data),
        })
    }
}

impl Plugin for JwtAuth {
    const NAME: &'static str = "jwt-auth";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const HOOKS: Hooks = Hooks::CONNECT.union(Hooks::SUBSCRIBE);

    fn init(config: Config) -> Result<Self, String> {
        Self::from_settings(config.parse()?)
    }

    fn on_connect(&self, request: &ConnectRequest) -> ConnectVerdict {
        self.connect_at(request, herald_sdk::now_seconds())
    }

    fn on_subscribe(&self, request: &SubscribeRequest) -> SubscribeVerdict {
        self.subscribe_at(request, herald_sdk::now_seconds())
    }
}

herald_sdk::export!(JwtAuth);

#[cfg(test)]
mod tests;
