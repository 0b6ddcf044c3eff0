//! `dragonfly-operator uninstall`: the Helm pre-delete hook. Deleting the
//! clusters while the operator still runs lets its finalizer restore every
//! node before the operator itself is removed.

use std::time::Duration;

use anyhow::{bail, Context as _};
use kube::api::{Api, DeleteParams, ListParams};
use kube::{Client, ResourceExt};
use tracing::{info, warn};

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
    uninstall_with(client, args).await
}

async fn uninstall_with(client: Client, args: UninstallArgs) -> anyhow::Result<()> {
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
    let mut left = Vec::new();
    loop {
        match api.list(&ListParams::default()).await {
            Ok(l) if l.items.is_empty() => {
                info!("every DragonflyCluster is gone");
                return Ok(());
            }
            Ok(l) => {
                left = l
                    .items
                    .iter()
                    .map(|d| format!("{}/{}", d.namespace().unwrap_or_default(), d.name_any()))
                    .collect();
            }
            // A hiccup of the API server is retried until the deadline.
            Err(e) => warn!(error = %e, "cannot list DragonflyClusters; retrying"),
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "DragonflyCluster(s) still present after {}s: {}",
                args.timeout_seconds,
                left.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_api::FakeApi;

    fn path(ns: &str, name: &str) -> String {
        format!("/apis/p2p.dragonfly.dev/v1alpha1/namespaces/{ns}/dragonflyclusters/{name}")
    }

    fn seeded() -> (Client, FakeApi) {
        let (client, fake) = FakeApi::start();
        for (ns, name) in [("a", "one"), ("b", "two")] {
            let mut dfc = DragonflyCluster::new(name, Default::default());
            dfc.metadata.namespace = Some(ns.into());
            fake.insert(&path(ns, name), serde_json::to_value(&dfc).expect("json"));
        }
        (client, fake)
    }

    async fn bounded(client: Client, namespace: Option<&str>) -> anyhow::Result<()> {
        let args = UninstallArgs {
            namespace: namespace.map(String::from),
            timeout_seconds: 5,
        };
        tokio::time::timeout(Duration::from_secs(10), uninstall_with(client, args))
            .await
            .expect("bounded")
    }

    #[tokio::test]
    async fn deletes_the_clusters_of_every_namespace_by_default() {
        let (client, fake) = seeded();
        bounded(client, None).await.expect("uninstall");
        assert!(fake.object(&path("a", "one")).is_none());
        assert!(fake.object(&path("b", "two")).is_none());
    }

    #[tokio::test]
    async fn a_watched_namespace_limits_it_to_that_one() {
        let (client, fake) = seeded();
        bounded(client, Some("a")).await.expect("uninstall");
        assert!(fake.object(&path("a", "one")).is_none());
        assert!(fake.object(&path("b", "two")).is_some());
    }
}
