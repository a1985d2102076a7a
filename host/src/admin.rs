//! The admin web page at `/admin` (off unless `admin.enabled`): a dashboard of this node and the cluster,
//! served from assets embedded in the binary, and the JSON it polls.
//!
//! A login with `admin.password` sets a session cookie: the expiry signed with HMAC-SHA256 under a key drawn
//! when the node starts (so a restart ends every session), `HttpOnly`, `SameSite=Strict`, `Path=/admin`,
//! `Secure` with TLS. Every request that changes something is a POST that must carry the header
//! `X-Herald-Admin: 1`: a browser sends a custom header across origins only after a CORS preflight, which
//! Herald never approves, so another site cannot make a logged-in browser act (CSRF). The page's own
//! Content-Security-Policy allows only its own scripts. Wrong passwords count against the same per-address
//! back-off as wrong API keys. What the page does goes through the server API's methods, with the server
//! API's rights.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::api;
use crate::node::Node;

const COOKIE: &str = "herald_admin";
/// The header every state-changing request must carry (see the module's doc).
const CSRF_HEADER: &str = "x-herald-admin";
/// The server API methods the page may call.
const METHODS: [&str; 7] = [
    "info",
    "channels",
    "presence",
    "presence_stats",
    "history",
    "disconnect",
    "publish",
];

const PAGE: &str = include_str!("admin/index.html");
const SCRIPT: &str = include_str!("admin/app.js");
const STYLE: &str = include_str!("admin/app.css");

struct Admin {
    node: Arc<Node>,
    key: [u8; 32],
}

/// The admin routes; none when the page is off, or when it has no password on an address others can reach
/// (the configuration refuses that; this holds even if it did not).
pub fn router(node: Arc<Node>) -> Router {
    let config = &node.config.admin;
    if !config.enabled || (config.password.is_empty() && !node.config.address.ip().is_loopback()) {
        return Router::new();
    }
    let admin = Arc::new(Admin {
        key: rand::random(),
        node: node.clone(),
    });
    let behind_login = Router::new()
        .route("/admin/api/overview", get(overview))
        .route("/admin/api/plugins", get(plugins))
        .route("/admin/api/connections", get(connections))
        .route("/admin/api/call/{method}", post(call))
        .route_layer(middleware::from_fn_with_state(
            admin.clone(),
            require_session,
        ));
    Router::new()
        .route("/admin", get(page))
        .route("/admin/", get(page))
        .route("/admin/app.js", get(script))
        .route("/admin/app.css", get(style))
        .route("/admin/session", get(session))
        // Wrong passwords count against the per-address back-off of wrong API keys: the same guard.
        .route(
            "/admin/login",
            post(login).layer(middleware::from_fn_with_state(node, api::guard_requests)),
        )
        .route("/admin/logout", post(logout))
        .merge(behind_login)
        .layer(middleware::from_fn(require_page_header_on_posts))
        .layer(middleware::map_response(guarded))
        .with_state(admin)
}

/// Everything under `/admin/api/` needs a logged-in browser.
async fn require_session(
    State(admin): State<Arc<Admin>>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    if admin.authenticated(request.headers()) {
        next.run(request).await
    } else {
        refused(StatusCode::UNAUTHORIZED, "log in first\n")
    }
}

/// Every POST (log in, log out, actions) must carry the anti-CSRF header; checked before the session, so
/// a cross-site request learns nothing.
async fn require_page_header_on_posts(
    request: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    let from_the_page = request
        .headers()
        .get(CSRF_HEADER)
        .is_some_and(|value| value.as_bytes() == b"1");
    if request.method() == axum::http::Method::POST && !from_the_page {
        refused(StatusCode::FORBIDDEN, "missing X-Herald-Admin header\n")
    } else {
        next.run(request).await
    }
}

/// Headers every admin response carries (a layer over all of them): no caching, no framing, only the
/// page's own scripts.
async fn guarded(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Admin {
    fn mac(&self, expires: u64) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(format!("herald-admin:{expires}").as_bytes());
        mac
    }

    /// A session cookie's value, valid for `ttl`.
    fn issue(&self, ttl: Duration) -> String {
        let expires = now_secs() + ttl.as_secs();
        let signature = hex::encode(self.mac(expires).finalize().into_bytes());
        format!("{expires}.{signature}")
    }

    /// Whether the request comes from a logged-in browser (or no login is needed).
    fn authenticated(&self, headers: &HeaderMap) -> bool {
        if self.node.config.admin.password.is_empty() {
            return true;
        }
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .filter_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
            .any(|value| self.valid(value))
    }

    fn valid(&self, cookie: &str) -> bool {
        let Some((expires, signature)) = cookie.split_once('.') else {
            return false;
        };
        let (Ok(expires), Ok(signature)) = (expires.parse::<u64>(), hex::decode(signature)) else {
            return false;
        };
        expires > now_secs() && self.mac(expires).verify_slice(&signature).is_ok()
    }

    fn cookie(&self, value: &str, max_age: u64) -> HeaderValue {
        let secure = if self.node.config.tls.enabled() {
            "; Secure"
        } else {
            ""
        };
        HeaderValue::from_str(&format!(
            "{COOKIE}={value}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
        ))
        .expect("a cookie of ASCII characters")
    }
}

fn refused(status: StatusCode, message: &'static str) -> Response {
    (status, message).into_response()
}

fn json(value: &serde_json::Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

/// `GET /admin/session`: whether this browser is logged in, and whether there is a login at all.
async fn session(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    json(&serde_json::json!({
        "authenticated": admin.authenticated(&headers),
        "login": !admin.node.config.admin.password.is_empty(),
        "node": admin.node.name,
    }))
}

#[derive(Deserialize)]
struct Login {
    password: String,
}

/// `POST /admin/login` `{"password": …}`: sets the session cookie, or 401 (429 once the address is in its
/// back-off, which the API's guard around this route answers).
async fn login(State(admin): State<Arc<Admin>>, request: axum::extract::Request) -> Response {
    let address = api::client_ip(&admin.node, &request);
    // The guard has read the whole body already, within `http_api.max_body_size`.
    let Ok(body) = axum::body::to_bytes(request.into_body(), usize::MAX).await else {
        return refused(StatusCode::BAD_REQUEST, "unreadable body\n");
    };
    let Ok(Login { password }) = serde_json::from_slice::<Login>(&body) else {
        return refused(StatusCode::BAD_REQUEST, "expected {\"password\": \"…\"}\n");
    };
    let expected = admin.node.config.admin.password.expose().as_bytes();
    if expected.is_empty() || !bool::from(password.as_bytes().ct_eq(expected)) {
        tracing::warn!(address = ?address, "admin login refused: wrong password");
        return refused(StatusCode::UNAUTHORIZED, "wrong password\n");
    }
    tracing::info!(address = ?address, "admin login");
    let ttl = admin.node.config.admin.session_ttl;
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        admin.cookie(&admin.issue(ttl), ttl.as_secs()),
    );
    response
}

/// `POST /admin/logout`: forgets the cookie in this browser.
async fn logout(State(admin): State<Arc<Admin>>) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, admin.cookie("", 0));
    response
}

/// `GET /admin/api/overview`: this node's counts and running totals, for the live charts.
async fn overview(State(admin): State<Arc<Admin>>) -> Response {
    let node = &admin.node;
    let stats = node.hub.stats();
    json(&serde_json::json!({
        "node": node.name,
        "version": crate::node::VERSION,
        "uptime": node.uptime_seconds(),
        "ready": node.readiness().await.err().unwrap_or_default(),
        "clients": stats.clients,
        "users": stats.users,
        "channels": stats.channels,
        "subscriptions": stats.subscriptions,
        "totals": node.metrics.totals(),
        "time_ms": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
    }))
}

/// `GET /admin/api/plugins`: as `GET /api/plugins`.
async fn plugins(State(admin): State<Arc<Admin>>) -> Response {
    json(&crate::api::plugins_report(&admin.node))
}

#[derive(Deserialize)]
struct UserQuery {
    user: String,
}

/// `GET /admin/api/connections?user=…`: the user's connections on this node.
async fn connections(
    State(admin): State<Arc<Admin>>,
    Query(UserQuery { user }): Query<UserQuery>,
) -> Response {
    let clients: Vec<String> = admin
        .node
        .hub
        .sessions(&user, None)
        .iter()
        .map(|session| session.client.to_string())
        .collect();
    json(&serde_json::json!({ "user": user, "node": admin.node.name, "clients": clients }))
}

/// `POST /admin/api/call/<method>`: one of the server API's methods ([`METHODS`]), answered as the API
/// answers it.
async fn call(
    State(admin): State<Arc<Admin>>,
    Path(method): Path<String>,
    body: Bytes,
) -> Response {
    if !METHODS.contains(&method.as_str()) {
        return refused(StatusCode::NOT_FOUND, "no such method\n");
    }
    if body.len() > admin.node.config.http_api.max_body_size {
        return refused(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n");
    }
    if matches!(method.as_str(), "disconnect" | "publish") {
        tracing::info!(method, "admin page action");
    }
    crate::api::answer(&admin.node, &method, &body, false).await
}
