//! Running the relay as a service (issue 5), against the real servers: the systemd unit (verify,
//! sandbox exposure), sd_notify (READY, WATCHDOG, STOPPING, a stalled loop going silent), the admin
//! endpoints (/metrics before and after a burst, /ready through standby, takeover and drain), the
//! alert rules and dashboard naming only exported metrics, SIGHUP under load (exactly once; a
//! refused change keeps the old config), and the `status` subcommand in both formats.
//!
//! Self-contained helpers (HTTP GET, metric parsing, a notify socket) live at the bottom.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use outbox_relay_dev::postgres::slot_info;
use outbox_relay_dev::relay::find_relay_bin;
use outbox_relay_dev::{
    free_port, repo_root, run_cli, shared_servers, verify, wait_until, write_concurrently, Kafka,
    Postgres, RelayConfig, RelayProcess, TestDb, WriteSpec,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const READY: &str = "outbox-relay started";

fn bin() -> PathBuf {
    std::env::var_os("CARGO_BIN_EXE_outbox-relay")
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO_BIN_EXE_outbox-relay").map(PathBuf::from))
        .unwrap_or_else(|| find_relay_bin().expect("relay binary"))
}

/// A database, a config with its own slot, topics and admin port, and the topics created.
async fn setup(types: &[&str]) -> Result<(TestDb, RelayConfig, u16)> {
    let pg = Postgres::shared();
    let kafka = Kafka::shared();
    let db = pg.new_database().await?;
    let mut cfg = RelayConfig::new(pg, &db, kafka);
    let port = free_port();
    cfg.set("admin.listen", format!("127.0.0.1:{port}"));
    cfg.create_topics(kafka, types, 3).await?;
    Ok((db, cfg, port))
}

fn topics(cfg: &RelayConfig, types: &[&str]) -> Vec<String> {
    types.iter().map(|t| cfg.topic_for(t)).collect()
}

fn spec(total: usize, types: &[&str], writers: usize) -> WriteSpec {
    WriteSpec {
        writers,
        total,
        txn_sizes: vec![1, 10, 100],
        keys_per_writer: 50,
        aggregate_types: types.iter().map(|s| s.to_string()).collect(),
        payload_bytes: 200,
        batched: true,
    }
}

async fn spawn_ready(cfg: &RelayConfig, env: &[(&str, &str)]) -> Result<RelayProcess> {
    let mut relay = RelayProcess::spawn(&bin(), &cfg.to_toml(), env)?;
    relay
        .wait_for_log(READY, Duration::from_secs(60))
        .await
        .context("relay did not become ready")?;
    Ok(relay)
}

// ---------------------------------------------------------------------------------------------
// systemd unit

#[test]
fn systemd_unit_verifies_and_its_exposure_is_at_most_2() -> Result<()> {
    let root = repo_root();
    let unit = std::fs::read_to_string(root.join("systemd/outbox-relay.service"))?;
    // verify needs the ExecStart binary to exist: point the unit at the built one and the example
    // config, in a copy.
    let dir = tempfile::tempdir()?;
    let bin = bin();
    let copy = unit
        .replace("/usr/local/bin/outbox-relay", &bin.to_string_lossy())
        .replace(
            "/etc/outbox-relay/outbox-relay.toml",
            &root.join("systemd/outbox-relay.toml").to_string_lossy(),
        );
    let path = dir.path().join("outbox-relay.service");
    std::fs::write(&path, copy)?;
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .context("systemd-analyze (install the systemd package: dev/setup does)")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success() && !stderr.contains("outbox-relay.service:"),
        "systemd-analyze verify failed: {stderr}"
    );
    let out = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&path)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .with_context(|| {
            format!(
                "no exposure figure in: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    let figure: f64 = line
        .split(':')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .context("exposure figure")?
        .parse()?;
    println!("systemd-analyze security: {}", line.trim());
    ensure!(figure <= 2.0, "exposure {figure} > 2.0: {line}");

    // The example config is valid, and the unit's restart policy matches the exit codes.
    let (status, out, err) = run_cli(
        &bin,
        &[
            "validate",
            "--config",
            &root.join("systemd/outbox-relay.toml").to_string_lossy(),
        ],
        &[],
    )?;
    ensure!(status.success(), "example config: {out}{err}");
    ensure!(unit.contains("RestartPreventExitStatus=78 65 70"));
    ensure!(unit.contains("Type=notify") && unit.contains("WatchdogSec="));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// sd_notify

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sd_notify_ready_watchdog_stopping_and_a_stalled_loop_goes_silent() -> Result<()> {
    let _guard = shared_servers().await;
    let types = ["booking"];

    // A healthy relay: READY=1 after the readiness log, WATCHDOG=1 while running (idle too),
    // STOPPING=1 on SIGTERM.
    let (_db, cfg, _port) = setup(&types).await?;
    let mut sock = NotifySocket::new()?;
    let env = sock.env(1_000_000);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut relay = RelayProcess::spawn(&bin(), &cfg.to_toml(), &env)?;
    let ready = sock.wait_for("READY=1", Duration::from_secs(60)).await?;
    ensure!(
        relay.logs().contains(READY),
        "READY=1 before the readiness log: {ready}"
    );
    // Idle and healthy: at least 3 pings in 3 s (interval 1 s / 4).
    sock.drain();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pings = sock
        .drain()
        .iter()
        .filter(|m| m.contains("WATCHDOG=1"))
        .count();
    ensure!(
        pings >= 3,
        "only {pings} WATCHDOG=1 in 3 s\n{}",
        relay.logs()
    );
    relay.sigterm()?;
    sock.wait_for("STOPPING=1", Duration::from_secs(10)).await?;
    let status = relay
        .wait_exit(Duration::from_secs(30))
        .await
        .context("no exit after SIGTERM")?;
    ensure!(status.success(), "{status:?}\n{}", relay.logs());

    // A relay whose loop stops turning 2 s after it started (test hook): pings stop, /ready then
    // flips to 503 on SIGTERM (draining), STOPPING=1 is sent, and the drain deadline ends it.
    let (_db2, mut cfg2, port2) = setup(&types).await?;
    cfg2.set("shutdown.drain_timeout_ms", 3000i64);
    let mut sock2 = NotifySocket::new()?;
    let mut env2 = sock2.env(1_000_000);
    env2.push(("OUTBOX_RELAY_TEST_STALL_AFTER_READY", "2".to_string()));
    let env2: Vec<(&str, &str)> = env2.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut stalled = RelayProcess::spawn(&bin(), &cfg2.to_toml(), &env2)?;
    sock2.wait_for("READY=1", Duration::from_secs(60)).await?;
    sock2
        .wait_for("WATCHDOG=1", Duration::from_secs(5))
        .await
        .context("no ping before the stall")?;
    stalled
        .wait_for_log("test hook", Duration::from_secs(10))
        .await?;
    // Give the forwarder one interval to notice, then expect silence for 3 s.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sock2.drain();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let late: Vec<String> = sock2
        .drain()
        .into_iter()
        .filter(|m| m.contains("WATCHDOG=1"))
        .collect();
    ensure!(
        late.is_empty(),
        "a stalled pipeline still fed the watchdog: {late:?}\n{}",
        stalled.logs()
    );
    ensure!(stalled
        .logs()
        .contains("no longer feeding the systemd watchdog"));
    ensure!(http_get(port2, "/live").await?.0 == 200);
    stalled.sigterm()?;
    sock2
        .wait_for("STOPPING=1", Duration::from_secs(10))
        .await?;
    let (code, body) = http_get(port2, "/ready").await?;
    ensure!(
        code == 503 && body.contains("draining"),
        "/ready while draining: {code} {body}"
    );
    let status = stalled
        .wait_exit(Duration::from_secs(20))
        .await
        .context("the drain deadline did not end a stalled relay")?;
    ensure!(status.code() == Some(1), "{status:?}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// /metrics and /ready

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_a_burst_and_ready_follows_standby_takeover_and_drain() -> Result<()> {
    let _guard = shared_servers().await;
    let types = ["booking", "car"];
    let (db, cfg, port) = setup(&types).await?;
    let mut a = spawn_ready(&cfg, &[]).await?;
    ensure!(http_get(port, "/live").await?.0 == 200);
    wait_until(Duration::from_secs(10), "/ready 200", || async {
        Ok((http_get(port, "/ready").await?.0 == 200).then_some(()))
    })
    .await?;
    let before = scrape(port).await?;
    ensure!(before.value("outbox_relay_ready") == 1.0);
    ensure!(before.sum("outbox_relay_events_published_total") == 0.0);

    let n = 3000;
    let written = write_concurrently(&db, &spec(n, &types, 2)).await?;
    let received = Kafka::shared()
        .collect(
            &topics(&cfg, &types),
            written.len(),
            Duration::from_secs(120),
            true,
        )
        .await?;
    verify(&written, &received).assert_exactly_once();
    // Counters count committed events exactly; the lag returns to (near) zero once drained.
    let after = wait_until(Duration::from_secs(30), "metrics settle", || async {
        let m = scrape(port).await?;
        let lag = m.value("outbox_relay_replication_lag_bytes");
        Ok(
            (m.sum("outbox_relay_events_published_total") == n as f64 && lag < 1_000_000.0)
                .then_some(m),
        )
    })
    .await?;
    println!("/metrics after {n} events:\n{}", after.text);
    for t in topics(&cfg, &types) {
        ensure!(
            after.get(
                "outbox_relay_events_published_total",
                &format!("topic=\"{t}\"")
            ) > 0.0,
            "no count for topic {t}"
        );
    }
    ensure!(
        after.value("outbox_relay_kafka_transactions_committed_total")
            > before.value("outbox_relay_kafka_transactions_committed_total")
    );
    ensure!(
        after.value("outbox_relay_checkpoint_lsn") > before.value("outbox_relay_checkpoint_lsn")
    );
    ensure!(
        after.value("outbox_relay_server_wal_lsn") >= after.value("outbox_relay_checkpoint_lsn")
    );
    ensure!(after.value("outbox_relay_end_to_end_latency_seconds_count") == n as f64);
    ensure!(after.value("outbox_relay_kafka_transaction_events_sum") == n as f64);
    ensure!(after.value("outbox_relay_last_commit_age_seconds") < 30.0);
    wait_until(Duration::from_secs(30), "retained WAL gauge", || async {
        let m = scrape(port).await?;
        Ok((m.value("outbox_relay_slot_retained_wal_bytes") > 0.0).then_some(()))
    })
    .await?;
    ensure!(after.text.contains(&format!(
        "outbox_relay_info{{version=\"{}\",slot=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        cfg.slot
    )));

    // A second relay on the same slot stands by: live, not ready.
    let mut cfg_b = cfg.clone();
    let port_b = free_port();
    cfg_b.set("admin.listen", format!("127.0.0.1:{port_b}"));
    let mut b = RelayProcess::spawn(&bin(), &cfg_b.to_toml(), &[])?;
    b.wait_for_log("standing by", Duration::from_secs(60))
        .await?;
    wait_until(Duration::from_secs(10), "standby metrics", || async {
        let m = scrape(port_b).await?;
        Ok((m.value("outbox_relay_standby") == 1.0).then_some(m))
    })
    .await?;
    ensure!(http_get(port_b, "/live").await?.0 == 200);
    let (code, body) = http_get(port_b, "/ready").await?;
    ensure!(code == 503 && body.contains("standing by"), "{code} {body}");

    // The active one stops: the standby takes over and becomes ready.
    a.sigterm()?;
    ensure!(a
        .wait_exit(Duration::from_secs(30))
        .await
        .is_some_and(|s| s.success()));
    wait_until(
        Duration::from_secs(60),
        "standby ready after takeover",
        || async { Ok((http_get(port_b, "/ready").await?.0 == 200).then_some(())) },
    )
    .await?;
    let m = scrape(port_b).await?;
    ensure!(m.value("outbox_relay_standby") == 0.0 && m.value("outbox_relay_ready") == 1.0);
    b.sigterm()?;
    ensure!(b.wait_exit(Duration::from_secs(30)).await.is_some());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// ops/: alert rules and dashboard

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_rules_and_dashboard_name_only_exported_metrics() -> Result<()> {
    let _guard = shared_servers().await;
    let root = repo_root();
    let rules = root.join("ops/alerts.yml");
    let out = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .context("promtool (apt-get install prometheus; dev/setup does)")?;
    ensure!(
        out.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let (_db, cfg, port) = setup(&["booking"]).await?;
    let _relay = spawn_ready(&cfg, &[]).await?;
    let exported = scrape(port).await?.sample_names();

    let rules_text = std::fs::read_to_string(&rules)?;
    let used = metric_names(&rules_text);
    ensure!(!used.is_empty());
    for name in &used {
        ensure!(
            exported.contains(name),
            "ops/alerts.yml names {name}, which the relay does not export"
        );
    }
    let readme = std::fs::read_to_string(root.join("README.md"))?;
    let runbook = readme
        .split("## Alerts and runbook")
        .nth(1)
        .context("README has no \"## Alerts and runbook\" section")?;
    for alert in rules_text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
    {
        ensure!(
            runbook.contains(&format!("### {}", alert.trim())),
            "no runbook entry for {alert}"
        );
    }

    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        root.join("ops/grafana-dashboard.json"),
    )?)
    .context("dashboard JSON")?;
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    ensure!(exprs.len() >= 8, "dashboard has {} queries", exprs.len());
    for e in &exprs {
        let names = metric_names(e);
        ensure!(!names.is_empty(), "query names no metric: {e}");
        for name in names {
            ensure!(
                exported.contains(&name),
                "dashboard query {e} names {name}, which the relay does not export"
            );
        }
    }
    Ok(())
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                if k == "expr" {
                    if let Some(s) = v.as_str() {
                        out.push(s.to_string());
                    }
                } else {
                    collect_exprs(v, out);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// Every `outbox_relay_*` identifier in a PromQL text (labels and functions are not ours).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("outbox_relay_") {
        let start = i + pos;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

// ---------------------------------------------------------------------------------------------
// SIGHUP

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_under_load_applies_batch_limits_refuses_slot_change_and_loses_nothing() -> Result<()>
{
    let _guard = shared_servers().await;
    let types = ["booking", "car"];
    let (db, mut cfg, port) = setup(&types).await?;
    let mut relay = spawn_ready(&cfg, &[]).await?;
    let writer = {
        let spec = spec(40_000, &types, 2);
        let db = db.clone();
        tokio::spawn(async move { write_concurrently(&db, &spec).await })
    };
    let kafka = Kafka::shared();
    wait_until(Duration::from_secs(60), "events flowing", || async {
        let m = scrape(port).await?;
        Ok((m.sum("outbox_relay_events_published_total") > 500.0).then_some(()))
    })
    .await?;

    // Accepted: batch limits, several times while events flow.
    for (i, max_events) in [500i64, 50, 2000].into_iter().enumerate() {
        cfg.set("batch.max_events", max_events);
        std::fs::write(relay.config_path(), cfg.to_toml())?;
        relay.sighup()?;
        wait_until(Duration::from_secs(10), "reload applied", || async {
            let logs = relay.logs();
            Ok((logs
                .matches("configuration reloaded: applied batch.max_events")
                .count()
                > i
                && logs
                    .matches("reloaded settings applied to the running pipeline")
                    .count()
                    > i)
                .then_some(()))
        })
        .await
        .with_context(|| relay.logs())?;
    }
    // Refused: the slot. The old config keeps running.
    let original_slot = cfg.slot.clone();
    cfg.set("postgres.slot", "some_other_slot");
    cfg.set("batch.max_events", 7i64);
    std::fs::write(relay.config_path(), cfg.to_toml())?;
    relay.sighup()?;
    relay
        .wait_for_log("configuration reload refused", Duration::from_secs(10))
        .await?;
    let logs = relay.logs();
    let refusal = logs
        .lines()
        .find(|l| l.contains("configuration reload refused"))
        .unwrap_or_default();
    ensure!(refusal.contains("postgres.slot"), "{refusal}");
    ensure!(
        !refusal.contains("batch.max_events"),
        "only restart-only keys are named: {refusal}"
    );
    // Failed: a file that does not parse, then a log level that is no filter. Both leave the
    // running configuration in place.
    std::fs::write(relay.config_path(), "[batch\nmax_events = ")?;
    relay.sighup()?;
    relay
        .wait_for_log("configuration reload failed", Duration::from_secs(10))
        .await?;
    cfg.set("postgres.slot", original_slot.as_str());
    cfg.set("batch.max_events", 2000i64);
    cfg.set("log.level", "info,[[[");
    std::fs::write(relay.config_path(), cfg.to_toml())?;
    relay.sighup()?;
    wait_until(Duration::from_secs(10), "second failed reload", || async {
        Ok((relay.logs().matches("configuration reload failed").count() >= 2).then_some(()))
    })
    .await
    .with_context(|| relay.logs())?;
    ensure!(
        relay.logs().contains("log.level"),
        "the bad key is not named: {}",
        relay.logs()
    );

    let written = writer.await??;
    let received = kafka
        .collect(
            &topics(&cfg, &types),
            written.len(),
            Duration::from_secs(180),
            true,
        )
        .await?;
    verify(&written, &received).assert_exactly_once();
    ensure!(relay.is_running(), "relay stopped: {}", relay.logs());
    let m = scrape(port).await?;
    ensure!(m.get("outbox_relay_config_reloads_total", "result=\"applied\"") == 3.0);
    ensure!(m.get("outbox_relay_config_reloads_total", "result=\"refused\"") == 1.0);
    ensure!(m.get("outbox_relay_config_reloads_total", "result=\"failed\"") == 2.0);
    ensure!(m.sum("outbox_relay_events_published_total") == written.len() as f64);
    // Still on the original slot.
    let client = db.client().await?;
    let slot = slot_info(&client, &original_slot)
        .await?
        .context("original slot")?;
    ensure!(slot.active, "the original slot is no longer streamed");
    ensure!(slot_info(&client, "some_other_slot").await?.is_none());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// status

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_slot_and_checkpoint_in_text_and_json_without_secrets() -> Result<()> {
    let _guard = shared_servers().await;
    let types = ["booking"];
    let (db, cfg, _port) = setup(&types).await?;
    let mut relay = spawn_ready(&cfg, &[]).await?;
    let written = write_concurrently(&db, &spec(500, &types, 1)).await?;
    Kafka::shared()
        .collect(
            &topics(&cfg, &types),
            written.len(),
            Duration::from_secs(60),
            true,
        )
        .await?;
    let config = relay.config_path().to_path_buf();

    // While the relay runs: the slot is held by an outbox-relay; confirmed <= checkpoint.
    let j = status_json(&config)?;
    ensure!(j["slot"]["name"] == cfg.slot.as_str());
    ensure!(
        j["slot"]["exists"] == true && j["slot"]["active"] == true,
        "{j}"
    );
    ensure!(j["held_by_relay"] == true, "{j}");
    ensure!(j["slot"]["active_pid"].is_i64());
    ensure!(j["checkpoint"]["found"] == true, "{j}");
    ensure!(j["checkpoint"]["topic"] == cfg.checkpoint_topic.as_str());
    let confirmed = lsn(j["slot"]["confirmed_flush_lsn"]
        .as_str()
        .context("confirmed")?)?;
    let resume = lsn(j["checkpoint"]["resume_lsn"].as_str().context("resume")?)?;
    ensure!(confirmed <= resume, "{j}");
    ensure!(j["lag_bytes"].is_u64() && j["slot"]["retained_wal_bytes"].is_u64());

    // Stopped: the checkpoint equals what the drain logged, and the slot is acknowledged to it.
    relay.sigterm()?;
    ensure!(relay
        .wait_exit(Duration::from_secs(30))
        .await
        .is_some_and(|s| s.success()));
    let drained = relay
        .logs()
        .lines()
        .rev()
        .find(|l| l.contains("drained"))
        .and_then(|l| l.split("resume_lsn=").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .map(str::to_string)
        .context("drain log with resume_lsn")?;
    let client = db.client().await?;
    // Released; the slot never runs ahead of the checkpoint; status shows what the server shows.
    let j = status_json(&config)?;
    let info = slot_info(&client, &cfg.slot).await?.context("slot")?;
    let server = info.confirmed_flush_lsn.map(|l| l.to_string());
    ensure!(j["slot"]["active"] == false, "{j}");
    ensure!(
        server.as_deref() == j["slot"]["confirmed_flush_lsn"].as_str(),
        "{j} vs {server:?}"
    );
    let confirmed = lsn(j["slot"]["confirmed_flush_lsn"]
        .as_str()
        .context("confirmed")?)?;
    ensure!(confirmed <= lsn(&drained)?, "{j}");
    ensure!(
        j["checkpoint"]["resume_lsn"] == drained.as_str(),
        "{j} vs {drained}"
    );
    ensure!(j["held_by_relay"] == false && j["slot_held"] == false);

    // Text form: the same facts, no secret.
    let (st, out, err) = run_cli(
        &bin(),
        &["status", "--config", &config.to_string_lossy()],
        &[],
    )?;
    ensure!(st.success(), "{out}{err}");
    ensure!(out.contains(&format!("slot {}", cfg.slot)), "{out}");
    ensure!(
        out.contains(&format!("resume_lsn:            {drained}")),
        "{out}"
    );
    ensure!(out.contains("relay holding the slot:  no"), "{out}");
    for text in [&out, &err] {
        ensure!(
            !text.contains(Postgres::RELAY_PASSWORD),
            "a secret was printed"
        );
    }

    // Read-only: an unknown slot and checkpoint topic are reported, not created.
    let mut other = cfg.clone();
    other.set("postgres.slot", "s_status_never_created");
    other.set(
        "kafka.checkpoint_topic",
        format!("{}.absent", cfg.topic_prefix),
    );
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("other.toml");
    write_private(&path, &other.to_toml())?;
    let j = status_json(&path)?;
    ensure!(
        j["slot"]["exists"] == false && j["checkpoint"]["found"] == false,
        "{j}"
    );
    ensure!(slot_info(&client, "s_status_never_created")
        .await?
        .is_none());
    Ok(())
}

fn write_private(path: &Path, text: &str) -> Result<()> {
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

fn status_json(config: &Path) -> Result<serde_json::Value> {
    let (st, out, err) = run_cli(
        &bin(),
        &["status", "--config", &config.to_string_lossy(), "--json"],
        &[],
    )?;
    ensure!(st.success(), "status --json: {st:?} {out}{err}");
    ensure!(!out.contains(Postgres::RELAY_PASSWORD) && !err.contains(Postgres::RELAY_PASSWORD));
    serde_json::from_str(&out).with_context(|| format!("status --json output: {out}"))
}

fn lsn(s: &str) -> Result<outbox_relay_dev::Lsn> {
    Ok(s.parse()?)
}

// ---------------------------------------------------------------------------------------------
// helpers: HTTP, metrics, notify socket

/// GET over a fresh connection; (status code, body). Only for the test's own loopback requests.
async fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .context("status line")?
        .parse()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// A parsed scrape.
struct Scrape {
    text: String,
    samples: Vec<(String, String, f64)>,
}

async fn scrape(port: u16) -> Result<Scrape> {
    let (code, text) = http_get(port, "/metrics").await?;
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
    fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, _, v)| v)
            .sum()
    }
    fn value(&self, name: &str) -> f64 {
        self.sum(name)
    }
    fn get(&self, name: &str, label: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| n == name && l.contains(label))
            .map(|(_, _, v)| v)
            .sum()
    }
    /// Sample names the relay exports, including those of families without samples yet
    /// (labelled counters before their first increment), from the `# TYPE` lines.
    fn sample_names(&self) -> BTreeSet<String> {
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

/// A `NOTIFY_SOCKET` of the test's own: a datagram socket that records what the relay sends.
struct NotifySocket {
    _dir: tempfile::TempDir,
    path: PathBuf,
    sock: std::os::unix::net::UnixDatagram,
}

impl NotifySocket {
    fn new() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path)?;
        sock.set_nonblocking(true)?;
        Ok(Self {
            _dir: dir,
            path,
            sock,
        })
    }

    /// The environment systemd would give the service.
    fn env(&self, watchdog_usec: u64) -> Vec<(&'static str, String)> {
        vec![
            ("NOTIFY_SOCKET", self.path.to_string_lossy().into_owned()),
            ("WATCHDOG_USEC", watchdog_usec.to_string()),
        ]
    }

    /// Every message received since the last call.
    fn drain(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.sock.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }

    /// Waits for a message containing `needle`; returns it.
    async fn wait_for(&mut self, needle: &str, deadline: Duration) -> Result<String> {
        let start = Instant::now();
        let mut seen: HashMap<String, usize> = HashMap::new();
        loop {
            for m in self.drain() {
                if m.lines().any(|l| l == needle) {
                    return Ok(m);
                }
                *seen.entry(m).or_default() += 1;
            }
            if start.elapsed() > deadline {
                bail!("no {needle} within {deadline:?}; saw {seen:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `log.format = "json"` gives one JSON object per line (for log pipelines), and under systemd
/// (`JOURNAL_STREAM` set) text lines carry no timestamp of their own (journald stamps them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_parse_line_by_line_and_journald_text_has_no_timestamp() -> Result<()> {
    let _guard = shared_servers().await;
    let pg = Postgres::shared();
    let db = pg.new_database().await?;
    let mut cfg = RelayConfig::new(pg, &db, Kafka::shared());
    // Postgres unreachable: a few logged retries, then exit 69. Enough log lines, no servers.
    cfg.set("postgres.port", i64::from(free_port()));
    cfg.set("admin.listen", "");
    cfg.set("retry.initial_backoff_ms", 100i64);
    cfg.set("retry.max_backoff_ms", 200i64);
    cfg.set("retry.max_elapsed_ms", 1_000i64);

    // Runs the relay until it gives up (exit 69) and returns what it logged.
    async fn logs_until_exit_69(cfg: &RelayConfig, env: &[(&str, &str)]) -> Result<String> {
        let mut relay = RelayProcess::spawn(&bin(), &cfg.to_toml(), env)?;
        let status = relay
            .wait_exit(Duration::from_secs(60))
            .await
            .context("no exit")?;
        let logs = relay.logs();
        ensure!(status.code() == Some(69), "{status:?}\n{logs}");
        Ok(logs)
    }

    cfg.set("log.format", "json");
    let logs = logs_until_exit_69(&cfg, &[]).await?;
    let mut objects = 0;
    for line in logs.lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("not JSON: {line}"))?;
        ensure!(
            v.get("level").is_some() && v.get("timestamp").is_some(),
            "{line}"
        );
        objects += 1;
    }
    ensure!(objects >= 3, "too few JSON log lines:\n{logs}");

    cfg.set("log.format", "text");
    let logs = logs_until_exit_69(&cfg, &[("JOURNAL_STREAM", "8:1234")]).await?;
    let logged: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.contains(" INFO "))
        .collect();
    ensure!(!logged.is_empty(), "{logs}");
    for line in logged {
        // No RFC 3339 timestamp first ("2026-11-26T..."): the level leads.
        ensure!(
            !line.trim_start().starts_with("20"),
            "a timestamp under journald: {line}"
        );
    }
    Ok(())
}
