//! The Kafka side: everything the relay writes to Kafka, and how.
//!
//! ```text
//!  committer ── the loop's interface: assemble, decide, commit on a blocking thread, report
//!     ├── producer      one transactional producer: records + checkpoint, one Kafka transaction
//!     ├── topics        cluster metadata: may records go to this topic? the checkpoint topic
//!     └── kafka_error   librdkafka errors sorted by what the caller does
//!  checkpoint ── the checkpoint record: its key, its JSON, reading it back read_committed
//! ```
//!
//! Only after a commit returned Ok may the relay acknowledge Postgres (docs/ARCHITECTURE.md,
//! "Exactly once").

pub mod checkpoint;
pub mod committer;
pub mod kafka_error;
pub mod producer;
pub mod topics;

use std::time::Duration;

pub use checkpoint::{Checkpoint, CheckpointKey, Partial, SnapshotProgress, SnapshotState};
pub use committer::{Committed, Committer, Outcome, Refusals};
pub use producer::Producer;
pub use topics::{MetadataClient, TopicChecker};

use crate::config::{ClientProps, Config};

/// The librdkafka configuration of every client the relay makes: the client's properties, then
/// what the relay tunes where the passthrough did not.
///
/// `reconnect.backoff.ms` (default 100) also spaces out librdkafka's "sparse" connections by half
/// of it: a new client connects to the bootstrap server, learns the broker ids, drops the bootstrap
/// connection and only then connects to the broker it needs, 50 ms later. Start-up makes four
/// clients one after another, each waiting that once (issue 16); at 10 ms the wait is 11 ms, and
/// a broker that is down is still retried with exponential backoff (up to
/// `reconnect.backoff.max.ms`, 10 s).
pub fn client_config(client: &ClientProps) -> rdkafka::ClientConfig {
    let mut cc = client.client_config();
    if cc.get("reconnect.backoff.ms").is_none() {
        cc.set("reconnect.backoff.ms", "10");
    }
    cc
}

/// Blocks (up to `within`) until a broker the client learned from the cluster metadata, not the
/// bootstrap address, answered a metadata request for `topic`, so the client's next request goes
/// to a connection that stays; returns that answer.
///
/// A new client drops its bootstrap connection once it knows the broker ids, and a request in
/// flight on it is lost: a transaction coordinator query is then asked again only after a fixed
/// 500 ms (half of the starts measured in issue 16 paid it in `init_transactions`), an offset
/// query likewise. Failures are left to the call that follows, which reports them (`None`).
pub fn await_learned_broker<C: rdkafka::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
    within: std::time::Duration,
) -> Option<rdkafka::metadata::Metadata> {
    let started = std::time::Instant::now();
    while let Some(left) = within.checked_sub(started.elapsed()) {
        match client.fetch_metadata(Some(topic), left) {
            // Ids from the metadata are >= 0; the bootstrap address answers as -1.
            Ok(md) if md.orig_broker_id() >= 0 => return Some(md),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

/// What the Kafka side needs, resolved from the configuration.
#[derive(Debug, Clone)]
pub struct SinkSettings {
    /// librdkafka properties shared by the producer and the consumers (secrets stay [`Secret`]s
    /// until handed to librdkafka).
    ///
    /// [`Secret`]: crate::config::Secret
    pub client: ClientProps,
    /// Stable per slot, so a new instance fences the old one.
    pub transactional_id: String,
    /// Broker-side bound on an open transaction.
    pub transaction_timeout: Duration,
    /// Compacted one-partition topic holding checkpoints.
    pub checkpoint_topic: String,
    /// Create the checkpoint topic when it is missing.
    pub create_checkpoint_topic: bool,
    /// How long one blocking Kafka call may take before it counts as a failure of the session.
    pub call_timeout: Duration,
}

impl SinkSettings {
    /// The Kafka side of a validated configuration.
    pub fn from_config(cfg: &Config) -> Self {
        SinkSettings {
            client: cfg.kafka.client_props(),
            transactional_id: cfg.transactional_id(),
            transaction_timeout: cfg.kafka.transaction_timeout(),
            checkpoint_topic: cfg.kafka.checkpoint_topic.clone(),
            create_checkpoint_topic: cfg.kafka.create_checkpoint_topic,
            call_timeout: Duration::from_secs(30).min(cfg.kafka.transaction_timeout()),
        }
    }

    /// The producer's `message.max.bytes` (librdkafka's default 1000000 unless passed through):
    /// larger records are refused before they are queued.
    pub fn max_record_bytes(&self) -> u64 {
        self.client
            .get("message.max.bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000)
    }

    /// These settings with every blocking call bounded by `bound` too (a retry budget).
    pub fn bounded(&self, bound: Duration) -> Self {
        let mut s = self.clone();
        s.call_timeout = s.call_timeout.min(bound.max(Duration::from_millis(500)));
        s
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::Secret;

    pub(crate) fn settings() -> SinkSettings {
        let mut client = ClientProps::default();
        client
            .set("bootstrap.servers", "127.0.0.1:9092")
            .set("sasl.username", "relay")
            .set_secret("sasl.password", Secret::new("pw-never-printed"))
            .set("linger.ms", "20");
        SinkSettings {
            client,
            transactional_id: "outbox-relay-slot".into(),
            transaction_timeout: Duration::from_secs(60),
            checkpoint_topic: "ckpt".into(),
            create_checkpoint_topic: true,
            call_timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn debug_hides_the_sasl_password() {
        let text = format!("{:?}", settings());
        assert!(!text.contains("pw-never-printed"), "{text}");
        assert!(
            text.contains("sasl.password") && text.contains("***"),
            "{text}"
        );
        assert!(text.contains("outbox-relay-slot"), "{text}");
    }

    #[test]
    fn clients_reconnect_quickly_unless_the_passthrough_says_otherwise() {
        let s = settings();
        assert_eq!(
            client_config(&s.client).get("reconnect.backoff.ms"),
            Some("10")
        );
        let mut props = s.client.clone();
        props.set("reconnect.backoff.ms", "250");
        assert_eq!(
            client_config(&props).get("reconnect.backoff.ms"),
            Some("250")
        );
    }

    #[test]
    fn max_record_bytes_follows_the_passthrough() {
        assert_eq!(settings().max_record_bytes(), 1_000_000);
        let mut s = settings();
        s.client.set("message.max.bytes", "2000");
        assert_eq!(s.max_record_bytes(), 2000);
        assert_eq!(
            s.bounded(Duration::from_secs(2)).call_timeout,
            Duration::from_secs(2)
        );
    }
}
