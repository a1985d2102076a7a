//! Why the server closes a connection: the close codes and reasons clients see, as a registry.
//!
//! The code range tells the SDKs what to do: 3000–3499 reconnect, 3500–3999 are terminal, 4000–4499 are
//! application codes that reconnect and 4500–4999 application codes that are terminal. Codes below 3000 are
//! plain WebSocket codes (the SDKs reconnect, except 1009 which centrifuge-js treats as terminal).
//! Reasons are short plain text: never JSON (centrifuge-js would parse it as a legacy object) and well under
//! the 123 bytes a close frame allows.

use std::borrow::Cow;

/// A close code with its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    /// The WebSocket close code.
    pub code: u16,
    /// Plain-text reason.
    pub reason: Cow<'static, str>,
}

/// A close with a fixed reason, for registries of close codes (this one and the protocols').
pub const fn known(code: u16, reason: &'static str) -> Disconnect {
    Disconnect {
        code,
        reason: Cow::Borrowed(reason),
    }
}

impl Disconnect {
    /// The client went away by itself; internal, never sent.
    pub const CONNECTION_CLOSED: Self = known(3000, "connection closed");
    /// The server is shutting down; reconnect (to another node).
    pub const SHUTDOWN: Self = known(3001, "shutdown");
    /// Server-side failure; reconnect.
    pub const INTERNAL: Self = known(3004, "internal server error");
    /// The connection expired without a refresh; reconnect with a new token.
    pub const CONNECTION_EXPIRED: Self = known(3005, "connection expired");
    /// The outbound queue overflowed: the client did not read fast enough; reconnect and recover.
    pub const SLOW: Self = known(3008, "slow");
    /// Writing to the socket failed.
    pub const WRITE_ERROR: Self = known(3009, "write error");
    /// The client's stream state cannot be continued; reconnect and recover.
    pub const INSUFFICIENT_STATE: Self = known(3010, "insufficient state");
    /// Asked to reconnect (e.g. by the server API).
    pub const FORCE_RECONNECT: Self = known(3011, "force reconnect");
    /// No pong within the pong timeout after a ping.
    pub const NO_PONG: Self = known(3012, "no pong");
    /// The connection kept sending commands over its rate; reconnect after a backoff.
    pub const TOO_MANY_REQUESTS: Self = known(3013, "too many requests");
    /// Invalid token; terminal.
    pub const INVALID_TOKEN: Self = known(3500, "invalid token");
    /// Protocol violation; terminal.
    pub const BAD_REQUEST: Self = known(3501, "bad request");
    /// No `connect` command within the connect deadline; terminal.
    pub const STALE: Self = known(3502, "stale");
    /// Disconnected by the server API without reconnect.
    pub const FORCE_DISCONNECT: Self = known(3503, "force disconnect");
    /// The client was told to go away by permission rules; terminal.
    pub const PERMISSION_DENIED: Self = known(3507, "permission denied");
    /// WebSocket: a message over the inbound size limit.
    pub const MESSAGE_TOO_BIG: Self = known(1009, "message too big");
    /// WebSocket: a text frame that is not valid UTF-8.
    pub const INVALID_PAYLOAD: Self = known(1007, "invalid utf-8");

    /// Whether the SDKs reconnect after this code.
    pub fn reconnects(&self) -> bool {
        match self.code {
            1009 => false,
            0..3000 => true,
            3000..3500 | 4000..4500 => true,
            3500..4000 | 4500..5000 => false,
            _ => true,
        }
    }
}

impl std::fmt::Display for Disconnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_follows_the_code_ranges() {
        assert!(Disconnect::SHUTDOWN.reconnects());
        assert!(Disconnect::SLOW.reconnects());
        assert!(!Disconnect::BAD_REQUEST.reconnects());
        assert!(!Disconnect::STALE.reconnects());
        assert!(!Disconnect::MESSAGE_TOO_BIG.reconnects());
        assert!(
            Disconnect {
                code: 4000,
                reason: "app".into()
            }
            .reconnects()
        );
        assert!(
            !Disconnect {
                code: 4500,
                reason: "app".into()
            }
            .reconnects()
        );
    }

    #[test]
    fn reasons_are_short_plain_text() {
        for d in [
            Disconnect::SHUTDOWN,
            Disconnect::SLOW,
            Disconnect::NO_PONG,
            Disconnect::BAD_REQUEST,
            Disconnect::STALE,
            Disconnect::FORCE_DISCONNECT,
        ] {
            assert!(d.reason.len() < 123);
            assert!(
                serde_json::from_str::<serde_json::Value>(&d.reason).is_err(),
                "{d} parses as JSON"
            );
        }
    }
}
