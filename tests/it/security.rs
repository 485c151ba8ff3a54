//! Security: Postgres over TLS with `sslmode = verify-full` (and libpq's other modes) and SCRAM,
//! Kafka over SASL_SSL with SCRAM-SHA-512; clear and final failures (exit 78, no retry storm) on a
//! wrong CA or a wrong password; no secret in anything the relay prints or serves; and the relay's
//! Postgres role may replicate and read the outbox, nothing more (as `sql/` grants it).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use outbox_relay_dev::postgres::{current_wal_lsn, slot_info};
use outbox_relay_dev::{
    other_ca, random_suffix, shared_servers, wait_until, write_concurrently, Kafka, Postgres,
    RelayConfig,
};
use pgwire_replication::{ReplicationClient, ReplicationConfig};

use crate::support::{
    cli_on, cli_with, exit_within, scalar_i64, scrape, secure, setup, spawn, spec, start,
    start_with_env, stop, topics, verdict, wait_published, write_private,
};

/// Log lines at WARN or ERROR level (text format).
fn complaints(logs: &str) -> usize {
    logs.lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("ERROR"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_verify_full_and_kafka_sasl_ssl_scram_publish_exactly_once() -> Result<()> {
    let _guard = shared_servers().await;
    let types = ["booking", "car"];
    let (db, mut cfg) = setup(&types).await?;
    secure(&mut cfg);
    let topics = topics(&cfg, &types);
    let mut relay = start(&cfg).await?;
    let written = write_concurrently(&db, &spec(5_000, &types, &[1, 10, 100], 2)).await?;
    wait_published(&topics, &written, Duration::from_secs(120)).await?;

    // Both Postgres sessions of the relay (SQL and replication) are encrypted.
    let client = db.client().await?;
    let rows = client
        .query(
            "SELECT a.backend_type, s.ssl, s.version \
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.application_name = 'outbox-relay' AND a.datname = $1",
            &[&db.name],
        )
        .await?;
    let sessions: Vec<(String, bool, Option<String>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    eprintln!("relay sessions: {sessions:?}");
    ensure!(
        sessions.iter().any(|s| s.0 == "walsender"),
        "no replication session: {sessions:?}"
    );
    ensure!(
        sessions.iter().all(|s| s.1),
        "a relay session is not encrypted: {sessions:?}"
    );
    ensure!(relay.is_running(), "{}", relay.logs());
    stop(&mut relay).await?;
    let verdict = verdict(&topics, &written).await?;
    eprintln!("postgres verify-full + kafka SASL_SSL SCRAM-SHA-512: {verdict}");
    verdict.assert_exactly_once();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_verify_full_with_the_wrong_ca_stops_with_78() -> Result<()> {
    let _guard = shared_servers().await;
    let (_db, mut cfg) = setup(&["booking"]).await?;
    secure(&mut cfg);
    let wrong = other_ca()?;
    cfg.set("postgres.sslrootcert", wrong.to_string_lossy().into_owned());
    let started = Instant::now();
    let mut relay = spawn(&cfg, &[])?;
    let status = exit_within(&mut relay, Duration::from_secs(60)).await?;
    let took = started.elapsed();
    let logs = relay.logs();
    eprintln!(
        "wrong CA: exit {:?} after {took:.1?}, {} warn/error lines:\n{logs}",
        status.code(),
        complaints(&logs)
    );
    ensure!(status.code() == Some(78), "{status:?}\n{logs}");
    // The log itself: it never reports a started pipeline.
    ensure!(!logs.contains("outbox-relay started"), "{logs}");
    let lower = logs.to_lowercase();
    ensure!(
        lower.contains("certificate") || lower.contains("tls"),
        "the message does not say it is about TLS:\n{logs}"
    );
    ensure!(
        logs.contains("localhost"),
        "the server is not named:\n{logs}"
    );
    ensure!(
        took < Duration::from_secs(30) && complaints(&logs) <= 5,
        "a retry storm?\n{logs}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_wrong_sasl_password_stops_with_78_naming_broker_and_user() -> Result<()> {
    let _guard = shared_servers().await;
    let (_db, mut cfg) = setup(&["booking"]).await?;
    secure(&mut cfg);
    let wrong = format!("wrong-kafka-pw-{}", random_suffix());
    cfg.set("kafka.sasl_password", wrong.as_str());
    let started = Instant::now();
    let mut relay = spawn(&cfg, &[])?;
    let status = exit_within(&mut relay, Duration::from_secs(90)).await?;
    let took = started.elapsed();
    let logs = relay.logs();
    eprintln!(
        "wrong SASL password: exit {:?} after {took:.1?}, {} warn/error lines:\n{logs}",
        status.code(),
        complaints(&logs)
    );
    ensure!(status.code() == Some(78), "{status:?}\n{logs}");
    ensure!(!logs.contains(&wrong), "the password was logged:\n{logs}");
    let kafka = Kafka::shared();
    ensure!(
        logs.contains(&kafka.sasl_ssl_bootstrap()),
        "the broker is not named:\n{logs}"
    );
    ensure!(
        logs.contains(&format!("{:?}", Kafka::SASL_USER)) || logs.contains(Kafka::SASL_USER),
        "the user is not named:\n{logs}"
    );
    ensure!(
        took < Duration::from_secs(45) && complaints(&logs) <= 10,
        "a retry storm?\n{logs}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// no secret anywhere

/// Everything a run printed or served, with where it came from.
#[derive(Default)]
struct Captured(Vec<(String, String)>);

impl Captured {
    fn add(&mut self, what: impl Into<String>, text: impl Into<String>) {
        self.0.push((what.into(), text.into()));
    }

    fn assert_free_of(&self, secrets: &[&str]) -> Result<()> {
        for (what, text) in &self.0 {
            for s in secrets {
                ensure!(!text.contains(s), "{what} holds a secret ({s}):\n{text}");
            }
        }
        Ok(())
    }
}

/// Runs the relay to its exit (or kills it after `deadline`) and records its output.
async fn run_to_exit(
    cap: &mut Captured,
    what: &str,
    cfg: &RelayConfig,
    env: &[(&str, &str)],
    deadline: Duration,
) -> Result<Option<i32>> {
    let mut relay = spawn(cfg, env)?;
    let status = relay.wait_exit(deadline).await;
    if status.is_none() {
        relay.kill9().await?;
    }
    cap.add(what, relay.logs());
    Ok(status.and_then(|s| s.code()))
}

fn status_outputs(
    cap: &mut Captured,
    what: &str,
    config: &Path,
    env: &[(&str, &str)],
) -> Result<()> {
    for args in [vec!["status"], vec!["status", "--json"], vec!["validate"]] {
        let out = cli_on(config, &args, env)?;
        cap.add(
            format!("{what}: {args:?} ({:?}) stdout", out.status),
            out.stdout,
        );
        cap.add(format!("{what}: {args:?} stderr"), out.stderr);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_logs_errors_status_or_metrics() -> Result<()> {
    let _guard = shared_servers().await;
    let types = ["booking"];
    let (db, mut base) = setup(&types).await?;
    secure(&mut base);
    // A role of this test's own, with a distinctive password (the shared relay role's is shared).
    let role = format!("sec_{}", random_suffix());
    let pg_secret = format!("PgSecret-{}-{}", random_suffix(), random_suffix());
    db.create_relay_login(&role, &pg_secret).await?;
    base.set("postgres.user", role.as_str());
    base.unset("postgres.password");
    base.unset("kafka.sasl_password");
    let kafka_secret = Kafka::SASL_PASSWORD;
    let wrong_pg = format!("WrongPg-{}", random_suffix());
    let wrong_kafka = format!("WrongKafka-{}", random_suffix());
    let secrets = [pg_secret.as_str(), kafka_secret, &wrong_pg, &wrong_kafka];
    let dir = tempfile::tempdir()?;
    let pg_file = dir.path().join("pg-password");
    let kafka_file = dir.path().join("kafka-password");
    let wrong_pg_file = dir.path().join("wrong-pg-password");
    write_private(&pg_file, &format!("{pg_secret}\n"))?;
    write_private(&kafka_file, &format!("{kafka_secret}\n"))?;
    write_private(&wrong_pg_file, &format!("{wrong_pg}\n"))?;
    let mut cap = Captured::default();

    // 1. A good run: Postgres password from the environment, Kafka's from a file; events flow,
    //    /metrics is scraped, status is asked while it runs and after it stopped.
    let mut good = base.clone();
    good.set(
        "kafka.sasl_password_file",
        kafka_file.to_string_lossy().into_owned(),
    );
    let env = [("OUTBOX_RELAY__POSTGRES__PASSWORD", pg_secret.as_str())];
    let mut relay = start_with_env(&good, &env)
        .await
        .context("relay with secrets from env and file")?;
    let topics = topics(&good, &types);
    let written = write_concurrently(&db, &spec(1_000, &types, &[1, 10], 1)).await?;
    wait_published(&topics, &written, Duration::from_secs(60)).await?;
    for path in ["/metrics", "/live", "/ready"] {
        let (code, body) = relay.get(path).await?;
        ensure!(code == 200, "{path}: {code} {body}");
        cap.add(path, body);
    }
    status_outputs(&mut cap, "running", relay.config_path(), &env)?;
    // A reload logs what it did: wait for it to be counted.
    relay.sighup()?;
    wait_until(Duration::from_secs(10), "the SIGHUP reload", || async {
        let reloads = scrape(&relay)
            .await?
            .value("outbox_relay_config_reloads_total");
        Ok((reloads > 0.0).then_some(()))
    })
    .await?;
    stop(&mut relay).await?;
    verdict(&topics, &written).await?.assert_exactly_once();
    status_outputs(&mut cap, "stopped", relay.config_path(), &env)?;
    cap.add("good run", relay.logs());

    // 2. Wrong Postgres password from a file (Kafka's from the environment).
    let mut bad_pg = base.clone();
    bad_pg.set(
        "postgres.password_file",
        wrong_pg_file.to_string_lossy().into_owned(),
    );
    let env_kafka = [("OUTBOX_RELAY__KAFKA__SASL_PASSWORD", kafka_secret)];
    let code = run_to_exit(
        &mut cap,
        "wrong postgres password",
        &bad_pg,
        &env_kafka,
        Duration::from_secs(60),
    )
    .await?;
    ensure!(code == Some(78), "wrong postgres password: exit {code:?}");
    let p = dir.path().join("bad-pg.toml");
    write_private(&p, &bad_pg.to_toml())?;
    status_outputs(&mut cap, "wrong postgres password", &p, &env_kafka)?;

    // 3. Wrong Kafka password from the environment (Postgres' from the environment too).
    let bad_kafka = base.clone();
    let env_both = [
        ("OUTBOX_RELAY__POSTGRES__PASSWORD", pg_secret.as_str()),
        ("OUTBOX_RELAY__KAFKA__SASL_PASSWORD", wrong_kafka.as_str()),
    ];
    let code = run_to_exit(
        &mut cap,
        "wrong kafka password",
        &bad_kafka,
        &env_both,
        Duration::from_secs(90),
    )
    .await?;
    ensure!(code == Some(78), "wrong kafka password: exit {code:?}");
    let p = dir.path().join("bad-kafka.toml");
    write_private(&p, &bad_kafka.to_toml())?;
    status_outputs(&mut cap, "wrong kafka password", &p, &env_both)?;

    // 4. Config errors around secrets: both a password and a password file; a secret under a
    //    misspelt key; a secret in an owned librdkafka property; a world-readable file with secrets.
    let mut cases: Vec<(&str, RelayConfig)> = Vec::new();
    let mut c = base.clone();
    c.set("postgres.password", pg_secret.as_str());
    c.set(
        "postgres.password_file",
        pg_file.to_string_lossy().into_owned(),
    );
    cases.push(("password and password_file", c));
    let mut c = base.clone();
    c.set("postgres.pasword", pg_secret.as_str());
    cases.push(("misspelt key", c));
    let mut c = base.clone();
    let mut props = toml::Table::new();
    props.insert("sasl.password".into(), wrong_kafka.as_str().into());
    c.set("kafka.properties", props);
    cases.push(("owned librdkafka key", c));
    let mut c = base.clone();
    c.set(
        "postgres.password",
        toml::Value::Array(vec![wrong_pg.as_str().into()]),
    );
    cases.push(("wrong type", c));
    for (what, c) in &cases {
        let out = cli_with(c, &["validate"], &[])?;
        cap.add(format!("validate {what} ({:?})", out.status), out.text());
        ensure!(
            !out.status.success(),
            "{what}: validate accepted it: {}",
            out.text()
        );
        let out = cli_with(c, &["run"], &[])?;
        cap.add(format!("run {what} ({:?})", out.status), out.text());
        ensure!(
            out.code() == Some(78),
            "{what}: run exit {:?}: {}",
            out.status,
            out.text()
        );
    }
    // World-readable, with a secret inside: a warning, and still no secret.
    let mut c = base.clone();
    c.set("postgres.password", pg_secret.as_str());
    c.set("kafka.sasl_password", kafka_secret);
    let p = dir.path().join("world-readable.toml");
    write_private(&p, &c.to_toml())?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644))?;
    }
    let out = cli_on(&p, &["validate"], &[])?;
    cap.add(
        format!("validate world-readable ({:?})", out.status),
        out.text(),
    );
    ensure!(
        out.text().to_lowercase().contains("readable"),
        "no warning about a world-readable file with secrets: {}",
        out.text()
    );

    let total: usize = cap.0.iter().map(|(_, t)| t.len()).sum();
    eprintln!(
        "no secret: {} captures, {total} bytes, grepped for {} secrets",
        cap.0.len(),
        secrets.len()
    );
    cap.assert_free_of(&secrets)
}

/// libpq's other TLS modes on the SQL connection (`validate --connect`): `require` encrypts
/// without a CA, `verify-ca` checks the chain but not the host name, and a chain from another CA
/// is refused with exit 78 even in `verify-ca`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_require_and_verify_ca_modes() -> Result<()> {
    let _guard = shared_servers().await;
    let (_db, base) = setup(&["booking"]).await?;
    let pg = Postgres::shared();
    let wrong = other_ca()?;
    let cases: [(&str, Option<&Path>, i32); 3] = [
        ("require", None, 0),
        ("verify-ca", Some(pg.ca_path()), 0),
        ("verify-ca", Some(&wrong), 78),
    ];
    for (mode, ca, want) in cases {
        let mut cfg = base.clone();
        cfg.set("postgres.sslmode", mode);
        if let Some(ca) = ca {
            cfg.set("postgres.sslrootcert", ca.to_string_lossy().into_owned());
        }
        let out = cli_with(&cfg, &["validate", "--connect"], &[])?;
        let text = out.text();
        ensure!(
            out.code() == Some(want),
            "sslmode {mode} (CA {ca:?}): exit {:?}, want {want}: {text}",
            out.status
        );
        if want == 78 {
            ensure!(text.to_lowercase().contains("certificate"), "{text}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn the_relay_role_may_replicate_and_read_the_outbox_and_nothing_more() -> Result<()> {
    let _g = shared_servers().await;
    let pg = Postgres::shared();
    let db = pg.new_database().await?;
    let admin = db.client().await?;
    let role = admin
        .query_one(
            "SELECT rolsuper, rolreplication, rolcanlogin FROM pg_roles WHERE rolname='outbox_relay'",
            &[],
        )
        .await?;
    let attrs: (bool, bool, bool) = (role.get(0), role.get(1), role.get(2));
    assert_eq!(
        attrs,
        (false, true, true),
        "outbox_relay: not superuser, replication, login"
    );

    // A replication session as outbox_relay (SCRAM over TCP), the way the relay connects.
    let mut cfg = ReplicationConfig::default();
    cfg.host = pg.host().to_string();
    cfg.port = pg.port();
    cfg.user = Postgres::RELAY_USER.to_string();
    cfg.password = Postgres::RELAY_PASSWORD.to_string();
    cfg.database = db.name.clone();
    let mut repl = ReplicationClient::connect_gated(cfg).await?;
    let ident = repl.identify_system().await?;
    assert_eq!(ident.dbname.as_deref(), Some(db.name.as_str()));
    let slot = format!("s_{}", random_suffix());
    repl.simple_query(&format!(
        "CREATE_REPLICATION_SLOT {slot} TEMPORARY LOGICAL pgoutput"
    ))
    .await
    .context("the relay role may create a logical slot")?;
    let info = slot_info(&admin, &slot).await?.context("slot exists")?;
    assert!(info.active, "{info:?}");
    assert!(current_wal_lsn(&admin).await? >= info.confirmed_flush_lsn.unwrap_or_default());
    drop(repl);

    let relay = db.relay_client().await?;
    scalar_i64(&relay, "SELECT count(*) FROM public.outbox").await?;
    admin
        .batch_execute("CREATE TABLE public.secret (x int); INSERT INTO public.secret VALUES (1)")
        .await?;
    let err = relay
        .query("SELECT * FROM public.secret", &[])
        .await
        .expect_err("outbox_relay must not read other tables");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "{err}"
    );
    let err = relay
        .query("SELECT outbox_write('a', 'b', 'c', '{}')", &[])
        .await
        .expect_err("outbox_relay must not write the outbox");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "{err}"
    );
    Ok(())
}
