//! JSON payloads: publication data, connection info and configuration are JSON text for JSON protocols.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Parses a JSON payload into `T`.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("payload is not the expected JSON: {e}"))
}

/// Parses a JSON payload into a generic value (for reading a few fields).
pub fn value(bytes: &[u8]) -> Result<serde_json::Value, String> {
    parse(bytes)
}

/// Encodes `value` as a JSON payload.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec())
}

/// Reads a field by JSON pointer (`/user/id`) from a payload; `None` when absent or not JSON.
pub fn pointer(bytes: &[u8], pointer: &str) -> Option<serde_json::Value> {
    value(bytes).ok()?.pointer(pointer).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields_and_round_trips() {
        let data = br#"{"user":{"id":42},"text":"hi"}"#;
        assert_eq!(pointer(data, "/user/id"), Some(serde_json::json!(42)));
        assert_eq!(pointer(data, "/missing"), None);
        assert_eq!(pointer(b"not json", "/a"), None);
        let v: serde_json::Value = parse(&encode(&serde_json::json!({"a": [1, 2]}))).unwrap();
        assert_eq!(v["a"][1], 2);
    }
}
