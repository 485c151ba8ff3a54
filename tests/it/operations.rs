//! Operating the relay as the README, the units and the compose file say (issue 14): each test fails
//! on the defect it was written for.
//!
//! - ops/alerts.yml: promtool unit tests fire every alert and pin its rendered text.
//! - systemd: the template unit `outbox-relay@.service` (one config per instance, the plain unit's
//!   sandbox); no `ExecStartPre=` whose refusal systemd would restart; `Documentation=` that exists.
//! - docker-compose.yml: Kafka's data in its volume, the Postgres healthcheck over TCP, an init script
//!   that fails the first start on a broken SQL file (run for real against a private Postgres).
//!
//! A systemd manager cannot run here (no systemd as PID 1, and a private one would take over the
//! machine's cgroups), so the unit checks are static plus `systemd-analyze` and the relay's own exit
//! codes. Self-contained: helpers live at the bottom.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};
use outbox_relay_dev::relay::find_relay_bin;
use outbox_relay_dev::{repo_root, Postgres};
use yaml_rust2::{Yaml, YamlLoader};

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
