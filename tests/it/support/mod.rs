//! What the tests of the relay share, defined once: the relay binary, a per-test database + config
//! (own slot, topics, checkpoint topic and admin port) + topics, starting a relay and waiting for
//! its `/ready`, stopping it, waiting for events to arrive, the verdict read after the relays
//! stopped, running the CLI, the TLS/SASL configuration, and reading `/metrics`.
//!
//! The rule every exactly-once test follows: wait until what was written has arrived
//! ([`wait_published`], a progress wait only), stop every relay, then read each partition to its
//! end ([`verdict`] / `Kafka::collect`) and judge; a duplicate published late cannot hide.

use std::collections::{BTreeSet, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use outbox_relay_dev::relay::find_relay_bin;
use outbox_relay_dev::{
    run_cli, verify, wait_until, Kafka, NewEvent, Postgres, RelayConfig, RelayProcess, TestDb,
    Verdict, Via, WriteSpec, Written,
};
use rand::Rng;
use tokio_postgres::Client;

/// How long a relay may take to become ready (slot, producer, checkpoint).
pub const READY_WITHIN: Duration = Duration::from_secs(60);
/// How long a relay may take to drain and exit on SIGTERM.
pub const STOP_WITHIN: Duration = Duration::from_secs(60);

/// The relay binary cargo built for this test run.
pub fn bin() -> PathBuf {
    std::env::var_os("CARGO_BIN_EXE_outbox-relay")
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO_BIN_EXE_outbox-relay").map(PathBuf::from))
        .unwrap_or_else(|| find_relay_bin().expect("relay binary"))
}

/// A fresh database with `sql/` applied and a config of its own (slot, topic prefix, checkpoint
/// topic, admin port) on the shared servers; no topic created.
pub async fn fresh() -> Result<(TestDb, RelayConfig)> {
    let pg = Postgres::shared();
    let db = pg.new_database().await?;
    let cfg = RelayConfig::new(pg, &db, Kafka::shared());
    Ok((db, cfg))
}

/// [`fresh`], plus the topics of `types` (3 partitions each).
pub async fn setup(types: &[&str]) -> Result<(TestDb, RelayConfig)> {
    let (db, cfg) = fresh().await?;
    cfg.create_topics(Kafka::shared(), types, 3).await?;
    Ok((db, cfg))
}

/// The topics events of `types` are routed to.
pub fn topics(cfg: &RelayConfig, types: &[&str]) -> Vec<String> {
    types.iter().map(|t| cfg.topic_for(t)).collect()
}

/// `total` events of `types` by `writers` concurrent writers, in transactions of `sizes` (cycled).
pub fn spec(total: usize, types: &[&str], sizes: &[usize], writers: usize) -> WriteSpec {
    WriteSpec {
        writers,
        total,
        txn_sizes: sizes.to_vec(),
        keys_per_writer: 50,
        aggregate_types: types.iter().map(|s| s.to_string()).collect(),
        payload_bytes: 300,
        batched: true,
        via: Via::Table,
    }
}

/// `n` booking events for one Postgres transaction (1000 keys, ~230-byte payloads): the large
/// transactions the split tests write with `write_batched`.
pub fn large_transaction(n: usize) -> Vec<NewEvent> {
    (0..n)
        .map(|i| {
            NewEvent::new(
                "booking",
                &format!("b-{}", i % 1000),
                "BookingCreated",
                &format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(200)),
            )
        })
        .collect()
}

/// Starts `outbox-relay run` on `cfg` without waiting for anything.
pub fn spawn(cfg: &RelayConfig, env: &[(&str, &str)]) -> Result<RelayProcess> {
    RelayProcess::spawn(&bin(), &cfg.to_toml(), env)
}

/// Starts a relay on `cfg` and waits until its `/ready` answers 200.
pub async fn start(cfg: &RelayConfig) -> Result<RelayProcess> {
    start_with_env(cfg, &[]).await
}

/// [`start`] with extra environment variables.
pub async fn start_with_env(cfg: &RelayConfig, env: &[(&str, &str)]) -> Result<RelayProcess> {
    let mut relay = spawn(cfg, env)?;
    relay
        .wait_ready(READY_WITHIN)
        .await
        .context("relay did not become ready")?;
    Ok(relay)
}

/// The same relay again (same config file and log) after it stopped or was killed, ready.
pub async fn restart(relay: &RelayProcess) -> Result<RelayProcess> {
    let mut again = relay.respawn(&bin(), &[])?;
    again
        .wait_ready(READY_WITHIN)
        .await
        .context("restarted relay did not become ready")?;
    Ok(again)
}

/// SIGTERM, and the relay must drain and exit 0 within [`STOP_WITHIN`].
pub async fn stop(relay: &mut RelayProcess) -> Result<()> {
    relay.sigterm()?;
    let status = exit_within(relay, STOP_WITHIN).await?;
    ensure!(
        status.success(),
        "relay exit {status:?} on SIGTERM; logs:\n{}",
        relay.logs()
    );
    Ok(())
}

/// Waits for the relay to exit by itself; past `deadline` it is killed and this fails with its logs.
pub async fn exit_within(relay: &mut RelayProcess, deadline: Duration) -> Result<ExitStatus> {
    match relay.wait_exit(deadline).await {
        Some(s) => Ok(s),
        None => {
            let logs = relay.logs();
            relay.kill9().await?;
            bail!("relay still running after {deadline:?}; logs:\n{logs}")
        }
    }
}

/// Waits until `relay`'s `/ready` says it stands by for a slot another session holds (503
/// "standing by").
pub async fn wait_standing_by(relay: &mut RelayProcess) -> Result<()> {
    wait_until(Duration::from_secs(30), "the relay standing by", || async {
        let (code, body) = relay.get("/ready").await?;
        Ok((code == 503 && body.contains("standing by")).then_some(()))
    })
    .await
    .with_context(|| relay.logs())
}

/// A progress wait, not a verdict: until every written event was seen committed in `topics`, or
/// `deadline` passed (then the verdict that follows names what is missing).
pub async fn wait_published(
    topics: &[String],
    written: &[Written],
    deadline: Duration,
) -> Result<()> {
    let watch = Kafka::shared().watch(topics).await?;
    let ids: HashSet<String> = written.iter().map(|w| w.id.to_string()).collect();
    let all_seen = |records: &[outbox_relay_dev::Record]| {
        records.len() >= ids.len() && {
            let seen: HashSet<&str> = records
                .iter()
                .filter_map(|r| r.header("event_id"))
                .collect();
            ids.iter().all(|id| seen.contains(id.as_str()))
        }
    };
    if let Err(e) = watch
        .wait_for(deadline, "every written event committed in Kafka", all_seen)
        .await
    {
        eprintln!("[support] {e:#}; the verdict tells what is missing");
    }
    Ok(())
}

/// A progress wait: until at least `n` records are committed in `topics`.
pub async fn wait_records(topics: &[String], n: usize, deadline: Duration) -> Result<()> {
    Kafka::shared()
        .watch(topics)
        .await?
        .wait_for_count(n, deadline)
        .await
}

/// The verdict, once every relay stopped: each partition of `topics` read to its end
/// (`read_committed`) against what was written.
pub async fn verdict(topics: &[String], written: &[Written]) -> Result<Verdict> {
    let received = Kafka::shared().collect(topics).await?;
    Ok(verify(written, &received))
}

/// The first column of the first row of `sql`.
pub async fn scalar_i64(client: &Client, sql: &str) -> Result<i64> {
    Ok(client
        .query_one(sql, &[])
        .await
        .with_context(|| sql.to_string())?
        .get(0))
}

/// Inserts one outbox row with raw SQL values (so it may be bad) and returns its event id.
pub async fn insert_raw(client: &Client, values: &str) -> Result<String> {
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

/// A random pause in `ms` milliseconds (a kill at a random moment).
pub fn random_pause(ms: Range<u64>) -> Duration {
    Duration::from_millis(rand::rng().random_range(ms))
}

/// VmHWM of a process, in KiB (0 if it cannot be read).
pub fn peak_rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// The CLI

/// What a one-shot command (`validate`, `status`, `run` that fails at once) did.
#[derive(Debug)]
pub struct Cli {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Cli {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// stdout and stderr together.
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// `outbox-relay <args>` with `env`.
pub fn cli(args: &[&str], env: &[(&str, &str)]) -> Result<Cli> {
    let (status, stdout, stderr) = run_cli(&bin(), args, env)?;
    Ok(Cli {
        status,
        stdout,
        stderr,
    })
}

/// `outbox-relay <args> --config <file>`, with `cfg` written to a private temporary file.
pub fn cli_with(cfg: &RelayConfig, args: &[&str], env: &[(&str, &str)]) -> Result<Cli> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("relay.toml");
    write_private(&path, &cfg.to_toml())?;
    cli_on(&path, args, env)
}

/// `outbox-relay <args> --config <path>`.
pub fn cli_on(path: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<Cli> {
    let path = path.to_str().context("config path is not UTF-8")?;
    let mut all = args.to_vec();
    all.extend(["--config", path]);
    cli(&all, env)
}

/// Writes a file only its owner may read (a config with passwords).
pub fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// TLS and SASL

/// Postgres over TLS (`verify-full` against the harness CA, host name `localhost`) and Kafka over
/// SASL_SSL (SCRAM-SHA-512, the harness CA).
pub fn secure(cfg: &mut RelayConfig) {
    let pg = Postgres::shared();
    let kafka = Kafka::shared();
    cfg.set("postgres.host", "localhost");
    cfg.set("postgres.sslmode", "verify-full");
    cfg.set(
        "postgres.sslrootcert",
        pg.ca_path().to_string_lossy().into_owned(),
    );
    cfg.set("kafka.bootstrap_servers", kafka.sasl_ssl_bootstrap());
    cfg.set("kafka.security_protocol", "sasl_ssl");
    cfg.set("kafka.sasl_mechanism", Kafka::SASL_MECHANISM);
    cfg.set("kafka.sasl_username", Kafka::SASL_USER);
    cfg.set("kafka.sasl_password", Kafka::SASL_PASSWORD);
    cfg.set(
        "kafka.ssl_ca_location",
        kafka.ca_path().to_string_lossy().into_owned(),
    );
}

// ---------------------------------------------------------------------------------------------
// /metrics

/// One parsed scrape of a relay's `/metrics`.
#[derive(Debug)]
pub struct Scrape {
    pub text: String,
    samples: Vec<(String, String, f64)>,
}

/// Scrapes the relay's `/metrics`.
pub async fn scrape(relay: &RelayProcess) -> Result<Scrape> {
    let (code, text) = relay.get("/metrics").await?;
    if code != 200 {
        bail!("/metrics answered {code}");
    }
    let mut samples = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').context("sample line")?;
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        samples.push((name.to_string(), labels.to_string(), value.parse()?));
    }
    Ok(Scrape { text, samples })
}

impl Scrape {
    /// The sum over every series of `name` (the value of an unlabelled one).
    pub fn value(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, _, v)| v)
            .sum()
    }

    /// The sum over the series of `name` whose labels contain `label` (e.g. `topic="x"`).
    pub fn get(&self, name: &str, label: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| n == name && l.contains(label))
            .map(|(_, _, v)| v)
            .sum()
    }

    /// Sample names the relay exports, including those of families without samples yet
    /// (labelled counters before their first increment), from the `# TYPE` lines.
    pub fn sample_names(&self) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = self.samples.iter().map(|(n, _, _)| n.clone()).collect();
        for line in self.text.lines() {
            let Some(rest) = line.strip_prefix("# TYPE ") else {
                continue;
            };
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            match kind {
                "counter" => {
                    out.insert(format!("{name}_total"));
                }
                "histogram" => {
                    for s in ["_bucket", "_sum", "_count"] {
                        out.insert(format!("{name}{s}"));
                    }
                }
                "info" => {
                    out.insert(format!("{name}_info"));
                }
                _ => {
                    out.insert(name.to_string());
                }
            }
        }
        out
    }
}
