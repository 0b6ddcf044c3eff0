//! `dragonfly-operator uninstall`: the Helm pre-delete hook. Deleting the
//! clusters while the operator still runs lets its finalizer restore every
//! node before the operator itself is removed.

use std::time::Duration;

use anyhow::{bail, Context as _};
use kube::api::{Api, DeleteParams, ListParams};
use kube::{Client, ResourceExt};
use tracing::info;

use crate::crd::DragonflyCluster;

#[derive(clap::Args, Debug, Clone)]
pub struct UninstallArgs {
    /// Only this namespace (the operator's `--watch-namespace`); default:
    /// every namespace, as an operator watching all of them.
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Give up waiting after this many seconds (the operator's own cleanup timeout still applies).
    #[arg(long, default_value_t = 600)]
    pub timeout_seconds: u64,
}

pub async fn uninstall(args: UninstallArgs) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("cannot build a Kubernetes client")?;
    let namespace = args.namespace.as_deref().filter(|n| !n.is_empty());
    let api: Api<DragonflyCluster> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let clusters = api
        .list(&ListParams::default())
        .await
        .context("cannot list DragonflyClusters")?;
    info!(
        scope = namespace.unwrap_or("all namespaces"),
        count = clusters.items.len(),
        "deleting every DragonflyCluster"
    );
    for dfc in &clusters.items {
        let ns = dfc.namespace().unwrap_or_default();
        info!(namespace = %ns, name = %dfc.name_any(), "deleting");
        let one: Api<DragonflyCluster> = Api::namespaced(client.clone(), &ns);
        match one
            .delete(&dfc.name_any(), &DeleteParams::background())
            .await
        {
            Ok(_) => {}
            // Deleted meanwhile (by a user, or its namespace went).
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                return Err(e).with_context(|| format!("cannot delete {ns}/{}", dfc.name_any()))
            }
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout_seconds);
    loop {
        let left = api.list(&ListParams::default()).await?.items.len();
        if left == 0 {
            info!("every DragonflyCluster is gone");
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "{left} DragonflyCluster(s) still present after {}s",
                args.timeout_seconds
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
