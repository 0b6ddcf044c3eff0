//! ConfigMaps holding each component's rendered `--config` file.
//!
//! Keys follow each binary's own config file, which rejects unknown keys:
//! the scheduler's is kebab-case (`admin-listen`), dfdaemon's snake_case
//! (`cache_size`, `mirror.registries`). Settings that exist only as flags
//! (containerd paths, `--registry`) stay in the pod args.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use serde_json::{json, Value};

use super::{Component, Ctx};

pub const SCHEDULER_FILE: &str = "scheduler.yaml";
pub const DFDAEMON_FILE: &str = "dfdaemon.yaml";

pub fn scheduler_configmap(ctx: &Ctx) -> ConfigMap {
    let s = &ctx.dfc.spec.scheduler;
    let settings = json!({
        "listen": format!("0.0.0.0:{}", s.port),
        "admin-listen": format!("0.0.0.0:{}", s.admin_port),
    });
    configmap(ctx, Component::Scheduler, SCHEDULER_FILE, &settings)
}

pub fn seed_peer_configmap(ctx: &Ctx) -> ConfigMap {
    let spec = &ctx.dfc.spec;
    let s = &spec.seed_peer;
    let settings = dfdaemon_settings(
        ctx,
        true,
        super::seed_peer::DATA_MOUNT,
        &s.cache_size,
        s.upload_rate.as_deref(),
    );
    configmap(ctx, Component::SeedPeer, DFDAEMON_FILE, &settings)
}

pub fn dfdaemon_configmap(ctx: &Ctx) -> ConfigMap {
    let d = &ctx.dfc.spec.dfdaemon;
    let settings = dfdaemon_settings(
        ctx,
        false,
        &d.data_dir,
        &d.cache_size,
        d.upload_rate.as_deref(),
    );
    configmap(ctx, Component::Dfdaemon, DFDAEMON_FILE, &settings)
}

fn dfdaemon_settings(
    ctx: &Ctx,
    seed: bool,
    data_dir: &str,
    cache_size: &str,
    upload_rate: Option<&str>,
) -> Value {
    let spec = &ctx.dfc.spec;
    let d = &spec.dfdaemon;
    let mut settings = json!({
        "scheduler": [ctx.scheduler_address()],
        "seed": seed,
        "data_dir": data_dir,
        "cache_size": cache_size,
        "proxy_listen": format!("0.0.0.0:{}", d.proxy_port),
        "peer_listen": format!("0.0.0.0:{}", d.peer_port),
        "admin_listen": format!("0.0.0.0:{}", d.admin_port),
        "upload_limit": d.upload_limit,
    });
    if let Some(rate) = upload_rate {
        settings["upload_rate"] = rate.into();
    }
    if !seed && !d.labels.is_empty() {
        settings["labels"] = json!(d.labels);
    }
    // Node caches share the node's disk with kubelet and containerd; seed
    // volumes may share a disk too (hostPath, local volumes): one setting.
    settings["gc_high_watermark"] = d.gc_high_watermark.into();
    settings["gc_low_watermark"] = d.gc_low_watermark.into();
    if seed {
        // A seed's volume is its own and what it holds is often preheated
        // for later pulls: the quota's LRU decides, not age.
        settings["task_ttl"] = "0s".into();
    }
    if !seed {
        settings["task_ttl"] = d.task_ttl.as_str().into();
        // kubelet's filesystem as seen from the pod without mounting its
        // directory (other pods' secrets live there): kubelet writes each
        // pod's /etc/hosts under its own pods directory.
        settings["kubelet_root_dir"] = "/etc/hosts".into();
        settings["kubelet_eviction_threshold"] = d.kubelet_eviction_threshold.into();
        // Explicit, not left to dfdaemon's default: a dfdaemon stopped by
        // SIGTERM (uninstall, or a terminating namespace where the cleanup
        // DaemonSet cannot be created) puts the node's hosts.toml back itself.
        settings["containerd"] = json!({ "restore_on_stop": true });
    }
    // A registry listed as http://HOST is plain HTTP upstream; the mirror must know.
    let mut per_registry: BTreeMap<String, Value> = spec
        .registries
        .iter()
        .filter_map(|r| r.strip_prefix("http://"))
        .map(|host| {
            (
                host.trim_end_matches('/').to_ascii_lowercase(),
                json!({"plain_http": true}),
            )
        })
        .collect();
    // Per-registry settings; a CA bundle is where registry_ca mounts it.
    let ca_files = super::registry_ca::bundles(spec);
    for c in &spec.registry_configs {
        let host = c.host.to_ascii_lowercase();
        let entry = per_registry
            .entry(host.clone())
            .or_insert_with(|| json!({"plain_http": false}));
        if c.plain_http {
            entry["plain_http"] = true.into();
        }
        if let Some(file) = ca_files.get(&host) {
            entry["ca_file"] = file.as_str().into();
        }
        if c.insecure_skip_verify {
            entry["insecure_skip_verify"] = true.into();
        }
    }
    if !per_registry.is_empty() {
        settings["mirror"] = json!({ "registries": per_registry });
    }
    // The mirror serves these registries only: a pod cannot point it (and
    // its access checks) at a registry of its own.
    if !spec.registries.is_empty() && !spec.registries.iter().any(|r| r == "_default") {
        settings["mirror"]["mirrored_registries"] = json!(spec.effective_registries());
    }
    settings
}

fn configmap(ctx: &Ctx, c: Component, file: &str, settings: &Value) -> ConfigMap {
    // serde_json::Value objects keep keys sorted, so the rendering is stable.
    let text = serde_yaml::to_string(settings).unwrap_or_default();
    ConfigMap {
        metadata: ctx.meta(c, ctx.object_name(c)),
        data: Some(BTreeMap::from([(file.to_string(), text)])),
        ..ConfigMap::default()
    }
}
