//! The monolith's cost per event, outbox table vs transactional logical message (issue 15, item
//! 4): writer events/s and WAL bytes per event, for 1-event and 100-event transactions, on the
//! harness's private Postgres. No relay and no Kafka: this is what the application's database
//! pays to write events, whichever way they are written.
//!
//! Three ways to write the same events (same statement shape, same payloads, same writers):
//! * `table`: `outbox_write` (sql/004), rows stay in the table (a cleanup job deletes them later;
//!   that later DELETE and VACUUM are not counted here);
//! * `table, deleted in the txn`: `outbox_write`, then `DELETE` of the same rows in the same
//!   transaction (the README's way to keep the table empty without a cleanup job);
//! * `message`: `outbox_emit` (sql/005), no table at all.
//!
//! WAL bytes per event are `pg_current_wal_insert_lsn()` after minus before, over the events of
//! the run: everything the cluster wrote meanwhile (commit records, autovacuum) included. The
//! harness runs Postgres with `full_page_writes = off`: with the production default (`on`), the
//! table ways also pay full-page images of the heap and index pages they dirty after each
//! checkpoint, which the message way never does (it writes no data page).
//!
//! Run (Postgres only, no relay binary or Kafka needed), under the integration-test lock:
//! `flock /tmp/outbox-relay-it.lock cargo run --release -p outbox-relay-bench -- --messages-writer [--quick]`.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use outbox_relay_dev::util::repo_root;
use outbox_relay_dev::{Lsn, Postgres, TestDb};
use tokio_postgres::Client;

/// How the events of one run are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    Table,
    TableDeleted,
    Message,
}

impl Way {
    const ALL: [Way; 3] = [Way::Table, Way::TableDeleted, Way::Message];

    fn label(self) -> &'static str {
        match self {
            Way::Table => "table (outbox_write)",
            Way::TableDeleted => "table, deleted in the txn",
            Way::Message => "message (outbox_emit)",
        }
    }

    /// One statement writing the events of a transaction, from parallel arrays.
    fn statement(self) -> &'static str {
        match self {
            Way::Table | Way::TableDeleted => {
                "SELECT array_agg(outbox_write(u.t, u.a, u.e, u.p::jsonb)) \
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS u(t, a, e, p)"
            }
            Way::Message => {
                "SELECT array_agg(outbox_emit(u.t, u.a, u.e, u.p::jsonb)) \
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS u(t, a, e, p)"
            }
        }
    }
}

/// Sizes of one benchmark run.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    runs: usize,
    writers: usize,
    /// Events per run, for each transaction size.
    events_1: usize,
    events_100: usize,
}

/// One measured run.
#[derive(Debug, Clone, Copy)]
struct Run {
    events_per_sec: f64,
    wal_bytes_per_event: f64,
}

/// The figures of one way and transaction size, over the runs.
#[derive(Debug, Clone)]
struct Row {
    way: Way,
    txn: usize,
    runs: Vec<Run>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

impl Row {
    fn events_per_sec(&self) -> f64 {
        median(self.runs.iter().map(|r| r.events_per_sec).collect())
    }
    fn wal_bytes_per_event(&self) -> f64 {
        median(self.runs.iter().map(|r| r.wal_bytes_per_event).collect())
    }
}

async fn wal_insert_lsn(client: &Client) -> Result<Lsn> {
    let text: String = client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await?
        .get(0);
    Ok(text.parse()?)
}

/// About 300 bytes of JSON, like the other benchmarks' payloads.
fn payload(writer: usize, seq: usize) -> String {
    format!(
        "{{\"writer\": {writer}, \"seq\": {seq}, \"key\": \"w{writer}-k{}\", \"pad\": \"{}\"}}",
        seq % 50,
        "x".repeat(230)
    )
}

/// One writer: `count` events in transactions of `txn` events, one statement each (plus the
/// DELETE for [`Way::TableDeleted`]), one transaction at a time, as a request thread would.
async fn writer(db: TestDb, way: Way, w: usize, count: usize, txn: usize) -> Result<()> {
    let mut client = db.client().await?;
    let write = client.prepare(way.statement()).await?;
    let delete = client
        .prepare("DELETE FROM public.outbox WHERE id = ANY($1)")
        .await?;
    let mut seq = 0;
    while seq < count {
        let n = txn.min(count - seq);
        let types: Vec<&str> = vec!["booking"; n];
        let aggs: Vec<String> = (seq..seq + n)
            .map(|i| format!("w{w}-k{}", i % 50))
            .collect();
        let evs: Vec<&str> = vec!["Written"; n];
        let payloads: Vec<String> = (seq..seq + n).map(|i| payload(w, i)).collect();
        let tx = client.transaction().await?;
        let row = tx
            .query_one(&write, &[&types, &aggs, &evs, &payloads])
            .await?;
        if way == Way::TableDeleted {
            let ids: Vec<uuid::Uuid> = row.get(0);
            tx.execute(&delete, &[&ids]).await?;
        }
        tx.commit().await?;
        seq += n;
    }
    Ok(())
}

/// One run: a clean table and a checkpoint, then `events` written by `writers` connections.
async fn run_once(
    db: &TestDb,
    admin: &Client,
    way: Way,
    txn: usize,
    events: usize,
    writers: usize,
) -> Result<Run> {
    admin
        .batch_execute("TRUNCATE public.outbox; CHECKPOINT")
        .await?;
    let before = wal_insert_lsn(admin).await?;
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let count = events / writers + usize::from(w < events % writers);
        tasks.push(tokio::spawn(writer(db.clone(), way, w, count, txn)));
    }
    for task in tasks {
        task.await.context("writer task")??;
    }
    let secs = t.elapsed().as_secs_f64();
    let after = wal_insert_lsn(admin).await?;
    let rows: i64 = admin
        .query_one("SELECT count(*) FROM public.outbox", &[])
        .await?
        .get(0);
    let expected_rows = if way == Way::Table { events as i64 } else { 0 };
    if rows != expected_rows {
        bail!(
            "{}: the outbox table has {rows} rows, expected {expected_rows}",
            way.label()
        );
    }
    Ok(Run {
        events_per_sec: events as f64 / secs,
        wal_bytes_per_event: after.bytes_since(before) as f64 / events as f64,
    })
}

/// Measures every way at both transaction sizes; returns the Markdown table.
async fn measure(sizes: Sizes) -> Result<String> {
    let pg = Postgres::shared();
    let db = pg.new_database().await?;
    let admin = db.client().await?;
    let version: String = admin.query_one("SHOW server_version", &[]).await?.get(0);
    let fpw: String = admin.query_one("SHOW full_page_writes", &[]).await?.get(0);
    let mut rows: Vec<Row> = Vec::new();
    for (txn, events) in [(1, sizes.events_1), (100, sizes.events_100)] {
        // Warm-up (not recorded): caches, plans, the first checkpoint.
        for way in Way::ALL {
            run_once(&db, &admin, way, txn, events / 10, sizes.writers).await?;
        }
        let mut by_way: Vec<Row> = Way::ALL
            .iter()
            .map(|&way| Row {
                way,
                txn,
                runs: Vec::new(),
            })
            .collect();
        // Interleaved, so drift on a shared machine hits every way alike.
        for _ in 0..sizes.runs {
            for row in &mut by_way {
                let r = run_once(&db, &admin, row.way, txn, events, sizes.writers).await?;
                eprintln!(
                    "[bench messages] {:<28} {txn:>3}-event txns: {:>8.0} events/s, {:>6.1} WAL bytes/event",
                    row.way.label(),
                    r.events_per_sec,
                    r.wal_bytes_per_event
                );
                row.runs.push(r);
            }
        }
        rows.extend(by_way);
    }
    let mut md = format!(
        "### Monolith cost per event: table vs message\n\n\
         Postgres {version} (harness: fsync off, full_page_writes {fpw}), {} writer connections, \
         ~300-byte JSON payloads, medians of {} runs (events per run: {} in 1-event txns, {} in \
         100-event txns).\n\n\
         | way | events per txn | writer events/s | WAL bytes/event |\n|---|---|---|---|\n",
        sizes.writers, sizes.runs, sizes.events_1, sizes.events_100
    );
    for r in &rows {
        md.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} |\n",
            r.way.label(),
            r.txn,
            r.events_per_sec(),
            r.wal_bytes_per_event()
        ));
    }
    Ok(md)
}

/// `--messages-writer [--quick]`: runs this benchmark alone (Postgres only), prints the table and
/// writes it to `target/bench/messages.md`.
pub async fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let sizes = if quick {
        Sizes {
            runs: 1,
            writers: 4,
            events_1: 5_000,
            events_100: 50_000,
        }
    } else {
        Sizes {
            runs: 3,
            writers: 4,
            events_1: 20_000,
            events_100: 200_000,
        }
    };
    tokio::task::spawn_blocking(Postgres::shared).await?;
    let t = Instant::now();
    let md = measure(sizes).await?;
    println!("{md}");
    let out = repo_root().join("target/bench/messages.md");
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, &md)?;
    eprintln!(
        "[bench messages] done in {:.0?}; wrote {}",
        Duration::from_secs(t.elapsed().as_secs()),
        out.display()
    );
    Ok(())
}
