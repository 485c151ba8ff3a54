//! The SQL connection beside the replication stream: checks that fail early with a message that
//! names the cause and the fix (wal_level, publication, table columns, slot), slot creation, and
//! the slot's `confirmed_flush_lsn` for the start-up invariant.

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

use super::errors::map_sql_error;
use super::slot::{self, Failover, SlotInfo, StandbySlot};
use super::{tls, SourceSettings};
use crate::error::{Error, Kind, Result};
use crate::lsn::Lsn;

/// How long the connection holding the relay's lock may stay idle before Postgres ends it
/// ([`Control::hold_slot`]); the default `wal_sender_timeout` does the same for a walsender.
pub const IDLE_SESSION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// A plain SQL session with the primary.
pub struct Control {
    client: Client,
    /// The settings, `host` being the one host that accepted (the primary).
    settings: SourceSettings,
    /// `server_version_num`, e.g. 170010.
    version: u32,
}

/// Connections of `s` are made without TLS (`prefer` too: the relay does not try TLS first).
fn plain(s: &SourceSettings) -> bool {
    matches!(s.sslmode.as_str(), "disable" | "prefer")
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").finish_non_exhaustive()
    }
}

impl Control {
    /// Connects to the primary: the first of `postgres.host`'s hosts (libpq's comma-separated
    /// list) that accepts the connection and is not in recovery. A name whose address moves is
    /// resolved again at every connection.
    pub async fn connect(s: &SourceSettings) -> Result<Self> {
        let hosts = s.hosts();
        let mut last_err = None;
        let mut standbys = Vec::new();
        for (host, port) in hosts {
            let mut one = s.clone();
            one.host = host;
            one.port = port;
            match Self::connect_one(&one).await {
                Ok(c) => match c.in_recovery().await {
                    Ok(false) => return Ok(c),
                    Ok(true) => standbys.push(one.address()),
                    Err(e) => last_err = Some(e),
                },
                // A person must act: the same answer from the next host is likely.
                Err(e) if e.kind() == Kind::Config => return Err(e),
                Err(e) => last_err = Some(e),
            }
        }
        if !standbys.is_empty() && last_err.is_none() {
            return Err(Error::transient(format!(
                "postgres {}: no host accepts writes ({} in recovery): logical slots live on the primary (postgres.host); waiting for a primary",
                s.address(),
                standbys.join(", ")
            )));
        }
        Err(last_err
            .unwrap_or_else(|| Error::config("postgres.host: no host to connect to".to_string())))
    }

    /// Connects to exactly `s.host` (no host list), e.g. a second connection to the primary a
    /// first one found.
    pub async fn connect_to(s: &SourceSettings) -> Result<Self> {
        Self::connect_one(s).await
    }

    /// The client, for the queries of sibling modules.
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// An error of this connection, sorted by what the caller must do.
    pub(crate) fn sql_error(&self, what: &str, e: tokio_postgres::Error) -> Error {
        map_sql_error(&self.settings, what, e)
    }

    async fn connect_one(s: &SourceSettings) -> Result<Self> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&s.host)
            .port(s.port)
            .dbname(&s.dbname)
            .user(&s.user)
            .password(s.password.expose().as_bytes())
            .application_name("outbox-relay")
            .connect_timeout(s.connect_timeout);
        let ssl = match s.sslmode.as_str() {
            "disable" => tokio_postgres::config::SslMode::Disable,
            "prefer" => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        };
        cfg.ssl_mode(ssl);
        let client = if plain(s) {
            let (client, conn) = cfg
                .connect(NoTls)
                .await
                .map_err(|e| map_sql_error(s, "connecting", e))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "postgres control connection closed");
                }
            });
            client
        } else {
            let tls = tls::connector(s)?;
            let (client, conn) = cfg
                .connect(tls)
                .await
                .map_err(|e| map_sql_error(s, "connecting over TLS", e))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "postgres control connection closed");
                }
            });
            client
        };
        let version: String = client
            .query_one("SHOW server_version_num", &[])
            .await
            .map_err(|e| map_sql_error(s, "SHOW server_version_num", e))?
            .get(0);
        Ok(Self {
            client,
            settings: s.clone(),
            version: version.trim().parse().unwrap_or(0),
        })
    }

    /// Cancels the query running on the connection `token` belongs to (made for `s`), the way that
    /// connection was made (TLS or not); at most 2 s, errors ignored: a connection that is gone
    /// runs nothing.
    pub(crate) async fn cancel(s: &SourceSettings, token: tokio_postgres::CancelToken) {
        let cancelling = async {
            if plain(s) {
                token.cancel_query(NoTls).await.ok();
            } else if let Ok(tls) = tls::connector(s) {
                token.cancel_query(tls).await.ok();
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), cancelling).await;
    }

    /// The settings of this connection, `host` being the primary it reached.
    pub fn settings(&self) -> &SourceSettings {
        &self.settings
    }

    /// The server's `server_version_num` (e.g. 170010).
    pub fn version(&self) -> u32 {
        self.version
    }

    async fn in_recovery(&self) -> Result<bool> {
        Ok(self
            .client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .map_err(|e| self.err("SELECT pg_is_in_recovery()", e))?
            .get(0))
    }

    /// Sorts an error of this connection (SQLSTATE -> what the caller must do).
    pub(crate) fn err(&self, what: &str, e: tokio_postgres::Error) -> Error {
        map_sql_error(&self.settings, what, e)
    }

    /// Every check that does not need the slot: wal_level, publication, table and columns.
    pub async fn check_server(&self) -> Result<()> {
        let s = &self.settings;
        let at = s.address();
        let row = self
            .client
            .query_one("SHOW wal_level", &[])
            .await
            .map_err(|e| self.err("SHOW wal_level", e))?;
        let wal_level: String = row.get(0);
        if wal_level != "logical" {
            return Err(Error::config(format!(
                "postgres {at}: wal_level is {wal_level:?}, logical replication needs \"logical\" (set wal_level = logical in postgresql.conf and restart Postgres)"
            )));
        }
        if s.message_events && self.version < 140_000 {
            return Err(Error::config(format!(
                "postgres {at}: outbox.events_from includes messages, which need Postgres 14 or later (pgoutput's messages option); this server is {}",
                self.version
            )));
        }
        if s.table_events {
            let table = self
                .client
                .query_opt(
                    "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
                    &[&s.table_schema, &s.table_name],
                )
                .await
                .map_err(|e| self.err("reading pg_class", e))?;
            if table.is_none() {
                return Err(Error::config(format!(
                    "postgres {at}: table {}.{} does not exist in database {:?} (outbox.table; create it with sql/001_outbox.sql)",
                    s.table_schema, s.table_name, s.dbname
                )));
            }
        }
        let pub_row = self
            .client
            .query_opt(
                "SELECT pubinsert FROM pg_publication WHERE pubname = $1",
                &[&s.publication],
            )
            .await
            .map_err(|e| self.err("reading pg_publication", e))?;
        let Some(pub_row) = pub_row else {
            return Err(Error::config(format!(
                "postgres {at}: publication {:?} does not exist in database {:?} (postgres.publication; apply sql/002_publication.sql)",
                s.publication, s.dbname
            )));
        };
        if !s.table_events {
            return Ok(());
        }
        let pubinsert: bool = pub_row.get(0);
        if !pubinsert {
            return Err(Error::config(format!(
                "postgres {at}: publication {:?} does not publish inserts (create it WITH (publish = 'insert'))",
                s.publication
            )));
        }
        let in_pub = self
            .client
            .query_opt(
                "SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3",
                &[&s.publication, &s.table_schema, &s.table_name],
            )
            .await
            .map_err(|e| self.err("reading pg_publication_tables", e))?;
        if in_pub.is_none() {
            return Err(Error::config(format!(
                "postgres {at}: table {}.{} is not in publication {:?} (outbox.table; ALTER PUBLICATION {} ADD TABLE {}.{})",
                s.table_schema, s.table_name, s.publication, s.publication, s.table_schema, s.table_name
            )));
        }
        let rows = self
            .client
            .query(
                "SELECT a.attname::text FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
                &[&s.table_schema, &s.table_name],
            )
            .await
            .map_err(|e| self.err("reading the outbox columns", e))?;
        let present: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        for (key, column) in &s.required_columns {
            if !present.iter().any(|c| c == column) {
                return Err(Error::config(format!(
                    "postgres {at}: table {}.{} has no column {column:?} ({key}); its columns are: {}",
                    s.table_schema,
                    s.table_name,
                    present.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// The slot, if it exists, with the columns this server version has.
    pub async fn slot(&self) -> Result<Option<SlotInfo>> {
        let row = self
            .client
            .query_opt(&slot::query(self.version), &[&self.settings.slot])
            .await
            .map_err(|e| self.err("reading pg_replication_slots", e))?;
        Ok(row.map(|r| slot::from_row(&r, self.version)))
    }

    /// Failover readiness as far as the primary can see it (Postgres 17+).
    pub async fn failover(&self, slot: Option<&SlotInfo>) -> Result<Failover> {
        let mut standby_slots = Vec::new();
        if self.version >= 170_000 {
            let names: String = self
                .client
                .query_one("SHOW synchronized_standby_slots", &[])
                .await
                .map_err(|e| self.err("SHOW synchronized_standby_slots", e))?
                .get(0);
            for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                let row = self
                    .client
                    .query_opt(
                        "SELECT slot_type = 'physical', active FROM pg_replication_slots WHERE slot_name = $1",
                        &[&name],
                    )
                    .await
                    .map_err(|e| self.err("reading pg_replication_slots", e))?;
                standby_slots.push(StandbySlot {
                    name: name.to_string(),
                    state: row.map(|r| (r.get(0), r.get(1))),
                });
            }
        }
        Ok(slot::judge(
            self.version,
            &self.settings.slot,
            slot.and_then(|s| s.failover),
            &standby_slots,
        ))
    }

    /// How many physical standbys this server shows: physical slots, plus walsenders streaming WAL
    /// without a slot (a standby streaming without a slot). Both views are readable by every role.
    pub async fn physical_standbys(&self) -> Result<i64> {
        let row = self
            .client
            .query_one(
                "SELECT (SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_type = 'physical') \
                      + (SELECT count(*) FROM pg_catalog.pg_stat_replication r \
                          WHERE r.state IN ('streaming', 'catchup') AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots s \
                                             WHERE s.active_pid = r.pid))",
                &[],
            )
            .await
            .map_err(|e| self.err("counting physical standbys", e))?;
        Ok(row.get(0))
    }

    /// A server setting (`SHOW name`).
    pub async fn show(&self, name: &str) -> Result<String> {
        Ok(self
            .client
            .query_one(&format!("SHOW {name}"), &[])
            .await
            .map_err(|e| self.err(&format!("SHOW {name}"), e))?
            .get(0))
    }

    /// Takes the session advisory lock that says "a relay runs on this slot" (held until this
    /// connection ends). Every relay takes it before it touches the slot, streaming or catching up:
    /// a catch-up read holds the slot itself only while a SQL call runs, so the lock, not the slot,
    /// keeps a standby waiting. `false`: another session holds it.
    ///
    /// A relay that freezes or loses its network must not keep the lock forever (a walsender
    /// gives up on it after `wal_sender_timeout`): this connection gets `idle_session_timeout =
    /// 60s`, so Postgres ends it, and the lock with it, once it was idle that long. A running
    /// relay is never idle that long: the loop checks the slot on it every 10 s.
    pub async fn hold_slot(&self) -> Result<bool> {
        self.client
            .batch_execute(&format!(
                "SET idle_session_timeout = '{}s'",
                IDLE_SESSION_TIMEOUT.as_secs()
            ))
            .await
            .map_err(|e| self.err("SET idle_session_timeout", e))?;
        let row = self
            .client
            .query_one(
                "SELECT pg_try_advisory_lock($1::int4, hashtext($2::text))",
                &[&slot::LOCK_CLASS, &self.settings.slot],
            )
            .await
            .map_err(|e| self.err("pg_try_advisory_lock", e))?;
        Ok(row.get(0))
    }

    /// Keeps this connection from being idle (every 10 s) for as long as it is polled, for a
    /// phase of the session that does not use it (the initial snapshot): [`Control::hold_slot`]'s
    /// idle_session_timeout would end it, and the lock with it. Never returns.
    pub async fn keep_alive(&self) {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(10)).await;
            // A broken connection is found by the next check that needs it.
            let _ = self.client.batch_execute("SELECT 1").await;
        }
    }

    /// The server's current WAL write position (`pg_current_wal_lsn()`).
    pub async fn current_wal_lsn(&self) -> Result<Lsn> {
        let row = self
            .client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .map_err(|e| self.err("SELECT pg_current_wal_lsn()", e))?;
        let text: String = row.get(0);
        text.parse()
            .map_err(|e| Error::internal("postgres: unreadable pg_current_wal_lsn").with_source(e))
    }

    /// The system identifier, as IDENTIFY_SYSTEM reports it (`pg_control_system()`, executable
    /// by every role by default).
    pub async fn system_identifier(&self) -> Result<String> {
        let row = self
            .client
            .query_one(
                "SELECT system_identifier::text FROM pg_control_system()",
                &[],
            )
            .await
            .map_err(|e| self.err("SELECT pg_control_system()", e))?;
        Ok(row.get(0))
    }

    /// `application_name` and client address of backend `pid` (the slot holder), when the role may
    /// see them (its own sessions, or with pg_read_all_stats).
    pub async fn backend(&self, pid: i32) -> Result<Option<(Option<String>, Option<String>)>> {
        let row = self
            .client
            .query_opt(
                "SELECT application_name::text, client_addr::text FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .await
            .map_err(|e| self.err("reading pg_stat_activity", e))?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// Creates the slot (pgoutput). Returns whether this call created it (false: another
    /// instance starting at the same time created it first).
    pub async fn create_slot(&self) -> Result<bool> {
        let s = &self.settings;
        // A failover slot (17+): synchronized to standbys with sync_replication_slots = on.
        let created = if s.failover_slot && self.version >= 170_000 {
            self.client
                .query_one(
                    "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput', false, false, true)",
                    &[&s.slot],
                )
                .await
        } else {
            self.client
                .query_one(
                    "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
                    &[&s.slot],
                )
                .await
        };
        match created {
            Ok(row) => {
                let at_lsn: String = row.get(0);
                tracing::info!(slot = %s.slot, lsn = %at_lsn, "created the replication slot");
                Ok(true)
            }
            Err(e) if e.code() == Some(&SqlState::DUPLICATE_OBJECT) => Ok(false),
            Err(e) => Err(self.err("creating the replication slot", e)),
        }
    }

    /// Drops the slot this session created, when the start cannot go on (best effort), so a
    /// failed first start leaves nothing behind that holds WAL.
    pub async fn drop_slot(&self) {
        let s = &self.settings;
        match self
            .client
            .execute("SELECT pg_drop_replication_slot($1)", &[&s.slot])
            .await
        {
            Ok(_) => {
                tracing::info!(slot = %s.slot, "dropped the replication slot this start created")
            }
            Err(e) => {
                tracing::warn!(slot = %s.slot, error = %e, "could not drop the replication slot this start created")
            }
        }
    }

    /// Checks that an existing slot suits us: pgoutput, our database, not invalidated.
    pub fn check_slot(&self, info: &SlotInfo) -> Result<()> {
        let s = &self.settings;
        let at = s.address();
        if info.plugin.as_deref() != Some("pgoutput") {
            return Err(Error::config(format!(
                "postgres {at}: slot {:?} uses plugin {:?}, the relay needs a pgoutput slot (postgres.slot)",
                s.slot,
                info.plugin.as_deref().unwrap_or("none (physical slot)")
            )));
        }
        if info.database.as_deref() != Some(s.dbname.as_str()) {
            return Err(Error::config(format!(
                "postgres {at}: slot {:?} belongs to database {:?}, not {:?} (postgres.slot / postgres.dbname)",
                s.slot,
                info.database.as_deref().unwrap_or("?"),
                s.dbname
            )));
        }
        if info.wal_status.as_deref() == Some("lost") {
            return Err(Error::new(
                Kind::Invariant,
                format!(
                    "postgres {at}: slot {:?} is invalidated (wal_status = lost: the WAL it needed was removed, e.g. by max_slot_wal_keep_size); events written meanwhile may be lost. See the README, \"Recovering from an invalidated slot\"",
                    s.slot
                ),
            ));
        }
        Ok(())
    }
}
