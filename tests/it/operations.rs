//! Operating the relay as the README, the units and the compose file say (issue 14): each test fails
//! on the defect it was written for.
//!
//! - ops/alerts.yml: promtool unit tests fire every alert and pin its rendered text.
//! - systemd: the template unit `outbox-relay@.service` (one config per instance, the plain unit's
//!   sandbox); no `ExecStartPre=` whose refusal systemd would restart; `Documentation=` that exists.
//! - docker-compose.yml: Kafka's data in its volume, the Postgres healthcheck over TCP, an init script
//!   that fails the first start on a broken SQL file (run for real against a private Postgres).
//! - README: the Database setup commands and pg_hba.conf line, run as written against a private
//!   Postgres; `validate --connect` with the unit's password file; the `created_at` and
//!   `pg_commit_ts` header forms; which keys environment variables can set; what a build needs;
//!   several relays on one host sharing the checkpoint topic.
//!
//! A systemd manager cannot run here (no systemd as PID 1, and a private one would take over the
//! machine's cgroups), so the unit checks are static plus `systemd-analyze` and the relay's own exit
//! codes. Self-contained: helpers live at the bottom.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use outbox_relay::config::{Config, ENV_PREFIX};
use outbox_relay_dev::relay::find_relay_bin;
use outbox_relay_dev::{
    free_port, random_suffix, repo_root, run_cli, shared_servers, verify, wait_until,
    write_concurrently, Kafka, Postgres, RelayConfig, RelayProcess, WriteSpec,
};
use yaml_rust2::{Yaml, YamlLoader};

const READY: &str = "outbox-relay started";

fn bin() -> PathBuf {
    std::env::var_os("CARGO_BIN_EXE_outbox-relay")
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO_BIN_EXE_outbox-relay").map(PathBuf::from))
        .unwrap_or_else(|| find_relay_bin().expect("relay binary"))
}

// ---------------------------------------------------------------------------------------------
// ops/alerts.yml

/// `promtool test rules ops/alerts.test.yml` passes, every alert of ops/alerts.yml fires in it with
/// its annotations spelled out, and the OutboxRelayStuck text depends on its operand order (the
/// shipped order rendered "has not committed for 1s").
#[test]
fn promtool_unit_tests_fire_every_alert_with_its_rendered_text() -> Result<()> {
    let ops = repo_root().join("ops");
    let rules_text = std::fs::read_to_string(ops.join("alerts.yml"))?;
    let tests_text = std::fs::read_to_string(ops.join("alerts.test.yml"))?;
    let rules = yaml(&rules_text, "ops/alerts.yml")?;
    let tests = yaml(&tests_text, "ops/alerts.test.yml")?;

    let mut annotations: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for group in rules["groups"].as_vec().context("groups")? {
        for rule in group["rules"].as_vec().context("rules")? {
            let name = rule["alert"].as_str().context("rule without alert")?;
            let keys = rule["annotations"]
                .as_hash()
                .context("rule without annotations")?
                .keys()
                .filter_map(|k| k.as_str().map(str::to_string))
                .collect();
            annotations.insert(name.to_string(), keys);
        }
    }
    ensure!(annotations.len() >= 8, "alerts: {annotations:?}");
    let mut fired: BTreeMap<String, usize> = BTreeMap::new();
    for test in tests["tests"].as_vec().context("tests")? {
        for case in test["alert_rule_test"]
            .as_vec()
            .context("alert_rule_test")?
        {
            let name = case["alertname"].as_str().context("alertname")?;
            for alert in case["exp_alerts"].as_vec().context("exp_alerts")? {
                let exp = alert["exp_annotations"].as_hash().with_context(|| {
                    format!("{name}: an expected alert without exp_annotations")
                })?;
                let keys: BTreeSet<String> = exp
                    .iter()
                    .filter(|(_, v)| v.as_str().is_some_and(|v| !v.is_empty()))
                    .filter_map(|(k, _)| k.as_str().map(str::to_string))
                    .collect();
                ensure!(
                    annotations.get(name) == Some(&keys),
                    "{name}: the test pins annotations {keys:?}, the rule has {:?}",
                    annotations.get(name)
                );
                *fired.entry(name.to_string()).or_default() += 1;
            }
        }
    }
    for alert in annotations.keys() {
        ensure!(
            fired.contains_key(alert),
            "ops/alerts.test.yml never fires {alert}"
        );
    }

    let (ok, out) = promtool_test(&ops)?;
    ensure!(ok, "promtool test rules ops/alerts.test.yml:\n{out}");
    println!("{out}");

    // The same tests against OutboxRelayStuck with its first two `and` operands swapped back.
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("alerts.test.yml"), &tests_text)?;
    let mut swapped = false;
    let mut in_stuck = false;
    let mut lines = Vec::new();
    for line in rules_text.lines() {
        if let Some(name) = line.trim().strip_prefix("- alert:") {
            in_stuck = name.trim() == "OutboxRelayStuck";
        }
        match line.split_once("expr: ") {
            Some((indent, expr)) if in_stuck => {
                let mut operands: Vec<&str> = expr.split(" and ").collect();
                ensure!(operands.len() >= 2, "OutboxRelayStuck: {expr}");
                operands.swap(0, 1);
                lines.push(format!("{indent}expr: {}", operands.join(" and ")));
                swapped = true;
            }
            _ => lines.push(line.to_string()),
        }
    }
    ensure!(swapped, "no OutboxRelayStuck expr in ops/alerts.yml");
    std::fs::write(dir.path().join("alerts.yml"), lines.join("\n"))?;
    let (ok, out) = promtool_test(dir.path())?;
    ensure!(
        !ok && out.contains("has not committed for 1s"),
        "with the operands swapped the text must read \"1s\" and the test fail:\n{out}"
    );
    Ok(())
}

fn promtool_test(dir: &Path) -> Result<(bool, String)> {
    let out = Command::new("promtool")
        .args(["test", "rules", "alerts.test.yml"])
        .current_dir(dir)
        .output()
        .context("promtool (apt-get install prometheus; dev/setup does)")?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

// ---------------------------------------------------------------------------------------------
// systemd units

/// Directives of the template that name the instance; every other one must be the plain unit's.
const PER_INSTANCE: [&str; 5] = [
    "Description",
    "ExecStart",
    "LoadCredential",
    "EnvironmentFile",
    "SyslogIdentifier",
];

/// `outbox-relay@NAME` runs `/etc/outbox-relay/NAME.toml` with exactly the plain unit's settings
/// otherwise, verifies, and its sandbox rates 2.0 or lower.
#[test]
fn systemd_template_runs_one_config_per_instance_with_the_plain_units_sandbox() -> Result<()> {
    let root = repo_root();
    let plain = std::fs::read_to_string(root.join("systemd/outbox-relay.service"))?;
    let template = std::fs::read_to_string(root.join("systemd/outbox-relay@.service"))?;
    let p = unit_directives(&plain);
    let t = unit_directives(&template);
    ensure!(
        values(&t, "ExecStart")
            == ["/usr/local/bin/outbox-relay run --config /etc/outbox-relay/%i.toml"],
        "ExecStart of the template: {:?}",
        values(&t, "ExecStart")
    );
    let shared = |d: &[(String, String, String)]| -> Vec<(String, String, String)> {
        d.iter()
            .filter(|(_, k, _)| !PER_INSTANCE.contains(&k.as_str()))
            .cloned()
            .collect()
    };
    let (sp, st) = (shared(&p), shared(&t));
    for (a, b) in sp.iter().zip(&st) {
        ensure!(
            a == b,
            "outbox-relay.service has {a:?} where outbox-relay@.service has {b:?}"
        );
    }
    ensure!(
        sp.len() == st.len(),
        "the units differ in length: {} and {} shared directives",
        sp.len(),
        st.len()
    );
    for key in PER_INSTANCE {
        let (vp, vt) = (values(&p, key), values(&t, key));
        ensure!(vp.len() == vt.len(), "{key}: {vp:?} vs {vt:?}");
        for v in vt {
            ensure!(v.contains("%i"), "{key}={v} does not name the instance");
        }
    }

    // systemd-analyze on an instance, with the built binary and the example config.
    let dir = tempfile::tempdir()?;
    let copy = template
        .replace("/usr/local/bin/outbox-relay", &bin().to_string_lossy())
        .replace(
            "/etc/outbox-relay/%i.toml",
            &dir.path().join("%i.toml").to_string_lossy(),
        );
    std::fs::write(dir.path().join("outbox-relay@.service"), copy)?;
    std::fs::copy(
        root.join("systemd/outbox-relay.toml"),
        dir.path().join("orders.toml"),
    )?;
    let instance = dir.path().join("outbox-relay@orders.service");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&instance)
        .output()
        .context("systemd-analyze (install the systemd package: dev/setup does)")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success() && !stderr.contains("outbox-relay@"),
        "systemd-analyze verify outbox-relay@orders.service: {stderr}"
    );
    let exposure = exposure(&instance)?;
    println!("systemd-analyze security outbox-relay@orders.service: {exposure}");
    ensure!(exposure <= 2.0, "exposure {exposure} > 2.0");
    Ok(())
}

/// A config the relay refuses never gets restarted: neither unit runs anything before the main
/// process (systemd's `RestartPreventExitStatus=` judges the main process only, so a refusal in
/// `ExecStartPre=` was retried), and the unit's own `ExecStart` line exits 78 on a bad or missing
/// config, a status the unit does not restart.
#[test]
fn systemd_units_leave_config_errors_to_run_whose_exit_78_is_not_restarted() -> Result<()> {
    let root = repo_root();
    for (unit, instance) in [
        ("outbox-relay.service", "outbox-relay"),
        ("outbox-relay@.service", "orders"),
    ] {
        let d = unit_directives(&std::fs::read_to_string(root.join("systemd").join(unit))?);
        for key in ["ExecCondition", "ExecStartPre", "ExecStartPost"] {
            ensure!(
                values(&d, key).is_empty(),
                "{unit}: {key}= runs beside the main process: a refusal there is restarted"
            );
        }
        ensure!(values(&d, "Restart") == ["on-failure"], "{unit}: Restart=");
        let prevent: BTreeSet<String> = values(&d, "RestartPreventExitStatus")
            .iter()
            .flat_map(|v| v.split_whitespace().map(str::to_string))
            .collect();
        ensure!(
            prevent.contains("78"),
            "{unit}: RestartPreventExitStatus={prevent:?}"
        );

        let exec = values(&d, "ExecStart");
        let exec = exec.first().context("ExecStart")?.replace("%i", instance);
        let argv: Vec<&str> = exec.split_whitespace().collect();
        let at = argv
            .iter()
            .position(|a| *a == "--config")
            .context("--config")?;
        let dir = tempfile::tempdir()?;
        let bad = dir.path().join(format!("{instance}.toml"));
        std::fs::write(&bad, "[postgres]\nslto = \"x\"\n")?;
        let missing = dir.path().join("missing.toml");
        for (config, expect) in [(&bad, "slto"), (&missing, "missing.toml")] {
            let mut args: Vec<String> = argv[1..].iter().map(|s| s.to_string()).collect();
            args[at] = config.to_string_lossy().into_owned();
            let out = Command::new(bin())
                .args(&args)
                .output()
                .with_context(|| format!("{unit}: {exec}"))?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            ensure!(
                out.status.code() == Some(78) && stderr.contains(expect),
                "{unit}: `{exec}` on {}: {:?} {stderr}",
                config.display(),
                out.status
            );
        }
    }
    Ok(())
}

/// `Documentation=` names a file the README's install steps put there, and every repository path a
/// unit's comments mention exists.
#[test]
fn systemd_units_point_at_documentation_that_exists() -> Result<()> {
    let root = repo_root();
    let readme = std::fs::read_to_string(root.join("README.md"))?;
    let install = code_blocks(section(&readme, "Running under systemd")?, "sh").join("\n");
    for unit in ["outbox-relay.service", "outbox-relay@.service"] {
        let text = std::fs::read_to_string(root.join("systemd").join(unit))?;
        let docs = values(&unit_directives(&text), "Documentation");
        ensure!(!docs.is_empty(), "{unit}: no Documentation=");
        for uri in docs.iter().flat_map(|v| v.split_whitespace()) {
            let path = uri
                .strip_prefix("file://")
                .with_context(|| format!("{unit}: Documentation={uri}: only file:// is checked"))?;
            ensure!(
                install.lines().any(|l| {
                    let words: Vec<&str> = l.split_whitespace().collect();
                    words.first() == Some(&"install")
                        && words.contains(&"README.md")
                        && words.contains(&path)
                }),
                "{unit}: Documentation={uri}, but the README's install steps do not put README.md there"
            );
        }
        for line in text.lines().filter(|l| l.trim_start().starts_with('#')) {
            for word in line.split_whitespace() {
                let word = word.trim_matches(|c: char| "()[],:;\"'`".contains(c));
                let repo_path = ["docs/", "systemd/", "sql/", "src/", "ops/", "dev/"]
                    .iter()
                    .any(|p| word.starts_with(p))
                    || word == "README.md";
                if repo_path {
                    ensure!(
                        root.join(word).exists(),
                        "{unit} mentions {word}, which does not exist"
                    );
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// docker-compose.yml (no Docker engine here: checked statically, the init script run for real)

#[test]
fn compose_keeps_kafka_data_in_its_volume_and_checks_postgres_over_tcp() -> Result<()> {
    let doc = compose()?;
    let kafka = &doc["services"]["kafka"];
    let env = environment(kafka)?;
    let log_dirs = env
        .get("KAFKA_LOG_DIRS")
        .context("kafka: no KAFKA_LOG_DIRS (the image's default is /tmp/kraft-combined-logs)")?;
    let named: BTreeSet<&str> = doc["volumes"]
        .as_hash()
        .context("no top-level volumes")?
        .keys()
        .filter_map(Yaml::as_str)
        .collect();
    let mounts: Vec<String> = strings(&kafka["volumes"])
        .into_iter()
        .filter(|v| v.split(':').next().is_some_and(|n| named.contains(n)))
        .filter_map(|v| v.split(':').nth(1).map(str::to_string))
        .collect();
    for dir in log_dirs.split(',') {
        ensure!(
            mounts.iter().any(|m| Path::new(dir.trim()).starts_with(m)),
            "kafka writes to {dir}, which is not in a named volume ({mounts:?}): lost on recreate"
        );
    }

    let test = strings(&doc["services"]["postgres"]["healthcheck"]["test"]);
    ensure!(
        test.first().map(String::as_str) == Some("CMD-SHELL"),
        "{test:?}"
    );
    let words: Vec<&str> = test
        .get(1)
        .context("healthcheck command")?
        .split_whitespace()
        .collect();
    ensure!(words.first() == Some(&"pg_isready"), "{words:?}");
    let host = words
        .iter()
        .position(|w| *w == "-h")
        .and_then(|i| words.get(i + 1))
        .context("pg_isready without -h checks the Unix socket, up during the init phase")?;
    ensure!(
        *host == "127.0.0.1",
        "pg_isready -h {host}: the init phase's server listens on the socket only, check TCP"
    );

    let init = init_script(&doc)?;
    let mut commands = init
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let first = commands.next().context("empty init script")?;
    ensure!(
        first.starts_with("set -")
            && first
                .split_whitespace()
                .nth(1)
                .is_some_and(|f| f.contains('e')),
        "the init script must start with set -e (it runs as its own process), not {first:?}"
    );
    for line in init
        .lines()
        .filter(|l| l.contains("psql ") && !l.trim_start().starts_with('#'))
    {
        ensure!(
            line.contains("-v ON_ERROR_STOP=1"),
            "psql without ON_ERROR_STOP: {line}"
        );
    }
    Ok(())
}

/// The compose file's Postgres init script, run as the image runs it (its own process, the
/// superuser, `POSTGRES_DB` already created): a broken SQL file stops it with an error before
/// anything else is applied; the shipped `sql/` applies, sets the relay's password and creates the
/// NotificationService's database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_init_script_fails_on_a_broken_sql_file_and_applies_the_shipped_ones() -> Result<()>
{
    let pg = private_postgres().await?;
    let doc = compose()?;
    let service = &doc["services"]["postgres"];
    let env = environment(service)?;
    let get = |k: &str| {
        env.get(k)
            .cloned()
            .with_context(|| format!("postgres: no {k}"))
    };
    let (user, db, relay_pw) = (
        get("POSTGRES_USER")?,
        get("POSTGRES_DB")?,
        get("OUTBOX_RELAY_DB_PASSWORD")?,
    );
    ensure!(user == pg.superuser(), "POSTGRES_USER {user}");
    let sql_target = strings(&service["volumes"])
        .into_iter()
        .find(|v| v.starts_with("./sql:"))
        .and_then(|v| v.split(':').nth(1).map(str::to_string))
        .context("sql/ is not mounted")?;
    // Compose turns `$$` into `$` in the content.
    let script = init_script(&doc)?.replace("$$", "$");
    let admin = pg.admin("postgres").await?;
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await?;

    let dir = tempfile::tempdir()?;
    let broken = dir.path().join("sql");
    std::fs::create_dir(&broken)?;
    std::fs::write(
        broken.join("000_broken.sql"),
        "SELECT nothing FROM no_such_table;\n",
    )?;
    for f in outbox_relay_dev::postgres::sql_files()? {
        std::fs::copy(&f, broken.join(f.file_name().context("file name")?))?;
    }
    let run = |sql_dir: &Path, name: &str| -> Result<std::process::Output> {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            script.replace(&sql_target, &sql_dir.to_string_lossy()),
        )?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        let mut cmd = Command::new(&path);
        cmd.env("PATH", path_with(pg.bin_dir()))
            .env("POSTGRES_USER", &user)
            .env("POSTGRES_DB", &db)
            .env("OUTBOX_RELAY_DB_PASSWORD", &relay_pw)
            .env("PGHOST", pg.host())
            .env("PGPORT", pg.port().to_string())
            .env("PGPASSWORD", pg.superuser_password());
        Ok(cmd.output()?)
    };

    let out = run(&broken, "broken.sh")?;
    let text = output_text(&out);
    ensure!(
        !out.status.success() && text.contains("no_such_table"),
        "a failing SQL file must fail the script: {:?}\n{text}",
        out.status
    );
    let client = pg.admin(&db).await?;
    let applied: Option<String> = client
        .query_one("SELECT to_regclass('public.outbox')::text", &[])
        .await?
        .get(0);
    let notification: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = 'notification'",
            &[],
        )
        .await?
        .get(0);
    ensure!(
        applied.is_none() && notification == 0,
        "the script went on after the failing file (outbox {applied:?}, notification db {notification})\n{text}"
    );

    let out = run(Path::new(&repo_root().join("sql")), "shipped.sh")?;
    ensure!(
        out.status.success(),
        "the shipped init script failed: {:?}\n{}",
        out.status,
        output_text(&out)
    );
    let applied: Option<String> = client
        .query_one("SELECT to_regclass('public.outbox')::text", &[])
        .await?
        .get(0);
    ensure!(applied.as_deref() == Some("outbox"), "outbox: {applied:?}");
    let notification: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = 'notification'",
            &[],
        )
        .await?
        .get(0);
    ensure!(notification == 1, "no notification database");
    let relay = connect(pg.config(&db, Postgres::RELAY_USER, &relay_pw)).await?;
    relay
        .query_one("SELECT count(*) FROM public.outbox", &[])
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// README: Database setup, run as written

/// The README's psql line applies `sql/` (twice: idempotent) as the superuser; with only the README's
/// pg_hba.conf line for the relay, the relay streams (its logical replication connection matches the
/// database's line); with only a `host replication` line instead, it is refused by pg_hba.conf.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_setup_as_the_readme_says_lets_the_relay_stream_and_a_replication_line_does_not(
) -> Result<()> {
    let _guard = shared_servers().await;
    let pg = private_postgres().await?;
    let kafka = Kafka::shared();
    let readme = std::fs::read_to_string(repo_root().join("README.md"))?;
    let setup = section(&readme, "Database setup")?;

    let psql = code_blocks(setup, "sh")
        .into_iter()
        .flat_map(|b| b.lines().map(str::to_string).collect::<Vec<_>>())
        .find(|l| l.starts_with("psql "))
        .context("no psql line in Database setup")?;
    let words: Vec<&str> = psql.split_whitespace().collect();
    for (flag, want) in [("-v", "ON_ERROR_STOP=1"), ("-U", pg.superuser())] {
        let got = words
            .iter()
            .position(|w| *w == flag)
            .and_then(|i| words.get(i + 1));
        ensure!(
            got == Some(&want),
            "README psql: {flag} {got:?}, want {want}: {psql}"
        );
    }
    let dbname = words
        .iter()
        .position(|w| *w == "-d")
        .and_then(|i| words.get(i + 1))
        .context("README psql: no -d")?
        .to_string();
    let admin = pg.admin("postgres").await?;
    admin
        .batch_execute(&format!("CREATE DATABASE {dbname}"))
        .await?;
    for round in 1..=2 {
        let out = Command::new(words[0])
            .args(&words[1..])
            .current_dir(repo_root())
            .env("PATH", path_with(pg.bin_dir()))
            .env("PGHOST", pg.host())
            .env("PGPORT", pg.port().to_string())
            .env("PGPASSWORD", pg.superuser_password())
            .output()?;
        ensure!(
            out.status.success(),
            "README psql line, run {round}: {:?}\n{}",
            out.status,
            output_text(&out)
        );
    }
    // The README's `\password outbox_relay` is interactive; this is what it does.
    admin
        .batch_execute(&format!(
            "ALTER ROLE {} PASSWORD '{}'",
            Postgres::RELAY_USER,
            Postgres::RELAY_PASSWORD
        ))
        .await?;

    let hba = code_blocks(setup, "text")
        .into_iter()
        .flat_map(|b| b.lines().map(str::to_string).collect::<Vec<_>>())
        .find(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.len() == 5 && ["host", "hostssl"].contains(&w[0]) && w[2] == Postgres::RELAY_USER
        })
        .context("no pg_hba.conf line for the relay in Database setup")?;
    let fields: Vec<&str> = hba.split_whitespace().collect();
    ensure!(
        fields[1] == dbname,
        "the pg_hba line names database {}, the psql line {dbname}",
        fields[1]
    );
    let documented = format!(
        "{} {} {} 127.0.0.1/32 {}",
        fields[0], fields[1], fields[2], fields[4]
    );
    set_hba(&pg, &admin, &documented, &dbname).await?;

    let suffix = random_suffix();
    let topic = format!("t_{suffix}.booking");
    kafka.create_topic(&topic, 1, &[]).await?;
    let toml = format!(
        "[postgres]\nhost = \"{host}\"\nport = {port}\ndbname = \"{dbname}\"\nuser = \"{user}\"\n\
         password = \"{pw}\"\nslot = \"s_{suffix}\"\n\
         [kafka]\nbootstrap_servers = \"{bootstrap}\"\ncheckpoint_topic = \"t_{suffix}.checkpoints\"\n\
         [routing]\ntopic_template = \"t_{suffix}.{{aggregate_type}}\"\n\
         [retry]\nmax_elapsed_ms = 5000\n[admin]\nlisten = \"\"\n",
        host = pg.host(),
        port = pg.port(),
        user = Postgres::RELAY_USER,
        pw = Postgres::RELAY_PASSWORD,
        bootstrap = kafka.bootstrap(),
    );
    let mut relay = RelayProcess::spawn(&bin(), &toml, &[])?;
    relay
        .wait_for_log(READY, Duration::from_secs(60))
        .await
        .with_context(|| format!("relay with only `{documented}`:\n{}", relay.logs()))?;
    let client = pg.admin(&dbname).await?;
    let id: uuid::Uuid = client
        .query_one(
            "SELECT outbox_write('booking', 'b-1', 'BookingCreated', '{\"n\":1}'::jsonb)",
            &[],
        )
        .await?
        .get(0);
    crate::support::wait_records(std::slice::from_ref(&topic), 1, Duration::from_secs(60)).await?;
    let got = kafka.collect(std::slice::from_ref(&topic)).await?;
    ensure!(
        got.len() == 1 && got[0].header("event_id") == Some(id.to_string().as_str()),
        "published: {got:?}\n{}",
        relay.logs()
    );
    relay.sigterm()?;
    ensure!(
        relay
            .wait_exit(Duration::from_secs(30))
            .await
            .is_some_and(|s| s.success()),
        "{}",
        relay.logs()
    );

    // The line 003_relay_role.sql used to ask for, alone: pg_hba.conf refuses the relay.
    let replication = "host replication outbox_relay 127.0.0.1/32 scram-sha-256";
    set_hba(&pg, &admin, replication, "").await?;
    let config = tempfile::NamedTempFile::new()?;
    std::fs::write(config.path(), &toml)?;
    let (status, out, err) = run_cli(
        &bin(),
        &[
            "validate",
            "--connect",
            "--config",
            &config.path().to_string_lossy(),
        ],
        &[],
    )?;
    ensure!(
        !status.success(),
        "validate --connect passed with `{replication}`: {out}"
    );
    println!("validate --connect with only `{replication}`: {status:?}\n{err}");
    let refused = format!(
        "no pg_hba.conf entry for host \"127.0.0.1\", user \"{}\", database \"{dbname}\"",
        Postgres::RELAY_USER
    );
    let log = std::fs::read_to_string(pg.log_path())?;
    ensure!(
        log.contains(&refused),
        "expected the server to log `{refused}`; validate said {status:?} {err}"
    );
    Ok(())
}

/// Writes pg_hba.conf (local trust, the superuser over TCP, then `relay_line`), reloads, and waits
/// until the file is in force: the relay role is refused on `postgres`, and (when `db` is given)
/// admitted to `db`.
async fn set_hba(
    pg: &Postgres,
    admin: &tokio_postgres::Client,
    relay_line: &str,
    db: &str,
) -> Result<()> {
    let path = pg.data_dir().join("pg_hba.conf");
    let tmp = pg.data_dir().join("pg_hba.conf.new");
    std::fs::write(
        &tmp,
        format!(
            "local all all trust\nhost all {} 127.0.0.1/32 scram-sha-256\n{relay_line}\n",
            pg.superuser()
        ),
    )?;
    // Keep the owner the server runs as (the harness may run it as another user).
    let meta = std::fs::metadata(&path)?;
    use std::os::unix::fs::MetadataExt;
    std::os::unix::fs::chown(&tmp, Some(meta.uid()), Some(meta.gid()))?;
    std::fs::rename(&tmp, &path)?;
    admin.batch_execute("SELECT pg_reload_conf()").await?;
    let relay = |db: &str| pg.config(db, Postgres::RELAY_USER, Postgres::RELAY_PASSWORD);
    wait_until(Duration::from_secs(10), "pg_hba.conf reloaded", || async {
        let outside = connect(relay("postgres")).await.is_err();
        let inside = db.is_empty() || connect(relay(db)).await.is_ok();
        Ok((outside && inside).then_some(()))
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// README: validate --connect under the unit's credentials

/// The README's check before enabling the unit works as written: the config holds no password, root
/// passes the credential file the unit loads. Without the variable it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_validate_connect_line_passes_the_units_password_file() -> Result<()> {
    let _guard = shared_servers().await;
    let pg = Postgres::shared();
    let kafka = Kafka::shared();
    let db = pg.new_database().await?;
    let mut cfg = RelayConfig::new(pg, &db, kafka);
    cfg.unset("postgres.password");
    cfg.set("retry.max_elapsed_ms", 5000i64);

    let readme = std::fs::read_to_string(repo_root().join("README.md"))?;
    let lines = joined(&code_blocks(section(&readme, "Running under systemd")?, "sh").join("\n"));
    let line = lines
        .iter()
        .find(|l| l.contains("validate --connect"))
        .context("no validate --connect line under Running under systemd")?;
    let mut env = Vec::new();
    let mut args = Vec::new();
    for word in line.split_whitespace() {
        match word.split_once('=') {
            Some((k, v)) if args.is_empty() && k.starts_with(ENV_PREFIX) => env.push((k, v)),
            _ => args.push(word),
        }
    }
    let unit = unit_directives(&std::fs::read_to_string(
        repo_root().join("systemd/outbox-relay.service"),
    )?);
    let credential = values(&unit, "LoadCredential")
        .first()
        .and_then(|v| v.split_once(':').map(|(_, path)| path.to_string()))
        .context("LoadCredential=")?;
    ensure!(
        env.iter()
            .any(|(k, v)| *k == "OUTBOX_RELAY__POSTGRES__PASSWORD_FILE" && *v == credential),
        "the README's line must pass {credential} as the unit does: {line}"
    );
    ensure!(args.first() == Some(&"outbox-relay"), "{line}");

    let dir = tempfile::tempdir()?;
    let password = dir.path().join("pg-password");
    std::fs::write(&password, format!("{}\n", Postgres::RELAY_PASSWORD))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600))?;
    let config = dir.path().join("outbox-relay.toml");
    std::fs::write(&config, cfg.to_toml())?;
    let args: Vec<String> = args[1..]
        .iter()
        .map(|a| {
            if a.ends_with(".toml") {
                config.to_string_lossy().into_owned()
            } else {
                a.to_string()
            }
        })
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let password = password.to_string_lossy().into_owned();
    let with: Vec<(&str, &str)> = env.iter().map(|(k, _)| (*k, password.as_str())).collect();
    let (status, out, err) = run_cli(&bin(), &args, &with)?;
    ensure!(
        status.success(),
        "the README's validate --connect line failed: {status:?}\n{out}{err}"
    );
    let (status, out, err) = run_cli(&bin(), &args, &[])?;
    ensure!(
        status.code() == Some(78) && err.contains("authentication"),
        "without the password file: {status:?} {out}{err}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// README: the message contract's time headers

/// `created_at` is the column's ISO text in UTC, whatever the writer's time zone, exactly as the
/// README's example shows (not RFC 3339); `pg_commit_ts` has the form of the README's RFC 3339 example.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_at_and_pg_commit_ts_headers_have_the_documented_forms() -> Result<()> {
    let _guard = shared_servers().await;
    let readme = std::fs::read_to_string(repo_root().join("README.md"))?;
    let example = |row: &str| -> Result<String> {
        let line = readme
            .lines()
            .find(|l| l.starts_with(row))
            .with_context(|| format!("no README row {row}"))?;
        line.split('`')
            .skip(1)
            .step_by(2)
            .filter(|t| t.starts_with("20"))
            .last()
            .map(str::to_string)
            .with_context(|| format!("no example in {line}"))
    };
    let created_example = example("| header `created_at` |")?;
    let commit_example = example("| headers `pg_lsn`, `pg_xid`, `pg_commit_ts` |")?;

    let pg = Postgres::shared();
    let kafka = Kafka::shared();
    let db = pg.new_database().await?;
    let cfg = RelayConfig::new(pg, &db, kafka);
    cfg.create_topics(kafka, &["booking"], 1).await?;
    let mut relay = RelayProcess::spawn(&bin(), &cfg.to_toml(), &[])?;
    relay.wait_for_log(READY, Duration::from_secs(60)).await?;

    // Written from a session in another time zone, as the README example's instant and two more.
    let client = db.client().await?;
    client
        .batch_execute("SET TimeZone = 'Asia/Kolkata'")
        .await?;
    let cases = [
        (
            "example",
            format!("'{created_example}'"),
            created_example.clone(),
        ),
        (
            "whole",
            "'2026-11-26 15:30:00+05:30'".to_string(),
            "2026-11-26 10:00:00+00".to_string(),
        ),
        (
            "half",
            "'2026-11-26 10:00:00.500+00'".to_string(),
            "2026-11-26 10:00:00.5+00".to_string(),
        ),
    ];
    for (key, value, _) in &cases {
        client
            .batch_execute(&format!(
                "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, created_at) \
                 VALUES ('booking', '{key}', 'Created', '{{}}', {value})"
            ))
            .await?;
    }
    crate::support::wait_records(
        &[cfg.topic_for("booking")],
        cases.len(),
        Duration::from_secs(60),
    )
    .await?;
    let got = kafka.collect(&[cfg.topic_for("booking")]).await?;
    ensure!(got.len() == cases.len(), "{got:?}\n{}", relay.logs());
    for (key, _, want) in &cases {
        let r = got
            .iter()
            .find(|r| r.key_str() == Some(key))
            .with_context(|| format!("no record {key}"))?;
        ensure!(
            r.header("created_at") == Some(want.as_str()),
            "{key}: created_at {:?}, want {want:?}",
            r.header("created_at")
        );
        let ts = r.header("pg_commit_ts").context("pg_commit_ts")?;
        let shape = |s: &str| -> String {
            s.chars()
                .map(|c| if c.is_ascii_digit() { '9' } else { c })
                .collect()
        };
        ensure!(
            shape(ts) == shape(&commit_example),
            "pg_commit_ts {ts:?} is not of the README's form {commit_example:?}"
        );
    }
    relay.sigterm()?;
    relay.wait_exit(Duration::from_secs(30)).await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// README: what environment variables can set

/// Variables reach `[routing.topics]` entries for lowercase names without dots, and neither other
/// entries nor any `[kafka.properties]` one; the file sets all of them.
#[test]
fn environment_variables_cannot_set_every_free_form_table_entry_but_the_file_can() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "")?;
    let load = |path: &Path, vars: &[(&str, &str)]| {
        let env: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (format!("{ENV_PREFIX}__{k}"), v.to_string()))
            .collect();
        Config::load_with_env(path, &env).map(|l| l.config)
    };
    let c = load(&empty, &[("ROUTING__TOPICS__BOOKING", "bookings.v1")])
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    ensure!(
        c.routing.topics.get("booking").map(String::as_str) == Some("bookings.v1"),
        "{:?}",
        c.routing.topics
    );
    for (var, key) in [
        ("ROUTING__TOPICS__Booking", "Booking"),
        ("ROUTING__TOPICS__booking.v2", "booking.v2"),
    ] {
        if let Ok(c) = load(&empty, &[(var, "t")]) {
            ensure!(
                !c.routing.topics.contains_key(key),
                "{var} did set routing.topics.{key}: update the README"
            );
        }
    }
    for var in [
        "KAFKA__PROPERTIES__linger.ms",
        "KAFKA__PROPERTIES__LINGER_MS",
    ] {
        if let Ok(c) = load(&empty, &[(var, "5")]) {
            ensure!(
                !c.kafka.properties.contains_key("linger.ms"),
                "{var} did set kafka.properties.\"linger.ms\": update the README"
            );
        }
    }
    let file = dir.path().join("file.toml");
    std::fs::write(
        &file,
        "[kafka.properties]\n\"linger.ms\" = \"5\"\n[routing.topics]\nBooking = \"a\"\n\"booking.v2\" = \"b\"\n",
    )?;
    let c = load(&file, &[]).map_err(|e| anyhow::anyhow!("{e}"))?;
    ensure!(c.kafka.properties.get("linger.ms").map(String::as_str) == Some("5"));
    ensure!(c.routing.topics.get("Booking").map(String::as_str) == Some("a"));
    ensure!(c.routing.topics.get("booking.v2").map(String::as_str) == Some("b"));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// README: what a build needs

/// The README says what `cargo build` needs: the Debian packages the Dockerfile's build stage
/// installs (but cmake, which the build does not call) and the C and C++ compilers librdkafka's
/// configure script requires; every other `cargo build` of the README points there.
#[test]
fn readme_says_what_building_from_source_needs_where_cargo_build_appears() -> Result<()> {
    let root = repo_root();
    let readme = std::fs::read_to_string(root.join("README.md"))?;
    let building = section(&readme, "Building from source")?;
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile"))?;
    let install = dockerfile
        .split("apt-get install")
        .nth(1)
        .and_then(|rest| rest.split("&&").next())
        .context("no apt-get install in the Dockerfile's build stage")?;
    let packages: Vec<&str> = install
        .split_whitespace()
        .filter(|w| !w.starts_with('-') && *w != "\\" && *w != "cmake")
        .collect();
    ensure!(packages.contains(&"libssl-dev"), "{packages:?}");
    for p in packages.iter().copied().chain(["build-essential"]) {
        ensure!(building.contains(p), "README, Building from source: no {p}");
    }
    ensure!(building.contains("C and a C++ compiler") && building.contains("Rust 1.88"));
    let lines: Vec<&str> = readme.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.contains("cargo build") && !building.contains(line) {
            let near = lines[i.saturating_sub(1)..(i + 2).min(lines.len())].join(" ");
            ensure!(
                near.contains("Building from source") || near.contains("see above"),
                "README: `{line}` does not say what a build needs"
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// README: several outboxes on one host

/// Two relays as two template instances would run them: two databases (shards), their own slots
/// and admin ports, one checkpoint topic. Both become ready and each publishes its own outbox exactly
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_on_one_host_share_the_checkpoint_topic_and_each_publishes_exactly_once(
) -> Result<()> {
    let _guard = shared_servers().await;
    let pg = Postgres::shared();
    let kafka = Kafka::shared();
    let (orders, billing) = (pg.new_database().await?, pg.new_database().await?);
    let mut a = RelayConfig::new(pg, &orders, kafka);
    let mut b = RelayConfig::new(pg, &billing, kafka);
    b.set("kafka.checkpoint_topic", a.checkpoint_topic.clone());
    b.set(
        "routing.topic_template",
        format!("{}.{{aggregate_type}}", a.topic_prefix),
    );
    let (port_a, port_b) = (free_port(), free_port());
    a.set("admin.listen", format!("127.0.0.1:{port_a}"));
    b.set("admin.listen", format!("127.0.0.1:{port_b}"));
    a.create_topics(kafka, &["order", "invoice"], 3).await?;
    let mut relays = Vec::new();
    for cfg in [&a, &b] {
        let mut relay = RelayProcess::spawn(&bin(), &cfg.to_toml(), &[])?;
        relay.wait_for_log(READY, Duration::from_secs(60)).await?;
        relays.push(relay);
    }
    for port in [port_a, port_b] {
        wait_until(Duration::from_secs(10), "/ready 200", || async move {
            Ok(http_status(port, "/ready").await.ok().filter(|c| *c == 200))
        })
        .await?;
    }
    let spec = |t: &str| WriteSpec {
        writers: 2,
        total: 1000,
        txn_sizes: vec![1, 10],
        keys_per_writer: 20,
        aggregate_types: vec![t.to_string()],
        payload_bytes: 100,
        batched: true,
        via: outbox_relay_dev::Via::Table,
    };
    let (spec_o, spec_b) = (spec("order"), spec("invoice"));
    let (wo, wb) = tokio::join!(
        write_concurrently(&orders, &spec_o),
        write_concurrently(&billing, &spec_b)
    );
    let shards = [(wo?, a.topic_for("order")), (wb?, a.topic_for("invoice"))];
    for (written, topic) in &shards {
        crate::support::wait_published(
            std::slice::from_ref(topic),
            written,
            Duration::from_secs(120),
        )
        .await?;
    }
    for mut relay in relays {
        crate::support::stop(&mut relay).await?;
    }
    for (written, topic) in &shards {
        let got = kafka.collect(std::slice::from_ref(topic)).await?;
        verify(written, &got).assert_exactly_once();
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn yaml(text: &str, what: &str) -> Result<Yaml> {
    let mut docs =
        YamlLoader::load_from_str(text).with_context(|| format!("{what} does not parse"))?;
    ensure!(docs.len() == 1, "{what}: expected one document");
    Ok(docs.remove(0))
}

/// `(section, key, value)` of every directive of a unit file, in order.
fn unit_directives(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
        } else if let Some((k, v)) = line.split_once('=') {
            out.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

fn values(directives: &[(String, String, String)], key: &str) -> Vec<String> {
    directives
        .iter()
        .filter(|(_, k, _)| k == key)
        .map(|(_, _, v)| v.clone())
        .collect()
}

/// `systemd-analyze security --offline` figure for a unit file.
fn exposure(unit: &Path) -> Result<f64> {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(unit)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .with_context(|| {
            format!(
                "no exposure in {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    Ok(line
        .split(':')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .context("exposure figure")?
        .parse()?)
}

/// The README text under `## {heading}`, up to the next `## ` heading.
fn section<'a>(readme: &'a str, heading: &str) -> Result<&'a str> {
    let start = readme
        .find(&format!("\n## {heading}\n"))
        .with_context(|| format!("README has no \"## {heading}\""))?;
    let rest = &readme[start + heading.len() + 5..];
    Ok(rest.find("\n## ").map_or(rest, |end| &rest[..end]))
}

/// The bodies of the fenced code blocks of `lang` in `text` (indented fences included).
fn code_blocks(text: &str, lang: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in text.lines() {
        let t = line.trim();
        match &mut current {
            None if t == format!("```{lang}") => current = Some(Vec::new()),
            Some(_) if t == "```" => blocks.push(current.take().unwrap_or_default().join("\n")),
            Some(lines) => lines.push(t),
            None => {}
        }
    }
    blocks
}

/// Shell lines with `\` continuations joined and comment lines dropped.
fn joined(block: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in block.lines().map(str::trim) {
        if cur.is_empty() && line.starts_with('#') {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => {
                cur.push_str(head);
                cur.push(' ');
            }
            None => {
                cur.push_str(line);
                out.push(std::mem::take(&mut cur));
            }
        }
    }
    out
}

fn compose() -> Result<Yaml> {
    yaml(
        &std::fs::read_to_string(repo_root().join("docker-compose.yml"))?,
        "docker-compose.yml",
    )
}

fn init_script(doc: &Yaml) -> Result<String> {
    doc["configs"]["postgres-init"]["content"]
        .as_str()
        .map(str::to_string)
        .context("configs.postgres-init.content")
}

fn scalar(v: &Yaml) -> Option<String> {
    match v {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn strings(v: &Yaml) -> Vec<String> {
    match v {
        Yaml::Array(a) => a.iter().filter_map(scalar).collect(),
        v => scalar(v).into_iter().collect(),
    }
}

fn environment(service: &Yaml) -> Result<HashMap<String, String>> {
    let map = service["environment"]
        .as_hash()
        .context("environment: expected a mapping")?;
    map.iter()
        .map(|(k, v)| {
            let k = k.as_str().context("environment name")?;
            let v = scalar(v).with_context(|| format!("environment {k}: not a scalar"))?;
            Ok((k.to_string(), v))
        })
        .collect()
}

/// A private Postgres cluster for a test that rewrites its pg_hba.conf or creates cluster-wide
/// objects; stopped when dropped.
async fn private_postgres() -> Result<Postgres> {
    tokio::task::spawn_blocking(Postgres::start_new)
        .await
        .context("start a private Postgres")?
}

/// `PATH` with `dir` first (the Postgres client of the server's version).
fn path_with(dir: &Path) -> String {
    format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn connect(cfg: tokio_postgres::Config) -> Result<tokio_postgres::Client> {
    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// The status code of `GET path` on the admin port.
async fn http_status(port: u16, path: &str) -> Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status line in {text:?}"))
}
