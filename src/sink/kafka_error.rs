//! Kafka errors, sorted by what the caller does about them, from librdkafka's error codes.
//!
//! | [`Failure`]   | the caller                                                            |
//! |---------------|-----------------------------------------------------------------------|
//! | `Retry`       | calls the same function again (a timeout, a coordinator moving)       |
//! | `Abort`       | aborts the Kafka transaction; the session replays from the checkpoint |
//! | `Fenced`      | stops publishing: another relay with our `transactional.id` took over |
//! | `Fatal`       | drops the producer; a new session builds a new one                     |
//! | `Config`      | stops the relay: credentials or ACLs, a person must act                |
//! | `Refused(r)`  | dead-letters the record (or stops, `errors.on_error`): a poison row    |
//!
//! librdkafka reports transactional-call errors with flags (`is_fatal`, `is_retriable`,
//! `txn_requires_abort`) and every error with a code; fencing is a code, never found by reading
//! the message text.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::error::{Error, Kind};
use crate::reason::Reason;

/// What to do about a Kafka error. See the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Call again.
    Retry,
    /// Abort the transaction and replay.
    Abort,
    /// This instance is fenced.
    Fenced,
    /// The producer is unusable.
    Fatal,
    /// Credentials or authorization.
    Config,
    /// This record can never be written.
    Refused(Reason),
}

/// Codes that mean another producer with the same `transactional.id` took over.
fn is_fenced(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
    )
}

/// Codes that mean the credentials or the ACLs are wrong.
pub fn is_auth(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
    )
}

/// Whether a consumer's error only says a broker connection dropped: librdkafka reconnects by
/// itself, so a reader keeps polling (under its own deadline) instead of giving up. A new client
/// reports `AllBrokersDown` when its bootstrap connection closes before the broker's own is up.
pub fn is_connection_loss(e: &KafkaError) -> bool {
    matches!(
        e,
        KafkaError::MessageConsumption(
            RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure
        ) | KafkaError::Global(
            RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure
        )
    )
}

/// Codes that mean "this record can never be written as it is", as a dead-letter reason.
pub fn refusal_reason(code: RDKafkaErrorCode) -> Option<Reason> {
    Some(match code {
        RDKafkaErrorCode::MessageSizeTooLarge
        | RDKafkaErrorCode::InvalidMessageSize
        | RDKafkaErrorCode::MessageBatchTooLarge => Reason::RecordTooLarge,
        RDKafkaErrorCode::TopicAuthorizationFailed => Reason::TopicNotAuthorized,
        RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => {
            Reason::UnknownTopic
        }
        RDKafkaErrorCode::InvalidRecord | RDKafkaErrorCode::PolicyViolation => {
            Reason::RecordRefused
        }
        _ => return None,
    })
}

/// Sorts an error of a transactional call or a produce call.
pub fn classify(e: &KafkaError) -> Failure {
    match e {
        KafkaError::Transaction(rde) => {
            let code = rde.code();
            if is_fenced(code) {
                Failure::Fenced
            } else if is_auth(code) {
                Failure::Config
            } else if rde.is_fatal() {
                Failure::Fatal
            } else if rde.txn_requires_abort() {
                Failure::Abort
            } else if rde.is_retriable() || code == RDKafkaErrorCode::OperationTimedOut {
                Failure::Retry
            } else {
                Failure::Abort
            }
        }
        // rust-rdkafka's commit_transaction flushes first; a flush timeout is worth another call.
        KafkaError::Flush(_) => Failure::Retry,
        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => Failure::Retry,
        other => match other.rdkafka_error_code() {
            Some(code) if is_fenced(code) => Failure::Fenced,
            Some(code) if is_auth(code) => Failure::Config,
            Some(code) => refusal_reason(code).map_or(Failure::Abort, Failure::Refused),
            None => Failure::Abort,
        },
    }
}

/// The relay's error for a failure that ends the session (not `Retry`, not `Refused`).
pub fn session_error(what: &str, failure: Failure, e: KafkaError) -> Error {
    let (kind, message) = match failure {
        Failure::Fenced => (
            Kind::Fenced,
            format!("kafka: {what}: this instance was fenced by another relay with the same transactional.id"),
        ),
        Failure::Config => (
            Kind::Config,
            format!("kafka: {what}: not authorized (check the SASL credentials and the ACLs)"),
        ),
        Failure::Fatal => (Kind::Transient, format!("kafka: {what}: fatal producer error")),
        Failure::Abort | Failure::Retry | Failure::Refused(_) => {
            (Kind::Transient, format!("kafka: {what}: transaction must be aborted"))
        }
    };
    Error::new(kind, message).with_source(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use RDKafkaErrorCode as C;

    #[test]
    fn refusals_are_the_codes_retrying_cannot_fix() {
        for (code, reason) in [
            (C::MessageSizeTooLarge, Reason::RecordTooLarge),
            (C::InvalidMessageSize, Reason::RecordTooLarge),
            (C::MessageBatchTooLarge, Reason::RecordTooLarge),
            (C::TopicAuthorizationFailed, Reason::TopicNotAuthorized),
            (C::UnknownTopicOrPartition, Reason::UnknownTopic),
            (C::UnknownTopic, Reason::UnknownTopic),
            (C::InvalidRecord, Reason::RecordRefused),
            (C::PolicyViolation, Reason::RecordRefused),
        ] {
            assert_eq!(refusal_reason(code), Some(reason), "{code:?}");
        }
        for code in [
            C::RequestTimedOut,
            C::NotLeaderForPartition,
            C::BrokerTransportFailure,
        ] {
            assert_eq!(refusal_reason(code), None, "{code:?}");
        }
    }

    #[test]
    fn a_dropped_connection_is_not_a_reader_failure() {
        assert!(is_connection_loss(&KafkaError::MessageConsumption(
            C::AllBrokersDown
        )));
        assert!(is_connection_loss(&KafkaError::Global(
            C::BrokerTransportFailure
        )));
        assert!(!is_connection_loss(&KafkaError::MessageConsumption(
            C::TopicAuthorizationFailed
        )));
        assert!(!is_connection_loss(&KafkaError::PartitionEOF(0)));
    }

    #[test]
    fn classify_by_code() {
        assert_eq!(
            classify(&KafkaError::Flush(C::OperationTimedOut)),
            Failure::Retry
        );
        assert_eq!(
            classify(&KafkaError::MessageProduction(C::QueueFull)),
            Failure::Retry
        );
        assert_eq!(
            classify(&KafkaError::MessageProduction(C::MessageSizeTooLarge)),
            Failure::Refused(Reason::RecordTooLarge)
        );
        assert_eq!(
            classify(&KafkaError::MessageProduction(C::ProducerFenced)),
            Failure::Fenced
        );
        assert_eq!(
            classify(&KafkaError::Global(C::SaslAuthenticationFailed)),
            Failure::Config
        );
        assert_eq!(
            classify(&KafkaError::Global(C::AllBrokersDown)),
            Failure::Abort
        );
        let e = session_error(
            "commit_transaction",
            Failure::Fenced,
            KafkaError::MessageProduction(C::ProducerFenced),
        );
        assert_eq!(e.kind(), Kind::Fenced);
        assert!(e.message().contains("fenced"), "{e}");
    }
}
