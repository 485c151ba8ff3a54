//! The one error type of configuration loading, and the translation of the `config` crate's errors into it.
//!
//! Every message names the file and the dotted key (`batch.max_events`) and never contains a secret: the
//! `config` crate and serde echo offending values (`invalid type: string "hunter2", expected ...`) and the
//! TOML parser echoes the offending line, so both are rewritten here before they reach a message.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use super::ENV_PREFIX;

/// Why the configuration could not be loaded. `Display` reads
/// `config error in /etc/outbox-relay.toml: batch.max_events: must be at least 1`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file itself could not be read (missing, not readable).
    #[error("config error{}: cannot read the file: {source}", in_file(path))]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: io::Error,
    },
    /// The config file is not valid TOML. The message gives line and column, never the line's text.
    #[error("config error{}: invalid TOML: {message}", in_file(path))]
    Syntax {
        /// The config file.
        path: PathBuf,
        /// The parser's message, with the quoted source line removed.
        message: String,
    },
    /// A key is unknown, has the wrong type, or its value fails validation.
    #[error("config error{}: {key}: {message}", in_file(path))]
    Invalid {
        /// The config file (empty when `Config::validate` was called on a config that was not loaded).
        path: PathBuf,
        /// Dotted key, e.g. `batch.max_events` or `kafka.properties."acks"`.
        key: String,
        /// What is wrong, without the value when the key may hold a secret.
        message: String,
    },
    /// A `*_file` secret could not be read.
    #[error("config error{}: {key}: cannot read {}: {source}", in_file(path), file.display())]
    SecretFile {
        /// The config file.
        path: PathBuf,
        /// The `*_file` key, e.g. `postgres.password_file`.
        key: String,
        /// The secret file (resolved against the config file's directory when relative).
        file: PathBuf,
        /// Why it could not be read.
        #[source]
        source: io::Error,
    },
}

fn in_file(path: &Path) -> String {
    if path.as_os_str().is_empty() {
        String::new()
    } else {
        format!(" in {}", path.display())
    }
}

impl ConfigError {
    /// An `Invalid` error not yet tied to a file (`load` fills the file in).
    pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            path: PathBuf::new(),
            key: key.into(),
            message: message.into(),
        }
    }

    /// The dotted key the error is about, if it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Invalid { key, .. } | Self::SecretFile { key, .. } => Some(key),
            Self::Read { .. } | Self::Syntax { .. } => None,
        }
    }

    /// The config file the error is about (empty if unknown).
    pub fn path(&self) -> &Path {
        match self {
            Self::Read { path, .. }
            | Self::Syntax { path, .. }
            | Self::Invalid { path, .. }
            | Self::SecretFile { path, .. } => path,
        }
    }

    pub(crate) fn with_path(mut self, file: &Path) -> Self {
        match &mut self {
            Self::Read { path, .. }
            | Self::Syntax { path, .. }
            | Self::Invalid { path, .. }
            | Self::SecretFile { path, .. } => *path = file.to_path_buf(),
        }
        self
    }
}

/// Keys whose values are secrets; they and the tables above them never have their value echoed.
const SECRET_KEYS: [&str; 2] = ["postgres.password", "kafka.sasl_password"];

fn is_sensitive(key: &str) -> bool {
    key.is_empty()
        || key.starts_with("kafka.properties")
        || SECRET_KEYS.iter().any(|s| {
            *s == key
                || s.strip_prefix(key)
                    .is_some_and(|rest| rest.starts_with('.'))
        })
}

/// The kind of an `Unexpected` rendering without its value: "string \"x\"" -> "string".
fn kind_only(found: &str) -> &str {
    found.split(['`', '"']).next().unwrap_or(found).trim_end()
}

fn join(prefix: &str, suffix: &str) -> String {
    match (prefix.is_empty(), suffix.is_empty()) {
        (true, _) => suffix.to_string(),
        (_, true) => prefix.to_string(),
        _ => format!("{prefix}.{suffix}"),
    }
}

/// The name of the environment variable that sets `key` (as the `config` crate maps them).
pub(crate) fn env_var_name(key: &str) -> String {
    format!("{ENV_PREFIX}__{}", key.replace('.', "__").to_uppercase())
}

/// Translates a `config` crate error (from building or deserializing) into ours.
pub(crate) fn from_config_crate(
    err: config::ConfigError,
    path: &Path,
    env: &HashMap<String, String>,
) -> ConfigError {
    if let config::ConfigError::FileParse { cause, .. } = err {
        return ConfigError::Syntax {
            path: path.to_path_buf(),
            message: strip_toml_snippet(&cause.to_string()),
        };
    }
    let (key, mut message) = describe(err);
    // serde's own wording (from a `Message`), as opposed to ours from a `Type` error ("invalid type: found").
    let message_is_echo = (message.starts_with("invalid type: ")
        && !message.starts_with("invalid type: found "))
        || message.starts_with("invalid value: ")
        || message.starts_with("invalid length ");
    if is_sensitive(&key) && message_is_echo {
        // serde's "invalid type: <found with value>, expected <what>": keep only the kind and the expectation.
        let (head, expected) = message
            .split_once(", expected ")
            .unwrap_or((&message, "another type"));
        let (what, found) = head.split_once(": ").unwrap_or(("invalid value", ""));
        message = format!("{what}: found {}, expected {expected}", kind_only(found));
    }
    let wanted = env_var_name(&key).to_lowercase();
    if let Some(var) = env.keys().find(|k| k.to_lowercase() == wanted) {
        message.push_str(&format!(" (set by environment variable {var})"));
    }
    ConfigError::Invalid {
        path: path.to_path_buf(),
        key,
        message,
    }
}

/// (dotted key, message) of a `config` crate error, values of secret keys left out.
fn describe(err: config::ConfigError) -> (String, String) {
    match err {
        config::ConfigError::Type {
            unexpected,
            expected,
            key,
            ..
        } => {
            let key = key.unwrap_or_default();
            let found = unexpected.to_string();
            let found = if is_sensitive(&key) {
                kind_only(&found).to_string()
            } else {
                found
            };
            (
                key,
                format!("invalid type: found {found}, expected {expected}"),
            )
        }
        config::ConfigError::At { error, key, .. } => {
            let (inner_key, message) = describe(*error);
            (join(&key.unwrap_or_default(), &inner_key), message)
        }
        config::ConfigError::NotFound(key) => (key, "missing (this key is required)".into()),
        config::ConfigError::Message(message) => {
            unknown_field(&message).unwrap_or_else(|| (String::new(), message))
        }
        other => (String::new(), other.to_string()),
    }
}

/// serde's "unknown field `x`, expected one of `a`, `b`" -> ("x", "unknown key; valid keys: `a`, `b`").
fn unknown_field(message: &str) -> Option<(String, String)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, rest) = rest.split_once('`')?;
    let valid = rest
        .strip_prefix(", expected one of ")
        .or_else(|| rest.strip_prefix(", expected "))
        .unwrap_or("none");
    Some((
        field.to_string(),
        format!("unknown key; valid keys here: {valid}"),
    ))
}

/// Drops the source excerpt (`3 | password = "...`) from a TOML parse error, keeping position and reason.
fn strip_toml_snippet(message: &str) -> String {
    message
        .lines()
        .filter(|line| {
            let t = line
                .trim_start()
                .trim_start_matches(|c: char| c.is_ascii_digit());
            !(t.trim_start().starts_with('|') || line.trim().is_empty())
        })
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(": ")
}
