//! TLS for the SQL connection, with libpq's meanings: `require` encrypts without verifying (unless a
//! CA is given), `verify-ca` checks the chain against `sslrootcert`, `verify-full` also the host name.

use std::path::Path;
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

fn roots(sslrootcert: Option<&Path>) -> Result<Option<Arc<RootCertStore>>> {
    let Some(path) = sslrootcert else {
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
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
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
    connector_for(&s.sslmode, s.sslrootcert.as_deref())
}

/// The connector for `sslmode` (`require`, `verify-ca` or `verify-full`) and the CA bundle at
/// `sslrootcert`: the relay's connections and audit's share it.
pub fn connector_for(
    sslmode: &str,
    sslrootcert: Option<&Path>,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::internal("TLS protocol versions").with_source(e))?;
    let roots = roots(sslrootcert)?;
    let config = match (sslmode, roots) {
        ("verify-full", Some(roots)) => builder.with_root_certificates(roots).with_no_client_auth(),
        ("verify-full" | "verify-ca", None) => {
            return Err(Error::config(format!(
                "postgres.sslrootcert is required for sslmode = {sslmode:?}"
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::tests::settings;

    #[test]
    fn verify_modes_need_a_ca_and_require_does_not() {
        for mode in ["verify-ca", "verify-full"] {
            let err = connector(&settings(mode, None))
                .err()
                .expect("a CA is required");
            assert!(
                err.message().contains("postgres.sslrootcert"),
                "{mode}: {err:?}"
            );
            assert_eq!(err.exit_code(), 78);
        }
        assert!(connector(&settings("require", None)).is_ok());
    }

    #[test]
    fn an_unreadable_or_empty_ca_bundle_is_named() {
        let err = connector(&settings("verify-full", Some("/no/such/ca.pem".into())))
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
        let err = connector(&settings("verify-ca", Some(empty)))
            .err()
            .expect("no roots");
        assert!(err.message().contains("postgres.sslrootcert"), "{err:?}");
    }
}
