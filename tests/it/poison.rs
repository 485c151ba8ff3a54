//! Rows that cannot be published (issue: fault matrix, poison rows; schema and slot): each goes to
//! the dead-letter topic with its reason, event id and LSN in headers, exactly once (same Kafka
//! transaction, across a kill -9), and published + dead-lettered = written; or, with
//! `on_error = "stop"`, the relay stops naming the row and resumes without loss once the
//! configuration is fixed. Schema changes while running, and an invalidated slot.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use outbox_relay_dev::postgres::slot_info;
use outbox_relay_dev::{
    exclusive_servers, shared_servers, verify, wait_until, write_concurrently, write_txn, Kafka,
    NewEvent, Postgres, RelayConfig, Written,
};
use tokio_postgres::Client;

use crate::common::{bin, setup, spec, start, topics};

/// Inserts one row with raw SQL values (so it may be bad) and returns its event id.
async fn insert_raw(client: &Client, values: &str) -> Result<String> {
    let row = client
        .query_one(
            &format!(
                "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, headers) \
                 VALUES ({values}) RETURNING id::text"
            ),
            &[],
        )
        .await
        .with_context(|| format!("insert {values}"))?;
    Ok(row.get(0))
}

fn dlq_by_id(records: &[outbox_relay_dev::Record]) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for r in records {
        out.entry(r.header("event_id").unwrap_or("?").to_string())
            .or_default()
            .push(r.header("dlq_reason").unwrap_or("?").to_string());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_are_dead_lettered_exactly_once_with_their_reason() -> Result<()> {
    let _guard = shared_servers().await;
    let types = ["booking", "car"];
    let (db, mut cfg) = setup(&types).await?;
    let kafka = Kafka::shared();
    let client = db.client().await?;
    // A table laid out loosely, as some users have it: text payload and headers, nullable key.
    client
        .batch_execute(
            "ALTER TABLE outbox ALTER COLUMN payload TYPE text, ALTER COLUMN headers TYPE text, \
             ALTER COLUMN aggregate_id DROP NOT NULL",
        )
        .await?;
    let dlq = format!("{}.dead_letter", cfg.topic_prefix);
    kafka.create_topic(&dlq, 1, &[]).await?;
    let small = cfg.topic_for("small");
    kafka
        .create_topic(&small, 1, &[("max.message.bytes", "2000")])
        .await?;
    cfg.set("errors.dead_letter_topic", dlq.clone());
    cfg.set("routing.strict", true);
    for t in ["booking", "car", "small", "missing"] {
        cfg.set(&format!("routing.topics.{t}"), cfg.topic_for(t));
    }
    let mut relay = start(&cfg).await?;

    let writer = {
        let db = db.clone();
        let s = spec(20_000, &types, &[1, 10, 100], 2);
        tokio::spawn(async move { write_concurrently(&db, &s).await })
    };
    // Incompressible (lz4 would shrink a repeated character below the topic's limit).
    let big = "(SELECT json_build_object('pad', string_agg(md5(random()::text), ''))::text FROM generate_series(1, 400))";
    let huge = "y".repeat(2_000_000);
    let cases: Vec<(&str, String)> = vec![
        (
            "payload_not_json",
            "'booking', 'b-1', 'E', 'not json', NULL".into(),
        ),
        ("null_column", "'booking', NULL, 'E', '{}', NULL".into()),
        (
            "empty_aggregate_id",
            "'booking', '', 'E', '{}', NULL".into(),
        ),
        ("unroutable", "'nowhere', 'n-1', 'E', '{}', NULL".into()),
        (
            "headers_not_object",
            "'booking', 'b-2', 'E', '{}', '[1,2]'".into(),
        ),
        (
            "headers_not_json",
            "'booking', 'b-3', 'E', '{}', '{oops'".into(),
        ),
        ("unknown_topic", "'missing', 'm-1', 'E', '{}', NULL".into()),
        (
            "record_too_large",
            format!("'small', 's-1', 'E', {big}, NULL"),
        ),
        (
            "record_too_large",
            format!("'booking', 'b-4', 'E', '{{\"pad\":\"{huge}\"}}', NULL"),
        ),
    ];
    let mut expected: HashMap<String, &str> = HashMap::new();
    for (i, (reason, values)) in cases.iter().enumerate() {
        let id = insert_raw(&client, values).await?;
        expected.insert(id, reason);
        if i == 4 {
            // Dead-lettering is transactional too: a kill in the middle changes nothing.
            relay.kill9().await?;
            relay = relay.respawn(&bin(), &[])?;
        }
    }
    let written = writer.await??;
    let received = kafka
        .collect(
            &topics(&cfg, &types),
            written.len(),
            Duration::from_secs(120),
            true,
        )
        .await?;
    let verdict = verify(&written, &received);
    if !verdict.is_exactly_once() {
        eprintln!("relay logs:\n{}", relay.logs());
    }
    verdict.assert_exactly_once();
    let dead = kafka
        .collect(
            std::slice::from_ref(&dlq),
            expected.len(),
            Duration::from_secs(120),
            true,
        )
        .await?;
    let by_id = dlq_by_id(&dead);
    for (id, reason) in &expected {
        let got = by_id
            .get(id)
            .with_context(|| format!("{id} ({reason}) not dead-lettered"))?;
        ensure!(got.len() == 1, "{id} dead-lettered {} times", got.len());
        ensure!(
            got[0] == *reason,
            "{id}: expected reason {reason}, got {}",
            got[0]
        );
    }
    ensure!(
        by_id.len() == expected.len(),
        "unexpected dead letters: {by_id:?}"
    );
    for r in &dead {
        ensure!(r.header("pg_lsn").is_some() && r.header("dlq_detail").is_some());
    }
    // The original bytes are kept (except for records too large to carry).
    let not_json = dead
        .iter()
        .find(|r| r.header("dlq_reason") == Some("payload_not_json"))
        .context("payload_not_json record")?;
    ensure!(not_json.value_str() == Some("not json"));
    let published = received.len();
    eprintln!(
        "poison rows: written {}, published {published}, dead-lettered {}",
        written.len() + expected.len(),
        dead.len()
    );
    ensure!(published + dead.len() == written.len() + expected.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytea_payloads_arrive_as_bytes_and_bad_ones_are_dead_lettered() -> Result<()> {
    let _guard = shared_servers().await;
    let (db, mut cfg) = setup(&["booking"]).await?;
    let kafka = Kafka::shared();
    let client = db.client().await?;
    client
        .batch_execute(
            "ALTER TABLE outbox ALTER COLUMN payload TYPE bytea USING convert_to(payload::text, 'UTF8')",
        )
        .await?;
    let dlq = format!("{}.dead_letter", cfg.topic_prefix);
    kafka.create_topic(&dlq, 1, &[]).await?;
    cfg.set("errors.dead_letter_topic", dlq.clone());
    let relay = start(&cfg).await?;
    // Not UTF-8, so not JSON either.
    let bad = insert_raw(&client, "'booking', 'b-1', 'E', '\\xfffe'::bytea, NULL").await?;
    let good = insert_raw(
        &client,
        "'booking', 'b-2', 'E', convert_to('{\"ok\":true}', 'UTF8'), NULL",
    )
    .await?;
    let dead = kafka
        .collect(&[dlq], 1, Duration::from_secs(60), true)
        .await?;
    let by_id = dlq_by_id(&dead);
    ensure!(
        by_id.get(&bad).map(|v| v[0].as_str()) == Some("payload_not_json"),
        "{by_id:?}\nrelay logs:\n{}",
        relay.logs()
    );
    ensure!(
        dead[0].value.as_deref() == Some(&[0xff, 0xfe][..]),
        "original bytes kept"
    );
    let published = kafka
        .collect(
            &[cfg.topic_for("booking")],
            1,
            Duration::from_secs(60),
            true,
        )
        .await?;
    ensure!(published.len() == 1 && published[0].header("event_id") == Some(good.as_str()));
    ensure!(
        published[0].value_str() == Some("{\"ok\":true}"),
        "a bytea payload must arrive as its bytes"
    );
    Ok(())
}

/// In a SQL_ASCII database a text column can hold bytes that are not UTF-8. The walsender then
/// refuses to send the row (it converts to the session's UTF-8): no client can see it, so the
/// relay stops with a clear message and exit 65 instead of reconnecting forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_in_a_sql_ascii_database_stops_clearly() -> Result<()> {
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
async fn on_error_stop_names_the_row_and_resumes_after_the_fix() -> Result<()> {
    let _guard = shared_servers().await;
    let types = ["booking"];
    let (db, mut cfg) = setup(&types).await?;
    cfg.set("errors.on_error", "stop");
    cfg.set("routing.strict", true);
    cfg.set("routing.topics.booking", cfg.topic_for("booking"));
    let mut relay = start(&cfg).await?;
    let mut client = db.client().await?;
    let mut written: Vec<Written> = Vec::new();
    written.extend(
        write_txn(
            &mut client,
            &[NewEvent::new("booking", "b-1", "Created", "{\"n\":1}")],
        )
        .await?,
    );
    let bad = write_txn(
        &mut client,
        &[NewEvent::new("invoice", "i-1", "Created", "{}")],
    )
    .await?;
    let after = write_txn(
        &mut client,
        &[NewEvent::new("booking", "b-1", "Changed", "{\"n\":2}")],
    )
    .await?;
    let status = relay
        .wait_exit(Duration::from_secs(60))
        .await
        .context("relay did not stop on the bad row")?;
    let logs = relay.logs();
    ensure!(status.code() == Some(65), "exit {status:?}\n{logs}");
    ensure!(
        logs.contains(&bad[0].id.to_string()) && logs.contains("unroutable"),
        "{logs}"
    );
    // Nothing past the bad row is acknowledged.
    let slot = slot_info(&client, &cfg.slot).await?.context("slot")?;
    let kafka = Kafka::shared();
    let so_far = kafka
        .collect_for(&[cfg.topic_for("booking")], Duration::from_secs(2), true)
        .await?;
    verify(&written, &so_far).assert_exactly_once();
    // The fix: route invoices too; the relay resumes without loss.
    kafka
        .create_topic(&cfg.topic_for("invoice"), 1, &[])
        .await?;
    cfg.set("routing.topics.invoice", cfg.topic_for("invoice"));
    let relay = outbox_relay_dev::RelayProcess::spawn(&bin(), &cfg.to_toml(), &[])?;
    written.extend(bad);
    written.extend(after);
    let received = kafka
        .collect(
            &topics(&cfg, &["booking", "invoice"]),
            written.len(),
            Duration::from_secs(60),
            true,
        )
        .await?;
    verify(&written, &received).assert_exactly_once();
    eprintln!(
        "on_error=stop: stopped with 65 at the bad row (slot confirmed {:?}), resumed after the fix",
        slot.confirmed_flush_lsn
    );
    drop(relay);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alter_table_add_column_and_rename_a_mapped_one() -> Result<()> {
    let _guard = shared_servers().await;
    let types = ["booking"];
    let (db, mut cfg) = setup(&types).await?;
    let mut relay = start(&cfg).await?;
    let mut client = db.client().await?;
    let mut written = write_concurrently(&db, &spec(2_000, &types, &[1, 10], 1)).await?;
    client
        .batch_execute("ALTER TABLE outbox ADD COLUMN tenant text DEFAULT 'acme'")
        .await?;
    written.extend(write_concurrently(&db, &spec(2_000, &types, &[1, 10], 1)).await?);
    let kafka = Kafka::shared();
    let received = kafka
        .collect(
            &topics(&cfg, &types),
            written.len(),
            Duration::from_secs(60),
            true,
        )
        .await?;
    verify(&written, &received).assert_exactly_once();
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
    let _relay = outbox_relay_dev::RelayProcess::spawn(&bin(), &cfg.to_toml(), &[])?;
    written.extend(renamed);
    let received = kafka
        .collect(
            &topics(&cfg, &types),
            written.len(),
            Duration::from_secs(60),
            true,
        )
        .await?;
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
    relay.sigterm()?;
    relay
        .wait_exit(Duration::from_secs(30))
        .await
        .context("stop")?;
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
    let mut written = write_concurrently(&db, &spec(300, &types, &[1, 10], 2)).await?;
    let kafka = Kafka::shared();
    kafka
        .collect(
            &topics(&cfg, &types),
            written.len(),
            Duration::from_secs(60),
            true,
        )
        .await?;
    relay.sigterm()?;
    let status = relay
        .wait_exit(Duration::from_secs(30))
        .await
        .context("no clean stop")?;
    ensure!(status.success(), "stop: {status:?}\n{}", relay.logs());

    // The relay's checkpoint key, from its own last checkpoint.
    let checkpoints = kafka
        .collect(
            std::slice::from_ref(&cfg.checkpoint_topic),
            1,
            Duration::from_secs(30),
            true,
        )
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
    let mut relay = corrupt.respawn(&bin(), &[])?;
    // The log file is shared with the earlier runs: wait for this run's start line.
    let started = |logs: &str| logs.matches("outbox-relay started").count();
    let before = started(&corrupt.logs());
    wait_until(
        Duration::from_secs(60),
        "the relay starts after the reset",
        || {
            let logs = relay.logs();
            async move { Ok((started(&logs) > before).then_some(())) }
        },
    )
    .await?;
    ensure!(relay.is_running(), "{}", relay.logs());
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
    let received = kafka
        .collect(
            &topics(&cfg, &types),
            written.len(),
            Duration::from_secs(60),
            true,
        )
        .await?;
    let verdict = verify(&written, &received);
    eprintln!("corrupt checkpoint, then reset: {verdict}");
    ensure!(verdict.is_exactly_once(), "{verdict}\n{}", relay.logs());
    Ok(())
}
