//! A string that must never reach a log line, an error message or a `Debug` dump.
//!
//! Passwords travel from the config file, the environment or a `*_file` into a [`Secret`]; the only way
//! back to the plain text is [`Secret::expose`], called where the value is handed to a client library.

use std::fmt;

use serde::Deserialize;

/// A secret string (a password). `Debug` and `Display` print `***`, whatever the value.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The plain text, for handing to a client library. Never log or format it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when no value is set (an empty string means "not set").
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}
