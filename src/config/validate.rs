//! Value checks of a deserialized [`Config`]: ranges, names Postgres and Kafka will accept, and
//! combinations that contradict each other. Each error names its dotted key.

use super::{Config, ConfigError, KafkaConfig, OnError, PostgresConfig, SslMode};

/// librdkafka properties the relay sets itself, with what to do instead.
const OWNED_KAFKA_PROPERTIES: &[(&str, &str)] = &[
    ("bootstrap.servers", "set kafka.bootstrap_servers"),
    ("metadata.broker.list", "set kafka.bootstrap_servers"),
    ("transactional.id", "set kafka.transactional_id"),
    ("transaction.timeout.ms", "set kafka.transaction_timeout_ms"),
    (
        "enable.idempotence",
        "exactly-once needs it on; the relay sets it",
    ),
    ("acks", "exactly-once needs acks=all; the relay sets it"),
    (
        "request.required.acks",
        "exactly-once needs acks=all; the relay sets it",
    ),
    (
        "isolation.level",
        "the relay reads its checkpoint read_committed",
    ),
    ("security.protocol", "set kafka.security_protocol"),
    ("sasl.mechanism", "set kafka.sasl_mechanism"),
    ("sasl.mechanisms", "set kafka.sasl_mechanism"),
    ("sasl.username", "set kafka.sasl_username"),
    (
        "sasl.password",
        "set kafka.sasl_password or kafka.sasl_password_file",
    ),
    ("ssl.ca.location", "set kafka.ssl_ca_location"),
    (
        "partitioner",
        "per-aggregate order depends on the relay's choice",
    ),
    (
        "enable.auto.commit",
        "the relay's consumers never commit offsets",
    ),
    (
        "group.id",
        "the relay's consumers assign partitions themselves",
    ),
];

type Check = Result<(), ConfigError>;

fn err(key: impl Into<String>, message: impl Into<String>) -> Check {
    Err(ConfigError::invalid(key, message))
}

fn at_least(key: &str, value: u64, min: u64) -> Check {
    if value < min {
        return err(key, format!("must be at least {min} (is {value})"));
    }
    Ok(())
}

fn not_empty(key: &str, value: &str) -> Check {
    if value.trim().is_empty() {
        return err(key, "must not be empty");
    }
    Ok(())
}

pub(super) fn validate(c: &Config) -> Check {
    postgres(&c.postgres)?;

    if let Err(m) = parse_table(&c.outbox.table) {
        return err("outbox.table", m);
    }
    let cols = &c.outbox.columns;
    for (key, value) in [
        ("outbox.columns.id", &cols.id),
        ("outbox.columns.aggregate_type", &cols.aggregate_type),
        ("outbox.columns.aggregate_id", &cols.aggregate_id),
        ("outbox.columns.event_type", &cols.event_type),
        ("outbox.columns.payload", &cols.payload),
    ] {
        not_empty(key, value)?;
    }
    if c.outbox.message_prefix.is_empty() {
        return err("outbox.message_prefix", "must not be empty");
    }
    if c.outbox.snapshot && !c.outbox.events_from.rows() {
        return err(
            "outbox.snapshot",
            "a snapshot publishes the table's rows, but outbox.events_from = \"messages\"",
        );
    }
    if c.outbox.snapshot && c.outbox.snapshot_order_column().is_none() {
        return err(
            "outbox.snapshot_order_by",
            "outbox.snapshot = true needs an order for the rows: set snapshot_order_by to a column (or map outbox.columns.created_at)",
        );
    }

    kafka(&c.kafka)?;

    let r = &c.routing;
    topic_template(&r.topic_template).or_else(|m| err("routing.topic_template", m))?;
    for (aggregate_type, topic) in &r.topics {
        let key = format!("routing.topics.\"{aggregate_type}\"");
        if aggregate_type.is_empty() {
            return err(key, "the aggregate type must not be empty");
        }
        topic_name(topic).or_else(|m| err(&key, m))?;
        if *topic == c.kafka.checkpoint_topic {
            return err(
                key,
                "must not be the checkpoint topic (kafka.checkpoint_topic)",
            );
        }
    }
    if r.strict && r.topics.is_empty() {
        return err(
            "routing.strict",
            "is true but [routing.topics] is empty: every event would be unroutable",
        );
    }

    let e = &c.errors;
    topic_name(&e.dead_letter_topic).or_else(|m| err("errors.dead_letter_topic", m))?;
    if e.on_error == OnError::DeadLetter && e.dead_letter_topic == c.kafka.checkpoint_topic {
        return err(
            "errors.dead_letter_topic",
            "must not be the checkpoint topic (kafka.checkpoint_topic)",
        );
    }

    let b = &c.batch;
    at_least("batch.max_events", b.max_events as u64, 1)?;
    at_least("batch.max_bytes", b.max_bytes as u64, 1)?;
    at_least("batch.split_events", b.split_events as u64, 1)?;
    at_least("batch.idle_checkpoint_ms", b.idle_checkpoint_ms, 100)?;

    let cu = &c.catchup;
    at_least("catchup.chunk_changes", cu.chunk_changes, 1)?;
    at_least("catchup.poll_ms", cu.poll_ms, 1)?;

    let rt = &c.retry;
    at_least("retry.initial_backoff_ms", rt.initial_backoff_ms, 1)?;
    if rt.max_backoff_ms < rt.initial_backoff_ms {
        return err(
            "retry.max_backoff_ms",
            format!(
                "must be at least retry.initial_backoff_ms ({} < {})",
                rt.max_backoff_ms, rt.initial_backoff_ms
            ),
        );
    }
    at_least("retry.max_elapsed_ms", rt.max_elapsed_ms, 1)?;

    if !c.admin.listen.is_empty() && c.admin.listen_addr().is_none() {
        return err(
            "admin.listen",
            format!(
                "{:?} is not an ip:port address (e.g. 127.0.0.1:9464, [::1]:9464); \"\" disables the server",
                c.admin.listen
            ),
        );
    }

    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&c.log.level) {
        return err("log.level", format!("not a tracing filter directive: {e}"));
    }
    Ok(())
}

fn postgres(p: &PostgresConfig) -> Check {
    not_empty("postgres.host", &p.host)?;
    if let Err(why) = p.hosts() {
        return err("postgres.host", why);
    }
    at_least("postgres.port", p.port.into(), 1)?;
    not_empty("postgres.dbname", &p.dbname)?;
    not_empty("postgres.user", &p.user)?;
    if !p.password.is_empty() && p.password_file.is_some() {
        return err(
            "postgres.password_file",
            "postgres.password is also set (in the file or the environment): set only one",
        );
    }
    match (p.sslmode, &p.sslrootcert) {
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            return err(
                "postgres.sslrootcert",
                format!("required with sslmode = \"{}\"", p.sslmode.as_str()),
            )
        }
        (SslMode::Disable, Some(_)) => {
            return err("postgres.sslrootcert", "set, but sslmode = \"disable\"")
        }
        _ => {}
    }
    slot_name(&p.slot).or_else(|m| err("postgres.slot", m))?;
    not_empty("postgres.publication", &p.publication)?;
    if p.publication.len() > 63 {
        return err("postgres.publication", "longer than 63 bytes");
    }
    at_least("postgres.connect_timeout_ms", p.connect_timeout_ms, 1)?;
    at_least("postgres.status_interval_ms", p.status_interval_ms, 1)?;
    Ok(())
}

fn kafka(k: &KafkaConfig) -> Check {
    if k.bootstrap_servers.split(',').any(|s| s.trim().is_empty()) {
        return err(
            "kafka.bootstrap_servers",
            "must be a comma-separated list of host:port, without empty entries",
        );
    }
    topic_name(&k.checkpoint_topic).or_else(|m| err("kafka.checkpoint_topic", m))?;
    if let Some(id) = &k.transactional_id {
        not_empty("kafka.transactional_id", id)?;
    }
    if !(1000..=i32::MAX as u64).contains(&k.transaction_timeout_ms) {
        return err(
            "kafka.transaction_timeout_ms",
            format!(
                "must be between 1000 and {} (is {})",
                i32::MAX,
                k.transaction_timeout_ms
            ),
        );
    }
    let has_password = !k.sasl_password.is_empty() || k.sasl_password_file.is_some();
    if !k.sasl_password.is_empty() && k.sasl_password_file.is_some() {
        return err(
            "kafka.sasl_password_file",
            "kafka.sasl_password is also set (in the file or the environment): set only one",
        );
    }
    let protocol = k.security_protocol.as_str();
    if k.security_protocol.is_sasl() {
        if k.sasl_username.is_none() {
            return err(
                "kafka.sasl_username",
                format!("required with security_protocol = \"{protocol}\""),
            );
        }
        if !has_password {
            return err(
                "kafka.sasl_password",
                format!("required (or kafka.sasl_password_file) with security_protocol = \"{protocol}\""),
            );
        }
    } else {
        let set = if k.sasl_username.is_some() {
            Some("kafka.sasl_username")
        } else if !k.sasl_password.is_empty() {
            Some("kafka.sasl_password")
        } else if k.sasl_password_file.is_some() {
            Some("kafka.sasl_password_file")
        } else {
            None
        };
        if let Some(key) = set {
            return err(
                key,
                format!("set, but security_protocol = \"{protocol}\" (SASL needs sasl_plaintext or sasl_ssl)"),
            );
        }
    }
    if k.ssl_ca_location.is_some() && !k.security_protocol.is_tls() {
        return err(
            "kafka.ssl_ca_location",
            format!("set, but security_protocol = \"{protocol}\" (TLS needs ssl or sasl_ssl)"),
        );
    }
    for name in k.properties.keys() {
        let key = format!("kafka.properties.\"{name}\"");
        if name.trim().is_empty() {
            return err(key, "empty property name");
        }
        if let Some((_, instead)) = OWNED_KAFKA_PROPERTIES
            .iter()
            .find(|(owned, _)| *owned == name.trim())
        {
            return err(
                key,
                format!("set by the relay, cannot be passed through: {instead}"),
            );
        }
    }
    Ok(())
}

/// A Kafka topic name: `[a-zA-Z0-9._-]`, 1 to 249 characters, not `.` or `..`.
pub(super) fn topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("topic name must not be empty".into());
    }
    if name.len() > 249 {
        return Err(format!(
            "topic name longer than 249 characters ({})",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a valid topic name"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "topic name {name:?} contains {c:?}; allowed are ASCII letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// A replication slot name: `[a-z0-9_]`, 1 to 63 characters.
fn slot_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err("slot name must have 1 to 63 characters".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
    {
        return Err(format!(
            "slot name {name:?} contains {c:?}; allowed are lowercase letters, digits and '_'"
        ));
    }
    Ok(())
}

/// Checks a topic template: `{aggregate_type}` is the only placeholder, the rest is a valid topic name.
fn topic_template(template: &str) -> Result<(), String> {
    let mut sample = String::new();
    let mut rest = template;
    while let Some(open) = rest.find(['{', '}']) {
        if rest[open..].starts_with('}') {
            return Err(format!("unmatched '}}' in {template:?}"));
        }
        sample.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("unmatched '{{' in {template:?}"))?;
        let name = &after[..close];
        if name != "aggregate_type" {
            return Err(format!(
                "unknown placeholder {{{name}}} in {template:?}; the only placeholder is {{aggregate_type}}"
            ));
        }
        sample.push('x');
        rest = &after[close + 1..];
    }
    sample.push_str(rest);
    topic_name(&sample)
}

/// Parses `schema.table` or `table` (schema `public`) with SQL identifier rules: unquoted parts are
/// `[A-Za-z_][A-Za-z0-9_$]*` folded to lowercase, `"quoted"` parts keep their case (`""` is a quote).
pub(super) fn parse_table(s: &str) -> Result<(String, String), String> {
    let mut parts = Vec::new();
    let mut chars = s.trim().chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    Some('"') => break,
                    Some(c) => part.push(c),
                    None => return Err(format!("unterminated quoted name in {s:?}")),
                }
            }
            if part.is_empty() {
                return Err(format!("empty quoted name in {s:?}"));
            }
        } else {
            while let Some(&c) = chars.peek() {
                let ok = if part.is_empty() {
                    c.is_alphabetic() || c == '_'
                } else {
                    c.is_alphanumeric() || c == '_' || c == '$'
                };
                if !ok {
                    break;
                }
                part.extend(c.to_lowercase());
                chars.next();
            }
            if part.is_empty() {
                return Err(format!(
                    "{s:?} is not schema.table or table (names are letters, digits, '_', '$', or \"quoted\")"
                ));
            }
        }
        if part.len() > 63 {
            return Err(format!("name {part:?} is longer than 63 bytes"));
        }
        parts.push(part);
        match chars.next() {
            None => break,
            Some('.') => {}
            Some(c) => {
                return Err(format!(
                    "unexpected {c:?} in {s:?}; expected schema.table or table"
                ))
            }
        }
    }
    match <[String; 2]>::try_from(parts) {
        Ok([schema, table]) => Ok((schema, table)),
        Err(parts) if parts.len() == 1 => Ok(("public".to_string(), parts[0].clone())),
        Err(_) => Err(format!(
            "{s:?} has more than two parts; expected schema.table or table"
        )),
    }
}
