//! The cluster CA: creates itself, signs member certificates, and writes
//! both in the `--tls-dir` layout (`ca.crt`, `tls.crt`, `tls.key`; the CA's
//! own directory holds `ca.crt` and `ca.key`).

use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType,
};

use crate::name::{Identity, MEMBER_DNS_NAME};
use crate::TlsError;

pub const CA_CERT_FILE: &str = "ca.crt";
pub const CA_KEY_FILE: &str = "ca.key";
pub const CERT_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";

/// Certificates start this far in the past: a member whose clock runs a
/// little behind the issuer's still accepts a fresh certificate.
const BACKDATE: Duration = Duration::from_secs(3600);

pub struct Ca {
    cert_pem: String,
    key_pem: String,
}

/// A member's certificate and key, with the CA bundle it trusts.
#[derive(Clone)]
pub struct IssuedMember {
    pub identity: Identity,
    pub cert_pem: String,
    pub key_pem: String,
    /// Every CA the member trusts (during a rotation, the old and the new).
    pub ca_pem: String,
}

fn rcgen_error(what: &str) -> impl Fn(rcgen::Error) -> TlsError + '_ {
    move |e| TlsError::Certificate(format!("{what}: {e}"))
}

fn validity(params: &mut CertificateParams, valid_for: Duration) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + valid_for;
}

impl Ca {
    /// A new self-signed CA, valid for `valid_for`.
    pub fn generate(common_name: &str, valid_for: Duration) -> Result<Ca, TlsError> {
        let key = KeyPair::generate().map_err(rcgen_error("generating the CA key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        // Signs member certificates only, never another CA.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut params, valid_for);
        let cert = params
            .self_signed(&key)
            .map_err(rcgen_error("signing the CA"))?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, TlsError> {
        let ca = Ca {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
        };
        ca.issuer()?;
        Ok(ca)
    }

    pub fn load(dir: &Path) -> Result<Ca, TlsError> {
        let cert = crate::read(&dir.join(CA_CERT_FILE))?;
        let key = crate::read(&dir.join(CA_KEY_FILE))?;
        Ca::from_pem(&cert, &key)
    }

    pub fn write(&self, dir: &Path) -> Result<(), TlsError> {
        crate::write(&dir.join(CA_KEY_FILE), &self.key_pem, true)?;
        crate::write(&dir.join(CA_CERT_FILE), &self.cert_pem, false)
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// When the CA itself expires.
    pub fn not_after(&self) -> Result<SystemTime, TlsError> {
        crate::pem_not_after(&self.cert_pem)
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, TlsError> {
        let key = KeyPair::from_pem(&self.key_pem).map_err(rcgen_error("reading the CA key"))?;
        Issuer::from_ca_cert_pem(&self.cert_pem, key).map_err(rcgen_error("reading the CA"))
    }

    fn member_params(
        identity: &Identity,
        valid_for: Duration,
    ) -> Result<CertificateParams, TlsError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, identity.to_string());
        params.distinguished_name = dn;
        let ia5 = |s: String| {
            s.try_into()
                .map_err(|e: rcgen::Error| TlsError::Certificate(format!("name {e}")))
        };
        params.subject_alt_names = vec![
            SanType::DnsName(ia5(MEMBER_DNS_NAME.to_string())?),
            SanType::URI(ia5(identity.uri())?),
        ];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // Every member both serves and calls.
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        validity(&mut params, valid_for);
        Ok(params)
    }

    fn sign(
        &self,
        identity: &Identity,
        public_key: &impl PublicKeyData,
        valid_for: Duration,
    ) -> Result<String, TlsError> {
        let params = Ca::member_params(identity, valid_for)?;
        let cert = params
            .signed_by(public_key, &self.issuer()?)
            .map_err(rcgen_error("signing a member certificate"))?;
        Ok(cert.pem())
    }

    /// A new key and certificate for `identity`.
    pub fn issue(
        &self,
        identity: &Identity,
        valid_for: Duration,
    ) -> Result<IssuedMember, TlsError> {
        let key = KeyPair::generate().map_err(rcgen_error("generating a member key"))?;
        Ok(IssuedMember {
            identity: identity.clone(),
            cert_pem: self.sign(identity, &key, valid_for)?,
            key_pem: key.serialize_pem(),
            ca_pem: self.cert_pem.clone(),
        })
    }

    /// A certificate for `identity` over the key of a signing request. Only
    /// the key is taken from the request: the names are the issuer's.
    pub fn sign_request(
        &self,
        csr_pem: &str,
        identity: &Identity,
        valid_for: Duration,
    ) -> Result<String, TlsError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| TlsError::Request(format!("certificate signing request: {e}")))?;
        self.sign(identity, &csr.public_key, valid_for)
    }
}

impl IssuedMember {
    pub fn write(&self, dir: &Path) -> Result<(), TlsError> {
        std::fs::create_dir_all(dir).map_err(|e| TlsError::io(dir, e))?;
        crate::write(&dir.join(CA_CERT_FILE), &self.ca_pem, false)?;
        crate::write(&dir.join(KEY_FILE), &self.key_pem, true)?;
        crate::write(&dir.join(CERT_FILE), &self.cert_pem, false)
    }
}

/// A signing request for a fresh key: what a member sends the issuer.
pub fn new_request() -> Result<(KeyPair, String), TlsError> {
    let key = KeyPair::generate().map_err(rcgen_error("generating a member key"))?;
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .map_err(rcgen_error("writing a signing request"))?
        .pem()
        .map_err(rcgen_error("writing a signing request"))?;
    Ok((key, csr))
}
