//! Channel patterns: `*` matches any run of characters (including none), `{user}` matches the connection's
//! user id, everything else matches literally. `chat:*`, `user:#{user}`, `*:public`.

/// Whether `channel` matches `pattern` for `user`. `{user}` matches the user id literally (a `*` in an id
/// is not a wildcard) and never matches for an anonymous user (empty id).
pub fn matches(pattern: &str, channel: &str, user: &str) -> bool {
    let mut tokens = Vec::new();
    let mut rest = pattern;
    while let Some(at) = rest.find("{user}") {
        if user.is_empty() {
            return false;
        }
        push_literal_and_stars(&mut tokens, &rest[..at]);
        tokens.push(Token::Literal(user.as_bytes()));
        rest = &rest[at + "{user}".len()..];
    }
    push_literal_and_stars(&mut tokens, rest);
    match_tokens(&tokens, channel.as_bytes())
}

/// `*` wildcard matching.
pub fn glob(pattern: &str, text: &str) -> bool {
    let mut tokens = Vec::new();
    push_literal_and_stars(&mut tokens, pattern);
    match_tokens(&tokens, text.as_bytes())
}

#[derive(Debug, Clone, Copy)]
enum Token<'a> {
    Star,
    Literal(&'a [u8]),
}

fn push_literal_and_stars<'a>(tokens: &mut Vec<Token<'a>>, text: &'a str) {
    for (i, part) in text.split('*').enumerate() {
        if i > 0 {
            tokens.push(Token::Star);
        }
        if !part.is_empty() {
            tokens.push(Token::Literal(part.as_bytes()));
        }
    }
}

/// Backtracking over the last star: linear in practice, quadratic at worst.
fn match_tokens(tokens: &[Token<'_>], text: &[u8]) -> bool {
    let (mut ti, mut pos) = (0, 0);
    let mut resume: Option<(usize, usize)> = None;
    loop {
        match tokens.get(ti) {
            Some(Token::Star) => {
                resume = Some((ti, pos));
                ti += 1;
                continue;
            }
            Some(Token::Literal(lit)) if text[pos..].starts_with(lit) => {
                pos += lit.len();
                ti += 1;
                continue;
            }
            None if pos == text.len() => return true,
            _ => {}
        }
        match resume {
            Some((star, from)) if from < text.len() => {
                resume = Some((star, from + 1));
                ti = star + 1;
                pos = from + 1;
            }
            _ => return false,
        }
    }
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
        assert!(
            !matches("private:{user}", "private:alice", "*"),
            "a * in a user id is literal"
        );
        assert!(matches("private:{user}", "private:*", "*"));
        assert!(matches("*:{user}", "a:b:42", "42"));
    }
}
