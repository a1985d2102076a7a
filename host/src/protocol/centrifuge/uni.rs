//! The Centrifugo unidirectional protocol (`uni_sse`, `uni_http_stream`, `uni_websocket`), for clients
//! without an SDK: a browser's `EventSource`, `curl -N`, a plain WebSocket. The client sends one connect
//! request when it opens the connection and nothing after; the server sends the JSON encoding's pushes
//! without their `{"push":…}` envelope (`{"channel":"news","pub":{…}}`), the connect reply as a push of its
//! own (`{"connect":{…}}`), and `{}` as its ping, which needs no answer.
//!
//! Every frame is the JSON encoding's, unwrapped: the same bytes minus the envelope, so the two can never
//! disagree on a field.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::command::{Command, DecodeError};
use super::encode::{self, ConnectResult, SubscribeResult};
use super::{Centrifuge, Codec};
use crate::disconnect::Disconnect;
use crate::engine::{ClientInfo, Publication, StreamPosition};
use crate::errors::ClientError;
use crate::protocol::{Frame, Protocol, Wire};

/// The unidirectional Centrifugo protocol (JSON).
#[derive(Debug)]
pub struct CentrifugeUni;

/// `{"push":{…}}` → `{…}`.
fn unwrapped_push(frame: &Frame) -> Frame {
    const ENVELOPE: &[u8] = br#"{"push":"#;
    let bytes = frame.bytes();
    match bytes
        .strip_prefix(ENVELOPE)
        .and_then(|inner| inner.strip_suffix(b"}"))
    {
        Some(inner) => Frame::new(inner.to_vec()),
        None => frame.clone(),
    }
}

/// `{"id":N,"connect":{…}}` → `{"connect":{…}}`: a reply as the push of its result (or error).
fn unwrapped_reply(frame: &Frame) -> Frame {
    let bytes = frame.bytes();
    let Some(after_id) = bytes.strip_prefix(br#"{"id":"#) else {
        return frame.clone();
    };
    match after_id.iter().position(|&byte| byte == b',') {
        Some(comma) => {
            let mut out = Vec::with_capacity(bytes.len());
            out.push(b'{');
            out.extend_from_slice(&after_id[comma + 1..]);
            Frame::new(out)
        }
        None => frame.clone(),
    }
}

impl Wire for CentrifugeUni {
    fn publication(&self, channel: &str, publication: &Publication) -> Frame {
        unwrapped_push(&Centrifuge.publication(channel, publication))
    }

    fn delta_publication(
        &self,
        channel: &str,
        publication: &Publication,
        delta: Option<&str>,
    ) -> Frame {
        unwrapped_push(&Centrifuge.delta_publication(channel, publication, delta))
    }

    fn join(&self, channel: &str, who: &ClientInfo) -> Frame {
        unwrapped_push(&Centrifuge.join(channel, who))
    }

    fn leave(&self, channel: &str, who: &ClientInfo) -> Frame {
        unwrapped_push(&Centrifuge.leave(channel, who))
    }

    fn hears_own_presence(&self) -> bool {
        true
    }

    fn frame_separator(&self) -> Option<&'static [u8]> {
        Some(b"\n")
    }

    fn close(&self, disconnect: Disconnect) -> Disconnect {
        disconnect
    }
}

impl Codec for CentrifugeUni {
    fn protocol(&self) -> Protocol {
        Protocol::CentrifugeUni
    }

    /// The one command is the connect the transport made of the client's request.
    fn decode(
        &self,
        message: &[u8],
        binary: bool,
    ) -> Result<Vec<Result<Command, DecodeError>>, Disconnect> {
        Centrifuge.decode(message, binary)
    }

    fn unidirectional(&self) -> bool {
        true
    }

    fn ping(&self) -> Frame {
        encode::PING
    }

    fn error_reply(&self, id: u32, error: &ClientError) -> Frame {
        unwrapped_reply(&Centrifuge.error_reply(id, error))
    }

    fn unsubscribe_reply(&self, id: u32) -> Frame {
        unwrapped_reply(&Centrifuge.unsubscribe_reply(id))
    }

    fn publish_reply(&self, id: u32) -> Frame {
        unwrapped_reply(&Centrifuge.publish_reply(id))
    }

    fn connect_reply(&self, id: u32, result: &ConnectResult) -> Frame {
        unwrapped_reply(&Centrifuge.connect_reply(id, result))
    }

    fn subscribe_reply(&self, id: u32, result: &SubscribeResult) -> Frame {
        unwrapped_reply(&Centrifuge.subscribe_reply(id, result))
    }

    fn history_reply(
        &self,
        id: u32,
        publications: &[Arc<Publication>],
        position: &StreamPosition,
    ) -> Frame {
        unwrapped_reply(&Centrifuge.history_reply(id, publications, position))
    }

    fn presence_reply(&self, id: u32, presence: &HashMap<String, ClientInfo>) -> Frame {
        unwrapped_reply(&Centrifuge.presence_reply(id, presence))
    }

    fn presence_stats_reply(&self, id: u32, num_clients: u32, num_users: u32) -> Frame {
        unwrapped_reply(&Centrifuge.presence_stats_reply(id, num_clients, num_users))
    }

    fn refresh_reply(&self, id: u32, client: &str, version: &str, ttl: Option<u32>) -> Frame {
        unwrapped_reply(&Centrifuge.refresh_reply(id, client, version, ttl))
    }

    fn sub_refresh_reply(&self, id: u32, ttl: Option<u32>) -> Frame {
        unwrapped_reply(&Centrifuge.sub_refresh_reply(id, ttl))
    }

    fn rpc_reply(&self, id: u32, data: &Bytes) -> Frame {
        unwrapped_reply(&Centrifuge.rpc_reply(id, data))
    }

    fn unsubscribe_push(&self, channel: &str, code: u32, reason: &str) -> Frame {
        unwrapped_push(&Centrifuge.unsubscribe_push(channel, code, reason))
    }

    fn subscribe_push(&self, channel: &str, result: &SubscribeResult) -> Frame {
        unwrapped_push(&Centrifuge.subscribe_push(channel, result))
    }

    /// `{"disconnect":{"code":…,"reason":"…"}}`.
    fn disconnect_push(&self, disconnect: &Disconnect) -> Frame {
        unwrapped_push(&Centrifuge.disconnect_push(disconnect))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(frame: &Frame) -> &str {
        frame.as_str()
    }

    #[test]
    fn frames_are_the_json_ones_without_their_envelope() {
        let publication = Publication {
            data: Bytes::from_static(br#"{"n":1}"#),
            offset: 3,
            ..Publication::default()
        };
        assert_eq!(
            text(&CentrifugeUni.publication("news", &publication)),
            r#"{"channel":"news","pub":{"data":{"n":1},"offset":3}}"#
        );
        let result = ConnectResult {
            client: "c".into(),
            version: "1".into(),
            ping: 25,
            ..Default::default()
        };
        assert_eq!(
            text(&CentrifugeUni.connect_reply(1, &result)),
            r#"{"connect":{"client":"c","version":"1","ping":25}}"#
        );
        assert_eq!(
            text(&CentrifugeUni.error_reply(1, &ClientError::PERMISSION_DENIED)),
            r#"{"error":{"code":103,"message":"permission denied"}}"#
        );
        assert_eq!(text(&CentrifugeUni.ping()), "{}");
        assert_eq!(
            text(&CentrifugeUni.disconnect_push(&Disconnect::SHUTDOWN)),
            r#"{"disconnect":{"code":3001,"reason":"shutdown"}}"#
        );
    }
}
