//! Pusher webhooks from a real Herald to a real HTTP receiver: channel_occupied / channel_vacated,
//! member_added / member_removed (once per user, before the channel is vacated), client_event, the
//! signature headers the Pusher server libraries check, the `event_types` filter, and redelivery of a
//! batch the receiver refused.

use herald_tests::pusher::Pusher;
use herald_tests::webhooks::WebhookReceiver;
use herald_tests::{PUSHER_CONFIG, TestServer};
use serde_json::json;

async fn server(receiver: &WebhookReceiver, event_types: &[&str]) -> TestServer {
    TestServer::start(&format!(
        "{PUSHER_CONFIG}\n[[pusher.webhooks]]\nurl = {:?}\nevent_types = {:?}",
        receiver.url, event_types
    ))
    .await
}

#[tokio::test]
async fn channels_members_and_client_events_reach_the_webhook() {
    let mut receiver = WebhookReceiver::start(0).await;
    let server = server(&receiver, &[]).await;
    let mut ada = Pusher::connect(server.addr).await;
    ada.subscribed("news", None).await;
    assert_eq!(
        receiver.next().await,
        json!({"name": "channel_occupied", "channel": "news"})
    );

    let presence = ada
        .subscribe_presence(
            "presence-room",
            r#"{"user_id":"1","user_info":{"name":"Ada"}}"#,
        )
        .await;
    assert_eq!(presence["event"], "pusher_internal:subscription_succeeded");
    let mut events = vec![receiver.next().await, receiver.next().await];
    events.sort_by_key(|e| e["name"].as_str().map(str::to_owned));
    assert_eq!(
        events,
        [
            json!({"name": "channel_occupied", "channel": "presence-room"}),
            json!({"name": "member_added", "channel": "presence-room", "user_id": "1"}),
        ]
    );

    let mut bob = Pusher::connect(server.addr).await;
    let joined = bob
        .subscribe_presence("presence-room", r#"{"user_id":"2"}"#)
        .await;
    assert_eq!(joined["event"], "pusher_internal:subscription_succeeded");
    assert_eq!(
        receiver.next().await,
        json!({"name": "member_added", "channel": "presence-room", "user_id": "2"})
    );
    bob.send(json!({"event": "client-wave", "channel": "presence-room", "data": {"hi": true}}))
        .await;
    assert_eq!(ada.next().await["event"], "pusher_internal:member_added");
    let wave = ada.next().await;
    assert_eq!(
        (wave["event"].as_str(), wave["user_id"].as_str()),
        (Some("client-wave"), Some("2"))
    );
    assert_eq!(
        receiver.next().await,
        json!({"name": "client_event", "channel": "presence-room", "event": "client-wave",
               "data": "{\"hi\":true}", "socket_id": bob.socket_id, "user_id": "2"})
    );

    // Ada leaves: she is removed from the room before the room is vacated.
    drop(ada);
    let mut left = Vec::new();
    for _ in 0..2 {
        left.push(receiver.next().await);
    }
    assert!(
        left.contains(&json!({"name": "channel_vacated", "channel": "news"})),
        "{left:?}"
    );
    assert!(
        left.contains(
            &json!({"name": "member_removed", "channel": "presence-room", "user_id": "1"})
        ),
        "{left:?}"
    );
    drop(bob);
    assert_eq!(
        receiver.next().await,
        json!({"name": "member_removed", "channel": "presence-room", "user_id": "2"})
    );
    assert_eq!(
        receiver.next().await,
        json!({"name": "channel_vacated", "channel": "presence-room"})
    );
}

#[tokio::test]
async fn event_types_filter_and_refused_batches_are_sent_again() {
    let mut receiver = WebhookReceiver::start(1).await;
    let server = server(&receiver, &["channel_vacated"]).await;
    let mut pusher = Pusher::connect(server.addr).await;
    pusher.subscribed("news", None).await;
    pusher
        .send(json!({"event": "pusher:unsubscribe", "data": {"channel": "news"}}))
        .await;
    let vacated = json!([{"name": "channel_vacated", "channel": "news"}]);
    // Refused once, then delivered again, the same events; occupied was filtered out.
    assert_eq!(receiver.next_batch().await, json!({"refused": vacated}));
    assert_eq!(receiver.next_batch().await["events"], vacated);
}

#[tokio::test]
async fn a_cache_channel_without_an_event_is_a_cache_miss() {
    let mut receiver = WebhookReceiver::start(0).await;
    let server = server(&receiver, &["cache_miss"]).await;
    let mut pusher = Pusher::connect(server.addr).await;
    pusher.subscribed("cache-empty", None).await;
    assert_eq!(pusher.next().await["event"], "pusher:cache_miss");
    assert_eq!(
        receiver.next().await,
        json!({"name": "cache_miss", "channel": "cache-empty"})
    );
}
