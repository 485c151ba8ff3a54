//! Cluster metadata: whether records can go to a topic, and the checkpoint topic's creation.
//!
//! The committer asks [`TopicChecker::check`] once per topic before the first record for it is
//! queued, so a missing or forbidden topic costs one metadata request and turns the row into a
//! dead letter, not a failed Kafka transaction. A "cannot" answer is re-asked after
//! [`NEGATIVE_TTL`] (an operator may create the topic or grant the ACL meanwhile). A topic the
//! brokers are creating (auto-create, LEADER_NOT_AVAILABLE) is waited for, briefly, instead of
//! ending the session.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::metadata::Metadata;
use rdkafka::producer::{BaseProducer, Producer as _};

use super::kafka_error;
use super::producer::{auth_failed, SinkContext};
use super::SinkSettings;
use crate::error::{Error, Result};
use crate::reason::{Reason, Refusal};

/// How long a "cannot write there" answer is trusted before asking the brokers again.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(10);
/// How long a topic without a leader yet (being created) is waited for.
const LEADER_WAIT: Duration = Duration::from_secs(10);

/// A plain (non-transactional) client for cluster metadata, usable while the producer commits.
pub struct MetadataClient {
    client: BaseProducer<SinkContext>,
    settings: SinkSettings,
}

impl std::fmt::Debug for MetadataClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetadataClient").finish_non_exhaustive()
    }
}

impl MetadataClient {
    /// Creates the client (no connection is made until the first request).
    pub fn new(settings: &SinkSettings) -> Result<Self> {
        let client = super::client_config(&settings.client)
            .create_with_context(SinkContext::default())
            .map_err(|e| Error::config(format!("kafka: cannot create a metadata client: {e}")))?;
        Ok(Self {
            client,
            settings: settings.clone(),
        })
    }

    /// Whether `topic` exists (with partitions). Short attempts until `within`, so a SASL failure
    /// (reported only through the error callback) ends the wait at once. Blocks.
    pub fn exists(&self, topic: &str, within: Duration) -> Result<bool> {
        let md = self.metadata(Some(topic), within)?;
        Ok(md
            .topics()
            .iter()
            .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty()))
    }

    /// Cluster metadata (the brokers, and `topic`'s partitions when named). Short attempts until
    /// `within`, so a SASL failure (reported only through the error callback) ends the wait at
    /// once; brokers that do not answer in time are a transient error naming them. Blocks.
    pub fn metadata(&self, topic: Option<&str>, within: Duration) -> Result<Metadata> {
        let started = Instant::now();
        loop {
            let left = within.saturating_sub(started.elapsed());
            match self
                .client
                .client()
                .fetch_metadata(topic, left.min(Duration::from_secs(1)))
            {
                Ok(md) => return Ok(md),
                Err(e) => {
                    // Serves the error callback (a BaseProducer's events wait for poll).
                    self.client.poll(Duration::ZERO);
                    if let Some(err) = auth_failed(self.client.context(), &self.settings) {
                        return Err(err);
                    }
                    if started.elapsed() >= within {
                        return Err(Error::transient(format!(
                            "kafka: brokers {} unreachable (no metadata within {within:?})",
                            self.settings.client.servers()
                        ))
                        .with_source(e));
                    }
                }
            }
        }
    }

    /// Whether records can be written to `topic`, from cluster metadata: `Err(refusal)` for a
    /// topic that does not exist or that we may not write (a poison row, not a session failure).
    /// A topic the brokers are still creating is waited for. Blocks.
    pub fn writable(&self, topic: &str) -> Result<std::result::Result<(), Refusal>> {
        let started = Instant::now();
        loop {
            let md = self
                .client
                .client()
                .fetch_metadata(Some(topic), self.settings.call_timeout)
                .map_err(|e| {
                    Error::transient(format!("kafka: metadata request for topic {topic:?}"))
                        .with_source(e)
                })?;
            let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
                return Ok(Err(Refusal::new(
                    Reason::UnknownTopic,
                    format!("topic {topic:?} is not in the cluster metadata"),
                )));
            };
            let code = t.error().map(RDKafkaErrorCode::from);
            match code {
                None if !t.partitions().is_empty() => return Ok(Ok(())),
                // Being created (auto-create): wait for its leader rather than end the session.
                Some(RDKafkaErrorCode::LeaderNotAvailable) | None
                    if started.elapsed() < LEADER_WAIT =>
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
                None => {
                    return Ok(Err(Refusal::new(
                        Reason::UnknownTopic,
                        format!("topic {topic:?} has no partitions"),
                    )))
                }
                Some(code) => {
                    return match kafka_error::refusal_reason(code) {
                        Some(reason) => Ok(Err(Refusal::new(
                            reason,
                            format!("topic {topic:?}: {code}"),
                        ))),
                        None => Err(Error::transient(format!(
                            "kafka: metadata for topic {topic:?}: {code}"
                        ))),
                    }
                }
            }
        }
    }
}

/// Per-topic verdicts of [`MetadataClient::writable`], cached (a "cannot" for [`NEGATIVE_TTL`]).
#[derive(Debug)]
pub struct TopicChecker {
    meta: MetadataClient,
    verdicts: HashMap<Arc<str>, (std::result::Result<(), Refusal>, Instant)>,
}

impl TopicChecker {
    /// A checker asking through `meta`.
    pub fn new(meta: MetadataClient) -> Self {
        Self {
            meta,
            verdicts: HashMap::new(),
        }
    }

    /// Whether records can go to `topic`. Blocks on a metadata request when not cached.
    pub fn check(&mut self, topic: &Arc<str>) -> Result<std::result::Result<(), Refusal>> {
        if let Some((verdict, at)) = self.verdicts.get(topic) {
            if verdict.is_ok() || at.elapsed() < NEGATIVE_TTL {
                return Ok(verdict.clone());
            }
        }
        let verdict = self.meta.writable(topic)?;
        self.verdicts
            .insert(topic.clone(), (verdict.clone(), Instant::now()));
        Ok(verdict)
    }
}

/// Makes sure the checkpoint topic exists (compacted, one partition), creating it when allowed.
/// Blocks.
pub fn ensure_checkpoint_topic(settings: &SinkSettings, within: Duration) -> Result<()> {
    let topic = &settings.checkpoint_topic;
    if MetadataClient::new(settings)?.exists(topic, within)? {
        return Ok(());
    }
    if !settings.create_checkpoint_topic {
        return Err(Error::config(format!(
            "kafka: checkpoint topic {topic:?} does not exist and kafka.create_checkpoint_topic = false; create it (1 partition, cleanup.policy=compact) or allow the relay to"
        )));
    }
    let admin: AdminClient<DefaultClientContext> = super::client_config(&settings.client)
        .create()
        .map_err(|e| Error::config(format!("kafka: cannot create an admin client: {e}")))?;
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(-1)).set("cleanup.policy", "compact");
    let opts = AdminOptions::new().operation_timeout(Some(settings.call_timeout));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::internal("tokio runtime for the admin client").with_source(e))?;
    let results = rt
        .block_on(admin.create_topics([&new], &opts))
        .map_err(|e| {
            Error::transient(format!("kafka: creating checkpoint topic {topic:?}")).with_source(e)
        })?;
    for r in results {
        match r {
            Ok(_) => tracing::info!(topic, "created the checkpoint topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => {
                return Err(Error::config(format!(
                    "kafka: cannot create checkpoint topic {topic:?}: {code}"
                )))
            }
        }
    }
    Ok(())
}
