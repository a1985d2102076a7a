//! The Pusher Channels protocol (v7): client events in, server events out, and the signatures that
//! authorise channels and HTTP API requests.

pub mod codec;
pub mod sign;
