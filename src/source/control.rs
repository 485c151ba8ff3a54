//! The SQL connection beside the replication stream: checks that fail early with a message that
//! names the cause and the fix (wal_level, publication, table columns, slot), slot creation, and
//! the slot's `confirmed_flush_lsn` for the start-up invariant.

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

use super::SourceSettings;
use crate::error::{Error, Kind, Result};
use crate::lsn::Lsn;

/// The slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    /// Output plugin (must be pgoutput).
    pub plugin: Option<String>,
    /// Database the slot decodes.
    pub database: Option<String>,
    /// Position up to which the consumer confirmed.
    pub confirmed_flush_lsn: Option<Lsn>,
    /// Oldest WAL the slot retains.
    pub restart_lsn: Option<Lsn>,
    /// reserved, extended, unreserved or lost.
    pub wal_status: Option<String>,
    /// Whether a session streams from it.
    pub active: bool,
    /// That session's backend pid.
    pub active_pid: Option<i32>,
}

/// A plain SQL session.
pub struct Control {
    client: Client,
    settings: SourceSettings,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").finish_non_exhaustive()
    }
}

/// Sorts a tokio-postgres error by what the caller must do.
pub fn map_sql_error(s: &SourceSettings, what: &str, e: tokio_postgres::Error) -> Error {
    let at = s.address();
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        if *code == SqlState::INVALID_PASSWORD
            || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        {
            return Error::config(format!(
                "postgres {at}: authentication failed for user {:?} (check postgres.password / postgres.password_file)",
                s.user
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
        return Error::transient(format!("postgres {at}: {what}: {}", db.message())).with_source(e);
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

impl Control {
    /// Connects with the relay's role.
    pub async fn connect(s: &SourceSettings) -> Result<Self> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&s.host)
            .port(s.port)
            .dbname(&s.dbname)
            .user(&s.user)
            .password(s.password.as_bytes())
            .application_name("outbox-relay")
            .connect_timeout(s.connect_timeout);
        let ssl = match s.sslmode.as_str() {
            "disable" => tokio_postgres::config::SslMode::Disable,
            "prefer" => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        };
        cfg.ssl_mode(ssl);
        let client = if matches!(s.sslmode.as_str(), "disable" | "prefer") {
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
        Ok(Self {
            client,
            settings: s.clone(),
        })
    }

    fn err(&self, what: &str, e: tokio_postgres::Error) -> Error {
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

    /// The slot, if it exists.
    pub async fn slot(&self) -> Result<Option<SlotInfo>> {
        let row = self
            .client
            .query_opt(
                "SELECT plugin::text, database::text, confirmed_flush_lsn::text, restart_lsn::text, \
                 wal_status, active, active_pid FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.settings.slot],
            )
            .await
            .map_err(|e| self.err("reading pg_replication_slots", e))?;
        Ok(row.map(|r| SlotInfo {
            plugin: r.get(0),
            database: r.get(1),
            confirmed_flush_lsn: r.get::<_, Option<String>>(2).and_then(|t| t.parse().ok()),
            restart_lsn: r.get::<_, Option<String>>(3).and_then(|t| t.parse().ok()),
            wal_status: r.get(4),
            active: r.get(5),
            active_pid: r.get(6),
        }))
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

    /// Makes sure the slot exists and suits us (pgoutput, our database, not invalidated),
    /// creating it when `postgres.create_slot` allows.
    pub async fn ensure_slot(&self) -> Result<SlotInfo> {
        let s = &self.settings;
        let at = s.address();
        let info = match self.slot().await? {
            Some(info) => info,
            None if s.create_slot => {
                let created = self
                    .client
                    .query_one(
                        "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
                        &[&s.slot],
                    )
                    .await;
                match created {
                    Ok(row) => {
                        let at_lsn: String = row.get(0);
                        tracing::info!(slot = %s.slot, lsn = %at_lsn, "created the replication slot");
                    }
                    // Two instances starting together: the other one created it first.
                    Err(e) if e.code() == Some(&SqlState::DUPLICATE_OBJECT) => {}
                    Err(e) => return Err(self.err("creating the replication slot", e)),
                }
                self.slot().await?.ok_or_else(|| {
                    Error::transient(format!("postgres {at}: slot {:?} vanished after creation", s.slot))
                })?
            }
            None => {
                return Err(Error::config(format!(
                    "postgres {at}: replication slot {:?} does not exist and postgres.create_slot = false (create it: SELECT pg_create_logical_replication_slot('{}', 'pgoutput'))",
                    s.slot, s.slot
                )))
            }
        };
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
        Ok(info)
    }
}

/// TLS for the SQL connection, with libpq's meanings: `require` encrypts without verifying (unless a
/// CA is given), `verify-ca` checks the chain against `sslrootcert`, `verify-full` also the host name.
mod tls {
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

    use super::SourceSettings;
    use crate::error::{Error, Result};

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::aws_lc_rs::default_provider())
    }

    fn roots(s: &SourceSettings) -> Result<Option<Arc<RootCertStore>>> {
        let Some(path) = &s.sslrootcert else {
            return Ok(None);
        };
        let mut store = RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(path).map_err(|e| {
            Error::config(format!(
                "postgres.sslrootcert: cannot read {}: {e}",
                path.display()
            ))
        })?;
        for cert in certs {
            let cert = cert.map_err(|e| {
                Error::config(format!(
                    "postgres.sslrootcert: bad PEM in {}: {e}",
                    path.display()
                ))
            })?;
            store.add(cert).map_err(|e| {
                Error::config(format!(
                    "postgres.sslrootcert: unusable certificate in {}: {e}",
                    path.display()
                ))
            })?;
        }
        Ok(Some(Arc::new(store)))
    }

    /// Verifies the chain with webpki but accepts any host name (libpq's verify-ca), or accepts
    /// anything (require without a CA).
    #[derive(Debug)]
    struct Lenient {
        inner: Option<Arc<rustls::client::WebPkiServerVerifier>>,
        provider: Arc<rustls::crypto::CryptoProvider>,
    }

    impl ServerCertVerifier for Lenient {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp: &[u8],
            now: UnixTime,
        ) -> std::result::Result<ServerCertVerified, rustls::Error> {
            let Some(inner) = &self.inner else {
                return Ok(ServerCertVerified::assertion());
            };
            match inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
                Ok(v) => Ok(v),
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForName,
                ))
                | Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForNameContext { .. },
                )) => Ok(ServerCertVerified::assertion()),
                Err(e) => Err(e),
            }
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    /// The connector for `require`, `verify-ca` and `verify-full`.
    pub fn connector(s: &SourceSettings) -> Result<tokio_postgres_rustls::MakeRustlsConnect> {
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::internal("TLS protocol versions").with_source(e))?;
        let roots = roots(s)?;
        let config = match (s.sslmode.as_str(), roots) {
            ("verify-full", Some(roots)) => {
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            ("verify-full" | "verify-ca", None) => {
                return Err(Error::config(format!(
                    "postgres.sslrootcert is required for sslmode = {:?}",
                    s.sslmode
                )))
            }
            (_, roots) => {
                let inner = match roots {
                    Some(roots) => Some(
                        rustls::client::WebPkiServerVerifier::builder_with_provider(
                            roots,
                            provider.clone(),
                        )
                        .build()
                        .map_err(|e| Error::config(format!("postgres.sslrootcert: {e}")))?,
                    ),
                    None => None,
                };
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(Lenient { inner, provider }))
                    .with_no_client_auth()
            }
        };
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
    }
}

#[cfg(test)]
mod tests {
    use super::tls;
    use crate::source::tests::settings;

    #[test]
    fn verify_modes_need_a_ca_and_require_does_not() {
        for mode in ["verify-ca", "verify-full"] {
            let err = tls::connector(&settings(mode, None))
                .err()
                .expect("a CA is required");
            assert!(
                err.message().contains("postgres.sslrootcert"),
                "{mode}: {err:?}"
            );
            assert_eq!(err.exit_code(), 78);
        }
        assert!(tls::connector(&settings("require", None)).is_ok());
    }

    #[test]
    fn an_unreadable_or_empty_ca_bundle_is_named() {
        let err = tls::connector(&settings("verify-full", Some("/no/such/ca.pem".into())))
            .err()
            .expect("missing file");
        assert!(
            err.message().contains("postgres.sslrootcert")
                && err.message().contains("/no/such/ca.pem"),
            "{err:?}"
        );
        // A file without any certificate: verify-ca cannot build a verifier from no roots.
        let dir = tempfile::tempdir().expect("temp dir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let err = tls::connector(&settings("verify-ca", Some(empty)))
            .err()
            .expect("no roots");
        assert!(err.message().contains("postgres.sslrootcert"), "{err:?}");
    }
}
