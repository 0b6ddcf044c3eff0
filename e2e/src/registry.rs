//! A small OCI distribution registry for loopback tests: manifests and
//! blobs held in memory, optional HTTP Basic authentication, and counters
//! kept at the registry itself (blob body bytes, requests by kind), so a
//! test can check what reached the registry without trusting dfdaemon.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;

use crate::origin::{chunks, parse_range, sha256_hex};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

#[derive(Default)]
pub struct RegistryStats {
    pub blob_bytes: AtomicU64,
    pub blob_gets: AtomicU64,
    pub blob_heads: AtomicU64,
    pub manifest_requests: AtomicU64,
    pub unauthorized: AtomicU64,
    /// TLS handshakes that failed (a registry served over TLS only).
    pub failed_handshakes: AtomicU64,
}

#[derive(Default)]
struct Content {
    blobs: HashMap<String, Bytes>,
    /// (repository, tag or digest) -> manifest bytes
    manifests: HashMap<(String, String), Bytes>,
    /// Blobs linked to each repository, as a real registry scopes them; a
    /// blob pushed with `push_blob` (unlinked) is served under any name.
    links: HashMap<String, HashSet<String>>,
    /// Repositories readable without credentials although `auth` is set.
    public: HashSet<String>,
}

impl Content {
    fn blob_in(&self, repo: &str, digest: &str) -> Option<Bytes> {
        let linked_elsewhere = self
            .links
            .iter()
            .any(|(r, digests)| r != repo && digests.contains(digest));
        let linked_here = self.links.get(repo).is_some_and(|d| d.contains(digest));
        if linked_elsewhere && !linked_here {
            return None;
        }
        self.blobs.get(digest).cloned()
    }
}

#[derive(Clone)]
struct RegistryState {
    content: Arc<Mutex<Content>>,
    stats: Arc<RegistryStats>,
    /// The exact Authorization value required, if any.
    auth: Option<String>,
    /// Injected failures: answer 503 to this share of blob requests until
    /// the instant passes.
    errors: Arc<Mutex<Option<(f64, std::time::Instant)>>>,
}

pub struct FakeRegistry {
    pub addr: SocketAddr,
    state: RegistryState,
    task: tokio::task::JoinHandle<()>,
}

/// A private CA and a server certificate it signed for loopback
/// (`127.0.0.1`, `::1`, `localhost`): a registry behind a CA that no
/// system trust store holds.
pub struct PrivateCa {
    /// The CA certificate, as a registry's CA bundle file holds it.
    pub ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

impl PrivateCa {
    pub fn generate(name: &str) -> anyhow::Result<PrivateCa> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose, SanType,
        };
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::default();
        ca.distinguished_name.push(DnType::CommonName, name);
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);

        let key = KeyPair::generate()?;
        let mut server = CertificateParams::new(vec!["localhost".to_string()])?;
        server
            .distinguished_name
            .push(DnType::CommonName, "registry");
        server.subject_alt_names.extend([
            SanType::IpAddress([127, 0, 0, 1].into()),
            SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()),
        ]);
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = server.signed_by(&key, &issuer)?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone(), ca_cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )?;
        Ok(PrivateCa {
            ca_pem: ca_cert.pem(),
            server: Arc::new(config),
        })
    }
}

impl FakeRegistry {
    /// `basic_auth`: (user, password) every request must carry.
    pub async fn start(bind: &str, basic_auth: Option<(&str, &str)>) -> anyhow::Result<Self> {
        Self::start_with(bind, basic_auth, None).await
    }

    /// Serves HTTPS only, with a certificate `ca` signed.
    pub async fn start_tls(
        bind: &str,
        basic_auth: Option<(&str, &str)>,
        ca: &PrivateCa,
    ) -> anyhow::Result<Self> {
        Self::start_with(bind, basic_auth, Some(ca.server.clone())).await
    }

    async fn start_with(
        bind: &str,
        basic_auth: Option<(&str, &str)>,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> anyhow::Result<Self> {
        let state = RegistryState {
            content: Arc::default(),
            stats: Arc::default(),
            auth: basic_auth.map(|(u, p)| basic(u, p)),
            errors: Arc::default(),
        };
        let app = Router::new().fallback(serve).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let task = match tls {
            None => tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            }),
            Some(config) => tokio::spawn(serve_tls(listener, app, config, state.stats.clone())),
        };
        Ok(FakeRegistry { addr, state, task })
    }

    /// `host:port`, as containerd puts it in `ns`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Stores a blob; returns its digest.
    pub fn push_blob(&self, data: Bytes) -> String {
        let digest = sha256_hex(&data);
        self.lock().blobs.insert(digest.clone(), data);
        digest
    }

    /// Stores a blob linked to `repo`: other repositories answer
    /// BLOB_UNKNOWN for it unless it is linked to them too.
    pub fn push_blob_to(&self, repo: &str, data: Bytes) -> String {
        let digest = self.push_blob(data);
        self.lock()
            .links
            .entry(repo.to_string())
            .or_default()
            .insert(digest.clone());
        digest
    }

    /// Lets anyone read `repo` without credentials (the rest still need them).
    pub fn make_public(&self, repo: &str) {
        self.lock().public.insert(repo.to_string());
    }

    /// Serves `data` as the blob `digest`, whatever it hashes to: a
    /// registry (or a path to it) that corrupts content.
    pub fn push_blob_as(&self, digest: &str, data: Bytes) {
        self.lock().blobs.insert(digest.to_string(), data);
    }

    /// Stores a manifest under `tag` and its digest; returns the digest.
    pub fn push_manifest(&self, repo: &str, tag: &str, body: Bytes) -> String {
        let digest = sha256_hex(&body);
        let mut content = self.lock();
        content
            .manifests
            .insert((repo.to_string(), tag.to_string()), body.clone());
        content
            .manifests
            .insert((repo.to_string(), digest.clone()), body);
        digest
    }

    /// Makes `share` (0..1) of blob requests fail with 503 for `duration`.
    pub fn inject_errors(&self, share: f64, duration: std::time::Duration) {
        *self.state.errors.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((share.clamp(0.0, 1.0), std::time::Instant::now() + duration));
    }

    pub fn stats(&self) -> &RegistryStats {
        &self.state.stats
    }

    pub fn blob_bytes(&self) -> u64 {
        self.state.stats.blob_bytes.load(Ordering::SeqCst)
    }

    /// Stops serving: later connections are refused (an outage).
    pub fn stop(&self) {
        self.task.abort();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Content> {
        self.state.content.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accepts TLS connections and serves `app` on each; a failed handshake
/// (a client that does not trust the certificate) is counted and dropped.
async fn serve_tls(
    listener: tokio::net::TcpListener,
    app: Router,
    config: Arc<rustls::ServerConfig>,
    stats: Arc<RegistryStats>,
) {
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            continue;
        };
        let (acceptor, app, stats) = (acceptor.clone(), app.clone(), stats.clone());
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(tcp).await else {
                stats.failed_handshakes.fetch_add(1, Ordering::SeqCst);
                return;
            };
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app))
                .await;
        });
    }
}

/// The `Authorization` value of HTTP Basic credentials.
pub fn basic(user: &str, password: &str) -> String {
    use base64_lite::encode;
    format!("Basic {}", encode(format!("{user}:{password}").as_bytes()))
}

/// Tiny standard base64 encoder (the test crate needs nothing more).
mod base64_lite {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(input: &[u8]) -> String {
        let mut out = String::new();
        for chunk in input.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

fn oci_error(status: StatusCode, code: &str) -> Response {
    let body = format!(r#"{{"errors":[{{"code":"{code}","message":"{code}"}}]}}"#);
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn serve(State(state): State<RegistryState>, request: Request) -> Response {
    let method = request.method().clone();
    let headers = request.headers().clone();
    let path = request.uri().path().to_string();
    let repo_of_path = path
        .strip_prefix("/v2/")
        .and_then(|rest| rest.rsplit_once('/'))
        .and_then(|(head, _)| head.rsplit_once('/'))
        .map(|(repo, _)| repo.to_string());
    let public = repo_of_path.as_ref().is_some_and(|repo| {
        state
            .content
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .public
            .contains(repo)
    });
    if let (Some(required), false) = (&state.auth, public) {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if given != Some(required.as_str()) {
            state.stats.unauthorized.fetch_add(1, Ordering::SeqCst);
            let mut resp = oci_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"fake-registry\""),
            );
            return resp;
        }
    }
    if method != Method::GET && method != Method::HEAD {
        return oci_error(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED");
    }
    let failing = state
        .errors
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .is_some_and(|(share, until)| {
            std::time::Instant::now() < until && rand::random::<f64>() < share
        });
    if failing && path.contains("/blobs/") {
        return oci_error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE");
    }
    if path == "/v2/" || path == "/v2" {
        return (StatusCode::OK, "{}").into_response();
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return oci_error(StatusCode::NOT_FOUND, "NOT_FOUND");
    };
    let Some((head, last)) = rest.rsplit_once('/') else {
        return oci_error(StatusCode::NOT_FOUND, "NOT_FOUND");
    };
    let Some((repo, kind)) = head.rsplit_once('/') else {
        return oci_error(StatusCode::NOT_FOUND, "NOT_FOUND");
    };
    match kind {
        "manifests" => {
            state.stats.manifest_requests.fetch_add(1, Ordering::SeqCst);
            let found = state
                .content
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .manifests
                .get(&(repo.to_string(), last.to_string()))
                .cloned();
            let Some(body) = found else {
                return oci_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
            };
            let digest = sha256_hex(&body);
            let builder = Response::builder()
                .header(header::CONTENT_TYPE, OCI_MANIFEST)
                .header(header::CONTENT_LENGTH, body.len())
                .header("docker-content-digest", digest);
            let body = if method == Method::HEAD {
                Body::empty()
            } else {
                Body::from(body)
            };
            builder.body(body).unwrap_or_default()
        }
        "blobs" => serve_blob(&state, &method, &headers, repo, last),
        _ => oci_error(StatusCode::NOT_FOUND, "NOT_FOUND"),
    }
}

fn serve_blob(
    state: &RegistryState,
    method: &Method,
    headers: &axum::http::HeaderMap,
    repo: &str,
    digest: &str,
) -> Response {
    let found = state
        .content
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .blob_in(repo, digest);
    let Some(data) = found else {
        return oci_error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN");
    };
    let len = data.len() as u64;
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|v| parse_range(v, len));
    let (status, start, end) = match range {
        None => (StatusCode::OK, 0, len),
        Some(Some((s, e))) => (StatusCode::PARTIAL_CONTENT, s, e + 1),
        Some(None) => return oci_error(StatusCode::RANGE_NOT_SATISFIABLE, "BAD_RANGE"),
    };
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_LENGTH, end - start)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header("docker-content-digest", digest)
        .header(header::ACCEPT_RANGES, "bytes");
    if status == StatusCode::PARTIAL_CONTENT {
        builder = builder.header(
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{}", start, end - 1, len),
        );
    }
    if method == Method::HEAD {
        state.stats.blob_heads.fetch_add(1, Ordering::SeqCst);
        return builder.body(Body::empty()).unwrap_or_default();
    }
    state.stats.blob_gets.fetch_add(1, Ordering::SeqCst);
    // Counted as sent, chunk by chunk: a client that drops the connection
    // mid-blob has not cost the registry the rest.
    let stats = state.stats.clone();
    let stream =
        futures::stream::iter(chunks(data.slice(start as usize..end as usize))).map(move |chunk| {
            stats
                .blob_bytes
                .fetch_add(chunk.len() as u64, Ordering::SeqCst);
            Ok::<_, std::io::Error>(chunk)
        });
    builder.body(Body::from_stream(stream)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64() {
        assert_eq!(super::basic("user", "pass"), "Basic dXNlcjpwYXNz");
        assert_eq!(super::base64_lite::encode(b"ab"), "YWI=");
        assert_eq!(super::base64_lite::encode(b"a"), "YQ==");
    }
}
