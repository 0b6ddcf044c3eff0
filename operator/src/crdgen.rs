//! The CRD documents `dragonfly-operator crd` prints and `crds/` holds.

use kube::CustomResourceExt;

use crate::crd::DragonflyCluster;

/// Every CRD this operator serves, as one multi-document YAML stream.
pub fn crds_yaml() -> anyhow::Result<String> {
    // Preheat joins this list when its CRD lands.
    let crds = vec![DragonflyCluster::crd()];
    let mut out = String::new();
    for crd in &crds {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(crd)?);
    }
    Ok(out)
}
