//! The daemon's shared context and the task life cycle: start a download (or
//! join the one running), finish it (verify, report, copy out), fail it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::config::DaemonConfig;
use crate::metrics::Metrics;
use crate::peer_client::PeerClient;
use crate::scheduler_client::SchedulerPool;
use crate::source::SourceClient;
use crate::store::{RunState, Store, StoredTask, TaskFailure};
use crate::task_request::TaskRequest;

/// Where a task's bytes came from, for status and metrics.
#[derive(Default)]
pub struct TaskProgress {
    pub from_origin: AtomicU64,
    pub from_peers: AtomicU64,
    /// Set while this daemon downloads the task from the origin.
    pub sourcing: std::sync::atomic::AtomicBool,
    /// Pieces already handed to a peer while sourcing.
    source_uploads: Mutex<std::collections::HashSet<u32>>,
    pub started: Mutex<Option<Instant>>,
    pub finished: Mutex<Option<Instant>>,
}

pub struct Daemon {
    pub config: DaemonConfig,
    pub host_id: String,
    pub store: Arc<Store>,
    pub schedulers: Arc<SchedulerPool>,
    pub metrics: Arc<Metrics>,
    pub source: SourceClient,
    pub peers: PeerClient,
    pub uploads: Arc<Semaphore>,
    progress: Mutex<HashMap<String, Arc<TaskProgress>>>,
    /// Why recently removed tasks failed, so a caller arriving just after
    /// the removal still learns the reason instead of "unknown task".
    failures: Mutex<HashMap<String, (TaskFailure, Instant)>>,
}

/// How long the reason of a removed task's failure is kept.
const FAILURE_MEMORY: std::time::Duration = std::time::Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    BadRequest(String),
    #[error("content store: {0}")]
    Store(#[from] std::io::Error),
}

impl TaskProgress {
    /// While this daemon is the task's back-to-source peer, each piece is
    /// handed out once: its uplink then carries one copy of every fresh
    /// piece, the children swap the rest, and the origin download is not
    /// starved by a saturated uplink. Returns whether `index` may be sent.
    pub fn may_upload(&self, index: u32) -> bool {
        if !self.sourcing.load(Ordering::SeqCst) {
            return true;
        }
        self.source_uploads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(index)
    }

    pub fn set_sourcing(&self, on: bool) {
        self.sourcing.store(on, Ordering::SeqCst);
        if !on {
            self.source_uploads
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        }
    }
}

impl Daemon {
    pub fn new(
        config: DaemonConfig,
        host_id: String,
        store: Arc<Store>,
        schedulers: Arc<SchedulerPool>,
    ) -> anyhow::Result<Arc<Self>> {
        let uploads = Arc::new(Semaphore::new(config.upload_limit as usize));
        Ok(Arc::new(Daemon {
            source: SourceClient::with_registry_tls(&config.mirror)?,
            peers: PeerClient::new(config.piece_timeout)?,
            config,
            host_id,
            store,
            schedulers,
            metrics: Arc::new(Metrics::new()),
            uploads,
            progress: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }))
    }

    /// Why a task removed after failing failed (recent failures only).
    pub fn recent_failure(&self, task_id: &str) -> Option<TaskFailure> {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures
            .get(task_id)
            .filter(|(_, at)| at.elapsed() < FAILURE_MEMORY)
            .map(|(f, _)| f.clone())
    }

    pub fn progress(&self, task_id: &str) -> Arc<TaskProgress> {
        self.progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(task_id.to_string())
            .or_default()
            .clone()
    }

    /// Starts downloading the task `request` names, unless it is already
    /// complete or running; returns the stored task either way.
    pub fn start_task(
        self: &Arc<Self>,
        request: TaskRequest,
    ) -> Result<Arc<StoredTask>, StartError> {
        let task_id = request.validate().map_err(StartError::BadRequest)?;
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
        // Claim the run under the task's own state so two callers cannot
        // both start it.
        if !task.try_claim_run() {
            return Ok(task);
        }
        let progress = self.progress(&task_id);
        *progress.started.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        let daemon = self.clone();
        let pin = task.pin();
        let span = tracing::info_span!("task", task = %task_id, url = %request.url);
        let task_for_run = task.clone();
        tokio::spawn(
            async move {
                let _pin = pin;
                let result = crate::downloader::download(&daemon, &task_for_run, &request).await;
                daemon.finish(&task_for_run, &request, result).await;
            }
            .instrument(span),
        );
        Ok(task)
    }

    async fn finish(
        self: &Arc<Self>,
        task: &Arc<StoredTask>,
        request: &TaskRequest,
        result: Result<u64, TaskFailure>,
    ) {
        let result = match result {
            Ok(length) => self.verify_and_complete(task, request, length).await,
            Err(failure) => Err(failure),
        };
        let progress = self.progress(&task.id);
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
                    TaskFailure::Internal { .. } => "internal",
                });
                task.set_run_state(RunState::Failed(failure.clone()));
                self.report_result(task, false, failure.to_string(), 0)
                    .await;
                // Content that is wrong, or that the origin refuses, must not
                // stay in the cache; transient failures keep pieces to resume.
                if !matches!(failure, TaskFailure::Internal { .. }) {
                    let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
                    failures.retain(|_, (_, at)| at.elapsed() < FAILURE_MEMORY);
                    failures.insert(task.id.clone(), (failure.clone(), Instant::now()));
                    drop(failures);
                    self.store.remove(&task.id, true);
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

    /// Drops evicted tasks from the schedulers' view too.
    pub async fn collect_garbage(&self) {
        for task_id in self.store.collect_garbage() {
            self.metrics.evictions.inc();
            let req = proto::LeaveTaskRequest {
                task_id: task_id.clone(),
                host_id: self.host_id.clone(),
            };
            let _ = self.schedulers.leave_task(req).await;
        }
        self.metrics.cache_bytes.set(self.store.used_bytes());
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
