//! The emulation request (`POST /emulation`), in both encodings: the commands a client of an HTTP stream
//! sends for its session, named by the connect reply's `session` and `node`.
//!
//! JSON: `{"session":…,"node":…,"data":…}`, where `data` is the commands' text (newline-separated JSON, as
//! centrifuge-js sends it) or the JSON itself. Protobuf (centrifuge-js's Protobuf build, content type
//! `application/octet-stream`): the schema's `EmulationRequest` (`node` = 1, `session` = 2, `data` = 3),
//! whose `data` holds length-delimited commands like a WebSocket message.

use bytes::Bytes;
use prost::Message as _;
use serde::Deserialize;

/// One emulation request, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmulationRequest {
    /// The session the commands are for.
    pub session: String,
    /// The node holding it (empty when the client did not say).
    pub node: String,
    /// The commands, in the request's encoding.
    pub data: Bytes,
    /// Whether `data` is Protobuf.
    pub binary: bool,
}

#[derive(Deserialize)]
struct JsonRequest {
    session: String,
    #[serde(default)]
    node: String,
    data: serde_json::Value,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ProtobufRequest {
    #[prost(string, tag = "1")]
    node: String,
    #[prost(string, tag = "2")]
    session: String,
    #[prost(bytes = "bytes", tag = "3")]
    data: Bytes,
}

impl EmulationRequest {
    /// Decodes a request body; `binary` when it came as Protobuf.
    pub fn decode(body: &[u8], binary: bool) -> Result<Self, String> {
        if binary {
            let request = ProtobufRequest::decode(body).map_err(|error| error.to_string())?;
            return Ok(Self {
                session: request.session,
                node: request.node,
                data: request.data,
                binary,
            });
        }
        let request: JsonRequest =
            serde_json::from_slice(body).map_err(|error| error.to_string())?;
        let data = match request.data {
            serde_json::Value::String(text) => Bytes::from(text),
            other => Bytes::from(other.to_string()),
        };
        Ok(Self {
            session: request.session,
            node: request.node,
            data,
            binary,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_data_is_text_or_the_json_itself() {
        let as_text =
            EmulationRequest::decode(br#"{"session":"s","node":"n","data":"{\"id\":2}"}"#, false);
        let inline = EmulationRequest::decode(br#"{"session":"s","data":{"id":2}}"#, false);
        assert_eq!(as_text.unwrap().data, Bytes::from_static(br#"{"id":2}"#));
        let inline = inline.unwrap();
        assert_eq!(
            (inline.data, inline.node.as_str()),
            (Bytes::from_static(br#"{"id":2}"#), "")
        );
        assert!(EmulationRequest::decode(br#"{"node":"n"}"#, false).is_err());
    }

    #[test]
    fn protobuf_carries_its_commands_as_bytes() {
        let body = ProtobufRequest {
            node: "n".into(),
            session: "s".into(),
            data: Bytes::from_static(b"\x02\x08\x01"),
        }
        .encode_to_vec();
        let request = EmulationRequest::decode(&body, true).unwrap();
        assert_eq!(
            request,
            EmulationRequest {
                session: "s".into(),
                node: "n".into(),
                data: Bytes::from_static(b"\x02\x08\x01"),
                binary: true,
            }
        );
        assert!(EmulationRequest::decode(b"\x1a\xff", true).is_err());
    }
}
