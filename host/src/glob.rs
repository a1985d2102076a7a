//! `*` wildcard patterns, as used for channel filters in the API and for allowed WebSocket origins.

/// Whether `text` matches `pattern`: `*` matches any run of characters (including none), everything else
/// matches literally.
pub fn matches(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let [first, middle @ .., last] = parts.as_slice() else {
        return pattern == text;
    };
    if text.len() < first.len() + last.len() || !text.starts_with(first) || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(matches("chat:*", "chat:room"));
        assert!(!matches("chat:*", "news:room"));
        assert!(matches("*room*", "chat:room1"));
        assert!(matches("a*b*c", "axxbyyc"));
        assert!(!matches("a*b*c", "axxc"));
        assert!(matches("exact", "exact"));
        assert!(!matches("exact", "exactly"));
        assert!(!matches("ab*ba", "aba"));
        assert!(matches("*", ""));
        assert!(matches("https://*.example.com", "https://app.example.com"));
        assert!(!matches("https://*.example.com", "https://example.com"));
    }
}
