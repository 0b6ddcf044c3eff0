//! The operator renders dfdaemon's and the scheduler's config files; both
//! binaries reject unknown keys, so every rendered config must parse and
//! validate, or pods would crash-loop on a real cluster.

use std::path::Path;

fn config_maps(golden: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(golden).expect("golden file");
    let mut found = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value: serde_yaml::Value = serde::Deserialize::deserialize(doc).expect("yaml document");
        if value["kind"] != "ConfigMap" {
            continue;
        }
        if let Some(data) = value["data"].as_mapping() {
            for (k, v) in data {
                found.push((
                    k.as_str().unwrap_or_default().to_string(),
                    v.as_str().unwrap_or_default().to_string(),
                ));
            }
        }
    }
    found
}

#[test]
fn rendered_configs_are_accepted_by_the_binaries() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../operator/tests/golden");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("golden dir") {
        let path = entry.expect("entry").path();
        for (key, text) in config_maps(&path) {
            match key.as_str() {
                "dfdaemon.yaml" => {
                    let config: node_agent::config::DaemonConfig = serde_yaml::from_str(&text)
                        .unwrap_or_else(|e| {
                            panic!("{}: dfdaemon.yaml rejected: {e}\n{text}", path.display())
                        });
                    config.validate().expect("dfdaemon config validates");
                    checked += 1;
                }
                "scheduler.yaml" => {
                    let config = scheduler::Config::from_yaml(&text, &path).unwrap_or_else(|e| {
                        panic!("{}: scheduler.yaml rejected: {e}\n{text}", path.display())
                    });
                    config.validate().expect("scheduler config validates");
                    checked += 1;
                }
                _ => {}
            }
        }
    }
    assert!(checked >= 4, "found only {checked} rendered configs");
}
