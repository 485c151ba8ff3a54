//! Security (issue: TLS and auth) and relay <-> Kafka network faults: Postgres over TLS with
//! `sslmode = verify-full` and SCRAM, Kafka over SASL_SSL with SCRAM-SHA-512, clear and final failures
//! (exit 78, no retry storm) on a wrong CA or a wrong password, no secret in anything the relay prints or
//! serves, connections to Kafka cut and blackholed (through the broker's `PROXIED` listener), and a
//! topic the relay may not write (ACL) dead-lettered as `topic_not_authorized`.

use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use outbox_relay_dev::{
    free_port, other_ca, random_suffix, run_cli, shared_servers, verify, write_concurrently, Kafka,
    Postgres, RelayConfig, RelayProcess,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{bin, setup, spec, start, topics, READY};

/// Postgres over TLS (`verify-full` against the harness CA, host name `localhost`) and Kafka over
/// SASL_SSL (SCRAM-SHA-512, the harness CA).
fn secure(cfg: &mut RelayConfig) {
    let pg = Postgres::shared();
    let kafka = Kafka::shared();
    // No admin server (the default port is shared by every relay of the machine).
    cfg.set("admin.listen", "");
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

/// Waits for the relay to exit; fails if it still runs after `deadline`.
async fn exit_within(relay: &mut RelayProcess, deadline: Duration) -> Result<ExitStatus> {
    match relay.wait_exit(deadline).await {
        Some(s) => Ok(s),
        None => {
            let logs = relay.logs();
            relay.kill9().await?;
            anyhow::bail!("relay still running after {deadline:?}; logs:\n{logs}")
        }
    }
}

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
    let mut relay = start(&cfg).await?;
    let written = write_concurrently(&db, &spec(5_000, &types, &[1, 10, 100], 2)).await?;
    let received = Kafka::shared()
        .collect(
            &topics(&cfg, &types),
            written.len(),
            Duration::from_secs(120),
            true,
        )
        .await?;
    let verdict = verify(&written, &received);
    eprintln!("postgres verify-full + kafka SASL_SSL SCRAM-SHA-512: {verdict}");
    verdict.assert_exactly_once();

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
    relay.sigterm()?;
    let status = exit_within(&mut relay, Duration::from_secs(30)).await?;
    ensure!(status.success(), "{status:?}\n{}", relay.logs());
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
    let mut relay = RelayProcess::spawn(&bin(), &cfg.to_toml(), &[])?;
    let status = exit_within(&mut relay, Duration::from_secs(60)).await?;
    let took = started.elapsed();
    let logs = relay.logs();
    eprintln!(
        "wrong CA: exit {:?} after {took:.1?}, {} warn/error lines:\n{logs}",
        status.code(),
        complaints(&logs)
    );
    ensure!(status.code() == Some(78), "{status:?}\n{logs}");
    ensure!(!logs.contains(READY), "{logs}");
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
    let mut relay = RelayProcess::spawn(&bin(), &cfg.to_toml(), &[])?;
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

async fn http_get(port: u16, path: &str) -> Result<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await??;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Runs the relay to its exit (or kills it after `deadline`) and records its output.
async fn run_to_exit(
    cap: &mut Captured,
    what: &str,
    cfg: &RelayConfig,
    env: &[(&str, &str)],
    deadline: Duration,
) -> Result<Option<i32>> {
    let mut relay = RelayProcess::spawn(&bin(), &cfg.to_toml(), env)?;
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
    let config = config.to_string_lossy();
    for args in [
        vec!["status", "--config", &config],
        vec!["status", "--config", &config, "--json"],
        vec!["validate", "--config", &config],
    ] {
        let (st, out, err) = run_cli(&bin(), &args, env)?;
        cap.add(format!("{what}: {args:?} ({st:?}) stdout"), out);
        cap.add(format!("{what}: {args:?} stderr"), err);
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
    let admin_port = free_port();
    let mut good = base.clone();
    good.set("admin.listen", format!("127.0.0.1:{admin_port}"));
    good.set(
        "kafka.sasl_password_file",
        kafka_file.to_string_lossy().into_owned(),
    );
    let env = [("OUTBOX_RELAY__POSTGRES__PASSWORD", pg_secret.as_str())];
    let mut relay = RelayProcess::spawn(&bin(), &good.to_toml(), &env)?;
    relay
        .wait_for_log(READY, Duration::from_secs(60))
        .await
        .context("relay with secrets from env and file")?;
    let written = write_concurrently(&db, &spec(1_000, &types, &[1, 10], 1)).await?;
    let received = Kafka::shared()
        .collect(
            &topics(&good, &types),
            written.len(),
            Duration::from_secs(60),
            true,
        )
        .await?;
    verify(&written, &received).assert_exactly_once();
    let metrics = http_get(admin_port, "/metrics").await?;
    ensure!(metrics.contains("200 OK"), "{metrics}");
    cap.add("/metrics", metrics);
    for path in ["/live", "/ready"] {
        cap.add(path, http_get(admin_port, path).await?);
    }
    status_outputs(&mut cap, "running", relay.config_path(), &env)?;
    relay.sighup()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    relay.sigterm()?;
    ensure!(
        relay.wait_exit(Duration::from_secs(30)).await.is_some(),
        "did not stop"
    );
    status_outputs(&mut cap, "stopped", relay.config_path(), &env)?;
    cap.add("good run", relay.logs());

    // 2. Wrong Postgres password from a file (Kafka's from the environment).
    let mut bad_pg = base.clone();
    bad_pg.set(
        "postgres.password_file",
        wrong_pg_file.to_string_lossy().into_owned(),
    );
    bad_pg.set("admin.listen", "");
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
    let mut bad_kafka = base.clone();
    bad_kafka.set("admin.listen", "");
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
        let p = dir.path().join(format!("{}.toml", what.replace(' ', "-")));
        write_private(&p, &c.to_toml())?;
        let (st, out, err) = run_cli(&bin(), &["validate", "--config", &p.to_string_lossy()], &[])?;
        cap.add(format!("validate {what} ({st:?})"), format!("{out}{err}"));
        ensure!(!st.success(), "{what}: validate accepted it: {out}{err}");
        let (st, out, err) = run_cli(&bin(), &["run", "--config", &p.to_string_lossy()], &[])?;
        cap.add(format!("run {what} ({st:?})"), format!("{out}{err}"));
        ensure!(st.code() == Some(78), "{what}: run exit {st:?}: {out}{err}");
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
    let (st, out, err) = run_cli(&bin(), &["validate", "--config", &p.to_string_lossy()], &[])?;
    cap.add(
        format!("validate world-readable ({st:?})"),
        format!("{out}{err}"),
    );
    ensure!(
        format!("{out}{err}").to_lowercase().contains("readable"),
        "no warning about a world-readable file with secrets: {out}{err}"
    );

    let total: usize = cap.0.iter().map(|(_, t)| t.len()).sum();
    eprintln!(
        "no secret: {} captures, {total} bytes, grepped for {} secrets",
        cap.0.len(),
        secrets.len()
    );
    cap.assert_free_of(&secrets)
}

// ---------------------------------------------------------------------------------------------
// relay <-> Kafka network faults

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_connections_cut_and_blackholed() -> Result<()> {
    let _guard = shared_servers().await;
    let _proxy_user = PROXY_USER.lock().await;
    let types = ["booking", "car"];
    let (db, mut cfg) = setup(&types).await?;
    let kafka = Kafka::shared();
    let proxy = kafka.proxy();
    proxy.set_blackhole(false);
    proxy.set_refuse(false);
    cfg.set("kafka.bootstrap_servers", kafka.proxied_bootstrap());
    cfg.set("admin.listen", "");
    cfg.set("retry.initial_backoff_ms", 100i64);
    cfg.set("retry.max_backoff_ms", 1_000i64);
    let mut relay = start(&cfg).await?;
    let topics = topics(&cfg, &types);
    let writer = {
        let db = db.clone();
        let s = spec(20_000, &types, &[1, 10, 50], 2);
        tokio::spawn(async move { write_concurrently(&db, &s).await })
    };
    let mut cuts = 0;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        proxy.cut_all();
        cuts += 1;
    }
    // A partition: connections stay open, nothing moves, for longer than a few seconds.
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.set_blackhole(true);
    tokio::time::sleep(Duration::from_secs(20)).await;
    proxy.set_blackhole(false);
    // Then cuts again, while the relay recovers.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        proxy.cut_all();
        cuts += 1;
    }
    let written = writer.await??;
    let received = kafka
        .collect(&topics, written.len(), Duration::from_secs(180), true)
        .await?;
    let verdict = verify(&written, &received);
    eprintln!(
        "kafka connections cut x{cuts} and blackholed 20 s: {verdict}; sessions started: {}",
        relay.logs().matches(READY).count()
    );
    verdict.assert_exactly_once();
    ensure!(relay.is_running(), "relay exited:\n{}", relay.logs());
    relay.sigterm()?;
    relay.wait_exit(Duration::from_secs(30)).await;
    Ok(())
}

/// The shared Kafka proxy: one test at a time cuts it.
static PROXY_USER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------------------
// authorization

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_for_a_topic_the_relay_may_not_write_are_dead_lettered() -> Result<()> {
    let _guard = shared_servers().await;
    let types = ["booking", "secret"];
    let (db, mut cfg) = setup(&types).await?;
    secure(&mut cfg);
    let kafka = Kafka::shared();
    let dlq = format!("{}.dead_letter", cfg.topic_prefix);
    kafka.create_topic(&dlq, 1, &[]).await?;
    cfg.set("errors.dead_letter_topic", dlq.clone());
    let forbidden = cfg.topic_for("secret");
    let principal = format!("User:{}", Kafka::SASL_USER);
    kafka
        .add_topic_acl(&principal, "WRITE", "DENY", &forbidden)
        .await?;
    let mut relay = start(&cfg).await?;
    let written = write_concurrently(&db, &spec(3_000, &types, &[1, 10], 2)).await?;
    let (allowed, denied): (Vec<_>, Vec<_>) = written
        .into_iter()
        .partition(|w| w.aggregate_type != "secret");
    let allowed_topic = [cfg.topic_for("booking")];
    let received = kafka
        .collect(
            &allowed_topic,
            allowed.len(),
            Duration::from_secs(120),
            true,
        )
        .await?;
    let dead = kafka
        .collect(
            std::slice::from_ref(&dlq),
            denied.len(),
            Duration::from_secs(120),
            true,
        )
        .await?;
    let in_forbidden = kafka
        .collect_for(
            std::slice::from_ref(&forbidden),
            Duration::from_secs(2),
            false,
        )
        .await?;
    let _ = kafka
        .remove_topic_acl(&principal, "WRITE", "DENY", &forbidden)
        .await;
    let verdict = verify(&allowed, &received);
    let reasons: std::collections::BTreeMap<String, usize> =
        dead.iter().fold(Default::default(), |mut m, r| {
            *m.entry(r.header("dlq_reason").unwrap_or("?").to_string())
                .or_default() += 1;
            m
        });
    let dead_ids: std::collections::HashSet<&str> =
        dead.iter().filter_map(|r| r.header("event_id")).collect();
    eprintln!(
        "topic not authorized: written {} ({} to the forbidden topic), published {}, dead-lettered {} {reasons:?}; {verdict}",
        allowed.len() + denied.len(),
        denied.len(),
        received.len(),
        dead.len()
    );
    verdict.assert_exactly_once();
    ensure!(
        in_forbidden.is_empty(),
        "records reached the forbidden topic"
    );
    ensure!(
        dead.len() == denied.len() && dead_ids.len() == denied.len(),
        "dead-lettered {} (distinct {}) of {}",
        dead.len(),
        dead_ids.len(),
        denied.len()
    );
    ensure!(
        denied
            .iter()
            .all(|w| dead_ids.contains(w.id.to_string().as_str())),
        "a denied row is missing from the dead letters"
    );
    ensure!(
        reasons.keys().all(|k| k == "topic_not_authorized"),
        "{reasons:?}"
    );
    ensure!(received.len() + dead.len() == allowed.len() + denied.len());
    ensure!(relay.is_running(), "{}", relay.logs());
    relay.sigterm()?;
    relay.wait_exit(Duration::from_secs(30)).await;
    Ok(())
}

/// libpq's other TLS modes on the SQL connection (`validate --connect`): `require` encrypts
/// without a CA, `verify-ca` checks the chain but not the host name, and a chain from another CA
/// is refused with exit 78 even in `verify-ca`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_require_and_verify_ca_modes() -> Result<()> {
    let _guard = shared_servers().await;
    let (_db, base) = setup(&["booking"]).await?;
    let pg = Postgres::shared();
    let dir = tempfile::tempdir()?;
    let wrong = other_ca()?;
    let cases: [(&str, Option<&Path>, i32); 3] = [
        ("require", None, 0),
        ("verify-ca", Some(pg.ca_path()), 0),
        ("verify-ca", Some(&wrong), 78),
    ];
    for (i, (mode, ca, want)) in cases.into_iter().enumerate() {
        let mut cfg = base.clone();
        cfg.set("postgres.sslmode", mode);
        if let Some(ca) = ca {
            cfg.set("postgres.sslrootcert", ca.to_string_lossy().into_owned());
        }
        let path = dir.path().join(format!("relay-{i}.toml"));
        std::fs::write(&path, cfg.to_toml())?;
        let (status, out, err) = run_cli(
            &bin(),
            &["validate", "--connect", "--config", &path.to_string_lossy()],
            &[],
        )?;
        let text = format!("{out}{err}");
        ensure!(
            status.code() == Some(want),
            "sslmode {mode} (CA {ca:?}): exit {status:?}, want {want}: {text}"
        );
        if want == 78 {
            ensure!(text.to_lowercase().contains("certificate"), "{text}");
        }
    }
    Ok(())
}
