//! ConfigMaps holding each component's rendered `--config` file.
//!
//! Keys are the long flag names (`cache-size`, `admin-listen`, ...), because
//! every binary reads the same settings from `--config FILE` as from flags.

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
    let d = &spec.dfdaemon;
    let s = &spec.seed_peer;
    let mut settings = json!({
        "seed": true,
        "scheduler": ctx.scheduler_address(),
        "data-dir": super::seed_peer::DATA_MOUNT,
        "cache-size": s.cache_size,
        "proxy-listen": format!("0.0.0.0:{}", d.proxy_port),
        "peer-listen": format!("0.0.0.0:{}", d.peer_port),
        "admin-listen": format!("0.0.0.0:{}", d.admin_port),
        "upload-limit": d.upload_limit,
    });
    if let Some(rate) = &s.upload_rate {
        settings["upload-rate"] = rate.clone().into();
    }
    configmap(ctx, Component::SeedPeer, DFDAEMON_FILE, &settings)
}

pub fn dfdaemon_configmap(ctx: &Ctx) -> ConfigMap {
    let spec = &ctx.dfc.spec;
    let d = &spec.dfdaemon;
    let mut settings = json!({
        "scheduler": ctx.scheduler_address(),
        "data-dir": d.data_dir,
        "cache-size": d.cache_size,
        "proxy-listen": format!("0.0.0.0:{}", d.proxy_port),
        "peer-listen": format!("0.0.0.0:{}", d.peer_port),
        "admin-listen": format!("0.0.0.0:{}", d.admin_port),
        "upload-limit": d.upload_limit,
        "containerd-config-path": spec.containerd.config_path,
        "containerd-config": super::dfdaemon::containerd_config_in_pod(ctx),
        "registry": spec.registries,
    });
    if let Some(rate) = &d.upload_rate {
        settings["upload-rate"] = rate.clone().into();
    }
    if !d.labels.is_empty() {
        settings["label"] = d
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .into();
    }
    configmap(ctx, Component::Dfdaemon, DFDAEMON_FILE, &settings)
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
