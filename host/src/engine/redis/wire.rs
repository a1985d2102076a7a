//! What travels through Redis: publications and client info as MessagePack (rmp-serde), and the pub/sub
//! message framing.
//!
//! A pub/sub message is one tag byte and its body: `p<offset> <epoch> <publication>` (the publish script
//! prepends the offset and epoch it assigned), `j<client info>` for a join, `l<client info>` for a leave.

use std::collections::HashMap;

use crate::engine::{ClientInfo, EngineError, Publication, StreamPosition};

/// One decoded pub/sub message.
#[derive(Debug, PartialEq)]
pub(super) enum Message {
    Publication(Publication, StreamPosition),
    Join(ClientInfo),
    Leave(ClientInfo),
}

pub(super) fn encode_publication(publication: &Publication) -> Result<Vec<u8>, EngineError> {
    rmp_serde::to_vec(publication).map_err(|error| EngineError::Unavailable(error.to_string()))
}

pub(super) fn decode_publication(bytes: &[u8], offset: u64) -> Option<Publication> {
    let mut publication: Publication = rmp_serde::from_slice(bytes).ok()?;
    publication.offset = offset;
    Some(publication)
}

pub(super) fn encode_client_info(info: &ClientInfo) -> Result<Vec<u8>, EngineError> {
    rmp_serde::to_vec(info).map_err(|error| EngineError::Unavailable(error.to_string()))
}

pub(super) fn decode_client_info(bytes: &[u8]) -> Option<ClientInfo> {
    rmp_serde::from_slice(bytes).ok()
}

pub(super) fn join_message(info: &ClientInfo) -> Result<Vec<u8>, EngineError> {
    framed(b'j', info)
}

pub(super) fn leave_message(info: &ClientInfo) -> Result<Vec<u8>, EngineError> {
    framed(b'l', info)
}

fn framed(tag: u8, info: &ClientInfo) -> Result<Vec<u8>, EngineError> {
    let mut message = vec![tag];
    message.extend(encode_client_info(info)?);
    Ok(message)
}

/// Decodes a pub/sub message; `None` for anything malformed (another writer on our channel, a version skew).
pub(super) fn decode_message(message: &[u8]) -> Option<Message> {
    let (&tag, body) = message.split_first()?;
    match tag {
        b'p' => {
            let (offset, rest) = split_at_space(body)?;
            let (epoch, publication) = split_at_space(rest)?;
            let offset: u64 = std::str::from_utf8(offset).ok()?.parse().ok()?;
            let epoch = std::str::from_utf8(epoch).ok()?.to_owned();
            let publication = decode_publication(publication, offset)?;
            Some(Message::Publication(
                publication,
                StreamPosition { offset, epoch },
            ))
        }
        b'j' => decode_client_info(body).map(Message::Join),
        b'l' => decode_client_info(body).map(Message::Leave),
        _ => None,
    }
}

fn split_at_space(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = bytes.iter().position(|&b| b == b' ')?;
    Some((&bytes[..at], &bytes[at + 1..]))
}

/// Presence as HGETALL returns it (client id, info, client id, info, …), decoded.
pub(super) fn decode_presence(fields: Vec<Vec<u8>>) -> HashMap<String, ClientInfo> {
    fields
        .chunks_exact(2)
        .filter_map(|pair| {
            let info = decode_client_info(&pair[1])?;
            Some((info.client.clone(), info))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bytes::Bytes;

    use super::*;

    fn sample_info() -> ClientInfo {
        ClientInfo {
            user: "alice".into(),
            client: "c1".into(),
            conn_info: Some(Bytes::from_static(b"{\"name\":\"A\"}")),
            chan_info: None,
        }
    }

    #[test]
    fn a_publication_survives_the_publish_script_framing() {
        let publication = Publication {
            offset: 0,
            data: Bytes::from_static(b"{\"text\":\"hi there\"}"),
            info: Some(sample_info()),
            tags: BTreeMap::from([("k".to_owned(), "v w".to_owned())]),
            time_ms: 1_700_000_000_000,
        };
        let body = encode_publication(&publication).expect("encode");
        let mut message = b"p42 AbCdEfGh ".to_vec();
        message.extend(&body);
        let Some(Message::Publication(decoded, position)) = decode_message(&message) else {
            panic!("not decoded");
        };
        assert_eq!(
            position,
            StreamPosition {
                offset: 42,
                epoch: "AbCdEfGh".into()
            }
        );
        assert_eq!(
            decoded,
            Publication {
                offset: 42,
                ..publication
            }
        );
    }

    #[test]
    fn joins_and_leaves_carry_client_info() {
        let info = sample_info();
        let join = join_message(&info).expect("encode");
        assert_eq!(decode_message(&join), Some(Message::Join(info.clone())));
        let leave = leave_message(&info).expect("encode");
        assert_eq!(decode_message(&leave), Some(Message::Leave(info)));
    }

    #[test]
    fn malformed_messages_are_ignored() {
        for message in [
            &b""[..],
            b"x",
            b"p",
            b"p12",
            b"pNaN e \x90",
            b"p1 e \xc1",
            b"j\xc1",
        ] {
            assert_eq!(decode_message(message), None, "{message:?}");
        }
    }
}
