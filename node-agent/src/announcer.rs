//! Keeps this host known to every scheduler: a heartbeat announce, and after
//! a scheduler forgot us (restart, expiry) a full report of what we hold, so
//! the scheduler's soft state is rebuilt from the peers.

use std::sync::Arc;
use std::time::Duration;

use crate::daemon::Daemon;

/// How often the scheduler names are re-resolved while the set is settled.
const SETTLED_REFRESH: Duration = Duration::from_secs(30);
/// How long after a change (or start) the names are re-resolved at every
/// heartbeat: during a rollout, hosts that see different scheduler sets route
/// one task to two owners, and each may start its own seed download.
const UNSETTLED_WINDOW: Duration = Duration::from_secs(120);

pub async fn run(daemon: Arc<Daemon>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let interval = daemon.config.heartbeat_interval;
    let mut dns_refresh = tokio::time::Instant::now();
    loop {
        if daemon.schedulers.changed_within(UNSETTLED_WINDOW)
            || dns_refresh.elapsed() >= SETTLED_REFRESH
            || daemon.schedulers.addresses().is_empty()
        {
            daemon.schedulers.refresh().await;
            dns_refresh = tokio::time::Instant::now();
            daemon
                .metrics
                .schedulers_resolved
                .set(daemon.schedulers.addresses().len() as i64);
        }
        announce_once(&daemon).await;
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => break,
        }
    }
}

pub async fn announce_once(daemon: &Arc<Daemon>) {
    if let Some(mut host) = daemon.schedulers.host() {
        host.free_upload_slots = daemon.uploads.available_permits() as u32;
        daemon.schedulers.set_host(host);
    }
    for addr in daemon.schedulers.addresses() {
        match daemon.schedulers.announce_to(&addr).await {
            Ok(resp) if !resp.known => {
                tracing::info!(scheduler = %addr, "scheduler did not know this host; reporting held tasks");
                report_held_tasks(daemon, &addr).await;
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(scheduler = %addr, error = %e, "heartbeat failed"),
        }
    }
}

async fn report_held_tasks(daemon: &Arc<Daemon>, addr: &str) {
    for task in daemon.store.list() {
        if daemon.schedulers.owner(&task.id).as_deref() != Some(addr) {
            continue;
        }
        let req = task.with_meta(|m| proto::ReportPiecesRequest {
            task_id: m.task_id.clone(),
            host_id: daemon.host_id.clone(),
            shape: Some(m.proto_shape()),
            pieces: Vec::new(),
            replace: true,
            bitmap: m.bitmap().as_bytes().to_vec(),
            complete: m.complete,
            url: m.url.clone(),
            // A re-report names no digests: a restarted scheduler records
            // them again from the task's next back-to-source peer.
            digests: Vec::new(),
        });
        if req.bitmap.is_empty() {
            continue;
        }
        let result = daemon.schedulers.report_pieces(req).await;
        if let Err(e) = result {
            tracing::debug!(task = %task.id, error = %e, "re-report failed");
        }
    }
}
