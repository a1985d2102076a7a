//! End to end with the official centrifuge-js SDK and the `jwt-auth` plugin: `tests/e2e/js/jwt.js` mints
//! HS256 and RS256 tokens with Node's crypto and checks, against a real Herald that loads the plugin, the
//! 109 → `getToken` → connect flow, connection refresh past `exp` + `expired_close_delay`, subscription
//! tokens for `$` channels (and 103 without one), presence of two users, and the terminal 3500 of a token
//! with a bad signature.
//!
//! Needs the plugin built (`./plugins/build`) and Node 20+ with `npm ci --prefix tests/e2e/js`. A missing
//! plugin, toolchain or dependency fails the test with those instructions; it is never skipped.

use std::path::Path;

use herald_tests::{API_KEY, TestServer, built_plugin, require_node};
use tokio::process::Command;

/// The repository root, where the script's relative path starts.
const REPO_ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The HS256 secret the plugin verifies with and the script signs with.
const HMAC_SECRET: &str = "herald-e2e-jwt-hmac-secret-0123456789abcdef";

/// A test-only RSA key pair (`openssl genrsa 2048`), never used for anything else: the script signs RS256
/// tokens with the private key, the plugin verifies them with the public one.
const RSA_PRIVATE_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQC1x1/VTXu8Ww7q
XvRAdaqxW99l+PFat8ElCrL0/9ezxPai0uqyNudP/0ZQSiE/Gjw9Iugtu05EwOKU
GLgRmfFel6txeX1doejg8ikV5JZXCEhFsXc+m9NlAAGKm5RZOyeqgC6rqbBxGgal
JQZIcb7/tSy8RUEEiGU1pvTxLZZy+wcC2VfDqReCW8W2VQPlXxIADMFVLw1sYEIm
OqREtsopODuWfw6k/nWDXTayF521SBjzYyr40yiIZdwkxGHAuh1KPLuA2D/nh7Ki
geTNe8hqrwZlKSCzP6MczXKKuppi1Jp9be0YcioDNIum8JZPAp8qSVgiFkziS8yM
wnqYOP2HAgMBAAECggEAB/7z6BmB34eBa3SvXSGeHmre7KxfMJhCMUVDUirp8tq9
rUHb2FpVr41C8msukaV2kDXiUN3+sCdP5XzobMByqiIxkvV35XqYiiZSHeSG+N+H
1lD3xCkmWP/GvD+M0fsb0h63xCpqH7FGYcbXtOi+op7Z5QTbuoTCTEfCkrf2v6pm
cqIlqctYq6YsmvX3qmKVPJw6GD6IZd8CZRohPWhMAg174/O3kHwUMYQhYpYLd+IP
x1ey36RJFdr4GeZVGzjbYnMmBbu5TaI2ytHAjq35B0nqDiztGWt2oLZWw+hj7KYm
V2ugRSJWlgUs5iCo8A6pcivC45OD8t6lqjEraWzS6QKBgQDzBAcnGjqocroIZ8OB
oid4ilRYxY+XJCTbFd0lyn2aeEhUUbUx6pq1arxQoJvwwZQ5ihwUFX/7E4Q4XfpH
UCJh+13F3H9oTctYdTuotjA13UfsxRobPWNUKoxI/6m0JRz61AsYmJEVpb9kh4n0
jwsUEjT/e0lYRpvkWeoEZj8kGwKBgQC/fb86mmcuBJ0/Q21Pb5EvqIYh7jOqvSZV
JTeLcb/QiDi3nJm28G71U0dp3htWx554uAN9rpnjoPtvnwa8UX6+aybeMtRnWeE3
lIERZcKTMzkjduy4CGAbn0abHtIe2sYmFrcw5+IDHYLJT0aCRQKRx21/2lby1lze
NS3TsRJrBQKBgQDW98gwAdbDrYD88HUUVlGeIpeMU266n0Fu//85b8799srcs86a
ElK6iml81SY8qbCp2Y8PARnOCyyaBB/iN3PCwu3nmi6mILLxU/rrOgaZj14RhyWZ
1QrpqB2icW44KeBhzXLnVgZ5ZL5SekdBq8t7/MMfAHsX+JXsQNFvBNdz4wKBgCyt
rz+CJQ7UnsfS+J8vHcXr4RfrlvyAU4BMRbBwYtvJ3MnibO8FHC57Ns9ZtjFCNBRg
gtgBNACrX98EULMBpLvTDmeLnolarDSmnpKrloF30x4WMlciBSKMwBGTWF1AmDjs
1eNARziI2yoTKBVe+qF+0WqiS+Uu5M4nxEB/MRftAoGBAMvOQaJ6EEAXKhqr6+4s
UFJWDFvXtmfQMgwb4hJEXegR9kOVSDzdWg4xPghQUTrk7wTdlAZlmoWltEAKk4rI
gV1ri9PJLZuU176y6BF2+k3F01sz7qlQQK9KabVdLli17nc0KaTyjjbyaNatotzH
RQwzN5DLMUK0JlkvFBgloVam
-----END PRIVATE KEY-----
";

/// The public half of [`RSA_PRIVATE_KEY`] (`openssl rsa -pubout`).
const RSA_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAtcdf1U17vFsO6l70QHWq
sVvfZfjxWrfBJQqy9P/Xs8T2otLqsjbnT/9GUEohPxo8PSLoLbtORMDilBi4EZnx
XpercXl9XaHo4PIpFeSWVwhIRbF3PpvTZQABipuUWTsnqoAuq6mwcRoGpSUGSHG+
/7UsvEVBBIhlNab08S2WcvsHAtlXw6kXglvFtlUD5V8SAAzBVS8NbGBCJjqkRLbK
KTg7ln8OpP51g102shedtUgY82Mq+NMoiGXcJMRhwLodSjy7gNg/54eyooHkzXvI
aq8GZSkgsz+jHM1yirqaYtSafW3tGHIqAzSLpvCWTwKfKklYIhZM4kvMjMJ6mDj9
hwIDAQAB
-----END PUBLIC KEY-----
";

/// The plugin's file name in the plugin folder; its configuration is the `.toml` of the same stem.
const PLUGIN_FILE: &str = "10-jwt-auth.wasm";

/// The plugin's configuration file: both keys the script signs with.
fn plugin_toml() -> String {
    let mut table = toml::Table::new();
    table.insert("hmac_secret".into(), HMAC_SECRET.into());
    table.insert("rsa_public_key".into(), RSA_PUBLIC_KEY.into());
    toml::to_string(&table).expect("serialise plugin config")
}

/// Server configuration: the plugin folder, tokens required, a 1 s grace after expiry, and a `private`
/// namespace (for `$private:…`) that no client may subscribe to without a subscription token. The
/// harness's top level (where the script's public channel lives) lets clients subscribe and has presence.
fn server_toml(plugin_dir: &Path) -> String {
    format!(
        r#"
        [plugins]
        dir = {dir:?}
        # Headroom over the 10 ms default (enough here) for RS256 checks on a loaded CI machine.
        deadline = "100ms"

        [client]
        allow_anonymous = false
        expired_close_delay = "1s"

        [channel.namespaces.private]
        history_size = 10
        history_ttl = "1m"
        presence = true
        allow_subscribe_for_client = false
        allow_subscribe_for_anonymous = false
        "#,
        dir = plugin_dir.to_str().expect("utf-8 temp path"),
    )
}

/// centrifuge-js 5.8 against Herald with jwt-auth: HS256 connect after a 109 retry through `getToken`,
/// refresh that keeps the connection past `exp` + `expired_close_delay`, a subscription token for
/// `$private:room` (and 103 without one), an RS256 user next to an HS256 one in presence, and a bad
/// signature ending the client with 3500 and no reconnect.
#[tokio::test]
async fn centrifuge_js_authenticates_with_jwt_auth() {
    let wasm = built_plugin("herald-plugin-jwt-auth");
    require_node(&["centrifuge", "ws"]).await;

    let plugin_dir = tempfile::tempdir().expect("temp plugin dir");
    std::fs::write(plugin_dir.path().join(PLUGIN_FILE), wasm).expect("write plugin");
    std::fs::write(
        plugin_dir
            .path()
            .join(Path::new(PLUGIN_FILE).with_extension("toml")),
        plugin_toml(),
    )
    .expect("write plugin config");
    let server = TestServer::start(&server_toml(plugin_dir.path())).await;

    let status = server.plugins_status().await;
    let loaded = status["plugins"]
        .as_array()
        .is_some_and(|plugins| plugins.iter().any(|p| p["file"] == PLUGIN_FILE));
    assert!(loaded, "jwt-auth did not load: {status:#}");

    let mut run = Command::new("node");
    run.arg("tests/e2e/js/jwt.js")
        .current_dir(REPO_ROOT)
        .env("HERALD_WS_URL", server.ws_url())
        .env("HERALD_API_URL", server.api_url())
        .env("HERALD_API_KEY", API_KEY)
        .env("HERALD_HMAC_SECRET", HMAC_SECRET)
        .env("HERALD_RSA_PRIVATE_KEY", RSA_PRIVATE_KEY)
        .env("HERALD_CHANNEL", "e2e-js-jwt");
    herald_tests::assert_script_passes(&mut run, "node tests/e2e/js/jwt.js").await;
}

/// Test-only Ed25519 keys (`openssl genpkey -algorithm ed25519`): the script signs with the private halves,
/// the identity provider below publishes the public halves (`x`) in its key set.
const K1_PRIVATE_KEY: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIDF4Zt6ohWoi7+1t/85Q5PxIOheVt9CDFUBDIJAHRf67
-----END PRIVATE KEY-----
";
const K1_X: &str = "CKqXXMXMDQx9r4HzcS8FPM_MNMXKUwW5oWhpxG7hG5E";
const K2_PRIVATE_KEY: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIGt5YYp7XeKJB4R8Mt4fIcOImVTYOK0dLI4nMM7/nXB9
-----END PRIVATE KEY-----
";
const K2_X: &str = "LRPjs7RhlumUgBD0eN4MtdfXxh2Df8Ybk1uOdIbOjw0";

fn ed_jwk(kid: &str, x: &str) -> serde_json::Value {
    serde_json::json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": kid, "x": x})
}

/// A Keycloak-style identity provider on a loopback port: `GET /certs` is the key set (`k1`), and
/// `POST /rotate` publishes `k2` beside it. Returns its address and how many times the set was fetched.
async fn identity_provider() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::{Arc, Mutex, atomic::AtomicUsize, atomic::Ordering};
    let keys = Arc::new(Mutex::new(vec![ed_jwk("k1", K1_X)]));
    let fetches = Arc::new(AtomicUsize::new(0));
    let (served, counted) = (keys.clone(), fetches.clone());
    let app = axum::Router::new()
        .route(
            "/certs",
            axum::routing::get(move || {
                counted.fetch_add(1, Ordering::Relaxed);
                let keys = served.lock().expect("keys").clone();
                async move { axum::Json(serde_json::json!({ "keys": keys })) }
            }),
        )
        .route(
            "/rotate",
            axum::routing::post(move || {
                keys.lock().expect("keys").push(ed_jwk("k2", K2_X));
                async {}
            }),
        );
    (herald_tests::serve_loopback(app).await, fetches)
}

/// Key rotation without a reload, end to end: jwt-auth verifies EdDSA tokens with keys from a JWKS URL
/// (fetched through the plugin's outbound HTTP), and after the provider publishes a new key, a
/// centrifuge-js client with a token of that key connects while the first one stays; a token naming an
/// unpublished key is refused with 3500 (see `tests/e2e/js/jwks.js`). The set is fetched twice: once at
/// the first token, once for the new key (the unknown one falls in the refetch interval).
#[tokio::test]
async fn centrifuge_js_follows_a_jwks_key_rotation() {
    let wasm = built_plugin("herald-plugin-jwt-auth");
    require_node(&["centrifuge", "ws"]).await;
    let (provider, fetches) = identity_provider().await;
    let plugin_dir = tempfile::tempdir().expect("temp plugin dir");
    std::fs::write(plugin_dir.path().join(PLUGIN_FILE), wasm).expect("write plugin");
    let plugin_config = format!("jwks_url = \"http://{provider}/certs\"\n");
    std::fs::write(
        plugin_dir
            .path()
            .join(Path::new(PLUGIN_FILE).with_extension("toml")),
        plugin_config,
    )
    .expect("write plugin config");
    let server = TestServer::start(&format!(
        "[plugins]\ndir = {:?}\n[plugins.limits.jwt-auth]\ndeadline = \"2s\"\n\
         [plugins.http.jwt-auth]\nallow = [\"http://{provider}/certs\"]\n[client]\nallow_anonymous = false\n",
        plugin_dir.path().to_str().expect("utf-8 temp path"),
    ))
    .await;

    let mut run = Command::new("node");
    run.arg("tests/e2e/js/jwks.js")
        .current_dir(REPO_ROOT)
        .env("HERALD_WS_URL", server.ws_url())
        .env("HERALD_API_URL", server.api_url())
        .env("HERALD_API_KEY", API_KEY)
        .env("HERALD_CHANNEL", "e2e-js-jwks")
        .env("HERALD_ROTATE_URL", format!("http://{provider}/rotate"))
        .env("HERALD_K1_PRIVATE_KEY", K1_PRIVATE_KEY)
        .env("HERALD_K2_PRIVATE_KEY", K2_PRIVATE_KEY);
    herald_tests::assert_script_passes(&mut run, "node tests/e2e/js/jwks.js").await;
    assert_eq!(
        fetches.load(std::sync::atomic::Ordering::Relaxed),
        2,
        "one fetch, one refetch for the new key"
    );
}
