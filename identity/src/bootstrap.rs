//! A member in Kubernetes gets its certificate from the operator's issuer:
//! it generates its key, sends a signing request with its service-account
//! token (projected for the `dragonfly` audience, bound to its pod), and
//! gets back a certificate naming what the token proves (its node, or its
//! pod). It renews the same way at two thirds of the certificate's life.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::{Deserialize, Serialize};

use crate::ca::{CA_CERT_FILE, CERT_FILE, KEY_FILE};
use crate::member::{member_server_name, role_allowed, MemberTls};
use crate::name::Role;
use crate::TlsError;

/// The audience a member's projected token is issued for.
pub const TOKEN_AUDIENCE: &str = "dragonfly";
pub const ISSUE_PATH: &str = "/v1/certificates";
pub const DEFAULT_CA_FILE: &str = "/etc/dragonfly/ca/ca.crt";
pub const DEFAULT_TOKEN_FILE: &str = "/var/run/secrets/dragonfly/token";

/// Attempts before a member gives up getting its first certificate (the
/// operator may still be starting): about five minutes.
const FIRST_ATTEMPTS: u32 = 100;
const RETRY_PAUSE: Duration = Duration::from_secs(3);

#[derive(Debug, Serialize, Deserialize)]
pub struct IssueRequest {
    /// PEM certificate signing request; only its key is used.
    pub csr: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct IssueResponse {
    pub certificate: String,
    /// Every CA members trust now.
    pub ca_bundle: String,
}

#[derive(Debug, Clone)]
pub struct Bootstrap {
    /// The issuer, e.g. https://dragonfly-operator.dragonfly-system.svc:8443.
    pub url: String,
    /// The cluster CA bundle that proves the issuer is the operator.
    pub ca_file: PathBuf,
    /// The projected service-account token, re-read for every request.
    pub token_file: PathBuf,
}

/// The issuer is a member with the operator role, whatever name was dialled.
#[derive(Debug)]
struct OperatorOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for OperatorOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialled: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0
            .verify_server_cert(end_entity, intermediates, &member_server_name(), ocsp, now)?;
        role_allowed(end_entity, &[Role::Operator])?;
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

impl Bootstrap {
    fn client(&self) -> Result<reqwest::Client, TlsError> {
        let pem = crate::read(&self.ca_file)?;
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let ca = ca.map_err(|e| TlsError::Certificate(format!("issuer CA: {e}")))?;
            roots
                .add(ca)
                .map_err(|e| TlsError::Certificate(format!("issuer CA: {e}")))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| TlsError::Certificate(format!("issuer CA: {e}")))?;
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Certificate(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(OperatorOnly(verifier)))
            .with_no_client_auth();
        reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .timeout(Duration::from_secs(15))
            .no_proxy()
            .build()
            .map_err(|e| TlsError::Issuer(e.to_string()))
    }

    /// One request: a new key and the certificate the issuer gives for it,
    /// written to `dir` in the `--tls-dir` layout.
    pub async fn obtain_once(&self, dir: &Path) -> Result<(), TlsError> {
        let token = crate::read(&self.token_file)?;
        let (key, csr) = crate::ca::new_request()?;
        let url = format!("{}{ISSUE_PATH}", self.url.trim_end_matches('/'));
        let answer = self
            .client()?
            .post(&url)
            .bearer_auth(token.trim())
            .json(&IssueRequest { csr })
            .send()
            .await
            .map_err(|e| TlsError::Issuer(format!("{url}: {e}")))?;
        let status = answer.status();
        if !status.is_success() {
            let body = answer.text().await.unwrap_or_default();
            return Err(TlsError::Issuer(format!(
                "{url} answered {status}: {}",
                body.chars().take(300).collect::<String>()
            )));
        }
        let issued: IssueResponse = answer
            .json()
            .await
            .map_err(|e| TlsError::Issuer(format!("{url}: malformed answer: {e}")))?;
        crate::write(&dir.join(CA_CERT_FILE), &issued.ca_bundle, false)?;
        crate::write(&dir.join(KEY_FILE), &key.serialize_pem(), true)?;
        crate::write(&dir.join(CERT_FILE), &issued.certificate, false)
    }

    /// Retries until the issuer answers (it may be starting with the
    /// cluster), for about five minutes.
    pub async fn obtain(&self, dir: &Path) -> Result<(), TlsError> {
        let mut last = None;
        for attempt in 1..=FIRST_ATTEMPTS {
            match self.obtain_once(dir).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(attempt, error = %e, "no cluster certificate yet");
                    last = Some(e);
                }
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        Err(last.unwrap_or_else(|| TlsError::Issuer("no attempt made".into())))
    }

    /// Renews at two thirds of the certificate's life, and loads the new one.
    pub fn spawn_renewal(self, dir: PathBuf, tls: MemberTls) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let left = tls
                    .not_after()
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                tokio::time::sleep((left / 3).max(Duration::from_secs(30))).await;
                // Keep trying until it expires; a failure is logged each time.
                let renewed = async {
                    self.obtain_once(&dir).await?;
                    tls.reload()
                };
                match renewed.await {
                    Ok(_) => {
                        tracing::info!(identity = %tls.identity(), "cluster certificate renewed")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "renewing the cluster certificate failed");
                        tokio::time::sleep(RETRY_PAUSE * 10).await;
                    }
                }
            }
        })
    }
}

/// The member's TLS from `dir`: obtained from the issuer first when
/// `bootstrap` is given (and then renewed), else as the files are (and
/// re-read when they change, as a mounted Secret is updated).
pub async fn load_member(dir: &Path, bootstrap: Option<Bootstrap>) -> Result<MemberTls, TlsError> {
    match bootstrap {
        Some(bootstrap) => {
            bootstrap.obtain(dir).await?;
            let tls = MemberTls::load(dir)?;
            bootstrap.spawn_renewal(dir.to_path_buf(), tls.clone());
            Ok(tls)
        }
        None => {
            let tls = MemberTls::load(dir)?;
            tls.spawn_reloader(Duration::from_secs(30));
            Ok(tls)
        }
    }
}
