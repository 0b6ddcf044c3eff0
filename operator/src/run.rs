//! `dragonfly-operator run`: connect, wait for the leader lease, run the
//! DragonflyCluster and Preheat controllers, serve `/healthz`, `/readyz`, `/metrics`, stop cleanly on
//! SIGTERM/SIGINT or when leadership is lost.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DynamicObject, ListParams};
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::build::{
    managed_kinds, Component, LABEL_COMPONENT, LABEL_INSTANCE, LABEL_MANAGED_BY, MANAGER,
};
use crate::controller::{error_policy, reconcile, Context};
use crate::crd::DragonflyCluster;
use crate::leader::{self, Elector, LeaseConfig};
use crate::metrics::Metrics;
use crate::preheat::{self, Preheat};

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:8000", env = "OPERATOR_ADMIN_LISTEN")]
    pub admin_listen: SocketAddr,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Namespace of the leader-election Lease (default: the pod's namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "dragonfly-system")]
    pub lease_namespace: String,
    #[arg(long, default_value = "dragonfly-operator-leader")]
    pub lease_name: String,
    /// Skip leader election (a single replica, or local development).
    #[arg(long)]
    pub no_leader_election: bool,
    /// Address of the certificate issuer (member pods get their cluster
    /// identity there).
    #[arg(long, default_value = "0.0.0.0:8443", env = "OPERATOR_ISSUER_LISTEN")]
    pub issuer_listen: SocketAddr,
    /// The issuer's URL as member pods reach it [default:
    /// https://dragonfly-operator.<namespace>.svc:8443].
    #[arg(long, env = "OPERATOR_ISSUER_URL")]
    pub issuer_url: Option<String>,
    /// Build member pods without a cluster identity: their ports are then
    /// plain and open to every pod (not for production).
    #[arg(long)]
    pub no_cluster_identity: bool,
    /// Bring the served CRDs up to this version at start (server-side
    /// apply); `--manage-crds=false` when CRDs are managed elsewhere.
    #[arg(
        long,
        env = "OPERATOR_MANAGE_CRDS",
        default_value_t = true,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub manage_crds: bool,
    /// The operator's own Deployment (in the pod's namespace): it owns the
    /// cluster CA Secret, so removing the operator removes the CA.
    #[arg(long, env = "OPERATOR_DEPLOYMENT")]
    pub owner_deployment: Option<String>,
}

/// What the cluster identity gives the controllers.
struct ClusterIdentity {
    issuer_url: String,
    ca: watch::Receiver<Arc<crate::cluster_ca::CaState>>,
    /// The operator's own member certificate (issuer and Preheat).
    tls: identity::MemberTls,
}

/// Loads or creates the cluster CA, issues this replica its operator
/// certificate (renewed with the CA, and at two thirds of its life), and
/// serves the issuer. Every replica does this: the issuer Service reaches
/// any of them.
async fn start_cluster_identity(
    client: &Client,
    args: &RunArgs,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<ClusterIdentity> {
    use crate::cluster_ca;
    let ns = &args.lease_namespace;
    let owner = match &args.owner_deployment {
        Some(name) => owner_deployment(client, ns, name).await,
        None => None,
    };
    let state = cluster_ca::ensure(client, ns, owner.as_ref())
        .await
        .context("setting up the cluster CA")?;
    let (ca_tx, ca_rx) = watch::channel(Arc::new(state));
    cluster_ca::spawn_keeper(client.clone(), ns.clone(), owner, ca_tx);
    let name = std::env::var("POD_NAME").unwrap_or_else(|_| "dragonfly-operator".into());
    let me = identity::Identity::new(identity::Role::Operator, name)?;
    const OPERATOR_VALIDITY: Duration = Duration::from_secs(7 * 86400);
    let issue = move |state: &crate::cluster_ca::CaState| {
        state
            .ca
            .issue(&me, OPERATOR_VALIDITY)
            .map(|m| identity::IssuedMember {
                ca_pem: state.bundle.clone(),
                ..m
            })
    };
    let tls = identity::MemberTls::from_issued(&issue(&ca_rx.borrow())?)?;
    let renewing = tls.clone();
    let mut changes = ca_rx.clone();
    tokio::spawn(async move {
        loop {
            let left = renewing
                .not_after()
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(left / 3) => {}
            }
            let renewed = issue(&changes.borrow_and_update()).and_then(|m| renewing.renew_from(&m));
            if let Err(e) = renewed {
                warn!(error = %e, "renewing the operator's certificate failed");
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        }
    });
    let listener = tokio::net::TcpListener::bind(args.issuer_listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.issuer_listen))?;
    info!(addr = %args.issuer_listen, "certificate issuer listening");
    let router = crate::issuer::router(Arc::new(crate::issuer::Issuer {
        client: client.clone(),
        ca: ca_rx.clone(),
    }));
    tokio::spawn(crate::issuer::serve(listener, tls.clone(), router, stop));
    let issuer_url = args.issuer_url.clone().unwrap_or_else(|| {
        format!(
            "https://dragonfly-operator.{ns}.svc:{}",
            crate::issuer::ISSUER_PORT
        )
    });
    Ok(ClusterIdentity {
        issuer_url,
        ca: ca_rx,
        tls,
    })
}

/// The owner reference to the operator's Deployment; None (logged) when it
/// cannot be read: the CA then just outlives an uninstall, as before.
async fn owner_deployment(
    client: &Client,
    ns: &str,
    name: &str,
) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    use k8s_openapi::api::apps::v1::Deployment;
    use kube::Resource as _;
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    match api.get(name).await {
        Ok(d) => d.controller_owner_ref(&()).map(|mut o| {
            // Not the controller, and no blockOwnerDeletion (which needs
            // the Deployment's finalizers): just an owner for the GC.
            o.controller = None;
            o.block_owner_deletion = None;
            o
        }),
        Err(e) => {
            warn!(deployment = name, namespace = ns, error = %e, "cannot read the operator's Deployment; the cluster CA Secret gets no owner");
            None
        }
    }
}

struct AdminState {
    registry: Registry,
    ready: AtomicBool,
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);

    let client = connect().await?;
    crate::kube_version::ensure_supported(&client).await?;
    if args.manage_crds {
        crate::crd_manage::ensure_current(&client).await;
    } else {
        info!("--manage-crds=false: the served CRDs are left as they are");
    }
    let preheats_installed = preheat_crd_installed(&client, args.watch_namespace.as_deref()).await;

    let admin = Arc::new(AdminState {
        registry,
        ready: AtomicBool::new(false),
    });
    let listener = tokio::net::TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.admin_listen))?;
    info!(addr = %args.admin_listen, "admin server listening");
    let (stop_tx, stop_rx) = watch::channel(false);
    let admin_server = tokio::spawn(serve_admin(listener, admin.clone(), stop_rx.clone()));
    tokio::spawn(forward_signals(stop_tx.clone()));
    let cluster_identity = if args.no_cluster_identity {
        warn!("--no-cluster-identity: member pods run without TLS, their ports open to every pod");
        None
    } else {
        Some(start_cluster_identity(&client, &args, stop_rx.clone()).await?)
    };
    // Standby replicas are healthy and ready too: they only wait for the lease.
    admin.ready.store(true, Ordering::Relaxed);

    // Without election the sender lives for the whole run, so the flag never drops.
    let (always_leader, always_rx) = watch::channel(true);
    let (mut leader_rx, lease_task) = if args.no_leader_election {
        (always_rx, None)
    } else {
        // Unique per replica (holder identity and field manager), so the
        // conditional writes in `leader` let exactly one replica lead.
        let identity = leader::identity();
        let elector = Elector::new(
            client.clone(),
            LeaseConfig::new(&args.lease_namespace, &args.lease_name, &identity),
        );
        info!(%identity, lease = %args.lease_name, "waiting for the leader lease");
        let (rx, task) = leader::spawn(elector);
        (rx, Some(task))
    };

    let mut stop = stop_rx.clone();
    let became_leader = async {
        loop {
            if *leader_rx.borrow_and_update() {
                return true;
            }
            if leader_rx.changed().await.is_err() {
                return false;
            }
        }
    };
    let leading = tokio::select! {
        l = became_leader => l,
        _ = stop.wait_for(|s| *s) => false,
    };

    if leading {
        metrics.leader.set(1);
        info!("leading; starting the controller");
        let mut ctx = Context::new(client.clone(), metrics.clone())
            .with_node_agents(args.lease_namespace.clone());
        if let Some(ci) = &cluster_identity {
            ctx = ctx.with_tls(ci.issuer_url.clone(), ci.ca.clone());
        }
        let ctx = Arc::new(ctx);
        let shutdown = |log: bool| {
            let mut stop = stop_rx.clone();
            let mut lost = leader_rx.clone();
            async move {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => if log { info!("shutting down") },
                    _ = lost.wait_for(|l| !*l) => if log { warn!("lost the leader lease; stopping") },
                }
            }
        };
        let preheats = async {
            if !preheats_installed {
                return;
            }
            let mut pctx = preheat::controller::Context::new(client.clone(), metrics.clone());
            pctx.tls = cluster_identity.as_ref().map(|ci| ci.tls.clone());
            let pctx = Arc::new(pctx);
            let api: Api<Preheat> = match args.watch_namespace.as_deref() {
                Some(ns) => Api::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            };
            preheat::controller::run(api, pctx, shutdown(false)).await;
        };
        tokio::join!(
            controller(
                client.clone(),
                args.watch_namespace.as_deref(),
                ctx,
                shutdown(true)
            ),
            preheats
        );
        metrics.leader.set(0);
    }

    // Dropping the receiver makes the lease task release the lease for a fast hand-over.
    let lost_lease = leading && !*leader_rx.borrow();
    drop(leader_rx);
    if let Some(task) = lease_task {
        match tokio::time::timeout(Duration::from_secs(5), task).await {
            Ok(Ok(Ok(()))) => info!("leader lease released"),
            Ok(Ok(Err(e))) => warn!(%e, "could not release the leader lease"),
            Ok(Err(e)) => warn!(%e, "lease task failed"),
            Err(_) => warn!("timed out releasing the leader lease"),
        }
    }
    drop(always_leader);
    let _ = stop_tx.send(true);
    let _ = admin_server.await;
    if lost_lease {
        bail!("lost the leader lease; exiting so the pod restarts and campaigns again");
    }
    Ok(())
}

/// A client for the inferred configuration (in-cluster or kubeconfig) and
/// the API server's URL, for messages.
pub async fn client() -> anyhow::Result<(Client, String)> {
    let config = kube::Config::infer()
        .await
        .context("no Kubernetes configuration found (in-cluster service account or kubeconfig)")?;
    let url = config.cluster_url.to_string();
    let client = Client::try_from(config)
        .with_context(|| format!("cannot build a Kubernetes client for {url}"))?;
    Ok((client, url))
}

/// A client and one real API call, each bounded, so a bad kubeconfig or an
/// unreachable API server ends in a clear message.
async fn connect() -> anyhow::Result<Client> {
    let (client, url) = client().await?;
    let api: Api<DragonflyCluster> = Api::all(client.clone());
    match tokio::time::timeout(Duration::from_secs(15), api.list(&ListParams::default().limit(1))).await {
        Err(_) => bail!("Kubernetes API at {url} did not answer within 15s"),
        Ok(Err(kube::Error::Api(s))) if s.code == 404 => bail!(
            "the DragonflyCluster CRD is not installed at {url}; install it with `dragonfly-operator crd | kubectl apply -f -`"
        ),
        Ok(Err(e)) => bail!("cannot reach the Kubernetes API at {url}: {e}"),
        Ok(Ok(_)) => Ok(client),
    }
}

/// The Preheat controller runs only where its CRD is installed (an install
/// from before Preheat existed keeps working, with a warning).
async fn preheat_crd_installed(client: &Client, ns: Option<&str>) -> bool {
    let api: Api<Preheat> = match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    match tokio::time::timeout(
        Duration::from_secs(15),
        api.list(&ListParams::default().limit(1)),
    )
    .await
    {
        Ok(Err(kube::Error::Api(s))) if s.code == 404 => {
            warn!("the Preheat CRD is not installed; the Preheat controller is off (install it with `dragonfly-operator crd | kubectl apply -f -`)");
            false
        }
        // Anything else (forbidden, slow) surfaces in the controller's own watch errors.
        _ => true,
    }
}

async fn controller(
    client: Client,
    namespace: Option<&str>,
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let owned = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGER}"));
    let dfdaemon_pods = watcher::Config::default().labels(&format!(
        "{LABEL_MANAGED_BY}={MANAGER},{LABEL_COMPONENT}={}",
        Component::Dfdaemon.as_str()
    ));
    let mut controller = Controller::new(
        api::<DragonflyCluster>(&client, namespace),
        watcher::Config::default().any_semantic(),
    );
    // Every kind the operator applies, so an edit of any owned object (a
    // `kubectl edit` of a ConfigMap as much as of the DaemonSet) triggers
    // a reconcile, whose apply reverts it.
    for ar in managed_kinds() {
        let api: Api<DynamicObject> = match namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
            None => Api::all_with(client.clone(), &ar),
        };
        controller = controller.owns_with(api, ar, owned.clone());
    }
    controller
        // dfdaemon pods belong to a DaemonSet, so map them to their cluster by label:
        // that is how new node reports reach the status.
        .watches(api::<Pod>(&client, namespace), dfdaemon_pods, |pod: Pod| {
            let ns = pod.namespace()?;
            let instance = pod.labels().get(LABEL_INSTANCE)?.clone();
            Some(ObjectRef::<DragonflyCluster>::new(&instance).within(&ns))
        })
        // Many pods report at once when a DaemonSet rolls; fold them into one reconcile.
        .with_config(controller::Config::default().debounce(Duration::from_secs(2)))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(name = %obj.name, "reconciled"),
                // One bad object or a watch hiccup is logged, never fatal.
                Err(e) => warn!(error = %e, "controller event"),
            }
        })
        .await;
}

async fn forward_signals(stop: watch::Sender<bool>) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                error!(%e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => info!("SIGINT received"),
        _ = term => info!("SIGTERM received"),
    }
    let _ = stop.send(true);
}

async fn serve_admin(
    listener: tokio::net::TcpListener,
    state: Arc<AdminState>,
    mut stop: watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state);
    let shutdown = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        error!(%e, "admin server failed");
    }
}

async fn readyz(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

async fn metrics(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &s.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                axum::http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    #[test]
    fn crds_are_managed_unless_turned_off_and_the_owner_is_optional() {
        use clap::Parser as _;
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("run").chain(args.iter().copied()))
                .expect("parses")
                .run
        };
        assert!(parse(&[]).manage_crds);
        assert!(parse(&["--manage-crds"]).manage_crds);
        assert!(!parse(&["--manage-crds=false"]).manage_crds);
        assert_eq!(parse(&[]).owner_deployment, None);
        assert_eq!(
            parse(&["--owner-deployment", "dragonfly-operator"])
                .owner_deployment
                .as_deref(),
            Some("dragonfly-operator")
        );
    }

    #[tokio::test]
    async fn admin_endpoints_report_health_readiness_and_metrics() {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        metrics.failure("ApiConflict");
        metrics.reconciles.inc();
        let state = Arc::new(AdminState {
            registry,
            ready: AtomicBool::new(false),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop_tx, stop_rx) = watch::channel(false);
        let server = tokio::spawn(serve_admin(listener, state.clone(), stop_rx));

        let checks = async {
            assert!(get(addr, "/healthz").await.starts_with("HTTP/1.0 200"));
            assert!(get(addr, "/readyz").await.starts_with("HTTP/1.0 503"));
            state.ready.store(true, Ordering::Relaxed);
            assert!(get(addr, "/readyz").await.starts_with("HTTP/1.0 200"));
            let m = get(addr, "/metrics").await;
            assert!(m.contains("dragonfly_operator_reconciles_total 1"), "{m}");
            assert!(
                m.contains("dragonfly_operator_reconcile_failures_total{reason=\"ApiConflict\"} 1"),
                "{m}"
            );
            assert!(
                m.contains("dragonfly_operator_reconcile_duration_seconds_bucket"),
                "{m}"
            );
        };
        tokio::time::timeout(Duration::from_secs(10), checks)
            .await
            .expect("bounded");
        let _ = stop_tx.send(true);
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("server stops on request")
            .expect("server task");
    }
}
