//! The cluster CA, kept in the Secret `dragonfly-ca` of the operator's
//! namespace: created by the first replica that finds none, rotated when a
//! fifth of its life is left (the bundle members trust then holds the new
//! CA and the previous one, so certificates of both stay valid while
//! members renew), and re-read every few minutes by every replica.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use identity::Ca;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::ByteString;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::Client;
use tokio::sync::watch;

pub const CA_SECRET: &str = "dragonfly-ca";
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86400);
const KEEP_EVERY: Duration = Duration::from_secs(300);

/// The CA that signs now, and every CA members should trust.
pub struct CaState {
    pub ca: Ca,
    pub bundle: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("Secret {CA_SECRET}: {0}")]
    Api(#[from] kube::Error),
    #[error("Secret {CA_SECRET}: {0}")]
    Malformed(String),
    #[error("cluster CA: {0}")]
    Tls(#[from] identity::TlsError),
}

fn field(secret: &Secret, key: &str) -> Result<String, CaError> {
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .ok_or_else(|| CaError::Malformed(format!("has no {key}")))?;
    String::from_utf8(bytes.0.clone()).map_err(|_| CaError::Malformed(format!("{key} is not PEM")))
}

fn parse(secret: &Secret) -> Result<CaState, CaError> {
    let ca = Ca::from_pem(&field(secret, "ca.crt")?, &field(secret, "ca.key")?)?;
    let bundle = field(secret, "bundle.crt").unwrap_or_else(|_| ca.cert_pem().to_string());
    Ok(CaState { ca, bundle })
}

/// `owners` with `owner` added unless an owner of that uid is there.
fn with_owner(
    owners: Option<Vec<OwnerReference>>,
    owner: Option<&OwnerReference>,
) -> Option<Vec<OwnerReference>> {
    let mut owners = owners.unwrap_or_default();
    if let Some(o) = owner {
        if !owners.iter().any(|x| x.uid == o.uid) {
            owners.push(o.clone());
        }
    }
    (!owners.is_empty()).then_some(owners)
}

/// Whether the Secret lacks `owner` (and so needs an update to get it).
fn lacks_owner(secret: &Secret, owner: Option<&OwnerReference>) -> bool {
    owner.is_some_and(|o| {
        !secret
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|x| x.uid == o.uid)
    })
}

fn secret_of(
    ns: &str,
    state: &CaState,
    resource_version: Option<String>,
    owners: Option<Vec<OwnerReference>>,
) -> Secret {
    let data = [
        ("ca.crt", state.ca.cert_pem()),
        ("ca.key", state.ca.key_pem()),
        ("bundle.crt", state.bundle.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
    .collect();
    Secret {
        metadata: ObjectMeta {
            name: Some(CA_SECRET.into()),
            namespace: Some(ns.into()),
            resource_version,
            owner_references: owners,
            labels: Some(
                [(
                    crate::build::LABEL_MANAGED_BY.to_string(),
                    crate::build::MANAGER.to_string(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        data: Some(data),
        type_: Some("Opaque".into()),
        ..Secret::default()
    }
}

/// Whether the CA is in the last fifth of its life.
fn due_for_rotation(ca: &Ca, now: SystemTime) -> bool {
    match ca.not_after() {
        Ok(end) => end.duration_since(now).unwrap_or_default() < CA_VALIDITY / 5,
        Err(_) => true,
    }
}

/// A new CA, trusted beside the one it replaces.
fn rotated(old: &CaState) -> Result<CaState, CaError> {
    let ca = Ca::generate("dragonfly cluster CA", CA_VALIDITY)?;
    let bundle = format!("{}{}", ca.cert_pem(), old.ca.cert_pem());
    Ok(CaState { ca, bundle })
}

/// The current CA: read, created or rotated. Replicas racing each other
/// are settled by the API server (create and conditional replace); the
/// loser reads the winner's. With an `owner` (the operator's Deployment)
/// the Secret is created owned by it, and one found without it gets it, so
/// removing the operator removes the CA.
pub async fn ensure(
    client: &Client,
    ns: &str,
    owner: Option<&OwnerReference>,
) -> Result<CaState, CaError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    for _ in 0..3 {
        match api.get_opt(CA_SECRET).await? {
            None => {
                let ca = Ca::generate("dragonfly cluster CA", CA_VALIDITY)?;
                let state = CaState {
                    bundle: ca.cert_pem().to_string(),
                    ca,
                };
                match api
                    .create(
                        &PostParams::default(),
                        &secret_of(ns, &state, None, with_owner(None, owner)),
                    )
                    .await
                {
                    Ok(_) => {
                        tracing::info!(namespace = ns, "cluster CA created");
                        return Ok(state);
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            Some(mut secret) => {
                let state = parse(&secret)?;
                if !due_for_rotation(&state.ca, SystemTime::now()) {
                    if lacks_owner(&secret, owner) {
                        secret.metadata.owner_references =
                            with_owner(secret.metadata.owner_references.take(), owner);
                        match api
                            .replace(CA_SECRET, &PostParams::default(), &secret)
                            .await
                        {
                            Ok(_) => tracing::info!(
                                namespace = ns,
                                "cluster CA Secret now owned by the operator's Deployment"
                            ),
                            Err(kube::Error::Api(e)) if e.code == 409 => continue,
                            // The CA itself is fine; the next keeper round tries again.
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot set the cluster CA Secret's owner")
                            }
                        }
                    }
                    return Ok(state);
                }
                let next = rotated(&state)?;
                let version = secret.metadata.resource_version.clone();
                match api
                    .replace(
                        CA_SECRET,
                        &PostParams::default(),
                        &secret_of(
                            ns,
                            &next,
                            version,
                            with_owner(secret.metadata.owner_references.clone(), owner),
                        ),
                    )
                    .await
                {
                    Ok(_) => {
                        tracing::info!(namespace = ns, "cluster CA rotated");
                        return Ok(next);
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 => continue,
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Err(CaError::Malformed(
        "changed under every attempt to read it".into(),
    ))
}

/// Re-reads (and rotates when due) every few minutes; `current` is told
/// when the bundle changes.
pub fn spawn_keeper(
    client: Client,
    ns: String,
    owner: Option<OwnerReference>,
    current: watch::Sender<Arc<CaState>>,
) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(KEEP_EVERY).await;
            match ensure(&client, &ns, owner.as_ref()).await {
                Ok(state) => {
                    let changed = current.borrow().bundle != state.bundle
                        || current.borrow().ca.cert_pem() != state.ca.cert_pem();
                    if changed {
                        current.send_replace(Arc::new(state));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cluster CA not refreshed"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_round_trips_and_a_rotation_bundles_the_new_ca_with_the_old() {
        let ca = Ca::generate("t", CA_VALIDITY).unwrap();
        let state = CaState {
            bundle: ca.cert_pem().to_string(),
            ca,
        };
        let back = parse(&secret_of("ns", &state, None, None)).unwrap();
        assert_eq!(back.ca.cert_pem(), state.ca.cert_pem());
        assert!(!due_for_rotation(&back.ca, SystemTime::now()));
        let later = SystemTime::now() + CA_VALIDITY * 9 / 10;
        assert!(due_for_rotation(&back.ca, later));
        let next = rotated(&back).unwrap();
        assert!(next.bundle.contains(next.ca.cert_pem()));
        assert!(next.bundle.contains(back.ca.cert_pem()));
    }

    #[test]
    fn the_owner_is_added_once_beside_any_other() {
        let owner = |uid: &str| OwnerReference {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            name: "dragonfly-operator".into(),
            uid: uid.into(),
            ..OwnerReference::default()
        };
        let ca = Ca::generate("t", CA_VALIDITY).unwrap();
        let state = CaState {
            bundle: ca.cert_pem().to_string(),
            ca,
        };
        let bare = secret_of("ns", &state, None, None);
        assert!(lacks_owner(&bare, Some(&owner("a"))));
        assert!(!lacks_owner(&bare, None));
        let owned = secret_of("ns", &state, None, with_owner(None, Some(&owner("a"))));
        assert!(!lacks_owner(&owned, Some(&owner("a"))));
        assert!(lacks_owner(&owned, Some(&owner("b"))));
        let both = with_owner(owned.metadata.owner_references.clone(), Some(&owner("b")));
        assert_eq!(both.as_ref().map(Vec::len), Some(2));
        let again = with_owner(both.clone(), Some(&owner("a")));
        assert_eq!(again, both);
        assert_eq!(with_owner(None, None), None);
    }
}
