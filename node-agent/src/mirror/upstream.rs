//! Which registry a mirror request is for, and the HTTP clients that reach
//! it (each registry may bring its own CA or skip verification).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use url::{Host, Url};

use super::config::{MirrorConfig, RegistryConfig};

/// Docker Hub's registry answers under a different host than its name.
const DOCKER_HUB: &str = "registry-1.docker.io";

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Upstream {
    /// `http` or `https`.
    pub scheme: &'static str,
    /// `host[:port]`, lower-case.
    pub host: String,
}

impl Upstream {
    /// `scheme://host` + `path` (which starts with `/v2/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{}", self.scheme, self.host, path)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("invalid registry {0:?}: expected host[:port] or http(s)://host[:port]")]
    Invalid(String),
    #[error("no upstream registry: send X-Dragonfly-Registry or ?ns=, or configure mirror.default_registry")]
    Missing,
    #[error("registry {host}: {message}")]
    Tls { host: String, message: String },
}

/// Where the upstream came from (for logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Header,
    Namespace,
    Default,
}

/// The header wins, then `ns`, then the configured default.
pub fn resolve(
    header: Option<&str>,
    ns: Option<&str>,
    config: &MirrorConfig,
) -> Result<(Upstream, Origin), UpstreamError> {
    if let Some(value) = header.map(str::trim).filter(|v| !v.is_empty()) {
        return Ok((parse_registry(value, config)?, Origin::Header));
    }
    if let Some(ns) = ns.map(str::trim).filter(|v| !v.is_empty()) {
        return Ok((from_host(ns, None, config)?, Origin::Namespace));
    }
    match &config.default_registry {
        Some(value) => Ok((parse_registry(value, config)?, Origin::Default)),
        None => Err(UpstreamError::Missing),
    }
}

/// `http(s)://host[:port]` (a trailing `/` is allowed, any other path is
/// not) or a bare `host[:port]`.
pub fn parse_registry(value: &str, config: &MirrorConfig) -> Result<Upstream, UpstreamError> {
    let invalid = || UpstreamError::Invalid(value.chars().take(200).collect());
    let Some((scheme, rest)) = value.split_once("://") else {
        return from_host(value, None, config);
    };
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => "http",
        "https" => "https",
        _ => return Err(invalid()),
    };
    let host = rest.strip_suffix('/').unwrap_or(rest);
    from_host(host, Some(scheme), config).map_err(|_| invalid())
}

/// A bare `host[:port]`: Docker Hub's aliases map to its registry host; the
/// scheme is the explicit one, else the registry's setting, else https
/// except for loopback hosts.
pub fn from_host(
    host: &str,
    scheme: Option<&'static str>,
    config: &MirrorConfig,
) -> Result<Upstream, UpstreamError> {
    let invalid = || UpstreamError::Invalid(host.chars().take(200).collect());
    // Parsing as a URL authority rejects user info, paths and bad ports;
    // requiring the round trip to give back the same text rejects anything
    // the parser silently fixed up.
    let url = Url::parse(&format!("https://{host}/")).map_err(|_| invalid())?;
    let parsed_host = url.host().ok_or_else(invalid)?;
    let authority = match url.port() {
        Some(port) => format!("{parsed_host}:{port}"),
        None => parsed_host.to_string(),
    };
    let default_port = host.to_ascii_lowercase() == format!("{parsed_host}:443");
    if authority != host.to_ascii_lowercase() && !default_port {
        return Err(invalid());
    }
    let authority = match authority.as_str() {
        "docker.io" | "index.docker.io" => DOCKER_HUB.to_string(),
        _ => authority,
    };
    let settings = registry_settings(config, &authority, host);
    let loopback = match &parsed_host {
        Host::Domain(d) => *d == "localhost",
        Host::Ipv4(ip) => ip.is_loopback(),
        Host::Ipv6(ip) => ip.is_loopback(),
    };
    let scheme = scheme.unwrap_or(match settings.and_then(|s| s.plain_http) {
        Some(true) => "http",
        Some(false) => "https",
        None if loopback => "http",
        None => "https",
    });
    Ok(Upstream {
        scheme,
        host: authority,
    })
}

/// Settings for a registry, looked up by its canonical host or by the name
/// the request used (`docker.io` for Docker Hub).
fn registry_settings<'a>(
    config: &'a MirrorConfig,
    canonical: &str,
    given: &str,
) -> Option<&'a RegistryConfig> {
    config
        .registries
        .get(canonical)
        .or_else(|| config.registries.get(&given.to_ascii_lowercase()))
        .or_else(|| {
            (canonical == DOCKER_HUB)
                .then(|| config.registries.get("docker.io"))
                .flatten()
        })
}

/// One reqwest client per registry with TLS settings, the shared one for
/// the rest; built on first use.
pub struct Clients {
    config: MirrorConfig,
    default: reqwest::Client,
    custom: Mutex<HashMap<String, reqwest::Client>>,
}

impl Clients {
    pub fn new(config: &MirrorConfig) -> Result<Arc<Self>, UpstreamError> {
        let default = builder(config).build().map_err(|e| UpstreamError::Tls {
            host: "*".into(),
            message: e.to_string(),
        })?;
        Ok(Arc::new(Clients {
            config: config.clone(),
            default,
            custom: Mutex::new(HashMap::new()),
        }))
    }

    pub fn for_upstream(&self, upstream: &Upstream) -> Result<reqwest::Client, UpstreamError> {
        let Some(settings) = registry_settings(&self.config, &upstream.host, &upstream.host)
            .filter(|s| s.ca_file.is_some() || s.insecure_skip_verify)
        else {
            return Ok(self.default.clone());
        };
        let mut custom = self.custom.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = custom.get(&upstream.host) {
            return Ok(client.clone());
        }
        let b = with_tls(builder(&self.config), &upstream.host, settings)?;
        let tls = |message: String| UpstreamError::Tls {
            host: upstream.host.clone(),
            message,
        };
        let client = b.build().map_err(|e| tls(e.to_string()))?;
        custom.insert(upstream.host.clone(), client.clone());
        Ok(client)
    }
}

/// Adds a registry's CA bundle and skip-verify setting to `b` (shared with
/// the back-to-source client, which downloads blobs from the same hosts).
pub fn with_tls(
    mut b: reqwest::ClientBuilder,
    host: &str,
    settings: &RegistryConfig,
) -> Result<reqwest::ClientBuilder, UpstreamError> {
    let tls = |message: String| UpstreamError::Tls {
        host: host.to_string(),
        message,
    };
    if let Some(path) = &settings.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| tls(format!("reading CA file {}: {e}", path.display())))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| tls(format!("CA file {}: {e}", path.display())))?
        {
            b = b.add_root_certificate(cert);
        }
    }
    if settings.insecure_skip_verify {
        b = b.danger_accept_invalid_certs(true);
    }
    Ok(b)
}

/// Registries with TLS settings of their own, by the host their URLs use
/// (`docker.io` settings apply to Docker Hub's registry host).
pub fn tls_overrides(config: &MirrorConfig) -> Vec<(String, &RegistryConfig)> {
    config
        .registries
        .iter()
        .filter(|(_, s)| s.ca_file.is_some() || s.insecure_skip_verify)
        .map(|(host, s)| {
            let host = host.to_ascii_lowercase();
            let host = match host.as_str() {
                "docker.io" | "index.docker.io" => DOCKER_HUB.to_string(),
                _ => host,
            };
            (host, s)
        })
        .collect()
}

fn builder(config: &MirrorConfig) -> reqwest::ClientBuilder {
    let builder = reqwest::Client::builder()
        .connect_timeout(config.connect_timeout)
        // A stalled upstream body ends the response instead of hanging it.
        .read_timeout(config.upstream_timeout);
    config.destinations().apply(builder, 10)
}

impl MirrorConfig {
    /// Whether this node mirrors `upstream` (by host; the scheme is the
    /// registry's own business).
    pub fn mirrors(&self, upstream: &Upstream) -> bool {
        self.mirrored_registries.is_empty()
            || self.mirrored_registries.iter().any(|entry| {
                parse_registry(entry, self).is_ok_and(|allowed| allowed.host == upstream.host)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(scheme: &'static str, host: &str) -> Upstream {
        Upstream {
            scheme,
            host: host.into(),
        }
    }

    #[test]
    fn header_then_ns_then_default() {
        let mut config = MirrorConfig::default();
        assert_eq!(
            resolve(Some("http://10.0.0.5:5000"), Some("docker.io"), &config),
            Ok((up("http", "10.0.0.5:5000"), Origin::Header))
        );
        assert_eq!(
            resolve(None, Some("docker.io"), &config),
            Ok((up("https", DOCKER_HUB), Origin::Namespace))
        );
        assert_eq!(resolve(None, None, &config), Err(UpstreamError::Missing));
        config.default_registry = Some("ghcr.io".into());
        assert_eq!(
            resolve(Some(""), None, &config),
            Ok((up("https", "ghcr.io"), Origin::Default))
        );
    }

    #[test]
    fn loopback_hosts_default_to_plain_http() {
        let config = MirrorConfig::default();
        assert_eq!(
            from_host("127.0.0.1:5000", None, &config),
            Ok(up("http", "127.0.0.1:5000"))
        );
        assert_eq!(
            from_host("localhost:5000", None, &config),
            Ok(up("http", "localhost:5000"))
        );
        assert_eq!(
            from_host("[::1]:5000", None, &config),
            Ok(up("http", "[::1]:5000"))
        );
        assert_eq!(
            from_host("Registry.Example.com", None, &config),
            Ok(up("https", "registry.example.com"))
        );
        assert_eq!(
            from_host("quay.io:443", None, &config),
            Ok(up("https", "quay.io"))
        );
    }

    #[test]
    fn per_registry_scheme() {
        let mut config = MirrorConfig::default();
        config.registries.insert(
            "10.1.1.1:5000".into(),
            RegistryConfig {
                plain_http: Some(true),
                ..Default::default()
            },
        );
        config.registries.insert(
            "127.0.0.1:5443".into(),
            RegistryConfig {
                plain_http: Some(false),
                ..Default::default()
            },
        );
        assert_eq!(
            from_host("10.1.1.1:5000", None, &config),
            Ok(up("http", "10.1.1.1:5000"))
        );
        assert_eq!(
            from_host("127.0.0.1:5443", None, &config),
            Ok(up("https", "127.0.0.1:5443"))
        );
        // An explicit scheme in the header wins.
        assert_eq!(
            parse_registry("https://10.1.1.1:5000/", &config),
            Ok(up("https", "10.1.1.1:5000"))
        );
    }

    #[test]
    fn garbage_registries_are_rejected() {
        let config = MirrorConfig::default();
        for bad in [
            "user@host",
            "host/path",
            "ftp://host",
            "https://host/v2",
            "host:99999",
            "ho st",
            "host?x=1",
            "http://",
            "host#frag",
        ] {
            assert!(
                matches!(parse_registry(bad, &config), Err(UpstreamError::Invalid(_))),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn custom_ca_errors_are_reported() {
        let mut config = MirrorConfig::default();
        config.registries.insert(
            "secure.example".into(),
            RegistryConfig {
                ca_file: Some("/nonexistent/ca.pem".into()),
                ..Default::default()
            },
        );
        let clients = Clients::new(&config).unwrap();
        assert!(clients.for_upstream(&up("https", "other.example")).is_ok());
        let err = clients
            .for_upstream(&up("https", "secure.example"))
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        config.registries.insert(
            "skip.example".into(),
            RegistryConfig {
                insecure_skip_verify: true,
                ..Default::default()
            },
        );
        let clients = Clients::new(&config).unwrap();
        assert!(clients.for_upstream(&up("https", "skip.example")).is_ok());
    }

    #[test]
    fn only_mirrored_registries_are_upstreams() {
        let any = MirrorConfig::default();
        let evil = parse_registry("http://10.6.6.6:5000", &any).unwrap();
        assert!(any.mirrors(&evil));
        let some = MirrorConfig {
            mirrored_registries: vec!["docker.io".into(), "http://10.0.0.5:5000".into()],
            ..Default::default()
        };
        assert!(!some.mirrors(&evil));
        assert!(some.mirrors(&parse_registry("docker.io", &some).unwrap()));
        assert!(some.mirrors(&parse_registry("https://10.0.0.5:5000", &some).unwrap()));
        assert!(!some.mirrors(&parse_registry("10.0.0.5:5001", &some).unwrap()));
    }
}
