//! Apply step: list what the cluster owns, server-side apply only what
//! changed (by the applied-hash annotation), delete what is no longer wanted.
//! An unchanged cluster costs list calls only, never a write.

use std::collections::BTreeMap;

use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use tracing::{debug, info};

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
    Updated,
    Deleted,
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

/// What to write. Pure: objects not controlled by `owner_uid` are never
/// deleted, so a foreign object that copies our labels is left alone.
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
    for d in desired {
        let current = existing
            .get(&d.resource.kind, &d.name())
            .and_then(|o| o.annotations().get(APPLIED_HASH));
        if current != d.hash() {
            p.apply.push(d);
        }
    }
    p
}

/// Server-side apply then delete, in plan order. Returns what changed and
/// the objects as the API server now has them.
pub async fn execute(
    client: &Client,
    ns: &str,
    plan: Plan,
    existing: &mut Existing,
) -> Result<Vec<Change>, kube::Error> {
    let mut changes = Vec::new();
    let pp = PatchParams::apply(MANAGER).force();
    for d in plan.apply {
        let name = d.name();
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &d.resource);
        let verb = if existing.get(&d.resource.kind, &name).is_some() {
            Verb::Updated
        } else {
            Verb::Created
        };
        let applied = api.patch(&name, &pp, &Patch::Apply(&d.object)).await?;
        info!(kind = %d.resource.kind, %name, ?verb, "applied");
        existing.objects.insert(
            (d.resource.kind.clone(), name.clone()),
            (d.resource.clone(), applied),
        );
        changes.push(Change {
            verb,
            api_version: d.resource.api_version,
            kind: d.resource.kind,
            name,
        });
    }
    for (ar, name) in plan.delete {
        delete(client, ns, &ar, &name).await?;
        existing.objects.remove(&(ar.kind.clone(), name.clone()));
        changes.push(Change {
            verb: Verb::Deleted,
            api_version: ar.api_version,
            kind: ar.kind,
            name,
        });
    }
    Ok(changes)
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
