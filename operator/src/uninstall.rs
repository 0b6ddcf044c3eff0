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
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: String,
    /// Give up waiting after this many seconds (the operator's own cleanup timeout still applies).
    #[arg(long, default_value_t = 600)]
    pub timeout_seconds: u64,
}

pub async fn uninstall(args: UninstallArgs) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("cannot build a Kubernetes client")?;
    let api: Api<DragonflyCluster> = Api::namespaced(client, &args.namespace);
    let clusters = api
        .list(&ListParams::default())
        .await
        .context("cannot list DragonflyClusters")?;
    for dfc in &clusters.items {
        info!(name = %dfc.name_any(), "deleting");
        api.delete(&dfc.name_any(), &DeleteParams::background())
            .await?;
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
