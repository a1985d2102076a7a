//! # backend-proxy: Centrifugo's proxy protocol as a plugin
//!
//! A backend written for Centrifugo's HTTP proxies works with Herald unchanged: each hook with a URL is
//! sent to the backend as Centrifugo sends it — a `POST` of its JSON request, with the client's headers
//! named in `headers` copied from the connection's opening request — and the backend's `result`, `error`
//! or `disconnect` decides. Session-cookie authentication (Laravel, Symfony, Rails) is the connect proxy
//! with `cookie` among the headers.
//!
//! ```toml
//! [plugins.config.backend-proxy]
//! connect_url = "http://app.internal/centrifugo/connect"          # connect (and nothing else needed)
//! refresh_url = "http://app.internal/centrifugo/refresh"          # refresh of an expiring connection
//! subscribe_url = "http://app.internal/centrifugo/subscribe"
//! sub_refresh_url = "http://app.internal/centrifugo/sub_refresh"
//! publish_url = "http://app.internal/centrifugo/publish"
//! rpc_url = "http://app.internal/centrifugo/rpc"
//! headers = ["cookie", "authorization", "origin", "user-agent", "x-real-ip", "x-forwarded-for", "x-request-id"]
//!
//! [plugins.http.backend-proxy]     # Herald's own permission for the requests
//! allow = ["http://app.internal/centrifugo/"]
//! timeout = "1s"
//! [plugins.limits.backend-proxy]   # the hook's deadline covers the backend's answer
//! deadline = "1500ms"
//! ```
//!
//! Requests (JSON, as Centrifugo's): every one carries `client`, `transport`, `protocol` (`"json"`),
//! `encoding` (`"json"`); connect adds `name`, `version` (empty: Herald's hooks do not see them) and `data`;
//! refresh adds `user`; subscribe `user`, `channel`, `token`, `data`; sub_refresh `user`, `channel`;
//! publish `user`, `channel`, `data`; rpc `user`, `method`, `data`. `data` is the client's JSON as it is,
//! or `b64data` when it is not JSON.
//!
//! Answers: `{"result": {…}}` (connect: `user`, `expire_at`, `info`/`b64info`, `data`/`b64data`,
//! `channels`; refresh and sub_refresh: `expired`, `expire_at`, `info`; subscribe: `info`/`b64info`,
//! `data`/`b64data`, `expire_at`; publish: `data`/`b64data` replaces the publication's; rpc:
//! `data`/`b64data` is the reply), `{"error": {"code", "message"}}` (an error reply with that code) or
//! `{"disconnect": {"code", "reason"}}` (closes the connection). An expired refresh closes with `3005`; an
//! expired sub_refresh refuses the subscription (`103`).
//!
//! Failing closed: a backend that is down, slow (past the HTTP timeout or the hook's deadline), answers a
//! status other than 200, or a body that is not such an answer gives error `100` (internal, temporary: the
//! SDKs retry) — for connect too, where Centrifugo does the same.
//!
//! Headers: the opening request's headers are known at connect; for the other hooks the plugin keeps the
//! copied ones (and the connection's transport) in its shared state under the connection's id until the
//! connection ends, so they reach the subscribe, publish and rpc proxies as Centrifugo sends them. That is
//! one state entry per connection with headers to copy: raise `plugins.state_max_entries` (10,000 by
//! default) to the connections a node holds; past it the later proxies go without headers (and name the
//! transport `websocket`).

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use herald_sdk::{
    ClientInfo, Config, ConnectAllow, ConnectRequest, ConnectVerdict, Deny, DisconnectEvent, Hooks,
    Level, Plugin, PublishRequest, PublishSource, PublishVerdict, RpcRequest, RpcVerdict,
    SubscribeAllow, SubscribeRequest, SubscribeVerdict, Transform, codes, deny, http, state,
};
use serde::Deserialize;
use serde_json::{Map, Value};

/// How long copied headers are kept for a connection whose end the plugin did not hear of.
const HEADERS_TTL: Duration = Duration::from_secs(24 * 3600);

/// The configuration (see the crate documentation).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    connect_url: Option<String>,
    refresh_url: Option<String>,
    subscribe_url: Option<String>,
    sub_refresh_url: Option<String>,
    publish_url: Option<String>,
    rpc_url: Option<String>,
    headers: Vec<String>,
}

/// The plugin: where each hook goes and which headers travel.
pub struct BackendProxy {
    settings: Settings,
}

/// What a connection's later proxies need from its connect.
#[derive(Debug, Default, serde::Serialize, Deserialize)]
struct Kept {
    headers: Vec<(String, String)>,
    transport: Option<String>,
}

impl Kept {
    fn transport(&self) -> &str {
        self.transport.as_deref().unwrap_or("websocket")
    }
}

/// What the backend said, short of a result.
#[derive(Debug, Deserialize)]
struct Answer {
    #[serde(default)]
    result: Option<Map<String, Value>>,
    #[serde(default)]
    error: Option<Refusal>,
    #[serde(default)]
    disconnect: Option<Closing>,
}

#[derive(Debug, Deserialize)]
struct Refusal {
    code: u32,
    #[serde(default)]
    message: String,
}

#[derive(Debug, Deserialize)]
struct Closing {
    code: u32,
    #[serde(default)]
    reason: String,
}

/// The backend's decision, or why there is none.
enum Outcome {
    Result(Map<String, Value>),
    Refused(Deny),
}

/// Error `100`: the backend could not decide; the reason goes to Herald's log.
fn internal(detail: &str) -> Deny {
    herald_sdk::log(Level::Warn, &format!("backend-proxy: {detail}"));
    deny(codes::INTERNAL, "internal error")
}

/// The client's payload as Centrifugo sends it: `data` when it is JSON, else `b64data`.
fn put_data(body: &mut Map<String, Value>, data: Option<&[u8]>) {
    let Some(data) = data else { return };
    match serde_json::from_slice::<Value>(data) {
        Ok(value) => body.insert("data".into(), value),
        Err(_) => body.insert("b64data".into(), BASE64.encode(data).into()),
    };
}

/// A payload of the answer: `<name>` (JSON, kept as its text) or `b64<name>`.
fn take_data(result: &Map<String, Value>, name: &str) -> Result<Option<Vec<u8>>, String> {
    if let Some(value) = result.get(name).filter(|v| !v.is_null()) {
        return Ok(Some(value.to_string().into_bytes()));
    }
    match result.get(&format!("b64{name}")).and_then(Value::as_str) {
        Some(text) => BASE64
            .decode(text)
            .map(Some)
            .map_err(|e| format!("b64{name} is not base64: {e}")),
        None => Ok(None),
    }
}

/// `expire_at` of the answer: unix seconds, 0 or absent for none.
fn expire_at(result: &Map<String, Value>) -> Option<u64> {
    result
        .get("expire_at")
        .and_then(Value::as_u64)
        .filter(|&at| at > 0)
}

/// The connection a connect or refresh is for.
fn connecting(request: &ConnectRequest) -> ClientInfo {
    ClientInfo {
        user: request.user.clone(),
        client: request.client.clone(),
        info: None,
    }
}

fn headers_key(client: &str) -> String {
    format!("headers:{client}")
}

impl BackendProxy {
    /// The connection's opening-request headers named in `headers`, as `[name, value]` pairs.
    fn copied_headers(&self, headers: &[(String, String)]) -> Vec<(String, String)> {
        headers
            .iter()
            .filter(|(name, _)| {
                self.settings
                    .headers
                    .iter()
                    .any(|wanted| wanted.eq_ignore_ascii_case(name))
            })
            .cloned()
            .collect()
    }

    /// The headers and transport kept for `client` at its connect.
    fn kept(client: &str) -> Kept {
        state::get(&headers_key(client))
            .and_then(|stored| serde_json::from_slice(&stored).ok())
            .unwrap_or_default()
    }

    /// Sends one proxy request and reads the answer.
    fn ask(&self, url: &str, body: Map<String, Value>, headers: Vec<(String, String)>) -> Outcome {
        let mut request = http::Request::post(url, Value::Object(body).to_string());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let response = match http::fetch(&request) {
            Ok(response) => response,
            Err(error) => return Outcome::Refused(internal(&format!("{url}: {error:?}"))),
        };
        if response.status != 200 {
            let detail = format!("{url} answered {}", response.status);
            return Outcome::Refused(internal(&detail));
        }
        match serde_json::from_slice::<Answer>(&response.body) {
            Ok(Answer {
                disconnect: Some(closing),
                ..
            }) => Outcome::Refused(deny(closing.code, closing.reason)),
            Ok(Answer {
                error: Some(refusal),
                ..
            }) => Outcome::Refused(deny(refusal.code, refusal.message)),
            Ok(Answer {
                result: Some(result),
                ..
            }) => Outcome::Result(result),
            Ok(_) => Outcome::Refused(internal(&format!("{url}: no result, error or disconnect"))),
            Err(error) => {
                Outcome::Refused(internal(&format!("{url}: not a proxy answer: {error}")))
            }
        }
    }

    /// The fields every request carries.
    fn common(client: &ClientInfo, transport: &str) -> Map<String, Value> {
        let mut body = Map::new();
        body.insert("client".into(), client.client.clone().into());
        body.insert("transport".into(), transport.into());
        body.insert("protocol".into(), "json".into());
        body.insert("encoding".into(), "json".into());
        if !client.user.is_empty() {
            body.insert("user".into(), client.user.clone().into());
        }
        body
    }

    fn connect(&self, request: &ConnectRequest, url: &str) -> ConnectVerdict {
        let client = connecting(request);
        let mut body = Self::common(&client, &request.transport);
        body.insert("name".into(), "".into());
        body.insert("version".into(), "".into());
        put_data(&mut body, request.data.as_deref());
        let headers = self.copied_headers(&request.headers);
        let result = match self.ask(url, body, headers.clone()) {
            Outcome::Result(result) => result,
            Outcome::Refused(refusal) => return ConnectVerdict::Deny(refusal),
        };
        let allow = (|| {
            let user = result
                .get("user")
                .and_then(Value::as_str)
                .ok_or("result without a user")?;
            let channels = result
                .get("channels")
                .and_then(Value::as_array)
                .map(|channels| {
                    channels
                        .iter()
                        .filter_map(|c| c.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            Ok::<_, String>(ConnectAllow {
                user: user.to_owned(),
                info: take_data(&result, "info")?,
                channels,
                expire_at: expire_at(&result),
                data: take_data(&result, "data")?,
            })
        })();
        match allow {
            Ok(allow) => {
                if !headers.is_empty() {
                    let kept = Kept {
                        headers,
                        transport: Some(request.transport.clone()),
                    };
                    let kept = serde_json::to_vec(&kept).expect("strings serialise");
                    state::set(&headers_key(&request.client), &kept, HEADERS_TTL);
                }
                ConnectVerdict::Allow(allow)
            }
            Err(detail) => ConnectVerdict::Deny(internal(&format!("{url}: {detail}"))),
        }
    }

    fn refresh(&self, request: &ConnectRequest, url: &str) -> ConnectVerdict {
        let client = connecting(request);
        let body = Self::common(&client, &request.transport);
        let result = match self.ask(url, body, self.copied_headers(&request.headers)) {
            Outcome::Result(result) => result,
            Outcome::Refused(refusal) => return ConnectVerdict::Deny(refusal),
        };
        if result.get("expired").and_then(Value::as_bool) == Some(true) {
            return ConnectVerdict::Deny(deny(codes::CONNECTION_EXPIRED, "connection expired"));
        }
        match take_data(&result, "info") {
            Ok(info) => ConnectVerdict::Allow(ConnectAllow {
                user: request.user.clone(),
                info,
                channels: Vec::new(),
                expire_at: expire_at(&result),
                data: None,
            }),
            Err(detail) => ConnectVerdict::Deny(internal(&format!("{url}: {detail}"))),
        }
    }
}

impl Plugin for BackendProxy {
    const NAME: &'static str = "backend-proxy";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const HOOKS: Hooks = Hooks::CONNECT
        .union(Hooks::SUBSCRIBE)
        .union(Hooks::PUBLISH)
        .union(Hooks::RPC)
        .union(Hooks::DISCONNECT);

    fn init(config: Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        let urls = [
            &settings.connect_url,
            &settings.refresh_url,
            &settings.subscribe_url,
            &settings.sub_refresh_url,
            &settings.publish_url,
            &settings.rpc_url,
        ];
        if urls.iter().all(|url| url.is_none()) {
            return Err("invalid configuration: no proxy URL; set at least connect_url".into());
        }
        Ok(Self { settings })
    }

    fn on_connect(&self, request: &ConnectRequest) -> ConnectVerdict {
        let url = if request.refresh {
            &self.settings.refresh_url
        } else {
            &self.settings.connect_url
        };
        match (url, request.refresh) {
            (Some(url), false) => self.connect(request, url),
            (Some(url), true) => self.refresh(request, url),
            (None, _) => ConnectVerdict::Pass,
        }
    }

    fn on_subscribe(&self, request: &SubscribeRequest) -> SubscribeVerdict {
        let url = if request.refresh {
            &self.settings.sub_refresh_url
        } else {
            &self.settings.subscribe_url
        };
        let Some(url) = url else {
            return SubscribeVerdict::Pass;
        };
        let kept = Self::kept(&request.client.client);
        let mut body = Self::common(&request.client, kept.transport());
        body.insert("channel".into(), request.channel.clone().into());
        if !request.refresh {
            body.insert("token".into(), request.token.clone().into());
            put_data(&mut body, request.data.as_deref());
        }
        let result = match self.ask(url, body, kept.headers) {
            Outcome::Result(result) => result,
            Outcome::Refused(refusal) => return SubscribeVerdict::Deny(refusal),
        };
        if request.refresh && result.get("expired").and_then(Value::as_bool) == Some(true) {
            return SubscribeVerdict::Deny(deny(codes::PERMISSION_DENIED, "subscription expired"));
        }
        let allow = (|| {
            Ok::<_, String>(SubscribeAllow {
                info: take_data(&result, "info")?,
                data: if request.refresh {
                    None
                } else {
                    take_data(&result, "data")?
                },
                expire_at: expire_at(&result),
            })
        })();
        match allow {
            Ok(allow) => SubscribeVerdict::Allow(allow),
            Err(detail) => SubscribeVerdict::Deny(internal(&format!("{url}: {detail}"))),
        }
    }

    fn on_publish(&self, request: &PublishRequest) -> PublishVerdict {
        let (Some(url), PublishSource::Client, Some(publisher)) = (
            &self.settings.publish_url,
            request.source,
            &request.publisher,
        ) else {
            return PublishVerdict::Pass;
        };
        let kept = Self::kept(&publisher.client);
        let mut body = Self::common(publisher, kept.transport());
        body.insert("channel".into(), request.channel.clone().into());
        put_data(&mut body, Some(&request.data));
        let result = match self.ask(url, body, kept.headers) {
            Outcome::Result(result) => result,
            Outcome::Refused(refusal) => return PublishVerdict::Deny(refusal),
        };
        match take_data(&result, "data") {
            Ok(None) => PublishVerdict::Pass,
            Ok(Some(data)) => PublishVerdict::Transform(Transform {
                data: Some(data),
                tags: None,
            }),
            Err(detail) => PublishVerdict::Deny(internal(&format!("{url}: {detail}"))),
        }
    }

    fn on_rpc(&self, request: &RpcRequest) -> RpcVerdict {
        let Some(url) = &self.settings.rpc_url else {
            return RpcVerdict::Pass;
        };
        let kept = Self::kept(&request.client.client);
        let mut body = Self::common(&request.client, kept.transport());
        body.insert("method".into(), request.method.clone().into());
        put_data(&mut body, request.data.as_deref());
        let result = match self.ask(url, body, kept.headers) {
            Outcome::Result(result) => result,
            Outcome::Refused(refusal) => return RpcVerdict::Deny(refusal),
        };
        match take_data(&result, "data") {
            Ok(data) => RpcVerdict::Reply(data.unwrap_or_else(|| b"null".to_vec())),
            Err(detail) => RpcVerdict::Deny(internal(&format!("{url}: {detail}"))),
        }
    }

    fn on_disconnect(&self, event: &DisconnectEvent) {
        state::delete(&headers_key(&event.client.client));
    }
}

herald_sdk::export!(BackendProxy);

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn plugin(config: Value) -> BackendProxy {
        state::clear();
        BackendProxy::init(Config::from_json(&config.to_string()).unwrap()).unwrap()
    }

    /// Answers every request with `answer`, recording the requests.
    fn backend(
        answer: impl Fn(&http::Request) -> Result<http::Response, http::Error> + 'static,
    ) -> std::rc::Rc<std::cell::RefCell<Vec<(http::Request, Value)>>> {
        let seen = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let record = seen.clone();
        http::stub(move |request| {
            let body = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
            record.borrow_mut().push((request.clone(), body));
            answer(request)
        });
        seen
    }

    fn ok(body: Value) -> Result<http::Response, http::Error> {
        Ok(http::Response::json(200, body.to_string()))
    }

    #[test]
    fn connect_sends_centrifugo_s_request_with_the_cookie_and_applies_the_result() {
        let proxy = plugin(json!({"connect_url": "http://app/connect", "headers": ["Cookie"]}));
        let seen = backend(|_| {
            ok(
                json!({"result": {"user": "42", "expire_at": 1700000000, "info": {"name": "Ann"},
                "b64data": BASE64.encode("raw"), "channels": ["user:#42"]}}),
            )
        });
        let request = ConnectRequest::new()
            .client("c1")
            .data(r#"{"hello":1}"#)
            .headers([("cookie", "laravel_session=abc"), ("x-secret", "no")]);
        let verdict = proxy.on_connect(&request);
        assert_eq!(
            verdict,
            ConnectVerdict::Allow(ConnectAllow {
                user: "42".into(),
                info: Some(br#"{"name":"Ann"}"#.to_vec()),
                channels: vec!["user:#42".into()],
                expire_at: Some(1_700_000_000),
                data: Some(b"raw".to_vec()),
            })
        );
        let seen = seen.borrow();
        let (sent, body) = &seen[0];
        assert_eq!(sent.url, "http://app/connect");
        assert!(
            sent.headers
                .contains(&("cookie".into(), "laravel_session=abc".into()))
        );
        assert!(!sent.headers.iter().any(|(name, _)| name == "x-secret"));
        assert_eq!(body["client"], "c1");
        assert_eq!(body["data"], json!({"hello": 1}));
        assert_eq!(
            (&body["protocol"], &body["encoding"]),
            (&json!("json"), &json!("json"))
        );
    }

    #[test]
    fn errors_and_disconnects_from_the_backend_are_applied_as_they_are() {
        let proxy = plugin(json!({"connect_url": "http://app/connect"}));
        backend(|_| ok(json!({"error": {"code": 1000, "message": "custom"}})));
        assert_eq!(
            proxy.on_connect(&ConnectRequest::new()),
            ConnectVerdict::Deny(deny(1000, "custom"))
        );
        backend(|_| ok(json!({"disconnect": {"code": 4500, "reason": "go away"}})));
        assert_eq!(
            proxy.on_connect(&ConnectRequest::new()),
            ConnectVerdict::Deny(deny(4500, "go away"))
        );
    }

    #[test]
    fn a_backend_that_cannot_decide_fails_closed_with_100() {
        let proxy =
            plugin(json!({"connect_url": "http://app/connect", "rpc_url": "http://app/rpc"}));
        let failing = [
            Err(http::Error::Unavailable("refused".into())),
            Err(http::Error::Timeout),
            Ok(http::Response::json(500, "{}")),
            Ok(http::Response::json(200, "<html>")),
            Ok(http::Response::json(200, "{}")),
            Ok(http::Response::json(200, r#"{"result": {"info": {}}}"#)),
        ];
        for answer in failing {
            let answer = std::rc::Rc::new(answer);
            let given = answer.clone();
            backend(move |_| (*given).clone());
            assert_eq!(
                proxy.on_connect(&ConnectRequest::new()),
                ConnectVerdict::Deny(deny(codes::INTERNAL, "internal error")),
                "{answer:?}"
            );
        }
        backend(|_| Err(http::Error::Timeout));
        assert_eq!(
            proxy.on_rpc(&RpcRequest::new("m")),
            RpcVerdict::Deny(deny(codes::INTERNAL, "internal error"))
        );
    }

    #[test]
    fn subscribe_publish_and_rpc_carry_the_connect_headers_and_the_backend_decides() {
        let proxy = plugin(json!({
            "connect_url": "http://app/connect", "subscribe_url": "http://app/subscribe",
            "publish_url": "http://app/publish", "rpc_url": "http://app/rpc", "headers": ["cookie"],
        }));
        let seen = backend(|request| match request.url.as_str() {
            "http://app/connect" => ok(json!({"result": {"user": "42"}})),
            "http://app/subscribe" => ok(json!({"result": {"data": {"welcome": true}}})),
            "http://app/publish" => ok(json!({"result": {"data": {"text": "clean"}}})),
            _ => ok(json!({"result": {"data": {"sum": 3}}})),
        });
        let connect = ConnectRequest::new()
            .client("c1")
            .headers([("cookie", "s=1")]);
        assert!(matches!(
            proxy.on_connect(&connect),
            ConnectVerdict::Allow(_)
        ));
        let client = ClientInfo::new("42").client("c1");
        let subscribe = SubscribeRequest::new("news")
            .client(client.clone())
            .token("t");
        assert_eq!(
            proxy.on_subscribe(&subscribe),
            SubscribeVerdict::Allow(SubscribeAllow {
                info: None,
                data: Some(br#"{"welcome":true}"#.to_vec()),
                expire_at: None,
            })
        );
        let publish = PublishRequest::new("news", r#"{"text":"dirty"}"#).publisher(client.clone());
        assert_eq!(
            proxy.on_publish(&publish),
            PublishVerdict::Transform(Transform {
                data: Some(br#"{"text":"clean"}"#.to_vec()),
                tags: None
            })
        );
        let rpc = RpcRequest::new("add").client(client.clone()).data("[1,2]");
        assert_eq!(
            proxy.on_rpc(&rpc),
            RpcVerdict::Reply(br#"{"sum":3}"#.to_vec())
        );
        let seen = seen.borrow();
        for (request, body) in &seen[1..] {
            assert!(
                request.headers.contains(&("cookie".into(), "s=1".into())),
                "{request:?}"
            );
            assert_eq!(body["user"], "42");
        }
        assert_eq!(seen[1].1["token"], "t");
        assert_eq!(seen[2].1["data"], json!({"text": "dirty"}));
        assert_eq!(seen[3].1["method"], "add");
        // The API's publications are the backend's own: not proxied.
        assert_eq!(
            proxy.on_publish(&PublishRequest::new("news", "{}")),
            PublishVerdict::Pass
        );
        // After the connection ends its headers are gone.
        proxy.on_disconnect(&DisconnectEvent {
            client,
            code: 3000,
            reason: String::new(),
        });
        assert!(BackendProxy::kept("c1").headers.is_empty());
    }

    #[test]
    fn expired_refreshes_close_or_refuse() {
        let proxy = plugin(
            json!({"refresh_url": "http://app/refresh", "sub_refresh_url": "http://app/sub_refresh"}),
        );
        backend(|_| ok(json!({"result": {"expired": true}})));
        let refresh = ConnectRequest::new().refresh(true).user("42");
        assert_eq!(
            proxy.on_connect(&refresh),
            ConnectVerdict::Deny(deny(codes::CONNECTION_EXPIRED, "connection expired"))
        );
        let sub_refresh = SubscribeRequest::new("news").user("42").refresh(true);
        assert!(matches!(
            proxy.on_subscribe(&sub_refresh),
            SubscribeVerdict::Deny(_)
        ));
        backend(|_| ok(json!({"result": {"expire_at": 1800000000}})));
        assert!(matches!(
            proxy.on_connect(&refresh),
            ConnectVerdict::Allow(ConnectAllow {
                expire_at: Some(1_800_000_000),
                ..
            })
        ));
        // Without a connect URL a connect is not this plugin's to decide.
        assert_eq!(
            proxy.on_connect(&ConnectRequest::new()),
            ConnectVerdict::Pass
        );
        assert!(BackendProxy::init(Config::from_json("{}").unwrap()).is_err());
    }
}
