//! The brokers: whether the bootstrap servers answer (nothing else can be checked without them),
//! whether this looks like a production cluster, and the brokers' own settings the relay depends
//! on (`transaction.max.timeout.ms`, `auto.create.topics.enable`). What it learns, with the clients
//! it opened, is the [`Cluster`] the topic checks ask further.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, ConfigResource, ResourceSpecifier};

use super::plan::{bound, KAFKA};
use crate::doctor::check::Check;
use crate::error::Kind;
use crate::sink::producer::SinkContext;
use crate::sink::{MetadataClient, SinkSettings};

/// The brokers as the bootstrap found them, and the clients to ask them more.
pub(super) struct Cluster {
    /// Topic metadata.
    pub meta: MetadataClient,
    /// Configuration of brokers and topics (`None` if it could not be created).
    pub admin: Option<AdminClient<SinkContext>>,
    /// Options of every admin request (its timeout).
    pub opts: AdminOptions,
    /// How long one question may take.
    pub within: Duration,
    /// More than one broker, or a non-local bootstrap.
    pub production: bool,
    /// Whether the brokers create topics on their own (`None`: unknown).
    pub auto_create: Option<bool>,
}

/// The `bootstrap` and `transaction_timeout` lines; `None` (after a line saying so) when the
/// brokers cannot be asked.
pub(super) async fn check(sink: &SinkSettings, out: &mut Vec<Check>) -> Option<Cluster> {
    let within = bound(sink);
    let servers = sink.client.servers().to_string();

    let meta = match MetadataClient::new(sink) {
        Ok(m) => m,
        Err(e) => {
            out.push(Check::fail(
                KAFKA,
                "bootstrap",
                e.message().to_string(),
                "check kafka.properties",
            ));
            return None;
        }
    };
    let started = Instant::now();
    let md = tokio::task::block_in_place(|| meta.metadata(Some(&sink.checkpoint_topic), within));
    let md = match md {
        Ok(md) => md,
        Err(e) => {
            let fix = if e.kind() == Kind::Config {
                "check kafka.sasl_username / kafka.sasl_password (or _file) and kafka.sasl_mechanism"
            } else {
                "check kafka.bootstrap_servers, kafka.security_protocol (the listener's protocol) and the network; each broker's advertised.listeners must be reachable from here too"
            };
            out.push(Check::fail(
                KAFKA,
                "bootstrap",
                format!("{} (after {:.1?})", e.report(), started.elapsed()),
                fix,
            ));
            out.push(Check::skip(
                KAFKA,
                "remaining",
                "the other Kafka checks need the brokers",
            ));
            return None;
        }
    };
    let brokers: Vec<i32> = md.brokers().iter().map(|b| b.id()).collect();
    let production = brokers.len() > 1 || !servers.split(',').all(is_local);
    out.push(Check::ok(
        KAFKA,
        "bootstrap",
        format!(
            "{servers} answered: {} broker{} (ids {})",
            brokers.len(),
            if brokers.len() == 1 { "" } else { "s" },
            brokers
                .iter()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ));

    let admin: Option<AdminClient<SinkContext>> = sink
        .client
        .client_config()
        .create_with_context(SinkContext::default())
        .ok();
    let opts = AdminOptions::new().request_timeout(Some(within));

    // The brokers' transaction timeout (and whether they create topics on their own).
    let mut auto_create: Option<bool> = None;
    let mut max_timeout: Option<(u64, i32)> = None;
    let mut broker_config_error = None;
    if let Some(admin) = &admin {
        for id in &brokers {
            match describe(admin, ResourceSpecifier::Broker(*id), &opts, within).await {
                Ok(c) => {
                    if let Some(v) =
                        value(&c, "transaction.max.timeout.ms").and_then(|v| v.parse::<u64>().ok())
                    {
                        if max_timeout.is_none_or(|(m, _)| v < m) {
                            max_timeout = Some((v, *id));
                        }
                    }
                    if let Some(v) = value(&c, "auto.create.topics.enable") {
                        auto_create = Some(auto_create.unwrap_or(false) || v == "true");
                    }
                }
                Err(e) => broker_config_error = Some(e),
            }
        }
    }
    let relay_ms = sink.transaction_timeout.as_millis() as u64;
    out.push(match (max_timeout, &broker_config_error) {
        (Some((max, _)), _) if max >= relay_ms => Check::ok(
            KAFKA,
            "transaction_timeout",
            format!("kafka.transaction_timeout_ms {relay_ms} <= the brokers' transaction.max.timeout.ms {max}"),
        ),
        (Some((max, id)), _) => Check::fail(
            KAFKA,
            "transaction_timeout",
            format!("kafka.transaction_timeout_ms {relay_ms} is above broker {id}'s transaction.max.timeout.ms {max}: the broker refuses the relay's producer (INVALID_TRANSACTION_TIMEOUT)"),
            format!("set kafka.transaction_timeout_ms <= {max}, or raise transaction.max.timeout.ms on every broker"),
        ),
        (None, Some(e)) => Check::skip(
            KAFKA,
            "transaction_timeout",
            format!("cannot read the brokers' configuration ({e}: DESCRIBE_CONFIGS on the cluster); the transactional_id check below tries the timeout when it runs"),
        ),
        (None, None) => Check::skip(
            KAFKA,
            "transaction_timeout",
            "the brokers did not report transaction.max.timeout.ms",
        ),
    });
    Some(Cluster {
        meta,
        admin,
        opts,
        within,
        production,
        auto_create,
    })
}

/// The configuration of one broker or topic, within `within`.
pub(super) async fn describe(
    admin: &AdminClient<SinkContext>,
    what: ResourceSpecifier<'_>,
    opts: &AdminOptions,
    within: Duration,
) -> Result<ConfigResource, String> {
    let asked = tokio::time::timeout(within + Duration::from_secs(1), async {
        admin.describe_configs([&what], opts).await
    })
    .await
    .map_err(|_| format!("no answer within {within:?}"))?
    .map_err(|e| e.to_string())?;
    match asked.into_iter().next() {
        Some(Ok(c)) => Ok(c),
        Some(Err(code)) => Err(code.to_string()),
        None => Err("no result".into()),
    }
}

pub(super) fn value(c: &ConfigResource, name: &str) -> Option<String> {
    c.get(name).and_then(|e| e.value.clone())
}

fn is_local(host_port: &str) -> bool {
    let host = host_port
        .trim()
        .rsplit_once(':')
        .map_or(host_port, |(h, _)| h)
        .trim_matches(['[', ']']);
    matches!(host, "localhost" | "127.0.0.1" | "::1") || host.starts_with("127.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_bootstraps_are_not_production() {
        assert!(is_local("127.0.0.1:9092"));
        assert!(is_local("localhost:9092"));
        assert!(is_local("[::1]:9092"));
        assert!(!is_local("kafka-1.prod:9092"));
        assert!(!is_local("10.0.0.7:9092"));
    }
}
