//! Connection and rate limits against a real Herald: refusals carry the documented status or code, and a
//! well-behaved client on the same server keeps being served.

use herald_tests::{Client, TestServer, WAIT, publication};
use serde_json::json;
use tokio_tungstenite::tungstenite::{self, http};

/// Asserts that a subscribed bystander still receives what the API publishes.
async fn still_served(server: &TestServer, bystander: &mut Client, n: u64) {
    server.publish("bystander", json!({"n": n})).await;
    let push = bystander.next_push().await;
    assert_eq!(publication(&push, "bystander")["data"], json!({"n": n}));
}

/// Over `max_connections_per_ip`, upgrades get HTTP 503; a closed connection frees its place.
#[tokio::test]
async fn connections_per_address_are_limited() {
    let server = TestServer::start("[limits]\nmax_connections_per_ip = 3").await;
    let (mut bystander, _) = Client::connect(&server).await;
    bystander.subscribe(json!({"channel": "bystander"})).await;
    let probe = tokio_tungstenite::connect_async(server.ws_url())
        .await
        .expect("second connection");
    let _third = tokio_tungstenite::connect_async(server.ws_url())
        .await
        .expect("third connection");
    let refused = tokio_tungstenite::connect_async(server.ws_url()).await;
    match refused {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), http::StatusCode::SERVICE_UNAVAILABLE)
        }
        other => panic!("expected 503, got {other:?}"),
    }
    still_served(&server, &mut bystander, 1).await;
    drop(probe);
    // The server frees the place once it notices the close; retry until it has (bounded by WAIT).
    let admitted = tokio::time::timeout(WAIT, async {
        loop {
            if tokio_tungstenite::connect_async(server.ws_url())
                .await
                .is_ok()
            {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(admitted.is_ok(), "a closed connection must free its place");
}

/// Opening connections faster than `connections_per_second_per_ip` is refused with 503.
#[tokio::test]
async fn connection_rate_per_address_is_limited() {
    let server = TestServer::start("[limits]\nconnections_per_second_per_ip = 3").await;
    let mut statuses = Vec::new();
    let mut held = Vec::new();
    for _ in 0..6 {
        match tokio_tungstenite::connect_async(server.ws_url()).await {
            Ok(socket) => held.push(socket),
            Err(tungstenite::Error::Http(response)) => statuses.push(response.status()),
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!(held.len(), 3, "the burst is admitted");
    assert_eq!(statuses, vec![http::StatusCode::SERVICE_UNAVAILABLE; 3]);
}

/// Commands over the connection's rate get `111` (temporary); persisting closes with 3013; other
/// connections are unaffected.
#[tokio::test]
async fn command_rate_is_limited_then_abusers_are_dropped() {
    let server = TestServer::start(
        "[limits]\ncommands_per_second = 1\ncommand_burst = 4\ndisconnect_after_refused_commands = 10",
    )
    .await;
    let (mut bystander, _) = Client::connect(&server).await;
    bystander.subscribe(json!({"channel": "bystander"})).await;

    let mut flooder = Client::open(&server).await;
    // connect + 3 commands use the burst of 4; the next ones are refused.
    let frame: Vec<String> = (1..=8)
        .map(|id| {
            if id == 1 {
                json!({"id": 1, "connect": {}}).to_string()
            } else {
                json!({"id": id, "presence_stats": {"channel": "room"}}).to_string()
            }
        })
        .collect();
    flooder.send_text(&frame.join("\n")).await;
    let mut refused = 0;
    for id in 1..=8u32 {
        let reply = flooder.reply(id).await;
        // Answered commands get their normal reply (here 103: not subscribed); refused ones get 111.
        if reply["error"]["code"] == 111 {
            assert_eq!(
                reply["error"],
                json!({"code": 111, "message": "too many requests", "temporary": true})
            );
            refused += 1;
        }
    }
    assert!(
        refused >= 3,
        "at least the commands past the burst are refused, got {refused}"
    );
    still_served(&server, &mut bystander, 1).await;

    let flood: Vec<String> = (100..130)
        .map(|id| json!({"id": id, "presence_stats": {"channel": "room"}}).to_string())
        .collect();
    flooder.send_text(&flood.join("\n")).await;
    assert_eq!(
        flooder.expect_close().await,
        (3013, "too many requests".to_string())
    );
    still_served(&server, &mut bystander, 2).await;
}

/// `X-Forwarded-For` is ignored unless the peer is a trusted proxy: a spoofed header cannot dodge the
/// per-address limit.
#[tokio::test]
async fn forwarded_for_from_untrusted_peers_is_ignored() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let server = TestServer::start("[limits]\nmax_connections_per_ip = 1").await;
    let _first = tokio_tungstenite::connect_async(server.ws_url())
        .await
        .expect("first");
    let mut spoofed = server.ws_url().into_client_request().unwrap();
    spoofed
        .headers_mut()
        .insert("x-forwarded-for", "203.0.113.9".parse().unwrap());
    match tokio_tungstenite::connect_async(spoofed).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), http::StatusCode::SERVICE_UNAVAILABLE)
        }
        other => panic!("expected 503, got {other:?}"),
    }
    let trusting = TestServer::start(
        "[limits]\nmax_connections_per_ip = 1\ntrusted_proxies = [\"127.0.0.1/32\"]",
    )
    .await;
    let _first = tokio_tungstenite::connect_async(trusting.ws_url())
        .await
        .expect("first");
    let mut forwarded = trusting.ws_url().into_client_request().unwrap();
    forwarded
        .headers_mut()
        .insert("x-forwarded-for", "203.0.113.9".parse().unwrap());
    assert!(
        tokio_tungstenite::connect_async(forwarded).await.is_ok(),
        "a trusted proxy's client has its own budget"
    );
}
