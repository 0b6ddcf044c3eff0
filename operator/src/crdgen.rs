//! The CRD documents `dragonfly-operator crd` prints and `crds/` holds (one
//! file per CRD, named by its plural).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::crd::DragonflyCluster;
use crate::preheat::Preheat;

/// Every CRD this operator serves.
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut cluster = DragonflyCluster::crd();
    crate::crd_rules::apply(&mut cluster);
    vec![cluster, Preheat::crd()]
}

/// `(file name, YAML)` per CRD, e.g. `preheats.yaml`.
pub fn crd_files() -> anyhow::Result<Vec<(String, String)>> {
    crds()
        .iter()
        .map(|crd| {
            Ok((
                format!("{}.yaml", crd.spec.names.plural),
                format!("---\n{}", serde_yaml::to_string(crd)?),
            ))
        })
        .collect()
}

/// Every CRD as one multi-document YAML stream (the files, concatenated).
pub fn crds_yaml() -> anyhow::Result<String> {
    Ok(crd_files()?.into_iter().map(|(_, text)| text).collect())
}
