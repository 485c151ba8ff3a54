//! The audit's SQL connection: its own, from the configuration alone, so audit depends on the
//! `[postgres]` keys and not on the relay's internal settings.
//!
//! TLS is the relay's own connector (`source::tls`), with libpq's meanings: `disable`/`prefer` connect in clear
//! (prefer falls back), `require` encrypts without verifying (unless `sslrootcert` is given),
//! `verify-ca` checks the chain against `sslrootcert`, `verify-full` also the host name. The
//! session is tagged `application_name = outbox-relay-audit` so DBAs can tell it from the relay.

use tokio_postgres::{Client, NoTls};

use super::Failure;
use crate::config::Config;
use crate::error::Kind;

/// Connects as the configured role.
pub async fn connect(cfg: &Config) -> Result<Client, Failure> {
    let p = &cfg.postgres;
    let at = format!("{}:{}", p.host, p.port);
    let mut pc = tokio_postgres::Config::new();
    // A host list: the primary, as the relay reads from (a standby may lag behind it).
    let hosts = p
        .hosts()
        .map_err(|why| Failure::Config(format!("postgres.host: {why}")))?;
    for (host, port) in &hosts {
        pc.host(host).port(*port);
    }
    pc.target_session_attrs(tokio_postgres::config::TargetSessionAttrs::ReadWrite)
        .dbname(&p.dbname)
        .user(&p.user)
        .password(p.password.expose().as_bytes())
        .application_name("outbox-relay-audit")
        .options("-c DateStyle=ISO -c TimeZone=UTC")
        .connect_timeout(p.connect_timeout());
    let mode = p.sslmode.as_str();
    pc.ssl_mode(match mode {
        "disable" => tokio_postgres::config::SslMode::Disable,
        "prefer" => tokio_postgres::config::SslMode::Prefer,
        _ => tokio_postgres::config::SslMode::Require,
    });
    let refused = |e: tokio_postgres::Error| {
        Failure::CannotJudge(format!(
            "postgres {at}: cannot connect as {:?} to database {:?}: {}",
            p.user,
            p.dbname,
            super::chain(&e)
        ))
    };
    let client = if matches!(mode, "disable" | "prefer") {
        let (client, conn) = pc.connect(NoTls).await.map_err(refused)?;
        tokio::spawn(conn);
        client
    } else {
        let tls = connector(mode, p.sslrootcert.as_deref())?;
        let (client, conn) = pc.connect(tls).await.map_err(refused)?;
        tokio::spawn(conn);
        client
    };
    Ok(client)
}

/// The relay's own TLS connector (`source::tls`), its errors as audit's.
fn connector(
    mode: &str,
    sslrootcert: Option<&std::path::Path>,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, Failure> {
    crate::source::tls::connector_for(mode, sslrootcert).map_err(|e| match e.kind() {
        Kind::Config => Failure::Config(e.to_string()),
        _ => Failure::Internal(e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_modes_need_a_ca_and_require_does_not() {
        for mode in ["verify-ca", "verify-full"] {
            match connector(mode, None).err() {
                Some(Failure::Config(m)) => assert!(m.contains("postgres.sslrootcert"), "{m}"),
                other => panic!("{mode}: {other:?}"),
            }
        }
        assert!(connector("require", None).is_ok());
        match connector("verify-full", Some(std::path::Path::new("/no/such/ca.pem"))).err() {
            Some(Failure::Config(m)) => assert!(m.contains("/no/such/ca.pem"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
