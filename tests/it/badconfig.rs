//! Bad configuration against the real servers (issue: fault matrix, bad configuration): every
//! case gives the right exit code (78 configuration, 69 a server unavailable past the retry budget)
//! and a message that names the key or the server; unreachable servers are retried with backoff
//! (and the log says so); a wrong password is not retried in a storm. More value-level cases
//! (types, ranges, enums, secrets) are unit tests in `src/config/tests.rs`.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use outbox_relay_dev::{
    free_port, run_cli, shared_servers, Kafka, Postgres, RelayConfig, RelayProcess,
};

use crate::common::bin;

/// Writes `cfg` to a file and runs `outbox-relay <args> --config <file>`.
fn cli(cfg: &RelayConfig, args: &[&str]) -> Result<(Option<i32>, String)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, cfg.to_toml())?;
    let mut all: Vec<&str> = args.to_vec();
    let p = path.to_str().context("path")?.to_string();
    all.push("--config");
    all.push(&p);
    let (status, out, err) = run_cli(&bin(), &all, &[])?;
    Ok((status.code(), format!("{out}{err}")))
}

async fn base() -> Result<RelayConfig> {
    let pg = Postgres::shared();
    let kafka = Kafka::shared();
    let db = pg.new_database().await?;
    Ok(RelayConfig::new(pg, &db, kafka))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_bad_configurations_each_name_the_key_or_server() -> Result<()> {
    let _guard = shared_servers().await;
    let base = base().await?;
    let pg = Postgres::shared();
    let closed = free_port();
    type Edit = Box<dyn Fn(&mut RelayConfig)>;
    // (what, edit, subcommand args, exit code, text the message must contain)
    let cases: Vec<(&str, Edit, Vec<&str>, i32, String)> = vec![
        (
            "unknown key",
            Box::new(|c| {
                c.set("batch.max_event", 5i64);
            }),
            vec!["validate"],
            78,
            "batch.max_event".into(),
        ),
        (
            "wrong type",
            Box::new(|c| {
                c.set("postgres.create_slot", "maybe");
            }),
            vec!["validate"],
            78,
            "postgres.create_slot".into(),
        ),
        (
            "out of range",
            Box::new(|c| {
                c.set("batch.max_events", 0i64);
            }),
            vec!["validate"],
            78,
            "batch.max_events".into(),
        ),
        (
            "bad enum",
            Box::new(|c| {
                c.set("postgres.sslmode", "verify_full");
            }),
            vec!["validate"],
            78,
            "verify-full".into(),
        ),
        (
            "owned librdkafka key",
            Box::new(|c| {
                c.set("kafka.properties.acks", "1");
            }),
            vec!["validate"],
            78,
            "acks".into(),
        ),
        (
            "invalid topic name",
            Box::new(|c| {
                c.set("errors.dead_letter_topic", "dead letters");
            }),
            vec!["validate"],
            78,
            "errors.dead_letter_topic".into(),
        ),
        (
            "invalid slot name",
            Box::new(|c| {
                c.set("postgres.slot", "Bad-Slot");
            }),
            vec!["validate"],
            78,
            "postgres.slot".into(),
        ),
        (
            "unknown template placeholder",
            Box::new(|c| {
                c.set("routing.topic_template", "outbox.{aggregate}");
            }),
            vec!["validate"],
            78,
            "routing.topic_template".into(),
        ),
        (
            "verify-full without a CA",
            Box::new(|c| {
                c.set("postgres.sslmode", "verify-full");
            }),
            vec!["validate"],
            78,
            "postgres.sslrootcert".into(),
        ),
        (
            "both password sources",
            Box::new(|c| {
                c.set("postgres.password_file", "/etc/hostname");
            }),
            vec!["validate"],
            78,
            "password_file".into(),
        ),
        (
            "missing password file",
            Box::new(|c| {
                c.unset("postgres.password");
                c.set("postgres.password_file", "/nonexistent/pw");
            }),
            vec!["validate"],
            78,
            "postgres.password_file".into(),
        ),
        (
            "sasl settings without sasl",
            Box::new(|c| {
                c.set("kafka.sasl_username", "relay");
            }),
            vec!["validate"],
            78,
            "kafka.sasl_username".into(),
        ),
        (
            "wrong password",
            Box::new(|c| {
                c.set("postgres.password", "not-the-password");
            }),
            vec!["validate", "--connect"],
            78,
            "authentication failed".into(),
        ),
        (
            "database missing",
            Box::new(|c| {
                c.set("postgres.dbname", "no_such_db");
            }),
            vec!["validate", "--connect"],
            78,
            "no_such_db".into(),
        ),
        (
            "publication missing",
            Box::new(|c| {
                c.set("postgres.publication", "no_such_pub");
            }),
            vec!["validate", "--connect"],
            78,
            "no_such_pub".into(),
        ),
        (
            "table not published",
            Box::new(|c| {
                c.set("outbox.table", "public.other");
            }),
            vec!["validate", "--connect"],
            78,
            "public.other".into(),
        ),
        (
            "mapped column missing",
            Box::new(|c| {
                c.set("outbox.columns.event_type", "kind");
            }),
            vec!["validate", "--connect"],
            78,
            "outbox.columns.event_type".into(),
        ),
        (
            "slot missing, create_slot = false",
            Box::new(|c| {
                c.set("postgres.create_slot", false);
            }),
            vec!["validate", "--connect"],
            78,
            "create_slot".into(),
        ),
        (
            "checkpoint topic missing, creation off",
            Box::new(|c| {
                c.set("kafka.create_checkpoint_topic", false);
            }),
            vec!["validate", "--connect"],
            78,
            "kafka.create_checkpoint_topic".into(),
        ),
        (
            "postgres unreachable",
            Box::new(move |c| {
                c.set("postgres.port", i64::from(closed));
            }),
            vec!["validate", "--connect"],
            69,
            format!("127.0.0.1:{closed}"),
        ),
        (
            "postgres host unknown",
            Box::new(|c| {
                c.set("postgres.host", "no-such-host.invalid");
            }),
            vec!["validate", "--connect"],
            69,
            "no-such-host.invalid".into(),
        ),
        (
            "kafka unreachable",
            Box::new(move |c| {
                c.set("kafka.bootstrap_servers", format!("127.0.0.1:{closed}"));
                c.set("kafka.transaction_timeout_ms", 5_000i64);
            }),
            vec!["validate", "--connect"],
            69,
            format!("127.0.0.1:{closed}"),
        ),
    ];
    // A table outside the publication, for "table not published".
    let admin = pg
        .admin(
            base.get("postgres.dbname")
                .and_then(|v| v.as_str())
                .context("db")?,
        )
        .await?;
    admin.batch_execute("CREATE TABLE other (id int)").await?;
    let mut failures = Vec::new();
    for (what, edit, args, code, needle) in &cases {
        let mut cfg = base.clone();
        edit(&mut cfg);
        let (got, text) = cli(&cfg, args)?;
        if got != Some(*code) || !text.contains(needle.as_str()) {
            failures.push(format!(
                "{what}: exit {got:?} (want {code}), wanted {needle:?} in: {text}"
            ));
        }
        if text.contains(outbox_relay_dev::Postgres::RELAY_PASSWORD) {
            failures.push(format!("{what}: the password leaked: {text}"));
        }
    }
    ensure!(cases.len() >= 20);
    ensure!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_level_not_logical_is_refused() -> Result<()> {
    // A private cluster, restarted with wal_level = replica.
    let pg = tokio::task::spawn_blocking(Postgres::start_new).await??;
    let admin = pg.admin("postgres").await?;
    admin
        .batch_execute("ALTER SYSTEM SET wal_level = replica")
        .await?;
    drop(admin);
    pg.restart().await?;
    let db = pg.new_database().await?;
    let cfg = RelayConfig::new(&pg, &db, Kafka::shared());
    let (code, text) = cli(&cfg, &["validate", "--connect"])?;
    ensure!(code == Some(78), "exit {code:?}: {text}");
    ensure!(
        text.contains("wal_level") && text.contains("logical"),
        "{text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_postgres_is_retried_with_backoff_then_exit_69() -> Result<()> {
    let _guard = shared_servers().await;
    let mut cfg = base().await?;
    let closed = free_port();
    cfg.set("postgres.port", i64::from(closed));
    cfg.set("retry.initial_backoff_ms", 100i64);
    cfg.set("retry.max_backoff_ms", 800i64);
    cfg.set("retry.max_elapsed_ms", 4_000i64);
    let started = Instant::now();
    let mut relay = RelayProcess::spawn(&bin(), &cfg.to_toml(), &[])?;
    let status = relay
        .wait_exit(Duration::from_secs(60))
        .await
        .context("relay did not give up")?;
    let logs = relay.logs();
    ensure!(status.code() == Some(69), "exit {status:?}\n{logs}");
    let retries = logs.matches("retry_in_ms").count();
    ensure!(
        retries >= 3,
        "expected several logged retries, got {retries}:\n{logs}"
    );
    ensure!(logs.contains(&format!("127.0.0.1:{closed}")), "{logs}");
    ensure!(
        started.elapsed() >= Duration::from_secs(4),
        "gave up too early"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_stops_at_once_without_a_retry_storm() -> Result<()> {
    let _guard = shared_servers().await;
    let mut cfg = base().await?;
    cfg.set("postgres.password", "definitely-wrong");
    let mut relay = RelayProcess::spawn(&bin(), &cfg.to_toml(), &[])?;
    let status = relay
        .wait_exit(Duration::from_secs(30))
        .await
        .context("relay kept retrying a wrong password")?;
    let logs = relay.logs();
    ensure!(status.code() == Some(78), "exit {status:?}\n{logs}");
    // One attempt, no reconnect loop.
    ensure!(
        !logs.contains("retry_in_ms"),
        "retried a wrong password:\n{logs}"
    );
    ensure!(
        !logs.contains("definitely-wrong"),
        "password leaked:\n{logs}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpoint_topic_is_created_compacted_when_allowed() -> Result<()> {
    let _guard = shared_servers().await;
    let cfg = base().await?;
    let mut relay = crate::common::start(&cfg).await?;
    let kafka = Kafka::shared();
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        kafka.client_config().create()?;
    let res = admin
        .describe_configs(
            [&rdkafka::admin::ResourceSpecifier::Topic(
                &cfg.checkpoint_topic,
            )],
            &rdkafka::admin::AdminOptions::new(),
        )
        .await?;
    let cfgs = res
        .into_iter()
        .next()
        .context("one result")?
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let policy = cfgs
        .get("cleanup.policy")
        .and_then(|e| e.value.clone())
        .context("cleanup.policy")?;
    ensure!(policy == "compact", "cleanup.policy = {policy}");
    relay.sigterm()?;
    relay.wait_exit(Duration::from_secs(30)).await;
    Ok(())
}

/// `validate --connect` on a good configuration says what it found: before the first start the
/// slot and the checkpoint topic are still to be created (and a missing dead-letter topic is a
/// warning, not an error); once they exist, it shows them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_connect_reports_the_slot_and_topics_it_found() -> Result<()> {
    let _guard = shared_servers().await;
    let mut cfg = base().await?;
    let dead_letter = format!("{}.missing_dead_letter", cfg.topic_prefix);
    cfg.set("errors.on_error", "dead_letter");
    cfg.set("errors.dead_letter_topic", dead_letter.as_str());

    let (code, text) = cli(&cfg, &["validate", "--connect"])?;
    ensure!(code == Some(0), "exit {code:?}: {text}");
    for needle in [
        format!(
            "slot {:?} does not exist yet; the relay will create it",
            cfg.slot
        ),
        format!(
            "checkpoint topic {:?} does not exist yet; the relay will create it",
            cfg.checkpoint_topic
        ),
        format!("warning: dead-letter topic {dead_letter:?} does not exist"),
        "both servers are ready".to_string(),
    ] {
        ensure!(text.contains(&needle), "wanted {needle:?} in: {text}");
    }

    // Now the slot and the checkpoint topic exist.
    let db = cfg
        .get("postgres.dbname")
        .and_then(|v| v.as_str())
        .context("db")?
        .to_string();
    let admin = Postgres::shared().admin(&db).await?;
    admin
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&cfg.slot],
        )
        .await?;
    cfg.create_checkpoint_topic(Kafka::shared()).await?;
    let (code, text) = cli(&cfg, &["validate", "--connect"])?;
    ensure!(code == Some(0), "exit {code:?}: {text}");
    for needle in [
        format!("slot {:?} exists (confirmed_flush_lsn", cfg.slot),
        format!("checkpoint topic {:?} exists", cfg.checkpoint_topic),
    ] {
        ensure!(text.contains(&needle), "wanted {needle:?} in: {text}");
    }
    admin
        .execute("SELECT pg_drop_replication_slot($1)", &[&cfg.slot])
        .await?;
    Ok(())
}
