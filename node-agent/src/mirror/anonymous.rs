//! Anonymous reads shared through the scheduler: when the registry serves
//! an object (a blob, a manifest by digest) to a caller without
//! credentials, the cluster learns that it is public, so another node may
//! serve it from the swarm to anonymous callers while the registry is down
//! (the default offline policy) without ever having read it itself.

use std::time::Duration;

use super::auth::AuthKey;
use super::state::Mirror;

/// A scheduler slower than this does not hold up the offline answer.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

fn object(key: &AuthKey) -> Option<proto::RegistryObject> {
    (!key.object.is_empty()).then(|| proto::RegistryObject {
        registry: key.registry.clone(),
        repository: key.repository.clone(),
        digest: key.object.clone(),
    })
}

/// Tells the scheduler the registry just served `key` without credentials
/// (nothing for a caller that sent some: that says nothing of anonymity).
pub fn share(mirror: &Mirror, key: &AuthKey) {
    let schedulers = &mirror.daemon.schedulers;
    if !key.credential.is_empty() || !schedulers.is_configured() {
        return;
    }
    let Some(object) = object(key) else { return };
    let req = proto::ReportAnonymousReadRequest {
        object: Some(object),
        host_id: mirror.daemon.host_id.clone(),
    };
    let schedulers = schedulers.clone();
    tokio::spawn(async move {
        if let Err(e) = schedulers.report_anonymous_read(req).await {
            tracing::debug!(error = %e, "anonymous read not shared with the scheduler");
        }
    });
}

/// Whether some member recently saw the registry serve `key`'s object
/// without credentials.
pub async fn seen_by_cluster(mirror: &Mirror, key: &AuthKey) -> bool {
    let schedulers = &mirror.daemon.schedulers;
    let Some(object) = object(key) else {
        return false;
    };
    if !schedulers.is_configured() {
        return false;
    }
    let req = proto::CheckAnonymousReadRequest {
        object: Some(object),
    };
    match tokio::time::timeout(CHECK_TIMEOUT, schedulers.check_anonymous_read(req)).await {
        Ok(Ok(resp)) => {
            if resp.readable {
                tracing::debug!(
                    age_ms = resp.age_ms,
                    "the cluster saw this object read anonymously"
                );
            }
            resp.readable
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "cannot ask the scheduler about anonymous reads");
            false
        }
        Err(_) => {
            tracing::debug!("scheduler slow to tell about anonymous reads");
            false
        }
    }
}
