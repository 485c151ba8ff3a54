//! What a SIGHUP reload may change while the relay runs, decided per key by typed comparison.
//!
//! Every key is either [`Apply::Live`] (applied between two events: it touches neither positions
//! nor identities, so it cannot lose or duplicate one) or [`Apply::Restart`] (connections,
//! identities, the data contract, process settings read once). The table below destructures each
//! section struct exhaustively, so adding a field to a config section without classifying it here
//! does not compile; and a unit test walks every key of the README's configuration reference and
//! fails if one has no class.

use super::{
    AdminConfig, BatchConfig, CatchupConfig, ColumnsConfig, Config, ErrorsConfig, KafkaConfig,
    LogConfig, OutboxConfig, PostgresConfig, RetryConfig, RoutingConfig, ShutdownConfig,
};

/// When a changed key takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Apply {
    /// Applied to the running relay at once.
    Live,
    /// Refused by a reload; needs a restart.
    Restart,
}

/// A key whose value differs between two configurations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Changed {
    /// Dotted key, as in the README (`batch.max_events`).
    pub key: &'static str,
    /// When it may take effect.
    pub apply: Apply,
}

const LIVE: Option<Apply> = Some(Apply::Live);
const RESTART: Option<Apply> = Some(Apply::Restart);
/// A nested table, compared key by key in its own entry.
const NESTED: Option<Apply> = None;

/// Declares, once, every key of every section with its class: the key table and the comparison
/// come from the same list.
macro_rules! reload_table {
    ($( $prefix:literal => $($path:ident).+ : $ty:ident { $($field:ident => $apply:ident),+ $(,)? } )+) => {
        /// Every key of the configuration with its class (`None`: a table compared key by key).
        pub const KEYS: &[(&str, Option<Apply>)] = &[
            $( $( (concat!($prefix, ".", stringify!($field)), $apply), )+ )+
        ];

        /// The keys whose values differ between `a` and `b`, in declaration order.
        pub fn changes(a: &Config, b: &Config) -> Vec<Changed> {
            let mut out = Vec::new();
            $(
                {
                    fn section(c: &Config) -> &$ty {
                        &c.$($path).+
                    }
                    let (a, b) = (section(a), section(b));
                    // Exhaustive: a field missing from the table is a compile error.
                    let $ty { $($field: _),+ } = a;
                    $(
                        if let Some(apply) = $apply {
                            if a.$field != b.$field {
                                out.push(Changed {
                                    key: concat!($prefix, ".", stringify!($field)),
                                    apply,
                                });
                            }
                        }
                    )+
                }
            )+
            out
        }
    };
}

reload_table! {
    "postgres" => postgres: PostgresConfig {
        host => RESTART, port => RESTART, dbname => RESTART, user => RESTART,
        password => RESTART, password_file => RESTART, sslmode => RESTART,
        sslrootcert => RESTART, slot => RESTART, publication => RESTART, create_slot => RESTART,
        failover_slot => RESTART,
        connect_timeout_ms => RESTART, status_interval_ms => RESTART,
    }
    "outbox" => outbox: OutboxConfig {
        table => RESTART, events_from => RESTART, message_prefix => RESTART, snapshot => RESTART,
        snapshot_order_by => RESTART, columns => NESTED,
    }
    "outbox.columns" => outbox.columns: ColumnsConfig {
        id => RESTART, aggregate_type => RESTART, aggregate_id => RESTART, event_type => RESTART,
        payload => RESTART, headers => RESTART, created_at => RESTART,
    }
    "kafka" => kafka: KafkaConfig {
        bootstrap_servers => RESTART, checkpoint_topic => RESTART,
        create_checkpoint_topic => RESTART, transactional_id => RESTART,
        transaction_timeout_ms => RESTART, security_protocol => RESTART,
        sasl_mechanism => RESTART, sasl_username => RESTART, sasl_password => RESTART,
        sasl_password_file => RESTART, ssl_ca_location => RESTART, properties => RESTART,
    }
    "routing" => routing: RoutingConfig { topic_template => LIVE, strict => LIVE, topics => LIVE }
    "errors" => errors: ErrorsConfig { on_error => RESTART, dead_letter_topic => RESTART }
    "batch" => batch: BatchConfig {
        max_events => LIVE, max_bytes => LIVE, max_delay_ms => LIVE, split_events => LIVE,
        idle_checkpoint_ms => LIVE,
    }
    "catchup" => catchup: CatchupConfig {
        mode => RESTART, min_lag_mb => RESTART, chunk_changes => RESTART, poll_ms => RESTART,
    }
    "shutdown" => shutdown: ShutdownConfig { drain_timeout_ms => RESTART }
    "retry" => retry: RetryConfig { initial_backoff_ms => RESTART, max_backoff_ms => RESTART, max_elapsed_ms => RESTART }
    "admin" => admin: AdminConfig { listen => RESTART }
    "log" => log: LogConfig { format => RESTART, level => LIVE }
}

/// Sections of [`Config`], destructured exhaustively: a new section must be added to the table.
const _: fn(&Config) = |c| {
    let Config {
        postgres: _,
        outbox: _,
        kafka: _,
        routing: _,
        errors: _,
        batch: _,
        catchup: _,
        shutdown: _,
        retry: _,
        admin: _,
        log: _,
    } = c;
};

/// The class of a dotted key (entries of `[routing.topics]` and `[kafka.properties]` included).
pub fn apply_of(key: &str) -> Option<Apply> {
    if key.starts_with("routing.topics.") {
        return Some(Apply::Live);
    }
    if key.starts_with("kafka.properties.") {
        return Some(Apply::Restart);
    }
    KEYS.iter().find(|(k, _)| *k == key).and_then(|(_, a)| *a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_sorted_into_live_and_restart() {
        let a = Config::default();
        let mut b = a.clone();
        b.batch.max_events = 5;
        b.routing.strict = true;
        b.log.level = "debug".into();
        b.outbox.columns.payload = "body".into();
        b.postgres.password = super::super::Secret::new("changed");
        let got: Vec<(&str, Apply)> = changes(&a, &b).iter().map(|c| (c.key, c.apply)).collect();
        assert_eq!(
            got,
            [
                ("postgres.password", Apply::Restart),
                ("outbox.columns.payload", Apply::Restart),
                ("routing.strict", Apply::Live),
                ("batch.max_events", Apply::Live),
                ("log.level", Apply::Live),
            ]
        );
        assert!(changes(&a, &a.clone()).is_empty());
    }

    /// Every key of the README's configuration reference is live or restart-only.
    #[test]
    fn every_documented_key_has_a_reload_class() {
        let readme = include_str!("../../README.md");
        let block = readme
            .split("## Configuration")
            .nth(1)
            .and_then(|s| s.split("```toml").nth(1))
            .and_then(|s| s.split("```").next())
            .expect("a ```toml block under ## Configuration");
        let mut section = String::new();
        let mut seen = 0;
        for line in block.lines() {
            let t = line.trim();
            if let Some(rest) = t.strip_prefix('[') {
                section = rest.split(']').next().unwrap_or("").to_string();
                continue;
            }
            let t = t.trim_start_matches('#').trim();
            let Some((key, _)) = t.split_once(" = ") else {
                continue;
            };
            let key = key.trim_matches('"');
            if key.is_empty() || key.contains(' ') {
                continue;
            }
            let dotted = format!("{section}.{key}");
            assert!(
                apply_of(&dotted).is_some(),
                "{dotted} is documented but neither live nor restart-only (src/config/reload.rs)"
            );
            seen += 1;
        }
        assert!(seen > 40, "only {seen} keys found in the README");
        // And every key in the table is a real, documented one.
        for (key, _) in KEYS {
            let leaf = key.rsplit('.').next().unwrap_or(key);
            assert!(
                block.contains(&format!("{leaf} ="))
                    || key.ends_with(".columns")
                    || key.ends_with(".topics")
                    || key.ends_with(".properties"),
                "{key} is not in the README's reference"
            );
        }
    }
}
