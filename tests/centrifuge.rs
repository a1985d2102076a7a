//! The Centrifugo client protocol against a real Herald: connect, subscribe, publish, history, presence and
//! the reply shapes the SDKs depend on.

use herald_tests::{Client, TestServer, publication};
use serde_json::json;

/// The connect reply carries a client id, the version and the advertised heartbeat.
#[tokio::test]
async fn connect_reply_advertises_client_id_and_ping() {
    let server = TestServer::start("").await;
    let (_client, result) = Client::connect(&server).await;
    assert_eq!(result["client"].as_str().unwrap().len(), 36, "{result}");
    assert_eq!(result["version"], herald::node::VERSION);
    assert_eq!(result["ping"], 25);
    assert_eq!(result["pong"], true);
}

/// centrifuge-js sends connect and subscribe in one frame: both are handled, in order.
#[tokio::test]
async fn batched_commands_are_handled_in_order() {
    let server = TestServer::start("").await;
    let mut client = Client::open(&server).await;
    client
        .send_text("{\"connect\":{\"name\":\"js\"},\"id\":1}\n{\"subscribe\":{\"channel\":\"news\",\"flag\":1},\"id\":2}")
        .await;
    let first = client.next_json().await;
    let second = client.next_json().await;
    assert_eq!(first["id"], 1);
    assert!(first["connect"]["client"].is_string());
    assert_eq!(second, json!({"id": 2, "subscribe": {}}));
}

/// A publication from the API reaches every subscriber with its offset; the API reports offset and epoch.
#[tokio::test]
async fn api_publish_reaches_every_subscriber() {
    let server = TestServer::start("").await;
    let (mut a, _) = Client::connect(&server).await;
    let (mut b, _) = Client::connect(&server).await;
    let sub_a = a
        .subscribe(json!({"channel": "news", "positioned": true}))
        .await;
    b.subscribe(json!({"channel": "news"})).await;
    let epoch = sub_a["subscribe"]["epoch"].as_str().unwrap().to_string();
    assert_eq!(sub_a["subscribe"]["positioned"], true);
    let result = server.publish("news", json!({"text": "hi"})).await;
    assert_eq!(result, json!({"offset": 1, "epoch": epoch}));
    for client in [&mut a, &mut b] {
        let push = client.next_push().await;
        assert_eq!(
            publication(&push, "news"),
            json!({"data": {"text": "hi"}, "offset": 1})
        );
    }
}
