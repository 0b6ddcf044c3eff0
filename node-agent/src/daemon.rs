//! The daemon's shared context and the task life cycle: start a download (or
//! join the one running), finish it (verify, report, copy out), fail it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::config::DaemonConfig;
use crate::downloader::{self, DownloadContext, SwarmSettings};
use crate::metrics::Metrics;
use crate::peer_client::PeerClient;
use crate::scheduler_client::SchedulerPool;
use crate::source::SourceClient;
use crate::store::{RunState, Store, StoredTask, TaskFailure};
use crate::task::{RunEnd, TaskProgress, Tasks};
use crate::task_request::TaskRequest;

pub struct Daemon {
    pub config: DaemonConfig,
    pub host_id: String,
    pub store: Arc<Store>,
    pub schedulers: Arc<SchedulerPool>,
    pub metrics: Arc<Metrics>,
    pub source: SourceClient,
    pub peers: PeerClient,
    /// This member's cluster identity; None: plain HTTP between peers.
    pub tls: Option<identity::MemberTls>,
    pub uploads: Arc<Semaphore>,
    /// Where origin and registry requests may go.
    pub destinations: Arc<crate::destination::DestinationPolicy>,
    /// Whether the registry mirror can serve promptly (`/server/ping`).
    pub mirror_health: Arc<crate::mirror::health::MirrorHealth>,
    /// Every task's runtime state.
    pub tasks: Arc<Tasks>,
    /// When containerd last pulled through the mirror.
    pub mirror_use: Arc<crate::mirror::usage::MirrorUse>,
    /// Whether the runtime still runs (`/healthz`).
    pub heartbeat: Arc<crate::heartbeat::Heartbeat>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    BadRequest(String),
    #[error("content store: {0}")]
    Store(#[from] std::io::Error),
}

impl Daemon {
    pub fn new(
        config: DaemonConfig,
        host_id: String,
        store: Arc<Store>,
        schedulers: Arc<SchedulerPool>,
        tls: Option<identity::MemberTls>,
    ) -> anyhow::Result<Arc<Self>> {
        let uploads = Arc::new(Semaphore::new(config.upload_limit as usize));
        let metrics = Arc::new(Metrics::new());
        Ok(Arc::new(Daemon {
            source: SourceClient::with_registry_tls(&config.mirror)?.counting(metrics.clone()),
            peers: PeerClient::new(config.piece_timeout, tls.as_ref())?,
            tls,
            destinations: config.mirror.destinations(),
            config,
            host_id,
            store,
            schedulers,
            metrics,
            uploads,
            mirror_health: Arc::default(),
            tasks: Arc::default(),
            mirror_use: Arc::default(),
            heartbeat: Arc::default(),
        }))
    }

    /// Starts downloading the task `request` names, unless it is already
    /// complete or running; returns the stored task either way. A `lazy`
    /// request only opens the task: its run learns the length and
    /// registers with the scheduler, then fetches what
    /// [`Daemon::want_bytes`] and peers ask for (plus a capped background
    /// prefetch of the rest with `prefetch`).
    pub fn start_task(
        self: &Arc<Self>,
        request: TaskRequest,
    ) -> Result<Arc<StoredTask>, StartError> {
        let (lazy, prefetch) = (request.lazy, request.prefetch);
        self.open(request, |demand| {
            if !lazy {
                demand.want_all()
            } else if prefetch {
                demand.want_prefetch()
            }
        })
    }

    fn open(
        self: &Arc<Self>,
        request: TaskRequest,
        want: impl FnOnce(&crate::demand::Demand),
    ) -> Result<Arc<StoredTask>, StartError> {
        let task_id = request.validate().map_err(StartError::BadRequest)?;
        self.destinations
            .check(&request.url)
            .map_err(|e| StartError::BadRequest(e.to_string()))?;
        let task = self
            .store
            .get_or_create(&task_id, &request.url, request.digest.clone())?;
        task.touch();
        if task.is_complete() {
            if let Some(output) = &request.output {
                self.spawn_copy_out(task.clone(), output.clone());
            }
            return Ok(task);
        }
        let progress = self.tasks.get_or_insert(&task_id);
        want(&progress.demand);
        if request.seed_request {
            // The scheduler elected this seed when it told a peer to
            // trigger it: children may ask for pieces before the run has
            // registered.
            progress.elected_source.store(true, Ordering::SeqCst);
        }
        progress.set_request(Some(TaskRequest {
            output: None,
            ..request.clone()
        }));
        self.ensure_run(&task, request);
        Ok(task)
    }

    /// Asks for bytes `[start, end)` of a task opened with
    /// a lazy request (or any other), starting a run when none is
    /// going.
    pub fn want_bytes(self: &Arc<Self>, task: &Arc<StoredTask>, ranges: &[(u64, u64)]) {
        if task.is_complete() {
            return;
        }
        let progress = self.tasks.get_or_insert(&task.id);
        let piece_length = task.with_meta(|m| m.shape_known().then_some(m.piece_length));
        for &(start, end) in ranges {
            progress.demand.want_bytes(start, end, piece_length);
        }
        self.resume(task);
    }

    /// A child asks this daemon for a piece it lacks. When this daemon is
    /// the task's back-to-source peer it fetches the piece for the swarm
    /// (lazy pulls: one origin read serves every node); returns whether the
    /// piece is on its way.
    pub fn want_piece_for_peer(self: &Arc<Self>, task: &Arc<StoredTask>, index: u32) -> bool {
        let Some(progress) = self.tasks.get(&task.id) else {
            return false;
        };
        if !progress.elected_source.load(Ordering::SeqCst)
            || task.with_meta(|m| m.piece_count().is_none_or(|n| index >= n))
        {
            return false;
        }
        if progress.demand.wants_all() && task.run_state() == RunState::Running {
            // A full download brings every piece in order anyway; letting
            // children reorder it would split the origin stream into many
            // parallel ranges and delay every piece.
            return true;
        }
        progress.demand.want_piece(index);
        self.resume(task)
    }

    /// Starts a run with the latest request when none is going; false when
    /// there is no request to run (e.g. after a restart).
    fn resume(self: &Arc<Self>, task: &Arc<StoredTask>) -> bool {
        let request = self.tasks.get(&task.id).and_then(|p| p.request());
        match request {
            Some(request) => {
                self.ensure_run(task, request);
                true
            }
            None => task.run_state() == RunState::Running,
        }
    }

    fn ensure_run(self: &Arc<Self>, task: &Arc<StoredTask>, request: TaskRequest) {
        // Claim the run under the task's own state so two callers cannot
        // both start it.
        if task.is_complete() || task.is_removed() || !task.try_claim_run() {
            return;
        }
        let progress = self.tasks.get_or_insert(&task.id);
        *progress.started.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        let daemon = self.clone();
        let context = DownloadContext {
            host_id: self.host_id.clone(),
            settings: SwarmSettings::from(&self.config),
            schedulers: self.schedulers.clone(),
            metrics: self.metrics.clone(),
            source: self.source.clone(),
            peers: self.peers.clone(),
            tasks: self.tasks.clone(),
            progress: progress.clone(),
        };
        let pin = task.pin();
        let span = tracing::info_span!("task", task = %task.id, url = %request.url);
        let task_for_run = task.clone();
        tokio::spawn(
            async move {
                let _pin = pin;
                let result = downloader::download(&context, &task_for_run, &request).await;
                daemon
                    .finish(&task_for_run, &progress, &request, result)
                    .await;
            }
            .instrument(span),
        );
    }

    async fn finish(
        self: &Arc<Self>,
        task: &Arc<StoredTask>,
        progress: &TaskProgress,
        request: &TaskRequest,
        result: Result<RunEnd, TaskFailure>,
    ) {
        let result = match result {
            Ok(RunEnd::Complete(length)) => self.verify_and_complete(task, request, length).await,
            Ok(RunEnd::Partial) => {
                tracing::debug!(
                    pieces = task.with_meta(|m| m.finished_pieces()),
                    "lazy run idle; wanted pieces stored"
                );
                task.set_run_state(RunState::Idle);
                // A want that arrived while this run was winding down.
                let missing = task.with_meta(|m| m.missing_pieces());
                if progress.demand.has_unmet(&missing) {
                    self.resume(task);
                }
                return;
            }
            Err(failure) => Err(failure),
        };
        progress.demand.reset();
        if result.is_ok() {
            // Complete: no run will need the request (and its credentials).
            progress.set_request(None);
        }
        *progress.finished.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        match result {
            Ok(length) => {
                tracing::info!(
                    bytes = length,
                    from_origin = progress.from_origin.load(Ordering::Relaxed),
                    from_peers = progress.from_peers.load(Ordering::Relaxed),
                    "download complete"
                );
                self.metrics.task_done("success");
                self.tasks.clear_failure(&task.id);
                task.set_run_state(RunState::Idle);
                self.report_result(task, true, String::new(), length).await;
                if let Some(output) = &request.output {
                    self.spawn_copy_out(task.clone(), output.clone());
                }
            }
            Err(failure) => {
                tracing::warn!(error = %failure, "download failed");
                self.metrics.task_done("failure");
                self.metrics.failure(match failure {
                    TaskFailure::Origin { .. } => "origin_status",
                    TaskFailure::DigestMismatch { .. } => "digest_mismatch",
                    TaskFailure::Internal { .. } | TaskFailure::Other => "internal",
                });
                task.set_run_state(RunState::Failed(failure.clone()));
                self.report_result(task, false, failure.to_string(), 0)
                    .await;
                self.tasks.remember_failure(&task.id, failure.clone());
                // Content that is wrong, or that the origin refuses, must not
                // stay in the cache; transient failures keep pieces to resume.
                if !matches!(failure, TaskFailure::Internal { .. }) {
                    self.store.remove(&task.id, true);
                    self.forget(&task.id);
                }
            }
        }
    }

    async fn verify_and_complete(
        &self,
        task: &Arc<StoredTask>,
        request: &TaskRequest,
        length: u64,
    ) -> Result<u64, TaskFailure> {
        let internal = |e: crate::store::StoreError| TaskFailure::Internal {
            message: e.to_string(),
        };
        if let Some(expected) = &request.digest {
            let actual = task.content_digest().await.map_err(internal)?;
            if !actual.eq_ignore_ascii_case(expected) {
                return Err(TaskFailure::DigestMismatch {
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        task.mark_complete(length).await.map_err(internal)?;
        if !task.is_complete() {
            return Err(TaskFailure::Internal {
                message: "pieces missing at the end of the download".into(),
            });
        }
        Ok(length)
    }

    async fn report_result(
        &self,
        task: &Arc<StoredTask>,
        success: bool,
        error: String,
        length: u64,
    ) {
        let req = proto::ReportPeerResultRequest {
            task_id: task.id.clone(),
            host_id: self.host_id.clone(),
            success,
            error,
            was_source: false,
            content_length: length,
        };
        let result = self.schedulers.report_peer_result(req).await;
        if let Err(e) = result {
            tracing::debug!(error = %e, "could not report result to scheduler");
        }
    }

    fn spawn_copy_out(self: &Arc<Self>, task: Arc<StoredTask>, output: std::path::PathBuf) {
        let pin = task.pin();
        tokio::spawn(async move {
            let _pin = pin;
            let src = task.with_meta(|m| m.task_id.clone());
            let result = copy_out(&task, &output).await;
            match result {
                Ok(()) => {
                    tracing::info!(task = %src, output = %output.display(), "content copied out")
                }
                Err(e) => {
                    tracing::warn!(task = %src, output = %output.display(), error = %e, "copying content out failed")
                }
            }
        });
    }

    /// Drops what the daemon kept in memory about a task that left the
    /// store (progress, the request behind it, per-task metrics).
    pub fn forget(&self, task_id: &str) {
        self.tasks.forget(task_id);
        self.metrics.forget_task(task_id);
    }

    /// Drops evicted tasks from the schedulers' view too.
    pub async fn collect_garbage(&self) {
        for evicted in self.store.collect_garbage() {
            self.metrics.evicted(evicted.reason.as_str(), evicted.bytes);
            let task_id = evicted.task_id;
            self.forget(&task_id);
            let req = proto::LeaveTaskRequest {
                task_id: task_id.clone(),
                host_id: self.host_id.clone(),
            };
            let _ = self.schedulers.leave_task(req).await;
        }
        self.metrics.cache_bytes.set(self.store.used_bytes());
        if let Ok(fs) = self.store.fs_usage() {
            self.metrics.cache_fs_used_ratio.set(fs.used_ratio());
        }
    }
}

/// Copies a complete task to `output` through a temp file and a rename, so
/// the file appears whole or not at all.
async fn copy_out(task: &Arc<StoredTask>, output: &std::path::Path) -> std::io::Result<()> {
    let length = task.with_meta(|m| m.content_length).unwrap_or(0);
    let tmp = output.with_extension("dfdaemon-tmp");
    let mut file = tokio::fs::File::create(&tmp).await?;
    let mut offset = 0u64;
    use tokio::io::AsyncWriteExt;
    while offset < length {
        let n = (length - offset).min(4 << 20) as usize;
        let chunk = task
            .read_at(offset, n)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        file.write_all(&chunk).await?;
        offset += n as u64;
    }
    file.sync_all().await?;
    tokio::fs::rename(&tmp, output).await
}
