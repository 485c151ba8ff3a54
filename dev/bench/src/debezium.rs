//! The peer: Debezium's PostgreSQL connector with the Outbox Event Router SMT on a Kafka Connect 4.x
//! worker in distributed mode with exactly-once source support, on the harness's broker and Postgres.
//!
//! The classpath (Kafka Connect + Debezium, from Maven Central through `dev/debezium/pom.xml`) is in
//! `<repo>/.cache/debezium-<version>/lib` (dev/bench.sh fetches it). One worker JVM serves every run;
//! each run creates its own connector (own slot, topics and database) and deletes it afterwards.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use outbox_relay_dev::process::{self, ManagedChild};
use outbox_relay_dev::util::{free_port, random_suffix, repo_root};
use outbox_relay_dev::{Kafka, Postgres, TestDb};
use serde_json::json;

use crate::helpers::log;
use crate::observers::count_records;
use crate::procstat::ProcStat;

pub const DEBEZIUM_VERSION: &str = "3.6.1.Final";

/// A running Kafka Connect worker.
pub struct Connect {
    child: Mutex<Option<ManagedChild>>,
    pid: i32,
    port: u16,
    dir: PathBuf,
}

/// What one Debezium backlog drain measured.
pub struct Drain {
    pub secs: f64,
    pub cpu_secs: f64,
    pub hwm_mb: f64,
}

impl Connect {
    pub async fn start() -> Result<Connect> {
        let lib = repo_root()
            .join(".cache")
            .join(format!("debezium-{DEBEZIUM_VERSION}"))
            .join("lib");
        if !lib.parent().is_some_and(|p| p.join(".complete").exists()) {
            bail!(
                "no Kafka Connect + Debezium classpath at {} (dev/bench.sh fetches it with mvn -f dev/debezium/pom.xml)",
                lib.display()
            );
        }
        let dir = process::new_process_dir("connect")?;
        let port = free_port();
        let suffix = random_suffix();
        let kafka = Kafka::shared();
        let props = format!(
            "bootstrap.servers={bootstrap}\n\
             group.id=bench-connect-{suffix}\n\
             key.converter=org.apache.kafka.connect.storage.StringConverter\n\
             value.converter=org.apache.kafka.connect.storage.StringConverter\n\
             config.storage.topic=bench-connect-{suffix}-configs\n\
             offset.storage.topic=bench-connect-{suffix}-offsets\n\
             status.storage.topic=bench-connect-{suffix}-status\n\
             config.storage.replication.factor=1\n\
             offset.storage.replication.factor=1\n\
             status.storage.replication.factor=1\n\
             offset.storage.partitions=5\n\
             status.storage.partitions=1\n\
             exactly.once.source.support=enabled\n\
             listeners=http://127.0.0.1:{port}\n\
             rest.advertised.host.name=127.0.0.1\n\
             rest.advertised.port={port}\n\
             offset.flush.interval.ms=10000\n",
            bootstrap = kafka.bootstrap()
        );
        std::fs::write(dir.join("worker.properties"), props)?;
        let log_path = dir.join("connect.log");
        std::fs::write(
            dir.join("log4j2.properties"),
            format!(
                "status = warn\n\
                 appender.file.type = File\n\
                 appender.file.name = FILE\n\
                 appender.file.fileName = {log}\n\
                 appender.file.append = true\n\
                 appender.file.layout.type = PatternLayout\n\
                 appender.file.layout.pattern = [%d] %p %m (%c)%n\n\
                 rootLogger.level = INFO\n\
                 rootLogger.appenderRef.file.ref = FILE\n",
                log = log_path.display()
            ),
        )?;
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("connect.stdout"))?;
        let mut cmd = Command::new("java");
        // The heap and GC flags of Kafka's connect-distributed.sh / kafka-run-class.sh.
        cmd.args(["-Xms256M", "-Xmx2G", "-server", "-XX:+UseG1GC"])
            .args([
                "-XX:MaxGCPauseMillis=20",
                "-XX:InitiatingHeapOccupancyPercent=35",
            ])
            .args([
                "-XX:+ExplicitGCInvokesConcurrent",
                "-Djava.awt.headless=true",
            ])
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                dir.join("log4j2.properties").display()
            ))
            .arg("-cp")
            .arg(format!("{}/*", lib.display()))
            .arg("org.apache.kafka.connect.cli.ConnectDistributed")
            .arg(dir.join("worker.properties"))
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = process::spawn_managed(cmd)?;
        let pid = child.pid();
        let c = Connect {
            child: Mutex::new(Some(child)),
            pid,
            port,
            dir,
        };
        let t = Instant::now();
        loop {
            if let Ok((200, _)) = c.http("GET", "/connectors", None).await {
                break;
            }
            if t.elapsed() > Duration::from_secs(180) {
                bail!(
                    "Kafka Connect REST did not answer within 180 s; log tail:\n{}",
                    outbox_relay_dev::postgres::tail(&log_path, 40)
                );
            }
            if c.child_exited() {
                bail!(
                    "Kafka Connect exited; log tail:\n{}{}",
                    outbox_relay_dev::postgres::tail(&log_path, 40),
                    outbox_relay_dev::postgres::tail(&c.dir.join("connect.stdout"), 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        log(format!(
            "Kafka Connect {} worker ready on 127.0.0.1:{port} in {:.1?} (dir {})",
            DEBEZIUM_VERSION,
            t.elapsed(),
            c.dir.display()
        ));
        Ok(c)
    }

    fn child_exited(&self) -> bool {
        matches!(
            self.child
                .lock()
                .map(|mut g| g.as_mut().map(|c| c.try_wait())),
            Ok(Some(Ok(Some(_))))
        )
    }

    pub fn cpu_secs(&self) -> Result<f64> {
        Ok(ProcStat::read(self.pid)?.cpu_secs())
    }

    async fn http(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, String)> {
        let mut cmd = tokio::process::Command::new("curl");
        cmd.args(["-s", "-X", method, "-w", "\n%{http_code}"])
            .args(["-H", "Content-Type: application/json", "--max-time", "60"])
            .arg(format!("http://127.0.0.1:{}{path}", self.port));
        if let Some(b) = body {
            cmd.args(["-d", &b.to_string()]);
        }
        let out = cmd.output().await.context("run curl")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
        let code: u16 = code.trim().parse().unwrap_or(0);
        Ok((code, body.to_string()))
    }

    /// Creates a connector streaming `db` through `slot` (created from the relay's, or by Debezium
    /// if missing) into `<prefix>.<aggregate_type>` topics. Returns its name.
    pub async fn create(&self, db: &TestDb, slot: &str, prefix: &str) -> Result<String> {
        let pg = Postgres::shared();
        let name = format!("bench-{prefix}");
        let config = json!({
            "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
            "tasks.max": "1",
            "plugin.name": "pgoutput",
            "database.hostname": pg.host(),
            "database.port": pg.port().to_string(),
            "database.user": "postgres",
            "database.password": pg.superuser_password(),
            "database.dbname": db.name,
            "topic.prefix": prefix,
            "slot.name": slot,
            "publication.name": "outbox_pub",
            "publication.autocreate.mode": "disabled",
            "table.include.list": "public.outbox",
            "snapshot.mode": "no_data",
            "exactly.once.support": "required",
            "tombstones.on.delete": "false",
            // Same bound on waiting for more events as the relay's batch.max_delay_ms (Debezium's default is 500).
            "poll.interval.ms": "100",
            "transforms": "outbox",
            "transforms.outbox.type": "io.debezium.transforms.outbox.EventRouter",
            "transforms.outbox.table.field.event.id": "id",
            "transforms.outbox.table.field.event.key": "aggregate_id",
            "transforms.outbox.table.field.event.payload": "payload",
            "transforms.outbox.route.by.field": "aggregate_type",
            "transforms.outbox.route.topic.replacement": format!("{prefix}.${{routedByValue}}"),
            "transforms.outbox.table.fields.additional.placement": "event_type:header:event_type",
            "key.converter": "org.apache.kafka.connect.storage.StringConverter",
            "value.converter": "org.apache.kafka.connect.storage.StringConverter",
        });
        let t = Instant::now();
        loop {
            let (code, body) = self
                .http("PUT", &format!("/connectors/{name}/config"), Some(&config))
                .await?;
            if (200..300).contains(&code) {
                break;
            }
            if t.elapsed() > Duration::from_secs(120) {
                bail!("PUT connector {name}: HTTP {code}: {body}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok(name)
    }

    /// The connector's task state and trace, if it failed.
    pub async fn task_failure(&self, name: &str) -> Option<String> {
        let (code, body) = self
            .http("GET", &format!("/connectors/{name}/status"), None)
            .await
            .ok()?;
        if code != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let failed =
            |s: &serde_json::Value| s.get("state").and_then(|x| x.as_str()) == Some("FAILED");
        if failed(&v["connector"]) {
            return Some(
                v["connector"]["trace"]
                    .as_str()
                    .unwrap_or("")
                    .chars()
                    .take(3000)
                    .collect(),
            );
        }
        for t in v["tasks"].as_array()? {
            if failed(t) {
                return Some(
                    t["trace"]
                        .as_str()
                        .unwrap_or("")
                        .chars()
                        .take(3000)
                        .collect(),
                );
            }
        }
        None
    }

    pub async fn delete(&self, name: &str) -> Result<()> {
        let (code, body) = self
            .http("DELETE", &format!("/connectors/{name}"), None)
            .await?;
        if !(200..300).contains(&code) && code != 404 {
            bail!("DELETE connector {name}: HTTP {code}: {body}");
        }
        Ok(())
    }

    /// Drains a backlog already in `slot`: time from creating the connector until a
    /// read_committed consumer counted `rows` records on `topics`.
    pub async fn drain(
        &self,
        db: &TestDb,
        slot: &str,
        prefix: &str,
        topics: Vec<String>,
        rows: u64,
    ) -> Result<Drain> {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let counter = std::thread::spawn({
            let stop = stop.clone();
            let count = count.clone();
            move || count_records(topics, rows, Duration::from_secs(3600), count, stop)
        });
        // Give the counter its assignment before the clock starts.
        tokio::time::sleep(Duration::from_millis(500)).await;
        ProcStat::reset_hwm(self.pid)?;
        let cpu0 = self.cpu_secs()?;
        let t0 = Instant::now();
        let name = self.create(db, slot, prefix).await?;
        let mut last_progress = (0u64, Instant::now());
        let done = loop {
            if counter.is_finished() {
                break counter
                    .join()
                    .map_err(|_| anyhow::anyhow!("counter panicked"))??;
            }
            let n = count.load(Ordering::Relaxed);
            if n != last_progress.0 {
                last_progress = (n, Instant::now());
            } else if last_progress.1.elapsed() > Duration::from_secs(120) {
                stop.store(true, Ordering::Relaxed);
                let why = self.task_failure(&name).await.unwrap_or_default();
                let _ = self.delete(&name).await;
                bail!("Debezium stalled at {n} of {rows} records for 120 s. {why}");
            }
            if last_progress.1.elapsed() > Duration::from_secs(5) {
                if let Some(trace) = self.task_failure(&name).await {
                    stop.store(true, Ordering::Relaxed);
                    let _ = self.delete(&name).await;
                    bail!("Debezium task failed at {n} of {rows} records: {trace}");
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let secs = match done {
            Some(at) => at.duration_since(t0).as_secs_f64(),
            None => bail!("Debezium did not deliver {rows} records"),
        };
        let st = ProcStat::read(self.pid)?;
        self.delete(&name).await?;
        Ok(Drain {
            secs,
            cpu_secs: st.cpu_secs() - cpu0,
            hwm_mb: st.hwm_mb(),
        })
    }

    pub async fn stop(self) {
        let child = self.child.lock().ok().and_then(|mut g| g.take());
        if let Some(mut c) = child {
            let _ = c.kill9().await;
        }
    }
}
