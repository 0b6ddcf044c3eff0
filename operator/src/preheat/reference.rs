//! Image references and file URLs as written in a Preheat, checked before
//! anything is fetched.

use std::fmt;

/// The host Docker Hub's registry answers on (its name is `docker.io`).
pub const DOCKER_HUB_HOST: &str = "registry-1.docker.io";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {reference:?}: {reason}")]
pub struct ReferenceError {
    pub reference: String,
    pub reason: String,
}

/// `registry/repository[:tag][@digest]`, normalised as docker does
/// (`busybox` is `docker.io/library/busybox:latest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// As written in the spec.
    pub original: String,
    /// `host[:port]` as named, lower-case (`docker.io` for Docker Hub).
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:<hex>`.
    pub digest: Option<String>,
}

impl ImageRef {
    pub fn parse(text: &str) -> Result<Self, ReferenceError> {
        let err = |reason: &str| ReferenceError {
            reference: text.chars().take(300).collect(),
            reason: reason.to_string(),
        };
        if text.trim() != text {
            return Err(err("leading or trailing whitespace"));
        }
        if text.contains("://") {
            return Err(err(
                "an image reference has no scheme (write host[:port]/repository:tag; list plain-HTTP registries in insecureRegistries)",
            ));
        }
        let parsed = oci_client::Reference::try_from(text).map_err(|e| {
            if repository_part(text)
                .bytes()
                .any(|b| b.is_ascii_uppercase())
            {
                err("repository name must be lowercase")
            } else {
                err(&e.to_string())
            }
        })?;
        if let Some(digest) = parsed.digest() {
            if !is_sha256_digest(digest) {
                return Err(err("only sha256 digests in lower-case hex are supported"));
            }
        }
        Ok(ImageRef {
            original: text.to_string(),
            registry: parsed.registry().to_ascii_lowercase(),
            repository: parsed.repository().to_string(),
            tag: parsed.tag().map(str::to_string),
            digest: parsed.digest().map(str::to_string),
        })
    }

    /// Where the registry answers: Docker Hub's aliases map to its registry host.
    pub fn registry_host(&self) -> &str {
        match self.registry.as_str() {
            "docker.io" | "index.docker.io" => DOCKER_HUB_HOST,
            other => other,
        }
    }

    /// The digest when given (it wins over the tag), else the tag.
    pub fn manifest_reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// The same image for the registry client.
    pub fn oci(&self) -> oci_client::Reference {
        match (&self.tag, &self.digest) {
            (Some(t), Some(d)) => oci_client::Reference::with_tag_and_digest(
                self.registry.clone(),
                self.repository.clone(),
                t.clone(),
                d.clone(),
            ),
            (_, Some(d)) => oci_client::Reference::with_digest(
                self.registry.clone(),
                self.repository.clone(),
                d.clone(),
            ),
            (t, None) => oci_client::Reference::with_tag(
                self.registry.clone(),
                self.repository.clone(),
                t.clone().unwrap_or_else(|| "latest".into()),
            ),
        }
    }

    /// The same repository at `digest`.
    pub fn oci_at(&self, digest: &str) -> oci_client::Reference {
        oci_client::Reference::with_digest(
            self.registry.clone(),
            self.repository.clone(),
            digest.to_string(),
        )
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.original)
    }
}

/// The repository of a reference as written: no registry host, tag or digest.
fn repository_part(text: &str) -> &str {
    let name = text.split('@').next().unwrap_or_default();
    let name = match name.rsplit_once(':') {
        Some((before, tag)) if !tag.contains('/') => before,
        _ => name,
    };
    match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => rest,
        _ => name,
    }
}

/// `sha256:` and 64 lower-case hex digits: what dfdaemon keys content by.
pub fn is_sha256_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// A file URL: http or https with a host.
pub fn check_url(text: &str) -> Result<url::Url, String> {
    let parsed = url::Url::parse(text).map_err(|e| format!("invalid URL {text:?}: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "invalid URL {text:?}: scheme {:?} is not http or https",
            parsed.scheme()
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("invalid URL {text:?}: no host"));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn docker_hub_short_names_are_normalised() {
        let r = ImageRef::parse("busybox").expect("parses");
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.registry_host(), "registry-1.docker.io");
        assert_eq!(r.repository, "library/busybox");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(r.manifest_reference(), "latest");
        let r = ImageRef::parse("team/app:1.2").expect("parses");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("docker.io", "team/app")
        );
    }

    #[test]
    fn registry_with_port_tag_and_digest() {
        let r = ImageRef::parse("127.0.0.1:5055/library/app:v1").expect("parses");
        assert_eq!(r.registry, "127.0.0.1:5055");
        assert_eq!(r.registry_host(), "127.0.0.1:5055");
        assert_eq!(r.repository, "library/app");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.digest, None);

        let r = ImageRef::parse(&format!("registry.example.com/a/b/c@{D}")).expect("parses");
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_deref(), Some(D));
        assert_eq!(r.manifest_reference(), D);
        assert_eq!(r.oci().digest(), Some(D));

        // Tag and digest: the digest is what is fetched, the tag is kept.
        let r = ImageRef::parse(&format!("r.example.com/app:v1@{D}")).expect("parses");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.manifest_reference(), D);
        assert_eq!(r.oci().tag(), Some("v1"));
    }

    #[test]
    fn bad_references_say_why() {
        for (bad, why) in [
            ("", "at least one component"),
            ("Registry.example.com/App:v1", "lowercase"),
            ("app:", "invalid reference format"),
            ("app:v1 ", "whitespace"),
            ("http://r.example.com/app:v1", "no scheme"),
            ("app@sha256:abc", "invalid reference format"),
            (
                "app@md5:0123456789abcdef0123456789abcdef",
                "unsupported digest algorithm",
            ),
            (
                &format!("app@{}", D.to_uppercase().replace("SHA256", "sha256")),
                "lower-case hex",
            ),
            ("a/b:c:d", "invalid reference format"),
        ] {
            let e = ImageRef::parse(bad).expect_err(bad);
            assert!(e.to_string().contains(why), "{bad:?}: {e}");
            assert!(e.to_string().starts_with("invalid image reference"), "{e}");
        }
    }

    #[test]
    fn digests() {
        assert!(is_sha256_digest(D));
        assert!(!is_sha256_digest(&D[..70]));
        assert!(!is_sha256_digest(&D.replace("sha256", "sha512")));
        assert!(!is_sha256_digest(&D.replace('9', "G")));
    }

    #[test]
    fn urls() {
        assert!(check_url("https://files.example.com/a.tar").is_ok());
        assert!(check_url("http://10.0.0.1:8080/x?y=1").is_ok());
        assert!(check_url("ftp://files.example.com/a")
            .unwrap_err()
            .contains("not http"));
        assert!(check_url("not a url")
            .unwrap_err()
            .starts_with("invalid URL"));
    }
}
