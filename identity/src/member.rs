//! A member's TLS: its own certificate and the CAs it trusts, read from the
//! `--tls-dir` files and re-read when they change (renewal, CA rotation)
//! without restarting; server and client configurations that require the
//! other side to be a cluster member of an expected role.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use crate::ca::{IssuedMember, CA_CERT_FILE, CERT_FILE, KEY_FILE};
use crate::name::{Identity, Role, MEMBER_DNS_NAME};
use crate::TlsError;

/// What one reading of the files gives.
struct Material {
    identity: Identity,
    key: Arc<CertifiedKey>,
    not_after: SystemTime,
    server_verifier: Arc<WebPkiServerVerifier>,
    client_verifier: Arc<dyn ClientCertVerifier>,
    /// Modification times of the files it was read from.
    stamp: Option<[SystemTime; 3]>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Material {
    fn from_pem(
        cert_pem: &str,
        key_pem: &str,
        ca_pem: &str,
        stamp: Option<[SystemTime; 3]>,
    ) -> Result<Material, TlsError> {
        let bad = |what: &str, e: String| TlsError::Certificate(format!("{what}: {e}"));
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| bad("member certificate", e.to_string()))?;
        let leaf = chain
            .first()
            .ok_or_else(|| bad("member certificate", "no certificate in the file".into()))?;
        let identity =
            Identity::from_der(leaf).map_err(|e| bad("member certificate", e.to_string()))?;
        let not_after = crate::der_not_after(leaf)?;
        let key_der = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| bad("member key", e.to_string()))?;
        let provider = provider();
        let signing_key = provider
            .key_provider
            .load_private_key(key_der)
            .map_err(|e| bad("member key", e.to_string()))?;
        let key = CertifiedKey::new(chain, signing_key);
        key.keys_match().map_err(|e| {
            bad(
                "member key",
                format!("does not belong to the certificate: {e}"),
            )
        })?;
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            let ca = ca.map_err(|e| bad("CA bundle", e.to_string()))?;
            roots.add(ca).map_err(|e| bad("CA bundle", e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(bad("CA bundle", "no certificate in the file".into()));
        }
        let roots = Arc::new(roots);
        let server_verifier =
            WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| bad("CA bundle", e.to_string()))?;
        let client_verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| bad("CA bundle", e.to_string()))?;
        Ok(Material {
            identity,
            key: Arc::new(key),
            not_after,
            server_verifier,
            client_verifier,
            stamp,
        })
    }
}

/// The member's current TLS material, shared by every configuration made
/// from it: a reload changes them all at once.
#[derive(Clone)]
pub struct MemberTls {
    dir: Option<PathBuf>,
    current: Arc<RwLock<Arc<Material>>>,
}

impl std::fmt::Debug for MemberTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberTls")
            .field("identity", &self.identity())
            .field("dir", &self.dir)
            .finish()
    }
}

fn stamp(dir: &Path) -> Option<[SystemTime; 3]> {
    let m = |f: &str| {
        std::fs::metadata(dir.join(f))
            .and_then(|m| m.modified())
            .ok()
    };
    Some([m(CERT_FILE)?, m(KEY_FILE)?, m(CA_CERT_FILE)?])
}

fn read_dir(dir: &Path) -> Result<Material, TlsError> {
    let stamp = stamp(dir);
    Material::from_pem(
        &crate::read(&dir.join(CERT_FILE))?,
        &crate::read(&dir.join(KEY_FILE))?,
        &crate::read(&dir.join(CA_CERT_FILE))?,
        stamp,
    )
}

impl MemberTls {
    /// Reads `ca.crt`, `tls.crt` and `tls.key` from `dir`.
    pub fn load(dir: &Path) -> Result<MemberTls, TlsError> {
        let material = read_dir(dir).map_err(|e| e.in_dir(dir))?;
        Ok(MemberTls {
            dir: Some(dir.to_path_buf()),
            current: Arc::new(RwLock::new(Arc::new(material))),
        })
    }

    /// From an issued member held in memory (tests, the all-in-one mode).
    pub fn from_issued(issued: &IssuedMember) -> Result<MemberTls, TlsError> {
        let material = Material::from_pem(&issued.cert_pem, &issued.key_pem, &issued.ca_pem, None)?;
        Ok(MemberTls {
            dir: None,
            current: Arc::new(RwLock::new(Arc::new(material))),
        })
    }

    fn material(&self) -> Arc<Material> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn identity(&self) -> Identity {
        self.material().identity.clone()
    }

    /// When the current certificate expires.
    pub fn not_after(&self) -> SystemTime {
        self.material().not_after
    }

    /// Re-reads the files if they changed. A new reading that is broken, or
    /// that names another member, is refused and the current one kept: a
    /// member's identity (its host id) never changes under it.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let Some(dir) = &self.dir else {
            return Ok(false);
        };
        let now = stamp(dir);
        if now.is_some() && now == self.material().stamp {
            return Ok(false);
        }
        let fresh = read_dir(dir).map_err(|e| e.in_dir(dir))?;
        let identity = self.identity();
        if fresh.identity != identity {
            return Err(TlsError::Certificate(format!(
                "{} now names {}, not {identity}: kept the old one",
                dir.display(),
                fresh.identity
            )));
        }
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
        Ok(true)
    }

    /// Takes a newly issued certificate held in memory (the operator's own,
    /// which it signs itself); refused if it names another member.
    pub fn renew_from(&self, issued: &IssuedMember) -> Result<(), TlsError> {
        let fresh = Material::from_pem(&issued.cert_pem, &issued.key_pem, &issued.ca_pem, None)?;
        let identity = self.identity();
        if fresh.identity != identity {
            return Err(TlsError::Certificate(format!(
                "a renewal naming {} for {identity}",
                fresh.identity
            )));
        }
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
        Ok(())
    }

    /// Re-reads the files every `every` while the returned task runs.
    pub fn spawn_reloader(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let tls = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                match tls.reload() {
                    Ok(true) => {
                        tracing::info!(identity = %tls.identity(), "cluster certificate reloaded")
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "cluster certificate not reloaded"),
                }
            }
        })
    }

    /// Serves members of `callers` roles only: a client without a
    /// certificate of this cluster, or of another role, fails the handshake.
    pub fn server_config(&self, callers: &[Role]) -> Arc<rustls::ServerConfig> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_client_cert_verifier(Arc::new(MemberClientVerifier {
                tls: self.clone(),
                roles: callers.to_vec(),
            }))
            .with_cert_resolver(Arc::new(OwnKey(self.clone())));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// Serves anyone (who then checks this member's certificate): the
    /// issuer, whose callers have no certificate yet.
    pub fn server_config_for_anyone(&self) -> Arc<rustls::ServerConfig> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(OwnKey(self.clone())));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// Calls members of `servers` roles only, showing this member's
    /// certificate.
    pub fn client_config(&self, servers: &[Role]) -> Arc<rustls::ClientConfig> {
        Arc::new(self.client_config_inner(servers))
    }

    /// The same, offering `alpn` (gRPC needs `h2`).
    pub fn client_config_alpn(
        &self,
        servers: &[Role],
        alpn: &[&[u8]],
    ) -> Arc<rustls::ClientConfig> {
        let mut config = self.client_config_inner(servers);
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    fn client_config_inner(&self, servers: &[Role]) -> rustls::ClientConfig {
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(MemberServerVerifier {
                tls: self.clone(),
                roles: servers.to_vec(),
            }))
            .with_client_cert_resolver(Arc::new(OwnKey(self.clone())))
    }

    pub fn acceptor(&self, callers: &[Role]) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.server_config(callers))
    }

    pub fn connector(&self, servers: &[Role]) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.client_config_alpn(servers, &[b"h2"]))
    }
}

/// The identity of the other side of an established connection.
pub fn peer_identity(connection: &rustls::CommonState) -> Option<Identity> {
    let leaf = connection.peer_certificates()?.first()?;
    Identity::from_der(leaf).ok()
}

/// The server name every member is checked against.
pub(crate) fn member_server_name() -> ServerName<'static> {
    ServerName::try_from(MEMBER_DNS_NAME).expect("a valid DNS name")
}

pub(crate) fn role_allowed(
    leaf: &CertificateDer<'_>,
    roles: &[Role],
) -> Result<Identity, rustls::Error> {
    let identity = Identity::from_der(leaf).map_err(|e| {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
            Arc::new(e),
        )))
    })?;
    if roles.contains(&identity.role) {
        Ok(identity)
    } else {
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::ApplicationVerificationFailure,
        ))
    }
}

/// Presents the member's current certificate, as server and as client.
#[derive(Debug)]
struct OwnKey(MemberTls);

impl ResolvesServerCert for OwnKey {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.material().key.clone())
    }
}

impl ResolvesClientCert for OwnKey {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.material().key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A server is a member of an expected role, whatever address was dialled.
#[derive(Debug)]
struct MemberServerVerifier {
    tls: MemberTls,
    roles: Vec<Role>,
}

impl ServerCertVerifier for MemberServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialled: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let material = self.tls.material();
        material.server_verifier.verify_server_cert(
            end_entity,
            intermediates,
            &member_server_name(),
            ocsp_response,
            now,
        )?;
        role_allowed(end_entity, &self.roles)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls
            .material()
            .server_verifier
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls
            .material()
            .server_verifier
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.tls
            .material()
            .server_verifier
            .supported_verify_schemes()
    }
}

/// A client is a member of an expected role; no certificate, no connection.
#[derive(Debug)]
struct MemberClientVerifier {
    tls: MemberTls,
    roles: Vec<Role>,
}

impl ClientCertVerifier for MemberClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The hints only help a client holding several certificates pick
        // one; members hold one.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.tls
            .material()
            .client_verifier
            .verify_client_cert(end_entity, intermediates, now)?;
        role_allowed(end_entity, &self.roles)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls
            .material()
            .client_verifier
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls
            .material()
            .client_verifier
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.tls
            .material()
            .client_verifier
            .supported_verify_schemes()
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::Ca;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const DAY: Duration = Duration::from_secs(86400);

    fn member(ca: &Ca, role: Role, name: &str) -> MemberTls {
        let id = Identity::new(role, name).unwrap();
        MemberTls::from_issued(&ca.issue(&id, DAY).unwrap()).unwrap()
    }

    /// One handshake over loopback; the identities each side saw, or the
    /// client's error.
    async fn handshake(
        server: &MemberTls,
        callers: &[Role],
        client: &MemberTls,
        servers: &[Role],
    ) -> Result<(Identity, Identity), String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = server.acceptor(callers);
        let accepted = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
            let seen = peer_identity(tls.get_ref().1).ok_or("no client identity")?;
            tls.write_all(b"ok").await.map_err(|e| e.to_string())?;
            Ok::<_, String>(seen)
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = ServerName::IpAddress(addr.ip().into());
        let mut tls = client
            .connector(servers)
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 2];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        let server_seen = peer_identity(tls.get_ref().1).ok_or("no server identity")?;
        let client_seen = accepted.await.unwrap()?;
        Ok((server_seen, client_seen))
    }

    #[tokio::test]
    async fn members_see_each_others_identity() {
        let ca = Ca::generate("test", DAY).unwrap();
        let seed = member(&ca, Role::Seed, "seed-0");
        let node = member(&ca, Role::Node, "node-a");
        let (server, client) = handshake(&seed, &[Role::Node], &node, &[Role::Seed])
            .await
            .unwrap();
        assert_eq!(server, seed.identity());
        assert_eq!(client, node.identity());
    }

    #[tokio::test]
    async fn another_ca_or_an_unexpected_role_is_refused() {
        let ca = Ca::generate("test", DAY).unwrap();
        let other_ca = Ca::generate("other", DAY).unwrap();
        let node = member(&ca, Role::Node, "node-a");
        let stranger = member(&other_ca, Role::Node, "node-a");
        assert!(handshake(&node, &[Role::Node], &stranger, &[Role::Node])
            .await
            .is_err());
        assert!(handshake(&stranger, &[Role::Node], &node, &[Role::Node])
            .await
            .is_err());
        // A node cannot pass for a scheduler, nor call a seed-only port.
        let other = member(&ca, Role::Node, "node-b");
        assert!(handshake(&other, &[Role::Node], &node, &[Role::Scheduler])
            .await
            .is_err());
        assert!(handshake(&other, &[Role::Seed], &node, &[Role::Node])
            .await
            .is_err());
    }

    #[test]
    fn a_reload_keeps_the_identity() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate("test", DAY).unwrap();
        let id = Identity::new(Role::Node, "node-a").unwrap();
        ca.issue(&id, DAY).unwrap().write(dir.path()).unwrap();
        let tls = MemberTls::load(dir.path()).unwrap();
        let first = tls.not_after();
        std::thread::sleep(Duration::from_millis(1100));
        ca.issue(&id, 2 * DAY).unwrap().write(dir.path()).unwrap();
        assert!(tls.reload().unwrap());
        assert!(tls.not_after() > first, "renewed certificate in use");
        let other = Identity::new(Role::Node, "node-b").unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        ca.issue(&other, DAY).unwrap().write(dir.path()).unwrap();
        assert!(tls.reload().is_err());
        assert_eq!(tls.identity(), id);
    }

    #[test]
    fn a_certificate_without_identity_or_with_a_foreign_key_is_refused() {
        let ca = Ca::generate("test", DAY).unwrap();
        let a = ca
            .issue(&Identity::new(Role::Node, "a").unwrap(), DAY)
            .unwrap();
        let b = ca
            .issue(&Identity::new(Role::Node, "b").unwrap(), DAY)
            .unwrap();
        let mixed = IssuedMember {
            key_pem: b.key_pem.clone(),
            ..a.clone()
        };
        assert!(MemberTls::from_issued(&mixed).is_err());
        // The CA's own certificate names no member.
        let ca_as_member = IssuedMember {
            cert_pem: ca.cert_pem().to_string(),
            key_pem: ca.key_pem().to_string(),
            ..a
        };
        assert!(MemberTls::from_issued(&ca_as_member).is_err());
    }
}
