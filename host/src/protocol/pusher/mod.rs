//! The Pusher Channels protocol (v7): client events in, server events out, and the signatures that
//! authorise channels and HTTP API requests.

pub mod close;
pub mod codec;
pub mod sign;

use crate::channel::unscoped;
use crate::disconnect::Disconnect;
use crate::engine::{ClientInfo, Publication};

use super::{Frame, Wire};

/// The Pusher protocol as the core sees it. Its frames name a channel as its app's clients know it,
/// without the app's space.
#[derive(Debug)]
pub struct Pusher;

impl Wire for Pusher {
    fn publication(&self, channel: &str, publication: &Publication) -> Frame {
        codec::publication(unscoped(channel).1, publication)
    }

    /// `member_added`, with the member's `user_info` (a Pusher session announces only a user's first
    /// connection).
    fn join(&self, channel: &str, who: &ClientInfo) -> Frame {
        let user_info = who
            .conn_info
            .as_deref()
            .and_then(|info| std::str::from_utf8(info).ok());
        codec::member_added(unscoped(channel).1, &who.user, user_info)
    }

    /// `member_removed` (for a user's last connection).
    fn leave(&self, channel: &str, who: &ClientInfo) -> Frame {
        codec::member_removed(unscoped(channel).1, &who.user)
    }

    /// A presence member never hears of itself.
    fn hears_own_presence(&self) -> bool {
        false
    }

    /// pusher-js reads one event per WebSocket message.
    fn frame_separator(&self) -> Option<&'static [u8]> {
        None
    }

    fn close(&self, disconnect: Disconnect) -> Disconnect {
        close::for_pusher(disconnect)
    }
}
