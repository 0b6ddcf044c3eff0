//! Apply step: list what the cluster owns, server-side apply every desired
//! object, delete what is no longer wanted.
//!
//! Every desired object is applied on every reconcile: server-side apply is
//! idempotent (an unchanged object is not written, its resourceVersion stays),
//! and applying unconditionally is what reverts a `kubectl edit` of a field
//! the operator owns. The applied-hash annotation only tells a spec-driven
//! update from a reverted drift in events.

use std::collections::BTreeMap;

use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use tracing::{debug, info, warn};

use crate::build::{
    managed_kinds, Desired, APPLIED_HASH, LABEL_INSTANCE, LABEL_MANAGED_BY, MANAGER,
};

/// Objects found in the namespace that carry this cluster's labels, by (kind, name).
#[derive(Debug, Default, Clone)]
pub struct Existing {
    pub objects: BTreeMap<(String, String), (ApiResource, DynamicObject)>,
}

impl Existing {
    pub fn get(&self, kind: &str, name: &str) -> Option<&DynamicObject> {
        self.objects
            .get(&(kind.to_string(), name.to_string()))
            .map(|(_, o)| o)
    }

    /// A typed copy of an existing object, if present and well-formed.
    pub fn typed<K: serde::de::DeserializeOwned>(&self, kind: &str, name: &str) -> Option<K> {
        let obj = self.get(kind, name)?;
        serde_json::to_value(obj)
            .ok()
            .and_then(|v| serde_json::from_value(v).ok())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Created,
    /// The spec changed what the object should be.
    Updated,
    /// Same spec, but the object had been edited by someone else: put back.
    Reverted,
    Deleted,
}

/// One write the API server refused, naming the object.
#[derive(Debug, thiserror::Error)]
#[error("{verb} {kind} {name}: {message}")]
pub struct ApplyError {
    /// `apply` or `delete`.
    pub verb: &'static str,
    pub api_version: String,
    pub kind: String,
    pub name: String,
    /// The API server's own message (or the transport error).
    pub message: String,
    #[source]
    pub source: kube::Error,
}

impl ApplyError {
    fn new(verb: &'static str, ar: &ApiResource, name: &str, source: kube::Error) -> Self {
        let message = match &source {
            kube::Error::Api(s) if !s.message.is_empty() => s.message.clone(),
            other => other.to_string(),
        };
        Self {
            verb,
            api_version: ar.api_version.clone(),
            kind: ar.kind.clone(),
            name: name.to_string(),
            message,
            source,
        }
    }

    /// The HTTP status, when the API server answered.
    pub fn code(&self) -> Option<u16> {
        match &self.source {
            kube::Error::Api(s) => Some(s.code),
            _ => None,
        }
    }

    /// Refused for good (invalid, forbidden, ...): retrying the same write
    /// cannot succeed. Conflicts, throttling and server errors can.
    pub fn is_refused(&self) -> bool {
        self.code()
            .is_some_and(|c| (400..500).contains(&c) && c != 409 && c != 429)
    }

    /// The namespace is being deleted: nothing new can be created in it.
    pub fn is_namespace_terminating(&self) -> bool {
        match &self.source {
            kube::Error::Api(s) => {
                s.code == 403
                    && (s.details.as_ref().is_some_and(|d| {
                        d.causes.iter().any(|c| c.reason == "NamespaceTerminating")
                    }) || s.message.contains("because it is being terminated"))
            }
            _ => false,
        }
    }
}

/// What one `execute` did: the writes that landed and the ones refused.
#[derive(Debug, Default)]
pub struct Executed {
    pub changes: Vec<Change>,
    pub failures: Vec<ApplyError>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub verb: Verb,
    pub api_version: String,
    pub kind: String,
    pub name: String,
}

#[derive(Debug, Default)]
pub struct Plan {
    pub apply: Vec<Desired>,
    pub delete: Vec<(ApiResource, String)>,
}

pub fn selector(instance: &str) -> String {
    format!("{LABEL_INSTANCE}={instance},{LABEL_MANAGED_BY}={MANAGER}")
}

/// One LIST per managed kind, filtered by this cluster's labels.
pub async fn observe(client: &Client, ns: &str, instance: &str) -> Result<Existing, kube::Error> {
    let mut out = Existing::default();
    let lp = ListParams::default().labels(&selector(instance));
    for ar in managed_kinds() {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
        for obj in api.list(&lp).await?.items {
            out.objects
                .insert((ar.kind.clone(), obj.name_any()), (ar.clone(), obj));
        }
    }
    Ok(out)
}

/// What to write. Pure: every desired object is applied; objects not
/// controlled by `owner_uid` are never deleted, so a foreign object that
/// copies our labels is left alone.
pub fn plan(desired: Vec<Desired>, existing: &Existing, owner_uid: &str) -> Plan {
    let mut p = Plan::default();
    for (key, (ar, obj)) in &existing.objects {
        let wanted = desired
            .iter()
            .any(|d| d.resource.kind == key.0 && d.name() == key.1);
        let ours = obj
            .owner_references()
            .iter()
            .any(|o| o.uid == owner_uid && o.controller == Some(true));
        if !wanted && ours {
            p.delete.push((ar.clone(), key.1.clone()));
        }
    }
    p.apply = desired;
    p
}

/// Server-side apply then delete, in plan order. A refused write does not
/// stop the others (one invalid object must not keep the rest stale); it is
/// returned with the API server's message. Reports only writes that changed
/// something: a no-op apply keeps the object's resourceVersion.
pub async fn execute(client: &Client, ns: &str, plan: Plan, existing: &mut Existing) -> Executed {
    let mut out = Executed::default();
    let pp = PatchParams::apply(MANAGER).force();
    for d in plan.apply {
        let name = d.name();
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &d.resource);
        let before = existing.get(&d.resource.kind, &name).map(|o| {
            (
                o.resource_version(),
                o.annotations().get(APPLIED_HASH).cloned(),
            )
        });
        let applied = match api.patch(&name, &pp, &Patch::Apply(&d.object)).await {
            Ok(o) => o,
            Err(e) => {
                let e = ApplyError::new("apply", &d.resource, &name, e);
                warn!(kind = %d.resource.kind, %name, error = %e.message, "apply refused");
                out.failures.push(e);
                continue;
            }
        };
        let verb = match before {
            None => Some(Verb::Created),
            Some((rv, _)) if rv == applied.resource_version() => None,
            Some((_, hash)) if hash.as_ref() == d.hash() => Some(Verb::Reverted),
            Some(_) => Some(Verb::Updated),
        };
        existing.objects.insert(
            (d.resource.kind.clone(), name.clone()),
            (d.resource.clone(), applied),
        );
        let Some(verb) = verb else {
            debug!(kind = %d.resource.kind, %name, "unchanged");
            continue;
        };
        info!(kind = %d.resource.kind, %name, ?verb, "applied");
        out.changes.push(Change {
            verb,
            api_version: d.resource.api_version,
            kind: d.resource.kind,
            name,
        });
    }
    for (ar, name) in plan.delete {
        if let Err(e) = delete(client, ns, &ar, &name).await {
            out.failures.push(ApplyError::new("delete", &ar, &name, e));
            continue;
        }
        existing.objects.remove(&(ar.kind.clone(), name.clone()));
        out.changes.push(Change {
            verb: Verb::Deleted,
            api_version: ar.api_version,
            kind: ar.kind,
            name,
        });
    }
    out
}

/// Delete, treating "already gone" as done.
pub async fn delete(
    client: &Client,
    ns: &str,
    ar: &ApiResource,
    name: &str,
) -> Result<(), kube::Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, ar);
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => {
            info!(kind = %ar.kind, %name, "deleted");
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => {
            debug!(kind = %ar.kind, %name, "already gone");
            Ok(())
        }
        Err(e) => Err(e),
    }
}
