//! Transports: how client connections reach a session. Each transport turns its wire into
//! [`crate::session::Incoming`] items and writes what the session's outbound queue holds; sessions never
//! see a socket, so the WebSocket library can change and other transports can be added.

mod echo;
mod emulation;
pub mod http;
mod pusher;
mod socket;
pub mod tls;
mod uni;
mod websocket;

pub use echo::echo_handler;
pub use emulation::emulation_routes;
pub use pusher::pusher_handler;
pub use tls::{Listener, ProxyProtocol};
pub use uni::uni_routes;
pub use websocket::{NotAnUpgrade, Upgrade, websocket_handler};

/// Whether a request's query asks for the Protobuf encoding: `cf_protocol=protobuf`, or `format=protobuf`
/// (the older name), as the Centrifugo SDKs write it for every transport.
fn query_asks_protobuf(query: Option<&str>) -> bool {
    query.is_some_and(|query| {
        url::form_urlencoded::parse(query.as_bytes())
            .any(|(name, value)| matches!(&*name, "cf_protocol" | "format") && value == "protobuf")
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn either_query_name_asks_for_protobuf() {
        use super::query_asks_protobuf as asks;
        assert!(asks(Some("cf_protocol=protobuf")));
        assert!(asks(Some("cf_ws_frame_ping_pong=true&format=protobuf")));
        assert!(!asks(Some("cf_protocol=json")));
        assert!(!asks(Some("protocol=protobuf")));
        assert!(!asks(Some("")));
        assert!(!asks(None));
    }
}
