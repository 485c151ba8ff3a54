//! Running the relay as a service: the systemd unit (verify, sandbox exposure), sd_notify (READY,
//! WATCHDOG, STOPPING, a stalled loop going silent), the admin endpoints (/metrics before and after
//! a burst, /ready through standby, takeover and drain), the alert rules and dashboard naming only
//! exported metrics, SIGHUP under load (exactly once; a refused change keeps the old config), the
//! `status` and `validate --connect` subcommands, and the log formats.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use outbox_relay_dev::postgres::slot_info;
use outbox_relay_dev::{
    free_port, repo_root, shared_servers, wait_until, write_concurrently, Kafka, Lsn, Postgres,
    RelayConfig,
};

use crate::support::{
    bin, cli_on, cli_with, fresh, scrape, setup, spawn, spec, start, stop, topics, verdict,
    wait_published, wait_standing_by, write_private, READY_WITHIN,
};

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
    let out = cli_on(&root.join("systemd/outbox-relay.toml"), &["validate"], &[])?;
    ensure!(out.status.success(), "example config: {}", out.text());
    ensure!(unit.contains("RestartPreventExitStatus=78 65 70 64"));
    ensure!(unit.contains("Type=notify") && unit.contains("WatchdogSec="));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// sd_notify

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sd_notify_ready_watchdog_stopping_and_a_stalled_loop_goes_silent() -> Result<()> {
    let _guard = shared_servers().await;
    let types = ["booking"];

    // A healthy relay: READY=1 once /ready answers 200, WATCHDOG=1 while running (idle too),
    // STOPPING=1 on SIGTERM.
    let (_db, cfg) = setup(&types).await?;
    let mut sock = NotifySocket::new()?;
    let env = sock.env(1_000_000);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut relay = spawn(&cfg, &env)?;
    let ready = sock.wait_for("READY=1", Duration::from_secs(60)).await?;
    let (code, body) = relay.get("/ready").await?;
    ensure!(
        code == 200,
        "READY=1 ({ready}) while /ready answers {code} {body}"
    );
    // Idle and healthy: at least 3 pings within 3 s (interval 1 s / 4).
    sock.drain();
    sock.wait_for_count("WATCHDOG=1", 3, Duration::from_secs(3))
        .await
        .with_context(|| relay.logs())?;
    relay.sigterm()?;
    sock.wait_for("STOPPING=1", Duration::from_secs(10)).await?;
    let status = relay
        .wait_exit(Duration::from_secs(30))
        .await
        .context("no exit after SIGTERM")?;
    ensure!(status.success(), "{status:?}\n{}", relay.logs());

    // A relay whose loop stops turning 2 s after it started (test hook): pings stop, /ready then
    // flips to 503 on SIGTERM (draining), STOPPING=1 is sent, and the drain deadline ends it.
    let (_db2, mut cfg2) = setup(&types).await?;
    cfg2.set("shutdown.drain_timeout_ms", 3000i64);
    let mut sock2 = NotifySocket::new()?;
    let mut env2 = sock2.env(1_000_000);
    env2.push(("OUTBOX_RELAY_TEST_STALL_AFTER_READY", "2".to_string()));
    let env2: Vec<(&str, &str)> = env2.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut stalled = spawn(&cfg2, &env2)?;
    sock2.wait_for("READY=1", Duration::from_secs(60)).await?;
    sock2
        .wait_for("WATCHDOG=1", Duration::from_secs(5))
        .await
        .context("no ping before the stall")?;
    stalled
        .wait_for_log("test hook", Duration::from_secs(10))
        .await?;
    // The forwarder notices within an interval: then 3 s without a ping, within 10 s.
    sock2
        .wait_for_silence(
            "WATCHDOG=1",
            Duration::from_secs(3),
            Duration::from_secs(10),
        )
        .await
        .with_context(|| {
            format!(
                "a stalled pipeline still fed the watchdog\n{}",
                stalled.logs()
            )
        })?;
    ensure!(stalled
        .logs()
        .contains("no longer feeding the systemd watchdog"));
    ensure!(stalled.get("/live").await?.0 == 200);
    stalled.sigterm()?;
    sock2
        .wait_for("STOPPING=1", Duration::from_secs(10))
        .await?;
    let (code, body) = stalled.get("/ready").await?;
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
    let (db, cfg) = setup(&types).await?;
    let topics = topics(&cfg, &types);
    let mut a = start(&cfg).await?;
    ensure!(a.get("/live").await?.0 == 200);
    let before = scrape(&a).await?;
    ensure!(before.value("outbox_relay_ready") == 1.0);
    ensure!(before.value("outbox_relay_events_published_total") == 0.0);

    let n = 3000;
    let written = write_concurrently(&db, &spec(n, &types, &[1, 10, 100], 2)).await?;
    wait_published(&topics, &written, Duration::from_secs(120)).await?;
    // Counters count committed events exactly; the lag returns to (near) zero once drained.
    let after = wait_until(Duration::from_secs(30), "metrics settle", || async {
        let m = scrape(&a).await?;
        let lag = m.value("outbox_relay_replication_lag_bytes");
        Ok(
            (m.value("outbox_relay_events_published_total") == n as f64 && lag < 1_000_000.0)
                .then_some(m),
        )
    })
    .await?;
    println!("/metrics after {n} events:\n{}", after.text);
    for t in &topics {
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
        let m = scrape(&a).await?;
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
    cfg_b.new_admin_port();
    let mut b = spawn(&cfg_b, &[])?;
    wait_standing_by(&mut b).await?;
    wait_until(Duration::from_secs(10), "standby metrics", || async {
        let m = scrape(&b).await?;
        Ok((m.value("outbox_relay_standby") == 1.0).then_some(m))
    })
    .await?;
    ensure!(b.get("/live").await?.0 == 200);

    // The active one stops: the standby takes over and becomes ready.
    stop(&mut a).await?;
    b.wait_ready(READY_WITHIN)
        .await
        .context("standby ready after takeover")?;
    let m = scrape(&b).await?;
    ensure!(m.value("outbox_relay_standby") == 0.0 && m.value("outbox_relay_ready") == 1.0);
    stop(&mut b).await?;
    verdict(&topics, &written).await?.assert_exactly_once();
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

    let (_db, cfg) = setup(&["booking"]).await?;
    let mut relay = start(&cfg).await?;
    let exported = scrape(&relay).await?.sample_names();
    stop(&mut relay).await?;

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
    let (db, mut cfg) = setup(&types).await?;
    let topics = topics(&cfg, &types);
    let mut relay = start(&cfg).await?;
    let writer = {
        let spec = spec(40_000, &types, &[1, 10, 100], 2);
        let db = db.clone();
        tokio::spawn(async move { write_concurrently(&db, &spec).await })
    };
    wait_until(Duration::from_secs(60), "events flowing", || async {
        let m = scrape(&relay).await?;
        Ok((m.value("outbox_relay_events_published_total") > 500.0).then_some(()))
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
    wait_published(&topics, &written, Duration::from_secs(180)).await?;
    ensure!(relay.is_running(), "relay stopped: {}", relay.logs());
    let m = scrape(&relay).await?;
    ensure!(m.get("outbox_relay_config_reloads_total", "result=\"applied\"") == 3.0);
    ensure!(m.get("outbox_relay_config_reloads_total", "result=\"refused\"") == 1.0);
    ensure!(m.get("outbox_relay_config_reloads_total", "result=\"failed\"") == 2.0);
    ensure!(m.value("outbox_relay_events_published_total") == written.len() as f64);
    // Still on the original slot.
    let client = db.client().await?;
    let slot = slot_info(&client, &original_slot)
        .await?
        .context("original slot")?;
    ensure!(slot.active, "the original slot is no longer streamed");
    ensure!(slot_info(&client, "some_other_slot").await?.is_none());
    stop(&mut relay).await?;
    verdict(&topics, &written).await?.assert_exactly_once();
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// status

/// In the compatibility set: `status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_slot_and_checkpoint_in_text_and_json_without_secrets() -> Result<()> {
    let _guard = shared_servers().await;
    let types = ["booking"];
    let (db, cfg) = setup(&types).await?;
    let mut relay = start(&cfg).await?;
    let written = write_concurrently(&db, &spec(500, &types, &[1, 10, 100], 1)).await?;
    wait_published(&topics(&cfg, &types), &written, Duration::from_secs(60)).await?;
    let config = relay.config_path().to_path_buf();

    // While the relay runs: the slot is held by an outbox-relay; confirmed <= checkpoint.
    let j = status_json(&config, 0)?;
    ensure!(j["health"]["state"] == "ok", "{j}");
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
    stop(&mut relay).await?;
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
    // Nobody holds the slot now: the health verdict is a warning, exit 1.
    let j = status_json(&config, 1)?;
    ensure!(j["health"]["state"] == "warning", "{j}");
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
    let status = cli_on(&config, &["status"], &[])?;
    let (out, err) = (&status.stdout, &status.stderr);
    ensure!(status.status.code() == Some(1), "{out}{err}");
    ensure!(out.contains(&format!("slot {}", cfg.slot)), "{out}");
    ensure!(
        out.contains(&format!("resume_lsn:            {drained}")),
        "{out}"
    );
    ensure!(out.contains("relay holding the slot:  no"), "{out}");
    for text in [out, err] {
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
    // A slot that does not exist is critical, exit 2.
    let j = status_json(&path, 2)?;
    ensure!(
        j["slot"]["exists"] == false && j["checkpoint"]["found"] == false,
        "{j}"
    );
    ensure!(slot_info(&client, "s_status_never_created")
        .await?
        .is_none());
    Ok(())
}

/// `status --json`, which must exit with the health verdict `code` (0 ok, 1 warning, 2 critical).
fn status_json(config: &Path, code: i32) -> Result<serde_json::Value> {
    let status = cli_on(config, &["status", "--json"], &[])?;
    let (out, err) = (&status.stdout, &status.stderr);
    ensure!(
        status.status.code() == Some(code),
        "status --json: {:?} {out}{err}",
        status.status
    );
    ensure!(!out.contains(Postgres::RELAY_PASSWORD) && !err.contains(Postgres::RELAY_PASSWORD));
    serde_json::from_str(out).with_context(|| format!("status --json output: {out}"))
}

fn lsn(s: &str) -> Result<Lsn> {
    Ok(s.parse()?)
}

/// In the compatibility set: `validate --connect`. On a good configuration it says what it
/// found: before the first start the slot and the checkpoint topic are still to be created (and
/// a missing dead-letter topic is a warning, not an error); once they exist, it shows them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_connect_reports_the_slot_and_topics_it_found() -> Result<()> {
    let _guard = shared_servers().await;
    let (_db, mut cfg) = fresh().await?;
    let dead_letter = format!("{}.missing_dead_letter", cfg.topic_prefix);
    cfg.set("errors.on_error", "dead_letter");
    cfg.set("errors.dead_letter_topic", dead_letter.as_str());

    let out = cli_with(&cfg, &["validate", "--connect"], &[])?;
    let (code, text) = (out.code(), out.text());
    ensure!(code == Some(0), "exit {code:?}: {text}");
    for needle in [
        format!(
            "slot {:?} does not exist yet; the relay will create it",
            cfg.slot
        ),
        format!(
            "checkpoint topic {:?} does not exist yet; the relay will create it",
            cfg.checkpoint_topic
        ),
        format!("warning: dead-letter topic {dead_letter:?} does not exist"),
        "both servers are ready".to_string(),
    ] {
        ensure!(text.contains(&needle), "wanted {needle:?} in: {text}");
    }

    // Now the slot and the checkpoint topic exist.
    let db = cfg
        .get("postgres.dbname")
        .and_then(|v| v.as_str())
        .context("db")?
        .to_string();
    let admin = Postgres::shared().admin(&db).await?;
    admin
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&cfg.slot],
        )
        .await?;
    cfg.create_checkpoint_topic(Kafka::shared()).await?;
    let out = cli_with(&cfg, &["validate", "--connect"], &[])?;
    let (code, text) = (out.code(), out.text());
    ensure!(code == Some(0), "exit {code:?}: {text}");
    for needle in [
        format!("slot {:?} exists (confirmed_flush_lsn", cfg.slot),
        format!("checkpoint topic {:?} exists", cfg.checkpoint_topic),
    ] {
        ensure!(text.contains(&needle), "wanted {needle:?} in: {text}");
    }
    admin
        .execute("SELECT pg_drop_replication_slot($1)", &[&cfg.slot])
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// helpers: a notify socket

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

    /// Waits until `n` messages holding the line `needle` arrived (from now on).
    async fn wait_for_count(&mut self, needle: &str, n: usize, deadline: Duration) -> Result<()> {
        let start = Instant::now();
        let mut count = 0;
        loop {
            count += self
                .drain()
                .iter()
                .filter(|m| m.lines().any(|l| l == needle))
                .count();
            if count >= n {
                return Ok(());
            }
            if start.elapsed() > deadline {
                bail!("only {count} of {n} {needle} within {deadline:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until no message holding the line `needle` arrived for `quiet`; fails if they keep
    /// coming past `deadline`.
    async fn wait_for_silence(
        &mut self,
        needle: &str,
        quiet: Duration,
        deadline: Duration,
    ) -> Result<()> {
        let start = Instant::now();
        let mut last = Instant::now();
        let mut seen = 0;
        loop {
            let n = self
                .drain()
                .iter()
                .filter(|m| m.lines().any(|l| l == needle))
                .count();
            if n > 0 {
                seen += n;
                last = Instant::now();
            }
            if last.elapsed() >= quiet {
                return Ok(());
            }
            if start.elapsed() > deadline {
                bail!("{seen} {needle} in {deadline:?}, never {quiet:?} without one");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
    let (_db, mut cfg) = fresh().await?;
    // Postgres unreachable: a few logged retries, then exit 69. Enough log lines, no servers.
    cfg.set("postgres.port", i64::from(free_port()));
    cfg.set("retry.initial_backoff_ms", 100i64);
    cfg.set("retry.max_backoff_ms", 200i64);
    cfg.set("retry.max_elapsed_ms", 1_000i64);

    // Runs the relay until it gives up (exit 69) and returns what it logged.
    async fn logs_until_exit_69(cfg: &RelayConfig, env: &[(&str, &str)]) -> Result<String> {
        let mut relay = spawn(cfg, env)?;
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
