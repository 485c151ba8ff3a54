//! Test certificates, made with the `openssl` CLI: a CA and a server certificate for `localhost` and
//! `127.0.0.1` (ECDSA P-256), written once per process into a harness dir ([`Pki::shared`]), as PEM for
//! Postgres and rustls clients and as a PKCS12 keystore for the Kafka broker. [`CertificateAuthority`]
//! makes further, unrelated CAs (a client that trusts the wrong CA must fail).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use anyhow::{bail, Context, Result};

use crate::process;

/// Password of the PKCS12 keystore (and its key) given to the Kafka broker.
pub const KEYSTORE_PASSWORD: &str = "harness-keystore-pw";

/// A certificate authority: a self-signed CA certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertificateAuthority {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A server certificate issued by a [`CertificateAuthority`].
#[derive(Debug, Clone)]
pub struct ServerCert {
    /// PEM certificate.
    pub cert: PathBuf,
    /// PEM private key (PKCS8), mode 0600.
    pub key: PathBuf,
    /// PKCS12 keystore holding key, certificate and CA, protected by [`KEYSTORE_PASSWORD`].
    pub pkcs12: PathBuf,
}

impl CertificateAuthority {
    /// A new CA named `<name>` (files `<dir>/<name>.pem` and `<dir>/<name>.key`).
    pub fn generate(dir: &Path, name: &str) -> Result<CertificateAuthority> {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        openssl(&[
            "req",
            "-x509",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "3650",
            "-subj",
            &format!("/CN=outbox-relay harness {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            path_str(&key)?,
            "-out",
            path_str(&cert)?,
        ])?;
        Ok(CertificateAuthority { cert, key })
    }

    /// A server certificate `<dir>/<name>.{pem,key,p12}` for DNS `localhost` and IP `127.0.0.1`.
    pub fn issue_server(&self, dir: &Path, name: &str) -> Result<ServerCert> {
        let key = dir.join(format!("{name}.key"));
        let csr = dir.join(format!("{name}.csr"));
        let cert = dir.join(format!("{name}.pem"));
        let ext = dir.join(format!("{name}.ext"));
        let pkcs12 = dir.join(format!("{name}.p12"));
        openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            path_str(&key)?,
            "-out",
            path_str(&csr)?,
        ])?;
        std::fs::write(
            &ext,
            "basicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\n\
             subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            path_str(&csr)?,
            "-CA",
            path_str(&self.cert)?,
            "-CAkey",
            path_str(&self.key)?,
            "-CAcreateserial",
            "-days",
            "3650",
            "-sha256",
            "-extfile",
            path_str(&ext)?,
            "-out",
            path_str(&cert)?,
        ])?;
        openssl(&[
            "pkcs12",
            "-export",
            "-inkey",
            path_str(&key)?,
            "-in",
            path_str(&cert)?,
            "-certfile",
            path_str(&self.cert)?,
            "-name",
            "server",
            "-passout",
            &format!("pass:{KEYSTORE_PASSWORD}"),
            "-out",
            path_str(&pkcs12)?,
        ])?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
        Ok(ServerCert { cert, key, pkcs12 })
    }
}

/// The process's test PKI: one CA, one server certificate (localhost, 127.0.0.1).
#[derive(Debug)]
pub struct Pki {
    dir: PathBuf,
    pub ca: CertificateAuthority,
    pub server: ServerCert,
}

static SHARED: OnceLock<Pki> = OnceLock::new();
static SHARED_INIT: Mutex<()> = Mutex::new(());

impl Pki {
    /// Made on first use, in its own harness dir; panics if `openssl` fails.
    pub fn shared() -> &'static Pki {
        if let Some(p) = SHARED.get() {
            return p;
        }
        let _guard = SHARED_INIT.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = SHARED.get() {
            return p;
        }
        let pki = Pki::generate().expect("make the harness test certificates");
        SHARED.get_or_init(|| pki)
    }

    /// A fresh CA and server certificate in a new harness dir.
    pub fn generate() -> Result<Pki> {
        let dir = process::new_process_dir("tls")?;
        let ca = CertificateAuthority::generate(&dir, "ca")?;
        let server = ca.issue_server(&dir, "server")?;
        Ok(Pki { dir, ca, server })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA certificate (PEM) clients must trust.
    pub fn ca_path(&self) -> &Path {
        &self.ca.cert
    }
}

/// Another CA, unrelated to [`Pki::shared`]'s, with its certificate at the returned path (PEM): a client
/// trusting only it must refuse the harness servers.
pub fn other_ca() -> Result<PathBuf> {
    let dir = process::new_process_dir("tls-other")?;
    Ok(CertificateAuthority::generate(&dir, "other-ca")?.cert)
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("non-UTF-8 path {}", p.display()))
}

fn openssl(args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .context("run openssl (is the openssl CLI installed?)")?;
    if !out.status.success() {
        bail!(
            "openssl {} failed ({}): {}{}",
            args.first().unwrap_or(&""),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
