//! Checks of a Preheat spec before anything is fetched: every problem is
//! named in one message, and the Preheat ends Failed with it (retrying
//! cannot fix a spec).

use super::crd::{PreheatSpec, Scope};
use super::platform::Platform;
use super::reference::{check_url, is_sha256_digest, ImageRef};

/// A spec that passed the checks, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validated {
    pub images: Vec<ImageRef>,
    /// As written; empty means "the nodes' platforms".
    pub platforms: Vec<Platform>,
}

pub fn validate(spec: &PreheatSpec) -> Result<Validated, String> {
    let mut problems = Vec::new();
    if spec.images.is_empty() && spec.urls.is_empty() {
        problems.push("nothing to preheat: spec.images and spec.urls are both empty".to_string());
    }
    if spec.cluster.trim().is_empty() {
        problems.push("spec.cluster is empty".to_string());
    }
    let mut images = Vec::new();
    for (i, r) in spec.images.iter().enumerate() {
        match ImageRef::parse(r) {
            Ok(img) => images.push(img),
            Err(e) => problems.push(format!("spec.images[{i}]: {e}")),
        }
    }
    for (i, u) in spec.urls.iter().enumerate() {
        if let Err(e) = check_url(&u.url) {
            problems.push(format!("spec.urls[{i}]: {e}"));
        }
        if let Some(d) = &u.digest {
            if !is_sha256_digest(d) {
                problems.push(format!(
                    "spec.urls[{i}].digest {d:?} is not sha256:<64 lower-case hex>"
                ));
            }
        }
    }
    let mut platforms = Vec::new();
    for (i, p) in spec.platforms.iter().enumerate() {
        match Platform::parse(p) {
            Ok(p) => platforms.push(p),
            Err(e) => problems.push(format!("spec.platforms[{i}]: {e}")),
        }
    }
    match (spec.scope, spec.node_selector.is_empty()) {
        (Scope::NodeSelector, true) => {
            problems.push("scope NodeSelector needs a non-empty spec.nodeSelector".to_string())
        }
        (Scope::NodeSelector, false) | (_, true) => {}
        (other, false) => problems.push(format!(
            "spec.nodeSelector is only used with scope NodeSelector (scope is {other:?})"
        )),
    }
    for (i, h) in spec.insecure_registries.iter().enumerate() {
        let ok = !h.is_empty()
            && !h.contains('/')
            && url::Url::parse(&format!("http://{h}/"))
                .ok()
                .and_then(|u| u.host_str().map(str::to_string))
                .is_some();
        if !ok {
            problems.push(format!(
                "spec.insecureRegistries[{i}] {h:?} is not host[:port]"
            ));
        }
    }
    for (i, s) in spec.pull_secrets.iter().enumerate() {
        if s.name.is_empty() {
            problems.push(format!("spec.pullSecrets[{i}] has no name"));
        }
    }
    if !(0..=20).contains(&spec.backoff_limit) {
        problems.push(format!(
            "spec.backoffLimit {} is outside 0..=20",
            spec.backoff_limit
        ));
    }
    if spec.ttl_seconds_after_finished.is_some_and(|t| t < 0) {
        problems.push("spec.ttlSecondsAfterFinished is negative".to_string());
    }
    if problems.is_empty() {
        Ok(Validated { images, platforms })
    } else {
        Err(problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preheat::crd::UrlSource;
    use std::collections::BTreeMap;

    fn spec(images: &[&str]) -> PreheatSpec {
        PreheatSpec {
            cluster: "dragonfly".into(),
            images: images.iter().map(|s| s.to_string()).collect(),
            backoff_limit: 6,
            ..PreheatSpec::default()
        }
    }

    #[test]
    fn a_good_spec_parses() {
        let mut s = spec(&["busybox", "127.0.0.1:5055/app:v1"]);
        s.platforms = vec!["linux/amd64".into(), "linux/arm64".into()];
        s.insecure_registries = vec!["registry.lan:5000".into()];
        let v = validate(&s).expect("valid");
        assert_eq!(v.images.len(), 2);
        assert_eq!(v.platforms[1].to_string(), "linux/arm64");
    }

    #[test]
    fn every_problem_is_named_at_once() {
        let mut s = spec(&["Bad/Ref", "ok:v1"]);
        s.platforms = vec!["linux".into()];
        s.urls = vec![UrlSource {
            url: "ftp://x/y".into(),
            digest: Some("md5:1".into()),
        }];
        s.scope = Scope::AllNodes;
        s.node_selector = BTreeMap::from([("a".to_string(), "b".to_string())]);
        s.insecure_registries = vec!["http://r:5000".into()];
        let e = validate(&s).expect_err("invalid");
        for part in [
            "spec.images[0]: invalid image reference \"Bad/Ref\": repository name must be lowercase",
            "spec.urls[0]: invalid URL \"ftp://x/y\"",
            "spec.urls[0].digest",
            "spec.platforms[0]: invalid platform \"linux\"",
            "spec.nodeSelector is only used with scope NodeSelector (scope is AllNodes)",
            "spec.insecureRegistries[0] \"http://r:5000\" is not host[:port]",
        ] {
            assert!(e.contains(part), "missing {part:?} in {e}");
        }
        assert!(!e.contains("spec.images[1]"), "{e}");
    }

    #[test]
    fn the_sample_fixture_is_valid() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/preheat.yaml");
        let text = std::fs::read_to_string(&path).expect("fixture");
        let ph: crate::preheat::Preheat = serde_yaml::from_str(&text).expect("parses");
        let v = validate(&ph.spec).expect("valid");
        assert_eq!(v.images[1].registry, "docker.io");
    }

    #[test]
    fn empty_and_selector_problems() {
        let e = validate(&spec(&[])).expect_err("empty");
        assert!(e.contains("nothing to preheat"), "{e}");
        let mut s = spec(&["busybox"]);
        s.scope = Scope::NodeSelector;
        assert!(validate(&s)
            .expect_err("no selector")
            .contains("needs a non-empty spec.nodeSelector"));
    }
}
