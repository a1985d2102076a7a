//! Fuzzes the Centrifugo JSON frame decoder with what a client can put in a WebSocket text frame.
//!
//! Beyond "never panics", it checks what the encoders rely on: every embedded payload the decoder keeps is
//! valid JSON on one line, because it is later copied verbatim into newline-separated frames.

#![no_main]

use herald::protocol::centrifuge::command::{Command, Method};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The transport hands the decoder only valid UTF-8 (other text frames are closed with 1007).
    let Ok(frame) = std::str::from_utf8(data) else {
        return;
    };
    for command in Command::decode_frame(frame).flatten() {
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
            if let Err(error) = serde_json::from_slice::<serde_json::Value>(payload) {
                panic!("payload {payload:?} is not JSON: {error}");
            }
        }
    }
});
