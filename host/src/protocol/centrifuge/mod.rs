//! The Centrifugo client protocol, JSON encoding (wire notes: `shared/protocols/centrifuge.md`).
//!
//! [`command`] decodes a client frame (one or more newline-separated commands) into [`command::Command`]s;
//! [`encode`] writes replies, pushes and pings. Both are tolerant where the SDKs need it (unknown fields are
//! ignored) and strict where the protocol is (a line that is not a command is a protocol error).

pub mod command;
pub mod encode;

#[cfg(test)]
mod properties;
