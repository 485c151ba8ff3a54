//! `outbox-relay doctor` against the real servers: each check is broken on purpose and the line it
//! gives (status and fix) is asserted; a healthy setup is all ok with exit 0; every run also goes
//! through `--json`, which must parse.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use outbox_relay_dev::{
    free_port, random_suffix, run_cli, shared_servers, write_txn, Kafka, NewEvent, Postgres,
    RelayConfig,
};
use serde_json::Value;

use crate::support::{bin, setup, start};

/// One line of the checklist.
#[derive(Debug, Clone)]
struct Line {
    status: String,
    detail: String,
    fix: String,
}

/// What one doctor run printed.
#[derive(Debug)]
struct Doctor {
    code: Option<i32>,
    json: Value,
    text: String,
}

impl Doctor {
    /// The line of `check` (on `subject`, when given).
    fn line(&self, check: &str, subject: Option<&str>) -> Result<Line> {
        let checks = self.json["checks"].as_array().context("checks")?;
        let c = checks
            .iter()
            .find(|c| {
                c["check"] == check && subject.is_none_or(|s| c["subject"].as_str() == Some(s))
            })
            .with_context(|| format!("no line {check} {subject:?} in:\n{}", self.text))?;
        Ok(Line {
            status: c["status"].as_str().unwrap_or_default().to_string(),
            detail: c["detail"].as_str().unwrap_or_default().to_string(),
            fix: c["fix"].as_str().unwrap_or_default().to_string(),
        })
    }

    /// Asserts the line's status, and that its detail and fix contain the given texts.
    fn expect(
        &self,
        check: &str,
        subject: Option<&str>,
        status: &str,
        detail: &[&str],
        fix: &[&str],
    ) -> Result<()> {
        let l = self.line(check, subject)?;
        ensure!(
            l.status == status,
            "{check}: {} (want {status}): {l:?}\n{}",
            l.status,
            self.text
        );
        for d in detail {
            ensure!(l.detail.contains(d), "{check}: {d:?} not in {l:?}");
        }
        for f in fix {
            ensure!(l.fix.contains(f), "{check}: fix {f:?} not in {l:?}");
        }
        Ok(())
    }

    /// Every line that is neither ok nor skip.
    fn problems(&self) -> Vec<String> {
        self.json["checks"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|c| c["status"] != "ok" && c["status"] != "skip")
                    .map(|c| c.to_string())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Runs `outbox-relay doctor` on `cfg`, once with `--json` and once as text.
fn doctor(cfg: &RelayConfig, extra: &[&str]) -> Result<Doctor> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, cfg.to_toml())?;
    let p = path.to_str().context("path")?;
    let mut args = vec!["doctor", "--config", p, "--json"];
    args.extend_from_slice(extra);
    let (status, out, err) = run_cli(&bin(), &args, &[])?;
    let json: Value = serde_json::from_str(&out)
        .with_context(|| format!("doctor --json printed no JSON ({status}):\n{out}\n{err}"))?;
    args.retain(|a| *a != "--json");
    let (text_status, text, text_err) = run_cli(&bin(), &args, &[])?;
    ensure!(
        text_status.code() == status.code(),
        "text and JSON runs disagree: {text_status} vs {status}"
    );
    ensure!(
        !out.contains(Postgres::RELAY_PASSWORD) && !text.contains(Postgres::RELAY_PASSWORD),
        "the password leaked"
    );
    let text = format!("{text}{text_err}");
    eprintln!("doctor {extra:?}: exit {:?}\n{text}", status.code());
    Ok(Doctor {
        code: status.code(),
        json,
        text,
    })
}

/// Exit code of a doctor run with a failed check.
const FAILED: Option<i32> = Some(3);

/// A config whose every topic is listed and exists: routing by `[routing.topics]` only, the
/// dead-letter topic created.
async fn listed(types: &[&str]) -> Result<(outbox_relay_dev::TestDb, RelayConfig)> {
    let (db, mut cfg) = setup(types).await?;
    cfg.set("routing.strict", true);
    for t in types {
        cfg.set(&format!("routing.topics.{t}"), cfg.topic_for(t));
    }
    let dlq = format!("{}.dead_letter", cfg.topic_prefix);
    Kafka::shared().create_topic(&dlq, 1, &[]).await?;
    cfg.set("errors.dead_letter_topic", dlq);
    Ok((db, cfg))
}

/// A private cluster, broken step by step: healthy (every line ok or skip, exit 0, with and
/// without a relay running, with --probe-writes), then max_slot_wal_keep_size = -1 (warn),
/// then pg_hba.conf without the database line for the relay (fail), then wal_level = replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_cluster_healthy_then_broken_step_by_step() -> Result<()> {
    let _guard = shared_servers().await;
    let pg = tokio::task::spawn_blocking(Postgres::start_new).await??;
    let admin = pg.admin("postgres").await?;
    admin
        .batch_execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1GB'")
        .await?;
    admin.batch_execute("SELECT pg_reload_conf()").await?;
    drop(admin);
    let db = pg.new_database().await?;
    let kafka = Kafka::shared();
    let mut cfg = RelayConfig::new(&pg, &db, kafka);
    cfg.create_topics(kafka, &["booking"], 3).await?;
    cfg.set("routing.strict", true);
    cfg.set("routing.topics.booking", cfg.topic_for("booking"));
    let dlq = format!("{}.dead_letter", cfg.topic_prefix);
    kafka.create_topic(&dlq, 1, &[]).await?;
    cfg.set("errors.dead_letter_topic", dlq.clone());

    // Before the first start: the slot and the checkpoint topic are still to be created.
    let d = doctor(&cfg, &[])?;
    ensure!(d.code == Some(0) && d.problems().is_empty(), "{}", d.text);
    d.expect(
        "slot",
        None,
        "ok",
        &["does not exist yet", "creates it"],
        &[],
    )?;
    d.expect(
        "checkpoint_topic",
        Some(&cfg.checkpoint_topic),
        "ok",
        &["does not exist yet"],
        &[],
    )?;
    d.expect("max_slot_wal_keep_size", None, "ok", &["1GB"], &[])?;
    d.expect("write", None, "skip", &["--probe-writes"], &[])?;

    // Published once, relay running: the slot is held, the transactional id is not touched.
    let mut relay = start(&cfg).await?;
    let mut client = db.client().await?;
    write_txn(
        &mut client,
        &[NewEvent::new("booking", "b-1", "Created", "{}")],
    )
    .await?;
    crate::support::wait_records(&[cfg.topic_for("booking")], 1, Duration::from_secs(60)).await?;
    let d = doctor(&cfg, &["--probe-writes"])?;
    ensure!(d.code == Some(0) && d.problems().is_empty(), "{}", d.text);
    d.expect("slot", None, "ok", &["held by an outbox-relay"], &[])?;
    // Counted as the relay's role (no superuser): its own slot and walsender.
    d.expect(
        "max_replication_slots",
        None,
        "ok",
        &["1 of 100 used, the relay's slot among them"],
        &[],
    )?;
    d.expect(
        "max_wal_senders",
        None,
        "ok",
        &["1 of 100 used, the relay's walsender among them"],
        &[],
    )?;
    d.expect(
        "transactional_id",
        None,
        "skip",
        &["a relay is running with this transactional.id"],
        &[],
    )?;
    d.expect("write", None, "skip", &["relay stopped"], &[])?;

    // Relay stopped: every check runs, writes proved; all ok.
    relay.sigterm()?;
    relay
        .wait_exit(Duration::from_secs(30))
        .await
        .context("relay did not stop")?;
    let started = Instant::now();
    let d = doctor(&cfg, &["--probe-writes"])?;
    eprintln!(
        "doctor --probe-writes, healthy, twice (JSON and text): {:.1?}\n{}",
        started.elapsed(),
        d.text
    );
    ensure!(d.code == Some(0), "{}", d.text);
    let statuses: Vec<&str> = d.json["checks"]
        .as_array()
        .context("checks")?
        .iter()
        .filter_map(|c| c["status"].as_str())
        .collect();
    // Only the failover line is skipped (Postgres 17+); everything else is ok.
    ensure!(
        statuses.iter().filter(|s| **s != "ok").count() <= 1 && d.problems().is_empty(),
        "{}",
        d.text
    );
    d.expect(
        "checkpoint_topic",
        Some(&cfg.checkpoint_topic),
        "ok",
        &["1 partition", "cleanup.policy=compact"],
        &[],
    )?;
    d.expect("checkpoint", None, "ok", &["readable", "resume_lsn"], &[])?;
    d.expect("resume", None, "ok", &["the relay resumes at"], &[])?;
    d.expect("idempotent_write", None, "ok", &["producer id"], &[])?;
    d.expect(
        "transactional_id",
        None,
        "ok",
        &["init_transactions succeeded"],
        &[],
    )?;
    for topic in [
        cfg.checkpoint_topic.as_str(),
        &cfg.topic_for("booking"),
        &dlq,
    ] {
        d.expect("write", Some(topic), "ok", &["aborted"], &[])?;
    }
    ensure!(
        d.json["ok"] == true && d.json["summary"]["fail"] == 0,
        "{}",
        d.json
    );
    // The probes are invisible to read_committed consumers: still the one event.
    let got = kafka
        .collect(&[cfg.topic_for("booking"), dlq.clone()])
        .await?;
    ensure!(got.len() == 1, "read_committed sees {} records", got.len());

    // max_slot_wal_keep_size = -1: a warning, not a failure.
    let admin = pg.admin("postgres").await?;
    admin
        .batch_execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
        .await?;
    admin.batch_execute("SELECT pg_reload_conf()").await?;
    let d = doctor(&cfg, &[])?;
    ensure!(d.code == Some(0), "{}", d.text);
    d.expect(
        "max_slot_wal_keep_size",
        None,
        "warn",
        &["-1", "unbounded"],
        &["max_slot_wal_keep_size = '", "pg_reload_conf()"],
    )?;

    // pg_hba.conf with a `host replication` line but none for the database (what
    // sql/003_relay_role.sql's comment used to suggest): logical replication is refused.
    let hba = pg.data_dir().join("pg_hba.conf");
    let original = std::fs::read_to_string(&hba)?;
    std::fs::write(
        &hba,
        "local all all trust\n\
         host all postgres 127.0.0.1/32 scram-sha-256\n\
         host replication all 127.0.0.1/32 scram-sha-256\n",
    )?;
    admin.batch_execute("SELECT pg_reload_conf()").await?;
    let d = doctor(&cfg, &[]);
    std::fs::write(&hba, original)?;
    admin.batch_execute("SELECT pg_reload_conf()").await?;
    let d = d?;
    ensure!(d.code == FAILED, "{}", d.text);
    d.expect(
        "connection",
        None,
        "fail",
        &["pg_hba.conf has no line", "outbox_relay", &db.name],
        &[
            &format!("host {} outbox_relay", db.name),
            "scram-sha-256",
            "pg_reload_conf()",
            "a `host replication ...` line does not cover it",
        ],
    )?;
    // Kafka is still checked.
    d.expect("bootstrap", None, "ok", &["answered"], &[])?;

    // wal_level = replica (Postgres does not start with a logical slot and wal_level below
    // logical: drop the slot first).
    let client = db.client().await?;
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&cfg.slot])
        .await?;
    admin
        .batch_execute("ALTER SYSTEM SET wal_level = replica")
        .await?;
    drop(admin);
    pg.restart().await?;
    let d = doctor(&cfg, &[])?;
    ensure!(d.code == FAILED, "{}", d.text);
    // The dropped slot, with a checkpoint in Kafka: the relay would stop (lost slot).
    d.expect(
        "resume",
        None,
        "fail",
        &["does not exist, but the checkpoint", "the slot was lost"],
        &["\"Lost slot\""],
    )?;
    d.expect(
        "wal_level",
        None,
        "fail",
        &["\"replica\"", "needs \"logical\""],
        &["wal_level = logical", "restart Postgres"],
    )?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_is_named_and_the_publication_line_does_not_suggest_adding_it() -> Result<()>
{
    let _guard = shared_servers().await;
    let (_db, mut cfg) = listed(&["booking"]).await?;
    cfg.set("outbox.table", "public.no_such_outbox");
    let d = doctor(&cfg, &[])?;
    ensure!(d.code == FAILED, "{}", d.text);
    d.expect(
        "table",
        None,
        "fail",
        &["public.no_such_outbox does not exist"],
        &["sql/001_outbox.sql", "outbox.table"],
    )?;
    let p = d.line("publication", None)?;
    ensure!(p.status == "skip" && !p.fix.contains("ADD TABLE"), "{p:?}");
    d.expect("columns", None, "skip", &["does not exist"], &[])?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publications_without_the_table_or_publishing_updates() -> Result<()> {
    let _guard = shared_servers().await;
    let (db, mut cfg) = listed(&["booking"]).await?;
    let client = db.client().await?;
    client
        .batch_execute(
            "CREATE TABLE other (id int); \
             CREATE PUBLICATION other_pub FOR TABLE other WITH (publish = 'insert'); \
             CREATE PUBLICATION all_ops_pub FOR TABLE public.outbox; \
             CREATE PUBLICATION cols_pub FOR TABLE public.outbox (id, aggregate_type, aggregate_id) \
               WITH (publish = 'insert'); \
             CREATE PUBLICATION filter_pub FOR TABLE public.outbox WHERE (aggregate_type <> 'x') \
               WITH (publish = 'insert'); \
             CREATE PUBLICATION all_tables_pub FOR ALL TABLES WITH (publish = 'insert')",
        )
        .await?;

    cfg.set("postgres.publication", "other_pub");
    let d = doctor(&cfg, &[])?;
    ensure!(d.code == FAILED, "{}", d.text);
    d.expect(
        "publication",
        None,
        "fail",
        &["\"other_pub\" does not cover public.outbox"],
        &["ALTER PUBLICATION other_pub ADD TABLE public.outbox"],
    )?;

    // Updates, deletes and truncates published too: a warning, and warnings do not fail.
    cfg.set("postgres.publication", "all_ops_pub");
    let d = doctor(&cfg, &[])?;
    d.expect(
        "publication",
        None,
        "warn",
        &[
            "also publishes update, delete, truncate",
            "the relay ignores them",
        ],
        &["ALTER PUBLICATION all_ops_pub SET (publish = 'insert')"],
    )?;
    ensure!(
        d.problems().iter().all(|p| p.contains("\"warn\"")),
        "{}",
        d.text
    );
    ensure!(d.code == Some(0), "{}", d.text);

    // A column list without the mapped columns: the relay could not decode the rows.
    cfg.set("postgres.publication", "cols_pub");
    let d = doctor(&cfg, &[])?;
    ensure!(d.code == FAILED, "{}", d.text);
    d.expect(
        "publication",
        None,
        "fail",
        &["its column list leaves out event_type, payload"],
        &["ALTER PUBLICATION cols_pub SET TABLE public.outbox"],
    )?;
    // A row filter keeps rows from the relay; FOR ALL TABLES sends it every table's inserts.
    cfg.set("postgres.publication", "filter_pub");
    let d = doctor(&cfg, &[])?;
    d.expect(
        "publication",
        None,
        "warn",
        &["a row filter", "aggregate_type <> 'x'"],
        &["(no WHERE)"],
    )?;
    cfg.set("postgres.publication", "all_tables_pub");
    let d = doctor(&cfg, &[])?;
    d.expect(
        "publication",
        None,
        "warn",
        &["FOR ALL TABLES"],
        &["CREATE PUBLICATION all_tables_pub FOR TABLE public.outbox WITH (publish = 'insert')"],
    )?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_replication_or_without_select() -> Result<()> {
    let _guard = shared_servers().await;
    let (db, mut cfg) = listed(&["booking"]).await?;
    let role = format!("r_{}", random_suffix());
    let password = format!("pw-{}", random_suffix());
    db.create_relay_login(&role, &password).await?;
    cfg.set("postgres.user", role.as_str());
    cfg.set("postgres.password", password.as_str());
    let client = db.client().await?;

    client
        .batch_execute(&format!("ALTER ROLE {role} NOREPLICATION"))
        .await?;
    let d = doctor(&cfg, &[])?;
    ensure!(d.code == FAILED, "{}", d.text);
    d.expect(
        "role",
        None,
        "fail",
        &["lacks REPLICATION"],
        &[&format!("ALTER ROLE {role} LOGIN REPLICATION")],
    )?;
    // The server itself refuses the replication connection, with the same fix.
    d.expect(
        "replication_connection",
        None,
        "fail",
        &["refused for user"],
        &[&format!("ALTER ROLE {role} LOGIN REPLICATION")],
    )?;
    // The server's own words: 14 and 15 say the first, 16 and later the second.
    let said = d.line("replication_connection", None)?.detail;
    ensure!(
        said.contains("must be superuser or replication role")
            || said.contains("permission denied to start WAL sender"),
        "{said}"
    );
    d.expect("select", None, "ok", &[], &[])?;

    client
        .batch_execute(&format!(
            "ALTER ROLE {role} REPLICATION; REVOKE SELECT ON public.outbox FROM {role}"
        ))
        .await?;
    let d = doctor(&cfg, &[])?;
    ensure!(d.code == FAILED, "{}", d.text);
    d.expect(
        "select",
        None,
        "fail",
        &["may not read public.outbox", "SELECT on the table"],
        &[&format!("GRANT SELECT ON public.outbox TO {role};")],
    )?;
    d.expect("role", None, "ok", &[], &[])?;
    d.expect(
        "replication_connection",
        None,
        "ok",
        &["IDENTIFY_SYSTEM"],
        &[],
    )?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_topics_missing_not_compacted_and_a_timeout_above_the_brokers_max() -> Result<()> {
    let _guard = shared_servers().await;
    let (_db, mut cfg) = listed(&["booking"]).await?;
    let kafka = Kafka::shared();
    let missing = format!("{}.missing", cfg.topic_prefix);
    cfg.set("routing.topics.car", missing.as_str());
    // A checkpoint topic with the brokers' default cleanup.policy (delete).
    kafka.create_topic(&cfg.checkpoint_topic, 1, &[]).await?;
    // Above the harness brokers' transaction.max.timeout.ms (Kafka's default, 900000).
    cfg.set("kafka.transaction_timeout_ms", 1_000_000i64);
    let d = doctor(&cfg, &[])?;
    ensure!(d.code == FAILED, "{}", d.text);
    d.expect(
        "topic",
        Some(&missing),
        "fail",
        &["does not exist", "auto.create.topics.enable=false"],
        &[&format!("kafka-topics.sh --create --topic {missing}")],
    )?;
    d.expect(
        "topic",
        Some(&cfg.topic_for("booking")),
        "ok",
        &["3 partitions"],
        &[],
    )?;
    d.expect(
        "checkpoint_topic",
        Some(&cfg.checkpoint_topic),
        "fail",
        &["cleanup.policy=delete"],
        &[&format!(
            "--entity-name {} --add-config cleanup.policy=compact",
            cfg.checkpoint_topic
        )],
    )?;
    d.expect(
        "transaction_timeout",
        None,
        "fail",
        &["1000000", "transaction.max.timeout.ms 900000"],
        &["kafka.transaction_timeout_ms <= 900000"],
    )?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_bootstrap_fails_fast_and_postgres_is_still_checked() -> Result<()> {
    let _guard = shared_servers().await;
    let (_db, mut cfg) = listed(&["booking"]).await?;
    let closed = free_port();
    cfg.set("kafka.bootstrap_servers", format!("127.0.0.1:{closed}"));
    let started = Instant::now();
    let d = doctor(&cfg, &[])?;
    // Two runs (JSON and text), each bounded by 10 s for the brokers.
    let took = started.elapsed();
    ensure!(took < Duration::from_secs(40), "took {took:?}");
    ensure!(d.code == FAILED, "{}", d.text);
    d.expect(
        "bootstrap",
        None,
        "fail",
        &[&format!("127.0.0.1:{closed}"), "unreachable"],
        &["kafka.bootstrap_servers"],
    )?;
    d.expect("remaining", None, "skip", &["need the brokers"], &[])?;
    d.expect("wal_level", None, "ok", &[], &[])?;
    Ok(())
}

/// ACLs (SASL_SSL): a topic the relay may not describe fails its topic line; WRITE denied on a
/// topic it may describe is found by `--probe-writes`; the others pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_writes_finds_a_topic_the_relay_may_not_write() -> Result<()> {
    let _guard = shared_servers().await;
    let (_db, mut cfg) = listed(&["booking", "secret"]).await?;
    let kafka = Kafka::shared();
    cfg.set("kafka.bootstrap_servers", kafka.sasl_ssl_bootstrap());
    cfg.set("kafka.security_protocol", "sasl_ssl");
    cfg.set("kafka.sasl_mechanism", Kafka::SASL_MECHANISM);
    cfg.set("kafka.sasl_username", Kafka::SASL_USER);
    cfg.set("kafka.sasl_password", Kafka::SASL_PASSWORD);
    cfg.set(
        "kafka.ssl_ca_location",
        kafka.ca_path().to_string_lossy().into_owned(),
    );
    let forbidden = cfg.topic_for("secret");
    let principal = format!("User:{}", Kafka::SASL_USER);
    // Once a topic has an ACL, the brokers' allow.everyone.if.no.acl.found no longer applies to
    // it: the DENY WRITE alone takes DESCRIBE away too.
    kafka
        .add_topic_acl(&principal, "WRITE", "DENY", &forbidden)
        .await?;
    let result = async {
        let d = doctor(&cfg, &["--probe-writes"])?;
        ensure!(d.code == FAILED, "{}", d.text);
        d.expect(
            "topic",
            Some(&forbidden),
            "fail",
            &["not authorized to describe it", "\"relay\""],
            &[&format!("grant DESCRIBE and WRITE on topic {forbidden}")],
        )?;
        kafka
            .add_topic_acl(&principal, "DESCRIBE", "ALLOW", &forbidden)
            .await?;
        doctor(&cfg, &["--probe-writes"])
    }
    .await;
    let _ = kafka
        .remove_topic_acl(&principal, "WRITE", "DENY", &forbidden)
        .await;
    let _ = kafka
        .remove_topic_acl(&principal, "DESCRIBE", "ALLOW", &forbidden)
        .await;
    let d = result?;
    ensure!(d.code == FAILED, "{}", d.text);
    d.expect("topic", Some(&forbidden), "ok", &[], &[])?;
    d.expect(
        "write",
        Some(&forbidden),
        "fail",
        &["refused", "TOPIC_AUTHORIZATION_FAILED"],
        &[&format!("grant WRITE on topic {forbidden}")],
    )?;
    d.expect("write", Some(&cfg.topic_for("booking")), "ok", &[], &[])?;
    d.expect("transactional_id", None, "ok", &[], &[])?;
    Ok(())
}
