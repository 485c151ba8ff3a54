//! Steady state: a paced writer of one-row transactions and the latency from the Postgres commit
//! (and from the writer's COMMIT return) to a read_committed consumer, for the relay and Debezium.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use outbox_relay_dev::{Kafka, TestDb};
use rdkafka::message::{Headers, Message};

use crate::debezium::Connect;
use crate::helpers::{
    drop_env, log, new_env, now_micros, percentile, relay_topics, start_relay, stop_relay,
    wait_slot_active,
};
use crate::observers::{assign_all, consumer};
use crate::opts::{Only, Opts};
use crate::procstat::ProcStat;
use crate::report::Report;
use crate::{AGGREGATES, PARTITIONS, TYPES};

/// Writes `rate` one-row transactions per second for `secs`, with client-side ids; returns
/// id -> wall-clock micros when COMMIT returned.
pub async fn paced_writer(db: &TestDb, rate: u64, secs: u64) -> Result<HashMap<String, i64>> {
    let tasks_n = 4u64;
    let per_task = rate / tasks_n;
    let interval = Duration::from_nanos(1_000_000_000 / per_task);
    let total = per_task * secs;
    let t0 = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::new();
    for w in 0..tasks_n {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let client = db.client().await?;
            let stmt = client
                .prepare(
                    "INSERT INTO public.outbox (id, aggregate_type, aggregate_id, event_type, payload) \
                     VALUES ($1, $2, $3, 'Written', $4::text::jsonb)",
                )
                .await?;
            let mut acks = HashMap::with_capacity(total as usize);
            let start = t0 + interval.mul_f64(w as f64 / tasks_n as f64);
            for i in 0..total {
                tokio::time::sleep_until(start + interval * i as u32).await;
                let id = uuid::Uuid::new_v4();
                let k = (i * tasks_n + w) as i64 * 7919 % AGGREGATES;
                let ty = TYPES[(k % 3) as usize];
                let payload = format!(
                    "{{\"seq\": {i}, \"agg\": {k}, \"pad\": \"{}\"}}",
                    pad_hex(i * tasks_n + w)
                );
                client
                    .execute(&stmt, &[&id, &ty, &format!("agg-{k}"), &payload])
                    .await?;
                acks.insert(id.to_string(), now_micros());
            }
            anyhow::Ok(acks)
        }));
    }
    let mut all = HashMap::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}

pub fn pad_hex(seed: u64) -> String {
    // 256 pseudo-random hex chars (splitmix64), like the backlog's md5 pads.
    let mut x = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut s = String::with_capacity(256);
    for _ in 0..16 {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        s.push_str(&format!("{z:016x}"));
    }
    s
}

/// A received record: event id, receipt micros, pg_commit_ts micros if present.
/// (event id, receipt time, pg_commit_ts, Kafka CreateTime: when the relay produced it), in µs.
pub type Receipt = (String, i64, Option<i64>, i64);

/// Receives records on `topics` (read_committed) until `stop`; id from `id_header`.
pub fn receive(
    topics: Vec<String>,
    id_header: &'static str,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    warmed: Arc<AtomicBool>,
) -> Result<Vec<Receipt>> {
    let c = consumer(true)?;
    assign_all(&c, &topics)?;
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(20)) {
            let at = now_micros();
            let mut id = None;
            let mut commit = None;
            if let Some(h) = m.headers() {
                for h in h.iter() {
                    let v = h.value.and_then(|v| std::str::from_utf8(v).ok());
                    if h.key == id_header {
                        id = v.map(|s| s.trim_matches('"').to_string());
                    } else if h.key == "pg_commit_ts" {
                        commit = v.and_then(parse_rfc3339_micros);
                    }
                }
            }
            if m.key() == Some(b"warmup".as_slice()) {
                warmed.store(true, Ordering::Relaxed);
                continue;
            }
            let produced = m.timestamp().to_millis().unwrap_or(0) * 1000;
            out.push((id.unwrap_or_default(), at, commit, produced));
            count.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(out)
}

/// `2026-11-26T05:00:00.123456Z` -> micros since the epoch (the relay's `pg_commit_ts` form; the
/// same as `outbox_relay::route::parse_rfc3339_micros`, kept here so the bench builds without the
/// relay's library).
pub fn parse_rfc3339_micros(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 27
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[19] != b'.'
        || b[26] != b'Z'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| text.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s, us) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..26)?);
    // Days from civil (Howard Hinnant).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + h * 3600 + mi * 60 + s) * 1_000_000) + us)
}

pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub received: usize,
    pub sent: usize,
}

pub fn latencies(mut ms: Vec<f64>, sent: usize) -> Latency {
    ms.sort_by(|a, b| a.total_cmp(b));
    Latency {
        p50: percentile(&ms, 50.0),
        p99: percentile(&ms, 99.0),
        p999: percentile(&ms, 99.9),
        received: ms.len(),
        sent,
    }
}

/// Writes a warm-up row and waits until it is received (the pipeline is streaming), then runs the
/// paced writer and collects receipts until every row arrived (or 30 s after the writer ends).
pub async fn steady_measure(
    db: &TestDb,
    topics: Vec<String>,
    id_header: &'static str,
    rate: u64,
    secs: u64,
) -> Result<(HashMap<String, i64>, Vec<Receipt>)> {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let warmed = Arc::new(AtomicBool::new(false));
    let rx = std::thread::spawn({
        let stop = stop.clone();
        let count = count.clone();
        let warmed = warmed.clone();
        move || receive(topics, id_header, stop, count, warmed)
    });
    // Warm-up rows (key "warmup", not counted) until one arrives: the pipeline streams.
    let client = db.client().await?;
    let t = Instant::now();
    let mut last_insert: Option<Instant> = None;
    while !warmed.load(Ordering::Relaxed) {
        if last_insert.is_none_or(|i| i.elapsed() > Duration::from_secs(2)) {
            client
                .execute(
                    "INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, payload) \
                     VALUES ('booking', 'warmup', 'Warmup', '{}')",
                    &[],
                )
                .await?;
            last_insert = Some(Instant::now());
        }
        if t.elapsed() > Duration::from_secs(180) || rx.is_finished() {
            stop.store(true, Ordering::Relaxed);
            bail!("no warm-up event arrived within 180 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the last warm-up rows drain before the clock matters.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acks = paced_writer(db, rate, secs).await?;
    let want = acks.len() as u64;
    let t = Instant::now();
    while count.load(Ordering::Relaxed) < want && t.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let got = rx
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    Ok((acks, got))
}

pub async fn steady_relay(opts: &Opts, report: &mut Report) -> Result<()> {
    let env = new_env().await?;
    let relay = start_relay(opts, &env.cfg).await?;
    wait_slot_active(&env.db, &env.cfg.slot, Duration::from_secs(60)).await?;
    let pid = relay.pid();
    let cpu0 = ProcStat::read(pid)?.cpu_secs();
    let (acks, got) = steady_measure(
        &env.db,
        relay_topics(&env.cfg),
        "event_id",
        opts.steady_rate,
        opts.steady_secs,
    )
    .await?;
    let st = ProcStat::read(pid)?;
    stop_relay(relay).await?;
    let commit_lat: Vec<f64> = got
        .iter()
        .filter(|(id, _, _, _)| acks.contains_key(id))
        .filter_map(|(_, at, c, _)| c.map(|c| (at - c) as f64 / 1000.0))
        .collect();
    let ack_lat: Vec<f64> = got
        .iter()
        .filter_map(|(id, at, _, _)| acks.get(id).map(|a| (at - a) as f64 / 1000.0))
        .collect();
    if opts.only == Some(Only::Steady) {
        // Worst latency per second of the run (by Postgres commit time): start-up or periodic?
        let mut per_sec: std::collections::BTreeMap<i64, (f64, usize)> = Default::default();
        // Split: Postgres commit -> produced by the relay, produced -> received (commit + fetch).
        let mut to_produce: Vec<f64> = Vec::new();
        let mut to_receive: Vec<f64> = Vec::new();
        for (_, at, c, p) in got.iter() {
            if let Some(c) = c {
                to_produce.push((p - c) as f64 / 1000.0);
                to_receive.push((at - p) as f64 / 1000.0);
            }
        }
        to_produce.sort_by(|a, b| a.total_cmp(b));
        to_receive.sort_by(|a, b| a.total_cmp(b));
        log(format!(
            "steady split: commit->produced p50 {:.0} p99 {:.0} ms; produced->received p50 {:.0} p99 {:.0} ms",
            percentile(&to_produce, 50.0),
            percentile(&to_produce, 99.0),
            percentile(&to_receive, 50.0),
            percentile(&to_receive, 99.0)
        ));
        for (at, c) in got.iter().filter_map(|(_, at, c, _)| c.map(|c| (*at, c))) {
            let e = per_sec.entry(c / 1_000_000).or_default();
            e.0 = e.0.max((at - c) as f64 / 1000.0);
            e.1 += 1;
        }
        let first = per_sec.keys().next().copied().unwrap_or(0);
        let line: Vec<String> = per_sec
            .iter()
            .map(|(s, (max, n))| format!("{}s:{max:.0}ms/{n}", s - first))
            .collect();
        log(format!(
            "steady timeline (worst latency per second): {}",
            line.join(" ")
        ));
    }
    let l = latencies(commit_lat, acks.len());
    let la = latencies(ack_lat, acks.len());
    log(format!(
        "steady: relay p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms ({} of {} received); from COMMIT return: p50 {:.1} p99 {:.1}; CPU {:.2} s, RSS {:.1} MB",
        l.p50, l.p99, l.p999, l.received, l.sent, la.p50, la.p99, st.cpu_secs() - cpu0, st.hwm_mb()
    ));
    if l.received != l.sent {
        report.note(format!(
            "steady relay run: {} of {} events received",
            l.received, l.sent
        ));
    }
    let s = "4. steady state (2k events/s, 1-row txns)";
    report.add(s, "relay latency p50 (pg_commit_ts)", "ms", l.p50);
    report.add(s, "relay latency p99 (pg_commit_ts)", "ms", l.p99);
    report.add(s, "relay latency p99.9 (pg_commit_ts)", "ms", l.p999);
    report.add(s, "relay latency p50 (writer COMMIT return)", "ms", la.p50);
    report.add(s, "relay latency p99 (writer COMMIT return)", "ms", la.p99);
    report.add(
        s,
        "relay latency p99.9 (writer COMMIT return)",
        "ms",
        la.p999,
    );
    report.add(s, "relay peak RSS", "MB", st.hwm_mb());
    report.add(
        s,
        "relay CPU per 1M events",
        "CPU s",
        (st.cpu_secs() - cpu0) / (acks.len() as f64 / 1e6),
    );
    drop_env(env).await
}

pub async fn steady_debezium(opts: &Opts, connect: &Connect, report: &mut Report) -> Result<()> {
    let env = new_env().await?;
    let slot = format!("dbz_{}", env.cfg.suffix);
    let prefix = format!("d_{}", env.cfg.suffix);
    let topics: Vec<String> = TYPES.iter().map(|t| format!("{prefix}.{t}")).collect();
    for t in &topics {
        Kafka::shared().create_topic(t, PARTITIONS, &[]).await?;
    }
    let name = connect.create(&env.db, &slot, &prefix).await?;
    let cpu0 = connect.cpu_secs()?;
    let r = steady_measure(&env.db, topics, "id", opts.steady_rate, opts.steady_secs).await;
    let cpu = connect.cpu_secs()? - cpu0;
    connect.delete(&name).await?;
    let (acks, got) = r?;
    let ack_lat: Vec<f64> = got
        .iter()
        .filter_map(|(id, at, _, _)| acks.get(id).map(|a| (at - a) as f64 / 1000.0))
        .collect();
    let la = latencies(ack_lat, acks.len());
    log(format!(
        "steady: Debezium p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms ({} of {} received), JVM CPU {:.1} s",
        la.p50, la.p99, la.p999, la.received, la.sent, cpu
    ));
    if la.received != la.sent {
        report.note(format!(
            "steady Debezium run: {} of {} events received",
            la.received, la.sent
        ));
    }
    let s = "4. steady state (2k events/s, 1-row txns)";
    report.add(
        s,
        "Debezium latency p50 (writer COMMIT return)",
        "ms",
        la.p50,
    );
    report.add(
        s,
        "Debezium latency p99 (writer COMMIT return)",
        "ms",
        la.p99,
    );
    report.add(
        s,
        "Debezium latency p99.9 (writer COMMIT return)",
        "ms",
        la.p999,
    );
    report.add(
        s,
        "Debezium JVM CPU per 1M events",
        "CPU s",
        cpu / (acks.len() as f64 / 1e6),
    );
    drop_env(env).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_micros() {
        assert_eq!(
            super::parse_rfc3339_micros("1970-01-01T00:00:01.000002Z"),
            Some(1_000_002)
        );
        assert_eq!(
            super::parse_rfc3339_micros("2026-11-26T05:00:00.123456Z"),
            Some(1_795_669_200_123_456)
        );
        assert_eq!(super::parse_rfc3339_micros("2026-11-26 05:00:00"), None);
    }
}
