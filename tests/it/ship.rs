//! What ships with the relay holds: docker-compose.yml and the Dockerfile checked statically (no
//! Docker engine on our machines), the demo run end to end, the README's configuration reference
//! (every key the relay accepts documented, nothing else, and a valid config itself), and `sql/`
//! (applies twice, an insert-only publication, `outbox_write`).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use outbox_relay::config::{Config, ENV_PREFIX};
use outbox_relay_dev::{repo_root, shared_servers, write_batched, write_txn, NewEvent, Postgres};
use yaml_rust2::{Yaml, YamlLoader};

use crate::support::scalar_i64;

fn compose() -> Result<Yaml> {
    let path = repo_root().join("docker-compose.yml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let mut docs = YamlLoader::load_from_str(&text).context("docker-compose.yml does not parse")?;
    ensure!(docs.len() == 1, "docker-compose.yml: expected one document");
    Ok(docs.remove(0))
}

fn services(doc: &Yaml) -> Result<Vec<(String, &Yaml)>> {
    let map = doc["services"].as_hash().context("no services mapping")?;
    map.iter()
        .map(|(k, v)| Ok((k.as_str().context("service name")?.to_string(), v)))
        .collect()
}

fn service<'a>(doc: &'a Yaml, name: &str) -> Result<&'a Yaml> {
    let s = &doc["services"][name];
    ensure!(!s.is_badvalue(), "no service {name}");
    Ok(s)
}

/// A scalar as compose passes it to a container (numbers and booleans become strings).
fn scalar(v: &Yaml) -> Option<String> {
    match v {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `environment:` as a map (mapping or `KEY=VALUE` list form).
fn environment(svc: &Yaml) -> Result<HashMap<String, String>> {
    let mut env = HashMap::new();
    match &svc["environment"] {
        Yaml::Hash(h) => {
            for (k, v) in h {
                let k = k.as_str().context("environment name")?;
                let v = scalar(v).with_context(|| format!("environment {k}: not a scalar"))?;
                env.insert(k.to_string(), v);
            }
        }
        Yaml::Array(a) => {
            for item in a {
                let s = item.as_str().context("environment entry")?;
                let (k, v) = s.split_once('=').unwrap_or((s, ""));
                env.insert(k.to_string(), v.to_string());
            }
        }
        Yaml::BadValue | Yaml::Null => {}
        other => bail!("environment: unexpected {other:?}"),
    }
    Ok(env)
}

fn strings(v: &Yaml) -> Vec<String> {
    match v {
        Yaml::Array(a) => a.iter().filter_map(scalar).collect(),
        v => scalar(v).into_iter().collect(),
    }
}

#[test]
fn compose_services_have_an_image_a_healthcheck_and_local_ports() -> Result<()> {
    let doc = compose()?;
    let services = services(&doc)?;
    let names: BTreeSet<&str> = services.iter().map(|(n, _)| n.as_str()).collect();
    for wanted in ["postgres", "kafka", "relay", "monolith", "consumer"] {
        ensure!(names.contains(wanted), "no service {wanted}: {names:?}");
    }
    for (name, svc) in &services {
        ensure!(
            svc["image"].as_str().is_some() || !svc["build"].is_badvalue(),
            "{name}: neither image nor build"
        );
        let test = strings(&svc["healthcheck"]["test"]);
        ensure!(
            test.len() >= 2 && ["CMD", "CMD-SHELL"].contains(&test[0].as_str()),
            "{name}: no healthcheck test ({test:?})"
        );
        for port in strings(&svc["ports"]) {
            ensure!(
                port.starts_with("127.0.0.1:"),
                "{name}: port {port} is not bound to 127.0.0.1"
            );
        }
        if let Some(deps) = svc["depends_on"].as_hash() {
            for (dep, cond) in deps {
                let dep = dep.as_str().context("depends_on name")?;
                ensure!(names.contains(dep), "{name} depends on unknown {dep}");
                let condition = cond["condition"].as_str().unwrap_or("");
                ensure!(
                    [
                        "service_healthy",
                        "service_started",
                        "service_completed_successfully"
                    ]
                    .contains(&condition),
                    "{name} -> {dep}: condition {condition:?}"
                );
                if condition == "service_healthy" {
                    ensure!(
                        !service(&doc, dep)?["healthcheck"].is_badvalue(),
                        "{name} waits for {dep} to be healthy, but {dep} has no healthcheck"
                    );
                }
            }
        } else {
            ensure!(
                svc["depends_on"].is_badvalue(),
                "{name}: depends_on must be the long form with conditions"
            );
        }
        // Demo programs only under the demo profile; the servers and the relay always.
        let profiles = strings(&svc["profiles"]);
        let demo = ["monolith", "consumer"].contains(&name.as_str());
        ensure!(
            demo == (profiles == ["demo"]),
            "{name}: profiles {profiles:?}"
        );
    }
    let relay = service(&doc, "relay")?;
    for dep in ["postgres", "kafka"] {
        ensure!(
            relay["depends_on"][dep]["condition"].as_str() == Some("service_healthy"),
            "relay must wait for {dep} to be healthy"
        );
    }
    Ok(())
}

#[test]
fn compose_servers_are_set_up_for_the_relay() -> Result<()> {
    let doc = compose()?;
    let pg = service(&doc, "postgres")?;
    ensure!(
        pg["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("postgres:15")),
        "postgres image"
    );
    let command = strings(&pg["command"]).join(" ");
    ensure!(
        command.contains("wal_level=logical"),
        "postgres command: {command}"
    );
    // sql/ is mounted, and the init script applies it and sets the relay role's password.
    let volumes = strings(&pg["volumes"]);
    let sql_mount = volumes
        .iter()
        .find(|v| v.starts_with("./sql:"))
        .context("sql/ is not mounted")?;
    let sql_target = sql_mount.split(':').nth(1).context("mount target")?;
    let init = doc["configs"]["postgres-init"]["content"]
        .as_str()
        .context("configs.postgres-init.content")?;
    ensure!(
        init.contains(&format!("{sql_target}/*.sql")),
        "init script must apply {sql_target}/*.sql"
    );
    ensure!(init.contains("ALTER ROLE outbox_relay PASSWORD"));
    let pg_env = environment(pg)?;
    let relay_env = environment(service(&doc, "relay")?)?;
    let var = |k: &str| relay_env.get(&format!("{ENV_PREFIX}__{k}")).cloned();
    ensure!(
        pg_env.get("OUTBOX_RELAY_DB_PASSWORD") == var("POSTGRES__PASSWORD").as_ref(),
        "the relay's password differs from the one the init script sets"
    );
    ensure!(pg_env.get("POSTGRES_DB") == var("POSTGRES__DBNAME").as_ref());
    ensure!(var("POSTGRES__HOST").as_deref() == Some("postgres"));
    let init_target = strings(&pg["configs"][0]["target"]);
    ensure!(
        init_target
            .first()
            .is_some_and(|t| t.starts_with("/docker-entrypoint-initdb.d/")),
        "init script target {init_target:?}"
    );
    for f in std::fs::read_dir(repo_root().join("sql"))? {
        let f = f?.path();
        ensure!(
            f.extension().is_some_and(|e| e == "sql"),
            "{}: only *.sql files are applied",
            f.display()
        );
    }

    let kafka = service(&doc, "kafka")?;
    ensure!(
        kafka["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("apache/kafka:4")),
        "kafka image"
    );
    let k = environment(kafka)?;
    for (key, want) in [
        ("KAFKA_PROCESS_ROLES", "broker,controller"),
        ("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1"),
        ("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1"),
        ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1"),
    ] {
        ensure!(
            k.get(key).map(String::as_str) == Some(want),
            "kafka {key}: {:?}",
            k.get(key)
        );
    }
    let bootstrap = var("KAFKA__BOOTSTRAP_SERVERS").context("relay bootstrap servers")?;
    ensure!(
        k["KAFKA_ADVERTISED_LISTENERS"].contains(&format!("://{bootstrap}")),
        "the relay's bootstrap {bootstrap} is not an advertised listener"
    );
    Ok(())
}

/// Every `OUTBOX_RELAY__A__B` of the relay service is a real config key: the config loader refuses unknown
/// keys, so loading an empty file with exactly these variables proves it.
#[test]
fn compose_relay_environment_is_valid_config() -> Result<()> {
    let doc = compose()?;
    let env = environment(service(&doc, "relay")?)?;
    let relay_env: HashMap<String, String> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
        .collect();
    ensure!(relay_env.len() >= 5, "relay: too few settings");
    for (k, v) in &relay_env {
        ensure!(
            k.split("__").count() >= 3 && !k.contains("___"),
            "{k}: not OUTBOX_RELAY__SECTION__KEY"
        );
        ensure!(!v.contains("${"), "{k}: interpolation is not checked here");
    }
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("outbox-relay.toml");
    std::fs::write(&path, "# empty: every key from the environment\n")?;
    let loaded = Config::load_with_env(&path, &relay_env)
        .map_err(|e| anyhow::anyhow!("relay environment is not a valid config: {e}"))?;
    let c = &loaded.config;
    let get = |k: &str| relay_env.get(&format!("{ENV_PREFIX}__{k}")).cloned();
    ensure!(Some(c.postgres.host.clone()) == get("POSTGRES__HOST"));
    ensure!(Some(c.postgres.dbname.clone()) == get("POSTGRES__DBNAME"));
    ensure!(Some(c.kafka.bootstrap_servers.clone()) == get("KAFKA__BOOTSTRAP_SERVERS"));
    ensure!(Some(c.routing.topic_template.clone()) == get("ROUTING__TOPIC_TEMPLATE"));
    ensure!(Some(c.admin.listen.clone()) == get("ADMIN__LISTEN"));
    ensure!(
        c.admin.listen.starts_with("0.0.0.0:"),
        "in a container the admin port must listen on all interfaces"
    );
    // One variable at a time, each must load (and a misspelt one must not: the check has teeth).
    for (k, v) in &relay_env {
        let one = HashMap::from([(k.clone(), v.clone())]);
        ensure!(
            Config::load_with_env(&path, &one).is_ok(),
            "{k} alone does not load"
        );
    }
    let typo = HashMap::from([(
        format!("{ENV_PREFIX}__POSTGRES__HOTS"),
        "postgres".to_string(),
    )]);
    ensure!(
        Config::load_with_env(&path, &typo).is_err(),
        "an unknown key must be refused"
    );
    Ok(())
}

/// The Dockerfile's stages, as (name, base image, instructions).
fn dockerfile_stages() -> Result<Vec<(String, String, Vec<String>)>> {
    let text = std::fs::read_to_string(repo_root().join("Dockerfile"))?;
    // Join continuation lines, drop comments.
    let mut lines = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if cur.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            cur.push_str(head);
            cur.push(' ');
        } else {
            cur.push_str(t);
            lines.push(std::mem::take(&mut cur));
        }
    }
    let mut stages: Vec<(String, String, Vec<String>)> = Vec::new();
    for l in lines {
        let mut words = l.split_whitespace();
        let instr = words.next().unwrap_or("").to_ascii_uppercase();
        if instr == "FROM" {
            let rest: Vec<&str> = words.filter(|w| !w.starts_with("--")).collect();
            let image = rest.first().context("FROM without image")?.to_string();
            let name = match rest.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => name.to_string(),
                _ => String::new(),
            };
            stages.push((name, image, Vec::new()));
        } else {
            let stage = stages.last_mut().context("instruction before FROM")?;
            stage.2.push(l);
        }
    }
    Ok(stages)
}

#[test]
fn dockerfile_builds_with_rust_and_runs_slim_as_non_root() -> Result<()> {
    let stages = dockerfile_stages()?;
    let (_, build_image, build) = stages.first().context("no stage")?;
    ensure!(
        build_image.starts_with("rust:1-bookworm"),
        "build stage: {build_image}"
    );
    let build = build.join("\n");
    for pkg in ["cmake", "libssl-dev", "pkg-config", "zlib1g-dev"] {
        ensure!(build.contains(pkg), "build stage lacks {pkg}");
    }
    ensure!(build.contains("--locked"), "build with --locked");
    // The last stage is what `docker build .` gives: the relay.
    let (name, image, instrs) = stages.last().context("no stage")?;
    ensure!(
        name == "relay",
        "last stage is {name:?}, expected the relay"
    );
    for (name, image, instrs) in stages
        .iter()
        .filter(|(_, image, _)| image.starts_with("debian:"))
    {
        ensure!(
            image == "debian:bookworm-slim",
            "{name}: runtime base {image}"
        );
        let user = instrs
            .iter()
            .rev()
            .find_map(|i| i.strip_prefix("USER "))
            .with_context(|| format!("stage {name} has no USER: it would run as root"))?;
        let user = user.trim().split(':').next().unwrap_or("");
        ensure!(
            !["root", "0", ""].contains(&user),
            "stage {name} runs as {user}"
        );
        let all = instrs.join("\n");
        ensure!(
            all.contains("ca-certificates") && all.contains("libssl3"),
            "{name}: runtime needs ca-certificates and libssl3"
        );
        ensure!(
            !all.contains("libssl-dev") && !all.contains("cargo "),
            "{name}: no build tools in the runtime"
        );
    }
    ensure!(image == "debian:bookworm-slim");
    let all = instrs.join("\n");
    ensure!(all.contains("ENTRYPOINT [\"/usr/local/bin/outbox-relay\"]"));
    let ignore = std::fs::read_to_string(repo_root().join(".dockerignore"))?;
    ensure!(
        ignore
            .lines()
            .any(|l| l.trim() == "target/" || l.trim() == "target"),
        ".dockerignore must exclude target/"
    );
    Ok(())
}

/// `target/<profile>/` of this test binary (`target/<profile>/deps/it-<hash>`).
fn target_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .context("target dir")
}

/// Builds the demo, the relay and the examples as `dev/demo` does, into this test's target dir and
/// profile: `cargo test` builds bins and examples of other packages only as test harnesses, if at all.
/// (Cargo releases its build lock while tests run, so a nested build is fine; it is a no-op when fresh.)
fn build_demo_binaries(dir: &Path) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--quiet",
        "-p",
        "outbox-relay",
        "-p",
        "outbox-relay-dev",
    ])
    .args(["--bins", "--examples"])
    .current_dir(repo_root());
    match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some(profile) => {
            cmd.args(["--profile", profile]);
        }
    }
    if let Some(target) = dir.parent() {
        cmd.arg("--target-dir").arg(target);
    }
    let status = cmd.status().context("run cargo build")?;
    ensure!(status.success(), "{cmd:?} failed: {status}");
    Ok(())
}

/// The demo (`dev/demo --events 20`), end to end: its own Postgres and Kafka, the relay, the monolith and
/// the consumer; 20 distinct events printed once each, numbered 1..20, then a clean exit 0.
#[test]
fn demo_prints_20_distinct_events_and_exits_0() -> Result<()> {
    let dir = target_dir()?;
    build_demo_binaries(&dir)?;
    let demo = dir.join("demo");
    for bin in [
        demo.clone(),
        dir.join("outbox-relay"),
        dir.join("examples/monolith"),
        dir.join("examples/consumer"),
    ] {
        ensure!(
            bin.exists(),
            "{} is missing after cargo build",
            bin.display()
        );
    }
    let start = Instant::now();
    let mut child = Command::new(&demo)
        .args(["--events", "20", "--rate", "10"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn the demo")?;
    // Read both pipes on threads (the children share them), with a deadline on the whole run.
    let mut out = child.stdout.take().context("stdout")?;
    let mut err = child.stderr.take().context("stderr")?;
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    let deadline = Duration::from_secs(300);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if start.elapsed() > deadline {
            // SIGTERM: the demo stops its children and servers.
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            std::thread::sleep(Duration::from_secs(20));
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    let context = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    let status =
        status.with_context(|| format!("the demo did not finish in {deadline:?}\n{context}"))?;
    ensure!(status.success(), "demo exited with {status}\n{context}");

    // `[notification] #12 BookingCreated booking-7 -> email to ... (event <uuid>)`
    let mut numbers = Vec::new();
    let mut ids = BTreeSet::new();
    for line in stdout.lines() {
        let Some(rest) = line.strip_prefix("[notification] #") else {
            continue;
        };
        let n: u64 = rest
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("bad line {line:?}"))?;
        let id = line
            .rsplit_once("(event ")
            .and_then(|(_, id)| id.strip_suffix(')'))
            .with_context(|| format!("no event id in {line:?}"))?;
        ensure!(id.len() == 36, "event id {id:?}");
        ensure!(
            ids.insert(id.to_string()),
            "event {id} printed twice\n{context}"
        );
        numbers.push(n);
    }
    ensure!(
        numbers == (1..=20).collect::<Vec<_>>(),
        "expected events #1..#20, got {numbers:?}\n{context}"
    );
    // Every event printed was committed by the monolith (and none invented).
    for id in &ids {
        ensure!(
            stdout
                .lines()
                .any(|l| l.starts_with("[monolith] committed") && l.contains(id.as_str())),
            "event {id} was not written by the monolith\n{context}"
        );
    }
    ensure!(
        stdout.contains("[demo] relay stopped: exit status: 0"),
        "{context}"
    );
    ensure!(stdout.contains("[demo] done"), "{context}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// the README's configuration reference

/// The ```toml block under the README's `## Configuration`.
fn readme_config_block() -> Result<String> {
    let readme = std::fs::read_to_string(repo_root().join("README.md"))?;
    readme
        .split("## Configuration")
        .nth(1)
        .and_then(|s| s.split("```toml").nth(1))
        .and_then(|s| s.split("```").next())
        .map(str::to_string)
        .context("no ```toml block under ## Configuration")
}

/// `section.key` for every field of every config section struct.
fn keys_in_code() -> Result<BTreeSet<String>> {
    let src = std::fs::read_to_string(repo_root().join("src/config/mod.rs"))?;
    let mut keys = BTreeSet::new();
    let mut section: Option<String> = None;
    let mut in_struct = false;
    for line in src.lines() {
        let t = line.trim_start();
        if let Some(rest) = line.strip_prefix("/// `[") {
            section = rest.split(']').next().map(str::to_string);
            continue;
        }
        if line.starts_with("pub struct ") && section.is_some() {
            in_struct = true;
            continue;
        }
        if in_struct && line.starts_with('}') {
            in_struct = false;
            section = None;
            continue;
        }
        if in_struct && line.starts_with("    pub ") {
            let name = t
                .trim_start_matches("pub ")
                .split(':')
                .next()
                .context("field")?
                .trim();
            let ty = t.split(':').nth(1).unwrap_or("").trim();
            // Nested tables are sections of their own.
            if ty.ends_with("Config,")
                || ty.starts_with("BTreeMap")
                || ty.starts_with("KafkaProperties")
            {
                continue;
            }
            keys.insert(format!("{}.{name}", section.as_deref().context("section")?));
        }
    }
    Ok(keys)
}

/// `section.key` for every `key =` (or `# key =`) line of the README's configuration block.
fn keys_in_readme() -> Result<BTreeSet<String>> {
    let block = readme_config_block()?;
    let mut keys = BTreeSet::new();
    let mut section = String::new();
    for line in block.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix('[') {
            section = rest.split(']').next().unwrap_or("").to_string();
            continue;
        }
        let t = t.trim_start_matches('#').trim();
        if let Some((key, _)) = t.split_once(" = ") {
            if key.chars().all(|c| c.is_ascii_lowercase() || c == '_') && !key.is_empty() {
                keys.insert(format!("{section}.{key}"));
            }
        }
    }
    Ok(keys)
}

#[test]
fn every_config_key_is_documented_in_the_readme() -> Result<()> {
    let code = keys_in_code()?;
    let readme = keys_in_readme()?;
    ensure!(
        code.len() > 40,
        "found only {} keys in the code: {code:?}",
        code.len()
    );
    let undocumented: Vec<_> = code.difference(&readme).collect();
    ensure!(
        undocumented.is_empty(),
        "config keys missing from the README's reference: {undocumented:?}"
    );
    // Map entries under [kafka.properties] / [routing.topics] are examples, not keys.
    let unknown: Vec<_> = readme
        .difference(&code)
        .filter(|k| !k.starts_with("routing.topics.") && !k.starts_with("kafka.properties."))
        .collect();
    ensure!(
        unknown.is_empty(),
        "README documents keys the relay does not have: {unknown:?}"
    );
    Ok(())
}

#[test]
fn the_readme_reference_is_a_valid_config() -> Result<()> {
    let block = readme_config_block()?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("readme.toml");
    std::fs::write(&path, &block)?;
    outbox_relay::config::Config::load_with_env(&path, &Default::default())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// sql/

#[tokio::test]
async fn sql_applies_twice_and_sets_up_an_insert_only_publication_and_outbox_write() -> Result<()> {
    let _g = shared_servers().await;
    let pg = Postgres::shared();
    let admin = pg.admin("postgres").await?;
    let wal_level: String = admin.query_one("SHOW wal_level", &[]).await?.get(0);
    assert_eq!(wal_level, "logical");

    let db = pg.new_database().await?;
    db.apply_sql().await.context("second application of sql/")?;
    let c = db.client().await?;
    assert_eq!(
        scalar_i64(
            &c,
            "SELECT count(*) FROM pg_tables WHERE schemaname='public' AND tablename='outbox'"
        )
        .await?,
        1
    );
    let pubs = c
        .query(
            "SELECT pubinsert, pubupdate, pubdelete, pubtruncate FROM pg_publication WHERE pubname='outbox_pub'",
            &[],
        )
        .await?;
    assert_eq!(pubs.len(), 1);
    let flags: (bool, bool, bool, bool) = (
        pubs[0].get(0),
        pubs[0].get(1),
        pubs[0].get(2),
        pubs[0].get(3),
    );
    assert_eq!(
        flags,
        (true, false, false, false),
        "publication must be insert-only"
    );
    assert_eq!(
        scalar_i64(
            &c,
            "SELECT count(*) FROM pg_publication_tables WHERE pubname='outbox_pub'"
        )
        .await?,
        1
    );
    assert_eq!(
        scalar_i64(
            &c,
            "SELECT count(*) FROM pg_proc WHERE proname='outbox_write'"
        )
        .await?,
        1
    );
    // outbox_write returns the id; the payload comes back as Postgres's canonical jsonb text.
    let mut c = c;
    let one = write_txn(
        &mut c,
        &[NewEvent::new(
            "booking",
            "b-1",
            "Created",
            r#"{"b":2,  "a":1}"#,
        )],
    )
    .await?;
    assert_eq!(one[0].payload, r#"{"a": 1, "b": 2}"#);
    let batch: Vec<NewEvent> = (0..50)
        .map(|i| {
            NewEvent::new(
                "booking",
                &format!("b-{i}"),
                "Updated",
                &format!(r#"{{"i":{i}}}"#),
            )
        })
        .collect();
    let many = write_batched(&mut c, &batch).await?;
    assert_eq!(many.len(), 50);
    assert_eq!(many[7].payload, r#"{"i": 7}"#);
    assert_eq!(scalar_i64(&c, "SELECT count(*) FROM outbox").await?, 51);
    Ok(())
}
