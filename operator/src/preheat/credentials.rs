//! Registry credentials from `kubernetes.io/dockerconfigjson` pull secrets
//! (the format of `~/.docker/config.json`).

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Deserialize;

/// The key of a `kubernetes.io/dockerconfigjson` Secret's data.
pub const DOCKER_CONFIG_KEY: &str = ".dockerconfigjson";
pub const DOCKER_CONFIG_TYPE: &str = "kubernetes.io/dockerconfigjson";

#[derive(Clone, PartialEq, Eq)]
pub struct Basic {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Basic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a password, not even in a debug log.
        write!(f, "Basic({}, ***)", self.username)
    }
}

/// Credentials by registry (`host[:port]`, Docker Hub's aliases as `docker.io`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    by_registry: BTreeMap<String, Basic>,
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

impl Credentials {
    /// Parses a docker config; `source` names it in error messages (never the content).
    pub fn from_docker_config(json: &[u8], source: &str) -> Result<Self, String> {
        let config: DockerConfig = serde_json::from_slice(json)
            .map_err(|e| format!("{source}: not a docker config JSON: {e}"))?;
        let mut out = Credentials::default();
        for (key, entry) in config.auths {
            let basic = match (entry.username, entry.password, entry.auth) {
                (Some(username), Some(password), _) => Basic { username, password },
                (_, _, Some(auth)) => {
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(auth.trim())
                        .ok()
                        .and_then(|b| String::from_utf8(b).ok())
                        .ok_or_else(|| {
                            format!("{source}: the auth of {key:?} is not base64 of user:password")
                        })?;
                    let (u, p) = decoded.split_once(':').ok_or_else(|| {
                        format!("{source}: the auth of {key:?} is not base64 of user:password")
                    })?;
                    Basic {
                        username: u.to_string(),
                        password: p.to_string(),
                    }
                }
                // Identity tokens and credential helpers are not usable here.
                _ => continue,
            };
            out.by_registry.insert(normalize(&key), basic);
        }
        Ok(out)
    }

    /// Adds `other`'s entries; earlier ones win (the first listed secret).
    pub fn merge(&mut self, other: Credentials) {
        for (k, v) in other.by_registry {
            self.by_registry.entry(k).or_insert(v);
        }
    }

    pub fn for_registry(&self, registry: &str) -> Option<&Basic> {
        self.by_registry.get(&normalize(registry))
    }

    pub fn is_empty(&self) -> bool {
        self.by_registry.is_empty()
    }
}

/// `https://index.docker.io/v1/` → `docker.io`; `http://r:5000/x` → `r:5000`.
fn normalize(key: &str) -> String {
    let no_scheme = key.split_once("://").map_or(key, |(_, rest)| rest);
    let host = no_scheme
        .split('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_string()
        }
        _ => host,
    }
}

/// `Basic base64(user:password)`.
pub fn basic_header(b: &Basic) -> String {
    let token =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", b.username, b.password));
    format!("Basic {token}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_auth_and_username_password_entries() {
        let json = br#"{"auths":{
            "https://index.docker.io/v1/":{"auth":"YWxpY2U6czNjcmV0"},
            "127.0.0.1:5056":{"username":"bob","password":"pw:with:colons"},
            "helper.example.com":{"identitytoken":"x"}
        }}"#;
        let c = Credentials::from_docker_config(json, "secret/s").expect("parses");
        let hub = c.for_registry("docker.io").expect("hub");
        assert_eq!(
            (hub.username.as_str(), hub.password.as_str()),
            ("alice", "s3cret")
        );
        assert!(c.for_registry("registry-1.docker.io").is_some());
        let b = c.for_registry("http://127.0.0.1:5056/").expect("by host");
        assert_eq!(b.password, "pw:with:colons");
        assert!(c.for_registry("helper.example.com").is_none());
        assert_eq!(basic_header(hub), "Basic YWxpY2U6czNjcmV0");
        assert!(!format!("{hub:?}").contains("s3cret"));
    }

    #[test]
    fn bad_configs_name_the_source_not_the_content() {
        let e = Credentials::from_docker_config(b"{not json", "secret/regcred").unwrap_err();
        assert!(
            e.starts_with("secret/regcred: not a docker config JSON"),
            "{e}"
        );
        let e = Credentials::from_docker_config(br#"{"auths":{"r":{"auth":"!!!"}}}"#, "secret/x")
            .unwrap_err();
        assert!(e.contains("not base64 of user:password"), "{e}");
    }

    #[test]
    fn first_secret_wins() {
        let mut a = Credentials::from_docker_config(
            br#"{"auths":{"r":{"username":"a","password":"1"}}}"#,
            "a",
        )
        .expect("a");
        let b = Credentials::from_docker_config(
            br#"{"auths":{"r":{"username":"b","password":"2"},"s":{"username":"c","password":"3"}}}"#,
            "b",
        )
        .expect("b");
        a.merge(b);
        assert_eq!(a.for_registry("r").map(|b| b.username.as_str()), Some("a"));
        assert_eq!(a.for_registry("s").map(|b| b.username.as_str()), Some("c"));
    }
}
