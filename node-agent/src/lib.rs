//! dfdaemon: the node agent of the P2P distribution system — content store,
//! piece server, downloader (peers or origin), scheduler client — and the
//! dfget CLI's client side.

pub mod admin;
pub mod allocator;
pub mod announcer;
pub mod api_address;
pub mod cli;
pub mod config;
pub mod containerd;
pub mod daemon;
pub mod demand;
pub mod destination;
pub mod downloader;
pub mod exchange;
pub mod hashring;
pub mod heartbeat;
pub mod kubelet_disk;
pub mod liveness;
pub mod metrics;
pub mod mirror;
pub mod node_report;
pub mod pacer;
pub mod peer_client;
pub mod piece;
pub mod piece_order;
pub mod piece_server;
pub mod ratelimit;
pub mod reader;
pub mod recorded_digests;
pub mod scheduler_client;
pub mod serve;
pub mod source;
pub mod store;
pub mod swarm;
pub mod task;
pub mod task_api;
pub mod task_id;
pub mod task_request;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use api_address::ApiAddress;
use config::DaemonConfig;
use daemon::Daemon;
use scheduler_client::SchedulerPool;
use store::Store;

/// Addresses a running daemon actually bound (ports may be 0 in tests).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// Registry mirror.
    pub proxy: SocketAddr,
    pub peer: SocketAddr,
    pub admin: SocketAddr,
}

/// A stable id for this host, kept in the data dir so a restarted daemon is
/// recognised as the same peer.
fn host_id(data_dir: &std::path::Path) -> anyhow::Result<String> {
    let path = data_dir.join("host_id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim();
        if !id.is_empty() {
            return Ok(id.to_string());
        }
    }
    let id = hex::encode(rand::random::<[u8; 16]>());
    std::fs::write(&path, &id).with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

/// With a cluster identity the host id is the certificate's name, so the
/// scheduler can check that a caller speaks for itself only; a seed needs
/// a seed certificate, a node a node one.
fn member_host_id(tls: &identity::MemberTls, seed: bool) -> anyhow::Result<String> {
    let id = tls.identity();
    let wanted = if seed {
        identity::Role::Seed
    } else {
        identity::Role::Node
    };
    anyhow::ensure!(
        id.role == wanted,
        "the certificate names {id}, but this daemon runs as a {wanted}"
    );
    Ok(id.name)
}

/// Runs dfdaemon until `shutdown` resolves. `on_bound` is told the bound
/// addresses once the servers listen.
pub async fn run(
    config: DaemonConfig,
    shutdown: impl std::future::Future<Output = ()>,
    on_bound: impl FnOnce(Bound),
) -> anyhow::Result<()> {
    config.validate()?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let tls = config
        .tls
        .load()
        .await
        .context("loading the cluster identity (tls)")?;
    let host_id = match &tls {
        Some(tls) => member_host_id(tls, config.seed)?,
        None => host_id(&config.data_dir)?,
    };
    let store = Arc::new(
        Store::open(
            &config.data_dir,
            config.cache_size.as_u64(),
            config.watermarks(),
        )
        .with_context(|| format!("opening content store in {}", config.data_dir.display()))?
        .with_disk_watermarks()
        .with_task_ttl(config.task_ttl),
    );

    let listeners = Listeners::bind(&config).await?;
    let bound = listeners.bound()?;

    let schedulers = SchedulerPool::new(config.scheduler.clone(), tls.clone());
    schedulers.set_host(host_description(&config, &host_id, &bound));
    let daemon = Daemon::new(
        config.clone(),
        host_id.clone(),
        store,
        schedulers.clone(),
        tls.clone(),
    )?;
    match &tls {
        Some(tls) => {
            tracing::info!(identity = %tls.identity(), "cluster identity: the peer port serves members only, over mutual TLS")
        }
        None => tracing::warn!(
            "no --tls-dir: the peer port is plain HTTP and serves anyone who reaches it"
        ),
    }
    tracing::info!(
        host_id = %host_id,
        proxy = %bound.proxy,
        peer = %bound.peer,
        admin = %bound.admin,
        api = %config.api_listen,
        seed = config.seed,
        schedulers = ?config.scheduler,
        "dfdaemon starting"
    );

    let mirror_router = mirror::router(daemon.clone()).context("setting up the registry mirror")?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // The admin port (health, metrics) outlives the others: kubelet keeps
    // probing a pod while it drains.
    let (admin_stop_tx, admin_stop_rx) = tokio::sync::watch::channel(false);
    let ready = Arc::new(AtomicBool::new(false));
    let Servers { admin, serving } = start_servers(
        &daemon,
        listeners,
        mirror_router,
        ready.clone(),
        &stop_rx,
        &admin_stop_rx,
    );

    if schedulers.is_configured() {
        schedulers.refresh().await;
        announcer::announce_once(&daemon).await;
        tokio::spawn(announcer::run(daemon.clone(), stop_rx.clone()));
    } else {
        tracing::warn!("no scheduler configured: every download goes straight to the origin");
    }
    spawn_garbage_collector(daemon.clone(), stop_rx.clone());

    if config.mirror.mirrored_registries.is_empty() {
        tracing::warn!("no --registry given: the mirror serves any registry a caller names");
    }
    // The watcher has a stop of its own: it must be gone before the files
    // are restored, or a late pass would write them again.
    let (watcher_stop, watcher_stopped) = tokio::sync::watch::channel(false);
    let mut watcher_task = None;
    // Constant for the daemon's life: added to every report published.
    let disk_problems: Vec<node_report::NodeProblem> = kubelet_disk::check(
        &config.data_dir,
        &config.kubelet_root_dir,
        config.gc_high_watermark,
        config.kubelet_eviction_threshold,
    )
    .into_iter()
    .collect();
    for problem in &disk_problems {
        tracing::warn!(code = %problem.code, "{}", problem.message);
    }
    if config.containerd.enabled {
        // A node whose hosts.toml cannot be written still pulls straight
        // from its registries: keep serving peers, and tell the operator.
        let (watcher, report) =
            containerd::on_start(&config.containerd, bound.proxy, config.advertise_ip);
        watcher_task = Some(tokio::spawn(containerd::watch::run(
            watcher,
            report,
            config.containerd.recheck_interval,
            daemon.mirror_use.clone(),
            watcher_stopped,
            move |mut report| {
                report.problems.extend(disk_problems.iter().cloned());
                Box::pin(async move { node_report::publish_from_pod(&report).await })
            },
        )));
    }
    ready.store(true, Ordering::SeqCst);
    let proxy_addr = bound.proxy;
    on_bound(bound);
    shutdown.await;
    let drain_deadline = tokio::time::Instant::now() + config.shutdown_grace;
    tracing::info!(grace = ?config.shutdown_grace, "dfdaemon shutting down");
    ready.store(false, Ordering::SeqCst);
    // First of all, stop taking connections: a new pull is refused at once
    // and containerd moves on to the registry, while answers in flight
    // (a blob streaming to containerd) go on.
    let _ = stop_tx.send(true);
    let _ = watcher_stop.send(true);
    if let Some(task) = watcher_task {
        // A pass in progress finishes first (a few small files).
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), task).await;
    }
    if config.containerd.enabled {
        if let Err(e) = containerd::on_stop(&config.containerd, proxy_addr, config.advertise_ip) {
            tracing::error!(error = %e, "restoring containerd's hosts.toml files failed");
        }
    }
    schedulers.leave().await;
    for task in daemon.store.list() {
        let _ = task.flush().await;
    }
    // Answers in flight may finish, within the grace counted from SIGTERM.
    let drained = tokio::time::timeout_at(drain_deadline, futures::future::join_all(serving));
    match drained.await {
        Ok(_) => tracing::info!("every answer in flight finished"),
        Err(_) => {
            tracing::warn!(grace = ?config.shutdown_grace, "answers still in flight at the end of the shutdown grace; cut")
        }
    }
    let _ = admin_stop_tx.send(true);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), admin).await;
    if let ApiAddress::Unix(path) = &config.api_listen {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// The admin port on a runtime of its own: health answers (and says the
/// main runtime stalled) however busy or stuck the main runtime is.
fn serve_on_own_thread(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    options: serve::Options,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::task::spawn_blocking(move || {
        let run = || -> std::io::Result<()> {
            let listener = listener.into_std()?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                serve::serve(
                    "admin",
                    serve::Listener::Tcp(listener),
                    router,
                    options,
                    stop,
                )
                .await;
                Ok(())
            })
        };
        if let Err(e) = run() {
            tracing::error!(error = %e, "the admin port stopped");
        }
    })
}

/// The daemon's four listening sockets, bound before anything starts so a
/// port in use fails the start at once.
struct Listeners {
    peer: tokio::net::TcpListener,
    admin: tokio::net::TcpListener,
    proxy: tokio::net::TcpListener,
    api: serve::Listener,
}

impl Listeners {
    async fn bind(config: &DaemonConfig) -> anyhow::Result<Listeners> {
        let peer = tokio::net::TcpListener::bind(config.peer_listen)
            .await
            .with_context(|| format!("binding piece server on {}", config.peer_listen))?;
        let admin = tokio::net::TcpListener::bind(config.admin_listen)
            .await
            .with_context(|| format!("binding admin server on {}", config.admin_listen))?;
        let proxy = tokio::net::TcpListener::bind(config.proxy_listen)
            .await
            .with_context(|| format!("binding registry mirror on {}", config.proxy_listen))?;
        let api = match &config.api_listen {
            ApiAddress::Unix(path) => serve::bind_unix(path).map(serve::Listener::Unix),
            ApiAddress::Tcp(addr) => tokio::net::TcpListener::bind(addr)
                .await
                .map(serve::Listener::Tcp),
        }
        .with_context(|| format!("binding the task API on {}", config.api_listen))?;
        Ok(Listeners {
            peer,
            admin,
            proxy,
            api,
        })
    }

    fn bound(&self) -> anyhow::Result<Bound> {
        Ok(Bound {
            proxy: self.proxy.local_addr()?,
            peer: self.peer.local_addr()?,
            admin: self.admin.local_addr()?,
        })
    }
}

/// This host as the scheduler sees it.
fn host_description(config: &DaemonConfig, host_id: &str, bound: &Bound) -> proto::Host {
    let hostname = config.hostname.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default()
    });
    proto::Host {
        id: host_id.to_string(),
        hostname,
        ip: config.advertised_ip().to_string(),
        peer_port: bound.peer.port() as u32,
        proxy_port: bound.proxy.port() as u32,
        admin_port: bound.admin.port() as u32,
        r#type: if config.seed {
            proto::HostType::Seed as i32
        } else {
            proto::HostType::Normal as i32
        },
        upload_capacity: config.upload_limit,
        free_upload_slots: config.upload_limit,
        labels: config.labels.clone().into_iter().collect(),
    }
}

/// Evicts tasks over the cache quota every interval, and at once when a
/// write finds the quota full or the disk out of space.
fn spawn_garbage_collector(daemon: Arc<Daemon>, mut stop: tokio::sync::watch::Receiver<bool>) {
    tokio::spawn(async move {
        let budget = daemon.store.budget().clone();
        loop {
            daemon.collect_garbage().await;
            tokio::select! {
                _ = tokio::time::sleep(daemon.config.gc_interval) => {}
                _ = budget.pressure() => {}
                _ = stop.changed() => break,
            }
        }
    });
}

/// Serves the peer port (members only, with cluster identity), the admin
/// port, the registry mirror and the local task API until `stop`.
/// The admin server, stopped last, and the servers that drain at SIGTERM.
struct Servers {
    admin: tokio::task::JoinHandle<()>,
    serving: Vec<tokio::task::JoinHandle<()>>,
}

fn start_servers(
    daemon: &Arc<Daemon>,
    listeners: Listeners,
    mirror_router: axum::Router,
    ready: Arc<AtomicBool>,
    stop: &tokio::sync::watch::Receiver<bool>,
    admin_stop: &tokio::sync::watch::Receiver<bool>,
) -> Servers {
    let serve = |name: &'static str,
                 listener: serve::Listener,
                 router: axum::Router,
                 tls: Option<tokio_rustls::TlsAcceptor>,
                 bulk: bool| {
        let refused = daemon
            .metrics
            .connections_refused
            .get_or_create(&metrics::ListenerLabel { listener: name })
            .clone();
        tokio::spawn(serve::serve(
            name,
            listener,
            router,
            serve::Options {
                limits: daemon.config.serve_limits(),
                refused: Some(refused),
                tls,
                bulk,
            },
            stop.clone(),
        ))
    };
    // Children, seeds' callers and the operator (Preheat) call the peer
    // port; nothing else in the cluster may.
    let peer_tls = daemon.tls.as_ref().map(|t| {
        use identity::Role;
        t.acceptor(&[Role::Node, Role::Seed, Role::Operator])
    });
    let admin = serve_on_own_thread(
        listeners.admin,
        admin::router(daemon.clone(), ready),
        serve::Options {
            limits: daemon.config.serve_limits(),
            refused: Some(
                daemon
                    .metrics
                    .connections_refused
                    .get_or_create(&metrics::ListenerLabel { listener: "admin" })
                    .clone(),
            ),
            tls: None,
            bulk: false,
        },
        admin_stop.clone(),
    );
    tokio::spawn(daemon.heartbeat.clone().run(admin_stop.clone()));
    let serving = vec![
        serve(
            "peer",
            serve::Listener::Tcp(listeners.peer),
            piece_server::router(daemon.clone()),
            peer_tls,
            // Uploads to peers: behind this node's own traffic.
            true,
        ),
        serve(
            "mirror",
            serve::Listener::Tcp(listeners.proxy),
            mirror_router,
            None,
            false,
        ),
        serve(
            "api",
            listeners.api,
            task_api::local_router(daemon.clone()),
            None,
            false,
        ),
    ];
    Servers { admin, serving }
}
