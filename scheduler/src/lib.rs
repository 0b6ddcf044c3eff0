//! The dragonfly scheduler: knows hosts, tasks and who holds which pieces;
//! picks parents for every downloading peer; elects the one back-to-source
//! downloader per task. Soft state only: a restarted scheduler relearns
//! everything from heartbeats and re-reports.
//!
//! Data flows one way: `service` (gRPC) → `state` (decisions) → `hosts`,
//! `tasks`, `ranking` (facts and pure choices).

pub mod address;
pub mod admin;
pub mod anonymous;
pub mod budget;
pub mod config;
pub mod digests;
pub mod hosts;
pub mod members;
pub mod metrics;
pub mod quarantine;
pub mod ranking;
pub mod rate;
pub mod service;
pub mod state;
pub mod tags;
pub mod tasks;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;
use tracing::{debug, info};

pub use config::{Cli, Config};

use crate::metrics::Metrics;
use crate::service::SchedulerService;
use crate::state::{Settings, SharedState, State};

/// In-flight requests get this long to finish once shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A scheduler with its listeners bound, not yet serving. Binding first lets
/// callers (tests) learn the real addresses when asked for port 0.
pub struct Server {
    config: Config,
    grpc: TcpListener,
    admin: TcpListener,
    tls: Option<identity::MemberTls>,
}

impl Server {
    pub async fn bind(config: Config) -> anyhow::Result<Server> {
        config.validate()?;
        let tls = config
            .tls
            .load()
            .await
            .context("loading the cluster identity (tls)")?;
        if let Some(tls) = &tls {
            let id = tls.identity();
            anyhow::ensure!(
                id.role == identity::Role::Scheduler,
                "the certificate names {id}, not a scheduler"
            );
        }
        let grpc = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let admin = TcpListener::bind(config.admin_listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.admin_listen))?;
        Ok(Server {
            config,
            grpc,
            admin,
            tls,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc.local_addr().unwrap_or(self.config.listen)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr().unwrap_or(self.config.admin_listen)
    }

    /// Serves gRPC and admin until `shutdown` completes (or a server fails).
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Server {
            config,
            grpc,
            admin,
            tls,
        } = self;
        let metrics = Arc::new(Metrics::new());
        let settings = Settings {
            max_parents: config.max_parents,
            host_ttl: config.host_ttl(),
            task_idle_ttl: config.task_idle_ttl,
            tag_ttl: config.tag_ttl,
        };
        let state = SharedState::new(State::new(settings, metrics.clone()));
        let ready = Arc::new(AtomicBool::new(false));
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            // An error means the sender is gone, which also means stop.
            let _ = rx.wait_for(|stop| *stop).await;
        };

        let sweeper = tokio::spawn(sweep_loop(
            state.clone(),
            sweep_interval(settings.host_ttl),
            stop_rx.clone(),
        ));

        let grpc_addr = grpc.local_addr()?;
        let service =
            SchedulerService::new(state.clone(), metrics.clone(), config.heartbeat_interval);
        let grpc_server = async {
            let mut builder = tonic::transport::Server::builder();
            let stop = stopped(stop_rx.clone());
            match &tls {
                Some(tls) => {
                    info!(identity = %tls.identity(), "cluster identity: gRPC serves members only, over mutual TLS");
                    let service =
                        proto::scheduler_server::SchedulerServer::new(service.members_only());
                    builder
                        .add_service(service)
                        .serve_with_incoming_shutdown(members::incoming(grpc, tls), stop)
                        .await
                }
                None => {
                    tracing::warn!("no --tls-dir: gRPC is plain and serves anyone who reaches it");
                    let incoming = TcpIncoming::from(grpc).with_nodelay(Some(true));
                    builder
                        .add_service(proto::scheduler_server::SchedulerServer::new(service))
                        .serve_with_incoming_shutdown(incoming, stop)
                        .await
                }
            }
        };
        let admin_addr = admin.local_addr()?;
        let admin_router = admin::router(admin::Admin {
            state,
            metrics,
            ready: ready.clone(),
        });
        let admin_server =
            axum::serve(admin, admin_router).with_graceful_shutdown(stopped(stop_rx.clone()));
        let servers = async {
            tokio::try_join!(
                async { grpc_server.await.context("gRPC server failed") },
                async { admin_server.await.context("admin server failed") },
            )
        };
        tokio::pin!(servers);

        ready.store(true, Ordering::Relaxed);
        info!(grpc = %grpc_addr, admin = %admin_addr, "scheduler serving");
        let result = tokio::select! {
            result = &mut servers => result.map(|_| ()),
            () = shutdown => {
                info!("shutting down");
                ready.store(false, Ordering::Relaxed);
                let _ = stop_tx.send(true);
                match tokio::time::timeout(SHUTDOWN_GRACE, &mut servers).await {
                    Ok(result) => result.map(|_| ()),
                    Err(_) => Ok(()),
                }
            }
        };
        ready.store(false, Ordering::Relaxed);
        let _ = stop_tx.send(true);
        let _ = sweeper.await;
        result
    }
}

/// Binds and serves until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    Server::bind(config).await?.serve(shutdown).await
}

/// Sweeps often enough that a host is forgotten within ~1.25 TTL, without
/// spinning for tiny test TTLs or idling long for big ones.
fn sweep_interval(host_ttl: Duration) -> Duration {
    (host_ttl / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

async fn sweep_loop(state: Arc<SharedState>, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let swept = state.with(|s| s.sweep(Instant::now()));
                if swept.peers > 0 || swept.tasks > 0 {
                    debug!(hosts = swept.hosts.len(), peers = swept.peers, tasks = swept.tasks, "swept");
                }
            }
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
            }
        }
    }
}
