//! Test fixture: a plugin whose every verdict comes from its configuration (`<file-stem>.toml` beside the
//! wasm), so two copies under different names and configurations exercise the chain semantics end to end,
//! and editing the configuration gives a recognisably new version.
//!
//! ```toml
//! id = "a"                           # names this copy: its tag key and its key in stamped data
//! tag = "v1"                         # publish: adds tag `<id> = <tag>` (and stamps data objects if `stamp`)
//! stamp = true                       # publish: also insert `"<id>": "<tag>"` into JSON object data
//! deny_code = 103                    # code of subscribe and access denies (default 103)
//! deny_subscribe = ["secret:*"]      # subscribe: deny these channels (checked first)
//! allow_subscribe = ["$private:*"]   # subscribe: allow these (bypasses the namespace rules)
//! drop_containing = "spam"           # publish: silently drop data containing this
//! deny_publish_containing = "forbidden"
//! deny_publish_code = 460            # publish: deny data containing the above with this code
//! rpc_echo = true                    # rpc: reply with the request's data
//! connect_user = "alice"             # connect: token "good" is allowed as this user
//! connect_channels = ["news"]        # connect: ... and subscribed to these channels server-side
//! connect_protocols = ["pusher"]     # connect: these protocols are allowed as connect_user, token or not
//! deny_protocols = ["pusher"]        # connect: deny these protocols (with `deny_code`)
//! deny_transports = ["sse"]          # connect: deny these transports (with `deny_code`)
//! access_deny = ["hidden:*"]         # history/presence: deny these channels (with `deny_code`)
//! connect_backend = "http://…/auth"  # connect: POST {"token","cookie"} there; 200 {"user":…} allows that
//!                                    # user, another status or body denies 3500, no answer 3004
//! fail_init = false                  # init: refuse to start
//!
//! [route]                            # publish: route `from` to `to` (publish checks: deny, drop, route, tag)
//! from = "orders"
//! to = ["user:#42"]
//! keep_original = true
//! ```
//!
//! Anything not configured passes.

use herald_sdk::http;
use herald_sdk::pattern::glob;
use herald_sdk::{
    AccessRequest, AccessVerdict, Config, ConnectAllow, ConnectRequest, ConnectVerdict, Hooks,
    Plugin, PublishRequest, PublishVerdict, Route, RpcRequest, RpcVerdict, SubscribeAllow,
    SubscribeRequest, SubscribeVerdict, Transform, deny,
};
use serde::Deserialize;

/// The fixture: its script.
pub struct Scripted(Script);

/// What the configuration says.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Script {
    id: String,
    tag: String,
    stamp: bool,
    deny_code: u32,
    deny_subscribe: Vec<String>,
    allow_subscribe: Vec<String>,
    drop_containing: Option<String>,
    deny_publish_containing: Option<String>,
    deny_publish_code: u32,
    rpc_echo: bool,
    connect_user: Option<String>,
    connect_channels: Vec<String>,
    connect_protocols: Vec<String>,
    deny_protocols: Vec<String>,
    deny_transports: Vec<String>,
    access_deny: Vec<String>,
    connect_backend: Option<String>,
    fail_init: bool,
    route: Option<RouteRule>,
}

impl Default for Script {
    fn default() -> Self {
        Self {
            id: "scripted".into(),
            tag: String::new(),
            stamp: false,
            deny_code: 103,
            deny_subscribe: Vec::new(),
            allow_subscribe: Vec::new(),
            drop_containing: None,
            deny_publish_containing: None,
            deny_publish_code: 103,
            rpc_echo: false,
            connect_user: None,
            connect_channels: Vec::new(),
            connect_protocols: Vec::new(),
            deny_protocols: Vec::new(),
            deny_transports: Vec::new(),
            access_deny: Vec::new(),
            connect_backend: None,
            fail_init: false,
            route: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteRule {
    from: String,
    to: Vec<String>,
    #[serde(default)]
    keep_original: bool,
}

/// Connect as the backend says: it gets the token and the client's `cookie` header, and answers
/// `{"user": …}` (Laravel-style session auth). Anything else fails closed.
fn ask_backend(backend: &str, request: &ConnectRequest) -> ConnectVerdict {
    #[derive(Deserialize)]
    struct Answer {
        user: String,
    }
    let cookie = request
        .headers
        .iter()
        .find(|(name, _)| name == "cookie")
        .map_or("", |(_, value)| value.as_str());
    let body =
        herald_sdk::json::encode(&serde_json::json!({"token": request.token, "cookie": cookie}));
    match http::fetch(&http::Request::post(backend, body)) {
        Ok(response) if response.status == 200 => {
            match serde_json::from_slice::<Answer>(&response.body) {
                Ok(answer) => ConnectVerdict::Allow(ConnectAllow {
                    user: answer.user,
                    info: None,
                    channels: Vec::new(),
                    expire_at: None,
                    data: None,
                }),
                Err(_) => ConnectVerdict::Deny(deny(3500, "the backend's answer is not JSON")),
            }
        }
        Ok(response) => ConnectVerdict::Deny(deny(
            3500,
            format!("the backend refused: {}", response.status),
        )),
        Err(error) => ConnectVerdict::Deny(deny(3004, format!("backend unavailable: {error:?}"))),
    }
}

fn any_match(patterns: &[String], channel: &str) -> bool {
    patterns.iter().any(|p| glob(p, channel))
}

fn contains(data: &[u8], needle: &Option<String>) -> bool {
    needle
        .as_deref()
        .is_some_and(|n| String::from_utf8_lossy(data).contains(n))
}

impl Plugin for Scripted {
    const NAME: &'static str = "scripted";
    const VERSION: &'static str = "1.0.0";
    const HOOKS: Hooks = Hooks::all();

    fn init(config: Config) -> Result<Self, String> {
        let script: Script = config.parse()?;
        if script.fail_init {
            return Err("refusing to start: fail_init is set".into());
        }
        Ok(Self(script))
    }

    fn on_connect(&self, request: &ConnectRequest) -> ConnectVerdict {
        let s = &self.0;
        if s.deny_protocols.contains(&request.protocol) {
            return ConnectVerdict::Deny(deny(
                s.deny_code,
                format!("{} connections denied by {}", request.protocol, s.id),
            ));
        }
        if s.deny_transports.contains(&request.transport) {
            return ConnectVerdict::Deny(deny(
                s.deny_code,
                format!("{} connections denied by {}", request.transport, s.id),
            ));
        }
        if let Some(backend) = &s.connect_backend {
            return ask_backend(backend, request);
        }
        let by_protocol = s.connect_protocols.contains(&request.protocol);
        match &s.connect_user {
            Some(user) if request.token == "good" || by_protocol => {
                ConnectVerdict::Allow(ConnectAllow {
                    user: user.clone(),
                    info: None,
                    channels: s.connect_channels.clone(),
                    expire_at: None,
                    data: None,
                })
            }
            _ => ConnectVerdict::Pass,
        }
    }

    fn on_subscribe(&self, request: &SubscribeRequest) -> SubscribeVerdict {
        let s = &self.0;
        if any_match(&s.deny_subscribe, &request.channel) {
            return SubscribeVerdict::Deny(deny(s.deny_code, format!("denied by {}", s.id)));
        }
        if any_match(&s.allow_subscribe, &request.channel) {
            return SubscribeVerdict::Allow(SubscribeAllow {
                info: None,
                data: None,
                expire_at: None,
            });
        }
        SubscribeVerdict::Pass
    }

    fn on_publish(&self, request: &PublishRequest) -> PublishVerdict {
        let s = &self.0;
        if contains(&request.data, &s.deny_publish_containing) {
            let reason = format!("denied by {}", s.id);
            return PublishVerdict::Deny(deny(s.deny_publish_code, reason));
        }
        if contains(&request.data, &s.drop_containing) {
            return PublishVerdict::Drop;
        }
        if let Some(route) = s.route.as_ref().filter(|r| r.from == request.channel) {
            return PublishVerdict::Route(Route {
                channels: route.to.clone(),
                keep_original: route.keep_original,
            });
        }
        if s.tag.is_empty() {
            return PublishVerdict::Pass;
        }
        let mut tags = request.tags.clone();
        tags.retain(|(k, _)| *k != s.id);
        tags.push((s.id.clone(), s.tag.clone()));
        let data = match serde_json::from_slice::<serde_json::Value>(&request.data) {
            Ok(serde_json::Value::Object(mut object)) if s.stamp => {
                object.insert(s.id.clone(), s.tag.clone().into());
                serde_json::to_vec(&object).ok()
            }
            _ => None,
        };
        PublishVerdict::Transform(Transform {
            data,
            tags: Some(tags),
        })
    }

    fn on_rpc(&self, request: &RpcRequest) -> RpcVerdict {
        if self.0.rpc_echo {
            return RpcVerdict::Reply(request.data.clone().unwrap_or_else(|| b"null".to_vec()));
        }
        RpcVerdict::Pass
    }

    fn on_access(&self, request: &AccessRequest) -> AccessVerdict {
        let s = &self.0;
        if any_match(&s.access_deny, &request.channel) {
            return AccessVerdict::Deny(deny(s.deny_code, format!("denied by {}", s.id)));
        }
        AccessVerdict::Pass
    }
}

herald_sdk::export!(Scripted);

#[cfg(test)]
mod tests {
    use super::*;

    fn scripted(json: serde_json::Value) -> Scripted {
        Scripted::init(Config(json)).expect("init")
    }

    #[test]
    fn defaults_pass_and_fail_init_refuses() {
        let s = scripted(serde_json::json!({}));
        assert_eq!(s.0.deny_code, 103);
        assert!(Scripted::init(Config(serde_json::json!({"fail_init": true}))).is_err());
        assert!(Scripted::init(Config(serde_json::json!({"typo": 1}))).is_err());
    }

    #[test]
    fn route_parses_from_a_table() {
        let s = scripted(serde_json::json!({"route": {"from": "orders", "to": ["user:#42"]}}));
        let route = s.0.route.expect("route");
        assert_eq!(route.to, vec!["user:#42"]);
        assert!(!route.keep_original);
    }
}
