//! A node killed with `kill -9` leaves no ghosts: within seconds (not `presence_ttl`, set to a minute
//! here), exactly one survivor takes the dead node's members out of presence and announces their
//! departure on both protocols — `leave` pushes to Centrifugo subscribers, one Pusher `member_removed` per
//! user with no connection left (none for a user still connected elsewhere), and the `member_removed` and
//! `channel_vacated` webhooks.
//!
//! Every wait is for an event (a log line, a push, a webhook); nothing sleeps. What did not happen is
//! proven by the marker that arrives next.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use herald::testing::RedisServer;
use herald_tests::cluster::{HeraldProcess, node_config};
use herald_tests::pusher::{Pusher, data, get, triggered};
use herald_tests::webhooks::WebhookReceiver;
use herald_tests::{Client, PUSHER_CONFIG};
use serde_json::{Value, json};

/// The Centrifugo channel (presence and join/leave on, as in the test configuration).
const CHANNEL: &str = "crash-room";
/// The Pusher presence channel.
const ROOM: &str = "presence-room";
/// A Pusher channel only the killed node's clients hold.
const LONELY: &str = "lonely";
/// How long presence entries live without their node: far longer than settling may take.
const PRESENCE_TTL: Duration = Duration::from_secs(60);

const ADA: &str = r#"{"user_id":"1","user_info":{"name":"Ada"}}"#;
const GRACE: &str = r#"{"user_id":"2","user_info":{"name":"Grace"}}"#;
const WATCHER: &str = r#"{"user_id":"3"}"#;

/// A Centrifugo client connected to `node` and subscribed to [`CHANNEL`], asking for joins and leaves;
/// with its client id.
async fn centrifuge_member(node: &HeraldProcess) -> (Client, String) {
    let mut client = Client::open_url(&node.ws_url()).await;
    let connect = client.command("connect", json!({})).await;
    let id = connect["connect"]["client"]
        .as_str()
        .unwrap_or_else(|| panic!("connect failed: {connect}"))
        .to_owned();
    let reply = client
        .command("subscribe", json!({"channel": CHANNEL, "join_leave": true}))
        .await;
    assert!(reply.get("subscribe").is_some(), "{reply}");
    (client, id)
}

/// A Pusher client on `node` in [`ROOM`] as `member`.
async fn pusher_member(node: &HeraldProcess, member: &str) -> Pusher {
    let mut client = Pusher::connect(node.addr).await;
    let answer = client.subscribe_presence(ROOM, member).await;
    assert_eq!(
        answer["event"], "pusher_internal:subscription_succeeded",
        "{answer}"
    );
    client
}

/// Waits for `client`'s next push of `kind` (`join` or `leave`) in [`CHANNEL`] and returns whose it was.
async fn presence_push(client: &mut Client, kind: &str) -> String {
    let push = client.next_push().await;
    assert_eq!(push["channel"], CHANNEL, "{push}");
    push[kind]["info"]["client"]
        .as_str()
        .unwrap_or_else(|| panic!("expected a {kind}, got {push}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_members_leave_once_on_both_protocols() {
    let redis = RedisServer::start();
    let mut receiver = WebhookReceiver::start(0).await;
    let config = node_config(
        &redis.url(),
        &format!(
            "{PUSHER_CONFIG}\n[engine.redis]\npresence_ttl = \"{}s\"\n\
             [[pusher.webhooks]]\nurl = {:?}\nevent_types = [\"member_removed\", \"channel_vacated\"]\n",
            PRESENCE_TTL.as_secs(),
            receiver.url
        ),
    );
    let mut victim = HeraldProcess::start(&config).await;
    let mut survivors = [
        HeraldProcess::start(&config).await,
        HeraldProcess::start(&config).await,
    ];

    // Centrifugo: a watcher on a survivor hears itself, then two members of the victim, join.
    let (mut watcher, watcher_id) = centrifuge_member(&survivors[0]).await;
    assert_eq!(presence_push(&mut watcher, "join").await, watcher_id);
    let mut doomed = BTreeSet::new();
    let mut doomed_clients = Vec::new();
    for _ in 0..2 {
        let (client, id) = centrifuge_member(&victim).await;
        assert_eq!(presence_push(&mut watcher, "join").await, id);
        doomed.insert(id);
        doomed_clients.push(client);
    }

    // Pusher: Ada twice and Grace once on the victim, Grace also on a survivor, and a watcher.
    let mut room_watcher = pusher_member(&survivors[1], WATCHER).await;
    let _grace_elsewhere = pusher_member(&survivors[0], GRACE).await;
    let mut on_victim = vec![
        pusher_member(&victim, ADA).await,
        pusher_member(&victim, ADA).await,
        pusher_member(&victim, GRACE).await,
    ];
    for user in ["2", "1"] {
        let added = room_watcher.next().await;
        assert_eq!(
            (added["event"].as_str(), data(&added)["user_id"].as_str()),
            (Some("pusher_internal:member_added"), Some(user)),
            "{added}"
        );
    }
    let mut lonely = Pusher::connect(victim.addr).await;
    lonely.subscribed(LONELY, None).await;
    on_victim.push(lonely);

    victim.kill().await;
    let killed = Instant::now();
    let [first, second] = &mut survivors;
    tokio::select! {
        () = first.wait_for_log("dead node's presence settled") => {}
        () = second.wait_for_log("dead node's presence settled") => {}
    }
    let settled_after = killed.elapsed();
    assert!(
        settled_after < PRESENCE_TTL,
        "settled after {settled_after:?}"
    );
    let settlers = survivors
        .iter()
        .filter(|node| node.log().contains("node died without leaving"))
        .count();
    assert_eq!(settlers, 1, "exactly one survivor settles the dead node");

    // Each Centrifugo member's leave reaches the watcher once: the marker published after comes next.
    let mut left = BTreeSet::new();
    for _ in 0..2 {
        left.insert(presence_push(&mut watcher, "leave").await);
    }
    assert_eq!(left, doomed);
    let (status, body) = survivors[1]
        .api(
            "publish",
            json!({"channel": CHANNEL, "data": {"marker": 1}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let marker = watcher.next_push().await;
    assert_eq!(marker["pub"]["data"], json!({"marker": 1}), "{marker}");
    let (_, presence) = survivors[1]
        .api("presence", json!({"channel": CHANNEL}))
        .await;
    let present: Vec<&str> = presence["result"]["presence"]
        .as_object()
        .map(|clients| clients.keys().map(String::as_str).collect())
        .unwrap_or_default();
    assert_eq!(present, [watcher_id.as_str()], "{presence}");

    // Pusher: Ada is removed once; Grace, still connected elsewhere, is not.
    let removed = room_watcher.next().await;
    assert_eq!(
        (
            removed["event"].as_str(),
            data(&removed)["user_id"].as_str()
        ),
        (Some("pusher_internal:member_removed"), Some("1")),
        "{removed}"
    );
    triggered(
        survivors[1].addr,
        json!({"name": "marker", "channel": ROOM, "data": "{}"}),
    )
    .await;
    assert_eq!(room_watcher.next().await["event"], "marker");
    let (status, users) = get(
        survivors[0].addr,
        &format!(
            "/apps/{}/channels/{ROOM}/users",
            herald_tests::PUSHER_APP_ID
        ),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{users}");
    let ids: BTreeSet<&str> = users["users"]
        .as_array()
        .map(|users| users.iter().filter_map(|u| u["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(ids, BTreeSet::from(["2", "3"]), "{users}");

    // Webhooks: Ada's removal and the lonely channel's vacancy, and nothing more (a marker vacancy from
    // each survivor comes next: each node's webhooks go out in order).
    let mut hooks = vec![receiver.next().await, receiver.next().await];
    hooks.sort_by_key(|event| event["name"].as_str().map(str::to_owned));
    assert_eq!(
        hooks,
        [
            json!({"name": "channel_vacated", "channel": LONELY}),
            json!({"name": "member_removed", "channel": ROOM, "user_id": "1"}),
        ]
    );
    for (n, node) in survivors.iter().enumerate() {
        let mut marker = Pusher::connect(node.addr).await;
        marker.subscribed(&format!("marker-{n}"), None).await;
        drop(marker);
    }
    let mut markers: Vec<Value> = vec![receiver.next().await, receiver.next().await];
    markers.sort_by_key(|event| event["channel"].as_str().map(str::to_owned));
    assert_eq!(
        markers,
        [
            json!({"name": "channel_vacated", "channel": "marker-0"}),
            json!({"name": "channel_vacated", "channel": "marker-1"}),
        ]
    );
    drop((doomed_clients, on_victim));
}
