//! What the Kafka half of the checklist is asked ([`Plan`]: the settings and every topic with its
//! [`Role`]) and the two things each of its parts needs: how long one question to Kafka may take,
//! and the librdkafka error code behind an error. It depends on no other part of the Kafka half,
//! so every part can depend on it.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::doctor::check::Server;
use crate::error::Error;
use crate::sink::SinkSettings;
use crate::source::SourceSettings;

pub(super) const KAFKA: Server = Server::Kafka;

/// What a topic is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `kafka.checkpoint_topic`.
    Checkpoint,
    /// A topic events are routed to (`[routing.topics]`, or a `routing.topic_template` without
    /// a placeholder).
    Routed,
    /// `errors.dead_letter_topic` (with `errors.on_error = "dead_letter"`).
    DeadLetter,
}

impl Role {
    pub(super) fn check(self) -> &'static str {
        match self {
            Role::Checkpoint => "checkpoint_topic",
            Role::Routed => "topic",
            Role::DeadLetter => "dead_letter_topic",
        }
    }
}

/// What the Kafka half checks.
#[derive(Debug)]
pub struct Plan {
    /// The relay's Kafka settings.
    pub sink: SinkSettings,
    /// The relay's Postgres settings (database and slot, for the checkpoint key and messages).
    pub source: SourceSettings,
    /// Every topic the relay writes, with its role.
    pub topics: Vec<(Role, String)>,
    /// Why the routed topics could not all be listed, if so.
    pub unlisted: Option<String>,
    /// Write (and abort) one record per topic to prove WRITE.
    pub probe_writes: bool,
}

/// How long one question to Kafka may take: the doctor must fail fast on a dead bootstrap.
pub(super) fn bound(sink: &SinkSettings) -> Duration {
    sink.call_timeout.min(Duration::from_secs(10))
}

/// The first librdkafka error code in an error's chain.
pub(super) fn kafka_code(e: &Error) -> Option<RDKafkaErrorCode> {
    let mut next = std::error::Error::source(e);
    while let Some(cause) = next {
        if let Some(k) = cause.downcast_ref::<KafkaError>() {
            return k.rdkafka_error_code();
        }
        next = cause.source();
    }
    None
}
