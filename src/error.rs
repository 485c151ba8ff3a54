//! Errors, typed by what the caller must do about them.
//!
//! The relay has few reactions to a failure, so errors are sorted by reaction, not by origin:
//!
//! | kind          | reaction                                                          | exit code |
//! |---------------|-------------------------------------------------------------------|-----------|
//! | `Config`      | stop; a person must fix the configuration (or a credential)       | 78        |
//! | `Transient`   | drop the session, back off, reconnect; after the budget: stop      | 69        |
//! | `Standby`     | another relay holds the slot: wait and retry, forever              | -         |
//! | `Fenced`      | another relay took over our `transactional.id`: publish nothing more; |    |
//! |               | start a new session (which stands by while the other holds the slot) | 69       |
//! | `Invariant`   | stop; continuing could lose or duplicate events                   | 70        |
//! | `BadRow`      | stop (`on_error = "stop"`): a row cannot be published             | 65        |
//! | `Internal`    | stop; a bug or an unexpected state                                | 1         |
//!
//! Causes are attached as `source`, never formatted into the message, so `{:#}`-style reports can
//! walk the chain. Messages never contain secrets: only names, addresses and positions.

use std::fmt;

/// Boxed cause of an [`Error`].
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What the caller must do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The configuration (or a credential it names) is wrong: stop, do not restart.
    Config,
    /// A server is unreachable or a session broke: reconnect with backoff.
    Transient,
    /// The replication slot is held by another relay: wait for it.
    Standby,
    /// Another relay with our `transactional.id` fenced this one: publish nothing more from this
    /// session; a new one re-acquires the slot (and stands by while the other holds it).
    Fenced,
    /// A promise would break if we went on (e.g. the slot moved behind our back): stop.
    Invariant,
    /// A row cannot be published and the configuration says stop.
    BadRow,
    /// Anything else: stop.
    Internal,
}

/// The relay's error: a kind, a message naming what and where, and the cause.
#[derive(Debug)]
pub struct Error {
    kind: Kind,
    message: String,
    source: Option<Cause>,
}

/// Result with the relay's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of `kind` with a message naming what and where.
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the cause.
    pub fn with_source(mut self, source: impl Into<Cause>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Shorthand for a [`Kind::Config`] error.
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(Kind::Config, message)
    }

    /// Shorthand for a [`Kind::Transient`] error.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(Kind::Transient, message)
    }

    /// Shorthand for a [`Kind::Invariant`] error.
    pub fn invariant(message: impl Into<String>) -> Self {
        Self::new(Kind::Invariant, message)
    }

    /// Shorthand for a [`Kind::BadRow`] error.
    pub fn bad_row(message: impl Into<String>) -> Self {
        Self::new(Kind::BadRow, message)
    }

    /// Shorthand for a [`Kind::Internal`] error.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Kind::Internal, message)
    }

    /// What the caller must do.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The message, without causes.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The process exit code for this error when it ends the relay.
    pub fn exit_code(&self) -> i32 {
        match self.kind {
            Kind::Config => 78,
            Kind::Transient | Kind::Standby | Kind::Fenced => 69,
            Kind::Invariant => 70,
            Kind::BadRow => 65,
            Kind::Internal => 1,
        }
    }

    /// The message followed by every cause in the chain: `a: b: c`.
    pub fn report(&self) -> String {
        let mut out = self.message.clone();
        let mut next: Option<&(dyn std::error::Error + 'static)> = self
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static));
        while let Some(cause) = next {
            let text = cause.to_string();
            if !text.is_empty() && !out.ends_with(&text) {
                out.push_str(": ");
                out.push_str(&text);
            }
            next = cause.source();
        }
        out
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_walks_the_chain_and_codes_follow_kinds() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = Error::transient("postgres 127.0.0.1:5432 unreachable").with_source(io);
        assert_eq!(e.report(), "postgres 127.0.0.1:5432 unreachable: refused");
        assert_eq!(e.exit_code(), 69);
        assert_eq!(Error::config("x").exit_code(), 78);
        assert_eq!(Error::invariant("x").exit_code(), 70);
        assert_eq!(Error::internal("x").exit_code(), 1);
    }
}
