//! What an image is made of, asked of its registry (with `oci-client`):
//! tag → digest, image index → the selected platforms' manifests → their
//! config and layer digests. Only manifests are fetched here; blobs are the
//! dfdaemons' job, so the origin serves each blob once.

use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::RegistryOperation;
use serde::Deserialize;
use tracing::{debug, info_span, Instrument};

use super::crd::ManifestStatus;
use super::credentials::{basic_header, Credentials};
use super::platform::{self, IndexEntry, Platform, PlatformMissing};
use super::reference::{is_sha256_digest, ImageRef};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
/// Everything a pull by tag may get back.
pub const ACCEPT_ANY: &[&str] = &[OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];
const ACCEPT_IMAGE: &[&str] = &[OCI_MANIFEST, DOCKER_MANIFEST];
/// Bounds the work (and memory) one manifest may ask for.
const MAX_BLOBS_PER_MANIFEST: usize = 512;
/// One registry round trip, token included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Why an image could not be resolved. Only `Unreachable` is worth retrying.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("image {image}: not found in the registry ({detail})")]
    NotFound { image: String, detail: String },
    #[error("image {image}: unauthorised at {registry} ({detail}); check spec.pullSecrets")]
    Unauthorized {
        image: String,
        registry: String,
        detail: String,
    },
    #[error("image {image}: {source}")]
    PlatformMissing {
        image: String,
        source: PlatformMissing,
    },
    #[error("image {image}: {detail}")]
    Unsupported { image: String, detail: String },
    #[error("image {image}: registry {registry} unreachable ({detail})")]
    Unreachable {
        image: String,
        registry: String,
        detail: String,
    },
}

impl ResolveError {
    pub fn is_transient(&self) -> bool {
        matches!(self, ResolveError::Unreachable { .. })
    }

    /// A short, stable reason for conditions and events.
    pub fn reason(&self) -> &'static str {
        match self {
            ResolveError::NotFound { .. } => "ImageNotFound",
            ResolveError::Unauthorized { .. } => "Unauthorized",
            ResolveError::PlatformMissing { .. } => "PlatformMissing",
            ResolveError::Unsupported { .. } => "UnsupportedImage",
            ResolveError::Unreachable { .. } => "RegistryUnreachable",
        }
    }
}

/// One platform manifest with every blob it names (kept in memory; the
/// status holds only counts, see `crd::ManifestStatus`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResolvedManifest {
    pub platform: Option<String>,
    pub digest: String,
    /// The config blob first, then the layers.
    pub blobs: Vec<BlobRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlobRef {
    pub digest: String,
    pub size: i64,
}

/// An image as the cluster will hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// The index, or the single manifest, the reference names.
    pub digest: String,
    pub manifests: Vec<ResolvedManifest>,
}

/// The registries of one Preheat run: which are plain HTTP, and the
/// credentials for each.
pub struct Registries {
    client: oci_client::Client,
    plain_http: Vec<String>,
    credentials: Credentials,
}

impl Registries {
    /// `plain_http`: `host[:port]` reached over HTTP; loopback hosts always are.
    pub fn new(plain_http: &[String], credentials: Credentials) -> Self {
        let plain_http: Vec<String> = plain_http.iter().map(|h| h.to_ascii_lowercase()).collect();
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(plain_http.clone()),
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(30)),
            // Indexes are resolved here, never by the client's own guess.
            platform_resolver: None,
            ..ClientConfig::default()
        };
        Registries {
            client: oci_client::Client::new(config),
            plain_http,
            credentials,
        }
    }

    /// The same settings with every loopback host of `images` added as plain HTTP.
    pub fn for_images(
        images: &[ImageRef],
        plain_http: &[String],
        credentials: Credentials,
    ) -> Self {
        let mut hosts = plain_http.to_vec();
        for i in images {
            if is_loopback(i.registry_host()) && !hosts.iter().any(|h| h == i.registry_host()) {
                hosts.push(i.registry_host().to_string());
            }
        }
        Registries::new(&hosts, credentials)
    }

    /// `http` or `https` for this image's registry.
    pub fn scheme(&self, image: &ImageRef) -> &'static str {
        if self.plain_http.iter().any(|h| h == image.registry_host()) {
            "http"
        } else {
            "https"
        }
    }

    /// `scheme://host`, as dfdaemon's `X-Dragonfly-Registry` and task URLs want it.
    pub fn base_url(&self, image: &ImageRef) -> String {
        format!("{}://{}", self.scheme(image), image.registry_host())
    }

    fn auth(&self, image: &ImageRef) -> RegistryAuth {
        match self.credentials.for_registry(&image.registry) {
            Some(b) => RegistryAuth::Basic(b.username.clone(), b.password.clone()),
            None => RegistryAuth::Anonymous,
        }
    }

    /// The `Authorization` header the origin wants for this repository
    /// (a bearer token for token registries, Basic for the others), if any.
    pub async fn authorization(&self, image: &ImageRef) -> Result<Option<String>, ResolveError> {
        let auth = self.auth(image);
        let reference = image.oci();
        let call = self.client.auth(&reference, &auth, RegistryOperation::Pull);
        match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
            Err(_) => Err(self.unreachable(image, "no answer within 60s")),
            Ok(Err(e)) => Err(self.classify(image, e)),
            Ok(Ok(Some(token))) => Ok(Some(format!("Bearer {token}"))),
            Ok(Ok(None)) => Ok(self
                .credentials
                .for_registry(&image.registry)
                .map(basic_header)),
        }
    }

    /// Resolves `image` for `platforms` (used only when it is an index).
    pub async fn resolve(
        &self,
        image: &ImageRef,
        platforms: &[Platform],
    ) -> Result<Resolution, ResolveError> {
        let span = info_span!("resolve", image = %image);
        async move {
            let (body, digest) = self.fetch(image, &image.oci(), ACCEPT_ANY).await?;
            let parsed = parse(&body).map_err(|detail| self.unsupported(image, detail))?;
            debug!(%digest, "manifest fetched");
            let manifests = match parsed {
                Parsed::Image(blobs) => vec![ResolvedManifest {
                    platform: None,
                    digest: digest.clone(),
                    blobs,
                }],
                Parsed::Index(entries) => {
                    let selected = platform::select(&entries, platforms).map_err(|source| {
                        ResolveError::PlatformMissing {
                            image: image.to_string(),
                            source,
                        }
                    })?;
                    let mut out = Vec::new();
                    for (platform, entry) in selected {
                        if !is_sha256_digest(&entry.digest) {
                            return Err(self.unsupported(
                                image,
                                format!("index entry {} is not a sha256 digest", entry.digest),
                            ));
                        }
                        let (body, _) = self
                            .fetch(image, &image.oci_at(&entry.digest), ACCEPT_IMAGE)
                            .await?;
                        let blobs = match parse(&body) {
                            Ok(Parsed::Image(blobs)) => blobs,
                            Ok(Parsed::Index(_)) => {
                                return Err(self.unsupported(
                                    image,
                                    format!("{} is a nested image index", entry.digest),
                                ))
                            }
                            Err(detail) => return Err(self.unsupported(image, detail)),
                        };
                        out.push(ResolvedManifest {
                            platform: Some(platform.to_string()),
                            digest: entry.digest.clone(),
                            blobs,
                        });
                    }
                    out
                }
            };
            Ok(Resolution { digest, manifests })
        }
        .instrument(span)
        .await
    }

    /// The blobs of an image resolved earlier in this generation (by a
    /// previous operator process), read again by the manifest digests the
    /// status recorded: never by tag, so a tag moved meanwhile changes nothing.
    pub async fn reread(
        &self,
        image: &ImageRef,
        digest: &str,
        recorded: &[ManifestStatus],
    ) -> Result<Resolution, ResolveError> {
        let span = info_span!("reread", image = %image);
        async move {
            let mut manifests = Vec::with_capacity(recorded.len());
            for m in recorded {
                if !is_sha256_digest(&m.digest) {
                    return Err(self.unsupported(
                        image,
                        format!("recorded manifest {} is not a sha256 digest", m.digest),
                    ));
                }
                let (body, _) = self
                    .fetch(image, &image.oci_at(&m.digest), ACCEPT_IMAGE)
                    .await?;
                let blobs = match parse(&body) {
                    Ok(Parsed::Image(blobs)) => blobs,
                    Ok(Parsed::Index(_)) => {
                        return Err(
                            self.unsupported(image, format!("{} is an image index", m.digest))
                        )
                    }
                    Err(detail) => return Err(self.unsupported(image, detail)),
                };
                manifests.push(ResolvedManifest {
                    platform: m.platform.clone(),
                    digest: m.digest.clone(),
                    blobs,
                });
            }
            Ok(Resolution {
                digest: digest.to_string(),
                manifests,
            })
        }
        .instrument(span)
        .await
    }

    async fn fetch(
        &self,
        image: &ImageRef,
        reference: &oci_client::Reference,
        accept: &[&str],
    ) -> Result<(Vec<u8>, String), ResolveError> {
        let auth = self.auth(image);
        let call = self.client.pull_manifest_raw(reference, &auth, accept);
        match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
            Err(_) => Err(self.unreachable(image, "no answer within 60s")),
            Ok(Err(e)) => Err(self.classify(image, e)),
            Ok(Ok(found)) => Ok(found),
        }
    }

    fn unsupported(&self, image: &ImageRef, detail: String) -> ResolveError {
        ResolveError::Unsupported {
            image: image.to_string(),
            detail,
        }
    }

    pub(super) fn unreachable(&self, image: &ImageRef, detail: &str) -> ResolveError {
        ResolveError::Unreachable {
            image: image.to_string(),
            registry: self.base_url(image),
            detail: detail.to_string(),
        }
    }

    fn classify(&self, image: &ImageRef, e: OciDistributionError) -> ResolveError {
        let img = image.to_string();
        let registry = self.base_url(image);
        let not_found = |detail: String| ResolveError::NotFound {
            image: img.clone(),
            detail,
        };
        let unauthorized = |detail: String| ResolveError::Unauthorized {
            image: img.clone(),
            registry: registry.clone(),
            detail,
        };
        match e {
            OciDistributionError::UnauthorizedError { .. } => {
                unauthorized("the registry answered 401".into())
            }
            OciDistributionError::AuthenticationFailure(why) => {
                unauthorized(format!("token request refused: {}", short(&why)))
            }
            OciDistributionError::ImageManifestNotFoundError(why) => not_found(short(&why)),
            OciDistributionError::RegistryError { envelope, .. } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                let text = envelope
                    .errors
                    .iter()
                    .map(|e| format!("{:?}: {}", e.code, e.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                if codes.iter().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::NotFound
                            | OciErrorCode::BlobUnknown
                    )
                }) {
                    not_found(short(&text))
                } else if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
                {
                    unauthorized(short(&text))
                } else if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Toomanyrequests))
                {
                    self.unreachable(image, &format!("rate limited: {}", short(&text)))
                } else {
                    self.unsupported(image, format!("registry refused: {}", short(&text)))
                }
            }
            OciDistributionError::ServerError { code, message, .. } => match code {
                404 => not_found(format!("HTTP 404 {}", short(&message))),
                401 | 403 => unauthorized(format!("HTTP {code} {}", short(&message))),
                408 | 429 | 500..=599 => {
                    self.unreachable(image, &format!("HTTP {code} {}", short(&message)))
                }
                _ => self.unsupported(
                    image,
                    format!("registry answered HTTP {code} {}", short(&message)),
                ),
            },
            OciDistributionError::RequestError(e) => self.unreachable(image, &error_chain(&e)),
            OciDistributionError::IoError(e) => self.unreachable(image, &e.to_string()),
            OciDistributionError::DigestError(e) => {
                self.unsupported(image, format!("registry served the wrong content: {e}"))
            }
            other => self.unsupported(image, short(&other.to_string())),
        }
    }
}

/// A reqwest error with its causes ("error sending request: connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    short(&text)
}

fn short(s: &str) -> String {
    let one_line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > 300 {
        one_line.chars().take(300).collect::<String>() + "…"
    } else {
        one_line
    }
}

fn is_loopback(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A manifest's content: an index's entries, or an image's blobs (config first).
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    Index(Vec<IndexEntry>),
    Image(Vec<BlobRef>),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    #[serde(default)]
    schema_version: Option<i64>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<IndexEntry>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
    #[serde(default)]
    size: i64,
}

pub fn parse(body: &[u8]) -> Result<Parsed, String> {
    let raw: RawManifest =
        serde_json::from_slice(body).map_err(|e| format!("manifest is not valid JSON: {e}"))?;
    let media_type = raw.media_type.as_deref().unwrap_or_default();
    if raw.schema_version == Some(1) || media_type == DOCKER_SCHEMA1 {
        return Err("Docker schema 1 manifests are not supported; push the image again with a current client".into());
    }
    if media_type == OCI_INDEX || media_type == DOCKER_LIST || raw.manifests.is_some() {
        return Ok(Parsed::Index(raw.manifests.unwrap_or_default()));
    }
    let Some(config) = raw.config else {
        return Err(format!(
            "manifest is neither an image index nor an image manifest (mediaType {media_type:?})"
        ));
    };
    let blobs: Vec<BlobRef> = std::iter::once(config)
        .chain(raw.layers)
        .map(|d| BlobRef {
            digest: d.digest,
            size: d.size,
        })
        .collect();
    if blobs.len() > MAX_BLOBS_PER_MANIFEST {
        return Err(format!(
            "manifest has {} blobs, more than the {MAX_BLOBS_PER_MANIFEST} a Preheat handles",
            blobs.len()
        ));
    }
    if let Some(bad) = blobs
        .iter()
        .find(|b| !is_sha256_digest(&b.digest) || b.size < 0)
    {
        return Err(format!(
            "blob {} (size {}) is not a sha256 digest with a size",
            bad.digest, bad.size
        ));
    }
    Ok(Parsed::Image(blobs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn parses_an_image_manifest_config_first() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}",
            "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":10}},
            "layers":[{{"digest":"{}","size":20}},{{"digest":"{}","size":30}}]}}"#,
            d('a'),
            d('b'),
            d('c')
        );
        let Parsed::Image(blobs) = parse(body.as_bytes()).expect("parses") else {
            panic!("not an image")
        };
        let got: Vec<(String, i64)> = blobs.into_iter().map(|b| (b.digest, b.size)).collect();
        assert_eq!(got, [(d('a'), 10), (d('b'), 20), (d('c'), 30)]);
    }

    #[test]
    fn parses_indexes_with_or_without_media_type() {
        let body = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"digest":"{}","size":5,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#,
            d('e')
        );
        let Parsed::Index(entries) = parse(body.as_bytes()).expect("parses") else {
            panic!("not an index")
        };
        assert_eq!(
            entries[0].platform().map(|p| p.to_string()).as_deref(),
            Some("linux/arm64/v8")
        );
        let list = format!(r#"{{"schemaVersion":2,"mediaType":"{DOCKER_LIST}"}}"#);
        assert_eq!(parse(list.as_bytes()), Ok(Parsed::Index(vec![])));
    }

    #[test]
    fn refuses_what_it_cannot_preheat() {
        let cases = [
            ("{", "not valid JSON"),
            (r#"{"schemaVersion":1,"fsLayers":[]}"#, "schema 1"),
            (r#"{"schemaVersion":2}"#, "neither an image index nor"),
            (
                r#"{"schemaVersion":2,"config":{"digest":"md5:00","size":1}}"#,
                "not a sha256 digest",
            ),
        ];
        for (body, why) in cases {
            let e = parse(body.as_bytes()).expect_err(body);
            assert!(e.contains(why), "{body}: {e}");
        }
    }

    #[tokio::test]
    async fn registry_answers_become_clear_errors() {
        use crate::preheat::fakes::FakeRegistry;
        let reg = FakeRegistry::start().await;
        let digest = reg.put_image("app", Some("v1"), &[(d('a'), 1), (d('b'), 2)]);
        let m = reg.put_image("multi", None, &[(d('a'), 1), (d('b'), 2)]);
        let entry = |digest: &str| {
            serde_json::json!({"schemaVersion": 2, "manifests": [{"digest": digest, "size": 1,
                "platform": {"os": "linux", "architecture": "amd64"}}]})
        };
        let index = reg.put("multi", Some("v1"), OCI_INDEX, &entry(&m));
        reg.put("multi", Some("nested"), OCI_INDEX, &entry(&index));
        let amd64 = [Platform::parse("linux/amd64").expect("platform")];
        let img = |r: &str| ImageRef::parse(&format!("{}/{r}", reg.host())).expect("ref");
        let regs = Registries::for_images(&[img("app:v1")], &[], Credentials::default());

        let ok = regs
            .resolve(&img("app:v1"), &amd64)
            .await
            .expect("resolves");
        assert_eq!(ok.digest, digest);
        assert_eq!(ok.manifests[0].platform, None);
        let by_digest = regs
            .resolve(&img(&format!("app@{digest}")), &[])
            .await
            .expect("by digest");
        assert_eq!(by_digest, ok);
        let via_index = regs.resolve(&img("multi:v1"), &amd64).await.expect("index");
        assert_eq!(via_index.digest, index);
        assert_eq!(
            via_index.manifests[0].platform.as_deref(),
            Some("linux/amd64")
        );
        assert_eq!(via_index.manifests[0].digest, m);
        let e = regs
            .resolve(&img("multi:nested"), &amd64)
            .await
            .expect_err("nested");
        assert_eq!(e.reason(), "UnsupportedImage");
        assert!(e.to_string().contains("is a nested image index"), "{e}");

        let e = regs
            .resolve(&img("app:v2"), &amd64)
            .await
            .expect_err("no tag");
        assert_eq!(e.reason(), "ImageNotFound");
        assert!(!e.is_transient());
        assert!(e.to_string().contains("not found in the registry"), "{e}");

        reg.require("Basic c29tZW9uZTplbHNl");
        let e = regs
            .resolve(&img("app:v1"), &amd64)
            .await
            .expect_err("denied");
        assert_eq!(e.reason(), "Unauthorized", "{e}");
        assert!(e.to_string().contains("check spec.pullSecrets"), "{e}");
        let creds = Credentials::from_docker_config(
            format!(
                r#"{{"auths":{{"{}":{{"username":"someone","password":"else"}}}}}}"#,
                reg.host()
            )
            .as_bytes(),
            "test",
        )
        .expect("creds");
        let regs = Registries::for_images(&[img("app:v1")], &[], creds);
        assert!(regs.resolve(&img("app:v1"), &amd64).await.is_ok());
        assert_eq!(
            regs.authorization(&img("app:v1"))
                .await
                .expect("auth")
                .as_deref(),
            Some("Basic c29tZW9uZTplbHNl")
        );
    }

    #[test]
    fn loopback_registries_are_plain_http() {
        assert!(is_loopback("127.0.0.1:5055"));
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("registry.example.com"));
        assert!(!is_loopback("10.0.0.1:5000"));
        let images = [
            ImageRef::parse("127.0.0.1:5055/app:v1").expect("ref"),
            ImageRef::parse("r.example.com/app:v1").expect("ref"),
            ImageRef::parse("insecure.example.com:5000/app:v1").expect("ref"),
        ];
        let regs = Registries::for_images(
            &images,
            &["insecure.example.com:5000".to_string()],
            Credentials::default(),
        );
        assert_eq!(regs.base_url(&images[0]), "http://127.0.0.1:5055");
        assert_eq!(regs.base_url(&images[1]), "https://r.example.com");
        assert_eq!(
            regs.base_url(&images[2]),
            "http://insecure.example.com:5000"
        );
        let hub = ImageRef::parse("busybox").expect("ref");
        assert_eq!(regs.base_url(&hub), "https://registry-1.docker.io");
    }
}
