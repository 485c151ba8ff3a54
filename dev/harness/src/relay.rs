//! The relay as tests see it: a child process (`outbox-relay run --config <file>`) that can be killed,
//! signalled and restarted like in production, asked through its admin endpoints (`/ready`,
//! `/metrics`), and a config builder that gives each test its own slot, topics, checkpoint topic and
//! admin port on the shared servers, so parallel tests never see each other's events or relays.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::kafka::Kafka;
use crate::postgres::{Postgres, TestDb};
use crate::process::{self, ManagedChild};
use crate::util::{free_port, random_suffix};

/// A running relay process. Dropping it kills it (SIGKILL); dropping it while the test panics
/// prints the end of its log first (see [`show_log_tail`]).
#[derive(Debug)]
pub struct RelayProcess {
    child: ManagedChild,
    dir: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    /// `admin.listen` of the config it was started with, if the admin server is on.
    admin: Option<SocketAddr>,
    exit: Option<ExitStatus>,
}

impl RelayProcess {
    /// Writes `config_toml` to a fresh file (mode 0600: it holds passwords) and spawns
    /// `<bin> run --config <file>` with stdout and stderr appended to a log file.
    pub fn spawn(bin: &Path, config_toml: &str, env: &[(&str, &str)]) -> Result<RelayProcess> {
        let dir = process::new_process_dir("relay")?;
        let config_path = dir.join("relay.toml");
        let mut f = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&config_path)?;
        f.write_all(config_toml.as_bytes())?;
        drop(f);
        let log_path = dir.join("relay.log");
        Self::spawn_with(bin, dir, config_path, log_path, env)
    }

    fn spawn_with(
        bin: &Path,
        dir: PathBuf,
        config_path: PathBuf,
        log_path: PathBuf,
        env: &[(&str, &str)],
    ) -> Result<RelayProcess> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let mut cmd = Command::new(bin);
        continuous_coverage(&mut cmd);
        cmd.arg("run")
            .arg("--config")
            .arg(&config_path)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let admin = admin_addr(&std::fs::read_to_string(&config_path)?);
        let child = process::spawn_managed(cmd)
            .with_context(|| format!("spawn relay {}", bin.display()))?;
        Ok(RelayProcess {
            child,
            dir,
            config_path,
            log_path,
            admin,
            exit: None,
        })
    }

    /// Another process with the same binary, config file and log file (e.g. after a kill -9).
    pub fn respawn(&self, bin: &Path, env: &[(&str, &str)]) -> Result<RelayProcess> {
        Self::spawn_with(
            bin,
            self.dir.clone(),
            self.config_path.clone(),
            self.log_path.clone(),
            env,
        )
    }

    pub fn pid(&self) -> i32 {
        self.child.pid()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        if self.exit.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(s)) => {
                self.exit = Some(s);
                false
            }
            Ok(None) => true,
            Err(_) => false,
        }
    }

    /// SIGKILL, and wait until it is gone.
    pub async fn kill9(&mut self) -> Result<ExitStatus> {
        let s = self.child.kill9().await?;
        self.exit = Some(s);
        Ok(s)
    }

    /// SIGTERM (graceful drain); use [`RelayProcess::wait_exit`] to see how it ends.
    pub fn sigterm(&self) -> Result<()> {
        process::send_signal(self.pid(), libc::SIGTERM)
    }

    pub fn sigint(&self) -> Result<()> {
        process::send_signal(self.pid(), libc::SIGINT)
    }

    pub fn sighup(&self) -> Result<()> {
        process::send_signal(self.pid(), libc::SIGHUP)
    }

    /// SIGSTOP: the relay freezes mid-flight (connections stay open, nothing is sent), as a
    /// process stalled by the machine would; a zombie once another instance took over.
    pub fn sigstop(&self) -> Result<()> {
        process::send_signal(self.pid(), libc::SIGSTOP)
    }

    /// SIGCONT after [`RelayProcess::sigstop`].
    pub fn sigcont(&self) -> Result<()> {
        process::send_signal(self.pid(), libc::SIGCONT)
    }

    /// The admin server's address (`admin.listen` of its config), if it has one.
    pub fn admin_addr(&self) -> Result<SocketAddr> {
        self.admin
            .ok_or_else(|| anyhow!("this relay has no admin server (admin.listen is empty)"))
    }

    /// `GET <path>` on the relay's admin server: (status code, body).
    pub async fn get(&self, path: &str) -> Result<(u16, String)> {
        http_get(self.admin_addr()?, path).await
    }

    /// Waits until `/ready` answers 200 (slot held, producer initialised, checkpoint read),
    /// failing if the process exits first or `deadline` passes.
    pub async fn wait_ready(&mut self, deadline: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            let last = match self.get("/ready").await {
                Ok((200, _)) => return Ok(()),
                Ok((code, body)) => format!("{code} {}", body.trim()),
                Err(e) => format!("{e:#}"),
            };
            if !self.is_running() {
                bail!(
                    "relay exited ({:?}) before /ready answered 200; logs:\n{}",
                    self.exit,
                    self.logs()
                );
            }
            if start.elapsed() >= deadline {
                bail!(
                    "relay's /ready did not answer 200 within {deadline:?} (last: {last}); logs:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits up to `deadline` for the process to exit; None if it still runs.
    pub async fn wait_exit(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.exit {
                return Some(s);
            }
            if let Ok(Some(s)) = self.child.try_wait() {
                self.exit = Some(s);
                return Some(s);
            }
            if start.elapsed() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until the log contains `needle` (e.g. a readiness line), failing if the process exits first.
    pub async fn wait_for_log(&mut self, needle: &str, deadline: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if self.logs().contains(needle) {
                return Ok(());
            }
            if !self.is_running() {
                bail!(
                    "relay exited ({:?}) before logging {needle:?}; logs:\n{}",
                    self.exit,
                    self.logs()
                );
            }
            if start.elapsed() >= deadline {
                bail!(
                    "relay did not log {needle:?} within {deadline:?}; logs:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `admin.listen` of a relay config, when it is a socket address (absent or `""`: no admin server).
fn admin_addr(config_toml: &str) -> Option<SocketAddr> {
    let table: toml::Table = config_toml.parse().ok()?;
    table.get("admin")?.get("listen")?.as_str()?.parse().ok()
}

/// A plain HTTP/1.1 GET over a fresh connection (the relay's admin server, on loopback):
/// (status code, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .with_context(|| format!("GET http://{addr}{path}: no answer within 10 s"))?
        .with_context(|| format!("GET http://{addr}{path}"))?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("GET http://{addr}{path}: no status line in {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// Runs a one-shot command (`<bin> validate --config ...`, `--version`...) and returns its exit status,
/// stdout and stderr.
pub fn run_cli(
    bin: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<(ExitStatus, String, String)> {
    let mut cmd = Command::new(bin);
    cmd.args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .with_context(|| format!("run {} {args:?}", bin.display()))?;
    Ok((
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// A relay config for one test: its own slot, topics and checkpoint topic on the shared servers.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub suffix: String,
    pub slot: String,
    pub topic_prefix: String,
    pub checkpoint_topic: String,
    table: toml::Table,
}

impl RelayConfig {
    pub fn new(pg: &Postgres, db: &TestDb, kafka: &Kafka) -> RelayConfig {
        let suffix = random_suffix();
        let slot = format!("s_{suffix}");
        let topic_prefix = format!("t_{suffix}");
        let checkpoint_topic = format!("{topic_prefix}.checkpoints");
        let mut c = RelayConfig {
            suffix,
            slot: slot.clone(),
            topic_prefix: topic_prefix.clone(),
            checkpoint_topic: checkpoint_topic.clone(),
            table: toml::Table::new(),
        };
        c.set("postgres.host", pg.host());
        c.set("postgres.port", i64::from(pg.port()));
        c.set("postgres.dbname", db.name.as_str());
        c.set("postgres.user", Postgres::RELAY_USER);
        c.set("postgres.password", Postgres::RELAY_PASSWORD);
        c.set("postgres.slot", slot);
        c.set("postgres.publication", "outbox_pub");
        c.set("postgres.create_slot", true);
        c.set("outbox.table", "public.outbox");
        c.set("kafka.bootstrap_servers", kafka.bootstrap());
        c.set("kafka.checkpoint_topic", checkpoint_topic);
        c.set(
            "routing.topic_template",
            format!("{topic_prefix}.{{aggregate_type}}"),
        );
        c.set("log.format", "text");
        c.set("log.level", "info");
        c.new_admin_port();
        c
    }

    /// Gives the config an admin server of its own (`admin.listen` on a free loopback port; the
    /// relay's default port would be shared by every relay of the machine) and returns the port.
    /// A second relay on the same slot (a standby) needs a clone with a new port.
    pub fn new_admin_port(&mut self) -> u16 {
        let port = free_port();
        self.set("admin.listen", format!("127.0.0.1:{port}"));
        port
    }

    /// Sets any dotted key (`"kafka.bootstrap_servers"`), creating tables on the way.
    pub fn set(&mut self, path: &str, value: impl Into<toml::Value>) -> &mut Self {
        let parts: Vec<&str> = path.split('.').collect();
        let (last, tables) = parts.split_last().expect("non-empty path");
        let mut t = &mut self.table;
        for p in tables {
            let entry = t
                .entry((*p).to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            t = entry.as_table_mut().expect("just made a table");
        }
        t.insert((*last).to_string(), value.into());
        self
    }

    /// Removes a dotted key (to test defaults or missing-key errors).
    pub fn unset(&mut self, path: &str) -> &mut Self {
        let parts: Vec<&str> = path.split('.').collect();
        let (last, tables) = parts.split_last().expect("non-empty path");
        let mut t = &mut self.table;
        for p in tables {
            match t.get_mut(*p).and_then(|v| v.as_table_mut()) {
                Some(next) => t = next,
                None => return self,
            }
        }
        t.remove(*last);
        self
    }

    /// The value at a dotted key.
    pub fn get(&self, path: &str) -> Option<&toml::Value> {
        let mut parts = path.split('.');
        let mut v = self.table.get(parts.next()?)?;
        for p in parts {
            v = v.as_table()?.get(p)?;
        }
        Some(v)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(&self.table).expect("a toml::Table always serializes")
    }

    /// The topic events of `aggregate_type` are routed to.
    pub fn topic_for(&self, aggregate_type: &str) -> String {
        format!("{}.{aggregate_type}", self.topic_prefix)
    }

    /// Creates the routed topics (brokers have auto-create off).
    pub async fn create_topics(
        &self,
        kafka: &Kafka,
        aggregate_types: &[&str],
        partitions: i32,
    ) -> Result<()> {
        for t in aggregate_types {
            kafka
                .create_topic(&self.topic_for(t), partitions, &[])
                .await?;
        }
        Ok(())
    }

    /// Creates the checkpoint topic as the relay expects it (compacted, one partition), for tests that
    /// do not want the relay to create it.
    pub async fn create_checkpoint_topic(&self, kafka: &Kafka) -> Result<()> {
        kafka
            .create_topic(&self.checkpoint_topic, 1, &[("cleanup.policy", "compact")])
            .await
    }
}

/// Under `dev/coverage` (LLVM_PROFILE_FILE set by cargo-llvm-cov), a relay writes its profile in
/// LLVM's continuous mode (`%c`: counters live in the mmapped profile file), so a relay killed
/// with SIGKILL (the kill tests, and every relay a test leaves running) still counts. This needs
/// binaries built with `-runtime-counter-relocation`, which `dev/coverage` passes.
fn continuous_coverage(cmd: &mut Command) {
    let Some(pattern) = std::env::var_os("LLVM_PROFILE_FILE") else {
        return;
    };
    if std::env::var_os("OUTBOX_RELAY_CONTINUOUS_COVERAGE").is_none() {
        return;
    }
    cmd.env(
        "LLVM_PROFILE_FILE",
        continuous_profile_pattern(&pattern.to_string_lossy()),
    );
}

/// cargo-llvm-cov's pattern (its report merges only files of that name) with the merge-pool
/// specifier `%m`/`%Nm`, which continuous mode does not allow, replaced by `%c`.
fn continuous_profile_pattern(pattern: &str) -> String {
    if pattern.contains("%c") {
        return pattern.to_string();
    }
    let mut out = String::new();
    let mut rest = pattern;
    let mut replaced = false;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let spec = &rest[i + 1..];
        let digits = spec.chars().take_while(char::is_ascii_digit).count();
        if spec[digits..].starts_with('m') {
            out.push_str("%c");
            replaced = true;
            rest = &spec[digits + 1..];
        } else {
            out.push('%');
            rest = spec;
        }
    }
    out.push_str(rest);
    if !replaced {
        out = out.replace(".profraw", "%c.profraw");
    }
    out
}

/// The relay binary cargo built for this test run: `CARGO_BIN_EXE_outbox-relay` is only set for the
/// relay crate's own tests, so callers pass it in; this finds it next to the test binary otherwise.
pub fn find_relay_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("OUTBOX_RELAY_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/it-xxxx -> target/<profile>/outbox-relay
    let candidate = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("outbox-relay"))
        .ok_or_else(|| anyhow!("no parent dir for {}", exe.display()))?;
    if candidate.exists() {
        Ok(candidate)
    } else {
        bail!(
            "relay binary not found at {} (set OUTBOX_RELAY_BIN)",
            candidate.display()
        )
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            show_log_tail(&self.log_path);
        }
    }
}

/// Lines of a relay's log a failing test shows.
const LOG_TAIL_LINES: usize = 80;

/// Prints the last [`LOG_TAIL_LINES`] of a relay's log to stderr, once per log file (a respawned
/// relay shares its predecessor's). libtest shows it with the test's failure, so a CI log says what
/// the relay did before an assertion failed (the log file goes with the harness's directories).
fn show_log_tail(log_path: &Path) {
    static SHOWN: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    {
        let mut shown = SHOWN.lock().unwrap_or_else(|e| e.into_inner());
        if shown.iter().any(|p| p == log_path) {
            return;
        }
        shown.push(log_path.to_path_buf());
    }
    eprintln!(
        "---- the last {LOG_TAIL_LINES} lines of the relay's log {} ----\n{}\n---- end of the relay's log ----",
        log_path.display(),
        crate::postgres::tail(log_path, LOG_TAIL_LINES)
    );
}

#[cfg(test)]
mod tests {
    use super::continuous_profile_pattern;

    #[test]
    fn continuous_profile_pattern_keeps_the_name_and_swaps_the_pool() {
        assert_eq!(
            continuous_profile_pattern("/t/main-%p-%2m.profraw"),
            "/t/main-%p-%c.profraw"
        );
        assert_eq!(
            continuous_profile_pattern("/t/x-%m.profraw"),
            "/t/x-%c.profraw"
        );
        assert_eq!(
            continuous_profile_pattern("/t/x-%p.profraw"),
            "/t/x-%p%c.profraw"
        );
        assert_eq!(
            continuous_profile_pattern("/t/x-%c.profraw"),
            "/t/x-%c.profraw"
        );
    }
}
