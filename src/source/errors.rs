//! Postgres errors sorted by what the relay must do, from their SQLSTATE codes.
//!
//! Both connections report server errors with a SQLSTATE: tokio-postgres as a typed
//! [`SqlState`], pgwire-replication inside its message (`... (SQLSTATE 55006)`), which
//! [`sqlstate_of`] reads back into the same type. Then one table decides:
//!
//! | SQLSTATE | meaning | kind |
//! |---|---|---|
//! | 55006 object_in_use | another session holds the slot | `Standby` |
//! | 28P01, 28000 | authentication failed, no pg_hba line | `Config` |
//! | 3D000 | database does not exist | `Config` |
//! | 42704 undefined_object | slot or publication missing | `Config` |
//! | 42501 insufficient_privilege | the role lacks REPLICATION / SELECT | `Config` |
//! | 55000 object_not_in_prerequisite_state | slot invalidated ("can no longer get changes"), or wal_level | `Invariant` / `Config` |
//! | 22021, 22P05 | the walsender cannot convert a row to the client encoding | `BadRow` |
//! | anything else | a broken connection, a restart, a timeout | `Transient` |

use pgwire_replication::PgWireError;
use tokio_postgres::error::SqlState;

use super::SourceSettings;
use crate::error::{Error, Kind};

/// The SQLSTATE a pgwire-replication server error carries in its text (`(SQLSTATE XXXXX)`).
pub fn sqlstate_of(e: &PgWireError) -> Option<SqlState> {
    let PgWireError::Server(text) = e else {
        return None;
    };
    let code = text.rsplit("SQLSTATE ").next()?.get(..5)?;
    (text.contains("SQLSTATE ") && code.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then(|| SqlState::from_code(code))
}

/// The kind of a server error by its SQLSTATE; `message` only tells apart the two meanings of
/// 55000 (an invalidated slot vs. a setting such as wal_level).
fn kind_of(code: &SqlState, message: &str) -> Kind {
    if *code == SqlState::OBJECT_IN_USE {
        Kind::Standby
    } else if *code == SqlState::INVALID_PASSWORD
        || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        || *code == SqlState::INVALID_CATALOG_NAME
        || *code == SqlState::UNDEFINED_OBJECT
        || *code == SqlState::INSUFFICIENT_PRIVILEGE
    {
        Kind::Config
    } else if *code == SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE {
        if message.contains("can no longer get changes") || message.contains("invalidated") {
            Kind::Invariant
        } else {
            Kind::Config
        }
    } else if *code == SqlState::CHARACTER_NOT_IN_REPERTOIRE
        || *code == SqlState::UNTRANSLATABLE_CHARACTER
    {
        Kind::BadRow
    } else {
        Kind::Transient
    }
}

/// Sorts a replication-connection error.
pub fn map_pg_error(s: &SourceSettings, what: &str, e: PgWireError) -> Error {
    let text = e.to_string();
    let at = s.address();
    let kind = match (&e, sqlstate_of(&e)) {
        (PgWireError::Auth(_) | PgWireError::Tls(_), _) => Kind::Config,
        (_, Some(code)) => kind_of(&code, &text),
        _ => Kind::Transient,
    };
    let code = sqlstate_of(&e);
    let message = match kind {
        Kind::Standby => format!(
            "postgres {at}: slot {:?} is held by another session (another relay?): standing by",
            s.slot
        ),
        Kind::Config
            if matches!(e, PgWireError::Auth(_))
                || code.as_ref() == Some(&SqlState::INVALID_PASSWORD) =>
        {
            format!(
                "postgres {at}: authentication failed for user {:?} (check postgres.password / postgres.password_file)",
                s.user
            )
        }
        Kind::Config if code.as_ref() == Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION) => {
            format!(
                "postgres {at}: {what}: the server refused user {:?} (no pg_hba.conf line for this replication connection? it needs a line for database {:?}; see sql/003_relay_role.sql)",
                s.user, s.dbname
            )
        }
        Kind::BadRow => format!(
            "postgres {at}: the server cannot send a row of the outbox as UTF-8 (the database encoding is not UTF-8 and a row holds bytes that are not valid in it); no client can read past it. Store events as UTF-8 (or the payload as bytea), then skip the transaction by advancing slot {:?} past it and resetting the checkpoint (see the README)",
            s.slot
        ),
        Kind::Invariant => format!(
            "postgres {at}: slot {:?} was invalidated (WAL it needed was removed, e.g. max_slot_wal_keep_size): events may be lost; see the README's recovery steps",
            s.slot
        ),
        _ => format!("postgres {at}: {what}"),
    };
    Error::new(kind, message).with_source(e)
}

/// Sorts an error of the SQL connection (tokio-postgres).
pub fn map_sql_error(s: &SourceSettings, what: &str, e: tokio_postgres::Error) -> Error {
    let at = s.address();
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        if *code == SqlState::INVALID_PASSWORD {
            return Error::config(format!(
                "postgres {at}: authentication failed for user {:?} (check postgres.password / postgres.password_file)",
                s.user
            ))
            .with_source(e);
        }
        if *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION {
            return Error::config(format!(
                "postgres {at}: the server refused user {:?} for database {:?}: {} (is there a pg_hba.conf line for this host, database and user? see the README, \"Database setup\")",
                s.user,
                s.dbname,
                db.message()
            ))
            .with_source(e);
        }
        if *code == SqlState::INVALID_CATALOG_NAME {
            return Error::config(format!(
                "postgres {at}: database {:?} does not exist (postgres.dbname)",
                s.dbname
            ))
            .with_source(e);
        }
        if *code == SqlState::INSUFFICIENT_PRIVILEGE {
            return Error::config(format!(
                "postgres {at}: {what}: permission denied for user {:?} (apply sql/003_relay_role.sql)",
                s.user
            ))
            .with_source(e);
        }
        let message = db.message().to_string();
        return Error::new(
            match kind_of(code, &message) {
                Kind::Standby => Kind::Transient,
                k => k,
            },
            format!("postgres {at}: {what}: {message}"),
        )
        .with_source(e);
    }
    if let Some(reason) = tls_refusal(&e) {
        // The certificate (or the TLS setup) is refused: retrying cannot help, a person must act.
        return Error::config(format!(
            "postgres {at}: {what}: TLS: {reason} (check postgres.sslrootcert, postgres.sslmode and that postgres.host is a name in the server's certificate)"
        ))
        .with_source(e);
    }
    Error::transient(format!("postgres {at}: {what}")).with_source(e)
}

/// Why the TLS handshake refused the server for good (its certificate, or no TLS at all where
/// sslmode requires it), if that is what `e` is; not for transport failures during the handshake.
fn tls_refusal(e: &tokio_postgres::Error) -> Option<String> {
    if e.to_string().contains("server does not support TLS") {
        return Some("the server does not support TLS".into());
    }
    let permanent = |r: &rustls::Error| {
        matches!(
            r,
            rustls::Error::InvalidCertificate(_)
                | rustls::Error::PeerIncompatible(_)
                | rustls::Error::NoCertificatesPresented
        )
        .then(|| r.to_string())
    };
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<rustls::Error>() {
            return permanent(r);
        }
        // io::Error::source skips the error it wraps: look at it directly.
        if let Some(inner) = s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            return permanent(inner);
        }
        source = s.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::tests::settings;

    fn server(text: &str) -> PgWireError {
        PgWireError::Server(text.to_string())
    }

    #[test]
    fn sqlstates_are_read_from_the_replication_error_text() {
        assert_eq!(
            sqlstate_of(&server(
                "replication slot \"s\" is active for PID 7 (SQLSTATE 55006)"
            )),
            Some(SqlState::OBJECT_IN_USE)
        );
        assert_eq!(sqlstate_of(&server("no code here")), None);
        assert_eq!(sqlstate_of(&PgWireError::Protocol("x".into())), None);
    }

    #[test]
    fn kinds_follow_the_table() {
        let s = settings("disable", None);
        for (text, kind) in [
            ("slot is active (SQLSTATE 55006)", Kind::Standby),
            (
                "password authentication failed (SQLSTATE 28P01)",
                Kind::Config,
            ),
            ("no pg_hba.conf entry (SQLSTATE 28000)", Kind::Config),
            (
                "replication slot \"x\" does not exist (SQLSTATE 42704)",
                Kind::Config,
            ),
            (
                "database \"x\" does not exist (SQLSTATE 3D000)",
                Kind::Config,
            ),
            (
                "must be superuser or replication role (SQLSTATE 42501)",
                Kind::Config,
            ),
            (
                "can no longer get changes from replication slot \"s\" (SQLSTATE 55000)",
                Kind::Invariant,
            ),
            (
                "logical decoding requires wal_level >= logical (SQLSTATE 55000)",
                Kind::Config,
            ),
            (
                "character with byte sequence ... (SQLSTATE 22P05)",
                Kind::BadRow,
            ),
            ("terminating connection (SQLSTATE 57P01)", Kind::Transient),
        ] {
            let e = map_pg_error(&s, "START_REPLICATION", server(text));
            assert_eq!(e.kind(), kind, "{text}");
            assert!(!e.report().contains("pw-never-printed"));
        }
        let e = map_pg_error(&s, "connecting", PgWireError::Auth("bad".into()));
        assert!(e.message().contains("authentication failed"), "{e}");
    }
}
