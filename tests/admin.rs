//! The admin page, tried the way an attacker would: off by default, nothing behind it without a login,
//! a session cookie that cannot be forged or replayed after tampering, no state change without the
//! anti-CSRF header, wrong passwords backed off, a password required off loopback; and what a logged-in
//! operator does: see the counts, find a signed-in user's connections and disconnect them, publish.

use herald::config::Config;
use herald_tests::pusher::Pusher;
use herald_tests::{PUSHER_CONFIG, TestServer};
use reqwest::header::{CONTENT_SECURITY_POLICY, COOKIE, SET_COOKIE};
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery staple";

fn admin_config() -> String {
    format!("[admin]\nenabled = true\npassword = \"{PASSWORD}\"\n{PUSHER_CONFIG}")
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

/// Logs in; the cookie to send back (`name=value`).
async fn log_in(server: &TestServer) -> String {
    let response = client()
        .post(format!("http://{}/admin/login", server.addr))
        .header("X-Herald-Admin", "1")
        .json(&json!({"password": PASSWORD}))
        .send()
        .await
        .expect("login");
    assert_eq!(response.status().as_u16(), 204);
    let set = response.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/admin"] {
        assert!(set.contains(attribute), "{set}");
    }
    set.split(';').next().unwrap().to_owned()
}

async fn get(server: &TestServer, path: &str, cookie: Option<&str>) -> (u16, String) {
    let mut request = client().get(format!("http://{}{path}", server.addr));
    if let Some(cookie) = cookie {
        request = request.header(COOKIE, cookie);
    }
    let response = request.send().await.expect("request");
    (response.status().as_u16(), response.text().await.unwrap())
}

async fn post(
    server: &TestServer,
    path: &str,
    cookie: Option<&str>,
    csrf: bool,
    body: Value,
) -> (u16, String) {
    let mut request = client()
        .post(format!("http://{}{path}", server.addr))
        .json(&body);
    if let Some(cookie) = cookie {
        request = request.header(COOKIE, cookie);
    }
    if csrf {
        request = request.header("X-Herald-Admin", "1");
    }
    let response = request.send().await.expect("request");
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test]
async fn the_admin_page_is_off_by_default() {
    let server = TestServer::start("").await;
    assert_eq!(get(&server, "/admin", None).await.0, 404);
    assert_eq!(get(&server, "/admin/api/overview", None).await.0, 404);
}

/// A password is required unless Herald listens on loopback only.
#[test]
fn the_admin_page_needs_a_password_off_loopback() {
    let error = Config::from_toml("address = \"0.0.0.0:8000\"\n[admin]\nenabled = true\n")
        .unwrap_err()
        .to_string();
    assert!(error.contains("admin.password"), "{error}");
    Config::from_toml("address = \"127.0.0.1:8000\"\n[admin]\nenabled = true\n")
        .expect("loopback without a password is allowed");
    Config::from_toml("address = \"0.0.0.0:8000\"\n[admin]\nenabled = true\npassword = \"x\"\n")
        .expect("with a password anywhere");
}

#[tokio::test]
async fn nothing_behind_the_page_without_a_valid_session() {
    let server = TestServer::start(&admin_config()).await;
    // The page itself (a login form) is served, with a policy that allows only its own scripts.
    let response = client()
        .get(format!("http://{}/admin", server.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let policy = response.headers()[CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    assert!(policy.contains("script-src 'self'"), "{policy}");
    assert!(response.text().await.unwrap().contains("login-form"));

    for path in [
        "/admin/api/overview",
        "/admin/api/plugins",
        "/admin/api/connections?user=1",
    ] {
        assert_eq!(get(&server, path, None).await.0, 401, "{path}");
    }
    let publish = json!({"channel": "news", "data": {"x": 1}});
    assert_eq!(
        post(
            &server,
            "/admin/api/call/publish",
            None,
            true,
            publish.clone()
        )
        .await
        .0,
        401
    );

    // Wrong password, no header, forged and tampered cookies.
    assert_eq!(
        post(
            &server,
            "/admin/login",
            None,
            true,
            json!({"password": "guess"})
        )
        .await
        .0,
        401
    );
    assert_eq!(
        post(
            &server,
            "/admin/login",
            None,
            false,
            json!({"password": PASSWORD})
        )
        .await
        .0,
        403,
        "login without the anti-CSRF header"
    );
    let cookie = log_in(&server).await;
    let (name, value) = cookie.split_once('=').unwrap();
    let (expires, signature) = value.split_once('.').unwrap();
    let later: u64 = expires.parse::<u64>().unwrap() + 86_400;
    for forged in [
        format!("{name}={later}.{signature}"),
        format!("{name}={expires}.{}", "0".repeat(signature.len())),
        format!("{name}=99999999999"),
        format!("{name}=1.{signature}"),
    ] {
        assert_eq!(
            get(&server, "/admin/api/overview", Some(&forged)).await.0,
            401,
            "{forged}"
        );
    }
    // The real one works, and the server API's key is no session.
    assert_eq!(
        get(&server, "/admin/api/overview", Some(&cookie)).await.0,
        200
    );
    let (status, _) = get(
        &server,
        "/admin/api/overview",
        Some(&format!("{name}={}", herald_tests::API_KEY)),
    )
    .await;
    assert_eq!(status, 401);

    // A logged-in browser still cannot be made to act by another site: no header, no action.
    assert_eq!(
        post(
            &server,
            "/admin/api/call/publish",
            Some(&cookie),
            false,
            publish
        )
        .await
        .0,
        403
    );
    // Only the page's methods.
    assert_eq!(
        post(
            &server,
            "/admin/api/call/broadcast",
            Some(&cookie),
            true,
            json!({})
        )
        .await
        .0,
        404
    );
}

/// Wrong passwords put the address into the same back-off as wrong API keys.
#[tokio::test]
async fn wrong_passwords_are_backed_off() {
    let server = TestServer::start(&format!(
        "{}\n[limits]\napi_auth_failures_per_minute = 2\n",
        admin_config()
    ))
    .await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            post(
                &server,
                "/admin/login",
                None,
                true,
                json!({"password": "guess"}),
            )
            .await
            .0,
        );
    }
    assert_eq!(statuses, [401, 401, 429, 429]);
    // The back-off is the address's, whatever credential it got wrong: the server API waits it out too.
    let (status, _) = server.api("info", json!({})).await;
    assert_eq!(status, 429);
    // Even the right password waits out the back-off.
    assert_eq!(
        post(
            &server,
            "/admin/login",
            None,
            true,
            json!({"password": PASSWORD})
        )
        .await
        .0,
        429
    );
}

/// Logged in: the counts follow a client connecting; a signed-in user's connections are found and
/// disconnected; a test message is published to a subscriber.
#[tokio::test]
async fn an_operator_sees_counts_finds_and_disconnects_a_user_and_publishes() {
    let server = TestServer::start(&admin_config()).await;
    let cookie = log_in(&server).await;
    let overview = |body: String| serde_json::from_str::<Value>(&body).unwrap();
    let before = overview(get(&server, "/admin/api/overview", Some(&cookie)).await.1);
    assert_eq!(before["clients"], 0);

    let mut grace = Pusher::connect(server.addr).await;
    let signed = grace.sign_in(r#"{"id":"77","name":"Grace"}"#).await;
    assert_eq!(signed["event"], "pusher:signin_success", "{signed}");
    grace.subscribed("news", None).await;
    let after = overview(get(&server, "/admin/api/overview", Some(&cookie)).await.1);
    assert_eq!(after["clients"], 1);
    assert_eq!(after["subscriptions"], 1);

    let (status, found) = get(&server, "/admin/api/connections?user=77", Some(&cookie)).await;
    assert_eq!(status, 200);
    let found: Value = serde_json::from_str(&found).unwrap();
    assert_eq!(found["clients"], json!([grace.socket_id]));

    let (status, published) = post(
        &server,
        "/admin/api/call/publish",
        Some(&cookie),
        true,
        json!({"channel": "news", "data": {"text": "hello"}}),
    )
    .await;
    assert_eq!(status, 200, "{published}");
    let event = grace.next().await;
    assert_eq!(event["channel"], "news", "{event}");

    let (status, answer) = post(
        &server,
        "/admin/api/call/disconnect",
        Some(&cookie),
        true,
        json!({"user": "77"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let (code, reason) = grace.client.expect_close().await;
    // Pusher's close for a terminated connection, whichever way the server words it.
    assert!((4000..5000).contains(&code), "{code} {reason}");
}

/// The page in Debian's headless Chromium: log in (after a wrong password), see the connection count go
/// from 0 to 1 when a client connects, publish through the page, find the user and disconnect them, and
/// see the count go back to 0. The dashboard's screenshot is written to `HERALD_ADMIN_SCREENSHOT` (the one
/// in `docs/admin.png` came from this test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_works_in_a_real_browser() {
    let server = TestServer::start(&admin_config()).await;
    let screenshot = std::env::var("HERALD_ADMIN_SCREENSHOT").map_or_else(
        |_| std::env::temp_dir().join(format!("herald-admin-{}.png", std::process::id())),
        std::path::PathBuf::from,
    );
    let mut script = herald_tests::cluster::SdkScript::start(
        "node",
        "tests/e2e/js/admin.js",
        &[
            ("HERALD_URL", format!("http://{}", server.addr)),
            ("ADMIN_PASSWORD", PASSWORD.to_owned()),
            ("SCREENSHOT", screenshot.display().to_string()),
        ],
    );
    script.wait_for_line("STEP logged-in").await;
    let mut grace = Pusher::connect(server.addr).await;
    let signed = grace.sign_in(r#"{"id":"77","name":"Grace"}"#).await;
    assert_eq!(signed["event"], "pusher:signin_success", "{signed}");
    grace.subscribed("news", None).await;
    script.go().await;
    let (code, reason) = grace.client.expect_close().await;
    assert!((4000..5000).contains(&code), "{code} {reason}");
    script.assert_passes().await;
    let png = std::fs::read(&screenshot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
}
