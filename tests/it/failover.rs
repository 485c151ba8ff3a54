//! Promise: a primary failover loses nothing and repeats nothing. On Postgres 17+ with a failover slot
//! and `synchronized_standby_slots`, the relay follows the promotion by itself; without
//! `synchronized_standby_slots` (the standby may lack what the relay published) it stops with exit 70
//! at the timeline fork, and before 17 (or with a slot that is not a failover slot) the promoted
//! standby has no slot and the relay stops with exit 70 instead of making a fresh one. In both stops
//! the README's runbook then publishes every row of the new primary exactly once.
//!
//! Each test has a private primary and a streaming physical standby (`HaPair`), writers writing
//! through a front address that moves to whichever server is primary, and a shared Kafka broker. The
//! truth after a failover is the outbox table of the new primary: a row committed on the old primary
//! that never reached the standby is gone, so it must not be in Kafka either (a "phantom"). Every
//! event carries a per-key sequence number `n`, which gives the write order of each key.
//!
//! The failover-slot tests need Postgres 17; on older versions (the compatibility runs) they say so
//! and pass without running.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use outbox_relay_dev::standby::timeline_history;
use outbox_relay_dev::{
    verify, wait_until, HaPair, Kafka, Lsn, Postgres, RelayConfig, StandbyOptions, TestDb, Verdict,
    Written,
};
use tokio_postgres::Client;
use uuid::Uuid;

use crate::support::{cli_with, exit_within, restart, start, stop, topics, wait_published};

const TYPES: [&str; 2] = ["booking", "payment"];

/// A pair on which failover slots exist, or None (and a line saying why the test does nothing).
async fn pair_17(opts: StandbyOptions, test: &str) -> Result<Option<HaPair>> {
    if Postgres::shared().major() < 17 {
        eprintln!(
            "{test}: skipped, failover slots need Postgres 17 or newer (this run: {})",
            Postgres::shared().major()
        );
        return Ok(None);
    }
    Ok(Some(HaPair::start(&opts).await?))
}

/// A database on the pair's primary, a relay config for it (through the front, so it follows the
/// promotion), and its topics.
async fn setup(pair: &HaPair) -> Result<(TestDb, RelayConfig)> {
    let db = pair.primary.new_database().await?;
    let mut cfg = RelayConfig::new(&pair.primary, &db, Kafka::shared());
    cfg.set("postgres.port", i64::from(pair.front().port()));
    cfg.create_topics(Kafka::shared(), &TYPES, 3).await?;
    Ok((db, cfg))
}

/// Inserts `rows` (key, n) in one transaction; `n` goes into the payload.
async fn insert(client: &Client, rows: &[(String, i64)]) -> Result<()> {
    let ids: Vec<Uuid> = rows.iter().map(|_| Uuid::new_v4()).collect();
    let keys: Vec<&str> = rows.iter().map(|(k, _)| k.as_str()).collect();
    let ns: Vec<i64> = rows.iter().map(|(_, n)| *n).collect();
    client
        .execute(
            "INSERT INTO public.outbox (id, aggregate_type, aggregate_id, event_type, payload) \
             SELECT u.id, CASE WHEN u.k LIKE 'p%' THEN 'payment' ELSE 'booking' END, u.k, 'Written', \
                    jsonb_build_object('n', u.n, 'pad', repeat('x', 200)) \
             FROM unnest($1::uuid[], $2::text[], $3::int8[]) WITH ORDINALITY AS u(id, k, n, o) ORDER BY u.o",
            &[&ids, &keys, &ns],
        )
        .await?;
    Ok(())
}

/// Writes `count` events, one a transaction, under keys `<prefix>-<i % keys>`.
async fn write_events(db: &TestDb, prefix: &str, count: usize, keys: usize) -> Result<()> {
    let client = db.client().await?;
    let mut rows = Vec::new();
    for i in 0..count {
        rows.push((format!("{prefix}-{}", i % keys), i as i64));
        if rows.len() == 10 || i + 1 == count {
            insert(&client, &rows).await?;
            rows.clear();
        }
    }
    Ok(())
}

/// Writers that keep writing through the front across the failover: a transaction that fails (the
/// primary died under it) may or may not have committed; the new primary's table says which.
struct Writers {
    stop: Arc<AtomicBool>,
    attempted: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<Result<usize>>>,
}

impl Writers {
    fn start(db: &TestDb, writers: usize) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let attempted = Arc::new(AtomicUsize::new(0));
        let tasks = (0..writers)
            .map(|w| {
                let (db, stop, attempted) = (db.clone(), stop.clone(), attempted.clone());
                tokio::spawn(async move { write_until_stopped(db, w, stop, attempted).await })
            })
            .collect();
        Writers {
            stop,
            attempted,
            tasks,
        }
    }

    fn attempted(&self) -> usize {
        self.attempted.load(Ordering::Relaxed)
    }

    async fn wait_attempted(&self, n: usize) -> Result<()> {
        wait_until(
            Duration::from_secs(120),
            &format!("{n} events written"),
            || async { Ok((self.attempted() >= n).then_some(())) },
        )
        .await
    }

    /// Stops the writers; returns how many transactions failed (across the failover).
    async fn stop(self) -> Result<usize> {
        self.stop.store(true, Ordering::Relaxed);
        let mut failed = 0;
        for t in self.tasks {
            failed += t.await.context("writer panicked")??;
        }
        Ok(failed)
    }
}

async fn write_until_stopped(
    db: TestDb,
    w: usize,
    stop: Arc<AtomicBool>,
    attempted: Arc<AtomicUsize>,
) -> Result<usize> {
    let mut client: Option<Client> = None;
    let mut n: i64 = 0;
    let mut failed = 0usize;
    let mut unreachable_since: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        let c = match client.take() {
            Some(c) => c,
            None => match db.client().await {
                Ok(c) => c,
                Err(e) => {
                    let since = *unreachable_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_secs(60) {
                        bail!("writer {w}: no primary through the front for 60 s: {e:#}");
                    }
                    // Poll for the new primary (not a wait for an outcome: the loop's condition is).
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        unreachable_since = None;
        let size = 1 + (n as usize % 7);
        let rows: Vec<(String, i64)> = (0..size)
            .map(|i| {
                let seq = n + i as i64;
                let kind = if w.is_multiple_of(2) { "b" } else { "p" };
                (format!("{kind}{w}-k{}", seq % 40), seq)
            })
            .collect();
        n += size as i64;
        attempted.fetch_add(size, Ordering::Relaxed);
        match insert(&c, &rows).await {
            Ok(()) => client = Some(c),
            Err(_) => failed += 1,
        }
    }
    Ok(failed)
}

/// The truth: every event of the outbox table on `db`'s server, in write order per key (by `n`).
async fn truth(db: &TestDb) -> Result<Vec<Written>> {
    let client = db.client().await?;
    let rows = client
        .query(
            "SELECT id, aggregate_type, aggregate_id, event_type, payload::text FROM public.outbox \
             ORDER BY aggregate_id, (payload->>'n')::int8",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Written {
            id: r.get(0),
            aggregate_type: r.get(1),
            aggregate_id: r.get(2),
            event_type: r.get(3),
            payload: r.get(4),
        })
        .collect())
}

/// Waits until the relay's slot is synchronized to the standby (usable after a promotion). A slot
/// made just now is not, until its consumer confirms a position past a running-transactions record:
/// each round writes an event and logs one (the relay publishes the event and confirms).
async fn wait_slot_synced(pair: &HaPair, db: &TestDb, slot: &str) -> Result<()> {
    let admin = pair.primary.admin("postgres").await?;
    let client = db.client().await?;
    let round = AtomicUsize::new(0);
    pair.standby
        .wait_slot_synced(Duration::from_secs(120), slot, || async {
            let i = round.fetch_add(1, Ordering::Relaxed);
            insert(&client, &[(format!("nudge-{i}"), 0)]).await?;
            admin
                .execute("SELECT pg_log_standby_snapshot()", &[])
                .await?;
            Ok(())
        })
        .await
}

/// Waits until `id` is committed in `topics`.
async fn wait_event(topics: &[String], id: Uuid, deadline: Duration) -> Result<()> {
    let id = id.to_string();
    Kafka::shared()
        .watch(topics)
        .await?
        .wait_for(deadline, &format!("event {id} in Kafka"), |records| {
            records
                .iter()
                .any(|r| r.header("event_id") == Some(id.as_str()))
        })
        .await
}

/// Writes one marker event through the front, retrying until the new primary takes it.
async fn write_marker(front: &TestDb) -> Result<Uuid> {
    wait_until(
        Duration::from_secs(60),
        "a write through the front",
        || async {
            let Ok(c) = front.client().await else {
                return Ok(None);
            };
            Ok(c.query_one(
                "INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, payload) \
                 VALUES ('booking', 'marker', 'Marker', '{\"n\": 0}') RETURNING id",
                &[],
            )
            .await
            .ok()
            .map(|r| r.get::<_, Uuid>(0)))
        },
    )
    .await
}

async fn has_slot(db: &TestDb, slot: &str) -> Result<bool> {
    let n: i64 = db
        .client()
        .await?
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?
        .get(0);
    Ok(n > 0)
}

fn report(what: &str, v: &Verdict, attempted: usize, extra: &str) {
    eprintln!(
        "{what}: rows on the new primary {} (attempted {attempted}), received {}, missing {}, duplicated {}, phantoms {}, order violations {}; {extra}",
        v.expected,
        v.received,
        v.missing.len(),
        v.duplicated.len(),
        v.unexpected,
        v.order_violations.len()
    );
}

/// The failover of the issue: writers running, kill -9 of the primary, promotion, the relay resumes
/// on the new primary; optionally the relay is killed too, at the same moment.
async fn failover_under_load(kill_relay: bool, test: &str) -> Result<()> {
    let Some(pair) = pair_17(
        StandbyOptions {
            synchronized_standby_slots: true,
            ..StandbyOptions::default()
        },
        test,
    )
    .await?
    else {
        return Ok(());
    };
    let (db, mut cfg) = setup(&pair).await?;
    let front = pair.via_front(&db);
    if !kill_relay {
        // The host list instead of the front: the relay finds the promoted standby by itself.
        let [a, b] = pair.hosts();
        cfg.set("postgres.host", format!("{a},{b}"));
    }
    let topics = topics(&cfg, &TYPES);
    let mut relay = start(&cfg).await?;
    wait_slot_synced(&pair, &db, &cfg.slot).await?;

    let writers = Writers::start(&front, 2);
    writers.wait_attempted(6_000).await?;
    if kill_relay {
        relay.kill9().await?;
    }
    let took = pair.fail_over().await?;
    let promoted = Instant::now();
    if kill_relay {
        // What systemd's Restart= does.
        relay = restart(&relay).await?;
    }
    let marker = write_marker(&front).await?;
    wait_event(&topics, marker, Duration::from_secs(60)).await?;
    let resumed = promoted.elapsed();
    let at_failover = writers.attempted();
    writers.wait_attempted(at_failover + 14_000).await?;
    let counter = Arc::clone(&writers.attempted);
    let failed = writers.stop().await?;
    let attempted = counter.load(Ordering::Relaxed);

    let truth = truth(&front).await?;
    wait_published(&topics, &truth, Duration::from_secs(120)).await?;
    stop(&mut relay).await?;
    let v = verify(&truth, &Kafka::shared().collect(&topics).await?);
    report(
        test,
        &v,
        attempted,
        &format!(
            "kill -9 to a writable standby {took:.1?}, promotion to the first new event in Kafka {resumed:.1?}, {failed} writer transactions failed in the failover"
        ),
    );
    v.assert_exactly_once();
    ensure!(
        resumed < Duration::from_secs(10),
        "the relay took {resumed:?} after the promotion to publish from the new primary (promise: 10 s)"
    );
    let logs = relay.logs();
    ensure!(
        !logs.contains("advanced") && !logs.contains("diverged"),
        "the relay complained:\n{logs}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_with_synchronized_standby_slots_loses_and_repeats_nothing() -> Result<()> {
    failover_under_load(
        false,
        "failover_with_synchronized_standby_slots_loses_and_repeats_nothing",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_with_the_relay_killed_at_the_same_moment_loses_and_repeats_nothing() -> Result<()>
{
    failover_under_load(
        true,
        "failover_with_the_relay_killed_at_the_same_moment_loses_and_repeats_nothing",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_switchover_loses_and_repeats_nothing() -> Result<()> {
    let test = "failover_switchover_loses_and_repeats_nothing";
    let Some(pair) = pair_17(StandbyOptions::default(), test).await? else {
        return Ok(());
    };
    let (db, cfg) = setup(&pair).await?;
    let front = pair.via_front(&db);
    let topics = topics(&cfg, &TYPES);
    let mut relay = start(&cfg).await?;
    wait_slot_synced(&pair, &db, &cfg.slot).await?;
    let writers = Writers::start(&front, 2);
    writers.wait_attempted(4_000).await?;
    let took = pair.switch_over().await?;
    let at = writers.attempted();
    writers.wait_attempted(at + 4_000).await?;
    let counter = Arc::clone(&writers.attempted);
    let failed = writers.stop().await?;
    let attempted = counter.load(Ordering::Relaxed);
    let truth = truth(&front).await?;
    wait_published(&topics, &truth, Duration::from_secs(120)).await?;
    stop(&mut relay).await?;
    let v = verify(&truth, &Kafka::shared().collect(&topics).await?);
    report(
        test,
        &v,
        attempted,
        &format!("switchover {took:.1?}, {failed} writer transactions failed in it"),
    );
    v.assert_exactly_once();
    Ok(())
}

/// Without `synchronized_standby_slots` and with the standby held behind, the relay publishes what the
/// standby never gets; after the failover it must stop at the fork instead of skipping the new
/// timeline's transactions, and the README's recovery publishes every one of them once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_a_standby_behind_the_relay_stops_at_the_fork_and_the_runbook_recovers(
) -> Result<()> {
    let test = "failover_to_a_standby_behind_the_relay_stops_at_the_fork_and_the_runbook_recovers";
    let Some(pair) = pair_17(StandbyOptions::default(), test).await? else {
        return Ok(());
    };
    let (db, cfg) = setup(&pair).await?;
    let front = pair.via_front(&db);
    let topics = topics(&cfg, &TYPES);
    let mut relay = start(&cfg).await?;
    wait_slot_synced(&pair, &db, &cfg.slot).await?;
    write_events(&db, "before", 500, 20).await?;
    let replicated = outbox_relay_dev::postgres::current_wal_lsn(&db.client().await?).await?;
    pair.standby
        .wait_replayed(replicated, Duration::from_secs(60))
        .await?;
    let before_failover = db
        .client()
        .await?
        .query_one(
            "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
            &[],
        )
        .await?
        .get::<_, String>(0);

    // The standby falls behind; the relay publishes what it will never have.
    pair.standby.link().set_blackhole(true);
    write_events(&db, "held", 300, 20).await?;
    let held: HashSet<Uuid> = db
        .client()
        .await?
        .query(
            "SELECT id FROM public.outbox WHERE aggregate_id LIKE 'held-%'",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let on_primary = truth(&db).await?;
    wait_published(&topics, &on_primary, Duration::from_secs(60)).await?;
    let published = Kafka::shared().collect(&topics).await?;
    ensure!(
        verify(&on_primary, &published).is_exactly_once(),
        "before the failover: {}",
        verify(&on_primary, &published)
    );

    pair.fail_over().await?;
    write_events(&front, "after", 200, 20).await?;
    let status = exit_within(&mut relay, Duration::from_secs(60)).await?;
    let logs = relay.logs();
    let new_admin = pair.standby.postgres().admin("postgres").await?;
    let history = timeline_history(&new_admin, 2).await?;
    let fork: Lsn = history
        .last()
        .context("no fork in the history")?
        .switchpoint;
    ensure!(
        status.code() == Some(70)
            && logs.contains("timeline diverged")
            && logs.contains(&fork.to_string()),
        "exit {status:?}, fork {fork}; logs:\n{logs}"
    );
    // Nothing of the new timeline was published (or skipped) before the stop.
    let after_stop = Kafka::shared().collect(&topics).await?;
    ensure!(
        after_stop.len() == published.len(),
        "{} records before the failover, {} after the stop",
        published.len(),
        after_stop.len()
    );

    // The runbook: reset to the fork, start.
    let reset = cli_with(
        &cfg,
        &["reset-checkpoint", "--to-lsn", &fork.to_string(), "--yes"],
        &[],
    )?;
    ensure!(
        reset.code() == Some(0),
        "reset-checkpoint: {}",
        reset.text()
    );
    let mut relay = restart(&relay).await?;
    wait_published(&topics, &truth(&front).await?, Duration::from_secs(60)).await?;

    // The phantoms: their pg_lsn is above the fork. Audit judges events up to the relay's position
    // (its cut), so it lists them once new transactions have carried the relay past the highest.
    let phantom_lsns: Vec<Lsn> = Kafka::shared()
        .collect(&topics)
        .await?
        .iter()
        .filter(|r| {
            r.header("event_id")
                .and_then(|s| Uuid::parse_str(s).ok())
                .is_some_and(|id| held.contains(&id))
        })
        .map(|r| r.header("pg_lsn").unwrap_or("0/0").parse())
        .collect::<Result<_, _>>()?;
    let highest = phantom_lsns
        .iter()
        .max()
        .copied()
        .context("no phantom in Kafka")?;
    let new_client = front.client().await?;
    let mut round = 0;
    while outbox_relay_dev::postgres::current_wal_lsn(&new_client).await? <= highest {
        ensure!(
            round < 1000,
            "the new primary's WAL does not pass {highest}"
        );
        write_events(&front, &format!("later{round}"), 100, 10).await?;
        round += 1;
    }
    let truth = truth(&front).await?;
    wait_published(&topics, &truth, Duration::from_secs(60)).await?;
    let audit = cli_with(&cfg, &["audit", "--json", "--since", &before_failover], &[])?;
    let json: serde_json::Value =
        serde_json::from_str(&audit.stdout).with_context(|| format!("audit: {}", audit.text()))?;
    let no_row = |f: &str| json["findings"][f]["count"].as_u64().unwrap_or(0);
    let listed = no_row("no_row_never_existed") + no_row("no_row_cleaned_up");
    ensure!(
        audit.code() == Some(3) && listed == held.len() as u64 && no_row("missing") == 0,
        "audit --since {before_failover} (exit {:?}): {} events with no row, {} held back:\n{:#}",
        audit.code(),
        listed,
        held.len(),
        json["findings"]
    );
    stop(&mut relay).await?;

    let received = Kafka::shared().collect(&topics).await?;
    let v = verify(&truth, &received);
    report(test, &v, truth.len() + held.len(), &format!("fork {fork}"));
    let phantoms: Vec<_> = received
        .iter()
        .filter(|r| {
            r.header("event_id")
                .and_then(|s| Uuid::parse_str(s).ok())
                .is_some_and(|id| held.contains(&id))
        })
        .collect();
    ensure!(
        v.missing.is_empty()
            && v.duplicated.is_empty()
            && v.order_violations.is_empty()
            && v.unexpected == held.len()
            && phantoms.len() == held.len(),
        "{v}; {} held events, {} of them in Kafka",
        held.len(),
        phantoms.len()
    );
    for r in phantoms {
        let lsn: Lsn = r.header("pg_lsn").context("pg_lsn header")?.parse()?;
        // The new timeline starts at the fork: the first record the standby never received
        // begins exactly there.
        ensure!(lsn >= fork, "phantom at {lsn}, below the fork {fork}");
    }
    Ok(())
}

/// Before 17 (here: on any version, with `failover_slot = false`), the promoted standby has no slot.
/// The relay stops with 70 naming the lost slot and makes none; the README's recovery (reset,
/// start, backfill) then publishes every row of the new primary once, including those written
/// while no slot existed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_without_a_failover_slot_stops_with_70_and_the_runbook_recovers() -> Result<()> {
    let test = "failover_without_a_failover_slot_stops_with_70_and_the_runbook_recovers";
    let pair = HaPair::start(&StandbyOptions::default()).await?;
    let (db, mut cfg) = setup(&pair).await?;
    cfg.set("postgres.failover_slot", false);
    let front = pair.via_front(&db);
    let topics = topics(&cfg, &TYPES);
    let mut relay = start(&cfg).await?;
    write_events(&db, "before", 300, 20).await?;
    wait_published(&topics, &truth(&db).await?, Duration::from_secs(60)).await?;
    let replicated = outbox_relay_dev::postgres::current_wal_lsn(&db.client().await?).await?;
    pair.standby
        .wait_replayed(replicated, Duration::from_secs(60))
        .await?;

    pair.fail_over().await?;
    write_events(&front, "gap", 200, 20).await?;
    let status = exit_within(&mut relay, Duration::from_secs(60)).await?;
    let logs = relay.logs();
    ensure!(
        status.code() == Some(70)
            && logs.contains(&cfg.slot)
            && logs.contains("does not exist")
            && !logs.contains("advanced"),
        "exit {status:?}; logs:\n{logs}"
    );
    ensure!(
        !has_slot(&front, &cfg.slot).await?,
        "the relay made a slot on the new primary"
    );

    // The runbook "Lost slot".
    let reset = cli_with(&cfg, &["reset-checkpoint", "--yes"], &[])?;
    ensure!(
        reset.code() == Some(0),
        "reset-checkpoint: {}",
        reset.text()
    );
    let mut relay = restart(&relay).await?;
    write_events(&front, "after", 200, 20).await?;
    let fill = cli_with(&cfg, &["backfill", "--missing"], &[])?;
    ensure!(
        fill.code() == Some(0) && fill.stdout.contains("published 200 of 200"),
        "backfill: {}",
        fill.text()
    );
    let truth = truth(&front).await?;
    wait_published(&topics, &truth, Duration::from_secs(60)).await?;
    stop(&mut relay).await?;
    let v = verify(&truth, &Kafka::shared().collect(&topics).await?);
    report(test, &v, truth.len(), "lost slot, then reset + backfill");
    v.assert_exactly_once();
    let by_prefix = truth.iter().fold(BTreeMap::new(), |mut m, w| {
        *m.entry(w.aggregate_id.split('-').next().unwrap_or("").to_string())
            .or_insert(0) += 1;
        m
    });
    ensure!(
        by_prefix.get("gap") == Some(&200) && by_prefix.get("after") == Some(&200),
        "{by_prefix:?}"
    );
    Ok(())
}
