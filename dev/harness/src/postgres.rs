//! A private, real Postgres cluster for tests (wal_level=logical, started from the machine's binaries),
//! one per test process, plus what tests do with it: fresh databases with `sql/` applied, writers that
//! record exactly what they committed (the ground truth the verdict compares Kafka against), and slot/WAL
//! inspection.
//!
//! Fault injection (`kill9`, `stop_immediate`, `restart`...) keeps the same data dir and port, so clients
//! and the relay reconnect to the same address.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use outbox_relay::Lsn;
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

use crate::pgdist;
use crate::process::{self, ManagedChild};
use crate::util::{self, free_port, random_suffix, repo_root, wait_until};

const READY_DEADLINE: Duration = Duration::from_secs(60);

/// A Postgres cluster owned by this process.
#[derive(Debug)]
pub struct Postgres {
    dir: PathBuf,
    data_dir: PathBuf,
    bin_dir: PathBuf,
    /// Major version of the server binaries (14 to 18).
    major: u32,
    port: u16,
    password: String,
    log_path: PathBuf,
    ca_path: PathBuf,
    run_as: Option<(u32, u32)>,
    child: Mutex<Option<ManagedChild>>,
    /// Serializes start/stop operations (tokio's Mutex belongs to no runtime).
    ops: tokio::sync::Mutex<()>,
}

static SHARED: OnceLock<Postgres> = OnceLock::new();
static SHARED_INIT: Mutex<()> = Mutex::new(());
/// Role creation and ALTER ROLE are cluster-wide: parallel `new_database` calls would race on pg_authid.
static SQL_APPLY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Postgres {
    /// The password `new_database` sets on the `outbox_relay` role.
    pub const RELAY_PASSWORD: &'static str = "outbox-relay-harness-pw";
    /// The relay role created by sql/003_relay_role.sql.
    pub const RELAY_USER: &'static str = "outbox_relay";

    /// The cluster shared by every test of this process, started on first use (blocking; callable from
    /// any thread or runtime). Panics if it cannot start: every test needs it.
    pub fn shared() -> &'static Postgres {
        if let Some(pg) = SHARED.get() {
            return pg;
        }
        let _guard = SHARED_INIT.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pg) = SHARED.get() {
            return pg;
        }
        let t = Instant::now();
        let pg = Postgres::start_new().expect("start the harness Postgres cluster");
        tracing::info!(port = pg.port, elapsed = ?t.elapsed(), "harness Postgres ready");
        eprintln!(
            "[harness] Postgres {} ready on 127.0.0.1:{} in {:.1?} (binaries {}, dir {})",
            pg.major,
            pg.port,
            t.elapsed(),
            pg.bin_dir.display(),
            pg.dir.display()
        );
        SHARED.get_or_init(|| pg)
    }

    /// Starts a new private cluster (blocking). Most callers want [`Postgres::shared`].
    ///
    /// The server binaries are the machine's, or the pinned build `OUTBOX_RELAY_TEST_PG` names (see
    /// [`crate::pgdist`]).
    pub fn start_new() -> Result<Postgres> {
        let bin_dir = pgdist::server_bin_dir()?;
        let major = pgdist::server_major(&bin_dir)?;
        let run_as = process::server_user()?;
        let dir = process::new_process_dir("pg")?;
        let data_dir = dir.join("data");
        let password = format!("pw-{}{}", random_suffix(), random_suffix());
        let pwfile = dir.join("pwfile");
        std::fs::write(&pwfile, format!("{password}\n"))?;
        process::chown_tree(&dir, run_as)?;

        let out = process::server_command(bin_dir.join("initdb"), run_as)
            .arg("-D")
            .arg(&data_dir)
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["-E", "UTF8", "--no-sync", "--locale=C"])
            .current_dir(&dir)
            .output()
            .context("run initdb")?;
        if !out.status.success() {
            bail!(
                "initdb failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let _ = std::fs::remove_file(&pwfile);

        // Settings of the cluster (a standby copied from it inherits them); each exists on 14 to 18.
        let conf = "\n# outbox-relay harness: the cluster\n\
             wal_level = logical\n\
             max_replication_slots = 100\n\
             max_wal_senders = 100\n\
             max_connections = 300\n\
             fsync = off\n\
             synchronous_commit = on\n\
             full_page_writes = off\n\
             password_encryption = 'scram-sha-256'\n\
             shared_buffers = '128MB'\n\
             logging_collector = off\n\
             log_line_prefix = '%m [%p] %q%u@%d '\n\
             log_min_messages = info\n\
             log_connections = off\n";
        append(&data_dir.join("postgresql.conf"), conf)?;
        std::fs::write(
            data_dir.join("pg_hba.conf"),
            "# outbox-relay harness\n\
             local all all trust\n\
             host all all 127.0.0.1/32 scram-sha-256\n\
             host replication all 127.0.0.1/32 scram-sha-256\n",
        )?;
        let pg = Postgres::node(dir, data_dir, bin_dir, major, password, run_as)?;
        util::block_on(pg.start())??;
        Ok(pg)
    }

    /// A server of its own (port, socket dir, TLS files) on a prepared data dir, not started yet: a
    /// fresh cluster, or a standby's copy of one.
    pub(crate) fn node(
        dir: PathBuf,
        data_dir: PathBuf,
        bin_dir: PathBuf,
        major: u32,
        password: String,
        run_as: Option<(u32, u32)>,
    ) -> Result<Postgres> {
        // TLS with the harness certificate (localhost, 127.0.0.1); the `host` rules of pg_hba.conf match
        // TLS and plain connections alike, so clients that do not ask for TLS are served as before.
        let pki = crate::tls::Pki::shared();
        let ssl_cert = dir.join("server.crt");
        let ssl_key = dir.join("server.key");
        std::fs::copy(&pki.server.cert, &ssl_cert).context("copy the server certificate")?;
        std::fs::copy(&pki.server.key, &ssl_key).context("copy the server key")?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&ssl_key, std::fs::Permissions::from_mode(0o600))?;
        }
        let port = free_port();
        // Appended last, so a copied postgresql.conf's values for the same keys are overridden.
        let conf = format!(
            "\n# outbox-relay harness: this server\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{dir}'\n\
             ssl = on\n\
             ssl_cert_file = '{cert}'\n\
             ssl_key_file = '{key}'\n",
            dir = dir.display(),
            cert = ssl_cert.display(),
            key = ssl_key.display()
        );
        append(&data_dir.join("postgresql.conf"), &conf)?;
        process::chown_tree(&dir, run_as)?;
        Ok(Postgres {
            log_path: dir.join("postgres.log"),
            ca_path: pki.ca_path().to_path_buf(),
            dir,
            data_dir,
            bin_dir,
            major,
            port,
            password,
            run_as,
            child: Mutex::new(None),
            ops: tokio::sync::Mutex::const_new(()),
        })
    }

    pub fn host(&self) -> &str {
        "127.0.0.1"
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn superuser(&self) -> &str {
        "postgres"
    }

    pub fn superuser_password(&self) -> &str {
        &self.password
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The CA certificate (PEM) that signed the server's certificate (SANs `localhost`, `127.0.0.1`):
    /// `postgres.sslrootcert` for `sslmode = verify-ca / verify-full`.
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server binaries (`initdb`, `postgres`; a pinned build has no client tools).
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The machine's client tools (`psql`, `pg_recvlogical`), which talk to every server version here.
    pub fn client_bin_dir(&self) -> Result<PathBuf> {
        pgdist::client_bin_dir()
    }

    /// The server's major version (14 to 18): for settings, columns and functions that differ by version.
    pub fn major(&self) -> u32 {
        self.major
    }

    /// The directory of this server's files (data dir, log, TLS files, socket).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn run_as(&self) -> Option<(u32, u32)> {
        self.run_as
    }

    /// The postmaster's pid, if it runs.
    pub fn pid(&self) -> Option<i32> {
        self.child
            .lock()
            .expect("pg child")
            .as_ref()
            .map(|c| c.pid())
    }

    /// A tokio-postgres config for `user`/`password` on `db` over TCP.
    pub fn config(&self, db: &str, user: &str, password: &str) -> tokio_postgres::Config {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(self.host())
            .port(self.port)
            .dbname(db)
            .user(user)
            .password(password)
            .application_name("outbox-relay-harness")
            .connect_timeout(Duration::from_secs(10));
        cfg
    }

    /// Superuser connection to `db` (TCP + SCRAM); its connection task runs on the caller's runtime.
    pub async fn admin(&self, db: &str) -> Result<Client> {
        connect(self.config(db, "postgres", &self.password)).await
    }

    /// Starts the postmaster on the existing data dir and port, retrying while the port or shared memory
    /// of a previous instance is still busy, and waits until it accepts connections.
    pub async fn start(&self) -> Result<()> {
        let _op = self.ops.lock().await;
        if self.is_running() {
            return Ok(());
        }
        let start = Instant::now();
        let mut last_exit = String::new();
        while start.elapsed() < READY_DEADLINE {
            let child = self.spawn_postmaster()?;
            *self.child.lock().expect("pg child") = Some(child);
            // Wait for readiness, or for an early exit (port busy, old shmem still attached...).
            loop {
                if let Some(status) = self.child_try_wait()? {
                    last_exit = format!("postmaster exited with {status}");
                    break;
                }
                if self.admin("postgres").await.is_ok() {
                    return Ok(());
                }
                if start.elapsed() >= READY_DEADLINE {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            *self.child.lock().expect("pg child") = None;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!(
            "Postgres did not become ready on port {} within {READY_DEADLINE:?} ({last_exit}); log tail:\n{}",
            self.port,
            tail(&self.log_path, 30)
        )
    }

    fn spawn_postmaster(&self) -> Result<ManagedChild> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("open {}", self.log_path.display()))?;
        let mut cmd = process::server_command(self.bin_dir.join("postgres"), self.run_as);
        cmd.arg("-D")
            .arg(&self.data_dir)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        process::spawn_managed(cmd)
    }

    fn child_try_wait(&self) -> Result<Option<std::process::ExitStatus>> {
        let mut guard = self.child.lock().expect("pg child");
        match guard.as_mut() {
            Some(c) => c.try_wait(),
            None => Ok(None),
        }
    }

    fn is_running(&self) -> bool {
        matches!(self.child_try_wait(), Ok(None)) && self.pid().is_some()
    }

    fn take_child(&self) -> Option<ManagedChild> {
        self.child.lock().expect("pg child").take()
    }

    /// SIGKILL the postmaster and every backend (its process group), and wait until all are gone.
    pub async fn kill9(&self) -> Result<()> {
        let _op = self.ops.lock().await;
        if let Some(mut c) = self.take_child() {
            c.kill9().await?;
        }
        Ok(())
    }

    /// SIGQUIT (immediate shutdown: no checkpoint, crash recovery at next start), then wait.
    pub async fn stop_immediate(&self) -> Result<()> {
        self.stop_with(libc::SIGQUIT).await
    }

    /// SIGINT (fast shutdown: disconnect clients, checkpoint), then wait.
    pub async fn stop_graceful(&self) -> Result<()> {
        self.stop_with(libc::SIGINT).await
    }

    async fn stop_with(&self, sig: i32) -> Result<()> {
        let _op = self.ops.lock().await;
        if let Some(mut c) = self.take_child() {
            // Only the postmaster: it shuts its children down itself.
            let _ = process::send_signal(c.pid(), sig);
            if let Err(e) = c.wait_group_gone(Duration::from_secs(60)).await {
                let _ = c.kill9().await;
                return Err(e.context("Postgres did not stop in time; killed it"));
            }
        }
        Ok(())
    }

    /// Graceful stop, then start.
    pub async fn restart(&self) -> Result<()> {
        self.stop_graceful().await?;
        self.start().await
    }

    /// A fresh database `t_<suffix>` with every `sql/*.sql` applied (as superuser) and the relay role's
    /// password set to [`Postgres::RELAY_PASSWORD`].
    pub async fn new_database(&self) -> Result<TestDb> {
        let name = format!("t_{}", random_suffix());
        let admin = self.admin("postgres").await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("CREATE DATABASE {name}"))?;
        let db = TestDb {
            name,
            host: self.host().to_string(),
            port: self.port,
            superuser_password: self.password.clone(),
        };
        db.apply_sql().await?;
        Ok(db)
    }
}

/// The `sql/*.sql` files of the repository, in name order.
pub fn sql_files() -> Result<Vec<PathBuf>> {
    let dir = repo_root().join("sql");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    files.sort();
    Ok(files)
}

/// One database of the shared cluster, owned by one test.
#[derive(Debug, Clone)]
pub struct TestDb {
    pub name: String,
    pub host: String,
    pub port: u16,
    superuser_password: String,
}

impl TestDb {
    /// Superuser connection to this database.
    pub async fn client(&self) -> Result<Client> {
        connect(self.config("postgres", &self.superuser_password)).await
    }

    /// The same database on another server of this cluster (a standby, or the promoted standby).
    pub fn on(&self, server: &Postgres) -> TestDb {
        TestDb {
            host: server.host().to_string(),
            port: server.port(),
            ..self.clone()
        }
    }

    /// Connection as the relay role (`outbox_relay`, TCP + SCRAM).
    pub async fn relay_client(&self) -> Result<Client> {
        connect(self.config(Postgres::RELAY_USER, Postgres::RELAY_PASSWORD)).await
    }

    pub fn config(&self, user: &str, password: &str) -> tokio_postgres::Config {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&self.host)
            .port(self.port)
            .dbname(&self.name)
            .user(user)
            .password(password)
            .application_name("outbox-relay-harness")
            .connect_timeout(Duration::from_secs(10));
        cfg
    }

    /// Creates another login role `name` (cluster-wide) with `password` and the relay role's rights on
    /// this database (LOGIN REPLICATION, USAGE on public, SELECT on public.outbox): for tests that need a
    /// password of their own without touching the shared `outbox_relay` role.
    pub async fn create_relay_login(&self, name: &str, password: &str) -> Result<()> {
        let _serial = SQL_APPLY.lock().await;
        let client = self.client().await?;
        let quoted = password.replace('\'', "''");
        client
            .batch_execute(&format!(
                "CREATE ROLE {name} LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '{quoted}'; \
                 GRANT USAGE ON SCHEMA public TO {name}; \
                 GRANT SELECT ON public.outbox TO {name};"
            ))
            .await
            .with_context(|| format!("create role {name} in {}", self.name))?;
        Ok(())
    }

    /// Applies every `sql/*.sql` in name order (idempotent files: applying twice is a test), then sets
    /// the relay role's password.
    pub async fn apply_sql(&self) -> Result<()> {
        let _serial = SQL_APPLY.lock().await;
        let client = self.client().await?;
        for f in sql_files()? {
            let text =
                std::fs::read_to_string(&f).with_context(|| format!("read {}", f.display()))?;
            client
                .batch_execute(&text)
                .await
                .with_context(|| format!("apply {} to {}", f.display(), self.name))?;
        }
        client
            .batch_execute(&format!(
                "ALTER ROLE {} PASSWORD '{}'",
                Postgres::RELAY_USER,
                Postgres::RELAY_PASSWORD
            ))
            .await
            .context("set the relay role password")?;
        Ok(())
    }
}

async fn connect(cfg: tokio_postgres::Config) -> Result<Client> {
    let (client, conn) = cfg.connect(NoTls).await?;
    tokio::spawn(async move {
        // Ends when the client is dropped or the server goes away; errors then are expected.
        let _ = conn.await;
    });
    Ok(client)
}

fn append(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// The last `n` lines of a file (for error messages).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------------------------------
// Writers: the ground truth.

/// An event to write.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub event_type: String,
    /// JSON text.
    pub payload: String,
    /// JSON object text, or None.
    pub headers: Option<String>,
}

impl NewEvent {
    pub fn new(aggregate_type: &str, aggregate_id: &str, event_type: &str, payload: &str) -> Self {
        NewEvent {
            aggregate_type: aggregate_type.into(),
            aggregate_id: aggregate_id.into(),
            event_type: event_type.into(),
            payload: payload.into(),
            headers: None,
        }
    }
}

/// An event that was committed: what Kafka must carry exactly once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub id: Uuid,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub event_type: String,
    /// The payload as Postgres prints the jsonb (its canonical text).
    pub payload: String,
}

/// One transaction, one `outbox_write` call per row; returns the committed events in write order.
pub async fn write_txn(client: &mut Client, rows: &[NewEvent]) -> Result<Vec<Written>> {
    let tx = client.transaction().await?;
    let stmt = tx
        .prepare(
            "SELECT outbox_write($1, $2, $3, $4::text::jsonb, $5::text::jsonb), ($4::text::jsonb)::text",
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let row = tx
            .query_one(
                &stmt,
                &[
                    &r.aggregate_type,
                    &r.aggregate_id,
                    &r.event_type,
                    &r.payload,
                    &r.headers,
                ],
            )
            .await?;
        out.push(Written {
            id: row.get(0),
            aggregate_type: r.aggregate_type.clone(),
            aggregate_id: r.aggregate_id.clone(),
            event_type: r.event_type.clone(),
            payload: row.get(1),
        });
    }
    tx.commit().await?;
    Ok(out)
}

/// One transaction, one `INSERT ... SELECT FROM unnest(...)` for all rows (ids generated here so the
/// result does not depend on RETURNING order); returns the committed events in input order. Commit
/// order of rows within the transaction is the input order.
pub async fn write_batched(client: &mut Client, rows: &[NewEvent]) -> Result<Vec<Written>> {
    let ids: Vec<Uuid> = rows.iter().map(|_| Uuid::new_v4()).collect();
    let types: Vec<&str> = rows.iter().map(|r| r.aggregate_type.as_str()).collect();
    let aggs: Vec<&str> = rows.iter().map(|r| r.aggregate_id.as_str()).collect();
    let evs: Vec<&str> = rows.iter().map(|r| r.event_type.as_str()).collect();
    let payloads: Vec<&str> = rows.iter().map(|r| r.payload.as_str()).collect();
    let headers: Vec<Option<&str>> = rows.iter().map(|r| r.headers.as_deref()).collect();
    let tx = client.transaction().await?;
    let returned = tx
        .query(
            "INSERT INTO public.outbox (id, aggregate_type, aggregate_id, event_type, payload, headers) \
             SELECT u.id, u.at, u.ai, u.et, u.p::jsonb, u.h::jsonb \
             FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) \
                  WITH ORDINALITY AS u(id, at, ai, et, p, h, n) ORDER BY u.n \
             RETURNING id, payload::text",
            &[&ids, &types, &aggs, &evs, &payloads, &headers],
        )
        .await?;
    tx.commit().await?;
    let mut canonical: std::collections::HashMap<Uuid, String> = returned
        .iter()
        .map(|r| (r.get::<_, Uuid>(0), r.get::<_, String>(1)))
        .collect();
    ids.iter()
        .zip(rows)
        .map(|(id, r)| {
            Ok(Written {
                id: *id,
                aggregate_type: r.aggregate_type.clone(),
                aggregate_id: r.aggregate_id.clone(),
                event_type: r.event_type.clone(),
                payload: canonical
                    .remove(id)
                    .ok_or_else(|| anyhow!("row {id} not returned by INSERT"))?,
            })
        })
        .collect()
}

/// Events as logical decoding messages (`outbox_emit`, sql/005), one statement per transaction,
/// in order; returns the committed events in write order (ids from `outbox_emit`).
pub async fn write_emitted(client: &mut Client, rows: &[NewEvent]) -> Result<Vec<Written>> {
    let types: Vec<&str> = rows.iter().map(|r| r.aggregate_type.as_str()).collect();
    let aggs: Vec<&str> = rows.iter().map(|r| r.aggregate_id.as_str()).collect();
    let evs: Vec<&str> = rows.iter().map(|r| r.event_type.as_str()).collect();
    let payloads: Vec<&str> = rows.iter().map(|r| r.payload.as_str()).collect();
    let headers: Vec<Option<&str>> = rows.iter().map(|r| r.headers.as_deref()).collect();
    let tx = client.transaction().await?;
    // The sorted subquery fixes the order in which outbox_emit runs (= the messages' WAL order).
    let returned = tx
        .query(
            "SELECT outbox_emit(u.at, u.ai, u.et, u.p::jsonb, u.h::jsonb), (u.p::jsonb)::text \
             FROM (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) \
                   WITH ORDINALITY AS x(at, ai, et, p, h, n) ORDER BY x.n) AS u",
            &[&types, &aggs, &evs, &payloads, &headers],
        )
        .await?;
    tx.commit().await?;
    if returned.len() != rows.len() {
        bail!(
            "outbox_emit returned {} rows for {}",
            returned.len(),
            rows.len()
        );
    }
    Ok(returned
        .iter()
        .zip(rows)
        .map(|(row, r)| Written {
            id: row.get(0),
            aggregate_type: r.aggregate_type.clone(),
            aggregate_id: r.aggregate_id.clone(),
            event_type: r.event_type.clone(),
            payload: row.get(1),
        })
        .collect())
}

/// How [`write_concurrently`] writes events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Via {
    /// Rows of the outbox table.
    #[default]
    Table,
    /// Logical decoding messages (`outbox_emit`).
    Messages,
}

/// What [`write_concurrently`] writes.
#[derive(Debug, Clone)]
pub struct WriteSpec {
    /// Number of concurrent writer tasks (one connection each).
    pub writers: usize,
    /// Total number of events over all writers.
    pub total: usize,
    /// Transaction sizes, cycled by each writer (e.g. `[1, 10, 100]`).
    pub txn_sizes: Vec<usize>,
    /// Aggregate ids per writer; each writer owns its ids, so per-key write order = commit order.
    pub keys_per_writer: usize,
    /// Aggregate types, assigned per key (a key always has the same type, hence the same topic).
    pub aggregate_types: Vec<String>,
    /// Approximate payload size in bytes.
    pub payload_bytes: usize,
    /// One INSERT ... SELECT per transaction (fast) instead of one outbox_write call per row.
    pub batched: bool,
    /// Rows or messages.
    pub via: Via,
}

impl Default for WriteSpec {
    fn default() -> Self {
        WriteSpec {
            writers: 4,
            total: 1000,
            txn_sizes: vec![1, 10, 100],
            keys_per_writer: 20,
            aggregate_types: vec!["booking".into(), "payment".into()],
            payload_bytes: 300,
            batched: true,
            via: Via::Table,
        }
    }
}

/// Runs `spec.writers` writer tasks concurrently; returns every committed event, writer by writer, each
/// writer's events in its commit order.
pub async fn write_concurrently(db: &TestDb, spec: &WriteSpec) -> Result<Vec<Written>> {
    if spec.writers == 0 || spec.txn_sizes.is_empty() || spec.aggregate_types.is_empty() {
        bail!("WriteSpec needs writers, txn_sizes and aggregate_types");
    }
    let mut tasks = Vec::new();
    for w in 0..spec.writers {
        let count = spec.total / spec.writers + usize::from(w < spec.total % spec.writers);
        let db = db.clone();
        let spec = spec.clone();
        tasks.push(tokio::spawn(async move {
            write_one_writer(&db, &spec, w, count).await
        }));
    }
    let mut all = Vec::with_capacity(spec.total);
    for t in tasks {
        all.extend(t.await.context("writer task panicked")??);
    }
    Ok(all)
}

async fn write_one_writer(
    db: &TestDb,
    spec: &WriteSpec,
    w: usize,
    count: usize,
) -> Result<Vec<Written>> {
    let mut client = db.client().await?;
    let keys = spec.keys_per_writer.max(1);
    let pad = "x".repeat(spec.payload_bytes.saturating_sub(90));
    let mut out = Vec::with_capacity(count);
    let mut seq = 0usize;
    let mut txn_no = 0usize;
    while seq < count {
        let size = spec.txn_sizes[txn_no % spec.txn_sizes.len()]
            .max(1)
            .min(count - seq);
        txn_no += 1;
        let rows: Vec<NewEvent> = (seq..seq + size)
            .map(|n| {
                let k = n % keys;
                let aggregate_type = &spec.aggregate_types[(w * keys + k) % spec.aggregate_types.len()];
                let aggregate_id = format!("w{w}-k{k}");
                let payload = format!(
                    "{{\"writer\": {w}, \"seq\": {n}, \"key\": \"{aggregate_id}\", \"pad\": \"{pad}\"}}"
                );
                NewEvent::new(aggregate_type, &aggregate_id, "Written", &payload)
            })
            .collect();
        let written = if spec.via == Via::Messages {
            write_emitted(&mut client, &rows).await?
        } else if spec.batched {
            write_batched(&mut client, &rows).await?
        } else {
            write_txn(&mut client, &rows).await?
        };
        out.extend(written);
        seq += size;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------------
// WAL and slot inspection.

/// `pg_current_wal_lsn()`.
pub async fn current_wal_lsn(client: &Client) -> Result<Lsn> {
    let row = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?;
    Ok(row.get::<_, &str>(0).parse()?)
}

/// A replication slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    pub slot_name: String,
    pub database: Option<String>,
    pub confirmed_flush_lsn: Option<Lsn>,
    pub restart_lsn: Option<Lsn>,
    pub active: bool,
    pub active_pid: Option<i32>,
    pub wal_status: Option<String>,
}

/// The slot named `slot`, or None if it does not exist.
pub async fn slot_info(client: &Client, slot: &str) -> Result<Option<SlotInfo>> {
    let row = client
        .query_opt(
            "SELECT slot_name::text, database::text, confirmed_flush_lsn::text, restart_lsn::text, \
                    active, active_pid, wal_status \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let lsn = |i: usize| -> Result<Option<Lsn>> {
        Ok(row.get::<_, Option<&str>>(i).map(str::parse).transpose()?)
    };
    Ok(Some(SlotInfo {
        slot_name: row.get(0),
        database: row.get(1),
        confirmed_flush_lsn: lsn(2)?,
        restart_lsn: lsn(3)?,
        active: row.get(4),
        active_pid: row.get(5),
        wal_status: row.get(6),
    }))
}

/// Waits until the slot exists and `pred` holds for it.
pub async fn wait_for_slot(
    client: &Client,
    slot: &str,
    deadline: Duration,
    what: &str,
    pred: impl Fn(&SlotInfo) -> bool,
) -> Result<SlotInfo> {
    wait_until(deadline, what, || async {
        Ok(slot_info(client, slot).await?.filter(|s| pred(s)))
    })
    .await
}
