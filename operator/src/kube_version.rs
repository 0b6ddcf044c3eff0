//! The oldest Kubernetes the operator runs on, checked against the API
//! server at start. 1.30 is where `admissionregistration.k8s.io/v1`
//! ValidatingAdmissionPolicy (with `paramKind`/`paramRef`) is GA; the
//! install's node-agent policy needs it.

use anyhow::{bail, Context as _};
use k8s_openapi::apimachinery::pkg::version::Info;
use kube::Client;

/// `(major, minor)`; the chart's `kubeVersion` and the README say the same.
pub const MIN_KUBERNETES: (u32, u32) = (1, 30);

/// Leading decimal digits of `s` (`"30+"` → 30, as GKE and EKS report minors).
fn leading_number(s: &str) -> Option<u32> {
    let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// `(major, minor)` of a version string such as `v1.31.2-eks-abc`, `1.30+`
/// or `v1.29.0`.
pub fn parse_version(s: &str) -> Option<(u32, u32)> {
    let s = s.trim().trim_start_matches('v');
    let mut parts = s.splitn(3, '.');
    let major = leading_number(parts.next()?)?;
    let minor = leading_number(parts.next()?)?;
    Some((major, minor))
}

/// The server's `(major, minor)`: the `major`/`minor` fields when they
/// parse, else `gitVersion`.
pub fn server_version(info: &Info) -> Option<(u32, u32)> {
    match (leading_number(&info.major), leading_number(&info.minor)) {
        (Some(major), Some(minor)) => Some((major, minor)),
        _ => parse_version(&info.git_version),
    }
}

/// Ok when `info` is at least [`MIN_KUBERNETES`]; the error names both.
pub fn check(info: &Info) -> anyhow::Result<(u32, u32)> {
    let Some(v) = server_version(info) else {
        bail!(
            "cannot read the Kubernetes version from the API server (major {:?}, minor {:?}, gitVersion {:?})",
            info.major,
            info.minor,
            info.git_version
        );
    };
    if v < MIN_KUBERNETES {
        bail!(
            "Kubernetes {}.{} ({}) is not supported: dragonfly-operator needs Kubernetes {}.{} or newer (admissionregistration.k8s.io/v1 ValidatingAdmissionPolicy)",
            v.0,
            v.1,
            info.git_version,
            MIN_KUBERNETES.0,
            MIN_KUBERNETES.1
        );
    }
    Ok(v)
}

/// Asks the API server and refuses anything older than [`MIN_KUBERNETES`].
pub async fn ensure_supported(client: &Client) -> anyhow::Result<()> {
    let info = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        client.apiserver_version(),
    )
    .await
    .context("the API server did not report its version within 15s")?
    .context("cannot read the API server version")?;
    let (major, minor) = check(&info)?;
    tracing::info!(version = %info.git_version, major, minor, "Kubernetes version supported");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(major: &str, minor: &str, git: &str) -> Info {
        Info {
            major: major.into(),
            minor: minor.into(),
            git_version: git.into(),
            ..Info::default()
        }
    }

    #[test]
    fn parses_provider_version_strings() {
        assert_eq!(parse_version("v1.31.2-eks-abc"), Some((1, 31)));
        assert_eq!(parse_version("1.30+"), Some((1, 30)));
        assert_eq!(parse_version("v1.29.0"), Some((1, 29)));
        assert_eq!(parse_version("v1.33.1+k3s1"), Some((1, 33)));
        assert_eq!(parse_version("v1.30.5-gke.1014001"), Some((1, 30)));
        assert_eq!(parse_version("garbage"), None);
        assert_eq!(parse_version("v1"), None);
    }

    #[test]
    fn reads_the_fields_first_and_falls_back_to_git_version() {
        assert_eq!(
            server_version(&info("1", "30+", "v1.30.5-gke.1")),
            Some((1, 30))
        );
        assert_eq!(server_version(&info("", "", "v1.32.0")), Some((1, 32)));
        assert_eq!(server_version(&info("", "", "")), None);
    }

    #[test]
    fn refuses_older_than_1_30_and_says_the_minimum() {
        assert!(check(&info("1", "30", "v1.30.0")).is_ok());
        assert!(check(&info("1", "31+", "v1.31.2-eks-abc")).is_ok());
        assert!(check(&info("2", "0", "v2.0.0")).is_ok());
        let e = check(&info("1", "29", "v1.29.4")).unwrap_err().to_string();
        assert!(e.contains("1.30 or newer"), "{e}");
        assert!(e.contains("1.29"), "{e}");
        assert!(check(&info("", "", "nonsense")).is_err());
    }
}
