//! Cluster identity. Every member of a cluster (dfdaemon on a node, seed
//! peer, scheduler, operator) holds a certificate from the cluster CA naming
//! its role and name; every member port speaks mutual TLS and refuses
//! clients without such a certificate. A host id is the name in its
//! certificate, so no member can speak for another.

pub mod bootstrap;
pub mod ca;
pub mod member;
pub mod name;

use std::path::Path;
use std::time::{Duration, SystemTime};

pub use ca::{Ca, IssuedMember};
pub use member::{peer_identity, MemberTls};
pub use name::{Identity, IdentityError, Role, MEMBER_DNS_NAME};

/// How long a member certificate is valid; members renew at two thirds.
pub const MEMBER_VALIDITY: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Certificate(String),
    #[error("{0}")]
    Request(String),
    #[error("certificate issuer: {0}")]
    Issuer(String),
}

impl TlsError {
    fn io(path: &Path, source: std::io::Error) -> TlsError {
        TlsError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    fn in_dir(self, dir: &Path) -> TlsError {
        match self {
            TlsError::Certificate(m) => TlsError::Certificate(format!("{}: {m}", dir.display())),
            other => other,
        }
    }
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|e| TlsError::io(path, e))
}

/// Writes `contents` to `path` by a rename, so a reader sees the old file or
/// the new one, never half of it; keys are readable by their owner only.
fn write(path: &Path, contents: &str, secret: bool) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| TlsError::io(dir, e))?;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(|e| TlsError::io(&tmp, e))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| TlsError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| TlsError::io(path, e))
}

fn der_not_after(der: &[u8]) -> Result<SystemTime, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    let secs = cert.validity().not_after.timestamp();
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
}

fn pem_not_after(pem: &str) -> Result<SystemTime, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    der_not_after(&der)
}

/// Where a member's identity comes from: the same flags and config keys on
/// dfdaemon and the scheduler.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, clap::Args, serde::Serialize, serde::Deserialize,
)]
#[serde(default, deny_unknown_fields, rename_all = "snake_case")]
pub struct TlsSettings {
    /// The cluster identity: ca.crt, tls.crt and tls.key. Member ports then
    /// speak mutual TLS and accept cluster members only; re-read when the
    /// files change. Unset: plain HTTP to anyone who reaches the port.
    #[arg(long = "tls-dir")]
    pub dir: Option<std::path::PathBuf>,
    /// Get the certificate for --tls-dir from the operator's issuer at this
    /// https URL (with the pod's projected token), and renew it.
    #[arg(long = "tls-bootstrap")]
    pub bootstrap: Option<String>,
    /// The CA bundle that proves the issuer is the cluster's operator.
    #[arg(long = "tls-bootstrap-ca")]
    pub bootstrap_ca: Option<std::path::PathBuf>,
    /// The projected service-account token (audience dragonfly).
    #[arg(long = "tls-bootstrap-token")]
    pub bootstrap_token: Option<std::path::PathBuf>,
}

impl TlsSettings {
    /// Flags given on the command line win over the file's.
    pub fn overridden_by(self, flags: TlsSettings) -> TlsSettings {
        TlsSettings {
            dir: flags.dir.or(self.dir),
            bootstrap: flags.bootstrap.or(self.bootstrap),
            bootstrap_ca: flags.bootstrap_ca.or(self.bootstrap_ca),
            bootstrap_token: flags.bootstrap_token.or(self.bootstrap_token),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if let Some(url) = &self.bootstrap {
            if self.dir.is_none() {
                return Err("tls bootstrap needs a tls dir to write the certificate to".into());
            }
            if !url.starts_with("https://") {
                return Err(format!("tls bootstrap URL {url:?} is not https://"));
            }
        }
        Ok(())
    }

    /// The member's TLS, or None when no identity is configured.
    pub async fn load(&self) -> Result<Option<MemberTls>, TlsError> {
        let Some(dir) = &self.dir else {
            return Ok(None);
        };
        let bootstrap = self.bootstrap.as_ref().map(|url| bootstrap::Bootstrap {
            url: url.clone(),
            ca_file: self
                .bootstrap_ca
                .clone()
                .unwrap_or_else(|| bootstrap::DEFAULT_CA_FILE.into()),
            token_file: self
                .bootstrap_token
                .clone()
                .unwrap_or_else(|| bootstrap::DEFAULT_TOKEN_FILE.into()),
        });
        bootstrap::load_member(dir, bootstrap).await.map(Some)
    }
}
