//! Why a connection to Postgres was refused and what fixes it (pg_hba.conf, the password, the
//! database, REPLICATION, connection slots, TLS, the network), for the relay's SQL connection and
//! for a real replication connection (IDENTIFY_SYSTEM, ended before START_REPLICATION). Also
//! [`ident`], the quoting every fix's SQL uses.

use pgwire_replication::PgWireError;
use tokio_postgres::error::SqlState;

use crate::doctor::check::{Check, Server};
use crate::error::{Error, Kind, Result};
use crate::source::errors::sqlstate_of;
use crate::source::stream::{self, Identity};
use crate::source::{Control, SourceSettings};

const PG: Server = Server::Postgres;

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
pub(super) fn refused(
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

/// The `replication_connection` line: pg_hba.conf and REPLICATION, tried with a replication
/// connection as the relay opens it. Returns the system identifier (read over SQL when the
/// replication connection was refused) and what IDENTIFY_SYSTEM said, if it ran.
pub(super) async fn replication(
    control: &Control,
    s: &SourceSettings,
    client_addr: Option<&str>,
    out: &mut Vec<Check>,
) -> Result<(String, Option<Identity>)> {
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
            Ok((id.system_id.clone(), Some(id)))
        }
        Err(e) => {
            out.push(refused(
                "replication_connection",
                s,
                "replication connection",
                &e,
                client_addr,
            ));
            Ok((control.system_identifier().await?, None))
        }
    }
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
