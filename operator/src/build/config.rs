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
    if !seed {
        // Explicit, not left to dfdaemon's default: a dfdaemon stopped by
        // SIGTERM (uninstall, or a terminating namespace where the cleanup
        // DaemonSet cannot be created) puts the node's hosts.toml back itself.
        settings["containerd"] = json!({ "restore_on_stop": true });
    }
    // A registry listed as http://HOST is plain HTTP upstream; the mirror must know.
    let plain: BTreeMap<String, Value> = spec
        .registries
        .iter()
        .filter_map(|r| r.strip_prefix("http://"))
        .map(|host| {
            (
                host.trim_end_matches('/').to_string(),
                json!({"plain_http": true}),
            )
        })
        .collect();
    if !plain.is_empty() {
        settings["mirror"] = json!({ "registries": plain });
    }
    // The mirror serves these registries only: a pod cannot point it (and
    // its access checks) at a registry of its own.
    if !spec.registries.is_empty() && !spec.registries.iter().any(|r| r == "_default") {
        settings["mirror"]["mirrored_registries"] = json!(spec.registries);
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
