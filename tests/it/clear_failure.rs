//! Clear failure: bad configuration, broken invariants and rows Postgres cannot send stop the
//! relay with the right exit code (78 configuration, 69 a server unavailable past the retry
//! budget, 70 a broken invariant, 65 bad data) and a message that names the key, the server, the
//! row or the topic; unreachable servers are retried with backoff first, a wrong password is not
//! retried in a storm, and no secret is printed. After the documented fix the relay resumes
//! without loss. More value-level cases (types, ranges, enums, secrets) are unit tests in
//! `src/config/tests.rs`.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use outbox_relay_dev::postgres::slot_info;
use outbox_relay_dev::{
    exclusive_servers, free_port, shared_servers, verify, wait_until, write_concurrently,
    write_txn, Kafka, NewEvent, Postgres, RelayConfig,
};

use crate::support::{
    bin, cli_with, fresh, insert_raw, restart, setup, spawn, spec, start, stop, topics, verdict,
    wait_published,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_bad_configurations_each_exit_with_their_code_naming_the_key_or_server() -> Result<()>
{
    let _guard = shared_servers().await;
    let (_db, base) = fresh().await?;
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
        let out = cli_with(&cfg, args, &[])?;
        let (got, text) = (out.code(), out.text());
        if got != Some(*code) || !text.contains(needle.as_str()) {
            failures.push(format!(
                "{what}: exit {got:?} (want {code}), wanted {needle:?} in: {text}"
            ));
        }
        if text.contains(Postgres::RELAY_PASSWORD) {
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
async fn wal_level_not_logical_is_refused_with_78() -> Result<()> {
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
    let out = cli_with(&cfg, &["validate", "--connect"], &[])?;
    let (code, text) = (out.code(), out.text());
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
    let (_db, mut cfg) = fresh().await?;
    let closed = free_port();
    cfg.set("postgres.port", i64::from(closed));
    cfg.set("retry.initial_backoff_ms", 100i64);
    cfg.set("retry.max_backoff_ms", 800i64);
    cfg.set("retry.max_elapsed_ms", 4_000i64);
    let started = Instant::now();
    let mut relay = spawn(&cfg, &[])?;
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
    let (_db, mut cfg) = fresh().await?;
    cfg.set("postgres.password", "definitely-wrong");
    let mut relay = spawn(&cfg, &[])?;
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
async fn configuration_errors_name_the_key_and_never_print_the_secret() -> Result<()> {
    let _guard = shared_servers().await;
    let (_db, base) = fresh().await?;
    let secret = "s3cr3t-Value-Never-Printed";

    let check =
        |cfg: &RelayConfig, env: Vec<(String, String)>, code: i32, needle: &str| -> Result<()> {
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let out = cli_with(cfg, &["validate"], &env)?;
            let all = out.text();
            ensure!(
                out.code() == Some(code),
                "expected exit {code}, got {:?}: {all}",
                out.status
            );
            ensure!(all.contains(needle), "expected {needle:?} in: {all}");
            ensure!(!all.contains(secret), "secret leaked: {all}");
            Ok(())
        };

    let mut c = base.clone();
    c.set("postgres.unknown_key", 1i64);
    check(&c, vec![], 78, "unknown_key")?;
    let mut c = base.clone();
    c.set("batch.max_events", "lots");
    check(&c, vec![], 78, "batch.max_events")?;
    let mut c = base.clone();
    c.set("postgres.port", "not-a-port");
    check(&c, vec![], 78, "postgres.port")?;
    // A secret of the wrong type is named, its value never echoed.
    let mut c = base.clone();
    c.set("postgres.password", toml::Value::Array(vec![secret.into()]));
    check(&c, vec![], 78, "postgres.password")?;
    let mut c = base.clone();
    c.unset("postgres.slot");
    c.set("kafka.checkpoint_topic", "bad topic!");
    check(&c, vec![], 78, "kafka.checkpoint_topic")?;
    // Password from the environment and from a file: valid, and never echoed.
    let mut c = base.clone();
    c.unset("postgres.password");
    check(
        &c,
        vec![("OUTBOX_RELAY__POSTGRES__PASSWORD".into(), secret.into())],
        0,
        "valid",
    )?;
    let dir = tempfile::tempdir()?;
    let pw = dir.path().join("pw");
    std::fs::write(&pw, format!("{secret}\n"))?;
    let mut c = base.clone();
    c.unset("postgres.password");
    c.set("postgres.password_file", pw.to_string_lossy().to_string());
    check(&c, vec![], 0, "valid")?;
    // A wrong password reaches the server: a clear message, exit 78, no secret.
    let mut c = base.clone();
    c.set("postgres.password", secret);
    let out = cli_with(&c, &["validate", "--connect"], &[])?;
    let all = out.text();
    ensure!(
        out.code() == Some(78),
        "wrong password: {:?} {all}",
        out.status
    );
    ensure!(all.contains("authentication failed"), "{all}");
    ensure!(!all.contains(secret), "secret leaked: {all}");
    Ok(())
}

/// In the compatibility set: the slot invariant. A slot moved past unpublished events by hand
/// stops the relay with 70, naming `confirmed_flush_lsn`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_advanced_behind_the_relays_back_stops_it_with_70() -> Result<()> {
    let _guard = shared_servers().await;
    let types = ["booking"];
    let (db, cfg) = setup(&types).await?;
    let mut relay = start(&cfg).await?;
    let mut client = db.client().await?;
    let written = write_txn(
        &mut client,
        &[NewEvent::new("booking", "b1", "Created", "{}")],
    )
    .await?;
    wait_published(&topics(&cfg, &types), &written, Duration::from_secs(60)).await?;
    stop(&mut relay).await?;
    // Events nobody published, then the slot moved past them by hand.
    write_txn(
        &mut client,
        &[NewEvent::new("booking", "b2", "Created", "{}")],
    )
    .await?;
    client
        .execute(
            "SELECT pg_replication_slot_advance($1, pg_current_wal_lsn())",
            &[&cfg.slot],
        )
        .await?;
    let mut relay = relay.respawn(&bin(), &[])?;
    let status = relay
        .wait_exit(Duration::from_secs(60))
        .await
        .context("relay kept running")?;
    let logs = relay.logs();
    ensure!(status.code() == Some(70), "exit {status:?}\n{logs}");
    ensure!(
        logs.contains("confirmed_flush_lsn") && logs.contains("behind the relay's back"),
        "{logs}"
    );
    Ok(())
}

/// A slot dropped while the relay is down, with a checkpoint in Kafka, is a lost slot: the relay
/// stops with 70 naming it and the recovery, and creates no new slot (whatever `create_slot` says),
/// since a fresh slot would start at the server's current position and skip every event between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_slot_with_a_checkpoint_stops_with_70_and_no_new_slot_is_made() -> Result<()> {
    let _guard = shared_servers().await;
    let types = ["booking"];
    let (db, cfg) = setup(&types).await?;
    let mut relay = start(&cfg).await?;
    let mut client = db.client().await?;
    let written = write_txn(
        &mut client,
        &[NewEvent::new("booking", "b1", "Created", "{}")],
    )
    .await?;
    wait_published(&topics(&cfg, &types), &written, Duration::from_secs(60)).await?;
    stop(&mut relay).await?;
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&cfg.slot])
        .await?;
    // Events written meanwhile: a new slot would never see them.
    write_txn(
        &mut client,
        &[NewEvent::new("booking", "b2", "Created", "{}")],
    )
    .await?;
    let mut relay = relay.respawn(&bin(), &[])?;
    let status = relay
        .wait_exit(Duration::from_secs(60))
        .await
        .context("relay kept running")?;
    let logs = relay.logs();
    ensure!(status.code() == Some(70), "exit {status:?}\n{logs}");
    ensure!(
        logs.contains("does not exist, but the checkpoint")
            && logs.contains("was lost")
            && logs.contains("backfill")
            && logs.contains("reset-checkpoint"),
        "{logs}"
    );
    ensure!(
        !logs.contains("behind the relay's back"),
        "a lost slot is not a moved one:\n{logs}"
    );
    ensure!(
        slot_info(&client, &cfg.slot).await?.is_none(),
        "the relay made a new slot"
    );
    Ok(())
}

/// In a SQL_ASCII database a text column can hold bytes that are not UTF-8. The walsender then
/// refuses to send the row (it converts to the session's UTF-8): no client can see it, so the
/// relay stops with a clear message and exit 65 instead of reconnecting forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_in_a_sql_ascii_database_stops_with_65_naming_it() -> Result<()> {
    let _guard = shared_servers().await;
    let pg = Postgres::shared();
    let kafka = Kafka::shared();
    let db = pg.new_database().await?;
    let admin = pg.admin("postgres").await?;
    admin
        .batch_execute(&format!("DROP DATABASE {}", db.name))
        .await?;
    admin
        .batch_execute(&format!(
            "CREATE DATABASE {} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
            db.name
        ))
        .await?;
    db.apply_sql().await?;
    let client = db.client().await?;
    let cfg = RelayConfig::new(pg, &db, kafka);
    cfg.create_topics(kafka, &["booking"], 1).await?;
    let mut relay = start(&cfg).await?;
    // 0xC3 0x28: an invalid UTF-8 sequence in the key column.
    insert_raw(&client, "'booking', E'\\xc3\\x28', 'E', '{}', NULL").await?;
    let status = relay
        .wait_exit(Duration::from_secs(60))
        .await
        .context("relay kept retrying a row Postgres cannot send")?;
    let logs = relay.logs();
    ensure!(status.code() == Some(65), "exit {status:?}\n{logs}");
    ensure!(logs.contains("UTF-8"), "{logs}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_column_changes_nothing_and_a_renamed_mapped_one_stops_with_78_until_mapped(
) -> Result<()> {
    let _guard = shared_servers().await;
    let types = ["booking"];
    let (db, mut cfg) = setup(&types).await?;
    let mut relay = start(&cfg).await?;
    let mut client = db.client().await?;
    let topics = topics(&cfg, &types);
    let mut written = write_concurrently(&db, &spec(2_000, &types, &[1, 10], 1)).await?;
    client
        .batch_execute("ALTER TABLE outbox ADD COLUMN tenant text DEFAULT 'acme'")
        .await?;
    written.extend(write_concurrently(&db, &spec(2_000, &types, &[1, 10], 1)).await?);
    wait_published(&topics, &written, Duration::from_secs(60)).await?;
    ensure!(
        relay.is_running(),
        "added column stopped the relay:\n{}",
        relay.logs()
    );

    // Renaming a mapped column: a clear stop, never wrong data.
    client
        .batch_execute("ALTER TABLE outbox RENAME COLUMN event_type TO kind")
        .await?;
    client
        .batch_execute(
            "CREATE OR REPLACE FUNCTION outbox_write(p_aggregate_type text, p_aggregate_id text, p_event_type text, p_payload jsonb, p_headers jsonb DEFAULT NULL) RETURNS uuid LANGUAGE sql AS $$ INSERT INTO public.outbox (aggregate_type, aggregate_id, kind, payload, headers) VALUES (p_aggregate_type, p_aggregate_id, p_event_type, p_payload, p_headers) RETURNING id $$",
        )
        .await?;
    let renamed = write_txn(
        &mut client,
        &[NewEvent::new("booking", "b-9", "Renamed", "{}")],
    )
    .await?;
    let status = relay
        .wait_exit(Duration::from_secs(60))
        .await
        .context("relay kept running with a missing mapped column")?;
    let logs = relay.logs();
    ensure!(status.code() == Some(78), "exit {status:?}\n{logs}");
    ensure!(logs.contains("event_type"), "{logs}");
    // Fix the mapping; it resumes without loss.
    cfg.set("outbox.columns.event_type", "kind");
    let mut relay = start(&cfg).await?;
    written.extend(renamed);
    wait_published(&topics, &written, Duration::from_secs(60)).await?;
    stop(&mut relay).await?;
    let received = Kafka::shared().collect(&topics).await?;
    verify(&written, &received).assert_exactly_once();
    let last = received
        .iter()
        .find(|r| r.header("event_type") == Some("Renamed"))
        .context("renamed event")?;
    ensure!(last.key_str() == Some("b-9"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidated_slot_stops_the_relay_with_70() -> Result<()> {
    let _guard = exclusive_servers().await;
    let types = ["booking"];
    let (db, cfg) = setup(&types).await?;
    let mut relay = start(&cfg).await?;
    stop(&mut relay).await?;
    let pg = Postgres::shared();
    let admin = pg.admin("postgres").await?;
    admin
        .batch_execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
        .await?;
    admin.batch_execute("SELECT pg_reload_conf()").await?;
    let result = async {
        let client = db.client().await?;
        client
            .batch_execute("CREATE TABLE filler (pad text)")
            .await?;
        let slot = cfg.slot.clone();
        wait_until(Duration::from_secs(120), "slot invalidated", || async {
            client
                .batch_execute(
                    "INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 20000); \
                     SELECT pg_switch_wal(); CHECKPOINT",
                )
                .await?;
            let info = slot_info(&client, &slot).await?.context("slot")?;
            Ok((info.wal_status.as_deref() == Some("lost")).then_some(()))
        })
        .await?;
        let mut relay = relay.respawn(&bin(), &[])?;
        let status = relay
            .wait_exit(Duration::from_secs(60))
            .await
            .context("relay kept running on an invalidated slot")?;
        let logs = relay.logs();
        ensure!(status.code() == Some(70), "exit {status:?}\n{logs}");
        ensure!(logs.contains("invalidated"), "{logs}");
        Ok::<_, anyhow::Error>(())
    }
    .await;
    admin
        .batch_execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
        .await?;
    admin.batch_execute("SELECT pg_reload_conf()").await?;
    result
}

/// Produces one record (or a tombstone) to the checkpoint topic under the relay's key, as an
/// operator would with a console producer.
fn produce_checkpoint_record(topic: &str, key: &[u8], value: Option<&[u8]>) -> Result<()> {
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let p: ThreadedProducer<DefaultProducerContext> = Kafka::shared().client_config().create()?;
    let mut rec = BaseRecord::<[u8], [u8]>::to(topic).partition(0).key(key);
    if let Some(v) = value {
        rec = rec.payload(v);
    }
    p.send(rec).map_err(|(e, _)| e)?;
    p.flush(Duration::from_secs(30))?;
    Ok(())
}

/// A checkpoint record that cannot be read is a broken invariant (exit 70, naming the topic and
/// offset), never a silent restart from scratch; the README's reset (a tombstone for the relay's
/// key) then resumes from the slot's position with nothing lost or published twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_checkpoint_stops_with_70_and_the_readme_reset_resumes() -> Result<()> {
    let _guard = shared_servers().await;
    let types = ["booking"];
    let (db, cfg) = setup(&types).await?;
    let mut relay = start(&cfg).await?;
    let topics = topics(&cfg, &types);
    let mut written = write_concurrently(&db, &spec(300, &types, &[1, 10], 2)).await?;
    let kafka = Kafka::shared();
    wait_published(&topics, &written, Duration::from_secs(60)).await?;
    stop(&mut relay).await?;

    // The relay's checkpoint key, from its own last checkpoint.
    let checkpoints = kafka
        .collect(std::slice::from_ref(&cfg.checkpoint_topic))
        .await?;
    let key = checkpoints
        .last()
        .and_then(|r| r.key.clone())
        .context("checkpoint key")?;
    produce_checkpoint_record(&cfg.checkpoint_topic, &key, Some(b"not a checkpoint"))?;
    let mut corrupt = relay.respawn(&bin(), &[])?;
    let status = corrupt
        .wait_exit(Duration::from_secs(60))
        .await
        .context("the relay ran on an unreadable checkpoint")?;
    let logs = corrupt.logs();
    ensure!(status.code() == Some(70), "exit {status:?}\n{logs}");
    ensure!(
        logs.contains("unreadable") && logs.contains(&cfg.checkpoint_topic),
        "{logs}"
    );

    // Reset as the README says: a tombstone for the key. The slot's position is the last ack.
    produce_checkpoint_record(&cfg.checkpoint_topic, &key, None)?;
    let mut relay = restart(&corrupt).await?;
    ensure!(
        relay
            .logs()
            .matches("no checkpoint yet for this slot")
            .count()
            == 2,
        "{}",
        relay.logs()
    );
    written.extend(write_concurrently(&db, &spec(200, &types, &[1, 10], 2)).await?);
    wait_published(&topics, &written, Duration::from_secs(60)).await?;
    stop(&mut relay).await?;
    let verdict = verdict(&topics, &written).await?;
    eprintln!("corrupt checkpoint, then reset: {verdict}");
    ensure!(verdict.is_exactly_once(), "{verdict}\n{}", relay.logs());
    Ok(())
}
