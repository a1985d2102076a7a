//! Several Pusher apps on one Herald (`[[pusher.apps]]` beside the single-app form): each app's channels,
//! presence, users and HTTP API are its own; a disabled app is refused with 4003 (403 for its API), a full
//! one with 4004; each app's event rates are its own; and editing the configuration file adds, changes,
//! disables and removes apps while Herald runs. Raw protocol clients and signed requests here; pusher-js
//! and the Node `pusher` library of two apps run `tests/e2e/js/pusher-apps.js`.

use std::path::Path;

use herald::config::{Config, Source};
use herald_tests::pusher::{App, Pusher, data, signed_as, url};
use herald_tests::{Client, PUSHER_CONFIG, Received, TestServer, publication, require_node};
use serde_json::{Value, json};

/// The single-app form's app ([`PUSHER_CONFIG`]), which shares the Centrifugo protocol's channels.
const ONE: App = herald_tests::pusher::APP;
const TWO: App = App {
    id: "2",
    key: "key-two",
    secret: "secret-two",
};
const THREE: App = App {
    id: "3",
    key: "key-three",
    secret: "secret-three",
};
const DISABLED: App = App {
    id: "9",
    key: "key-off",
    secret: "secret-off",
};

/// App 1 in the single-app form, apps 2 and 3 listed (2 with a connection cap of 2), app 9 listed and
/// disabled.
fn apps_config() -> String {
    format!(
        r#"{PUSHER_CONFIG}
        [[pusher.apps]]
        id = "2"
        key = "key-two"
        secret = "secret-two"
        client_events = true
        max_connections = 2
        [[pusher.apps]]
        app_id = 3
        key = "key-three"
        secret = "secret-three"
        client_events = true
        [[pusher.apps]]
        id = "9"
        key = "key-off"
        secret = "secret-off"
        enabled = false
        "#
    )
}

/// A correctly signed `POST /apps/{id}{path}` of `app`'s backend; the status and body.
async fn post(server: &TestServer, app: App, path: &str, body: Value) -> (u16, Value) {
    let path = format!("/apps/{}{path}", app.id);
    signed_as(server.addr, app, "POST", &path, &[], Some(body)).await
}

/// A correctly signed `GET /apps/{id}{path}` of `app`'s backend; the status and body.
async fn get(server: &TestServer, app: App, path: &str) -> (u16, Value) {
    let path = format!("/apps/{}{path}", app.id);
    signed_as(server.addr, app, "GET", &path, &[], None).await
}

/// Triggers `hello` with `{"app": id}` on `channel` through `app`'s API, asserting 200.
async fn hello(server: &TestServer, app: App, channel: &str) {
    let body =
        json!({"name": "hello", "channel": channel, "data": json!({"app": app.id}).to_string()});
    let (status, answer) = post(server, app, "/events", body).await;
    assert_eq!(status, 200, "app {} trigger: {answer}", app.id);
}

/// The next event `client` gets must be app `id`'s `hello` on `channel`.
async fn hears_hello_of(client: &mut Pusher, id: &str, channel: &str) {
    let event = client.next().await;
    assert_eq!(
        (
            event["event"].as_str(),
            event["channel"].as_str(),
            data(&event)
        ),
        (Some("hello"), Some(channel), json!({"app": id})),
        "a client of app {} heard {event}",
        client.app.id
    );
}

/// The refusal a connection with `key` gets: the `pusher:error` code and the close code.
async fn refusal(server: &TestServer, key: &str) -> (Value, u16) {
    let mut client = Client::open_url(&url(server.addr, key, "?protocol=7")).await;
    let error = client.next_json().await;
    assert_eq!(error["event"], "pusher:error", "{error}");
    (error["data"]["code"].clone(), client.expect_close().await.0)
}

#[tokio::test]
async fn same_named_channels_of_different_apps_are_different_channels() {
    let server = TestServer::start(&apps_config()).await;
    let mut one = Pusher::connect_to(server.addr, ONE).await;
    let mut two = Pusher::connect_to(server.addr, TWO).await;
    let mut three = Pusher::connect_to(server.addr, THREE).await;
    for client in [&mut one, &mut two, &mut three] {
        client.subscribed("news", None).await;
        let auth = client.auth("private-orders");
        client.subscribed("private-orders", Some(auth)).await;
    }
    two.subscribed("only-two", None).await;
    let (mut centrifugo, _) = Client::connect(&server).await;
    let subscribed = centrifugo.subscribe(json!({"channel": "news"})).await;
    assert!(subscribed.get("error").is_none(), "{subscribed}");

    // Were app 2's and 3's events to leak, they would be the others' next events.
    for channel in ["news", "private-orders"] {
        for app in [TWO, THREE, ONE] {
            hello(&server, app, channel).await;
        }
        hears_hello_of(&mut one, "1", channel).await;
        hears_hello_of(&mut two, "2", channel).await;
        hears_hello_of(&mut three, "3", channel).await;
    }
    // The single-app form's channels are the Centrifugo protocol's.
    let push = centrifugo.next_push().await;
    assert_eq!(
        publication(&push, "news")["data"],
        json!({"app": "1"}),
        "{push}"
    );
    // Herald's own API reaches a listed app's channel by its internal name; a Centrifugo client meets the
    // channel's own rules there (a Pusher private channel needs a vouch it does not have).
    server
        .publish("\u{2}2\u{2}news", json!({"app": "api"}))
        .await;
    let event = two.next().await;
    assert_eq!(
        (event["channel"].as_str(), data(&event)),
        (Some("news"), json!({"app": "api"})),
        "{event}"
    );
    let refused = centrifugo
        .subscribe(json!({"channel": "\u{2}2\u{2}private-orders"}))
        .await;
    assert!(refused.get("error").is_some(), "{refused}");

    let listed = |body: &Value| {
        let mut names: Vec<String> = body["channels"]
            .as_object()
            .map(|channels| channels.keys().cloned().collect())
            .unwrap_or_default();
        names.sort();
        names
    };
    let (status, body) = get(&server, TWO, "/channels").await;
    assert_eq!(
        (status, listed(&body)),
        (
            200,
            vec!["news".into(), "only-two".into(), "private-orders".into()]
        )
    );
    let (_, body) = get(&server, THREE, "/channels").await;
    assert_eq!(listed(&body), ["news", "private-orders"]);
    let (_, body) = get(&server, ONE, "/channels").await;
    assert_eq!(listed(&body), ["news", "private-orders"], "{body}");
    let (_, body) = get(&server, THREE, "/channels/only-two").await;
    assert_eq!(body["occupied"], false, "{body}");
}

#[tokio::test]
async fn one_apps_credentials_reach_none_of_another_apps_clients() {
    let server = TestServer::start(&apps_config()).await;
    // The same user in the same presence channel of two apps: two rosters.
    let mut two = Pusher::connect_to(server.addr, TWO).await;
    let mut three = Pusher::connect_to(server.addr, THREE).await;
    let member = r#"{"user_id":"u","user_info":{"app":"2"}}"#;
    let joined = two.subscribe_presence("presence-room", member).await;
    assert_eq!(data(&joined)["presence"]["count"], 1, "{joined}");
    let member = r#"{"user_id":"u","user_info":{"app":"3"}}"#;
    let joined = three.subscribe_presence("presence-room", member).await;
    assert_eq!(
        data(&joined)["presence"]["hash"],
        json!({"u": {"app": "3"}}),
        "{joined}"
    );
    let (_, users) = get(&server, TWO, "/channels/presence-room/users").await;
    assert_eq!(users, json!({"users": [{"id": "u"}]}));
    assert_eq!(
        two.sign_in(r#"{"id":"u"}"#).await["event"],
        "pusher:signin_success"
    );
    assert_eq!(
        three.sign_in(r#"{"id":"u"}"#).await["event"],
        "pusher:signin_success"
    );

    // App 3's secret signs nothing of app 2's: not its API, not its channels.
    let forged = App {
        secret: THREE.secret,
        ..TWO
    };
    let (status, _) = get(&server, forged, "/channels").await;
    assert_eq!(status, 401);
    let (status, _) = post(&server, forged, "/users/u/terminate_connections", json!({})).await;
    assert_eq!(status, 401);
    let mut stolen = Pusher::connect_to(server.addr, TWO).await;
    stolen.app = THREE;
    let auth = stolen.auth("private-orders");
    let refused = stolen.subscribe("private-orders", Some(auth)).await;
    assert_eq!(refused["data"]["status"], 401, "{refused}");

    // Terminating user u of app 3 closes app 3's connection alone.
    let (status, _) = post(&server, THREE, "/users/u/terminate_connections", json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(three.client.expect_close().await.0, 4009);
    two.send(json!({"event": "pusher:ping", "data": {}})).await;
    assert_eq!(two.next().await["event"], "pusher:pong");
}

#[tokio::test]
async fn disabled_and_full_apps_are_refused_with_their_codes() {
    let server = TestServer::start(&apps_config()).await;
    assert_eq!(refusal(&server, DISABLED.key).await, (json!(4003), 4003));
    let (status, body) = get(&server, DISABLED, "/channels").await;
    assert_eq!(status, 403, "{body}");

    // App 2 takes two connections on this node; app 3 is not counted with it.
    let first = Pusher::connect_to(server.addr, TWO).await;
    let _second = Pusher::connect_to(server.addr, TWO).await;
    assert_eq!(refusal(&server, TWO.key).await, (json!(4004), 4004));
    let _other_app = Pusher::connect_to(server.addr, THREE).await;

    // A closed connection gives its place back once its session has ended.
    drop(first);
    let deadline = tokio::time::Instant::now() + herald_tests::WAIT;
    loop {
        let mut client = Client::open_url(&url(server.addr, TWO.key, "?protocol=7")).await;
        match client.receive().await {
            Received::Json(event) if event["event"] == "pusher:connection_established" => break,
            other => assert!(
                tokio::time::Instant::now() < deadline,
                "app 2 still full after its connection closed: {other:?}"
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

const RATED: App = App {
    id: "5",
    key: "key-rated",
    secret: "secret-rated",
};

#[tokio::test]
async fn each_apps_event_rates_are_its_own() {
    let rated = "[[pusher.apps]]\nid = \"5\"\nkey = \"key-rated\"\nsecret = \"secret-rated\"\n\
                 client_events = true\nmax_client_events_per_second = 1\nmax_api_events_per_second = 1\n";
    let server = TestServer::start(&format!("{}{rated}", apps_config())).await;
    let event = |n: u32| json!({"name": "e", "channel": "news", "data": n.to_string()});
    // Two events at once are more than app 5's second holds; nothing of the batch is sent.
    let batch = json!({"batch": [event(1), event(2)]});
    let (status, _) = post(&server, RATED, "/batch_events", batch.clone()).await;
    assert_eq!(status, 429);
    let (status, _) = post(&server, RATED, "/events", event(3)).await;
    assert_eq!(status, 200, "the refused batch took nothing of the rate");
    let (status, _) = post(&server, THREE, "/batch_events", batch).await;
    assert_eq!(status, 200, "app 3 has no rate");

    // App 5's clients may send one client event a second, together.
    let mut sender = Pusher::connect_to(server.addr, RATED).await;
    let auth = sender.auth("private-chat");
    sender.subscribed("private-chat", Some(auth)).await;
    let client_event = json!({"event": "client-x", "channel": "private-chat", "data": {}});
    sender.send(client_event.clone()).await;
    sender.send(client_event).await;
    let refused = sender.next().await;
    assert_eq!(
        (refused["event"].as_str(), refused["data"]["code"].as_u64()),
        (Some("pusher:error"), Some(4301)),
        "{refused}"
    );
}

/// Writes `content` to `path` the way deployments replace a file: written beside it, renamed over it.
fn replace_file(path: &Path, content: &str) {
    let staged = path.with_extension("toml.new");
    std::fs::write(&staged, content).expect("write the new configuration");
    std::fs::rename(&staged, path).expect("rename it into place");
}

/// A configuration file with exactly these `[[pusher.apps]]` entries.
fn file_with_apps(apps: &str) -> String {
    format!(
        "address = \"127.0.0.1:0\"\nshutdown_timeout = \"5s\"\n\
         [limits]\nconnections_per_second_per_ip = 100000\n\
         [channel.defaults]\nallow_subscribe_for_client = true\nallow_subscribe_for_anonymous = true\n{apps}"
    )
}

const APP_TWO: &str = "[[pusher.apps]]\nid = \"2\"\nkey = \"key-two\"\nsecret = \"secret-two\"\n";
const APP_THREE: &str =
    "[[pusher.apps]]\nid = \"3\"\nkey = \"key-three\"\nsecret = \"secret-three\"\n";

#[tokio::test]
async fn apps_are_added_changed_disabled_and_removed_by_editing_the_file() {
    let dir = tempfile::tempdir().expect("config dir");
    let path = dir.path().join("herald.toml");
    let four = "[[pusher.apps]]\nid = \"4\"\nkey = \"key-four\"\nsecret = \"secret-four\"\n";
    std::fs::write(
        &path,
        file_with_apps(&format!("{APP_TWO}{APP_THREE}{four}")),
    )
    .expect("write config");
    let loaded = Config::load(Source::File(&path)).expect("valid file");
    let server = TestServer::start_with(loaded).await;
    herald::reload::watch(server.node.clone(), path.clone()).expect("watch the file");

    let mut two = Pusher::connect_to(server.addr, TWO).await;
    let mut three = Pusher::connect_to(server.addr, THREE).await;
    let four_app = App {
        id: "4",
        key: "key-four",
        secret: "secret-four",
    };
    let mut kept = Pusher::connect_to(server.addr, four_app).await;
    kept.subscribed("news", None).await;

    // App 2 removed, app 3 disabled, app 4 given a new secret and client events, app 5 added.
    let three_off = APP_THREE.replace("secret-three\"\n", "secret-three\"\nenabled = false\n");
    let four_changed = "[[pusher.apps]]\nid = \"4\"\nkey = \"key-four\"\nsecret = \"new-secret\"\nclient_events = true\n";
    let five_entry = "[[pusher.apps]]\nid = \"5\"\nkey = \"key-five\"\nsecret = \"secret-five\"\n";
    replace_file(
        &path,
        &file_with_apps(&format!("{three_off}{four_changed}{five_entry}")),
    );

    let error = two.next().await;
    assert_eq!(error["data"]["code"], 4001, "{error}");
    assert_eq!(two.client.expect_close().await.0, 4001);
    let error = three.next().await;
    assert_eq!(error["data"]["code"], 4003, "{error}");
    assert_eq!(three.client.expect_close().await.0, 4003);

    // The reconfigured app kept its connection and follows its new settings.
    kept.app = App {
        secret: "new-secret",
        ..four_app
    };
    let auth = kept.auth("private-chat");
    kept.subscribed("private-chat", Some(auth)).await;
    let (status, _) = get(&server, kept.app, "/channels").await;
    assert_eq!(status, 200, "its API takes the new secret");
    let (status, _) = get(&server, four_app, "/channels").await;
    assert_eq!(status, 401, "and no longer the old one");
    let mut listener = Pusher::connect_to(server.addr, kept.app).await;
    let auth = listener.auth("private-chat");
    listener.subscribed("private-chat", Some(auth)).await;
    kept.send(json!({"event": "client-typing", "channel": "private-chat", "data": {}}))
        .await;
    assert_eq!(listener.next().await["event"], "client-typing");

    let five_app = App {
        id: "5",
        key: "key-five",
        secret: "secret-five",
    };
    let mut five = Pusher::connect_to(server.addr, five_app).await;
    assert_eq!(refusal(&server, TWO.key).await, (json!(4001), 4001));
    assert_eq!(refusal(&server, THREE.key).await, (json!(4003), 4003));
    let (status, _) = get(&server, TWO, "/channels").await;
    assert_eq!(status, 404, "a removed app's API is gone");

    // A file that does not load is refused without stopping the reloads: the next good one applies. App 3
    // is removed, app 2 comes back, app 5 gets a new key.
    replace_file(&path, "[pusher\nbroken");
    let five_rekeyed = five_entry.replace("key-five", "key-five-new");
    replace_file(
        &path,
        &file_with_apps(&format!("{APP_TWO}{four_changed}{five_rekeyed}")),
    );
    let mut back = None;
    let deadline = tokio::time::Instant::now() + herald_tests::WAIT;
    while back.is_none() {
        let mut client = Client::open_url(&url(server.addr, TWO.key, "?protocol=7")).await;
        match client.next_json().await {
            event if event["event"] == "pusher:connection_established" => back = Some(client),
            refused => assert!(
                tokio::time::Instant::now() < deadline,
                "app 2 not back: {refused}"
            ),
        }
    }
    assert_eq!(refusal(&server, THREE.key).await, (json!(4001), 4001));
    let error = five.next().await;
    assert_eq!(error["data"]["code"], 4001, "a new key: {error}");
    assert_eq!(five.client.expect_close().await.0, 4001);
    kept.send(json!({"event": "pusher:ping", "data": {}})).await;
    assert_eq!(kept.next().await["event"], "pusher:pong", "app 4 untouched");
}

/// pusher-js 8.6 clients and the Node `pusher` 5.3 backends of two apps: same-named public and private
/// channels stay apart, one app's signature opens nothing of the other's, each backend lists its own
/// channels and is refused with the other's secret, and a disabled app's client gets 4003.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pusher_js_clients_of_two_apps_are_isolated() {
    require_node(&["pusher-js", "pusher"]).await;
    let server = TestServer::start(&apps_config()).await;
    let mut run = tokio::process::Command::new("node");
    run.arg("tests/e2e/js/pusher-apps.js")
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .env("HERALD_PUSHER_HOST", server.addr.ip().to_string())
        .env("HERALD_PUSHER_PORT", server.addr.port().to_string())
        .env("HERALD_PUSHER_APP_ID", THREE.id)
        .env("HERALD_PUSHER_KEY", THREE.key)
        .env("HERALD_PUSHER_SECRET", THREE.secret)
        .env("HERALD_PUSHER_APP2_ID", ONE.id)
        .env("HERALD_PUSHER_APP2_KEY", ONE.key)
        .env("HERALD_PUSHER_APP2_SECRET", ONE.secret)
        .env("HERALD_PUSHER_DISABLED_KEY", DISABLED.key);
    herald_tests::assert_script_passes(&mut run, "node tests/e2e/js/pusher-apps.js").await;
}
