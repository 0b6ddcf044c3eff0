//! The cluster CA, kept in the Secret `dragonfly-ca` of the operator's
//! namespace: created by the first replica that finds none, rotated when a
//! fifth of its life is left (the bundle members trust then holds the new
//! CA and the previous one, so certificates of both stay valid while
//! members renew), and re-read every few minutes by every replica.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use identity::Ca;
use k8s_openapi::api::core::v1::Secret;
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

fn secret_of(ns: &str, state: &CaState, resource_version: Option<String>) -> Secret {
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
/// loser reads the winner's.
pub async fn ensure(client: &Client, ns: &str) -> Result<CaState, CaError> {
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
                    .create(&PostParams::default(), &secret_of(ns, &state, None))
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
            Some(secret) => {
                let state = parse(&secret)?;
                if !due_for_rotation(&state.ca, SystemTime::now()) {
                    return Ok(state);
                }
                let next = rotated(&state)?;
                let version = secret.metadata.resource_version.clone();
                match api
                    .replace(
                        CA_SECRET,
                        &PostParams::default(),
                        &secret_of(ns, &next, version),
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
pub fn spawn_keeper(client: Client, ns: String, current: watch::Sender<Arc<CaState>>) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(KEEP_EVERY).await;
            match ensure(&client, &ns).await {
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
        let back = parse(&secret_of("ns", &state, None)).unwrap();
        assert_eq!(back.ca.cert_pem(), state.ca.cert_pem());
        assert!(!due_for_rotation(&back.ca, SystemTime::now()));
        let later = SystemTime::now() + CA_VALIDITY * 9 / 10;
        assert!(due_for_rotation(&back.ca, later));
        let next = rotated(&back).unwrap();
        assert!(next.bundle.contains(next.ca.cert_pem()));
        assert!(next.bundle.contains(back.ca.cert_pem()));
    }
}
