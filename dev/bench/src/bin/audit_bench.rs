//! Benchmark of `outbox-relay audit` at 1M and 10M events: wall time, events per second and peak
//! RSS, on the dev harness's private Postgres and Kafka.
//!
//! It plays the relay quickly instead of running it (a relay drains ~60k rows/s, which would make
//! a 10M-event setup take hours): rows go in with `INSERT ... SELECT generate_series` in 1M-row
//! transactions (payloads of ~110 bytes of JSON with hashes in them, so lz4 compresses them about
//! as much as real events, not 10x), and each row's record is produced straight to its topic with rdkafka in big lz4
//! batches, with the headers the relay writes (`event_id`, `created_at`, `pg_xid` = the row's
//! `xmin`, an increasing `pg_lsn`, `pg_commit_ts`) and the murmur2 partitioner. A checkpoint ahead
//! of any cut is written as the relay would have after publishing everything. Then
//! `outbox-relay audit --json` runs as a child process; the figures are its wall time, and the
//! CPU time and peak RSS (VmHWM) it reports for itself. The verdict must be clean: a bench that found discrepancies
//! would measure the wrong thing.
//!
//! ```text
//! cargo build --release -p outbox-relay -p outbox-relay-bench
//! target/release/audit_bench --events 1000000 --events 10000000
//! ```

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use outbox_relay::sink::checkpoint::Checkpoint;
use outbox_relay_dev::relay::find_relay_bin;
use outbox_relay_dev::{Kafka, Postgres, RelayConfig};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;

const TYPES: [&str; 3] = ["booking", "car", "customer"];
const PARTITIONS: i32 = 6;
const AGGREGATES: i64 = 100_000;
const CHUNK: i64 = 1_000_000;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let mut sizes = Vec::new();
    let mut hold = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--events" => sizes.push(args.next().context("--events N")?.parse::<i64>()?),
            // Tuning: after each size, run audit again on the same data for every line on stdin.
            "--hold" => hold = true,
            other => {
                bail!("unknown argument {other:?} (usage: audit_bench [--events N]... [--hold])")
            }
        }
    }
    if sizes.is_empty() {
        sizes = vec![1_000_000, 10_000_000];
    }
    // Built beside this binary (target/release); OUTBOX_RELAY_BIN overrides.
    let beside = std::env::current_exe()?.with_file_name("outbox-relay");
    let relay_bin = match std::env::var_os("OUTBOX_RELAY_BIN") {
        None if beside.exists() => beside,
        _ => find_relay_bin()?,
    };
    let pg = Postgres::shared();
    let kafka = Kafka::shared();
    println!("| events | rows + records | audit wall s | events/s | rows+records/s | audit CPU s | peak RSS MiB | sorted runs on disk | verdict |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for n in sizes {
        let db = pg.new_database().await?;
        let cfg = RelayConfig::new(pg, &db, kafka);
        cfg.create_topics(kafka, &TYPES, PARTITIONS).await?;
        cfg.create_checkpoint_topic(kafka).await?;
        let client = db.client().await?;

        let t = Instant::now();
        let mut done = 0;
        while done < n {
            let m = CHUNK.min(n - done);
            client
                .execute(
                    "INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload, created_at) \
                     SELECT gen_random_uuid(), ($3::text[])[1 + g % 3], 'agg-' || (g % $4), 'Created', \
                            jsonb_build_object('n', g, 'ref', md5(g::text), 'by', md5((g % 977)::text)), clock_timestamp() \
                     FROM generate_series($1::int8, $2::int8) g",
                    &[&done, &(done + m - 1), &TYPES.to_vec(), &AGGREGATES],
                )
                .await?;
            done += m;
        }
        eprintln!(
            "audit_bench: {n} rows inserted in {:.1}s",
            t.elapsed().as_secs_f64()
        );

        let t = Instant::now();
        let producer: BaseProducer = kafka
            .client_config()
            .set("partitioner", "murmur2_random")
            .set("compression.type", "lz4")
            .set("linger.ms", "50")
            .set("batch.size", "1000000")
            .set("queue.buffering.max.messages", "1000000")
            .set("queue.buffering.max.kbytes", "1048576")
            .create()?;
        client.batch_execute("SET TimeZone = 'UTC'").await?;
        let rows = client
            .query_raw(
                "SELECT id::text, aggregate_type, aggregate_id, payload::text, created_at::text, \
                        xmin::text, to_char(created_at, 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') \
                 FROM outbox ORDER BY created_at",
                std::iter::empty::<&str>(),
            )
            .await?;
        futures::pin_mut!(rows);
        let mut lsn: u64 = 0x1_0000_0000;
        let mut sent = 0u64;
        while let Some(row) = rows.next().await {
            let row = row?;
            let (id, at, key, payload, created, xid, commit): (
                &str,
                &str,
                &str,
                &str,
                &str,
                &str,
                &str,
            ) = (
                row.get(0),
                row.get(1),
                row.get(2),
                row.get(3),
                row.get(4),
                row.get(5),
                row.get(6),
            );
            lsn += 0x100;
            let lsn_text = outbox_relay::Lsn(lsn).to_string();
            let headers = OwnedHeaders::new_with_capacity(7)
                .insert(Header {
                    key: "event_id",
                    value: Some(id),
                })
                .insert(Header {
                    key: "event_type",
                    value: Some("Created"),
                })
                .insert(Header {
                    key: "aggregate_type",
                    value: Some(at),
                })
                .insert(Header {
                    key: "created_at",
                    value: Some(created),
                })
                .insert(Header {
                    key: "pg_lsn",
                    value: Some(lsn_text.as_str()),
                })
                .insert(Header {
                    key: "pg_xid",
                    value: Some(xid),
                })
                .insert(Header {
                    key: "pg_commit_ts",
                    value: Some(commit),
                });
            let topic = cfg.topic_for(at);
            let mut rec = BaseRecord::to(&topic)
                .key(key)
                .payload(payload)
                .headers(headers);
            loop {
                match producer.send(rec) {
                    Ok(()) => break,
                    Err((e, back))
                        if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) =>
                    {
                        producer.poll(Duration::from_millis(50));
                        rec = back;
                    }
                    Err((e, _)) => return Err(e.into()),
                }
            }
            sent += 1;
            if sent.is_multiple_of(10_000) {
                producer.poll(Duration::ZERO);
            }
        }
        producer.flush(Duration::from_secs(300))?;
        eprintln!(
            "audit_bench: {sent} records produced in {:.1}s",
            t.elapsed().as_secs_f64()
        );

        // The checkpoint a relay would hold after publishing all of it (past any cut).
        let system_id: String = client
            .query_one(
                "SELECT system_identifier::text FROM pg_control_system()",
                &[],
            )
            .await?
            .get(0);
        let key = format!("{system_id}/{}/{}", db.name, cfg.slot);
        let cp = Checkpoint {
            resume_lsn: outbox_relay::Lsn(u64::from(u32::MAX) << 32),
            ..Checkpoint::default()
        };
        let value = cp.encode();
        producer
            .send(
                BaseRecord::to(&cfg.checkpoint_topic)
                    .partition(0)
                    .key(&key)
                    .payload(&value),
            )
            .map_err(|(e, _)| e)?;
        producer.flush(Duration::from_secs(30))?;
        drop(producer);

        // The audit, as a child: wall time and peak RSS from wait4.
        let config = std::env::temp_dir().join(format!("audit_bench-{}.toml", std::process::id()));
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&config)?;
            std::io::Write::write_all(&mut f, cfg.to_toml().as_bytes())?;
        }
        loop {
            run_audit(&relay_bin, &config, n).await?;
            if !hold {
                break;
            }
            eprintln!(
                "audit_bench: holding {}: a line on stdin runs audit again, EOF goes on",
                config.display()
            );
            let mut line = String::new();
            if std::io::stdin().read_line(&mut line)? == 0 {
                break;
            }
        }
        let admin = pg.admin("postgres").await?;
        drop(client);
        admin
            .batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", db.name))
            .await?;
        let _ = std::fs::remove_file(&config);
    }
    Ok(())
}

/// Runs `outbox-relay audit --json` as a child; prints a table row; fails unless clean.
async fn run_audit(relay_bin: &std::path::Path, config: &std::path::Path, n: i64) -> Result<()> {
    let t = Instant::now();
    let child = Command::new(relay_bin)
        .args(["audit", "--config"])
        .arg(config)
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start audit")?;
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    let wall = t.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = out.status;
    let report: serde_json::Value = serde_json::from_str(&stdout)
        .with_context(|| format!("audit printed no report (status {status}):\n{stdout}"))?;
    let events = report["rows"]["judged"].as_u64().unwrap_or(0)
        + report["rows"]["context"].as_u64().unwrap_or(0)
        + report["kafka"]["records"].as_u64().unwrap_or(0);
    // Peak RSS as audit measures it (VmHWM read at its end). Not the child's ru_maxrss: Linux
    // folds the forked copy of this (large) process into it before exec.
    println!(
        "| {n} | {events} | {wall:.1} | {:.0} | {:.0} | {:.1} | {:.0} | {} | {} |",
        n as f64 / wall,
        events as f64 / wall,
        report["resources"]["cpu_seconds"].as_f64().unwrap_or(0.0),
        report["resources"]["peak_rss_mib"].as_f64().unwrap_or(0.0),
        report["resources"]["sort_runs_on_disk"],
        report["verdict"].as_str().unwrap_or("?")
    );
    if report["verdict"] != "clean" {
        bail!(
            "audit did not find the bench's data clean:\n{}",
            serde_json::to_string_pretty(&report["findings"])?
        );
    }
    Ok(())
}
