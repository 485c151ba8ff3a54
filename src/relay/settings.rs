//! The relay's settings, resolved once from a validated configuration: each stage's own part
//! (the source's, the sink's, the router's), the batch limits, the error policy and the retry
//! policy, and the part a SIGHUP reload may change ([`LiveSettings`]).

use std::time::Duration;

use crate::config::Config;
use crate::decode::ColumnMap;
use crate::route::RouterSettings;
use crate::sink::SinkSettings;
use crate::source::SourceSettings;

pub use super::tracker::BatchSettings;

/// What to do with a row that cannot be published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnError {
    /// Publish it to this topic with the reason in headers, in the same Kafka transaction.
    DeadLetter(String),
    /// Stop the relay, acknowledging nothing past it.
    Stop,
}

/// Reconnect policy.
#[derive(Debug, Clone, Copy)]
pub struct RetrySettings {
    /// First pause after a failure.
    pub initial_backoff: Duration,
    /// Longest pause.
    pub max_backoff: Duration,
    /// A server unavailable this long ends the relay (exit 69).
    pub max_elapsed: Duration,
}

/// Everything the relay needs, resolved from the configuration.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Postgres side.
    pub source: SourceSettings,
    /// Kafka side.
    pub sink: SinkSettings,
    /// Routing rules.
    pub router: RouterSettings,
    /// Outbox column mapping.
    pub columns: ColumnMap,
    /// Transaction cutting.
    pub batch: BatchSettings,
    /// Bad rows.
    pub on_error: OnError,
    /// Reconnects.
    pub retry: RetrySettings,
    /// Publish the table's rows when the slot is created (`outbox.snapshot`).
    pub snapshot: bool,
    /// The column ordering the snapshot.
    pub snapshot_order: Option<String>,
    /// Where events come from (`outbox.events_from`).
    pub events_from: crate::config::EventsFrom,
    /// The prefix of the relay's messages.
    pub message_prefix: String,
    /// Reading a backlog through the SQL interface (`[catchup]`).
    pub catchup: crate::config::CatchupConfig,
}

/// The settings a SIGHUP reload may change while the relay runs (the keys
/// `config::reload` classifies as live): they touch neither positions nor identities, so
/// applying them between two events cannot lose or duplicate one.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveSettings {
    /// Transaction cutting, from the next commit decision on.
    pub batch: BatchSettings,
    /// Routing, for events not yet routed.
    pub router: RouterSettings,
}

impl RelaySettings {
    /// Resolves the relay's settings from a validated configuration.
    pub fn from_config(cfg: &Config) -> Self {
        let c = &cfg.outbox.columns;
        RelaySettings {
            source: SourceSettings::from_config(cfg),
            sink: SinkSettings::from_config(cfg),
            router: RouterSettings::from_config(cfg),
            columns: ColumnMap {
                id: c.id.clone(),
                aggregate_type: c.aggregate_type.clone(),
                aggregate_id: c.aggregate_id.clone(),
                event_type: c.event_type.clone(),
                payload: c.payload.clone(),
                headers: c.headers().map(str::to_string),
                created_at: c.created_at().map(str::to_string),
            },
            batch: BatchSettings {
                max_events: cfg.batch.max_events as u64,
                max_bytes: cfg.batch.max_bytes as u64,
                max_delay: cfg.batch.max_delay(),
                split_events: cfg.batch.split_events as u64,
                idle_checkpoint: cfg.batch.idle_checkpoint(),
            },
            on_error: match cfg.errors.on_error {
                crate::config::OnError::DeadLetter => {
                    OnError::DeadLetter(cfg.errors.dead_letter_topic.clone())
                }
                crate::config::OnError::Stop => OnError::Stop,
            },
            retry: RetrySettings {
                initial_backoff: cfg.retry.initial_backoff(),
                max_backoff: cfg.retry.max_backoff(),
                max_elapsed: cfg.retry.max_elapsed(),
            },
            snapshot: cfg.outbox.snapshot,
            snapshot_order: cfg.outbox.snapshot_order_column().map(str::to_string),
            events_from: cfg.outbox.events_from,
            catchup: cfg.catchup.clone(),
            message_prefix: cfg.outbox.message_prefix.clone(),
        }
    }

    /// The reloadable part of these settings.
    pub fn live(&self) -> LiveSettings {
        LiveSettings {
            batch: self.batch,
            router: self.router.clone(),
        }
    }
}
