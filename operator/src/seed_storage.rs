//! Where seed peers keep their cache: a PersistentVolumeClaim each when
//! claims can bind on this cluster, an emptyDir otherwise (a cluster with
//! no default StorageClass, none named in the spec and no static volume
//! that fits would leave them Pending forever). Pure: the controller lists
//! StorageClasses and PersistentVolumes, this decides.
//!
//! A StatefulSet's `volumeClaimTemplates` cannot be changed, so switching
//! means recreating it. The choice is made when the StatefulSet is created
//! and kept, except in the two cases where recreating is what the user
//! wants: claims that cannot bind (Pending) while no storage exists, and an
//! emptyDir once storage exists. Working seed peers on bound claims are
//! never touched; the cache is only a cache, so a recreate loses nothing
//! the seeds cannot fetch again.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;

pub use crate::build::SeedStorage;
use crate::crd::StorageSpec;

/// The spec field that names the seed peers' StorageClass.
pub const FIELD: &str = "spec.seedPeer.storage.storageClassName";
const DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";
const DEFAULT_CLASS_BETA: &str = "storageclass.beta.kubernetes.io/is-default-class";

/// What the seed peers' StatefulSet will use, and whether the existing one
/// must be recreated to get it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub storage: SeedStorage,
    pub replace: bool,
    /// Why the cache is ephemeral (the condition message), when it is.
    pub why: Option<String>,
}

impl Decision {
    fn keep(storage: SeedStorage, why: Option<String>) -> Self {
        Self {
            storage,
            replace: false,
            why,
        }
    }
}

/// What an existing StatefulSet uses: claims when it has claim templates.
pub fn current(sts: &StatefulSet) -> SeedStorage {
    if sts
        .spec
        .volume_claim_templates
        .as_ref()
        .is_some_and(|t| !t.is_empty())
    {
        SeedStorage::Claims
    } else {
        SeedStorage::Ephemeral
    }
}

/// Whether some of these claims wait for a volume.
pub fn any_pending(claims: &[PersistentVolumeClaim]) -> bool {
    claims
        .iter()
        .any(|c| c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending"))
}

/// The StorageClass claims of `storage` get, when it exists: the one named
/// in the spec, else the cluster's default. An empty name asks for static
/// volumes without a class.
pub fn class_available(storage: &StorageSpec, classes: &[StorageClass]) -> bool {
    match storage.storage_class_name.as_deref() {
        Some("") => false,
        Some(name) => classes
            .iter()
            .any(|c| c.metadata.name.as_deref() == Some(name)),
        None => classes.iter().any(is_default),
    }
}

fn is_default(c: &StorageClass) -> bool {
    c.metadata.annotations.as_ref().is_some_and(|a| {
        [DEFAULT_CLASS, DEFAULT_CLASS_BETA]
            .iter()
            .any(|k| a.get(*k).is_some_and(|v| v == "true"))
    })
}

/// Ok when claims for `replicas` seed peers can bind: a StorageClass
/// provides them, or enough unbound static volumes of the claims' class
/// (none: no class) fit. Err names what is missing and the field to set.
pub fn claims_can_bind(
    storage: &StorageSpec,
    replicas: i32,
    classes: &[StorageClass],
    volumes: &[PersistentVolume],
) -> Result<(), String> {
    if class_available(storage, classes) {
        return Ok(());
    }
    let class = storage.storage_class_name.as_deref().unwrap_or_default();
    let fitting = volumes
        .iter()
        .filter(|v| fits(v, class, &storage.size))
        .count();
    if i32::try_from(fitting).unwrap_or(i32::MAX) >= replicas {
        return Ok(());
    }
    let volumes = format!(
        "{fitting} of the {replicas} unbound ReadWriteOnce PersistentVolume(s) of at least {} they need exist",
        storage.size
    );
    Err(match storage.storage_class_name.as_deref() {
        None => format!("the cluster has no default StorageClass, {FIELD} is unset, and {volumes} without a class"),
        Some("") => format!("{FIELD} is \"\" (static volumes only), and {volumes} without a class"),
        Some(name) => format!("StorageClass {name:?} ({FIELD}) does not exist, and {volumes} of that class"),
    })
}

/// An Available volume a claim of `class` and `size` would bind to.
fn fits(v: &PersistentVolume, class: &str, size: &str) -> bool {
    let Some(spec) = v.spec.as_ref() else {
        return false;
    };
    let available = v.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Available");
    let same_class = spec.storage_class_name.as_deref().unwrap_or_default() == class;
    let rwo = spec
        .access_modes
        .iter()
        .flatten()
        .any(|m| m == "ReadWriteOnce");
    let filesystem = spec.volume_mode.as_deref() != Some("Block");
    // An unreadable quantity is left to the volume controller to judge.
    let big_enough = match (
        spec.capacity
            .as_ref()
            .and_then(|c| c.get("storage"))
            .and_then(|q| bytes(&q.0)),
        bytes(size),
    ) {
        (Some(have), Some(want)) => have >= want,
        _ => true,
    };
    available && same_class && rwo && filesystem && big_enough && spec.claim_ref.is_none()
}

/// A Kubernetes quantity in bytes (`50Gi`, `100G`, `1.5Ti`, `1024`);
/// `None` for forms this does not read (exponents, milli).
fn bytes(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult = match suffix {
        "" => 1.0,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        _ => return None,
    };
    Some(n * mult)
}

/// The StatefulSet's storage from what exists and what the check found.
/// `check` is `None` when it was not run or failed: then nothing changes
/// (a failed list never makes a cache ephemeral).
pub fn decide(
    current: Option<SeedStorage>,
    claims_pending: bool,
    check: Option<&Result<(), String>>,
) -> Decision {
    let why = match check {
        Some(Err(why)) => Some(message(why)),
        _ => None,
    };
    match (current, check) {
        (None, Some(Err(_))) => Decision::keep(SeedStorage::Ephemeral, why),
        (None, _) => Decision::keep(SeedStorage::Claims, None),
        // Claims that can never bind: only recreating the set frees the seeds.
        (Some(SeedStorage::Claims), Some(Err(_))) if claims_pending => Decision {
            storage: SeedStorage::Ephemeral,
            replace: true,
            why,
        },
        (Some(SeedStorage::Claims), _) => Decision::keep(SeedStorage::Claims, None),
        (Some(SeedStorage::Ephemeral), Some(Ok(()))) => Decision {
            storage: SeedStorage::Claims,
            replace: true,
            why: None,
        },
        (Some(SeedStorage::Ephemeral), Some(Err(_))) => Decision::keep(SeedStorage::Ephemeral, why),
        (Some(SeedStorage::Ephemeral), None) => Decision::keep(
            SeedStorage::Ephemeral,
            Some(message(
                "no storage was found when their StatefulSet was created",
            )),
        ),
    }
}

/// The condition message and Warning event text for an ephemeral cache.
fn message(why: &str) -> String {
    format!(
        "seed peers cache in an emptyDir, lost when a pod is replaced: {why}; \
         set {FIELD} to an existing StorageClass, or mark one as the default"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn class(name: &str, default: bool) -> StorageClass {
        let mut annotations = serde_json::Map::new();
        if default {
            annotations.insert(DEFAULT_CLASS.into(), "true".into());
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": annotations},
            "provisioner": "rancher.io/local-path"
        }))
        .expect("class fixture")
    }

    fn volume(name: &str, class: Option<&str>, size: &str, phase: &str) -> PersistentVolume {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"],
                     "storageClassName": class, "hostPath": {"path": "/srv"}},
            "status": {"phase": phase}
        }))
        .expect("volume fixture")
    }

    fn spec(class: Option<&str>) -> StorageSpec {
        StorageSpec {
            size: "50Gi".into(),
            storage_class_name: class.map(String::from),
        }
    }

    #[test]
    fn a_default_class_or_the_named_one_lets_claims_bind() {
        let classes = [class("standard", true), class("fast", false)];
        assert_eq!(claims_can_bind(&spec(None), 2, &classes, &[]), Ok(()));
        assert_eq!(
            claims_can_bind(&spec(Some("fast")), 2, &classes, &[]),
            Ok(())
        );
        let no_default = [class("fast", false)];
        assert!(claims_can_bind(&spec(None), 2, &no_default, &[]).is_err());
    }

    #[test]
    fn no_class_names_the_field_to_set() {
        let why = claims_can_bind(&spec(None), 2, &[], &[]).expect_err("no storage");
        assert!(why.contains("no default StorageClass"), "{why}");
        assert!(why.contains(FIELD), "{why}");
        let why = claims_can_bind(&spec(Some("fast")), 2, &[class("slow", true)], &[])
            .expect_err("named class missing");
        assert!(
            why.starts_with(
                "StorageClass \"fast\" (spec.seedPeer.storage.storageClassName) does not exist"
            ),
            "{why}"
        );
    }

    #[test]
    fn enough_fitting_static_volumes_let_claims_bind() {
        let vols = [
            volume("a", None, "100Gi", "Available"),
            volume("b", None, "100Gi", "Available"),
        ];
        assert_eq!(claims_can_bind(&spec(None), 2, &[], &vols), Ok(()));
        // Too few, too small, bound, or of another class: no.
        assert!(claims_can_bind(&spec(None), 3, &[], &vols).is_err());
        let small = [
            volume("a", None, "10Gi", "Available"),
            volume("b", None, "10Gi", "Available"),
        ];
        assert!(claims_can_bind(&spec(None), 2, &[], &small).is_err());
        let bound = [
            volume("a", None, "100Gi", "Bound"),
            volume("b", None, "100Gi", "Bound"),
        ];
        assert!(claims_can_bind(&spec(None), 2, &[], &bound).is_err());
        let manual = [volume("a", Some("manual"), "1Ti", "Available")];
        assert!(claims_can_bind(&spec(None), 1, &[], &manual).is_err());
        // A class name with no StorageClass object, as static volumes use.
        assert_eq!(
            claims_can_bind(&spec(Some("manual")), 1, &[], &manual),
            Ok(())
        );
    }

    #[test]
    fn quantities_compare_in_bytes() {
        assert_eq!(bytes("50Gi"), Some(50.0 * 1024f64.powi(3)));
        assert_eq!(bytes("100G"), Some(1e11));
        assert!(bytes("1Ti") > bytes("1000Gi"));
        assert_eq!(bytes("1e3"), None);
    }

    #[test]
    fn a_new_statefulset_takes_what_the_check_says() {
        let d = decide(None, false, Some(&Err("no class".into())));
        assert_eq!((d.storage, d.replace), (SeedStorage::Ephemeral, false));
        assert!(d
            .why
            .as_deref()
            .is_some_and(|w| w.contains("no class") && w.contains(FIELD)));
        assert_eq!(
            decide(None, false, Some(&Ok(()))).storage,
            SeedStorage::Claims
        );
        // A failed check keeps the claims the spec asks for.
        assert_eq!(
            decide(None, false, None),
            Decision::keep(SeedStorage::Claims, None)
        );
    }

    #[test]
    fn claims_are_replaced_only_when_pending_with_no_storage() {
        let no = Err("no class".to_string());
        let d = decide(Some(SeedStorage::Claims), true, Some(&no));
        assert_eq!((d.storage, d.replace), (SeedStorage::Ephemeral, true));
        // Bound claims (their class since deleted) keep working.
        assert_eq!(
            decide(Some(SeedStorage::Claims), false, Some(&no)),
            Decision::keep(SeedStorage::Claims, None)
        );
        assert_eq!(
            decide(Some(SeedStorage::Claims), true, Some(&Ok(()))),
            Decision::keep(SeedStorage::Claims, None)
        );
    }

    #[test]
    fn an_emptydir_moves_to_claims_once_storage_exists() {
        let d = decide(Some(SeedStorage::Ephemeral), false, Some(&Ok(())));
        assert_eq!(
            (d.storage, d.replace, d.why),
            (SeedStorage::Claims, true, None)
        );
        let d = decide(Some(SeedStorage::Ephemeral), false, Some(&Err("x".into())));
        assert_eq!((d.storage, d.replace), (SeedStorage::Ephemeral, false));
        let d = decide(Some(SeedStorage::Ephemeral), false, None);
        assert_eq!((d.storage, d.replace), (SeedStorage::Ephemeral, false));
    }

    #[test]
    fn pending_claims_are_seen() {
        let claim = |phase: &str| -> PersistentVolumeClaim {
            serde_json::from_value(json!({"metadata": {"name": "c"}, "status": {"phase": phase}}))
                .expect("claim")
        };
        assert!(any_pending(&[claim("Bound"), claim("Pending")]));
        assert!(!any_pending(&[claim("Bound")]));
    }
}
