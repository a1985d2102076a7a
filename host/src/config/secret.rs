//! [`Secret`]: a configured secret that no log line or debug print can show.

use serde::{Deserialize, Serialize};

/// A secret from the configuration (the API key, the Pusher app secret). It is read and written like its
/// text, but `Debug` only says whether it is set, so printing a configuration never leaks it; the text is
/// reached through [`Secret::expose`], which names every place that uses it.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret's text, for the code that checks or signs with it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether none is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Secret {
    fn from(text: String) -> Self {
        Self(text)
    }
}

impl From<&str> for Secret {
    fn from(text: &str) -> Self {
        Self(text.to_owned())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_empty() {
            "\"\""
        } else {
            "[redacted]"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_says_only_whether_it_is_set() {
        assert_eq!(format!("{:?}", Secret::from("hunter2")), "[redacted]");
        assert_eq!(format!("{:?}", Secret::default()), "\"\"");
        assert_eq!(Secret::from("hunter2").expose(), "hunter2");
    }
}
