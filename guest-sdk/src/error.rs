//! The one error type of the SDK: every hook and state call returns it.
//!
//! Hooks hand its `Display` text to the host, which fails the job naming
//! the operator's uid and plugin file; so every variant names what is at
//! fault (the state, the input batch, the host call).

use std::fmt;

use weir_format::DecodeError;

/// Why a hook or a state call failed.
///
/// Build one from a message with `Error::from("...")`, `"...".into()`,
/// `format!(...).into()` or [`Error::msg`]; state handles return the other
/// variants, so `?` works throughout an operator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The operator itself failed, with its own message.
    #[error("{0}")]
    Operator(String),
    /// A keyed state handle was used while no record key is in scope: in
    /// `open`, `snapshot`, `close`, or while processing a record without a
    /// key.
    #[error(
        "keyed state `{state}` used with no current key (only records with a key, inside `process`, have one)"
    )]
    NoCurrentKey {
        /// The state's name.
        state: String,
    },
    /// A stored state value has another type than the handle reading it.
    #[error("state `{state}` holds {reason}")]
    WrongType {
        /// The state's name.
        state: String,
        /// What was found instead, e.g. `a text value where i64 was
        /// expected`, or why a structured value did not decode.
        reason: String,
    },
    /// A state name was registered twice with different kinds or types.
    #[error("state `{state}` is already registered as {existing}, cannot also be {requested}")]
    StateConflict {
        /// The state's name.
        state: String,
        /// The kind and type it was first registered with.
        existing: String,
        /// The kind and type requested now.
        requested: String,
    },
    /// The host rejected a state call.
    #[error("host rejected {operation} on state `{state}`: {message}")]
    Host {
        /// The WIT function called (`value-get`, `write`, ...).
        operation: &'static str,
        /// The state's name (the first state of the batch for `write`).
        state: String,
        /// The host's message.
        message: String,
    },
    /// The input batch is not a valid packed batch.
    #[error("invalid input batch: {0}")]
    Decode(#[from] DecodeError),
    /// A hook was called out of order (for example `process` before `open`).
    #[error("hook called out of order: {0}")]
    Lifecycle(&'static str),
}

impl Error {
    /// Creates an [`Error::Operator`] from anything printable.
    ///
    /// ```
    /// let err = weir_sdk::Error::msg(format_args!("bad config {:?}", "x"));
    /// assert_eq!(err.to_string(), "bad config \"x\"");
    /// ```
    pub fn msg(message: impl fmt::Display) -> Self {
        Self::Operator(message.to_string())
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Self {
        Self::Operator(message.to_owned())
    }
}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Self::Operator(message)
    }
}

impl From<std::str::Utf8Error> for Error {
    fn from(err: std::str::Utf8Error) -> Self {
        Self::Operator(format!("invalid UTF-8: {err}"))
    }
}

impl From<std::num::ParseIntError> for Error {
    fn from(err: std::num::ParseIntError) -> Self {
        Self::Operator(format!("invalid integer: {err}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_convert() {
        let e: Error = "boom".into();
        assert_eq!(e.to_string(), "boom");
        let e: Error = format!("n={}", 3).into();
        assert_eq!(e.to_string(), "n=3");
        let e = Error::NoCurrentKey {
            state: "count".into(),
        };
        assert!(e.to_string().contains("`count`"));
    }
}
