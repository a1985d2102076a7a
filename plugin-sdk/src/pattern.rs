//! Channel patterns: `*` matches any run of characters (including none), `{user}` matches the connection's
//! user id, everything else matches literally. `chat:*`, `user:#{user}`, `*:public`.

/// Whether `channel` matches `pattern` for `user`. `{user}` never matches for an anonymous user (empty id).
pub fn matches(pattern: &str, channel: &str, user: &str) -> bool {
    if pattern.contains("{user}") {
        if user.is_empty() {
            return false;
        }
        return glob(&pattern.replace("{user}", user), channel);
    }
    glob(pattern, channel)
}

/// `*` wildcard matching (iterative, linear in practice).
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((star_p, star_t)) = star {
            pi = star_p + 1;
            ti = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(glob("chat:*", "chat:room"));
        assert!(glob("chat:*", "chat:"));
        assert!(!glob("chat:*", "news:room"));
        assert!(glob("*:public", "a:public"));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxc"));
        assert!(glob("*", ""));
        assert!(!glob("ab*ba", "aba"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exactly"));
    }

    #[test]
    fn user_placeholder() {
        assert!(matches("user:#{user}", "user:#42", "42"));
        assert!(!matches("user:#{user}", "user:#43", "42"));
        assert!(!matches("user:#{user}", "user:#", ""));
        assert!(matches("dm:{user}:*", "dm:7:inbox", "7"));
    }
}
