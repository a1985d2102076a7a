//! Native tests: real tokens signed with `jsonwebtoken`, checked at a fixed time (`NOW`) unless noted.

use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::{Value, json};

use super::*;

const SECRET: &str = "test-secret-that-is-long-enough-for-hs512";
const NOW: u64 = 1_700_000_000;
const HOUR: u64 = 3600;

/// Test-only RSA 2048 key pair (generated with `openssl genrsa 2048`): private half, PKCS#8.
const RSA_PRIVATE_KEY: &str = "\
-----BEGIN PRIVATE KEY-----
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQDTZ8a+X11ykNPY
IKL+T1AInfFJ5tVmifoRVS46O3P3CfcE5zyLAalcOX1o42+luWw826Y7gFb0JCpE
sHnewSMSI6z8ES2jMB37iN4xcAYJ4ourv2SJKk1TFvSIou1nOyCuwszj0sM6fm5u
CE01ArKSeb8o2LeAk3eZrdIIOfXXRsBqxjjtCpJBWQH74rnZOCcyaPv2PdTvN1O8
00I6qmihFc8IhdIFmYgKudTNu5+eVRHBcAdpyAN2WNfjJG/5FwqTYJ/x82C5ZhZQ
+qPOrWr4SNHSdUNnDzCZuNgRy9Ivm1j3MbgkC9USfYl+lSPq7Gn3hwjxbGxwAlgo
oRcUks19AgMBAAECggEAIj005NELOyqWX53BkvtY1LHH9OvW9OQ0mn63naTSvlhg
fUHPqMUxydxhzGLG9V9XrBpNt7tXL0l1iGnQrdw4CDsQ9u5NUZh8cqhohuHu3cZR
pWplJ7YF5LGGFLnWm26Ud4QuAlljVzjyPQ3z0I8e9DbrAqbplCsjfBdj5K3b0Za6
PBL9Vglly2rE0Lv5YnInGlKm0Hj6lgLb10Er1K1mgBQbXRLUvaDEtztWuRiLujMo
9AnjN9PuSZjzkgEWwHwJGhBbKyjjcYEXP85cE4kIU5TCuMPrWgyWMN7ZB9MRrWjx
9blTtZcN1mjUnbWuat5N5nrA5OhR4Qi1kUNT8ssonQKBgQDr/TxjUwe8SasgSEiw
kHvgCnrzDGGiB6KtBW1IT4p36eWrYD2u2UhGXadVgqE/zsuQ16faqSCpVewylYrF
zplNP/O2cKgN4ZHtNGOCp6EiGC+GxKyPzQoaUIJ+mtHJis/D3NBSZfNDZRxQFmpI
rapz2SGvqfPwA2bAOH3nQvoBxwKBgQDlVOJSmzUUD4K4ZhtGhsl5OOIFRMZxVMUL
UbszSJX0fZhLso0vQuuKj8iC5pA0YTTeX/9seNVyi7iZLDRfpIC9fggPS0isEDqI
Y72mOVO5+8z1myJUm7vXiP8OexD9h5rnGOb+lyia//gNN5X+uF1E2J8zGZm32/8E
1T1wQo52mwKBgQCbaMaXBnwGpGEcvl2YYV4iueQkIVg+k1avKO7B+xfORmtog9W7
Sv5M0Ko9Juy4D6CBf3PcDRskSSBmY5LjF15fwCjoUaJqmc028BREW85CnLjXwLd/
b+EiWTjG1YAogNC4RLewO9GK5ZBSsaBGwo+JAUos2/h4bFUDa3CGltX7ywKBgQDh
z7JGaqNaDGfH0GqdCE1L+rG7RFwt7a1UFvdAaQGWyzBxoO+aEMfDGQ7zrbliijC3
okjscxKhhmiPElLDtkQ50eZ3wMZe/l/UOnncOehyYjkPweCM9QeCFFgo1w8ExUjG
suOI3ihSbya9RPWB6eGUz8P6WgPdYVb7WEj1x+NlbwKBgCOdzAfRXOsBrs+FajQE
attOwbGLTCPRNF6vTzvpmLcpiPdjJ1Q85kQ7rv/6QQsPUUjWk6AMHBx7P2LF6FUb
LRUqlQa6qv6hgSLf4OUseczY2ih+lPz+k41u4/CHBCn5ERuVzrEuFhpiTUh+5eje
0kApkMNo23fRPPoBgi4+9QTH
-----END PRIVATE KEY-----
";

/// Public half of [`RSA_PRIVATE_KEY`] (SPKI).
const RSA_PUBLIC_KEY: &str = "\
-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA02fGvl9dcpDT2CCi/k9Q
CJ3xSebVZon6EVUuOjtz9wn3BOc8iwGpXDl9aONvpblsPNumO4BW9CQqRLB53sEj
EiOs/BEtozAd+4jeMXAGCeKLq79kiSpNUxb0iKLtZzsgrsLM49LDOn5ubghNNQKy
knm/KNi3gJN3ma3SCDn110bAasY47QqSQVkB++K52TgnMmj79j3U7zdTvNNCOqpo
oRXPCIXSBZmICrnUzbufnlURwXAHacgDdljX4yRv+RcKk2Cf8fNguWYWUPqjzq1q
+EjR0nVDZw8wmbjYEcvSL5tY9zG4JAvVEn2JfpUj6uxp94cI8WxscAJYKKEXFJLN
fQIDAQAB
-----END PUBLIC KEY-----
";

/// An unrelated RSA public key: tokens signed with [`RSA_PRIVATE_KEY`] fail against it.
const OTHER_RSA_PUBLIC_KEY: &str = "\
-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAtGKaZQ1ebUXdNEiSl2nK
LK9ZXOl+ME84uXKrYbBo5oHnJUQHhZXYUJaUIxDke9y66zdbjXyQzuxRFuqn/TNX
i6xF88G8LKHwRhMO0AY02VImcvM2BjJKoU7XTnvjh5e0w7S3rXvx29LOviTTduBF
l2/dDI+QKfeYEFvQlzgqIErATOay1qd95qRHBCEILiDF/lUzNUEX5zOi1a6kPSFR
1HEJHx+/Mi2y17VI4v/OO2MieFjXNLbTaeq0bW5HR3Ia7TGprkUz6m05CkgvE71Z
MSVpKX49Q1vhFATEnAZ5t1xW5kCy095BhCdwnzNGWOiKUJmbdskUUBCSxdFFQC4P
VwIDAQAB
-----END PUBLIC KEY-----
";

/// Test-only P-256 key pair (generated with `openssl ecparam -name prime256v1 -genkey`): private half, PKCS#8.
const EC_PRIVATE_KEY: &str = "\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg+aSEjlR8AgJZja+5
fgwEV6k8i3kqWy0k7N1F7ViDVz6hRANCAAR8ijdk+12uXjMrim3kLrhajHnS3Byr
gEApHjTEYGnNDBiBzMQD78Lhh2VT3thNL6MtyLc7FEAotHjVC5jjqCR6
-----END PRIVATE KEY-----
";

/// Public half of [`EC_PRIVATE_KEY`] (SPKI).
const EC_PUBLIC_KEY: &str = "\
-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEfIo3ZPtdrl4zK4pt5C64Wox50twc
q4BAKR40xGBpzQwYgczEA+/C4YdlU97YTS+jLci3OxRAKLR41QuY46gkeg==
-----END PUBLIC KEY-----
";

/// Test-only P-384 key pair (generated with `openssl ecparam -name secp384r1 -genkey`): private half, PKCS#8.
const EC384_PRIVATE_KEY: &str = "\
-----BEGIN PRIVATE KEY-----
MIG2AgEAMBAGByqGSM49AgEGBSuBBAAiBIGeMIGbAgEBBDDhUsrX/Kvr+wSuy+iZ
9u245Mgajl6LU4vFQqyC3FQykoYM3GqNKwVsBQeof/qdnOihZANiAARgP0GZz/Mx
wCE+8ngyqtOf9tOZp69UnR/uFQMwopdBFKRIENAvADzqAM8+rxZgont6+ClKuXZv
wpWhDjcQT42HlKoSKNztMt6W4F1f6Xm63Kau8546CBk8u0vY/t8gTm0=
-----END PRIVATE KEY-----
";

/// Public half of [`EC384_PRIVATE_KEY`] (SPKI).
const EC384_PUBLIC_KEY: &str = "\
-----BEGIN PUBLIC KEY-----
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEYD9Bmc/zMcAhPvJ4MqrTn/bTmaevVJ0f
7hUDMKKXQRSkSBDQLwA86gDPPq8WYKJ7evgpSrl2b8KVoQ43EE+Nh5SqEijc7TLe
luBdX+l5utymrvOeOggZPLtL2P7fIE5t
-----END PUBLIC KEY-----
";

fn plugin(config: Value) -> JwtAuth {
    JwtAuth::init(Config(config)).expect("valid configuration")
}

fn hmac_plugin() -> JwtAuth {
    plugin(json!({ "hmac_secret": SECRET }))
}

fn all_keys_plugin() -> JwtAuth {
    plugin(
        json!({ "hmac_secret": SECRET, "rsa_public_key": RSA_PUBLIC_KEY, "ecdsa_public_key": EC_PUBLIC_KEY }),
    )
}

fn sign(alg: Algorithm, claims: &Value, key: &EncodingKey) -> String {
    encode(&Header::new(alg), claims, key).expect("token signs")
}

fn hs(alg: Algorithm, claims: &Value) -> String {
    sign(alg, claims, &EncodingKey::from_secret(SECRET.as_bytes()))
}

fn hs256(claims: &Value) -> String {
    hs(Algorithm::HS256, claims)
}

fn rs(alg: Algorithm, claims: &Value) -> String {
    sign(
        alg,
        claims,
        &EncodingKey::from_rsa_pem(RSA_PRIVATE_KEY.as_bytes()).expect("RSA private key"),
    )
}

fn es256(claims: &Value) -> String {
    sign(
        Algorithm::ES256,
        claims,
        &EncodingKey::from_ec_pem(EC_PRIVATE_KEY.as_bytes()).expect("EC private key"),
    )
}

fn connect_request(token: &str) -> ConnectRequest {
    ConnectRequest::new().token(token)
}

fn refresh_request(token: &str, user: &str) -> ConnectRequest {
    connect_request(token).refresh(true).user(user)
}

/// By user `42` on connection `client-1` (the SDK's default connection id).
fn subscribe_request(token: &str, channel: &str) -> SubscribeRequest {
    SubscribeRequest::new(channel).user("42").token(token)
}

fn allowed(verdict: ConnectVerdict) -> ConnectAllow {
    match verdict {
        ConnectVerdict::Allow(allow) => allow,
        other => panic!("expected allow, got {other:?}"),
    }
}

fn connect_denied(verdict: ConnectVerdict) -> Deny {
    match verdict {
        ConnectVerdict::Deny(deny) => deny,
        other => panic!("expected deny, got {other:?}"),
    }
}

fn subscribed(verdict: SubscribeVerdict) -> SubscribeAllow {
    match verdict {
        SubscribeVerdict::Allow(allow) => allow,
        other => panic!("expected allow, got {other:?}"),
    }
}

fn subscribe_denied(verdict: SubscribeVerdict) -> Deny {
    match verdict {
        SubscribeVerdict::Deny(deny) => deny,
        other => panic!("expected deny, got {other:?}"),
    }
}

/// The connect code for `token` at `NOW`.
fn connect_code(plugin: &JwtAuth, token: &str) -> u32 {
    connect_denied(plugin.connect_at(&connect_request(token), NOW)).code
}

/// The subscribe code for `token` on `channel` at `NOW`.
fn subscribe_code(plugin: &JwtAuth, token: &str, channel: &str) -> u32 {
    subscribe_denied(plugin.subscribe_at(&subscribe_request(token, channel), NOW)).code
}

fn user_claims() -> Value {
    json!({ "sub": "42", "exp": NOW + HOUR })
}

// ---- configuration ----

#[test]
fn metadata_lists_connect_and_subscribe() {
    assert_eq!(JwtAuth::NAME, "jwt-auth");
    assert_eq!(JwtAuth::HOOKS, Hooks::CONNECT | Hooks::SUBSCRIBE);
    assert_eq!(herald_sdk::check_hooks(&hmac_plugin()), Ok(()));
}

#[test]
fn init_without_a_key_fails_with_a_clear_message() {
    for config in [
        json!({}),
        json!({ "hmac_secret": "", "rsa_public_key": " " }),
        json!({ "audience": "herald" }),
    ] {
        let error = JwtAuth::init(Config(config)).err().expect("init fails");
        assert!(
            error.contains("hmac_secret") && error.contains("rsa_public_key"),
            "{error}"
        );
    }
}

#[test]
fn init_rejects_bad_keys_and_unknown_settings() {
    let error = JwtAuth::init(Config(json!({ "rsa_public_key": "not a pem" })))
        .err()
        .expect("bad RSA key");
    assert!(error.contains("rsa_public_key"), "{error}");
    let error = JwtAuth::init(Config(json!({ "ecdsa_public_key": "not a pem" })))
        .err()
        .expect("bad EC key");
    assert!(error.contains("ecdsa_public_key"), "{error}");
    let error = JwtAuth::init(Config(json!({ "hmac_secret": SECRET, "audiance": "x" })))
        .err()
        .expect("typo");
    assert!(error.contains("audiance"), "{error}");
    assert!(JwtAuth::init(Config(json!({ "hmac_secret": 5 }))).is_err());
}

#[test]
fn init_reads_json_config_text_as_herald_passes_it() {
    let text =
        serde_json::to_string(&json!({ "rsa_public_key": RSA_PUBLIC_KEY, "issuer": "auth" }))
            .unwrap();
    let plugin = JwtAuth::init(Config::from_json(&text).unwrap()).expect("config accepted");
    let token = rs(Algorithm::RS256, &json!({ "sub": "42", "iss": "auth" }));
    assert_eq!(
        allowed(plugin.connect_at(&connect_request(&token), NOW)).user,
        "42"
    );
}

// ---- connection tokens ----

#[test]
fn empty_tokens_pass() {
    let plugin = hmac_plugin();
    assert_eq!(
        plugin.connect_at(&connect_request(""), NOW),
        ConnectVerdict::Pass
    );
    assert_eq!(
        plugin.subscribe_at(&subscribe_request("", "$private"), NOW),
        SubscribeVerdict::Pass
    );
}

#[test]
fn valid_connection_token_allows_with_identity() {
    let token = hs256(&json!({
        "sub": "42",
        "exp": NOW + HOUR,
        "iat": NOW,
        "info": { "name": "Ada", "roles": ["admin"] },
        "channels": ["news", "user#42"],
        "subs": { "news": {}, "extra": { "data": { "x": 1 } } },
        "meta": { "secret": true },
    }));
    let allow = allowed(hmac_plugin().connect_at(&connect_request(&token), NOW));
    assert_eq!(allow.user, "42");
    assert_eq!(allow.channels, ["news", "user#42", "extra"]);
    assert_eq!(allow.expire_at, Some(NOW + HOUR));
    assert_eq!(
        allow.info.as_deref(),
        Some(br#"{"name":"Ada","roles":["admin"]}"#.as_slice())
    );
    assert_eq!(allow.data, None);
}

#[test]
fn every_hmac_algorithm_is_accepted() {
    let plugin = hmac_plugin();
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let allow = allowed(plugin.connect_at(&connect_request(&hs(alg, &user_claims())), NOW));
        assert_eq!(allow.user, "42", "{alg:?}");
    }
}

#[test]
fn rsa_algorithms_are_accepted() {
    let plugin = plugin(json!({ "rsa_public_key": RSA_PUBLIC_KEY }));
    for alg in [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512] {
        let allow = allowed(plugin.connect_at(&connect_request(&rs(alg, &user_claims())), NOW));
        assert_eq!(
            (allow.user.as_str(), allow.expire_at),
            ("42", Some(NOW + HOUR)),
            "{alg:?}"
        );
    }
}

#[test]
fn es256_is_accepted() {
    let plugin = plugin(json!({ "ecdsa_public_key": EC_PUBLIC_KEY }));
    let allow = allowed(plugin.connect_at(&connect_request(&es256(&user_claims())), NOW));
    assert_eq!(allow.user, "42");
}

#[test]
fn es384_is_accepted_with_a_p384_key_and_curves_must_match() {
    let p384 = plugin(json!({ "ecdsa_public_key": EC384_PUBLIC_KEY }));
    let key = EncodingKey::from_ec_pem(EC384_PRIVATE_KEY.as_bytes()).expect("P-384 private key");
    let token = sign(Algorithm::ES384, &user_claims(), &key);
    assert_eq!(
        allowed(p384.connect_at(&connect_request(&token), NOW)).user,
        "42"
    );
    // An ES256 token against the P-384 key, and the ES384 token against the P-256 key.
    assert_eq!(
        connect_code(&p384, &es256(&user_claims())),
        codes::INVALID_TOKEN
    );
    let p256 = plugin(json!({ "ecdsa_public_key": EC_PUBLIC_KEY }));
    assert_eq!(connect_code(&p256, &token), codes::INVALID_TOKEN);
}

#[test]
fn each_algorithm_uses_its_own_key_when_several_are_configured() {
    let plugin = all_keys_plugin();
    for token in [
        hs256(&user_claims()),
        rs(Algorithm::RS256, &user_claims()),
        es256(&user_claims()),
    ] {
        assert_eq!(
            allowed(plugin.connect_at(&connect_request(&token), NOW)).user,
            "42"
        );
    }
}

#[test]
fn expire_at_overrides_exp_and_zero_means_never() {
    let plugin = hmac_plugin();
    let at = |claims: Value| {
        allowed(plugin.connect_at(&connect_request(&hs256(&claims)), NOW)).expire_at
    };
    assert_eq!(
        at(json!({ "sub": "42", "exp": NOW + HOUR, "expire_at": NOW + 2 * HOUR })),
        Some(NOW + 2 * HOUR)
    );
    assert_eq!(
        at(json!({ "sub": "42", "exp": NOW + HOUR, "expire_at": 0 })),
        None
    );
    assert_eq!(at(json!({ "sub": "42" })), None, "no exp: never expires");
    assert_eq!(
        at(json!({ "sub": "42", "exp": (NOW + HOUR) as f64 + 0.5 })),
        Some(NOW + HOUR),
        "fractional exp"
    );
}

#[test]
fn expired_token_is_error_109() {
    let plugin = hmac_plugin();
    assert_eq!(
        connect_code(&plugin, &hs256(&json!({ "sub": "42", "exp": NOW - 10 }))),
        codes::TOKEN_EXPIRED
    );
    assert_eq!(
        connect_code(&plugin, &hs256(&json!({ "sub": "42", "exp": NOW }))),
        109,
        "exp is exclusive"
    );
    // exp is validated even when expire_at extends the connection.
    let token = hs256(&json!({ "sub": "42", "exp": NOW - 10, "expire_at": NOW + HOUR }));
    let deny = connect_denied(plugin.connect_at(&connect_request(&token), NOW));
    assert_eq!((deny.code, deny.reason.as_str()), (109, "token expired"));
}

#[test]
fn nbf_in_the_future_is_error_109() {
    let plugin = hmac_plugin();
    let token = hs256(&json!({ "sub": "42", "exp": NOW + HOUR, "nbf": NOW + 60 }));
    assert_eq!(connect_code(&plugin, &token), codes::TOKEN_EXPIRED);
    let token = hs256(&json!({ "sub": "42", "exp": NOW + HOUR, "nbf": NOW }));
    assert_eq!(
        allowed(plugin.connect_at(&connect_request(&token), NOW)).user,
        "42"
    );
}

#[test]
fn bad_signature_is_close_3500() {
    let plugin = hmac_plugin();
    let forged = sign(
        Algorithm::HS256,
        &user_claims(),
        &EncodingKey::from_secret(b"another secret"),
    );
    let deny = connect_denied(plugin.connect_at(&connect_request(&forged), NOW));
    assert_eq!((deny.code, deny.reason.as_str()), (3500, "invalid token"));

    // A payload swapped under a valid signature.
    let token = hs256(&user_claims());
    let other = hs256(&json!({ "sub": "admin", "exp": NOW + HOUR }));
    let parts: Vec<&str> = token.split('.').collect();
    let other_parts: Vec<&str> = other.split('.').collect();
    let tampered = format!("{}.{}.{}", parts[0], other_parts[1], parts[2]);
    assert_eq!(connect_code(&plugin, &tampered), codes::INVALID_TOKEN);

    let rsa = plugin_with_other_rsa_key();
    assert_eq!(
        connect_code(&rsa, &rs(Algorithm::RS256, &user_claims())),
        codes::INVALID_TOKEN
    );
}

fn plugin_with_other_rsa_key() -> JwtAuth {
    plugin(json!({ "rsa_public_key": OTHER_RSA_PUBLIC_KEY }))
}

#[test]
fn malformed_tokens_are_close_3500() {
    let plugin = hmac_plugin();
    for token in [
        "abc",
        "a.b.c",
        "..",
        "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.c2ln",
    ] {
        assert_eq!(
            connect_code(&plugin, token),
            codes::INVALID_TOKEN,
            "{token}"
        );
    }
    // Claims of the wrong type.
    assert_eq!(
        connect_code(&plugin, &hs256(&json!({ "sub": 42 }))),
        codes::INVALID_TOKEN
    );
    assert_eq!(
        connect_code(&plugin, &hs256(&json!({ "sub": "42", "exp": "soon" }))),
        codes::INVALID_TOKEN
    );
    assert_eq!(
        connect_code(&plugin, &hs256(&json!({ "sub": "42", "channels": "news" }))),
        codes::INVALID_TOKEN
    );
}

#[test]
fn alg_none_is_close_3500() {
    let header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"; // {"alg":"none","typ":"JWT"}
    let payload = "eyJzdWIiOiI0MiJ9"; // {"sub":"42"}
    assert_eq!(
        connect_code(&hmac_plugin(), &format!("{header}.{payload}.")),
        codes::INVALID_TOKEN
    );
}

#[test]
fn algorithm_without_a_configured_key_is_close_3500() {
    let rsa_only = plugin(json!({ "rsa_public_key": RSA_PUBLIC_KEY }));
    assert_eq!(
        connect_code(&rsa_only, &hs256(&user_claims())),
        codes::INVALID_TOKEN
    );
    assert_eq!(
        connect_code(&rsa_only, &es256(&user_claims())),
        codes::INVALID_TOKEN
    );
    let hmac_only = hmac_plugin();
    assert_eq!(
        connect_code(&hmac_only, &rs(Algorithm::RS256, &user_claims())),
        codes::INVALID_TOKEN
    );
    // The classic confusion: an HS256 token keyed with the RSA public key's PEM text.
    let confused = sign(
        Algorithm::HS256,
        &user_claims(),
        &EncodingKey::from_secret(RSA_PUBLIC_KEY.as_bytes()),
    );
    assert_eq!(connect_code(&rsa_only, &confused), codes::INVALID_TOKEN);
}

#[test]
fn audience_is_checked_only_when_configured() {
    let plugin = plugin(json!({ "hmac_secret": SECRET, "audience": "herald" }));
    let token = |aud: Value| hs256(&json!({ "sub": "42", "exp": NOW + HOUR, "aud": aud }));
    assert_eq!(
        allowed(plugin.connect_at(&connect_request(&token(json!("herald"))), NOW)).user,
        "42"
    );
    let listed = token(json!(["other", "herald"]));
    assert_eq!(
        allowed(plugin.connect_at(&connect_request(&listed), NOW)).user,
        "42"
    );
    assert_eq!(
        connect_code(&plugin, &token(json!("other"))),
        codes::INVALID_TOKEN
    );
    assert_eq!(
        connect_code(&plugin, &hs256(&user_claims())),
        codes::INVALID_TOKEN,
        "aud required"
    );
    // Not configured: any aud is accepted.
    assert_eq!(
        allowed(hmac_plugin().connect_at(&connect_request(&token(json!("other"))), NOW)).user,
        "42"
    );
}

#[test]
fn issuer_is_checked_only_when_configured() {
    let plugin = plugin(json!({ "hmac_secret": SECRET, "issuer": "https://auth.example" }));
    let token = |iss: &str| hs256(&json!({ "sub": "42", "exp": NOW + HOUR, "iss": iss }));
    assert_eq!(
        allowed(plugin.connect_at(&connect_request(&token("https://auth.example")), NOW)).user,
        "42"
    );
    assert_eq!(
        connect_code(&plugin, &token("https://evil.example")),
        codes::INVALID_TOKEN
    );
    assert_eq!(
        connect_code(&plugin, &hs256(&user_claims())),
        codes::INVALID_TOKEN,
        "iss required"
    );
    assert_eq!(
        allowed(hmac_plugin().connect_at(&connect_request(&token("anyone")), NOW)).user,
        "42"
    );
}

#[test]
fn channel_claim_in_a_connection_token_is_close_3500() {
    let token = hs256(&json!({ "sub": "42", "exp": NOW + HOUR, "channel": "news" }));
    assert_eq!(connect_code(&hmac_plugin(), &token), codes::INVALID_TOKEN);
    // Even an expired one: it is the wrong kind of token.
    let token = hs256(&json!({ "sub": "42", "exp": NOW - 1, "channel": "news" }));
    assert_eq!(connect_code(&hmac_plugin(), &token), codes::INVALID_TOKEN);
}

#[test]
fn empty_sub_needs_allow_anonymous_tokens() {
    for claims in [
        json!({ "exp": NOW + HOUR }),
        json!({ "sub": "", "exp": NOW + HOUR }),
    ] {
        let token = hs256(&claims);
        let deny = connect_denied(hmac_plugin().connect_at(&connect_request(&token), NOW));
        assert_eq!(
            (deny.code, deny.reason.as_str()),
            (3507, "permission denied")
        );
        let anonymous = plugin(json!({ "hmac_secret": SECRET, "allow_anonymous_tokens": true }));
        let allow = allowed(anonymous.connect_at(&connect_request(&token), NOW));
        assert_eq!(
            (allow.user.as_str(), allow.expire_at),
            ("", Some(NOW + HOUR))
        );
    }
}

#[test]
fn on_connect_uses_the_current_clock() {
    let now = herald_sdk::now_seconds();
    let plugin = hmac_plugin();
    let fresh = hs256(&json!({ "sub": "42", "exp": now + HOUR }));
    assert_eq!(
        allowed(plugin.on_connect(&connect_request(&fresh))).user,
        "42"
    );
    let stale = hs256(&json!({ "sub": "42", "exp": now - HOUR }));
    assert_eq!(
        connect_denied(plugin.on_connect(&connect_request(&stale))).code,
        codes::TOKEN_EXPIRED
    );
}

// ---- refresh ----

#[test]
fn refresh_with_a_valid_token_extends_the_connection() {
    let token = hs256(&json!({ "sub": "42", "exp": NOW + 2 * HOUR }));
    let allow = allowed(hmac_plugin().connect_at(&refresh_request(&token, "42"), NOW));
    assert_eq!(
        (allow.user.as_str(), allow.expire_at),
        ("42", Some(NOW + 2 * HOUR))
    );
}

#[test]
fn refresh_with_an_expired_token_is_close_3005() {
    let token = hs256(&json!({ "sub": "42", "exp": NOW - 1 }));
    let deny = connect_denied(hmac_plugin().connect_at(&refresh_request(&token, "42"), NOW));
    assert_eq!(
        (deny.code, deny.reason.as_str()),
        (3005, "connection expired")
    );
}

#[test]
fn refresh_with_an_invalid_token_or_another_user_is_close_3500() {
    let plugin = hmac_plugin();
    let other_user = hs256(&json!({ "sub": "43", "exp": NOW + HOUR }));
    assert_eq!(
        connect_denied(plugin.connect_at(&refresh_request(&other_user, "42"), NOW)).code,
        3500
    );
    let forged = sign(
        Algorithm::HS256,
        &user_claims(),
        &EncodingKey::from_secret(b"nope"),
    );
    assert_eq!(
        connect_denied(plugin.connect_at(&refresh_request(&forged, "42"), NOW)).code,
        3500
    );
}

// ---- subscription tokens ----

fn sub_claims(channel: &str) -> Value {
    json!({ "sub": "42", "channel": channel, "exp": NOW + HOUR })
}

#[test]
fn valid_subscription_token_allows_with_info_and_data() {
    let token = hs256(&json!({
        "sub": "42",
        "channel": "$private",
        "client": "client-1",
        "exp": NOW + HOUR,
        "info": { "role": "owner" },
        "data": [1, 2, 3],
    }));
    let allow = subscribed(hmac_plugin().subscribe_at(&subscribe_request(&token, "$private"), NOW));
    assert_eq!(
        allow.info.as_deref(),
        Some(br#"{"role":"owner"}"#.as_slice())
    );
    assert_eq!(allow.data.as_deref(), Some(b"[1,2,3]".as_slice()));
    assert_eq!(allow.expire_at, Some(NOW + HOUR));

    // Minimal: no client, info, data or exp.
    let token = hs256(&json!({ "sub": "42", "channel": "$private" }));
    let allow = subscribed(hmac_plugin().subscribe_at(&subscribe_request(&token, "$private"), NOW));
    assert_eq!(
        (allow.info, allow.data, allow.expire_at),
        (None, None, None)
    );

    // expire_at overrides exp; RSA keys work for subscriptions too.
    let claims =
        json!({ "sub": "42", "channel": "$private", "exp": NOW + HOUR, "expire_at": NOW + 60 });
    let allow = subscribed(all_keys_plugin().subscribe_at(
        &subscribe_request(&rs(Algorithm::RS256, &claims), "$private"),
        NOW,
    ));
    assert_eq!(allow.expire_at, Some(NOW + 60));
}

#[test]
fn subscription_token_for_another_channel_is_close_3500() {
    let token = hs256(&sub_claims("$other"));
    let deny =
        subscribe_denied(hmac_plugin().subscribe_at(&subscribe_request(&token, "$private"), NOW));
    assert_eq!((deny.code, deny.reason.as_str()), (3500, "invalid token"));
}

#[test]
fn subscription_token_for_another_user_is_close_3500() {
    let token = hs256(&json!({ "sub": "43", "channel": "$private", "exp": NOW + HOUR }));
    assert_eq!(
        subscribe_code(&hmac_plugin(), &token, "$private"),
        codes::INVALID_TOKEN
    );
    // An anonymous connection cannot use a user's token either.
    let request = subscribe_request(&hs256(&sub_claims("$private")), "$private").user("");
    assert_eq!(
        subscribe_denied(hmac_plugin().subscribe_at(&request, NOW)).code,
        codes::INVALID_TOKEN
    );
}

#[test]
fn subscription_token_for_another_client_is_close_3500() {
    let token = hs256(
        &json!({ "sub": "42", "channel": "$private", "client": "client-2", "exp": NOW + HOUR }),
    );
    assert_eq!(
        subscribe_code(&hmac_plugin(), &token, "$private"),
        codes::INVALID_TOKEN
    );
}

#[test]
fn expired_subscription_token_is_error_109() {
    let plugin = hmac_plugin();
    let token = hs256(&json!({ "sub": "42", "channel": "$private", "exp": NOW - 1 }));
    let deny = subscribe_denied(plugin.subscribe_at(&subscribe_request(&token, "$private"), NOW));
    assert_eq!((deny.code, deny.reason.as_str()), (109, "token expired"));
    let token = hs256(&json!({ "sub": "42", "channel": "$private", "nbf": NOW + 5 }));
    assert_eq!(
        subscribe_code(&plugin, &token, "$private"),
        codes::TOKEN_EXPIRED
    );
}

#[test]
fn invalid_subscription_token_is_error_103() {
    let plugin = all_keys_plugin();
    let forged = sign(
        Algorithm::HS256,
        &sub_claims("$private"),
        &EncodingKey::from_secret(b"nope"),
    );
    let deny = subscribe_denied(plugin.subscribe_at(&subscribe_request(&forged, "$private"), NOW));
    assert_eq!(
        (deny.code, deny.reason.as_str()),
        (103, "permission denied")
    );
    assert_eq!(
        subscribe_code(&plugin, "garbage", "$private"),
        codes::PERMISSION_DENIED
    );
    // A connection token (no channel claim) is not a subscription token.
    assert_eq!(
        subscribe_code(&plugin, &hs256(&user_claims()), "$private"),
        codes::PERMISSION_DENIED
    );
    let aud = plugin_with_audience();
    assert_eq!(
        subscribe_code(&aud, &hs256(&sub_claims("$private")), "$private"),
        codes::PERMISSION_DENIED
    );
}

/// Pusher clients send their channel signature (`key:hex`) as the token: the host checks it, the plugin
/// passes, so loading jwt-auth does not break signed Pusher subscriptions.
#[test]
fn pusher_channel_signatures_are_left_to_the_host() {
    let plugin = all_keys_plugin();
    let signature = format!("app-key:{}", "0f".repeat(32));
    assert_eq!(
        plugin.subscribe_at(&subscribe_request(&signature, "private-orders"), NOW),
        SubscribeVerdict::Pass
    );
}

fn plugin_with_audience() -> JwtAuth {
    plugin(json!({ "hmac_secret": SECRET, "audience": "herald" }))
}

#[test]
fn sub_refresh_with_an_invalid_token_is_close_3500() {
    let plugin = hmac_plugin();
    let forged = sign(
        Algorithm::HS256,
        &sub_claims("$private"),
        &EncodingKey::from_secret(b"nope"),
    );
    let request = subscribe_request(&forged, "$private").refresh(true);
    assert_eq!(
        subscribe_denied(plugin.subscribe_at(&request, NOW)).code,
        codes::INVALID_TOKEN
    );
    let valid = subscribe_request(&hs256(&sub_claims("$private")), "$private").refresh(true);
    assert_eq!(
        subscribed(plugin.subscribe_at(&valid, NOW)).expire_at,
        Some(NOW + HOUR)
    );
}

// ------------------------------------------------------------------------------------------- JWKS ---

/// Test-only Ed25519 key pair (generated with `openssl genpkey -algorithm ed25519`).
const ED_PRIVATE_KEY: &str = "\
-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIDF4Zt6ohWoi7+1t/85Q5PxIOheVt9CDFUBDIJAHRf67
-----END PRIVATE KEY-----
";
const ED_PUBLIC_KEY: &str = "\
-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEACKqXXMXMDQx9r4HzcS8FPM/MNMXKUwW5oWhpxG7hG5E=
-----END PUBLIC KEY-----
";

/// `RSA_PUBLIC_KEY` as a JWK with `kid`.
fn rsa_jwk(kid: &str) -> Value {
    json!({
        "kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "e": "AQAB",
        "n": "02fGvl9dcpDT2CCi_k9QCJ3xSebVZon6EVUuOjtz9wn3BOc8iwGpXDl9aONvpblsPNumO4BW9CQqRLB53sEjEiOs_BEtozAd-4jeMXAGCeKLq79kiSpNUxb0iKLtZzsgrsLM49LDOn5ubghNNQKyknm_KNi3gJN3ma3SCDn110bAasY47QqSQVkB--K52TgnMmj79j3U7zdTvNNCOqpooRXPCIXSBZmICrnUzbufnlURwXAHacgDdljX4yRv-RcKk2Cf8fNguWYWUPqjzq1q-EjR0nVDZw8wmbjYEcvSL5tY9zG4JAvVEn2JfpUj6uxp94cI8WxscAJYKKEXFJLNfQ",
    })
}

/// `ED_PUBLIC_KEY` as a JWK with `kid`.
fn ed_jwk(kid: &str) -> Value {
    json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "EdDSA",
           "x": "CKqXXMXMDQx9r4HzcS8FPM_MNMXKUwW5oWhpxG7hG5E"})
}

fn signed_with_kid(alg: Algorithm, kid: &str, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    encode(&header, claims, key).expect("token signs")
}

fn rs256_kid(kid: &str) -> String {
    let key = EncodingKey::from_rsa_pem(RSA_PRIVATE_KEY.as_bytes()).expect("RSA private key");
    signed_with_kid(Algorithm::RS256, kid, &user_claims(), &key)
}

fn eddsa_kid(kid: &str) -> String {
    let key = EncodingKey::from_ed_pem(ED_PRIVATE_KEY.as_bytes()).expect("Ed25519 private key");
    signed_with_kid(Algorithm::EdDSA, kid, &user_claims(), &key)
}

/// A JWKS plugin whose identity provider is a stub serving the key set in `keys` (changeable by the
/// test) and counting its requests.
fn jwks_plugin(
    keys: Value,
) -> (
    JwtAuth,
    std::rc::Rc<RefCell<Value>>,
    std::rc::Rc<std::cell::Cell<u32>>,
) {
    state::clear();
    let keys = std::rc::Rc::new(RefCell::new(keys));
    let fetches = std::rc::Rc::new(std::cell::Cell::new(0));
    let (served, counted) = (keys.clone(), fetches.clone());
    http::stub(move |request| {
        assert_eq!(request.url, "https://idp.test/certs");
        counted.set(counted.get() + 1);
        let body = json!({ "keys": *served.borrow() }).to_string();
        Ok(http::Response::json(200, body))
    });
    let plugin = plugin(json!({"jwks_url": "https://idp.test/certs"}));
    (plugin, keys, fetches)
}

#[test]
fn jwks_keys_verify_tokens_by_kid_with_one_fetch() {
    let (plugin, _, fetches) = jwks_plugin(json!([rsa_jwk("k1"), ed_jwk("k2")]));
    assert_eq!(
        allowed(plugin.connect_at(&connect_request(&rs256_kid("k1")), NOW)).user,
        "42"
    );
    assert_eq!(
        allowed(plugin.connect_at(&connect_request(&eddsa_kid("k2")), NOW)).user,
        "42"
    );
    assert_eq!(fetches.get(), 1, "the set is fetched once");
    // A token signed by one key but naming another's kid is refused.
    assert_eq!(
        connect_code(&plugin, &rs256_kid("k2")),
        codes::INVALID_TOKEN
    );
}

#[test]
fn a_rotated_key_is_found_by_refetching_at_most_once_per_interval() {
    let (plugin, keys, fetches) = jwks_plugin(json!([rsa_jwk("old")]));
    assert_eq!(
        allowed(plugin.connect_at(&connect_request(&rs256_kid("old")), NOW)).user,
        "42"
    );
    // The provider rotates: a token with the new kid makes the plugin fetch the set again.
    *keys.borrow_mut() = json!([rsa_jwk("old"), ed_jwk("new")]);
    assert_eq!(
        allowed(plugin.connect_at(&connect_request(&eddsa_kid("new")), NOW)).user,
        "42"
    );
    assert_eq!(fetches.get(), 2);
    // Made-up kids do not make it fetch again within the interval the rotation's refetch began.
    for n in 0..5 {
        let token = rs256_kid(&format!("made-up-{n}"));
        assert_eq!(connect_code(&plugin, &token), codes::INVALID_TOKEN);
    }
    assert_eq!(fetches.get(), 2, "at most one refetch per interval");
}

#[test]
fn an_unreachable_key_set_fails_closed_without_blaming_the_token() {
    state::clear();
    http::stub(|_| Err(http::Error::Unavailable("connection refused".into())));
    let plugin = plugin(json!({"jwks_url": "https://idp.test/certs"}));
    assert_eq!(connect_code(&plugin, &rs256_kid("k1")), 3004);
    let token = {
        let key = EncodingKey::from_rsa_pem(RSA_PRIVATE_KEY.as_bytes()).expect("RSA private key");
        let claims = json!({"sub": "42", "channel": "news", "exp": NOW + HOUR});
        signed_with_kid(Algorithm::RS256, "k1", &claims, &key)
    };
    assert_eq!(subscribe_code(&plugin, &token, "news"), codes::INTERNAL);
    // A key set that is not one, or that publishes a symmetric key, verifies nothing.
    state::clear();
    http::stub(|_| Ok(http::Response::json(200, "<html>")));
    let plugin = self::plugin(json!({"jwks_url": "https://idp.test/certs"}));
    assert_eq!(connect_code(&plugin, &rs256_kid("k1")), 3004);
    state::clear();
    http::stub(|_| {
        let keys = json!({"keys": [{"kty": "oct", "kid": "k1", "k": "c2VjcmV0"}]});
        Ok(http::Response::json(200, keys.to_string()))
    });
    let plugin = self::plugin(json!({"jwks_url": "https://idp.test/certs"}));
    assert_eq!(
        connect_code(&plugin, &hs256(&user_claims())),
        codes::INVALID_TOKEN
    );
}

#[test]
fn eddsa_is_accepted_with_a_configured_key() {
    let plugin = plugin(json!({ "eddsa_public_key": ED_PUBLIC_KEY }));
    let key = EncodingKey::from_ed_pem(ED_PRIVATE_KEY.as_bytes()).expect("Ed25519 private key");
    let token = sign(Algorithm::EdDSA, &user_claims(), &key);
    assert_eq!(
        allowed(plugin.connect_at(&connect_request(&token), NOW)).user,
        "42"
    );
    assert_eq!(
        connect_code(&plugin, &rs(Algorithm::RS256, &user_claims())),
        codes::INVALID_TOKEN
    );
}
