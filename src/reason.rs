//! Why an outbox row cannot be published: one vocabulary for every stage.
//!
//! A row can fail in decode (a NULL key), in route (an unroutable aggregate type), in the producer
//! (a record too large) or at the broker (a topic we may not write). Whatever the stage, the row
//! goes the same way: to the dead-letter topic with a reason header, or it stops the relay
//! (`errors.on_error`). So every stage reports the same type, [`Refusal`]: a [`Reason`] (a
//! stable snake_case code for the `dlq_reason` header, metric labels and the README) and a
//! detail for people. Nothing compares reasons as strings.

use std::fmt;

/// Why a row cannot be published, as the `dlq_reason` header names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    // --- decode: the row's columns ---
    /// NULL in a required column (id, aggregate_type, aggregate_id, event_type, payload).
    NullColumn,
    /// An empty aggregate_id: no Kafka key, no per-aggregate order.
    EmptyAggregateId,
    /// A datum in binary format (the relay asks for text).
    BinaryFormat,
    /// A text column whose bytes are not UTF-8.
    InvalidUtf8,
    /// A bytea column whose text is neither valid hex (`\x..`) nor valid escape format.
    InvalidBytea,
    /// An "unchanged TOAST" datum, which an insert cannot carry.
    UnchangedToast,
    // --- decode: a message's envelope (`outbox_emit`) ---
    /// Not UTF-8, not JSON, or not a JSON object.
    EnvelopeNotJson,
    /// A key appears twice (which one to believe is undefined).
    EnvelopeDuplicateField,
    /// `v` is an integer this relay does not read.
    EnvelopeUnknownVersion,
    /// A required key is absent or `null`.
    EnvelopeMissingField,
    /// A key holds the wrong JSON type.
    EnvelopeWrongType,
    /// `id` is not a UUID.
    EnvelopeInvalidId,
    /// `created_at` is not an ISO 8601 timestamp with a UTC offset.
    EnvelopeInvalidCreatedAt,
    // --- route: where the record goes and what it carries ---
    /// `routing.strict` and no `[routing.topics]` entry for the aggregate type.
    Unroutable,
    /// The aggregate type routes to a name that is not a valid Kafka topic.
    InvalidTopic,
    /// A text or bytea payload that is not JSON.
    PayloadNotJson,
    /// The headers column is not JSON.
    HeadersNotJson,
    /// The headers column is JSON but not an object.
    HeadersNotObject,
    /// The headers column sets a header the relay owns (`event_id`, `pg_lsn`, ...).
    ReservedHeader,
    // --- Kafka: the producer or the broker refused the record for good ---
    /// Larger than the producer's or the broker's limit (`message.max.bytes`).
    RecordTooLarge,
    /// The relay's principal may not write the topic (ACL).
    TopicNotAuthorized,
    /// The topic does not exist and the brokers do not create it.
    UnknownTopic,
    /// The broker refused the record (invalid record, policy violation).
    RecordRefused,
}

impl Reason {
    /// Every reason, in declaration order (for docs and tests).
    pub const ALL: &'static [Reason] = &[
        Reason::NullColumn,
        Reason::EmptyAggregateId,
        Reason::BinaryFormat,
        Reason::InvalidUtf8,
        Reason::InvalidBytea,
        Reason::UnchangedToast,
        Reason::EnvelopeNotJson,
        Reason::EnvelopeDuplicateField,
        Reason::EnvelopeUnknownVersion,
        Reason::EnvelopeMissingField,
        Reason::EnvelopeWrongType,
        Reason::EnvelopeInvalidId,
        Reason::EnvelopeInvalidCreatedAt,
        Reason::Unroutable,
        Reason::InvalidTopic,
        Reason::PayloadNotJson,
        Reason::HeadersNotJson,
        Reason::HeadersNotObject,
        Reason::ReservedHeader,
        Reason::RecordTooLarge,
        Reason::TopicNotAuthorized,
        Reason::UnknownTopic,
        Reason::RecordRefused,
    ];

    /// The stable code: the `dlq_reason` header value.
    pub const fn code(self) -> &'static str {
        match self {
            Reason::NullColumn => "null_column",
            Reason::EmptyAggregateId => "empty_aggregate_id",
            Reason::BinaryFormat => "binary_format",
            Reason::InvalidUtf8 => "invalid_utf8",
            Reason::InvalidBytea => "invalid_bytea",
            Reason::UnchangedToast => "unchanged_toast",
            Reason::EnvelopeNotJson => "envelope_not_json",
            Reason::EnvelopeDuplicateField => "envelope_duplicate_field",
            Reason::EnvelopeUnknownVersion => "envelope_unknown_version",
            Reason::EnvelopeMissingField => "envelope_missing_field",
            Reason::EnvelopeWrongType => "envelope_wrong_type",
            Reason::EnvelopeInvalidId => "envelope_invalid_id",
            Reason::EnvelopeInvalidCreatedAt => "envelope_invalid_created_at",
            Reason::Unroutable => "unroutable",
            Reason::InvalidTopic => "invalid_topic",
            Reason::PayloadNotJson => "payload_not_json",
            Reason::HeadersNotJson => "headers_not_json",
            Reason::HeadersNotObject => "headers_not_object",
            Reason::ReservedHeader => "reserved_header",
            Reason::RecordTooLarge => "record_too_large",
            Reason::TopicNotAuthorized => "topic_not_authorized",
            Reason::UnknownTopic => "unknown_topic",
            Reason::RecordRefused => "record_refused",
        }
    }

    /// The reason for a code, as read back from a `dlq_reason` header.
    pub fn from_code(code: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| r.code() == code)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A row that cannot be published: why, and what exactly (for people; no secrets, no payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Why, as a stable code.
    pub reason: Reason,
    /// What exactly: the column, the topic, the limit.
    pub detail: String,
}

impl Refusal {
    /// A refusal for `reason` with `detail`.
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_snake_case_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            let code = r.code();
            assert!(seen.insert(code), "duplicate code {code}");
            assert!(code
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
            assert_eq!(Reason::from_code(code), Some(*r));
        }
        assert_eq!(Reason::from_code("nope"), None);
        assert_eq!(
            Refusal::new(Reason::Unroutable, "aggregate_type \"x\"").to_string(),
            "unroutable: aggregate_type \"x\""
        );
    }
}
