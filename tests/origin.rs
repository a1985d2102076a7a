//! The Origin check on WebSocket upgrades (cross-site WebSocket hijacking): browsers from other sites are
//! refused with 403, everything else connects.

use herald_tests::{Client, TestServer, WAIT};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, http};

/// Opens a WebSocket with this `Origin` header; the HTTP status of a refusal, or `None` when it opened.
async fn open_with_origin(server: &TestServer, origin: &str) -> Option<http::StatusCode> {
    let mut request = server.ws_url().into_client_request().unwrap();
    request
        .headers_mut()
        .insert(http::header::ORIGIN, origin.parse().unwrap());
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("answer in time")
    {
        Ok(_) => None,
        Err(tungstenite::Error::Http(response)) => Some(response.status()),
        Err(other) => panic!("unexpected error: {other}"),
    }
}

/// By default only the server's own origin (and clients that send none) may open a WebSocket; another
/// site is refused with 403, and the server keeps serving.
#[tokio::test]
async fn foreign_origins_are_refused_by_default() {
    let server = TestServer::start("").await;
    assert_eq!(
        open_with_origin(&server, &format!("http://{}", server.addr)).await,
        None
    );
    assert_eq!(
        open_with_origin(&server, "https://evil.test").await,
        Some(http::StatusCode::FORBIDDEN)
    );
    assert_eq!(
        open_with_origin(&server, "null").await,
        Some(http::StatusCode::FORBIDDEN)
    );
    let (_client, connected) = Client::connect(&server).await;
    assert!(connected["client"].is_string());
}

/// `websocket.allowed_origins` patterns let other sites in, and only those.
#[tokio::test]
async fn allowed_origin_patterns_are_honoured() {
    let server =
        TestServer::start("[websocket]\nallowed_origins = [\"https://*.example.com\"]").await;
    assert_eq!(
        open_with_origin(&server, "https://app.example.com").await,
        None
    );
    assert_eq!(
        open_with_origin(&server, "https://APP.example.com").await,
        None
    );
    assert_eq!(
        open_with_origin(&server, "https://example.com.evil.test").await,
        Some(http::StatusCode::FORBIDDEN)
    );
    let open = TestServer::start("[websocket]\nallowed_origins = [\"*\"]").await;
    assert_eq!(open_with_origin(&open, "https://anywhere.test").await, None);
}
