//! Errors a client or API caller sees, as a registry of well-known values.
//!
//! Codes 100–399 are Herald's (they follow Centrifugo's numbering, which the SDKs react to); applications
//! (plugins) use 400–1999. Codes below 100 are reserved for the SDKs' own local errors.

use std::borrow::Cow;

/// An error reply to a command: code, message and whether retrying may help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    /// The numeric code the SDKs react to.
    pub code: u32,
    /// A short human-readable message.
    pub message: Cow<'static, str>,
    /// The SDKs retry temporary errors with backoff.
    pub temporary: bool,
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.message)
    }
}

impl std::error::Error for ClientError {}

const fn known(code: u32, message: &'static str, temporary: bool) -> ClientError {
    ClientError {
        code,
        message: Cow::Borrowed(message),
        temporary,
    }
}

impl ClientError {
    /// Server failure; temporary, so clients retry.
    pub const INTERNAL: Self = known(100, "internal server error", true);
    /// Not authenticated.
    pub const UNAUTHORIZED: Self = known(101, "unauthorized", false);
    /// The channel's namespace is not configured.
    pub const UNKNOWN_CHANNEL: Self = known(102, "unknown channel", false);
    /// Not allowed.
    pub const PERMISSION_DENIED: Self = known(103, "permission denied", false);
    /// Unknown RPC method or API method.
    pub const METHOD_NOT_FOUND: Self = known(104, "method not found", false);
    /// The connection is already subscribed to the channel.
    pub const ALREADY_SUBSCRIBED: Self = known(105, "already subscribed", false);
    /// A limit (e.g. channels per connection) is reached.
    pub const LIMIT_EXCEEDED: Self = known(106, "limit exceeded", false);
    /// Invalid request (channel name, parameters).
    pub const BAD_REQUEST: Self = known(107, "bad request", false);
    /// The feature is off (history, presence, RPC…).
    pub const NOT_AVAILABLE: Self = known(108, "not available", false);
    /// The token has expired; SDKs fetch a new one.
    pub const TOKEN_EXPIRED: Self = known(109, "token expired", false);
    /// The connection or subscription has expired.
    pub const EXPIRED: Self = known(110, "expired", false);
    /// Rate limit; temporary.
    pub const TOO_MANY_REQUESTS: Self = known(111, "too many requests", true);
    /// The requested stream position cannot be served (wrong epoch).
    pub const UNRECOVERABLE_POSITION: Self = known(112, "unrecoverable position", false);

    /// The same error with a more specific message.
    pub fn with_message(mut self, message: impl Into<Cow<'static, str>>) -> Self {
        self.message = message.into();
        self
    }
}

impl From<crate::engine::EngineError> for ClientError {
    fn from(err: crate::engine::EngineError) -> Self {
        use crate::engine::EngineError;
        match err {
            EngineError::UnrecoverablePosition => Self::UNRECOVERABLE_POSITION,
            EngineError::Unavailable(_) | EngineError::Refused(_) => Self::INTERNAL,
        }
    }
}

/// A refusal decided by a plugin (or any rule that may close the connection): codes below 3000 are error
/// replies, codes 3000–4999 close the connection with that code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Answer the command with this error.
    Error(ClientError),
    /// Close the connection.
    Disconnect(crate::disconnect::Disconnect),
}

impl Refusal {
    /// Interprets a plugin's deny code.
    pub fn from_code(code: u32, reason: String) -> Self {
        match u16::try_from(code) {
            Ok(code @ 3000..5000) => Self::Disconnect(crate::disconnect::Disconnect {
                code,
                reason: reason.into(),
            }),
            _ => Self::Error(ClientError {
                code,
                message: reason.into(),
                temporary: code == 100 || code == 111,
            }),
        }
    }

    /// The refusal as an error reply (for callers that cannot be disconnected, such as the server API).
    pub fn into_error(self) -> ClientError {
        match self {
            Self::Error(error) => error,
            Self::Disconnect(d) => ClientError {
                code: 103,
                message: d.reason,
                temporary: false,
            },
        }
    }
}

impl From<ClientError> for Refusal {
    fn from(error: ClientError) -> Self {
        Self::Error(error)
    }
}
