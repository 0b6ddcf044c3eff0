//! What admission itself can refuse in a DragonflyCluster: CEL rules and
//! patterns added to the generated schema, so a bad spec fails `kubectl
//! apply` (and a GitOps sync) instead of passing and failing later. The
//! same checks stay in `validate.rs`, which also covers what a schema cannot
//! say (and objects applied before these rules existed).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
    ValidationRule,
};

use crate::validate::MAX_CLUSTER_NAME;

/// A size as `parse_size` reads it: a number, then an optional unit such as
/// `GiB`, `G` or `B` in any case (zero is left to `validate.rs`).
pub const SIZE_PATTERN: &str = r"^\s*[0-9]+(\.[0-9]+)?\s*([kKmMgGtTpPeE]([iI]?[bB])?|[bB])?\s*$";
/// A Kubernetes quantity as `validate.rs` accepts it for volume sizes.
pub const QUANTITY_PATTERN: &str = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$";

fn rule(rule: &str, message: &str) -> ValidationRule {
    ValidationRule {
        rule: rule.to_string(),
        message: Some(message.to_string()),
        ..ValidationRule::default()
    }
}

fn at<'a>(schema: &'a mut JSONSchemaProps, path: &[&str]) -> Option<&'a mut JSONSchemaProps> {
    path.iter()
        .try_fold(schema, |s, key| s.properties.as_mut()?.get_mut(*key))
}

fn add_rules(schema: &mut JSONSchemaProps, path: &[&str], rules: Vec<ValidationRule>) {
    if let Some(s) = at(schema, path) {
        s.x_kubernetes_validations
            .get_or_insert_with(Vec::new)
            .extend(rules);
    }
}

/// A pattern as a CEL rule, so the refusal says what is expected rather
/// than quoting the regular expression.
fn set_pattern(schema: &mut JSONSchemaProps, path: &[&str], pattern: &str, expected: &str) {
    let field = format!("spec.{}", path[1..].join("."));
    add_rules(
        schema,
        path,
        vec![rule(
            &format!("self.matches('{}')", pattern.replace('\\', "\\\\")),
            &format!("{field} must be {expected}"),
        )],
    );
}

/// Fields holding Kubernetes' own types, whose long upstream descriptions
/// (repeated per component) would push the CRD towards the size limit of
/// `kubectl apply`'s last-applied annotation; `kubectl explain pod` has them.
const EMBEDDED_KUBERNETES_TYPES: [&str; 4] = ["affinity", "extraEnv", "tolerations", "resources"];

fn strip_descriptions(schema: &mut JSONSchemaProps) {
    schema.description = None;
    for child in schema.properties.iter_mut().flat_map(|p| p.values_mut()) {
        strip_descriptions(child);
    }
    if let Some(JSONSchemaPropsOrArray::Schema(items)) = schema.items.as_mut() {
        strip_descriptions(items);
    }
    if let Some(JSONSchemaPropsOrBool::Schema(extra)) = schema.additional_properties.as_mut() {
        strip_descriptions(extra);
    }
}

/// Below each field named in `EMBEDDED_KUBERNETES_TYPES` (the field's own
/// description stays).
fn trim_embedded(schema: &mut JSONSchemaProps) {
    for (name, child) in schema.properties.iter_mut().flat_map(|p| p.iter_mut()) {
        if EMBEDDED_KUBERNETES_TYPES.contains(&name.as_str()) {
            let own = child.description.take();
            strip_descriptions(child);
            child.description = own;
        } else {
            trim_embedded(child);
        }
    }
}

/// Adds the rules to the DragonflyCluster CRD's every version.
pub fn apply(crd: &mut CustomResourceDefinition) {
    for version in &mut crd.spec.versions {
        let Some(root) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        else {
            continue;
        };
        trim_embedded(root);
        add_rules(
            root,
            &[],
            vec![rule(
                &format!("self.metadata.name.size() <= {MAX_CLUSTER_NAME}"),
                &format!(
                    "a DragonflyCluster's name may have at most {MAX_CLUSTER_NAME} characters \
                     (its Services, StatefulSet and labels derive from it)"
                ),
            )],
        );
        add_rules(
            root,
            &["spec", "scheduler"],
            vec![rule(
                "self.port != self.adminPort",
                "spec.scheduler.adminPort must differ from spec.scheduler.port",
            )],
        );
        add_rules(
            root,
            &["spec", "dfdaemon"],
            vec![
                rule(
                    "self.proxyPort != self.peerPort",
                    "spec.dfdaemon.peerPort must differ from proxyPort",
                ),
                rule(
                    "self.adminPort != self.proxyPort && self.adminPort != self.peerPort",
                    "spec.dfdaemon.adminPort must differ from proxyPort and peerPort",
                ),
                rule(
                    "self.gcLowWatermark < self.gcHighWatermark",
                    "spec.dfdaemon.gcLowWatermark must be below gcHighWatermark",
                ),
            ],
        );
        for path in [
            &["spec", "dfdaemon", "cacheSize"][..],
            &["spec", "dfdaemon", "uploadRate"],
            &["spec", "seedPeer", "cacheSize"],
            &["spec", "seedPeer", "uploadRate"],
        ] {
            set_pattern(root, path, SIZE_PATTERN, "a size such as 20GiB or 512MiB");
        }
        set_pattern(
            root,
            &["spec", "seedPeer", "storage", "size"],
            QUANTITY_PATTERN,
            "a Kubernetes quantity such as 50Gi",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::DragonflyCluster;
    use crate::validate::parse_size;
    use kube::CustomResourceExt;

    #[test]
    fn the_size_pattern_agrees_with_parse_size() {
        let pattern = regex::Regex::new(SIZE_PATTERN).unwrap();
        for s in [
            "20GiB", "20 GiB", "1.5GB", "100MiB", "20G", "20g", "512", "4kib", "7 B", "20XB",
            "GiB", "-1GiB", "1e3", "", "20 Gi B", "1..5G",
        ] {
            assert_eq!(
                pattern.is_match(s),
                parse_size(s).is_ok(),
                "{s:?}: the schema and the operator disagree"
            );
        }
    }

    #[test]
    fn rules_land_where_the_fields_are() {
        let mut crd = DragonflyCluster::crd();
        apply(&mut crd);
        let root = crd.spec.versions[0]
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            .unwrap();
        let rules = |root: &mut JSONSchemaProps, path: &[&str]| -> Vec<String> {
            at(root, path)
                .and_then(|s| s.x_kubernetes_validations.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|r| r.rule)
                .collect()
        };
        assert_eq!(rules(root, &[]), vec!["self.metadata.name.size() <= 42"]);
        assert_eq!(rules(root, &["spec", "scheduler"]).len(), 1);
        assert_eq!(rules(root, &["spec", "dfdaemon"]).len(), 3);
        for path in [
            &["spec", "dfdaemon", "cacheSize"][..],
            &["spec", "seedPeer", "storage", "size"],
        ] {
            let found = rules(root, path);
            assert!(
                found.iter().any(|r| r.starts_with("self.matches(")),
                "{path:?}: {found:?}"
            );
        }
        // Every field a rule names exists with a default, so the rule never
        // meets an absent field.
        let d = at(root, &["spec", "dfdaemon"]).unwrap();
        for field in [
            "proxyPort",
            "peerPort",
            "adminPort",
            "gcLowWatermark",
            "gcHighWatermark",
        ] {
            let f = d.properties.as_ref().and_then(|p| p.get(field)).unwrap();
            assert!(f.default.is_some(), "{field} has no schema default");
        }
    }
}
