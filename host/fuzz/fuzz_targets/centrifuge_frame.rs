//! Fuzzes the Centrifugo frame decoders, JSON and Protobuf, with what a client can put in a WebSocket
//! frame.
//!
//! Beyond "never panics", it checks what the encoders rely on: every embedded payload either decoder keeps
//! is valid JSON on one line, because it is later copied verbatim into newline-separated frames and
//! reaches subscribers of every protocol.

#![no_main]

use herald::protocol::centrifuge::command::{Command, Method};
use herald::protocol::centrifuge::protobuf;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The transport hands the JSON decoder only valid UTF-8 (other text frames are closed with 1007).
    let json = std::str::from_utf8(data)
        .map(|frame| Command::decode_frame(frame).flatten().collect())
        .unwrap_or_else(|_| Vec::new());
    let binary = protobuf::decode_frame(data).into_iter().flatten();
    for command in json.into_iter().chain(binary) {
        let payload = match &command.method {
            Method::Connect(r) => r.data.as_ref(),
            Method::Subscribe(r) => r.data.as_ref(),
            Method::Publish(r) => r.data.as_ref(),
            Method::Rpc(r) => r.data.as_ref(),
            Method::Send(r) => r.data.as_ref(),
            _ => None,
        };
        if let Some(payload) = payload {
            assert!(
                !payload.contains(&b'\n') && !payload.contains(&b'\r'),
                "payload keeps a line break: {payload:?}"
            );
            // Syntax, not values: `1E400` is JSON text though no f64 holds it.
            if let Err(error) = serde_json::from_slice::<Box<serde_json::value::RawValue>>(payload)
            {
                panic!("payload {payload:?} is not JSON: {error}");
            }
        }
    }
});
