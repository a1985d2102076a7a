//! Pusher's close codes, and the code a Pusher client must see for a close the core decided.

use std::borrow::Cow;

use crate::disconnect::{Disconnect, known};

/// Unknown app key; pusher-js does not reconnect (4001–4099).
pub const UNKNOWN_APP: Disconnect = known(4001, "app does not exist");
/// The app is disabled; pusher-js does not reconnect.
pub const APP_DISABLED: Disconnect = known(4003, "app is disabled");
/// The app holds as many connections as it may; pusher-js does not reconnect.
pub const OVER_QUOTA: Disconnect = known(4004, "app is over its connection quota");
/// A protocol version this server does not speak.
pub const UNSUPPORTED_PROTOCOL: Disconnect = known(4007, "unsupported protocol version");
/// Not authorised; terminal.
pub const UNAUTHORIZED: Disconnect = known(4009, "connection is unauthorized");
/// Over capacity (a slow consumer, too many messages); pusher-js reconnects after a backoff.
pub const OVER_CAPACITY: Disconnect = known(4100, "over capacity");
/// Reconnect now (shutdown, server-side failure, asked to reconnect).
pub const RECONNECT: Disconnect = known(4200, "please reconnect");
/// No answer to the server's ping.
pub const PONG_TIMEOUT: Disconnect = known(4201, "pong reply not received");

/// The close a Pusher client must see for `disconnect`. pusher-js acts on ranges of its own (4000–4099
/// Never reconnect, 4100–4199 after a backoff, 4200–4299 at once, 4300 and above never), so Herald's
/// Codes are carried over by what they ask of the client; WebSocket codes and Pusher codes stay.
pub fn for_pusher(disconnect: Disconnect) -> Disconnect {
    match disconnect.code {
        3008 | 3013 => OVER_CAPACITY,
        3001 => Disconnect {
            reason: Cow::Borrowed("server shutting down"),
            ..RECONNECT
        },
        3000..3500 => Disconnect {
            code: RECONNECT.code,
            ..disconnect
        },
        3500..4000 => Disconnect {
            code: UNAUTHORIZED.code,
            ..disconnect
        },
        _ => disconnect,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pusher_clients_are_told_what_to_do_in_their_own_ranges() {
        assert_eq!(for_pusher(Disconnect::SLOW).code, 4100, "backoff");
        assert_eq!(for_pusher(Disconnect::TOO_MANY_REQUESTS).code, 4100);
        assert_eq!(for_pusher(Disconnect::SHUTDOWN).code, 4200, "reconnect now");
        let reconnect = for_pusher(Disconnect::FORCE_RECONNECT);
        assert_eq!(
            (reconnect.code, reconnect.reason.as_ref()),
            (4200, "force reconnect")
        );
        assert_eq!(
            for_pusher(Disconnect::FORCE_DISCONNECT).code,
            4009,
            "terminal"
        );
        assert_eq!(for_pusher(Disconnect::MESSAGE_TOO_BIG).code, 1009);
        assert_eq!(for_pusher(PONG_TIMEOUT).code, 4201);
    }
}
