//! Reads the registry CA bundles a `DragonflyCluster` references
//! (`spec.registryConfigs[].caBundle`) before anything is applied: a bundle
//! that is missing, or holds no PEM certificate, stops the reconcile with a
//! condition and a Warning event instead of rolling pods that could not
//! start (a projected volume of a missing key) or would refuse the bundle.
//!
//! The content itself is never kept: only a digest, which goes into the
//! data-plane pods' config hash so new content rolls them. The operator
//! does not watch Secrets (that would need `list`/`watch` on every Secret
//! in the cluster); a changed bundle is seen at the next reconcile (a
//! change to the cluster or its pods, or the periodic requeue).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;
use kube::Client;
use sha2::{Digest, Sha256};

use crate::crd::{BundleKind, DragonflyClusterSpec};
use crate::validate::SpecProblem;

/// What the referenced objects held, by host: a content digest each, or
/// what is wrong with them.
pub type Resolved = Result<BTreeMap<String, String>, Vec<SpecProblem>>;

/// Fetches every referenced bundle from `namespace`. API failures other
/// than "not found" are errors (retried); missing objects, keys and
/// non-certificates are problems (reported).
pub async fn read(
    client: &Client,
    namespace: &str,
    spec: &DragonflyClusterSpec,
) -> Result<Resolved, kube::Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let mut digests = BTreeMap::new();
    let mut problems = Vec::new();
    for (i, c) in spec.registry_configs.iter().enumerate() {
        let Some((kind, r)) = c.ca_bundle.as_ref().and_then(|b| b.reference()) else {
            continue;
        };
        let (field, what, content) = match kind {
            BundleKind::Secret => {
                let found = secrets.get_opt(&r.name).await?;
                let content =
                    found.map(|s| s.data.unwrap_or_default().get(&r.key).map(|v| v.0.clone()));
                ("secretRef", "Secret", content)
            }
            BundleKind::ConfigMap => {
                let found = config_maps.get_opt(&r.name).await?;
                let content = found.map(|cm| {
                    let text = cm
                        .data
                        .unwrap_or_default()
                        .get(&r.key)
                        .map(|v| v.clone().into_bytes());
                    text.or_else(|| {
                        cm.binary_data
                            .unwrap_or_default()
                            .get(&r.key)
                            .map(|v| v.0.clone())
                    })
                });
                ("configMapRef", "ConfigMap", content)
            }
        };
        let field = format!("spec.registryConfigs[{i}].caBundle.{field}");
        match check(content.as_ref().map(|c| c.as_deref())) {
            Ok(digest) => {
                digests.insert(c.host.to_ascii_lowercase(), digest);
            }
            Err(why) => problems.push(SpecProblem {
                field,
                message: format!("{what} {namespace}/{} {why}", r.name),
            }),
        }
    }
    Ok(if problems.is_empty() {
        Ok(digests)
    } else {
        Err(problems)
    })
}

/// A bundle's digest, or why it cannot be used: `content` is None when the
/// object is missing, Some(None) when it lacks the key.
fn check(content: Option<Option<&[u8]>>) -> Result<String, String> {
    let bytes = match content {
        None => return Err("does not exist".into()),
        Some(None) => return Err("has no such key".into()),
        Some(Some(b)) => b,
    };
    // What dfdaemon accepts as a bundle: at least one PEM certificate.
    let pem = std::str::from_utf8(bytes).unwrap_or_default();
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err("holds no PEM certificate under that key".into());
    }
    Ok(hex::encode(&Sha256::digest(bytes)[..12]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_objects_keys_and_non_certificates_are_problems() {
        assert_eq!(check(None), Err("does not exist".into()));
        assert_eq!(check(Some(None)), Err("has no such key".into()));
        assert!(check(Some(Some(b"not a cert"))).is_err());
        let pem = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let a = check(Some(Some(pem))).expect("a certificate");
        let b = check(Some(Some(
            b"-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n",
        )))
        .expect("a certificate");
        assert_ne!(a, b, "different content, different digest");
    }
}
