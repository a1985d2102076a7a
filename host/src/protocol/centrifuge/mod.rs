//! The Centrifugo client protocol, JSON encoding (wire notes: `shared/protocols/centrifuge.md`).
//!
//! [`command`] decodes a client frame (one or more newline-separated commands) into [`command::Command`]s;
//! [`encode`] writes replies, pushes and pings. Both are tolerant where the SDKs need it (unknown fields are
//! ignored) and strict where the protocol is (a line that is not a command is a protocol error).

pub mod command;
pub mod encode;

use crate::disconnect::Disconnect;
use crate::engine::{ClientInfo, Publication};

use super::{Frame, Wire};

/// The Centrifugo protocol as the core sees it.
#[derive(Debug)]
pub struct Centrifuge;

impl Wire for Centrifuge {
    fn publication(&self, channel: &str, publication: &Publication) -> Frame {
        encode::publication_push(channel, publication)
    }

    fn join(&self, channel: &str, who: &ClientInfo) -> Frame {
        encode::join_push(channel, who)
    }

    fn leave(&self, channel: &str, who: &ClientInfo) -> Frame {
        encode::leave_push(channel, who)
    }

    fn hears_own_presence(&self) -> bool {
        true
    }

    /// The SDKs split a message on newlines.
    fn joins_frames(&self) -> bool {
        true
    }

    /// Herald's close codes are Centrifugo's.
    fn close(&self, disconnect: Disconnect) -> Disconnect {
        disconnect
    }
}

#[cfg(test)]
mod properties;
