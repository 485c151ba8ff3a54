//! The Postgres half of the checklist: the connection, server settings, the role, the table, the
//! publication, a real replication connection (pg_hba.conf), WAL retention, the slot, failover.
//!
//! Read-only: catalog and settings queries on the relay's own SQL connection
//! ([`Control`]), and one replication connection that runs IDENTIFY_SYSTEM and ends before
//! START_REPLICATION ([`stream::identify`]), so the slot is never touched.

use pgwire_replication::PgWireError;
use tokio_postgres::error::SqlState;

use super::check::{Check, Findings, Server, Status};
use crate::error::{Error, Kind};
use crate::source::errors::sqlstate_of;
use crate::source::stream::{self, Identity};
use crate::source::{Control, SlotInfo, SourceSettings};

const PG: Server = Server::Postgres;

/// What the Kafka half needs from Postgres.
#[derive(Debug, Default)]
pub struct Facts {
    /// The system identifier (for the checkpoint key).
    pub system_id: Option<String>,
    /// The slot, when it could be read (`Some(None)`: it does not exist).
    pub slot: Option<Option<SlotInfo>>,
    /// What IDENTIFY_SYSTEM said (timeline and its history).
    pub identity: Option<Identity>,
}

impl Facts {
    /// Whether a session streams from the slot (`None`: unknown).
    pub fn slot_held(&self) -> Option<bool> {
        self.slot
            .as_ref()
            .map(|s| s.as_ref().is_some_and(|s| s.active))
    }
}

/// The SQLSTATE behind an error of either connection, if the server sent one.
fn sqlstate(e: &Error) -> Option<SqlState> {
    let mut next = std::error::Error::source(e);
    while let Some(cause) = next {
        if let Some(pg) = cause.downcast_ref::<tokio_postgres::Error>() {
            return pg.code().cloned();
        }
        if let Some(wire) = cause.downcast_ref::<PgWireError>() {
            return sqlstate_of(wire);
        }
        next = cause.source();
    }
    None
}

/// The server's own words (no secrets: Postgres never echoes a password).
fn server_says(e: &Error) -> Option<String> {
    let mut next = std::error::Error::source(e);
    while let Some(cause) = next {
        if let Some(db) = cause
            .downcast_ref::<tokio_postgres::Error>()
            .and_then(|pg| pg.as_db_error())
        {
            return Some(db.message().to_string());
        }
        if let Some(PgWireError::Server(text)) = cause.downcast_ref::<PgWireError>() {
            return Some(text.clone());
        }
        next = cause.source();
    }
    None
}

/// An identifier as SQL needs it in a fix (quoted unless plain lower case).
pub fn ident(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// The `pg_hba.conf` line the relay needs.
fn hba_fix(s: &SourceSettings, client_addr: Option<&str>) -> String {
    let addr = client_addr.map_or_else(
        || "<the relay's address>/32".to_string(),
        |a| {
            if a.contains(':') {
                format!("{a}/128")
            } else {
                format!("{a}/32")
            }
        },
    );
    format!(
        "add `host {} {} {addr} scram-sha-256` to pg_hba.conf (above any line that matches first), then SELECT pg_reload_conf(). Logical replication connects to the database itself: a `host replication ...` line does not cover it",
        s.dbname, s.user
    )
}

/// The line for a connection the server (or the network) refused.
fn refused(
    check: &'static str,
    s: &SourceSettings,
    what: &str,
    e: &Error,
    client_addr: Option<&str>,
) -> Check {
    let said = server_says(e).map_or_else(String::new, |m| format!(" (the server said: {m})"));
    let code = sqlstate(e);
    let auth = std::iter::successors(std::error::Error::source(e), |c| c.source())
        .any(|c| matches!(c.downcast_ref::<PgWireError>(), Some(PgWireError::Auth(_))));
    if code == Some(SqlState::INVALID_AUTHORIZATION_SPECIFICATION) {
        return Check::fail(
            PG,
            check,
            format!(
                "{what}: pg_hba.conf has no line for user {:?}, database {:?} from this host{said}",
                s.user, s.dbname
            ),
            hba_fix(s, client_addr),
        );
    }
    if code == Some(SqlState::INVALID_PASSWORD) || auth {
        return Check::fail(
            PG,
            check,
            format!("{what}: password authentication failed for user {:?}", s.user),
            "check postgres.password / postgres.password_file (and the role's password: ALTER ROLE ... PASSWORD)",
        );
    }
    if code == Some(SqlState::INVALID_CATALOG_NAME) {
        return Check::fail(
            PG,
            check,
            format!("{what}: database {:?} does not exist", s.dbname),
            "set postgres.dbname to the database holding the outbox",
        );
    }
    if code == Some(SqlState::INSUFFICIENT_PRIVILEGE) {
        return Check::fail(
            PG,
            check,
            format!("{what}: refused for user {:?}{said}", s.user),
            format!(
                "ALTER ROLE {} LOGIN REPLICATION (as a superuser; sql/003_relay_role.sql)",
                ident(&s.user)
            ),
        );
    }
    if code == Some(SqlState::TOO_MANY_CONNECTIONS) {
        return Check::fail(
            PG,
            check,
            format!("{what}: no connection slot left{said}"),
            "raise max_wal_senders (replication) or max_connections, or stop unused clients; both need a restart of Postgres",
        );
    }
    let fix = match e.kind() {
        Kind::Config => "check postgres.sslmode / postgres.sslrootcert and the server's certificate",
        _ => "check postgres.host and postgres.port, that Postgres listens there (listen_addresses) and that no firewall is in the way",
    };
    Check::fail(PG, check, format!("{what}: {}", e.report()), fix)
}

/// Runs every Postgres check, appending one line each to `out`.
pub async fn run(s: &SourceSettings, out: &mut Vec<Check>) -> Facts {
    let mut facts = Facts::default();
    let control = match Control::connect(s).await {
        Ok(c) => c,
        Err(e) => {
            out.push(refused(
                "connection",
                s,
                &format!("connecting to {} as {:?}", s.address(), s.user),
                &e,
                None,
            ));
            out.push(Check::skip(
                PG,
                "remaining",
                "the other Postgres checks need a connection",
            ));
            return facts;
        }
    };
    let s = control.settings().clone();
    let client_addr: Option<String> = control
        .client()
        .query_one("SELECT host(inet_client_addr())", &[])
        .await
        .ok()
        .and_then(|r| r.get(0));
    out.push(Check::ok(
        PG,
        "connection",
        format!(
            "connected to {} database {:?} as {:?}",
            s.address(),
            s.dbname,
            s.user
        ),
    ));
    match checks(&control, &s, client_addr.as_deref(), out, &mut facts).await {
        Ok(()) => {}
        Err(e) => out.push(Check::fail(
            PG,
            "query",
            format!("a catalog query failed: {}", e.report()),
            "see the message; every other check above stands",
        )),
    }
    facts
}

async fn checks(
    control: &Control,
    s: &SourceSettings,
    client_addr: Option<&str>,
    out: &mut Vec<Check>,
    facts: &mut Facts,
) -> crate::error::Result<()> {
    let db = control.client();
    // Server version.
    let v = control.version();
    let version = format!("{}.{}", v / 10_000, v % 10_000);
    out.push(if (140_000..190_000).contains(&v) {
        Check::ok(
            PG,
            "server_version",
            format!("Postgres {version} (supported: 14 to 18)"),
        )
    } else {
        Check::warn(
            PG,
            "server_version",
            format!("Postgres {version}: the relay is tested on 14 to 18"),
            "use a Postgres version from 14 to 18",
        )
    });

    // wal_level.
    let wal_level = control.show("wal_level").await?;
    out.push(if wal_level == "logical" {
        Check::ok(PG, "wal_level", "logical")
    } else {
        Check::fail(
            PG,
            "wal_level",
            format!("{wal_level:?}: logical replication needs \"logical\""),
            "set wal_level = logical in postgresql.conf (or ALTER SYSTEM SET wal_level = logical) and restart Postgres",
        )
    });

    // The slot (read first: whether it exists and is held decides the capacity checks).
    let slot = control.slot().await?;
    facts.slot = Some(slot.clone());
    let count = |sql: &'static str| async move {
        db.query_one(sql, &[])
            .await
            .map(|r| r.get::<_, i64>(0))
            .map_err(|e| control.err(sql, e))
    };

    // Free replication slots.
    let max_slots: i64 = control
        .show("max_replication_slots")
        .await?
        .parse()
        .unwrap_or(0);
    let used_slots = count("SELECT count(*) FROM pg_replication_slots").await?;
    out.push(if slot.is_some() {
        Check::ok(
            PG,
            "max_replication_slots",
            format!("{used_slots} of {max_slots} used, the relay's slot among them"),
        )
    } else if used_slots < max_slots {
        Check::ok(
            PG,
            "max_replication_slots",
            format!(
                "{used_slots} of {max_slots} used: room for the relay's slot"
            ),
        )
    } else {
        Check::fail(
            PG,
            "max_replication_slots",
            format!("all {max_slots} slots are used: the relay cannot create its slot"),
            "drop unused slots (SELECT pg_drop_replication_slot(name)) or raise max_replication_slots (restart)",
        )
    });

    // Free walsenders.
    let max_senders: i64 = control.show("max_wal_senders").await?.parse().unwrap_or(0);
    let used_senders = count("SELECT count(*) FROM pg_stat_replication").await?;
    let held = slot.as_ref().is_some_and(|s| s.active);
    out.push(if held {
        Check::ok(
            PG,
            "max_wal_senders",
            format!("{used_senders} of {max_senders} used, the relay's walsender among them"),
        )
    } else if used_senders < max_senders {
        Check::ok(
            PG,
            "max_wal_senders",
            format!("{used_senders} of {max_senders} used: room for the relay's walsender"),
        )
    } else {
        Check::fail(
            PG,
            "max_wal_senders",
            format!("all {max_senders} walsenders are busy: the relay cannot stream"),
            "raise max_wal_senders (restart), or stop an unused replication client",
        )
    });

    // The role.
    let role = db
        .query_opt(
            "SELECT rolcanlogin, rolreplication, rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(|e| control.err("reading pg_roles", e))?;
    let (login, replication, superuser) =
        role.map_or((true, false, false), |r| (r.get(0), r.get(1), r.get(2)));
    out.push(if !(replication || superuser) || !login {
        Check::fail(
            PG,
            "role",
            format!(
                "role {:?} lacks {}: logical replication needs LOGIN REPLICATION",
                s.user,
                [(!login).then_some("LOGIN"), (!replication).then_some("REPLICATION")]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
            format!(
                "ALTER ROLE {} LOGIN REPLICATION (as a superuser; sql/003_relay_role.sql)",
                ident(&s.user)
            ),
        )
    } else if superuser {
        Check::warn(
            PG,
            "role",
            format!("role {:?} is a superuser", s.user),
            "use a role with only LOGIN REPLICATION and SELECT on the outbox (sql/003_relay_role.sql)",
        )
    } else {
        Check::ok(
            PG,
            "role",
            format!("role {:?}: LOGIN REPLICATION, not a superuser", s.user),
        )
    });

    // The table, and the role's right to read it.
    let table = format!("{}.{}", s.table_schema, s.table_name);
    let qualified = format!("{}.{}", ident(&s.table_schema), ident(&s.table_name));
    let row = db
        .query_opt(
            "SELECT has_schema_privilege(n.oid, 'USAGE'), has_table_privilege(c.oid, 'SELECT') \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&s.table_schema, &s.table_name],
        )
        .await
        .map_err(|e| control.err("reading pg_class", e))?;
    let table_exists = row.is_some();
    match row {
        None => {
            out.push(Check::fail(
                PG,
                "table",
                format!("table {table} does not exist in database {:?}", s.dbname),
                "create it (sql/001_outbox.sql), or set outbox.table to the outbox's schema.name",
            ));
            out.push(Check::skip(PG, "columns", "the table does not exist"));
            out.push(Check::skip(PG, "select", "the table does not exist"));
        }
        Some(r) => {
            out.push(Check::ok(
                PG,
                "table",
                format!("{table} exists in database {:?}", s.dbname),
            ));
            columns(control, s, &table, out).await?;
            let (usage, select): (bool, bool) = (r.get(0), r.get(1));
            out.push(if usage && select {
                Check::ok(PG, "select", format!("role {:?} may read {table}", s.user))
            } else {
                let mut grants = Vec::new();
                if !usage {
                    grants.push(format!(
                        "GRANT USAGE ON SCHEMA {} TO {};",
                        ident(&s.table_schema),
                        ident(&s.user)
                    ));
                }
                if !select {
                    grants.push(format!(
                        "GRANT SELECT ON {qualified} TO {};",
                        ident(&s.user)
                    ));
                }
                Check::fail(
                    PG,
                    "select",
                    format!(
                        "role {:?} may not read {table} (no {})",
                        s.user,
                        if usage {
                            "SELECT on the table"
                        } else {
                            "USAGE on its schema"
                        }
                    ),
                    format!("{} (sql/003_relay_role.sql)", grants.join(" ")),
                )
            });
        }
    }

    // The publication.
    out.push(publication(control, s, &table, &qualified, table_exists).await?);

    // pg_hba.conf and REPLICATION, tried: a replication connection as the relay opens it.
    match stream::identify(&s.clone()).await {
        Ok(id) => {
            out.push(Check::ok(
                PG,
                "replication_connection",
                format!(
                    "accepted (IDENTIFY_SYSTEM: system identifier {}, timeline {})",
                    id.system_id, id.timeline
                ),
            ));
            facts.system_id = Some(id.system_id.clone());
            facts.identity = Some(id);
        }
        Err(e) => {
            out.push(refused(
                "replication_connection",
                s,
                "replication connection",
                &e,
                client_addr,
            ));
            facts.system_id = Some(control.system_identifier().await?);
        }
    }

    // WAL retention.
    let keep = control.show("max_slot_wal_keep_size").await?;
    out.push(if keep.trim() == "-1" {
        Check::warn(
            PG,
            "max_slot_wal_keep_size",
            "-1 (unbounded): while the relay is down its slot keeps WAL until the disk is full",
            "set a bound the disk can hold while the relay is down (ALTER SYSTEM SET max_slot_wal_keep_size = '50GB'; SELECT pg_reload_conf()); past it Postgres invalidates the slot instead of filling the disk (README runbook \"Recovering from an invalidated slot\")",
        )
    } else {
        Check::ok(
            PG,
            "max_slot_wal_keep_size",
            format!("{keep}: a relay may be down for that much WAL before its slot is invalidated"),
        )
    });

    // The slot.
    out.push(slot_check(control, s, slot.as_ref()).await?);

    // Failover (17+).
    out.push(if !s.failover_slot {
        Check::skip(PG, "failover", "postgres.failover_slot = false")
    } else if v < 170_000 {
        Check::skip(
            PG,
            "failover",
            format!("failover slots need Postgres 17 or later (server {version}): after a failover the slot is lost (README runbook \"Lost slot\")"),
        )
    } else {
        let f = control.failover(slot.as_ref()).await?;
        if f.ready() {
            Check::ok(
                PG,
                "failover",
                format!(
                    "ready: failover slot, synchronized_standby_slots {} streaming",
                    f.standbys_streaming.join(", ")
                ),
            )
        } else {
            Check::warn(
                PG,
                "failover",
                "not ready: a failover may lose the slot or events",
                f.missing.join("; "),
            )
        }
    });
    Ok(())
}

/// The mapped columns exist.
async fn columns(
    control: &Control,
    s: &SourceSettings,
    table: &str,
    out: &mut Vec<Check>,
) -> crate::error::Result<()> {
    let rows = control
        .client()
        .query(
            "SELECT a.attname::text FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
            &[&s.table_schema, &s.table_name],
        )
        .await
        .map_err(|e| control.err("reading the outbox columns", e))?;
    let present: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let missing: Vec<String> = s
        .required_columns
        .iter()
        .filter(|(_, c)| !present.contains(c))
        .map(|(key, c)| format!("{c:?} ({key})"))
        .collect();
    out.push(if missing.is_empty() {
        Check::ok(PG, "columns", format!("{table} has every mapped column"))
    } else {
        Check::fail(
            PG,
            "columns",
            format!(
                "{table} has no column {}; its columns are: {}",
                missing.join(", "),
                present.join(", ")
            ),
            "set outbox.columns.* to the table's column names",
        )
    });
    Ok(())
}

/// The publication exists, covers the table (all mapped columns, every row) and publishes
/// inserts, and nothing the relay would ignore.
async fn publication(
    control: &Control,
    s: &SourceSettings,
    table: &str,
    qualified: &str,
    table_exists: bool,
) -> crate::error::Result<Check> {
    let db = control.client();
    let p = ident(&s.publication);
    let row = db
        .query_opt(
            "SELECT pubinsert, pubupdate, pubdelete, pubtruncate, puballtables FROM pg_publication WHERE pubname = $1",
            &[&s.publication],
        )
        .await
        .map_err(|e| control.err("reading pg_publication", e))?;
    let Some(row) = row else {
        return Ok(Check::fail(
            PG,
            "publication",
            format!(
                "publication {:?} does not exist in database {:?}",
                s.publication, s.dbname
            ),
            format!(
                "CREATE PUBLICATION {p} FOR TABLE {qualified} WITH (publish = 'insert') (sql/002_publication.sql), or set postgres.publication"
            ),
        ));
    };
    let (insert, update, delete, truncate, all): (bool, bool, bool, bool, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    let mut f = Findings::default();
    if !insert {
        f.add(
            Status::Fail,
            format!("publication {:?} does not publish inserts", s.publication),
            Some(format!("ALTER PUBLICATION {p} SET (publish = 'insert')")),
        );
    }
    if !table_exists {
        f.add(
            Status::Skip,
            format!("cannot tell whether it covers {table}: the table does not exist"),
            None,
        );
    } else {
        // Column lists and row filters exist from Postgres 15.
        let v15 = control.version() >= 150_000;
        let sql = if v15 {
            "SELECT attnames::text[], rowfilter FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3"
        } else {
            "SELECT NULL::text[], NULL::text FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3"
        };
        let covered = db
            .query_opt(sql, &[&s.publication, &s.table_schema, &s.table_name])
            .await
            .map_err(|e| control.err("reading pg_publication_tables", e))?;
        match covered {
            None => f.add(
                Status::Fail,
                format!("publication {:?} does not cover {table}", s.publication),
                Some(format!("ALTER PUBLICATION {p} ADD TABLE {qualified}")),
            ),
            Some(r) => {
                let attnames: Option<Vec<String>> = r.get(0);
                let rowfilter: Option<String> = r.get(1);
                if let Some(attnames) = attnames {
                    let missing: Vec<&str> = s
                        .required_columns
                        .iter()
                        .map(|(_, c)| c.as_str())
                        .filter(|c| !attnames.iter().any(|a| a == c))
                        .collect();
                    if !missing.is_empty() {
                        f.add(
                            Status::Fail,
                            format!("its column list leaves out {}", missing.join(", ")),
                            Some(format!(
                                "ALTER PUBLICATION {p} SET TABLE {qualified} (publish every column)"
                            )),
                        );
                    }
                }
                if let Some(filter) = rowfilter {
                    f.add(
                        Status::Warn,
                        format!("a row filter ({filter}) keeps rows that do not match it from the relay"),
                        Some(format!(
                            "ALTER PUBLICATION {p} SET TABLE {qualified} (no WHERE), unless leaving those rows out is intended"
                        )),
                    );
                }
            }
        }
    }
    let extra: Vec<&str> = [
        (update, "update"),
        (delete, "delete"),
        (truncate, "truncate"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect();
    if !extra.is_empty() {
        f.add(
            Status::Warn,
            format!(
                "it also publishes {}: the relay ignores them, but the walsender decodes and sends them",
                extra.join(", ")
            ),
            Some(format!("ALTER PUBLICATION {p} SET (publish = 'insert')")),
        );
    }
    if all {
        f.add(
            Status::Warn,
            "it is FOR ALL TABLES: every table's changes are decoded and sent to the relay, which ignores all but the outbox",
            Some(format!(
                "publish the outbox only: DROP PUBLICATION {p}; CREATE PUBLICATION {p} FOR TABLE {qualified} WITH (publish = 'insert')"
            )),
        );
    }
    Ok(f.into_check(
        PG,
        "publication",
        format!(
            "publication {:?} covers {table} and publishes inserts only",
            s.publication
        ),
    ))
}

/// The slot: missing (created at the first start?), or ours, usable, and who holds it.
async fn slot_check(
    control: &Control,
    s: &SourceSettings,
    slot: Option<&SlotInfo>,
) -> crate::error::Result<Check> {
    let Some(info) = slot else {
        return Ok(if s.create_slot {
            Check::ok(
                PG,
                "slot",
                format!(
                    "{:?} does not exist yet: the relay creates it at its first start (postgres.create_slot)",
                    s.slot
                ),
            )
        } else {
            Check::fail(
                PG,
                "slot",
                format!(
                    "{:?} does not exist and postgres.create_slot = false",
                    s.slot
                ),
                format!(
                    "SELECT pg_create_logical_replication_slot('{}', 'pgoutput'), or set postgres.create_slot = true",
                    s.slot
                ),
            )
        });
    };
    if let Err(e) = control.check_slot(info) {
        return Ok(Check::fail(
            PG,
            "slot",
            e.message().to_string(),
            if e.kind() == Kind::Invariant {
                "follow the README runbook \"Recovering from an invalidated slot\"".to_string()
            } else {
                "set postgres.slot to a pgoutput slot of this database, or a new name (the relay creates it)".to_string()
            },
        ));
    }
    if info.conflicting == Some(true) || info.invalidation_reason.is_some() {
        return Ok(Check::fail(
            PG,
            "slot",
            format!(
                "{:?} is invalidated ({})",
                s.slot,
                info.invalidation_reason.as_deref().unwrap_or("conflicting")
            ),
            "follow the README runbook \"Recovering from an invalidated slot\"",
        ));
    }
    let at = format!(
        "{:?}: pgoutput, confirmed_flush_lsn {}, wal_status {}",
        s.slot,
        info.confirmed_flush_lsn
            .map_or_else(|| "-".into(), |l| l.to_string()),
        info.wal_status.as_deref().unwrap_or("-")
    );
    if info.wal_status.as_deref() == Some("unreserved") {
        return Ok(Check::warn(
            PG,
            "slot",
            format!("{at}: its WAL is past max_slot_wal_keep_size and goes at the next checkpoint unless a relay catches up"),
            "start the relay now (or raise max_slot_wal_keep_size)",
        ));
    }
    let Some(pid) = info.active_pid.filter(|_| info.active) else {
        return Ok(Check::ok(PG, "slot", format!("{at}; not held")));
    };
    let (app, addr) = control.backend(pid).await?.unwrap_or((None, None));
    let client = addr.map_or_else(String::new, |a| format!(", client {a}"));
    Ok(match app.as_deref() {
        Some("outbox-relay") => Check::ok(
            PG,
            "slot",
            format!("{at}; held by an outbox-relay (pid {pid}{client})"),
        ),
        Some(other) => Check::fail(
            PG,
            "slot",
            format!("{at}; held by pid {pid} (application {other:?}{client}), not an outbox-relay: the relay waits until it lets go"),
            format!("stop that client (SELECT pg_terminate_backend({pid}) ends its session), or give the relay its own slot (postgres.slot)"),
        ),
        None => Check::ok(
            PG,
            "slot",
            format!("{at}; held by pid {pid} (its application is not visible to this role)"),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_only_when_needed() {
        assert_eq!(ident("outbox_relay"), "outbox_relay");
        assert_eq!(ident("Outbox"), "\"Outbox\"");
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(ident("1x"), "\"1x\"");
    }

    #[test]
    fn the_hba_fix_names_database_user_and_address() {
        let s = crate::source::tests::settings("disable", None);
        let fix = hba_fix(&s, Some("10.1.2.3"));
        assert!(
            fix.contains("host app outbox_relay 10.1.2.3/32 scram-sha-256"),
            "{fix}"
        );
        assert!(hba_fix(&s, Some("::1")).contains("::1/128"));
        assert!(hba_fix(&s, None).contains("<the relay's address>/32"));
    }
}
