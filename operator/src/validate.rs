//! Checks the schema cannot express. Each problem names the exact field, so the
//! `Ready=False, reason=InvalidSpec` condition tells the user what to fix.

use std::collections::BTreeSet;
use std::fmt;

use crate::crd::{DragonflyClusterSpec, KeyRef};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecProblem {
    /// JSON path below `spec`, e.g. `spec.dfdaemon.cacheSize`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for SpecProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Longest cluster name whose derived objects the API server accepts: the
/// name is a label value (at most 63 characters), and the seed-peer
/// StatefulSet's name plus `-` and a 10-character revision hash must be one
/// too (`controller-revision-hash`), which is the tightest of the limits.
pub const MAX_CLUSTER_NAME: usize = 63 - "-seed-peer".len() - 11;

/// A problem with the cluster's own name, which every object it owns
/// derives its name and labels from.
pub fn validate_name(name: &str) -> Option<SpecProblem> {
    (name.len() > MAX_CLUSTER_NAME).then(|| SpecProblem {
        field: "metadata.name".into(),
        message: format!(
            "{name:?} is {} characters; a DragonflyCluster's name may have at most {MAX_CLUSTER_NAME} \
             (its Services, StatefulSet and labels derive from it)",
            name.len()
        ),
    })
}

/// Every problem in the spec, in field order; empty means valid.
pub fn validate(spec: &DragonflyClusterSpec) -> Vec<SpecProblem> {
    let mut out = Vec::new();
    let mut bad = |field: &str, message: String| {
        out.push(SpecProblem {
            field: field.to_string(),
            message,
        })
    };

    // Unset image fields are the operator's own; only what the user wrote is checked.
    if let Some(repo) = &spec.image.repository {
        if repo.trim().is_empty() || repo.contains(char::is_whitespace) {
            bad(
                "spec.image.repository",
                format!("{repo:?} is not an image repository"),
            );
        }
    }
    if let Some(tag) = &spec.image.tag {
        if tag.trim().is_empty() || tag.contains(char::is_whitespace) {
            bad("spec.image.tag", format!("{tag:?} is not an image tag"));
        }
    }

    if spec.scheduler.port == spec.scheduler.admin_port {
        bad(
            "spec.scheduler.adminPort",
            format!(
                "must differ from spec.scheduler.port ({})",
                spec.scheduler.port
            ),
        );
    }

    let d = &spec.dfdaemon;
    let ports = [
        ("spec.dfdaemon.proxyPort", d.proxy_port),
        ("spec.dfdaemon.peerPort", d.peer_port),
        ("spec.dfdaemon.adminPort", d.admin_port),
    ];
    for (i, (field, port)) in ports.iter().enumerate() {
        if let Some((other, _)) = ports[..i].iter().find(|(_, p)| p == port) {
            bad(field, format!("port {port} is already used by {other}"));
        }
    }
    if let Err(e) = parse_size(&d.cache_size) {
        bad("spec.dfdaemon.cacheSize", e);
    }
    if let Some(rate) = &d.upload_rate {
        if let Err(e) = parse_size(rate) {
            bad("spec.dfdaemon.uploadRate", e);
        }
    }
    if d.gc_low_watermark >= d.gc_high_watermark {
        bad(
            "spec.dfdaemon.gcLowWatermark",
            format!(
                "{} must be below gcHighWatermark ({})",
                d.gc_low_watermark, d.gc_high_watermark
            ),
        );
    }
    if let Err(e) = humantime::parse_duration(&d.task_ttl) {
        bad(
            "spec.dfdaemon.taskTtl",
            format!("{:?} is not a duration such as 24h: {e}", d.task_ttl),
        );
    }
    check_host_dir(&mut bad, "spec.dfdaemon.dataDir", &d.data_dir);
    for (k, v) in &d.labels {
        if k.is_empty() || !k.chars().all(label_char) || !v.chars().all(label_char) {
            bad(
                "spec.dfdaemon.labels",
                format!("{k:?}={v:?}: keys and values may hold only letters, digits, '-', '_', '.' and '/'"),
            );
        }
    }

    let s = &spec.seed_peer;
    if s.enabled {
        if let Err(e) = parse_size(&s.cache_size) {
            bad("spec.seedPeer.cacheSize", e);
        }
        if let Some(rate) = &s.upload_rate {
            if let Err(e) = parse_size(rate) {
                bad("spec.seedPeer.uploadRate", e);
            }
        }
        if !is_quantity(&s.storage.size) {
            bad(
                "spec.seedPeer.storage.size",
                format!(
                    "{:?} is not a Kubernetes quantity such as 50Gi",
                    s.storage.size
                ),
            );
        }
    }

    let mut seen = BTreeSet::new();
    for (i, r) in spec.registries.iter().enumerate() {
        let field = format!("spec.registries[{i}]");
        match registry_host(r) {
            Ok(host) => {
                if !seen.insert(host.to_string()) {
                    bad(&field, format!("{r:?} is listed twice"));
                }
            }
            Err(e) => bad(&field, e),
        }
    }

    check_registry_configs(spec, &mut bad);
    check_pod_settings(spec, &mut bad);

    check_host_dir(
        &mut bad,
        "spec.containerd.configPath",
        &spec.containerd.config_path,
    );
    let file = &spec.containerd.config_file;
    if !file.starts_with('/') || file.ends_with('/') || file.contains("/../") {
        bad(
            "spec.containerd.configFile",
            format!("{file:?} must be an absolute file path"),
        );
    }
    out
}

/// The pod settings of every component: nothing that would take over the
/// labels the operator selects its pods by, its own annotations or the env
/// it sets, a DaemonSet update dfdaemon's host ports allow, and budgets
/// the API server accepts. (The builders also let the operator's keys win,
/// so a spec that slipped past this still cannot detach a workload from
/// its pods.)
fn check_pod_settings(spec: &DragonflyClusterSpec, bad: &mut impl FnMut(&str, String)) {
    use crate::build::{LABEL_COMPONENT, LABEL_INSTANCE, LABEL_MANAGED_BY, LABEL_NAME};
    const OPERATOR_ENV: [&str; 2] = ["POD_NAME", "POD_NAMESPACE"];
    if let Some(d) = &spec.image.digest {
        if !crate::crd::is_image_digest(d) {
            bad(
                "spec.image.digest",
                format!("{d:?} is not sha256:<64 lowercase hex digits>"),
            );
        }
    }
    let components = [
        ("spec.scheduler", &spec.scheduler.placement.pod),
        ("spec.seedPeer", &spec.seed_peer.placement.pod),
        ("spec.dfdaemon", &spec.dfdaemon.pod),
    ];
    for (base, pod) in components {
        for (k, v) in &pod.pod_labels {
            if [
                LABEL_NAME,
                LABEL_INSTANCE,
                LABEL_COMPONENT,
                LABEL_MANAGED_BY,
            ]
            .contains(&k.as_str())
            {
                bad(
                    &format!("{base}.podLabels"),
                    format!("{k:?} is set by the operator, which selects its pods by it"),
                );
            } else if !label_key(k) || !label_value(v) {
                bad(
                    &format!("{base}.podLabels"),
                    format!("{k:?}={v:?} is not a valid label"),
                );
            }
        }
        for k in pod.pod_annotations.keys() {
            if k.starts_with("p2p.dragonfly.dev/") {
                bad(
                    &format!("{base}.podAnnotations"),
                    format!("{k:?}: keys under p2p.dragonfly.dev/ are the operator's"),
                );
            } else if !label_key(k) {
                bad(
                    &format!("{base}.podAnnotations"),
                    format!("{k:?} is not a valid annotation key"),
                );
            }
        }
        let mut names = BTreeSet::new();
        for (i, e) in pod.extra_env.iter().enumerate() {
            let field = format!("{base}.extraEnv[{i}].name");
            if e.name.is_empty() || e.name.contains('=') {
                bad(
                    &field,
                    format!("{:?} is not an environment variable name", e.name),
                );
            } else if e.name.starts_with("DFDAEMON_") || OPERATOR_ENV.contains(&e.name.as_str()) {
                bad(&field, format!("{:?} is set by the operator", e.name));
            } else if !names.insert(e.name.as_str()) {
                bad(&field, format!("{:?} is listed twice", e.name));
            }
        }
    }
    for (field, pdb) in [
        (
            "spec.scheduler.podDisruptionBudget.maxUnavailable",
            &spec.scheduler.pod_disruption_budget,
        ),
        (
            "spec.seedPeer.podDisruptionBudget.maxUnavailable",
            &spec.seed_peer.pod_disruption_budget,
        ),
    ] {
        if let Err(e) = int_or_percent(&pdb.max_unavailable) {
            bad(field, e);
        }
    }
    let u = &spec.dfdaemon.update_strategy;
    if u.type_ == crate::crd::UpdateStrategyType::RollingUpdate {
        match int_or_percent(&u.max_unavailable) {
            Err(e) => bad("spec.dfdaemon.updateStrategy.maxUnavailable", e),
            Ok(0) => bad(
                "spec.dfdaemon.updateStrategy.maxUnavailable",
                "must be more than 0, or no dfdaemon is ever replaced".into(),
            ),
            Ok(_) => {}
        }
        match int_or_percent(&u.max_surge) {
            Err(e) => bad("spec.dfdaemon.updateStrategy.maxSurge", e),
            Ok(0) => {}
            Ok(_) => bad(
                "spec.dfdaemon.updateStrategy.maxSurge",
                "must be 0: dfdaemon binds host ports, so a surge pod could never start beside the old one".into(),
            ),
        }
    }
}

/// A non-negative count or a percentage (0-100 %): its number.
fn int_or_percent(
    v: &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString,
) -> Result<i32, String> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    match v {
        IntOrString::Int(n) if *n >= 0 => Ok(*n),
        IntOrString::Int(n) => Err(format!("{n} is negative")),
        IntOrString::String(s) => s
            .strip_suffix('%')
            .and_then(|n| n.parse::<i32>().ok())
            .filter(|n| (0..=100).contains(n))
            .ok_or_else(|| format!("{s:?} is neither a number nor a percentage such as 10%")),
    }
}

/// `[prefix/]name`: a DNS subdomain prefix, a name of at most 63 characters.
fn label_key(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
    });
    prefix_ok && !name.is_empty() && label_value(name)
}

/// At most 63 characters of `[A-Za-z0-9_.-]`, alphanumeric at both ends.
fn label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

/// `spec.registryConfigs`: hosts written like `registries` (without a
/// scheme), each listed in `registries` unless that is empty (every
/// registry mirrored), settings that do not contradict each other or the
/// scheme `registries` gives, and well-formed bundle references. Whether
/// the referenced object and key exist is checked at reconcile time.
fn check_registry_configs(spec: &DragonflyClusterSpec, bad: &mut impl FnMut(&str, String)) {
    let everything = spec.registries.is_empty() || spec.registries.iter().any(|r| r == "_default");
    let listed = |host: &str| -> Option<&str> {
        spec.registries
            .iter()
            .find(|r| registry_host(r).is_ok_and(|h| h.eq_ignore_ascii_case(host)))
            .map(String::as_str)
    };
    let mut seen = BTreeSet::new();
    for (i, c) in spec.registry_configs.iter().enumerate() {
        let field = format!("spec.registryConfigs[{i}]");
        let host = &c.host;
        if host.contains("://") {
            bad(
                &format!("{field}.host"),
                format!("{host:?}: give HOST[:PORT] without a scheme (plainHTTP: true means http)"),
            );
            continue;
        }
        match registry_host(host) {
            Ok(h) if h == host => {}
            Ok(_) | Err(_) => {
                bad(
                    &format!("{field}.host"),
                    format!("{host:?} is not a registry host such as registry.internal:5443"),
                );
                continue;
            }
        }
        if !seen.insert(host.to_ascii_lowercase()) {
            bad(
                &format!("{field}.host"),
                format!("{host:?} is configured twice"),
            );
        }
        let entry = listed(host);
        if entry.is_none() && !everything {
            bad(
                &format!("{field}.host"),
                format!("{host:?} is not in spec.registries; add it there so it is mirrored"),
            );
        }
        let tls = c.ca_bundle.is_some() || c.insecure_skip_verify;
        if c.plain_http && tls {
            bad(
                &field,
                "plainHTTP cannot be combined with caBundle or insecureSkipVerify".into(),
            );
        }
        if let Some(entry) = entry {
            if c.plain_http && entry.starts_with("https://") {
                bad(
                    &format!("{field}.plainHTTP"),
                    format!("spec.registries lists this registry as {entry:?}"),
                );
            }
            if tls && entry.starts_with("http://") {
                bad(
                    &field,
                    format!("spec.registries lists this registry as plain HTTP ({entry:?}); TLS settings would never be used"),
                );
            }
        }
        if let Some(bundle) = &c.ca_bundle {
            match bundle.reference() {
                None => bad(
                    &format!("{field}.caBundle"),
                    "set exactly one of secretRef and configMapRef".into(),
                ),
                Some((kind, r)) => {
                    let which = match kind {
                        crate::crd::BundleKind::Secret => "secretRef",
                        crate::crd::BundleKind::ConfigMap => "configMapRef",
                    };
                    check_key_ref(bad, &format!("{field}.caBundle.{which}"), r);
                }
            }
        }
    }
}

fn check_key_ref(bad: &mut impl FnMut(&str, String), field: &str, r: &KeyRef) {
    let dns_subdomain = !r.name.is_empty()
        && r.name.len() <= 253
        && r.name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && r.name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && r.name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !dns_subdomain {
        bad(
            &format!("{field}.name"),
            format!("{:?} is not an object name", r.name),
        );
    }
    let key_ok = !r.key.is_empty()
        && r.key != "."
        && r.key != ".."
        && r.key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !key_ok {
        bad(
            &format!("{field}.key"),
            format!("{:?} is not a Secret or ConfigMap key", r.key),
        );
    }
}

/// A human size such as `20GiB` or `100MiB` (what dfdaemon's flags take).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let parsed: bytesize::ByteSize = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as 20GiB"))?;
    if parsed.as_u64() == 0 {
        return Err(format!("{s:?} must be larger than zero"));
    }
    Ok(parsed.as_u64())
}

/// Kubernetes resource quantity (binary or decimal suffix), e.g. `50Gi`, `500M`.
fn is_quantity(s: &str) -> bool {
    let digits_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(digits_end);
    !num.is_empty()
        && num.parse::<f64>().is_ok_and(|n| n > 0.0)
        && [
            "", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "k", "M", "G", "T", "P", "E",
        ]
        .contains(&suffix)
}

/// The host part of a registry entry: `HOST[:PORT]` or `http(s)://HOST[:PORT]`.
pub fn registry_host(r: &str) -> Result<&str, String> {
    let rest = if let Some(rest) = r
        .strip_prefix("https://")
        .or_else(|| r.strip_prefix("http://"))
    {
        rest
    } else if r.contains("://") {
        return Err(format!(
            "{r:?}: only http:// and https:// registries are supported"
        ));
    } else {
        r
    };
    let host = rest.trim_end_matches('/');
    let valid = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if valid {
        Ok(host)
    } else {
        Err(format!(
            "{r:?} is not a registry host such as docker.io or http://10.0.0.5:5000"
        ))
    }
}

fn check_host_dir(bad: &mut impl FnMut(&str, String), field: &str, dir: &str) {
    // Mounting `/` (or escaping with `..`) from the host would hand the pod the whole node.
    if !dir.starts_with('/')
        || dir.trim_end_matches('/').is_empty()
        || dir.split('/').any(|p| p == "..")
    {
        bad(
            field,
            format!("{dir:?} must be an absolute directory other than /"),
        );
    }
}

fn label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_spec_is_valid() {
        assert_eq!(validate(&DragonflyClusterSpec::default()), vec![]);
    }

    #[test]
    fn a_name_too_long_for_derived_objects_is_refused() {
        assert_eq!(validate_name(&"a".repeat(MAX_CLUSTER_NAME)), None);
        let long = "a".repeat(MAX_CLUSTER_NAME + 1);
        let problem = validate_name(&long).expect("too long");
        assert_eq!(problem.field, "metadata.name");
        assert!(
            problem.message.contains("at most 42"),
            "{}",
            problem.message
        );
        // The tightest limit: StatefulSet name plus revision hash as a label.
        let sts = format!(
            "{}-seed-peer-{}",
            "a".repeat(MAX_CLUSTER_NAME),
            "0123456789"
        );
        assert_eq!(sts.len(), 63);
    }

    #[test]
    fn gc_watermarks_are_ordered_and_the_ttl_is_a_duration() {
        let mut spec = DragonflyClusterSpec::default();
        assert!(validate(&spec).is_empty());
        spec.dfdaemon.gc_low_watermark = 90;
        spec.dfdaemon.gc_high_watermark = 80;
        spec.dfdaemon.task_ttl = "a day".into();
        let fields: Vec<String> = validate(&spec).into_iter().map(|p| p.field).collect();
        assert_eq!(
            fields,
            vec!["spec.dfdaemon.gcLowWatermark", "spec.dfdaemon.taskTtl"]
        );
        spec.dfdaemon.gc_low_watermark = 60;
        spec.dfdaemon.task_ttl = "0s".into();
        assert!(validate(&spec).is_empty());
    }

    #[test]
    fn each_problem_names_its_field() {
        let mut spec = DragonflyClusterSpec::default();
        spec.dfdaemon.cache_size = "20XB".into();
        spec.dfdaemon.peer_port = spec.dfdaemon.proxy_port;
        spec.registries = vec!["docker.io".into(), "ftp://x".into(), "docker.io".into()];
        spec.seed_peer.storage.size = "lots".into();
        spec.containerd.config_path = "/".into();
        let fields: Vec<String> = validate(&spec).into_iter().map(|p| p.field).collect();
        assert_eq!(
            fields,
            vec![
                "spec.dfdaemon.peerPort",
                "spec.dfdaemon.cacheSize",
                "spec.seedPeer.storage.size",
                "spec.registries[1]",
                "spec.registries[2]",
                "spec.containerd.configPath",
            ]
        );
    }

    fn registry_config(host: &str) -> crate::crd::RegistryConfigSpec {
        crate::crd::RegistryConfigSpec {
            host: host.into(),
            ..Default::default()
        }
    }

    fn secret(name: &str, key: &str) -> Option<crate::crd::CaBundleSource> {
        Some(crate::crd::CaBundleSource {
            secret_ref: Some(KeyRef {
                name: name.into(),
                key: key.into(),
            }),
            config_map_ref: None,
        })
    }

    #[test]
    fn registry_configs() {
        let mut spec = DragonflyClusterSpec {
            registries: vec![
                "registry.internal:5443".into(),
                "http://10.0.0.5:5000".into(),
                "https://secure.example".into(),
            ],
            ..Default::default()
        };
        let mut good = registry_config("registry.internal:5443");
        good.ca_bundle = secret("internal-ca", "ca.crt");
        spec.registry_configs = vec![good.clone(), registry_config("10.0.0.5:5000")];
        spec.registry_configs[1].plain_http = true;
        assert_eq!(validate(&spec), vec![]);

        let mut both = registry_config("secure.example");
        both.ca_bundle = Some(crate::crd::CaBundleSource::default());
        both.plain_http = true;
        let mut tls_on_http = registry_config("10.0.0.5:5000");
        tls_on_http.insecure_skip_verify = true;
        let mut bad_ref = registry_config("other.example");
        bad_ref.ca_bundle = secret("Bad_Name", "../x");
        spec.registry_configs = vec![
            registry_config("https://registry.internal:5443"),
            good.clone(),
            good,
            both,
            tls_on_http,
            bad_ref,
        ];
        let problems = validate(&spec);
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "spec.registryConfigs[0].host",
                "spec.registryConfigs[2].host",
                "spec.registryConfigs[3]",
                "spec.registryConfigs[3].plainHTTP",
                "spec.registryConfigs[3].caBundle",
                "spec.registryConfigs[4]",
                "spec.registryConfigs[5].host",
                "spec.registryConfigs[5].caBundle.secretRef.name",
                "spec.registryConfigs[5].caBundle.secretRef.key",
            ],
            "{problems:?}"
        );
        assert!(problems[6].message.contains("not in spec.registries"));

        // With no registries listed every registry is mirrored: any host may have settings.
        spec.registries.clear();
        spec.registry_configs = vec![registry_config("other.example")];
        assert_eq!(validate(&spec), vec![]);
    }

    #[test]
    fn pod_settings_cannot_take_over_the_operators_keys() {
        use k8s_openapi::api::core::v1::EnvVar;
        use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
        let mut spec = DragonflyClusterSpec::default();
        spec.scheduler
            .placement
            .pod
            .pod_labels
            .insert("app.kubernetes.io/component".into(), "x".into());
        spec.seed_peer
            .placement
            .pod
            .pod_labels
            .insert("team".into(), "bad value!".into());
        spec.dfdaemon
            .pod
            .pod_annotations
            .insert("p2p.dragonfly.dev/config-hash".into(), "x".into());
        spec.dfdaemon
            .pod
            .pod_annotations
            .insert("example.com/ok".into(), "any value at all".into());
        let env = |n: &str| EnvVar {
            name: n.into(),
            value: Some("v".into()),
            ..EnvVar::default()
        };
        spec.dfdaemon.pod.extra_env = vec![
            env("HTTPS_PROXY"),
            env("DFDAEMON_ADVERTISE_IP"),
            env("HTTPS_PROXY"),
        ];
        spec.dfdaemon.update_strategy.max_surge = IntOrString::Int(1);
        spec.scheduler.pod_disruption_budget.max_unavailable = IntOrString::String("ten".into());
        spec.image.digest = Some("sha256:abc".into());
        let fields: Vec<String> = validate(&spec).into_iter().map(|p| p.field).collect();
        assert_eq!(
            fields,
            [
                "spec.image.digest",
                "spec.scheduler.podLabels",
                "spec.seedPeer.podLabels",
                "spec.dfdaemon.podAnnotations",
                "spec.dfdaemon.extraEnv[1].name",
                "spec.dfdaemon.extraEnv[2].name",
                "spec.scheduler.podDisruptionBudget.maxUnavailable",
                "spec.dfdaemon.updateStrategy.maxSurge",
            ]
        );
        let mut spec = DragonflyClusterSpec::default();
        spec.dfdaemon.update_strategy.max_unavailable = IntOrString::String("0%".into());
        assert_eq!(
            validate(&spec)[0].field,
            "spec.dfdaemon.updateStrategy.maxUnavailable"
        );
        spec.dfdaemon.update_strategy.type_ = crate::crd::UpdateStrategyType::OnDelete;
        assert_eq!(
            validate(&spec),
            vec![],
            "OnDelete ignores the rolling fields"
        );
    }

    #[test]
    fn disabled_seed_peers_are_not_checked() {
        let mut spec = DragonflyClusterSpec::default();
        spec.seed_peer.enabled = false;
        spec.seed_peer.cache_size = "nonsense".into();
        assert!(validate(&spec).is_empty());
    }

    #[test]
    fn sizes_and_registries() {
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert!(parse_size("0B").is_err());
        assert!(parse_size("").is_err());
        assert!(
            is_quantity("50Gi") && is_quantity("1.5T") && !is_quantity("Gi") && !is_quantity("5GB")
        );
        assert_eq!(registry_host("http://10.0.0.5:5000/"), Ok("10.0.0.5:5000"));
        assert!(registry_host("docker.io/library").is_err());
    }
}
