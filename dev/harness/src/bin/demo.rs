//! The demo (`dev/demo`): local Postgres and Kafka (the harness), a database with sql/ applied, the relay
//! as a child process, the car-rental monolith writing bookings with their outbox events, and the
//! NotificationService consumer printing each event once.
//!
//! ```text
//! monolith ──(booking + outbox row, one txn)──> Postgres ──(logical replication)──> outbox-relay
//!                                                                                      │ Kafka txn
//! notification consumer <──(read_committed, dedupe by event_id)── outbox.booking <─────┘
//! ```
//!
//! Ctrl-C (or SIGTERM) stops the monolith, then the relay (SIGTERM: it drains its open Kafka
//! transaction), then the consumer, then the servers. `--events N` stops by itself once the consumer has
//! processed N events. The binaries it runs come from the same target dir: `outbox-relay` and
//! `examples/{monolith,consumer}` (`cargo build --bins --examples`), or `OUTBOX_RELAY_BIN` for the relay.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use outbox_relay_dev::process::{self, ManagedChild};
use outbox_relay_dev::{Kafka, Postgres, RelayConfig, RelayProcess};

const USAGE: &str = "\
demo: the outbox-relay demo on local Postgres and Kafka (no Docker).

Usage: demo [--events N] [--rate R]

  --events N   stop by itself after the consumer has processed N events (default: run until Ctrl-C)
  --rate R     bookings changes per second written by the monolith (default 3)
  -h, --help   this text

Run it through dev/demo, which installs what is missing and builds the binaries first.";

const TOPIC: &str = "outbox.booking";

#[derive(Debug)]
struct Args {
    events: u64,
    rate: f64,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        events: 0,
        rate: 3.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .with_context(|| format!("{name} needs a value\n\n{USAGE}"))
        };
        match a.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--events" => args.events = value("--events")?.parse().context("--events")?,
            "--rate" => args.rate = value("--rate")?.parse().context("--rate")?,
            other => bail!("unknown argument {other:?}\n\n{USAGE}"),
        }
    }
    Ok(args)
}

fn main() {
    let code = match parse_args().and_then(|args| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("start the runtime")?
            .block_on(run(args))
    }) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("[demo] error: {e:#}");
            1
        }
    };
    // exit() runs the harness' atexit handler: servers killed, their dirs removed.
    std::process::exit(code);
}

/// Where the relay and the examples were built: next to this binary (target/<profile>/).
fn built(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("binary dir")?;
    let path = dir.join(name);
    if path.exists() {
        Ok(path)
    } else {
        bail!(
            "{} not found: build it first (`cargo build --bins --examples`, or run dev/demo)",
            path.display()
        )
    }
}

fn relay_bin() -> Result<PathBuf> {
    match std::env::var_os("OUTBOX_RELAY_BIN") {
        Some(p) => Ok(PathBuf::from(p)),
        None => built("outbox-relay"),
    }
}

/// An example program as a child in its own process group (so the terminal's Ctrl-C reaches only the
/// demo, which stops things in order), killed if the demo dies; output goes to the demo's stdout.
fn spawn_example(bin: &Path, args: &[String], env: &[(&str, String)]) -> Result<ManagedChild> {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    process::spawn_managed(cmd)
}

/// SIGTERM, then wait up to `deadline` (SIGKILL after that).
async fn stop(child: &mut ManagedChild, what: &str, deadline: Duration) -> Option<ExitStatus> {
    if let Ok(Some(s)) = child.try_wait() {
        return Some(s);
    }
    let _ = process::send_signal(child.pid(), libc::SIGTERM);
    match child.wait_group_gone(deadline).await {
        Ok(s) => Some(s),
        Err(_) => {
            eprintln!("[demo] {what} did not stop within {deadline:?}; killing it");
            child.kill9().await.ok()
        }
    }
}

async fn run(args: Args) -> Result<i32> {
    let relay_bin = relay_bin()?;
    let monolith_bin = built("examples/monolith")?;
    let consumer_bin = built("examples/consumer")?;

    println!("[demo] starting Postgres and Kafka (local, private, removed on exit)...");
    let (pg, kafka) = tokio::task::spawn_blocking(|| (Postgres::shared(), Kafka::shared()))
        .await
        .context("start the servers")?;

    // The monolith's database, with sql/ applied (outbox table, publication, relay role).
    let db = pg.new_database().await?;
    // The NotificationService's own database (processed_events lives there, not in the monolith's).
    let notification_db = "notification_service";
    pg.admin("postgres")
        .await?
        .batch_execute(&format!("CREATE DATABASE {notification_db}"))
        .await
        .context("create the consumer's database")?;
    let url = |dbname: &str| {
        format!(
            "host={} port={} user={} password={} dbname={dbname}",
            pg.host(),
            pg.port(),
            pg.superuser(),
            pg.superuser_password()
        )
    };

    let mut cfg = RelayConfig::new(pg, &db, kafka);
    cfg.set("postgres.slot", "outbox_relay")
        .set("kafka.checkpoint_topic", "outbox_relay.checkpoints")
        .set("routing.topic_template", "outbox.{aggregate_type}");
    kafka.create_topic(TOPIC, 3, &[]).await?;

    let mut relay = RelayProcess::spawn(&relay_bin, &cfg.to_toml(), &[])?;
    relay
        .wait_ready(Duration::from_secs(60))
        .await
        .context("the relay did not start")?;
    println!(
        "[demo] relay running (pid {}; config {}; log {})",
        relay.pid(),
        relay.config_path().display(),
        relay.log_path().display()
    );

    let mut consumer_args = vec![
        "--bootstrap-servers".to_string(),
        kafka.bootstrap(),
        "--topics".to_string(),
        TOPIC.to_string(),
    ];
    if args.events > 0 {
        consumer_args.extend(["--events".to_string(), args.events.to_string()]);
    }
    let mut consumer = spawn_example(
        &consumer_bin,
        &consumer_args,
        &[("DATABASE_URL", url(notification_db))],
    )?;
    let mut monolith = spawn_example(
        &monolith_bin,
        &["--rate".to_string(), args.rate.to_string()],
        &[("DATABASE_URL", url(&db.name))],
    )?;
    println!(
        "[demo] monolith and NotificationService running; {}",
        if args.events > 0 {
            format!("stopping after {} events", args.events)
        } else {
            "Ctrl-C to stop".to_string()
        }
    );

    // Streams created once: a signal that arrives between two polls is kept, not lost.
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let reason = loop {
        tokio::select! {
            _ = int.recv() => break "interrupted".to_string(),
            _ = term.recv() => break "terminated".to_string(),
            _ = tick.tick() => {}
        }
        if let Some(s) = consumer.try_wait()? {
            break format!("consumer exited ({s})");
        }
        if let Some(s) = monolith.try_wait()? {
            break format!("monolith exited ({s})");
        }
        if !relay.is_running() {
            break format!("relay exited; its log:\n{}", relay.logs());
        }
    };
    println!("[demo] stopping ({reason})");
    // A second Ctrl-C while stopping: leave at once (the servers and children die with the demo).
    tokio::spawn(async move {
        let _ = int.recv().await;
        eprintln!("[demo] second interrupt: aborting");
        std::process::exit(130);
    });

    // In order: no new events, then the relay drains its open transaction, then the consumer.
    let monolith_status = stop(&mut monolith, "monolith", Duration::from_secs(10)).await;
    let relay_status = if relay.is_running() {
        relay.sigterm()?;
        let s = relay.wait_exit(Duration::from_secs(30)).await;
        if s.is_none() {
            eprintln!("[demo] relay did not drain within 30s; killing it");
            relay.kill9().await.ok()
        } else {
            s
        }
    } else {
        relay.wait_exit(Duration::ZERO).await
    };
    println!(
        "[demo] relay stopped: {}",
        relay_status.map_or("killed".to_string(), |s| s.to_string())
    );
    let consumer_status = stop(&mut consumer, "consumer", Duration::from_secs(10)).await;

    let ok = |s: Option<ExitStatus>| s.is_some_and(|s| s.success());
    // Stopped by a signal we sent is fine; a child that failed on its own is not.
    let clean = ok(relay_status) && ok(consumer_status) && ok(monolith_status);
    if clean {
        println!("[demo] done");
        Ok(0)
    } else {
        eprintln!(
            "[demo] not clean: monolith {monolith_status:?}, relay {relay_status:?}, consumer {consumer_status:?}; relay log: {}",
            relay.log_path().display()
        );
        Ok(1)
    }
}
