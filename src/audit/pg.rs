//! The audit's SQL connection: its own, from the configuration alone, so audit depends on the
//! `[postgres]` keys and not on the relay's internal settings.
//!
//! TLS keeps libpq's meanings, as the relay's connection does: `disable`/`prefer` connect in clear
//! (prefer falls back), `require` encrypts without verifying (unless `sslrootcert` is given),
//! `verify-ca` checks the chain against `sslrootcert`, `verify-full` also the host name. The
//! session is tagged `application_name = outbox-relay-audit` so DBAs can tell it from the relay.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::{Client, NoTls};

use super::Failure;
use crate::config::Config;

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

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn roots(path: Option<&std::path::Path>) -> Result<Option<Arc<RootCertStore>>, Failure> {
    let Some(path) = path else {
        return Ok(None);
    };
    let bad = |what: String| Failure::Config(format!("postgres.sslrootcert: {what}"));
    let mut store = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
    for cert in certs {
        let cert = cert.map_err(|e| bad(format!("bad PEM in {}: {e}", path.display())))?;
        store
            .add(cert)
            .map_err(|e| bad(format!("unusable certificate in {}: {e}", path.display())))?;
    }
    Ok(Some(Arc::new(store)))
}

/// The connector for `require`, `verify-ca` and `verify-full`.
fn connector(
    mode: &str,
    sslrootcert: Option<&std::path::Path>,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, Failure> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Failure::Internal(format!("TLS protocol versions: {e}")))?;
    let config = match (mode, roots(sslrootcert)?) {
        ("verify-full", Some(roots)) => builder.with_root_certificates(roots).with_no_client_auth(),
        ("verify-full" | "verify-ca", None) => {
            return Err(Failure::Config(format!(
                "postgres.sslrootcert is required for sslmode = {mode:?}"
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
                    .map_err(|e| Failure::Config(format!("postgres.sslrootcert: {e}")))?,
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

/// Verifies the chain but accepts any host name (`verify-ca`), or accepts anything (`require`
/// without a CA).
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
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(inner) = &self.inner else {
            return Ok(ServerCertVerified::assertion());
        };
        match inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Ok(v) => Ok(v),
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
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
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
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
