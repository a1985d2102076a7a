//! History, positioning and recovery (§8.2–8.3 of the wire notes) against a real Herald: the history
//! command's limit/since/reverse semantics and errors, positioned subscriptions, recovery of missed
//! publications after a reconnect, and publications racing a subscribe.

use bytes::Bytes;
use herald::node::PublishRequest;
use herald_tests::{Client, TestServer, publication};
use serde_json::{Value, json};

/// Namespaces used by the history and recovery tests, on top of the harness' open top-level namespace.
const NAMESPACES: &str = r#"
    [channel.namespaces.nohist]
    presence = true
    allow_subscribe_for_client = true
    allow_subscribe_for_anonymous = true
    allow_history_for_client = true
    allow_history_for_subscriber = true
    allow_history_for_anonymous = true

    [channel.namespaces.locked]
    history_size = 10
    history_ttl = "5m"
    allow_subscribe_for_client = true
    allow_subscribe_for_anonymous = true

    [channel.namespaces.small]
    history_size = 3
    history_ttl = "5m"
    allow_recovery = true
    allow_positioning = true
    allow_subscribe_for_client = true
    allow_subscribe_for_anonymous = true
    allow_history_for_subscriber = true
    allow_history_for_anonymous = true

    [channel.namespaces.norec]
    history_size = 10
    history_ttl = "5m"
    allow_subscribe_for_client = true
    allow_subscribe_for_anonymous = true
"#;

/// Publishes `{"n": i}` for every `i` in `range` through the API; returns the epoch reported.
async fn publish_numbered(
    server: &TestServer,
    channel: &str,
    range: std::ops::RangeInclusive<u64>,
) -> String {
    let mut epoch = String::new();
    for n in range {
        let result = server.publish(channel, json!({ "n": n })).await;
        assert_eq!(result["offset"], n, "{result}");
        epoch = result["epoch"].as_str().expect("epoch").to_string();
    }
    epoch
}

/// The offsets of a list of publications, checking each carries the `{"n": offset}` it was published with.
fn offsets(publications: &Value) -> Vec<u64> {
    publications
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {publications}"))
        .iter()
        .map(|p| {
            let offset = p["offset"].as_u64().unwrap_or_else(|| panic!("{p}"));
            assert_eq!(p["data"], json!({ "n": offset }), "{p}");
            offset
        })
        .collect()
}

/// Sends a history command and returns its result object.
async fn history(client: &mut Client, body: Value) -> Value {
    let reply = client.call("history", body).await;
    reply
        .get("history")
        .cloned()
        .unwrap_or_else(|| panic!("history failed: {reply}"))
}

/// Sends a command expected to fail and returns the error code.
async fn error_code(client: &mut Client, method: &str, body: Value) -> u64 {
    let reply = client.call(method, body).await;
    reply["error"]["code"]
        .as_u64()
        .unwrap_or_else(|| panic!("expected an error reply: {reply}"))
}

/// Subscribes and returns the subscribe result object.
async fn subscribed(client: &mut Client, body: Value) -> Value {
    let reply = client.call("subscribe", body).await;
    reply
        .get("subscribe")
        .cloned()
        .unwrap_or_else(|| panic!("subscribe failed: {reply}"))
}

/// A fresh connection subscribed to `channel` (history needs a subscription in the harness' namespace).
async fn history_reader(server: &TestServer, channel: &str) -> Client {
    let (mut client, _) = Client::connect(server).await;
    subscribed(&mut client, json!({ "channel": channel })).await;
    client
}

/// Reads `n` publication pushes of `channel` and returns their offsets (checking their data).
async fn next_offsets(client: &mut Client, channel: &str, n: usize) -> Vec<u64> {
    let mut pubs = Vec::with_capacity(n);
    for _ in 0..n {
        pubs.push(publication(&client.next_push().await, channel));
    }
    offsets(&Value::Array(pubs))
}

// ---------------------------------------------------------------------------------------------------------
// History command (§8.3)
// ---------------------------------------------------------------------------------------------------------

/// `limit: 0` (the SDK default) returns no publications but always the `publications: []`, `epoch` and
/// `offset` (stream top) fields.
#[tokio::test]
async fn history_limit_zero_returns_only_the_stream_top() {
    let server = TestServer::start("").await;
    let epoch = publish_numbered(&server, "h0", 1..=4).await;
    let mut client = history_reader(&server, "h0").await;
    let reply = client
        .call("history", json!({"channel": "h0", "limit": 0}))
        .await;
    assert_eq!(
        reply["history"],
        json!({"publications": [], "epoch": epoch, "offset": 4}),
        "{reply}"
    );
    // Without a limit field at all the default (0) applies.
    let result = history(&mut client, json!({"channel": "h0"})).await;
    assert_eq!(
        result,
        json!({"publications": [], "epoch": epoch, "offset": 4})
    );
}

/// History of a channel nobody published to still carries all three fields: `publications: []`, a
/// (fresh) epoch and `offset: 0`, which history results never omit even though it is a zero value.
#[tokio::test]
async fn history_of_an_empty_stream_has_all_fields() {
    let server = TestServer::start("").await;
    let mut client = history_reader(&server, "empty").await;
    let result = history(&mut client, json!({"channel": "empty", "limit": -1})).await;
    assert_eq!(result["publications"], json!([]), "{result}");
    assert_eq!(result["offset"], 0, "{result}");
    assert!(
        result["epoch"].as_str().is_some_and(|e| !e.is_empty()),
        "{result}"
    );
}

/// `limit: -1` returns everything kept, oldest first, capped at `history_max_publication_limit`; a positive
/// limit returns at most that many (also capped).
#[tokio::test]
async fn history_limits_return_the_oldest_first_and_respect_the_cap() {
    let server = TestServer::start("[client]\nhistory_max_publication_limit = 5").await;
    let epoch = publish_numbered(&server, "lim", 1..=8).await;
    let mut client = history_reader(&server, "lim").await;

    let all = history(&mut client, json!({"channel": "lim", "limit": -1})).await;
    assert_eq!(offsets(&all["publications"]), vec![1, 2, 3, 4, 5]);
    assert_eq!(all["offset"], 8);
    assert_eq!(all["epoch"], epoch);

    let three = history(&mut client, json!({"channel": "lim", "limit": 3})).await;
    assert_eq!(offsets(&three["publications"]), vec![1, 2, 3]);
    assert_eq!(three["offset"], 8);

    let capped = history(&mut client, json!({"channel": "lim", "limit": 1000})).await;
    assert_eq!(offsets(&capped["publications"]), vec![1, 2, 3, 4, 5]);
}

/// Without a cap in the way, `limit: -1` returns every kept publication.
#[tokio::test]
async fn history_limit_minus_one_returns_everything_under_the_cap() {
    let server = TestServer::start("").await;
    publish_numbered(&server, "every", 1..=12).await;
    let mut client = history_reader(&server, "every").await;
    let all = history(&mut client, json!({"channel": "every", "limit": -1})).await;
    assert_eq!(offsets(&all["publications"]), (1..=12).collect::<Vec<_>>());
    assert_eq!(all["offset"], 12);
}

/// `since` returns the publications after the given offset (forward); with the epoch empty or equal to the
/// current one; since at the top returns nothing but still the top.
#[tokio::test]
async fn history_since_reads_forward_from_a_position() {
    let server = TestServer::start("").await;
    let epoch = publish_numbered(&server, "since", 1..=8).await;
    let mut client = history_reader(&server, "since").await;

    let after3 = history(
        &mut client,
        json!({"channel": "since", "limit": -1, "since": {"offset": 3, "epoch": epoch}}),
    )
    .await;
    assert_eq!(offsets(&after3["publications"]), vec![4, 5, 6, 7, 8]);
    assert_eq!(after3["offset"], 8);
    assert_eq!(after3["epoch"], epoch);

    let two_after5 = history(
        &mut client,
        json!({"channel": "since", "limit": 2, "since": {"offset": 5, "epoch": epoch}}),
    )
    .await;
    assert_eq!(offsets(&two_after5["publications"]), vec![6, 7]);

    let no_epoch = history(
        &mut client,
        json!({"channel": "since", "limit": -1, "since": {"offset": 6}}),
    )
    .await;
    assert_eq!(offsets(&no_epoch["publications"]), vec![7, 8]);

    let at_top = history(
        &mut client,
        json!({"channel": "since", "limit": -1, "since": {"offset": 8, "epoch": epoch}}),
    )
    .await;
    assert_eq!(
        at_top,
        json!({"publications": [], "epoch": epoch, "offset": 8})
    );
}

/// `reverse: true` returns newest first: from the newest end without `since`, and strictly before
/// `since.offset` with it.
#[tokio::test]
async fn history_reverse_returns_newest_first() {
    let server = TestServer::start("").await;
    let epoch = publish_numbered(&server, "rev", 1..=8).await;
    let mut client = history_reader(&server, "rev").await;

    let newest3 = history(
        &mut client,
        json!({"channel": "rev", "limit": 3, "reverse": true}),
    )
    .await;
    assert_eq!(offsets(&newest3["publications"]), vec![8, 7, 6]);
    assert_eq!(newest3["offset"], 8);

    let all = history(
        &mut client,
        json!({"channel": "rev", "limit": -1, "reverse": true}),
    )
    .await;
    assert_eq!(offsets(&all["publications"]), vec![8, 7, 6, 5, 4, 3, 2, 1]);

    let before5 = history(
        &mut client,
        json!({"channel": "rev", "limit": -1, "reverse": true,
               "since": {"offset": 5, "epoch": epoch}}),
    )
    .await;
    assert_eq!(offsets(&before5["publications"]), vec![4, 3, 2, 1]);
    assert_eq!(before5["offset"], 8);

    let two_before5 = history(
        &mut client,
        json!({"channel": "rev", "limit": 2, "reverse": true,
               "since": {"offset": 5, "epoch": epoch}}),
    )
    .await;
    assert_eq!(offsets(&two_before5["publications"]), vec![4, 3]);
}

/// A `since` epoch that is not the stream's current one is error 112, forward or reverse.
#[tokio::test]
async fn history_since_with_a_wrong_epoch_is_unrecoverable() {
    let server = TestServer::start("").await;
    publish_numbered(&server, "epoch", 1..=3).await;
    let mut client = history_reader(&server, "epoch").await;
    for reverse in [false, true] {
        let code = error_code(
            &mut client,
            "history",
            json!({"channel": "epoch", "limit": -1, "reverse": reverse,
                   "since": {"offset": 2, "epoch": "notthisone"}}),
        )
        .await;
        assert_eq!(code, 112, "reverse: {reverse}");
    }
}

/// `reverse` together with `since.offset == 0` is a bad request (107).
#[tokio::test]
async fn history_reverse_since_zero_is_a_bad_request() {
    let server = TestServer::start("").await;
    let epoch = publish_numbered(&server, "rz", 1..=3).await;
    let mut client = history_reader(&server, "rz").await;
    let code = error_code(
        &mut client,
        "history",
        json!({"channel": "rz", "limit": -1, "reverse": true, "since": {"offset": 0, "epoch": epoch}}),
    )
    .await;
    assert_eq!(code, 107);
}

/// With `history_size` 3, history keeps only the newest 3 publications while offsets keep counting.
#[tokio::test]
async fn history_size_keeps_the_newest_while_offsets_keep_counting() {
    let server = TestServer::start(NAMESPACES).await;
    let epoch = publish_numbered(&server, "small:h", 1..=7).await;
    let mut client = history_reader(&server, "small:h").await;
    let all = history(&mut client, json!({"channel": "small:h", "limit": -1})).await;
    assert_eq!(
        all,
        json!({
            "publications": [
                {"data": {"n": 5}, "offset": 5},
                {"data": {"n": 6}, "offset": 6},
                {"data": {"n": 7}, "offset": 7},
            ],
            "epoch": epoch,
            "offset": 7,
        })
    );
    let result = server.publish("small:h", json!({"n": 8})).await;
    assert_eq!(result["offset"], 8);
}

/// History in a namespace without history is `108 not available`.
#[tokio::test]
async fn history_without_history_in_the_namespace_is_not_available() {
    let server = TestServer::start(NAMESPACES).await;
    let mut client = history_reader(&server, "nohist:x").await;
    let code = error_code(
        &mut client,
        "history",
        json!({"channel": "nohist:x", "limit": -1}),
    )
    .await;
    assert_eq!(code, 108);
}

/// History needs an `allow_history_*` permission: without any it is 103 even for a subscriber, and
/// `allow_history_for_subscriber` does not cover a client that is not subscribed.
#[tokio::test]
async fn history_without_permission_is_denied() {
    let server = TestServer::start(NAMESPACES).await;
    publish_numbered(&server, "locked:x", 1..=2).await;
    let mut locked = history_reader(&server, "locked:x").await;
    let code = error_code(
        &mut locked,
        "history",
        json!({"channel": "locked:x", "limit": -1}),
    )
    .await;
    assert_eq!(code, 103);

    publish_numbered(&server, "open", 1..=2).await;
    let (mut outsider, _) = Client::connect(&server).await;
    let code = error_code(
        &mut outsider,
        "history",
        json!({"channel": "open", "limit": -1}),
    )
    .await;
    assert_eq!(
        code, 103,
        "not subscribed: only subscribers may read history"
    );
    subscribed(&mut outsider, json!({"channel": "open"})).await;
    let all = history(&mut outsider, json!({"channel": "open", "limit": -1})).await;
    assert_eq!(offsets(&all["publications"]), vec![1, 2]);
}

// ---------------------------------------------------------------------------------------------------------
// Positioning
// ---------------------------------------------------------------------------------------------------------

/// A positioned subscription's reply carries `positioned`, the epoch and the stream top; the
/// publications after it arrive with contiguous offsets continuing from that top.
#[tokio::test]
async fn positioned_subscribe_reports_the_top_and_offsets_continue_from_it() {
    let server = TestServer::start("").await;
    let epoch = publish_numbered(&server, "pos", 1..=3).await;
    let (mut client, _) = Client::connect(&server).await;
    let reply = client
        .call("subscribe", json!({"channel": "pos", "positioned": true}))
        .await;
    assert_eq!(
        reply["subscribe"],
        json!({"positioned": true, "epoch": epoch, "offset": 3}),
        "{reply}"
    );
    publish_numbered(&server, "pos", 4..=9).await;
    assert_eq!(
        next_offsets(&mut client, "pos", 6).await,
        vec![4, 5, 6, 7, 8, 9]
    );
}

/// A recoverable subscription is positioned too and says so (`recoverable`, `positioned`, epoch, top).
#[tokio::test]
async fn recoverable_subscribe_is_positioned() {
    let server = TestServer::start("").await;
    let epoch = publish_numbered(&server, "rpos", 1..=2).await;
    let (mut client, _) = Client::connect(&server).await;
    let result = subscribed(&mut client, json!({"channel": "rpos", "recoverable": true})).await;
    assert_eq!(
        result,
        json!({"recoverable": true, "positioned": true, "epoch": epoch, "offset": 2})
    );
}

// ---------------------------------------------------------------------------------------------------------
// Recovery (§8.2)
// ---------------------------------------------------------------------------------------------------------

/// Subscribes a first connection recoverably, returns its position (epoch, offset) and closes it.
async fn position_then_leave(server: &TestServer, channel: &str) -> (String, u64) {
    let (mut client, _) = Client::connect(server).await;
    let result = subscribed(
        &mut client,
        json!({"channel": channel, "recoverable": true}),
    )
    .await;
    let epoch = result["epoch"].as_str().expect("epoch").to_string();
    let offset = result["offset"].as_u64().unwrap_or(0);
    drop(client);
    (epoch, offset)
}

/// A client that went away and comes back with `recover: true, offset, epoch` gets exactly the
/// publications it missed, in order, `recovered` and `was_recovering`, the epoch, and its own request
/// offset (not the top) so it advances through the replay; live publications continue after them.
#[tokio::test]
async fn recovery_returns_exactly_the_missed_publications() {
    let server = TestServer::start("").await;
    publish_numbered(&server, "rec", 1..=2).await;
    let (epoch, offset) = position_then_leave(&server, "rec").await;
    assert_eq!(offset, 2);
    publish_numbered(&server, "rec", 3..=6).await;

    let (mut client, _) = Client::connect(&server).await;
    let result = subscribed(
        &mut client,
        json!({"channel": "rec", "recoverable": true, "recover": true,
               "offset": offset, "epoch": epoch, "flag": 1}),
    )
    .await;
    assert_eq!(
        result,
        json!({
            "recoverable": true,
            "positioned": true,
            "epoch": epoch,
            "offset": 2,
            "publications": [
                {"data": {"n": 3}, "offset": 3},
                {"data": {"n": 4}, "offset": 4},
                {"data": {"n": 5}, "offset": 5},
                {"data": {"n": 6}, "offset": 6},
            ],
            "recovered": true,
            "was_recovering": true,
        })
    );
    publish_numbered(&server, "rec", 7..=7).await;
    assert_eq!(next_offsets(&mut client, "rec", 1).await, vec![7]);
}

/// Recovering from the current top (nothing missed) is recovered with no publications and the top.
#[tokio::test]
async fn recovery_with_nothing_missed_is_recovered() {
    let server = TestServer::start("").await;
    publish_numbered(&server, "none", 1..=3).await;
    let (epoch, offset) = position_then_leave(&server, "none").await;
    let (mut client, _) = Client::connect(&server).await;
    let result = subscribed(
        &mut client,
        json!({"channel": "none", "recoverable": true, "recover": true,
               "offset": offset, "epoch": epoch}),
    )
    .await;
    assert_eq!(
        result,
        json!({
            "recoverable": true,
            "positioned": true,
            "epoch": epoch,
            "offset": 3,
            "recovered": true,
            "was_recovering": true,
        })
    );
}

/// Recovering with an epoch that is not the stream's is not recovered: no publications, and the current
/// top and epoch so the client can reload and continue from there.
#[tokio::test]
async fn recovery_with_a_wrong_epoch_is_not_recovered() {
    let server = TestServer::start("").await;
    let epoch = publish_numbered(&server, "wrong", 1..=4).await;
    let (mut client, _) = Client::connect(&server).await;
    let result = subscribed(
        &mut client,
        json!({"channel": "wrong", "recoverable": true, "recover": true,
               "offset": 2, "epoch": "otherepo"}),
    )
    .await;
    assert_eq!(
        result,
        json!({
            "recoverable": true,
            "positioned": true,
            "epoch": epoch,
            "offset": 4,
            "was_recovering": true,
        })
    );
    publish_numbered(&server, "wrong", 5..=5).await;
    assert_eq!(next_offsets(&mut client, "wrong", 1).await, vec![5]);
}

/// When more publications were missed than the channel keeps (`history_size`), recovery fails
/// (`recovered` false, no publications, the top); exactly as many as kept still recovers.
#[tokio::test]
async fn recovery_beyond_the_kept_history_is_not_recovered() {
    let server = TestServer::start(NAMESPACES).await;
    publish_numbered(&server, "small:r", 1..=1).await;
    let (epoch, offset) = position_then_leave(&server, "small:r").await;
    assert_eq!(offset, 1);
    publish_numbered(&server, "small:r", 2..=5).await; // 4 missed, 3 kept

    let (mut lost, _) = Client::connect(&server).await;
    let result = subscribed(
        &mut lost,
        json!({"channel": "small:r", "recoverable": true, "recover": true,
               "offset": offset, "epoch": epoch}),
    )
    .await;
    assert_eq!(
        result,
        json!({
            "recoverable": true,
            "positioned": true,
            "epoch": epoch,
            "offset": 5,
            "was_recovering": true,
        })
    );

    let (mut kept, _) = Client::connect(&server).await;
    let result = subscribed(
        &mut kept,
        json!({"channel": "small:r", "recoverable": true, "recover": true,
               "offset": 2, "epoch": epoch}),
    )
    .await;
    assert_eq!(result["recovered"], true, "{result}");
    assert_eq!(result["offset"], 2, "{result}");
    assert_eq!(offsets(&result["publications"]), vec![3, 4, 5]);
}

/// When more publications were missed than `recovery_max_publication_limit`, recovery fails even though
/// history still has them; exactly the limit recovers.
#[tokio::test]
async fn recovery_beyond_the_recovery_limit_is_not_recovered() {
    let server = TestServer::start("[client]\nrecovery_max_publication_limit = 3").await;
    publish_numbered(&server, "cap", 1..=1).await;
    let (epoch, offset) = position_then_leave(&server, "cap").await;
    publish_numbered(&server, "cap", 2..=5).await; // 4 missed, limit 3

    let (mut over, _) = Client::connect(&server).await;
    let result = subscribed(
        &mut over,
        json!({"channel": "cap", "recoverable": true, "recover": true,
               "offset": offset, "epoch": epoch}),
    )
    .await;
    assert_eq!(
        result,
        json!({
            "recoverable": true,
            "positioned": true,
            "epoch": epoch,
            "offset": 5,
            "was_recovering": true,
        })
    );

    let (mut at_limit, _) = Client::connect(&server).await;
    let result = subscribed(
        &mut at_limit,
        json!({"channel": "cap", "recoverable": true, "recover": true,
               "offset": 2, "epoch": epoch}),
    )
    .await;
    assert_eq!(result["recovered"], true, "{result}");
    assert_eq!(result["offset"], 2, "{result}");
    assert_eq!(offsets(&result["publications"]), vec![3, 4, 5]);
}

/// With flag bit 2 ("reject unrecovered") an unrecoverable position is error 112 instead of
/// `recovered: false`, and the connection is left unsubscribed (a plain subscribe then succeeds); a
/// recoverable position with the same flag recovers normally.
#[tokio::test]
async fn reject_unrecovered_flag_turns_failure_into_error_112() {
    let server = TestServer::start("").await;
    let epoch = publish_numbered(&server, "strict", 1..=4).await;
    let (mut client, _) = Client::connect(&server).await;
    let code = error_code(
        &mut client,
        "subscribe",
        json!({"channel": "strict", "recoverable": true, "recover": true,
               "offset": 2, "epoch": "otherepo", "flag": 3}),
    )
    .await;
    assert_eq!(code, 112);
    let result = subscribed(
        &mut client,
        json!({"channel": "strict", "positioned": true}),
    )
    .await;
    assert_eq!(result["offset"], 4, "{result}");

    let (mut ok, _) = Client::connect(&server).await;
    let result = subscribed(
        &mut ok,
        json!({"channel": "strict", "recoverable": true, "recover": true,
               "offset": 2, "epoch": epoch, "flag": 2}),
    )
    .await;
    assert_eq!(result["recovered"], true, "{result}");
    assert_eq!(offsets(&result["publications"]), vec![3, 4]);
}

/// In a namespace without `allow_recovery` a recovery request is not honoured: the subscription is not
/// recoverable, nothing is replayed and there is no `was_recovering`.
#[tokio::test]
async fn recovery_is_ignored_where_the_namespace_does_not_allow_it() {
    let server = TestServer::start(NAMESPACES).await;
    let epoch = publish_numbered(&server, "norec:x", 1..=3).await;
    let (mut client, _) = Client::connect(&server).await;
    let reply = client
        .call(
            "subscribe",
            json!({"channel": "norec:x", "recoverable": true, "recover": true,
                          "offset": 1, "epoch": epoch}),
        )
        .await;
    assert_eq!(reply["subscribe"], json!({}), "{reply}");
    publish_numbered(&server, "norec:x", 4..=4).await;
    assert_eq!(next_offsets(&mut client, "norec:x", 1).await, vec![4]);
}

// ---------------------------------------------------------------------------------------------------------
// Publications racing a subscribe
// ---------------------------------------------------------------------------------------------------------

const RACE_CONFIG: &str = r#"
    [client]
    recovery_max_publication_limit = 100000
    [channel.namespaces.race]
    history_size = 100000
    history_ttl = "5m"
    allow_recovery = true
    allow_positioning = true
    allow_subscribe_for_client = true
    allow_subscribe_for_anonymous = true
"#;

/// Publications made before the race starts (the recovering clients' position).
const BEFORE: u64 = 5;
/// Publications made while clients subscribe.
const DURING: u64 = 2000;
const LAST: u64 = BEFORE + DURING;
/// Clients per round and kind (recovering, positioned).
const CLIENTS: usize = 5;
const ROUNDS: usize = 20;

fn numbered(channel: &str, n: u64) -> PublishRequest {
    PublishRequest {
        channel: channel.to_string(),
        data: Bytes::from(format!("{{\"n\":{n}}}")),
        ..Default::default()
    }
}

/// What one racing client saw: where its stream started (the offset its reply told it) and every offset
/// it then received, from the reply's publications and live pushes, up to [`LAST`].
struct Seen {
    start: u64,
    offsets: Vec<u64>,
    top_at_reply: u64,
}

async fn race_client(
    mut client: Client,
    channel: String,
    epoch: String,
    recover: bool,
    mut started: tokio::sync::watch::Receiver<bool>,
) -> Seen {
    started.wait_for(|s| *s).await.expect("publisher started");
    let body = if recover {
        json!({"channel": channel, "recoverable": true, "recover": true,
               "offset": BEFORE, "epoch": epoch})
    } else {
        json!({"channel": channel, "positioned": true})
    };
    let result = subscribed(&mut client, body).await;
    assert_eq!(result["epoch"], epoch, "{result}");
    let mut offsets_seen = Vec::new();
    let (start, top_at_reply) = if recover {
        assert_eq!(result["recovered"], true, "{result}");
        assert_eq!(result["was_recovering"], true, "{result}");
        assert_eq!(
            result["offset"], BEFORE,
            "recovered: offset is the request's"
        );
        let replayed = result.get("publications").cloned().unwrap_or(json!([]));
        offsets_seen.extend(offsets(&replayed));
        (BEFORE, offsets_seen.last().copied().unwrap_or(BEFORE))
    } else {
        assert_eq!(result["positioned"], true, "{result}");
        assert!(result.get("publications").is_none(), "{result}");
        let top = result["offset"].as_u64().expect("positioned: top offset");
        (top, top)
    };
    while offsets_seen.last().copied().unwrap_or(start) < LAST {
        let push = client.next_push().await;
        let p = publication(&push, &channel);
        let offset = p["offset"].as_u64().unwrap_or_else(|| panic!("{push}"));
        assert_eq!(p["data"], json!({ "n": offset }), "{push}");
        offsets_seen.push(offset);
    }
    Seen {
        start,
        offsets: offsets_seen,
        top_at_reply,
    }
}

/// Fails, showing where, unless `seen.offsets` is exactly `start+1..=LAST`.
fn assert_contiguous(round: usize, seen: &Seen) {
    let expected: Vec<u64> = (seen.start + 1..=LAST).collect();
    if seen.offsets == expected {
        return;
    }
    let at = seen
        .offsets
        .iter()
        .zip(&expected)
        .position(|(a, b)| a != b)
        .unwrap_or(seen.offsets.len().min(expected.len()));
    let from = at.saturating_sub(3);
    panic!(
        "round {round}: after position {} (top at reply {}), offsets diverge at index {at}: got {:?}, \
         expected {:?} ({} received, {} expected)",
        seen.start,
        seen.top_at_reply,
        &seen.offsets[from..(at + 4).min(seen.offsets.len())],
        &expected[from..(at + 4).min(expected.len())],
        seen.offsets.len(),
        expected.len()
    );
}

/// Publications made while clients subscribe (recovering from an earlier position, or positioned without
/// recovery) are neither lost nor duplicated: every client sees exactly the contiguous offsets after the
/// position its reply gave it, in order, up to the last publication. Repeated over many rounds and clients
/// to give the race between the subscribe and concurrent publishes a chance to show.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publications_racing_subscribes_are_neither_lost_nor_duplicated() {
    let server = TestServer::start(RACE_CONFIG).await;
    let mut raced = 0usize;
    for round in 0..ROUNDS {
        let channel = format!("race:r{round}");
        let node = server.node.clone();
        let mut epoch = String::new();
        for n in 1..=BEFORE {
            epoch = node
                .publish(numbered(&channel, n))
                .await
                .expect("publish")
                .epoch;
        }
        let (started_tx, started_rx) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        for i in 0..2 * CLIENTS {
            let (client, _) = Client::connect(&server).await;
            tasks.push(tokio::spawn(race_client(
                client,
                channel.clone(),
                epoch.clone(),
                i % 2 == 0,
                started_rx.clone(),
            )));
        }
        let publisher = {
            let channel = channel.clone();
            tokio::spawn(async move {
                for n in BEFORE + 1..=LAST {
                    let position = node.publish(numbered(&channel, n)).await.expect("publish");
                    assert_eq!(position.offset, n);
                    if n == BEFORE + 1 {
                        started_tx.send_replace(true);
                    }
                    // No yield: publishing back to back (the memory engine never suspends) keeps the
                    // stream lock busy, which is what makes publications land inside a subscribe's
                    // window between joining the hub and reading the stream position.
                }
            })
        };
        for task in tasks {
            let seen = tokio::time::timeout(herald_tests::WAIT, task)
                .await
                .expect("client finished in time")
                .expect("client task");
            assert_contiguous(round, &seen);
            if seen.top_at_reply > BEFORE + 1 && seen.top_at_reply < LAST {
                raced += 1;
            }
        }
        publisher.await.expect("publisher");
    }
    eprintln!(
        "{raced} of {} subscribes were answered mid-stream",
        ROUNDS * 2 * CLIENTS
    );
}
