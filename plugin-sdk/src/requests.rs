//! Constructors and chainable setters for the hook requests, so a native test spells only the fields it is
//! about:
//!
//! ```
//! use herald_sdk::{PublishRequest, PublishSource, SubscribeRequest};
//!
//! let request = SubscribeRequest::new("chat:room").user("42").token("eyJ…");
//! assert_eq!((request.client.user.as_str(), request.refresh), ("42", false));
//!
//! let request = PublishRequest::new("chat:room", r#"{"text":"hi"}"#).user("42");
//! assert_eq!(request.source, PublishSource::Client);
//! ```
//!
//! Herald fills every field of a request it sends. The defaults stand in for the fields a test leaves out,
//! and describe a plain case: connection [`CLIENT_ID`] of an anonymous user, over `websocket` with the
//! `centrifuge` protocol from `127.0.0.1:50000`, no token, no data, no headers, query or tags, not a refresh.
//! Each setter is named after the field it sets and replaces its value; `user` sets the user of the
//! request's connection.

use crate::{
    AccessKind, AccessRequest, ClientInfo, ConnectAllow, ConnectRequest, DisconnectEvent,
    PublishRequest, PublishSource, RpcRequest, SubscribeAllow, SubscribeRequest, Transform,
};

/// The connection id the constructors give a request's connection (Herald assigns real ones).
pub const CLIENT_ID: &str = "client-1";

fn pairs<K: Into<String>, V: Into<String>>(
    pairs: impl IntoIterator<Item = (K, V)>,
) -> Vec<(String, String)> {
    pairs
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect()
}

impl ClientInfo {
    /// Connection [`CLIENT_ID`] of `user` (`""` is anonymous), without connection info.
    pub fn new(user: impl Into<String>) -> Self {
        Self {
            user: user.into(),
            client: CLIENT_ID.into(),
            info: None,
        }
    }

    /// Connection [`CLIENT_ID`] without a user.
    pub fn anonymous() -> Self {
        Self::new("")
    }

    /// Sets the connection id.
    pub fn client(mut self, id: impl Into<String>) -> Self {
        self.client = id.into();
        self
    }

    /// Sets the connection info (JSON for JSON protocols).
    pub fn info(mut self, info: impl Into<Vec<u8>>) -> Self {
        self.info = Some(info.into());
        self
    }
}

impl Default for ConnectRequest {
    /// The same as [`ConnectRequest::new`].
    fn default() -> Self {
        Self::new()
    }
}

impl ConnectRequest {
    /// A first connect (not a refresh) of connection [`CLIENT_ID`] over `websocket`, protocol `centrifuge`,
    /// from `127.0.0.1:50000`, without token, data, headers or query.
    pub fn new() -> Self {
        Self {
            transport: "websocket".into(),
            protocol: "centrifuge".into(),
            remote_addr: "127.0.0.1:50000".into(),
            headers: Vec::new(),
            query: Vec::new(),
            token: String::new(),
            data: None,
            client: CLIENT_ID.into(),
            refresh: false,
            user: String::new(),
        }
    }

    /// Sets the transport (`"websocket"`, `"http_stream"`, `"sse"`, `"uni_websocket"`, `"uni_http_stream"`,
    /// `"uni_sse"`).
    pub fn transport(mut self, transport: impl Into<String>) -> Self {
        self.transport = transport.into();
        self
    }

    /// Sets the client protocol (`"centrifuge"` or `"pusher"`).
    pub fn protocol(mut self, protocol: impl Into<String>) -> Self {
        self.protocol = protocol.into();
        self
    }

    /// Sets the client's address (`ip:port`).
    pub fn remote_addr(mut self, remote_addr: impl Into<String>) -> Self {
        self.remote_addr = remote_addr.into();
        self
    }

    /// Sets the upgrade request's headers (Herald lower-cases their names).
    pub fn headers<K: Into<String>, V: Into<String>>(
        mut self,
        headers: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.headers = pairs(headers);
        self
    }

    /// Sets the upgrade request's query parameters.
    pub fn query<K: Into<String>, V: Into<String>>(
        mut self,
        query: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.query = pairs(query);
        self
    }

    /// Sets the connection token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = token.into();
        self
    }

    /// Sets the custom data the client sent with connect.
    pub fn data(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.data = Some(data.into());
        self
    }

    /// Sets the connection id.
    pub fn client(mut self, id: impl Into<String>) -> Self {
        self.client = id.into();
        self
    }

    /// Marks the request as a token refresh of a live connection (then set its current [`user`](Self::user)).
    pub fn refresh(mut self, refresh: bool) -> Self {
        self.refresh = refresh;
        self
    }

    /// Sets the connection's current user (meaningful on a refresh).
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = user.into();
        self
    }
}

impl SubscribeRequest {
    /// A subscription (not a refresh) to `channel` by an anonymous connection [`CLIENT_ID`], without token or
    /// data.
    pub fn new(channel: impl Into<String>) -> Self {
        Self {
            client: ClientInfo::anonymous(),
            channel: channel.into(),
            token: String::new(),
            data: None,
            refresh: false,
        }
    }

    /// Sets the subscribing connection.
    pub fn client(mut self, client: ClientInfo) -> Self {
        self.client = client;
        self
    }

    /// Sets the subscribing connection's user.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.client.user = user.into();
        self
    }

    /// Sets the subscription token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = token.into();
        self
    }

    /// Sets the custom data the client sent with subscribe.
    pub fn data(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.data = Some(data.into());
        self
    }

    /// Marks the request as a `sub_refresh` of a live subscription.
    pub fn refresh(mut self, refresh: bool) -> Self {
        self.refresh = refresh;
        self
    }
}

impl PublishRequest {
    /// A publication of `data` into `channel` through the HTTP API (so without a publisher) and without tags.
    pub fn new(channel: impl Into<String>, data: impl Into<Vec<u8>>) -> Self {
        Self {
            source: PublishSource::Api,
            publisher: None,
            channel: channel.into(),
            data: data.into(),
            tags: Vec::new(),
        }
    }

    /// Sets the source, keeping what Herald guarantees: a client publication has a publisher (an anonymous
    /// connection [`CLIENT_ID`] unless one was set), an API or queue publication has none.
    pub fn source(mut self, source: PublishSource) -> Self {
        self.source = source;
        self.publisher = match source {
            PublishSource::Client => self.publisher.or_else(|| Some(ClientInfo::anonymous())),
            PublishSource::Api | PublishSource::Queue => None,
        };
        self
    }

    /// Makes it a client publication by `publisher`.
    pub fn publisher(mut self, publisher: ClientInfo) -> Self {
        self.source = PublishSource::Client;
        self.publisher = Some(publisher);
        self
    }

    /// Makes it a client publication by `user` (on connection [`CLIENT_ID`] unless a publisher was set).
    pub fn user(self, user: impl Into<String>) -> Self {
        let publisher = self.publisher.clone().unwrap_or_else(ClientInfo::anonymous);
        self.publisher(ClientInfo {
            user: user.into(),
            ..publisher
        })
    }

    /// Sets the tags.
    pub fn tags<K: Into<String>, V: Into<String>>(
        mut self,
        tags: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.tags = pairs(tags);
        self
    }
}

impl RpcRequest {
    /// A call of `method` by an anonymous connection [`CLIENT_ID`], without data.
    pub fn new(method: impl Into<String>) -> Self {
        Self {
            client: ClientInfo::anonymous(),
            method: method.into(),
            data: None,
        }
    }

    /// Sets the calling connection.
    pub fn client(mut self, client: ClientInfo) -> Self {
        self.client = client;
        self
    }

    /// Sets the calling connection's user.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.client.user = user.into();
        self
    }

    /// Sets the call's data.
    pub fn data(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.data = Some(data.into());
        self
    }
}

impl AccessRequest {
    /// A read of `channel`'s history or presence (`kind`) by an anonymous connection [`CLIENT_ID`].
    pub fn new(channel: impl Into<String>, kind: AccessKind) -> Self {
        Self {
            client: ClientInfo::anonymous(),
            channel: channel.into(),
            kind,
        }
    }

    /// Sets the reading connection.
    pub fn client(mut self, client: ClientInfo) -> Self {
        self.client = client;
        self
    }

    /// Sets the reading connection's user.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.client.user = user.into();
        self
    }
}

impl DisconnectEvent {
    /// Anonymous connection [`CLIENT_ID`] ended with `code` and `reason`.
    pub fn new(code: u32, reason: impl Into<String>) -> Self {
        Self {
            client: ClientInfo::anonymous(),
            code,
            reason: reason.into(),
        }
    }

    /// Sets the connection that ended.
    pub fn client(mut self, client: ClientInfo) -> Self {
        self.client = client;
        self
    }

    /// Sets the user of the connection that ended.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.client.user = user.into();
        self
    }
}

/// Accepts the connection of an anonymous user that never expires, with no info, channels or data: set the
/// fields that matter (`ConnectAllow { user: "42".into(), ..Default::default() }`).
impl Default for ConnectAllow {
    fn default() -> Self {
        Self {
            user: String::new(),
            info: None,
            channels: Vec::new(),
            expire_at: None,
            data: None,
        }
    }
}

/// Accepts the subscription as it is: no channel info, no data, no expiry.
impl Default for SubscribeAllow {
    fn default() -> Self {
        Self {
            info: None,
            data: None,
            expire_at: None,
        }
    }
}

/// Changes nothing: set `data` and/or `tags` to replace them.
impl Default for Transform {
    fn default() -> Self {
        Self {
            data: None,
            tags: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_describe_a_plain_anonymous_request() {
        let connect = ConnectRequest::new();
        assert_eq!(
            connect,
            ConnectRequest {
                transport: "websocket".into(),
                protocol: "centrifuge".into(),
                remote_addr: "127.0.0.1:50000".into(),
                headers: vec![],
                query: vec![],
                token: String::new(),
                data: None,
                client: "client-1".into(),
                refresh: false,
                user: String::new(),
            }
        );
        assert_eq!(ConnectRequest::default(), connect);
        let anonymous = ClientInfo {
            user: String::new(),
            client: "client-1".into(),
            info: None,
        };
        assert_eq!(ClientInfo::anonymous(), anonymous);
        assert_eq!(
            SubscribeRequest::new("chat"),
            SubscribeRequest {
                client: anonymous.clone(),
                channel: "chat".into(),
                token: String::new(),
                data: None,
                refresh: false,
            }
        );
        assert_eq!(
            PublishRequest::new("chat", "{}"),
            PublishRequest {
                source: PublishSource::Api,
                publisher: None,
                channel: "chat".into(),
                data: b"{}".to_vec(),
                tags: vec![],
            }
        );
        assert_eq!(
            RpcRequest::new("sum"),
            RpcRequest {
                client: anonymous.clone(),
                method: "sum".into(),
                data: None,
            }
        );
        assert_eq!(
            AccessRequest::new("chat", AccessKind::History),
            AccessRequest {
                client: anonymous.clone(),
                channel: "chat".into(),
                kind: AccessKind::History,
            }
        );
        assert_eq!(
            DisconnectEvent::new(3000, "bye"),
            DisconnectEvent {
                client: anonymous,
                code: 3000,
                reason: "bye".into(),
            }
        );
    }

    #[test]
    fn setters_set_their_field() {
        let connect = ConnectRequest::new()
            .transport("sse")
            .protocol("pusher")
            .remote_addr("10.0.0.1:1")
            .headers([("origin", "https://a.example")])
            .query(vec![("v".to_string(), "2".to_string())])
            .token("t")
            .data(b"[1]")
            .client("c9")
            .refresh(true)
            .user("42");
        assert_eq!(
            connect,
            ConnectRequest {
                transport: "sse".into(),
                protocol: "pusher".into(),
                remote_addr: "10.0.0.1:1".into(),
                headers: vec![("origin".into(), "https://a.example".into())],
                query: vec![("v".into(), "2".into())],
                token: "t".into(),
                data: Some(b"[1]".to_vec()),
                client: "c9".into(),
                refresh: true,
                user: "42".into(),
            }
        );

        let someone = ClientInfo::new("7").client("c2").info(r#"{"n":1}"#);
        assert_eq!(
            someone,
            ClientInfo {
                user: "7".into(),
                client: "c2".into(),
                info: Some(br#"{"n":1}"#.to_vec()),
            }
        );
        let subscribe = SubscribeRequest::new("a")
            .client(someone.clone())
            .user("8")
            .token("t")
            .data("x")
            .refresh(true);
        assert_eq!(
            (
                subscribe.client.client.as_str(),
                subscribe.client.user.as_str(),
                subscribe.token.as_str(),
                subscribe.data.as_deref(),
                subscribe.refresh
            ),
            ("c2", "8", "t", Some(b"x".as_slice()), true)
        );
        let rpc = RpcRequest::new("m")
            .client(someone.clone())
            .user("9")
            .data("d");
        assert_eq!(
            (rpc.client.client.as_str(), rpc.client.user.as_str()),
            ("c2", "9")
        );
        assert_eq!(rpc.data.as_deref(), Some(b"d".as_slice()));
        let access = AccessRequest::new("a", AccessKind::Presence)
            .client(someone.clone())
            .user("10");
        assert_eq!(
            (access.client.client.as_str(), access.client.user.as_str()),
            ("c2", "10")
        );
        let ended = DisconnectEvent::new(3000, "bye").client(someone).user("11");
        assert_eq!(
            (ended.client.client.as_str(), ended.client.user.as_str()),
            ("c2", "11")
        );
    }

    #[test]
    fn publications_have_a_publisher_exactly_when_a_client_sent_them() {
        let by_42 = PublishRequest::new("chat", "{}").user("42");
        assert_eq!(by_42.source, PublishSource::Client);
        assert_eq!(by_42.publisher, Some(ClientInfo::new("42")));

        let anonymous = PublishRequest::new("chat", "{}").source(PublishSource::Client);
        assert_eq!(anonymous.publisher, Some(ClientInfo::anonymous()));
        // A publisher set before the source survives it.
        let kept = PublishRequest::new("chat", "{}")
            .user("42")
            .source(PublishSource::Client);
        assert_eq!(kept.publisher, Some(ClientInfo::new("42")));
        // `user` keeps the rest of an explicit publisher.
        let renamed = PublishRequest::new("chat", "{}")
            .publisher(ClientInfo::new("1").client("c7"))
            .user("2");
        assert_eq!(renamed.publisher, Some(ClientInfo::new("2").client("c7")));

        for source in [PublishSource::Api, PublishSource::Queue] {
            let request = PublishRequest::new("chat", "{}").user("42").source(source);
            assert_eq!((request.source, request.publisher), (source, None));
        }
        let tagged = PublishRequest::new("chat", "{}").tags([("k", "v")]);
        assert_eq!(tagged.tags, [("k".to_string(), "v".to_string())]);
    }

    #[test]
    fn allow_and_transform_defaults_set_nothing() {
        assert_eq!(
            ConnectAllow::default(),
            ConnectAllow {
                user: String::new(),
                info: None,
                channels: vec![],
                expire_at: None,
                data: None,
            }
        );
        assert_eq!(
            SubscribeAllow::default(),
            SubscribeAllow {
                info: None,
                data: None,
                expire_at: None,
            }
        );
        assert_eq!(
            Transform::default(),
            Transform {
                data: None,
                tags: None,
            }
        );
    }
}
