//! Events without a table, against a real Postgres: what `outbox_emit` (sql/005) writes arrives
//! through pgoutput with the `messages` option, at its place in its transaction, and the relay's
//! decoder turns it into the row the outbox table would have given; a rolled-back transaction's
//! messages never arrive; the function's privileges hold for a writer role and the hardening
//! recipe of sql/005 works.
//!
//! The stream is read with `pg_logical_slot_peek_binary_changes` (the options the relay's
//! transport sends), decoded by `outbox_relay::decode`: no relay, no Kafka.

use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use outbox_relay::decode::{
    self, ColumnMap, MessageDecoder, MessageEvent, OutboxDecoder, OutboxRow, PgOutput,
};
use outbox_relay_dev::util::repo_root;
use outbox_relay_dev::{random_suffix, shared_servers, Postgres, TestDb};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, GenericClient};

/// One pgoutput message of the slot, decoded, with the xid Postgres reports for it.
#[derive(Debug)]
struct Change {
    xid: String,
    msg: PgOutput,
}

/// A database with a pgoutput slot created before anything is written.
async fn db_with_slot() -> Result<(TestDb, Client, String)> {
    let db = Postgres::shared().new_database().await?;
    let admin = db.client().await?;
    let slot = format!("it_msg_{}", random_suffix());
    admin
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await?;
    Ok((db, admin, slot))
}

/// Every change of the slot so far, as the relay would receive it (proto 1, messages on).
async fn peek(client: &Client, slot: &str) -> Result<Vec<Change>> {
    let rows = client
        .query(
            "SELECT xid::text, data FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, \
             'proto_version', '1', 'publication_names', 'outbox_pub', 'messages', 'true')",
            &[&slot],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let data: Vec<u8> = r.get(1);
            Ok(Change {
                xid: r.get(0),
                msg: decode::decode(Bytes::from(data)).context("pgoutput")?,
            })
        })
        .collect()
}

/// A login role that is a member of `outbox_writer`, or not.
async fn login_role(admin: &Client, writer: bool) -> Result<(String, String)> {
    let name = format!("it_w_{}", random_suffix());
    let password = format!("pw-{}", random_suffix());
    admin
        .batch_execute(&format!("CREATE ROLE {name} LOGIN PASSWORD '{password}'"))
        .await?;
    if writer {
        admin
            .batch_execute(&format!("GRANT outbox_writer TO {name}"))
            .await?;
    }
    Ok((name, password))
}

async fn connect(db: &TestDb, user: &str, password: &str) -> Result<Client> {
    let (client, conn) = db
        .config(user, password)
        .connect(tokio_postgres::NoTls)
        .await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// What a committed `outbox_emit` call must decode to, as Postgres itself prints the fields.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Expected {
    id: String,
    aggregate_type: String,
    aggregate_id: String,
    event_type: String,
    payload: String,
    headers: Option<String>,
    created_at: String,
}

impl Expected {
    fn matches(&self, row: &OutboxRow) -> bool {
        row.id == self.id
            && row.aggregate_type == self.aggregate_type
            && row.aggregate_id == self.aggregate_id
            && row.event_type == self.event_type
            && row.payload[..] == *self.payload.as_bytes()
            && row.headers.as_deref() == self.headers.as_deref().map(str::as_bytes)
            && row.created_at.as_deref() == Some(self.created_at.as_str())
    }
}

/// One `outbox_emit` call in the open transaction of `client`, in the session time zone `tz`;
/// returns what it must decode to (created_at as the relay's UTC session prints `now()`).
async fn emit(
    client: &impl GenericClient,
    tz: &str,
    event: (&str, &str, &str, &str, Option<&str>),
) -> Result<Expected> {
    let (aggregate_type, aggregate_id, event_type, payload, headers) = event;
    client
        .batch_execute(&format!(
            "SET LOCAL TimeZone = '{tz}'; SET LOCAL DateStyle = 'SQL, DMY'"
        ))
        .await?;
    let row = client
        .query_one(
            "SELECT outbox_emit($1, $2, $3, $4::text::jsonb, $5::text::jsonb)::text, \
                    $4::text::jsonb::text, $5::text::jsonb::text",
            &[
                &aggregate_type,
                &aggregate_id,
                &event_type,
                &payload,
                &headers,
            ],
        )
        .await
        .context("outbox_emit")?;
    client
        .batch_execute("SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO'")
        .await?;
    let created_at: String = client.query_one("SELECT now()::text", &[]).await?.get(0);
    Ok(Expected {
        id: row.get(0),
        aggregate_type: aggregate_type.into(),
        aggregate_id: aggregate_id.into(),
        event_type: event_type.into(),
        payload: row.get(1),
        headers: row.get(2),
        created_at,
    })
}

/// The messages of `changes`, decoded with the relay's prefix, in stream order.
fn decoded(changes: &[Change], decoder: &MessageDecoder) -> Vec<(String, MessageEvent)> {
    changes
        .iter()
        .filter_map(|c| match &c.msg {
            PgOutput::Message {
                transactional,
                prefix,
                content,
                ..
            } => Some((
                c.xid.clone(),
                decoder.decode(*transactional, prefix, content.clone()),
            )),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn messages_arrive_through_pgoutput_as_the_rows_they_stand_for() -> Result<()> {
    let _g = shared_servers().await;
    let (db, admin, slot) = db_with_slot().await?;
    let (user, password) = login_role(&admin, true).await?;
    let mut writer = connect(&db, &user, &password).await?;

    // Committed: three events in one transaction, written in three time zones.
    let tx = writer.transaction().await?;
    let mut committed = vec![
        emit(
            &tx,
            "UTC",
            (
                "booking",
                "b-1",
                "BookingCreated",
                r#"{"b": 2, "a": [1, 2.50]}"#,
                None,
            ),
        )
        .await?,
        emit(
            &tx,
            "Asia/Kathmandu",
            (
                "booking",
                "b-\"1\"\\é",
                "BookingConfirmed",
                r#""text""#,
                Some(r#"{"traceparent": "00-abc-01", "n": 1}"#),
            ),
        )
        .await?,
        emit(
            &tx,
            "America/St_Johns",
            ("car", "c-9", "CarReturned", "null", Some("{}")),
        )
        .await?,
    ];
    tx.commit().await?;

    // Rolled back: its messages must never appear.
    let tx = writer.transaction().await?;
    let rolled_back = emit(&tx, "UTC", ("booking", "b-2", "Never", r#"{"x": 1}"#, None)).await?;
    tx.rollback().await?;

    // Another prefix (someone else's messages), and a non-transactional one with ours.
    let other_id: String = writer
        .query_one(
            "SELECT outbox_emit('booking', 'b-3', 'Elsewhere', '{}', NULL, 'billing')::text",
            &[],
        )
        .await?
        .get(0);
    let envelope = format!(
        r#"{{"v":1,"id":"{}","aggregate_type":"booking","aggregate_id":"b-4","event_type":"Loose","payload":{{}}}}"#,
        uuid::Uuid::new_v4()
    );
    writer
        .execute(
            "SELECT pg_logical_emit_message(false, 'outbox', $1::text)",
            &[&envelope],
        )
        .await?;

    // One more committed event, alone in its transaction.
    let tx = writer.transaction().await?;
    committed.push(emit(&tx, "UTC", ("customer", "u-1", "Joined", "{}", None)).await?);
    tx.commit().await?;

    let changes = peek(&admin, &slot).await?;
    let events = decoded(&changes, &MessageDecoder::default());
    let rows: Vec<&OutboxRow> = events
        .iter()
        .filter_map(|(_, e)| match e {
            MessageEvent::Event(row) => Some(row),
            _ => None,
        })
        .collect();
    ensure!(
        rows.len() == committed.len() && rows.iter().zip(&committed).all(|(r, e)| e.matches(r)),
        "decoded rows differ from what was committed:\n rows {rows:#?}\n expected {committed:#?}"
    );
    ensure!(
        !changes.iter().any(|c| matches!(&c.msg,
            PgOutput::Message { content, .. } if String::from_utf8_lossy(content).contains(&rolled_back.id))),
        "the rolled-back transaction's message arrived"
    );
    let others: Vec<_> = events
        .iter()
        .filter(|(_, e)| *e == MessageEvent::OtherPrefix)
        .collect();
    ensure!(
        others.len() == 1,
        "one message with another prefix: {events:?}"
    );
    // With that prefix configured, the same message is an event.
    let billing = changes
        .iter()
        .find_map(|c| match &c.msg {
            PgOutput::Message {
                prefix, content, ..
            } if prefix == "billing" => Some(content.clone()),
            _ => None,
        })
        .context("the billing message")?;
    match MessageDecoder::new("billing").decode(true, "billing", billing) {
        MessageEvent::Event(row) => ensure!(row.id == other_id, "billing event {row:?}"),
        other => anyhow::bail!("billing message: {other:?}"),
    }
    ensure!(
        events
            .iter()
            .filter(|(_, e)| matches!(e, MessageEvent::NonTransactional { event_id: Some(_) }))
            .count()
            == 1,
        "the non-transactional message is told apart: {events:?}"
    );

    // Transactional messages sit inside their transaction: Begin, the messages, Commit, one xid.
    let mut open: Option<String> = None;
    let mut per_txn: Vec<(String, usize)> = Vec::new();
    for c in &changes {
        match &c.msg {
            PgOutput::Begin { xid, .. } => {
                ensure!(open.is_none(), "nested Begin");
                ensure!(xid.to_string() == c.xid, "Begin xid");
                open = Some(c.xid.clone());
                per_txn.push((c.xid.clone(), 0));
            }
            PgOutput::Commit { .. } => {
                ensure!(open.take().is_some(), "Commit without Begin");
            }
            PgOutput::Message {
                transactional: true,
                ..
            } => {
                ensure!(
                    open.as_deref() == Some(c.xid.as_str()),
                    "message outside its transaction"
                );
                if let Some(last) = per_txn.last_mut() {
                    last.1 += 1;
                }
            }
            PgOutput::Message {
                transactional: false,
                ..
            } => ensure!(
                open.is_none(),
                "a non-transactional message inside a transaction"
            ),
            other => anyhow::bail!("unexpected change {other:?}"),
        }
    }
    // Postgres 14 also sends the transactions that decoded to nothing (15 and later skip them).
    let sizes: Vec<usize> = per_txn.iter().map(|(_, n)| *n).filter(|n| *n > 0).collect();
    ensure!(
        sizes == [3, 1, 1],
        "transactions and their message counts: {per_txn:?}"
    );
    Ok(())
}

#[tokio::test]
async fn rows_and_messages_of_one_transaction_keep_their_order_and_bytes() -> Result<()> {
    let _g = shared_servers().await;
    let (_db, mut admin, slot) = db_with_slot().await?;
    let payload = r#"{"z": 1, "a": {"k": [true, null, 1.10]}}"#;
    let tx = admin.transaction().await?;
    let mut written = Vec::new();
    for (i, how) in ["row", "message", "row", "message"].iter().enumerate() {
        let f = if *how == "row" {
            "outbox_write"
        } else {
            "outbox_emit"
        };
        let id: String = tx
            .query_one(
                &format!("SELECT {f}('booking', 'b-1', 'Step{i}', $1::text::jsonb, '{{\"h\": \"v\"}}')::text"),
                &[&payload],
            )
            .await?
            .get(0);
        written.push(id);
    }
    tx.commit().await?;

    let changes = peek(&admin, &slot).await?;
    let mut rows = OutboxDecoder::new("public", "outbox", ColumnMap::default());
    let messages = MessageDecoder::default();
    let mut seen: Vec<OutboxRow> = Vec::new();
    for c in changes {
        match c.msg {
            PgOutput::Relation(rel) => rows.relation(rel),
            PgOutput::Insert { relation_id, tuple } => seen.push(rows.insert(relation_id, tuple)?),
            PgOutput::Message {
                transactional,
                prefix,
                content,
                ..
            } => match messages.decode(transactional, &prefix, content) {
                MessageEvent::Event(row) => seen.push(row),
                other => anyhow::bail!("unexpected {other:?}"),
            },
            _ => {}
        }
    }
    let ids: Vec<&str> = seen.iter().map(|r| &*r.id).collect();
    ensure!(
        ids == written,
        "stream order {ids:?}, write order {written:?}"
    );
    // The Kafka value and headers are the same bytes whichever way the event was written.
    for r in &seen {
        ensure!(r.payload == seen[0].payload, "payload bytes differ: {r:?}");
        ensure!(r.headers == seen[0].headers, "headers bytes differ: {r:?}");
        ensure!(
            r.created_at == seen[0].created_at,
            "created_at differs: {r:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn only_outbox_writers_may_emit_and_nulls_are_refused() -> Result<()> {
    let _g = shared_servers().await;
    let (db, admin, slot) = db_with_slot().await?;
    let (writer_name, writer_pw) = login_role(&admin, true).await?;
    let (other_name, other_pw) = login_role(&admin, false).await?;
    let writer = connect(&db, &writer_name, &writer_pw).await?;
    let other = connect(&db, &other_name, &other_pw).await?;
    let emit = "SELECT outbox_emit('booking', 'b-1', 'E', '{}')::text";

    let err = other.query_one(emit, &[]).await.expect_err("not a writer");
    ensure!(
        err.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE),
        "a role outside outbox_writer: {err:?}"
    );
    let ok: String = writer.query_one(emit, &[]).await?.get(0);

    // NULLs are refused like the table's NOT NULL columns, in the caller's transaction.
    for call in [
        "SELECT outbox_emit(NULL, 'b', 'E', '{}')",
        "SELECT outbox_emit('a', NULL, 'E', '{}')",
        "SELECT outbox_emit('a', 'b', NULL, '{}')",
        "SELECT outbox_emit('a', 'b', 'E', NULL)",
        "SELECT outbox_emit('a', 'b', 'E', '{}', NULL, NULL)",
        "SELECT outbox_emit('a', 'b', 'E', '{}', NULL, '')",
    ] {
        let err = writer.query_one(call, &[]).await.expect_err(call);
        ensure!(
            err.code() == Some(&SqlState::NOT_NULL_VIOLATION),
            "{call}: {err:?}"
        );
    }

    // Postgres lets every role emit messages itself: a forgery the relay cannot tell apart...
    other
        .execute(
            "SELECT pg_logical_emit_message(true, 'outbox', '{\"v\":1}')",
            &[],
        )
        .await
        .context("PUBLIC may call pg_logical_emit_message by default")?;
    // ...until the hardening recipe of sql/005 is applied (this database only).
    admin.batch_execute(&hardening_recipe()?).await?;
    let err = other
        .execute(
            "SELECT pg_logical_emit_message(true, 'outbox', '{\"v\":1}')",
            &[],
        )
        .await
        .expect_err("revoked");
    ensure!(
        err.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE),
        "after the recipe: {err:?}"
    );
    let after: String = writer.query_one(emit, &[]).await?.get(0);

    // What arrived: the two writer events, and the one forgery (malformed: dead-lettered).
    let changes = peek(&admin, &slot).await?;
    let events = decoded(&changes, &MessageDecoder::default());
    let ids: Vec<&str> = events
        .iter()
        .filter_map(|(_, e)| match e {
            MessageEvent::Event(r) => Some(&*r.id),
            _ => None,
        })
        .collect();
    ensure!(ids == [ok.as_str(), after.as_str()], "events {events:?}");
    ensure!(
        events.iter().any(|(_, e)| matches!(e,
            MessageEvent::Malformed(m) if m.reason == outbox_relay::reason::Reason::EnvelopeMissingField)),
        "the forgery is a malformed envelope: {events:?}"
    );
    ensure!(events.len() == 3, "nothing else arrived: {events:?}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The relay publishing messages (`outbox.events_from`), against Kafka.

use std::collections::HashMap;
use std::time::Duration;

use outbox_relay_dev::{verify, write_concurrently, Kafka, NewEvent, Via};

use crate::support::{
    bin, random_pause, scrape, setup, spec, start, stop, topics, verdict, wait_published,
    wait_records,
};

/// Events written only as messages (`outbox_emit`), kill -9 eight times while writers write: every
/// committed event exactly once, in order per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_written_as_messages_survive_kill9_exactly_once() -> Result<()> {
    let _guard = shared_servers().await;
    let types = ["booking", "car"];
    let (db, mut cfg) = setup(&types).await?;
    cfg.set("outbox.events_from", "messages");
    let topics = topics(&cfg, &types);
    let mut relay = start(&cfg).await?;
    let writer = {
        let mut s = spec(20_000, &types, &[1, 5, 50], 2);
        s.via = Via::Messages;
        let db = db.clone();
        tokio::spawn(async move { write_concurrently(&db, &s).await })
    };
    for _ in 0..8 {
        tokio::time::sleep(random_pause(200..1_000)).await;
        relay.kill9().await?;
        relay = relay.respawn(&bin(), &[])?;
    }
    let written = writer.await??;
    wait_published(&topics, &written, Duration::from_secs(180)).await?;
    stop(&mut relay).await?;
    let v = verdict(&topics, &written).await?;
    eprintln!("messages, kill -9 x8: {v}");
    v.assert_exactly_once();
    Ok(())
}

/// `events_from = "both"`: a transaction mixing rows and messages keeps its order per key and
/// becomes visible all at once (one Postgres transaction, one Kafka transaction).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_mixing_rows_and_messages_keeps_its_order_and_is_visible_at_once(
) -> Result<()> {
    let _guard = shared_servers().await;
    let types = ["booking"];
    let (db, mut cfg) = setup(&types).await?;
    cfg.set("outbox.events_from", "both");
    cfg.set("batch.max_events", 1i64);
    let topics = topics(&cfg, &types);
    let mut relay = start(&cfg).await?;
    let mut client = db.client().await?;
    let mut written = Vec::new();
    for round in 0..10 {
        let tx = client.transaction().await?;
        for i in 0..20 {
            let key = format!("mixed-{}", i % 3);
            let payload = format!("{{\"round\":{round},\"i\":{i}}}");
            let function = if i % 2 == 0 {
                "outbox_write"
            } else {
                "outbox_emit"
            };
            let row = tx
                .query_one(
                    &format!("SELECT {function}('booking', $1, 'Changed', $2::text::jsonb), ($2::text::jsonb)::text"),
                    &[&key, &payload],
                )
                .await?;
            written.push(outbox_relay_dev::Written {
                id: row.get(0),
                aggregate_type: "booking".into(),
                aggregate_id: key,
                event_type: "Changed".into(),
                payload: row.get(1),
            });
        }
        tx.commit().await?;
    }
    wait_published(&topics, &written, Duration::from_secs(60)).await?;
    stop(&mut relay).await?;
    let received = Kafka::shared().collect(&topics).await?;
    verify(&written, &received).assert_exactly_once();
    // One Postgres transaction never spans two Kafka transactions (a commit marker between
    // consecutive offsets of a partition separates two Kafka transactions).
    let mut by_partition: HashMap<i32, Vec<(i64, String)>> = HashMap::new();
    for r in &received {
        by_partition
            .entry(r.partition)
            .or_default()
            .push((r.offset, r.header("pg_xid").unwrap_or("").to_string()));
    }
    for (partition, mut rows) in by_partition {
        rows.sort();
        let mut run = 0;
        let mut run_of_xid: HashMap<String, usize> = HashMap::new();
        for (i, (offset, xid)) in rows.iter().enumerate() {
            if i > 0 && *offset != rows[i - 1].0 + 1 {
                run += 1;
            }
            let first = *run_of_xid.entry(xid.clone()).or_insert(run);
            ensure!(
                first == run,
                "xid {xid} split over two Kafka transactions in partition {partition}"
            );
        }
    }
    Ok(())
}

/// A message transaction past `batch.split_events` is published in parts and survives a kill
/// midway: every event once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_message_transaction_is_split_and_survives_a_kill() -> Result<()> {
    let _guard = shared_servers().await;
    let types = ["booking"];
    let (db, mut cfg) = setup(&types).await?;
    cfg.set("outbox.events_from", "messages");
    cfg.set("batch.split_events", 2_000i64);
    let topics = topics(&cfg, &types);
    let mut relay = start(&cfg).await?;
    let rows: Vec<NewEvent> = (0..30_000)
        .map(|i| {
            NewEvent::new(
                "booking",
                &format!("big-{}", i % 20),
                "Bulk",
                &format!("{{\"i\":{i}}}"),
            )
        })
        .collect();
    let mut client = db.client().await?;
    let written = outbox_relay_dev::write_emitted(&mut client, &rows).await?;
    // Kill once part of it is committed, then let a new process finish it.
    wait_records(&topics, 2_000, Duration::from_secs(60)).await?;
    relay.kill9().await?;
    relay = relay.respawn(&bin(), &[])?;
    wait_published(&topics, &written, Duration::from_secs(120)).await?;
    stop(&mut relay).await?;
    let v = verdict(&topics, &written).await?;
    eprintln!("30k-message transaction split at 2k, killed midway: {v}");
    v.assert_exactly_once();
    Ok(())
}

/// Malformed envelopes are dead-lettered with their reasons; a rolled-back transaction's messages
/// never appear; a non-transactional message with the relay's prefix is counted, never published;
/// another prefix is ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_envelopes_are_dead_lettered_and_nothing_uncommitted_is_published() -> Result<()>
{
    let _guard = shared_servers().await;
    let types = ["booking"];
    let (db, mut cfg) = setup(&types).await?;
    let kafka = Kafka::shared();
    let dlq = format!("{}.dead_letter", cfg.topic_prefix);
    kafka.create_topic(&dlq, 1, &[]).await?;
    cfg.set("errors.dead_letter_topic", dlq.clone());
    cfg.set("outbox.events_from", "messages");
    let topics = topics(&cfg, &types);
    let relay = start(&cfg).await?;
    let client = db.client().await?;
    let emit = |content: &str| {
        format!(
            "SELECT pg_logical_emit_message(true, 'outbox', {})",
            literal(content)
        )
    };
    let id = "8d3c7c1e-2b0a-4f0e-9d6a-1f7b5e2c4a90";
    let cases: Vec<(String, &str)> = vec![
        ("{nope".into(), "envelope_not_json"),
        (format!(r#"{{"v":2,"id":"{id}","aggregate_type":"booking","aggregate_id":"k","event_type":"E","payload":{{}}}}"#), "envelope_unknown_version"),
        (r#"{"v":1,"aggregate_type":"booking","aggregate_id":"k","event_type":"E","payload":{}}"#.into(), "envelope_missing_field"),
        (r#"{"v":1,"id":"not-a-uuid","aggregate_type":"booking","aggregate_id":"k","event_type":"E","payload":{}}"#.into(), "envelope_invalid_id"),
        (format!(r#"{{"v":1,"id":"{id}","aggregate_type":"booking","aggregate_id":7,"event_type":"E","payload":{{}}}}"#), "envelope_wrong_type"),
    ];
    for (content, _) in &cases {
        client.batch_execute(&emit(content)).await?;
    }
    // A rolled-back transaction's message, a non-transactional one, another prefix's: none published.
    client
        .batch_execute(
            "BEGIN; SELECT outbox_emit('booking', 'rolled-back', 'E', '{}'::jsonb); ROLLBACK",
        )
        .await?;
    client
        .batch_execute("SELECT pg_logical_emit_message(false, 'outbox', '{\"v\":1}')")
        .await?;
    client
        .batch_execute("SELECT pg_logical_emit_message(true, 'someone-else', 'x')")
        .await?;
    let good: uuid::Uuid = client
        .query_one(
            "SELECT outbox_emit('booking', 'good', 'E', '{\"ok\":true}'::jsonb)",
            &[],
        )
        .await?
        .get(0);
    wait_records(
        std::slice::from_ref(&dlq),
        cases.len(),
        Duration::from_secs(60),
    )
    .await?;
    wait_records(&topics, 1, Duration::from_secs(60)).await?;
    let m = scrape(&relay).await?;
    ensure!(
        m.get(
            "outbox_relay_messages_ignored_total",
            "reason=\"non_transactional\""
        ) >= 1.0,
        "non-transactional message not counted:\n{}",
        m.text
    );
    ensure!(
        m.get(
            "outbox_relay_messages_ignored_total",
            "reason=\"other_prefix\""
        ) >= 1.0,
        "other prefix not counted"
    );
    let mut relay = relay;
    stop(&mut relay).await?;
    let dead = kafka.collect(std::slice::from_ref(&dlq)).await?;
    let mut reasons: Vec<&str> = dead.iter().filter_map(|r| r.header("dlq_reason")).collect();
    reasons.sort_unstable();
    let mut want: Vec<&str> = cases.iter().map(|(_, r)| *r).collect();
    want.sort_unstable();
    ensure!(reasons == want, "dead letters {reasons:?}, want {want:?}");
    for r in &dead {
        ensure!(
            r.header("pg_lsn").is_some() && r.header("dlq_detail").is_some(),
            "{r:?}"
        );
    }
    let published = kafka.collect(&topics).await?;
    ensure!(
        published.len() == 1 && published[0].header("event_id") == Some(good.to_string().as_str()),
        "only the committed good event may be published: {published:?}"
    );
    Ok(())
}

fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The hardening recipe as sql/005's header ships it: the commented lines from `DO $$` to `$$;`.
fn hardening_recipe() -> Result<String> {
    let sql = std::fs::read_to_string(repo_root().join("sql/005_emit_event.sql"))?;
    let lines: Vec<&str> = sql
        .lines()
        .skip_while(|l| l.trim() != "--   DO $$")
        .map(|l| l.strip_prefix("--   ").unwrap_or(l))
        .collect();
    let end = lines
        .iter()
        .position(|l| l.trim() == "$$;")
        .context("sql/005: no hardening recipe (DO $$ ... $$;) in the header")?;
    Ok(lines[..=end].join("\n"))
}
