//! One task's download: ask the scheduler how, then either fetch from the
//! origin (we are the task's one back-to-source peer), ask a seed to fetch it,
//! or pull pieces concurrently from parents — verifying each, moving away
//! from parents that fail, and going to the origin when the swarm cannot help.

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::DaemonConfig;
use crate::metrics::Metrics;
use crate::peer_client::{PeerClient, PeerError};
use crate::piece::{piece_digest, piece_range, Bitmap};
use crate::piece_order;
use crate::recorded_digests::{self, RecordedDigests, Sender, Verdict};
use crate::scheduler_client::SchedulerPool;
use crate::source::SourceClient;
use crate::store::{StoredTask, TaskFailure};
use crate::swarm::{
    describe_parents, holders_of, merge_parents, only_the_origin_has, parent_base, parents_cover,
    pick_parent, ParentSlot, PieceAvoidance, COOLDOWN,
};
use crate::task::{RunEnd, TaskProgress, Tasks};
use crate::task_request::TaskRequest;

/// What one task's download works with: the ctx's clients, its tuning,
/// and the task's own runtime state. Handed over by whoever starts the run.
pub struct DownloadContext {
    pub host_id: String,
    pub settings: SwarmSettings,
    pub schedulers: Arc<SchedulerPool>,
    pub metrics: Arc<Metrics>,
    pub source: SourceClient,
    pub peers: PeerClient,
    /// For the ctx-wide "fetching from the origin" mark.
    pub tasks: Arc<Tasks>,
    pub progress: Arc<TaskProgress>,
}

/// The ctx settings a download uses.
#[derive(Debug, Clone, Copy)]
pub struct SwarmSettings {
    pub piece_wait: Duration,
    pub concurrent_pieces: usize,
    pub concurrent_pieces_per_parent: usize,
    pub stall_timeout: Duration,
    pub parent_refresh: Duration,
    pub prefetch_rate: u64,
    pub lazy_linger: Duration,
}

impl From<&DaemonConfig> for SwarmSettings {
    fn from(config: &DaemonConfig) -> Self {
        SwarmSettings {
            piece_wait: config.piece_wait,
            concurrent_pieces: config.concurrent_pieces,
            concurrent_pieces_per_parent: config.concurrent_pieces_per_parent,
            stall_timeout: config.stall_timeout,
            parent_refresh: config.parent_refresh,
            prefetch_rate: config.prefetch_rate.as_u64(),
            lazy_linger: config.lazy_linger,
        }
    }
}

enum Plan {
    Source,
    Peers(Vec<proto::Parent>),
    TriggerSeed(proto::Parent),
}

enum PeerOutcome {
    Done,
    /// Lazy run: every wanted piece is stored and nothing more was asked.
    Partial,
    BackToSource(&'static str),
}

fn plan_from(resp: proto::ScheduleResponse) -> Plan {
    match proto::Decision::try_from(resp.decision) {
        Ok(proto::Decision::BackToSource) => Plan::Source,
        Ok(proto::Decision::TriggerSeed) => match resp.parents.into_iter().next() {
            Some(seed) => Plan::TriggerSeed(seed),
            None => Plan::Source,
        },
        _ => Plan::Peers(resp.parents),
    }
}

/// Whether seeds are reached over mutual TLS (the cluster identity).
fn over_tls(ctx: &DownloadContext) -> bool {
    ctx.peers.scheme() == "https"
}

/// Whether this node keeps `request` from seeds: it carries credentials and
/// seeds are reached over plain HTTP.
fn keeps_from_seeds(request: &TaskRequest, over_tls: bool) -> bool {
    !over_tls
        && request
            .headers
            .keys()
            .any(|name| name.eq_ignore_ascii_case("authorization"))
}

/// What a seed is asked to fetch for `request`: the request as the network
/// may carry it, under this task's id. `None` when this node must fetch it
/// itself: a caller's credentials never cross the network in clear, so
/// without cluster identity (plain HTTP to the seed) a download that carries
/// them is not delegated.
fn seed_request_for(
    request: &TaskRequest,
    task_id: &str,
    lazy: bool,
    over_tls: bool,
) -> Option<TaskRequest> {
    if keeps_from_seeds(request, over_tls) {
        return None;
    }
    let mut seed_request = request.for_network();
    seed_request.task_id = Some(task_id.to_string());
    seed_request.seed_request = true;
    seed_request.lazy = lazy;
    Some(seed_request)
}

fn shape_of(task: &StoredTask) -> proto::TaskShape {
    task.with_meta(|m| m.proto_shape())
}

/// Downloads the missing pieces of `task` its demand covers: all of them,
/// or (lazy pull) those readers and peers ask for.
pub async fn download(
    ctx: &DownloadContext,
    task: &Arc<StoredTask>,
    request: &TaskRequest,
) -> Result<RunEnd, TaskFailure> {
    let reporter = PieceReporter::start(
        ctx.schedulers.clone(),
        ctx.host_id.clone(),
        task.clone(),
        request.url.clone(),
    );
    let mut plan = match register(ctx, task, request).await {
        Some(resp) => {
            adopt_shape(task, resp.shape.as_ref());
            plan_from(resp)
        }
        None => {
            if ctx.schedulers.is_configured() {
                tracing::warn!("no scheduler reachable; downloading straight from the origin");
                ctx.metrics.failure("scheduler_unreachable");
            }
            Plan::Source
        }
    };
    loop {
        match plan {
            Plan::Source => {
                tracing::info!("downloading from the origin (back-to-source)");
                return back_to_source(ctx, task, request, &reporter).await;
            }
            Plan::TriggerSeed(seed) => {
                let Some((seed_id, base)) = parent_base(&seed) else {
                    plan = Plan::Source;
                    continue;
                };
                // A lazy reader's seed fetches what the swarm asks for,
                // not the whole content.
                let lazy = !ctx.progress.demand.wants_all();
                let Some(seed_request) = seed_request_for(request, &task.id, lazy, over_tls(ctx))
                else {
                    // Registered with no_seed, so only a scheduler that
                    // ignores the field gets here: fetch it ourselves.
                    tracing::info!(seed = %seed_id, "a download with the caller's credentials is not handed to a seed over plain HTTP; fetching from the origin");
                    ctx.metrics.failure("seed_skipped_plain_credentials");
                    plan = Plan::Source;
                    continue;
                };
                match ctx.peers.trigger_seed(&base, &seed_id, &seed_request).await {
                    Ok(()) => {
                        tracing::info!(seed = %seed_id, "seed peer asked to fetch the task");
                        plan = Plan::Peers(vec![seed]);
                    }
                    Err(e) => {
                        tracing::warn!(seed = %seed_id, error = %e, "seed peer unavailable");
                        ctx.metrics.failure("seed_trigger");
                        plan = report_parent_failure(ctx, task, &seed_id, &e)
                            .await
                            .unwrap_or(Plan::Source);
                    }
                }
            }
            Plan::Peers(parents) => match from_peers(ctx, task, parents, &reporter).await? {
                PeerOutcome::Done => {
                    return task
                        .with_meta(|m| m.content_length)
                        .map(RunEnd::Complete)
                        .ok_or_else(|| TaskFailure::Internal {
                            message: "length unknown after download".into(),
                        })
                }
                PeerOutcome::Partial => return Ok(RunEnd::Partial),
                PeerOutcome::BackToSource(why) => {
                    tracing::warn!(
                        reason = why,
                        "peers cannot finish the task; going to the origin"
                    );
                    plan = Plan::Source;
                }
            },
        }
    }
}

async fn register(
    ctx: &DownloadContext,
    task: &StoredTask,
    request: &TaskRequest,
) -> Option<proto::ScheduleResponse> {
    let req = proto::RegisterPeerRequest {
        task_id: task.id.clone(),
        host_id: ctx.host_id.clone(),
        url: request.url.clone(),
        shape: Some(shape_of(task)),
        bitmap: task.with_meta(|m| m.bitmap()).as_bytes().to_vec(),
        seed_request: request.seed_request,
        // Not handed to a seed: the scheduler elects this node instead.
        no_seed: keeps_from_seeds(request, over_tls(ctx)),
    };
    ctx.schedulers
        .register_peer(req)
        .await
        .map_err(|e| tracing::debug!(error = %e, "register failed"))
        .ok()
}

async fn get_parents(ctx: &DownloadContext, task: &StoredTask) -> Option<Plan> {
    let req = proto::GetParentsRequest {
        task_id: task.id.clone(),
        host_id: ctx.host_id.clone(),
    };
    ctx.schedulers.get_parents(req).await.ok().map(plan_from)
}

async fn report_parent_failure(
    ctx: &DownloadContext,
    task: &StoredTask,
    parent_id: &str,
    error: &PeerError,
) -> Option<Plan> {
    let (piece, claimed_digest) = match error {
        PeerError::Forged { piece, claimed } => (*piece, claimed.clone()),
        _ => (0, String::new()),
    };
    let req = proto::ReportParentFailureRequest {
        task_id: task.id.clone(),
        host_id: ctx.host_id.clone(),
        parent_host_id: parent_id.to_string(),
        reason: error.reason() as i32,
        message: error.to_string(),
        piece,
        claimed_digest,
    };
    ctx.schedulers
        .report_parent_failure(req)
        .await
        .ok()
        .map(plan_from)
}

fn adopt_shape(task: &StoredTask, shape: Option<&proto::TaskShape>) {
    let Some(shape) = shape else { return };
    if shape.known && shape.piece_length > 0 && !task.with_meta(|m| m.shape_known()) {
        if let Err(e) = task.set_shape(Some(shape.content_length), shape.piece_length) {
            tracing::warn!(error = %e, "scheduler's task shape conflicts with ours");
        }
    }
}

async fn back_to_source(
    ctx: &DownloadContext,
    task: &Arc<StoredTask>,
    request: &TaskRequest,
    reporter: &PieceReporter,
) -> Result<RunEnd, TaskFailure> {
    let progress = &ctx.progress;
    progress.elected_source.store(true, Ordering::SeqCst);
    let on_piece = |index: u32, bytes: u64| {
        ctx.metrics.obtained("origin", bytes);
        ctx.metrics.origin_bytes(&task.id, bytes);
        progress.from_origin.fetch_add(bytes, Ordering::Relaxed);
        progress.record_piece_source(index, "origin");
        tracing::debug!(piece = index, "piece stored from the origin");
        reporter.report(index);
    };
    let _sourcing = ctx.tasks.sourcing_guard();
    progress.set_sourcing(true);
    let result = source_on_demand(ctx, task, request, &on_piece).await;
    progress.set_sourcing(false);
    result
}

/// Origin ranges fetched at once by a back-to-source run that serves wants.
const ORIGIN_REQUESTS: usize = 4;
/// Longest origin range for wanted pieces: wants arriving meanwhile wait at
/// most this long.
const WANTED_RUN_BYTES: u64 = 16 * 1024 * 1024;
/// Longest origin range of a full download once its length is known, and
/// how many such ranges run at once: long enough to stream efficiently,
/// short enough that a reader's wanted pieces overtake it soon.
const FULL_RUN_BYTES: u64 = 32 * 1024 * 1024;
const FULL_RUNS: usize = 2;

/// The back-to-source run. With the length unknown and everything wanted,
/// one streamed GET. Otherwise ranged GETs: pieces readers and children
/// asked for first (a few at once), then the rest of a full download in
/// longer ranges, or a paced prefetch one piece at a time.
async fn source_on_demand(
    ctx: &DownloadContext,
    task: &Arc<StoredTask>,
    request: &TaskRequest,
    on_piece: &(dyn Fn(u32, u64) + Send + Sync),
) -> Result<RunEnd, TaskFailure> {
    let demand = &ctx.progress.demand;
    let mut changes = demand.subscribe();
    let mut inflight = FuturesUnordered::new();
    let mut fetching: HashSet<u32> = HashSet::new();
    let mut background_runs: HashSet<u32> = HashSet::new();
    let mut pacer = Pacer::new(ctx.settings.prefetch_rate);
    loop {
        let shape_known = task.with_meta(|m| m.shape_known());
        if !shape_known && demand.wants_all() && inflight.is_empty() {
            return ctx
                .source
                .fetch_missing(task, &request.url, &request.headers, on_piece)
                .await
                .map(RunEnd::Complete);
        }
        if !shape_known {
            ctx.source
                .learn_shape(task, &request.url, &request.headers)
                .await?;
            continue;
        }
        let (missing, piece_length, length) = task.with_meta(|m| {
            (
                m.missing_pieces(),
                m.piece_length,
                m.content_length.unwrap_or(0),
            )
        });
        if missing.is_empty() && inflight.is_empty() {
            return Ok(RunEnd::Complete(length));
        }
        changes.borrow_and_update();
        let selection = demand.select(&missing, piece_length);
        let idle = |i: &u32| !fetching.contains(i);
        let urgent: Vec<u32> = selection.urgent.iter().copied().filter(idle).collect();
        let background: Vec<u32> = selection.background.iter().copied().filter(idle).collect();
        for run in crate::source::runs(&urgent) {
            for run in split_run(run, pieces_in(WANTED_RUN_BYTES, piece_length)) {
                if inflight.len() >= ORIGIN_REQUESTS {
                    break;
                }
                fetching.extend(run.0..=run.1);
                inflight.push(fetch_origin_run(ctx, task, request, run, on_piece));
            }
        }
        let mut pacing = false;
        if !selection.capped {
            // A full download: the rest in longer ranges, wanted pieces
            // still first.
            for run in crate::source::runs(&background) {
                for run in split_run(run, pieces_in(FULL_RUN_BYTES, piece_length)) {
                    if background_runs.len() >= FULL_RUNS || inflight.len() >= ORIGIN_REQUESTS {
                        break;
                    }
                    fetching.extend(run.0..=run.1);
                    background_runs.insert(run.0);
                    inflight.push(fetch_origin_run(ctx, task, request, run, on_piece));
                }
            }
        } else if let Some(&next) = background.first() {
            // A prefetch: one paced piece at a time, never ahead of a
            // reader's wants.
            if urgent.is_empty() && inflight.is_empty() {
                let now = Instant::now();
                if pacer.ready(now) {
                    pacer.spend(piece_length as u64, now);
                    fetching.insert(next);
                    background_runs.insert(next);
                    inflight.push(fetch_origin_run(ctx, task, request, (next, next), on_piece));
                } else {
                    pacing = true;
                }
            }
        }
        if inflight.is_empty() && !pacing {
            // Nothing wanted: linger for more wants, then end the run.
            match tokio::time::timeout(ctx.settings.lazy_linger, changes.changed()).await {
                Ok(Ok(())) => continue,
                _ => return Ok(RunEnd::Partial),
            }
        }
        tokio::select! {
            Some(((first, last), result)) = inflight.next(), if !inflight.is_empty() => {
                for i in first..=last {
                    fetching.remove(&i);
                }
                background_runs.remove(&first);
                result?;
            }
            _ = changes.changed() => {}
            _ = tokio::time::sleep_until(pacer.next), if pacing => {}
        }
    }
}

async fn fetch_origin_run<'a>(
    ctx: &'a DownloadContext,
    task: &'a Arc<StoredTask>,
    request: &'a TaskRequest,
    run: (u32, u32),
    on_piece: &'a (dyn Fn(u32, u64) + Send + Sync),
) -> ((u32, u32), Result<(), TaskFailure>) {
    let result = ctx
        .source
        .fetch_run(task, &request.url, &request.headers, run, on_piece)
        .await;
    (run, result)
}

/// Whole pieces in `bytes` (at least one).
fn pieces_in(bytes: u64, piece_length: u32) -> u32 {
    (bytes / u64::from(piece_length.max(1))).clamp(1, u64::from(u32::MAX)) as u32
}

/// Splits `first..=last` into runs of at most `max` pieces.
fn split_run((first, last): (u32, u32), max: u32) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    let mut start = first;
    while start <= last {
        let end = last.min(start + max.max(1) - 1);
        out.push((start, end));
        start = end + 1;
    }
    out
}

/// Spaces background work so it averages `bytes_per_sec`.
struct Pacer {
    bytes_per_sec: u64,
    next: Instant,
}

impl Pacer {
    fn new(bytes_per_sec: u64) -> Self {
        Pacer {
            bytes_per_sec: bytes_per_sec.max(1),
            next: Instant::now(),
        }
    }

    fn ready(&self, now: Instant) -> bool {
        self.next <= now
    }

    fn spend(&mut self, bytes: u64, now: Instant) {
        let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
        self.next = self.next.max(now) + cost;
    }
}

/// How long a child waits for its parents' bitmaps when no scheduler
/// answers: a hung parent must not hold up the pieces in flight.
const BITMAP_REFRESH_TIMEOUT: Duration = Duration::from_secs(1);

/// Asks every usable parent which pieces it holds, for when no scheduler
/// relays it. A parent that does not answer keeps its old bitmap: a real
/// failure shows on the next piece fetched from it.
async fn refresh_bitmaps_from_parents(
    ctx: &DownloadContext,
    task: &StoredTask,
    slots: &mut [ParentSlot],
    blocked: &HashSet<String>,
) {
    let asks = slots
        .iter()
        .filter(|s| !s.complete && !blocked.contains(&s.id))
        .map(|s| async move {
            let answer = ctx
                .peers
                .shape(&s.base, &s.id, &task.id, Duration::ZERO)
                .await;
            (s.id.clone(), answer)
        });
    let Ok(answers) =
        tokio::time::timeout(BITMAP_REFRESH_TIMEOUT, futures::future::join_all(asks)).await
    else {
        tracing::debug!("parents slow to tell their bitmaps");
        return;
    };
    for (id, answer) in answers {
        let shape = match answer {
            Ok(shape) => shape,
            Err(e) => {
                tracing::debug!(parent = %id, error = %e, "parent cannot tell its bitmap");
                continue;
            }
        };
        let Ok(bytes) = hex::decode(&shape.bitmap) else {
            tracing::debug!(parent = %id, "parent sent a malformed bitmap");
            continue;
        };
        if let Some(slot) = slots.iter_mut().find(|s| s.id == id) {
            slot.bitmap = Bitmap::from_bytes(bytes);
            slot.complete = shape.piece_count > 0 && shape.finished_pieces == shape.piece_count;
        }
    }
}

/// Learns the content length from the scheduler's answer or a parent.
async fn ensure_shape(ctx: &DownloadContext, task: &StoredTask, slots: &[ParentSlot]) -> bool {
    if task.with_meta(|m| m.shape_known()) {
        return true;
    }
    let mut order: Vec<&ParentSlot> = slots.iter().collect();
    order.sort_by_key(|s| !s.is_source);
    for slot in order {
        match ctx
            .peers
            .shape(&slot.base, &slot.id, &task.id, ctx.settings.piece_wait)
            .await
        {
            Ok(shape) => {
                return task
                    .set_shape(Some(shape.content_length), shape.piece_length)
                    .map_err(|e| tracing::warn!(error = %e, "parent's task shape conflicts"))
                    .is_ok()
            }
            Err(e) => {
                tracing::debug!(parent = %slot.id, error = %e, "parent cannot tell the task shape")
            }
        }
    }
    false
}

type PieceResult = (u32, String, Result<(bytes::Bytes, String), PeerError>);

async fn fetch_verified(
    ctx: &DownloadContext,
    task: Arc<StoredTask>,
    recorded: Arc<RecordedDigests>,
    base: String,
    parent: String,
    index: u32,
    sender: Sender,
) -> PieceResult {
    let result = async {
        let expected_len = task.with_meta(|m| {
            let (s, e) = piece_range(index, m.piece_length, m.content_length.unwrap_or(0));
            e.saturating_sub(s)
        });
        let (data, digest) = ctx
            .peers
            .piece(&base, &parent, &task.id, index, expected_len)
            .await?;
        if data.len() as u64 != expected_len {
            return Err(PeerError::Malformed(format!(
                "piece {index} has {} bytes, expected {expected_len}",
                data.len()
            )));
        }
        let expected = recorded
            .expected(&ctx.schedulers, &ctx.host_id, &task.id, index)
            .await;
        let (data, actual) = tokio::task::spawn_blocking(move || {
            let actual = piece_digest(&data);
            (data, actual)
        })
        .await
        .map_err(|e| PeerError::Malformed(e.to_string()))?;
        // Digests recorded for the task mean it has a source, listed or not.
        let sender = Sender {
            task_has_source: sender.task_has_source || recorded.any_recorded(),
            ..sender
        };
        match recorded_digests::judge(&expected, &actual, &digest, sender) {
            Verdict::Good => Ok((data, actual)),
            Verdict::Damaged => Err(PeerError::DigestMismatch),
            Verdict::Forged => Err(PeerError::Forged {
                piece: index,
                claimed: digest,
            }),
            Verdict::Unverified => Err(PeerError::Unverified(index)),
        }
    }
    .await;
    (index, parent, result)
}

/// Stores a verified piece from a parent and tells the scheduler.
async fn accept_piece(
    ctx: &DownloadContext,
    task: &Arc<StoredTask>,
    reporter: &PieceReporter,
    index: u32,
    data: bytes::Bytes,
    digest: String,
) -> Result<(), TaskFailure> {
    let len = data.len() as u64;
    task.write_piece(index, data, digest)
        .await
        .map_err(|e| TaskFailure::Internal {
            message: e.to_string(),
        })?;
    ctx.metrics.obtained("peer", len);
    let progress = &ctx.progress;
    progress.from_peers.fetch_add(len, Ordering::Relaxed);
    progress.record_piece_source(index, "peer");
    reporter.report(index);
    Ok(())
}

/// How long a download leaving the swarm waits for pieces still in flight.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Before leaving the swarm for the origin, keeps whatever is still
/// arriving from parents so the origin is asked only for what is missing;
/// but only briefly: a parent may hold a request for a piece it is itself
/// still waiting for, and a reader is waiting meanwhile.
async fn drain<F>(
    ctx: &DownloadContext,
    task: &Arc<StoredTask>,
    reporter: &PieceReporter,
    inflight: &mut FuturesUnordered<F>,
    why: &'static str,
) -> Result<PeerOutcome, TaskFailure>
where
    F: std::future::Future<Output = PieceResult>,
{
    let deadline = Instant::now() + DRAIN_GRACE;
    while let Ok(Some((index, _, result))) =
        tokio::time::timeout_at(deadline, inflight.next()).await
    {
        if let Ok((data, digest)) = result {
            accept_piece(ctx, task, reporter, index, data, digest).await?;
        }
    }
    Ok(PeerOutcome::BackToSource(why))
}

async fn from_peers(
    ctx: &DownloadContext,
    task: &Arc<StoredTask>,
    parents: Vec<proto::Parent>,
    reporter: &PieceReporter,
) -> Result<PeerOutcome, TaskFailure> {
    let config = &ctx.settings;
    let mut blocked: HashSet<String> = HashSet::new();
    let mut slots: Vec<ParentSlot> = Vec::new();
    merge_parents(&mut slots, &parents, &blocked);

    let mut last_progress = Instant::now();
    while !ensure_shape(ctx, task, &slots).await {
        if last_progress.elapsed() > config.stall_timeout {
            return Ok(PeerOutcome::BackToSource(
                "no parent knows the task's length",
            ));
        }
        tokio::time::sleep(config.parent_refresh).await;
        match get_parents(ctx, task).await {
            Some(Plan::Peers(fresh)) => merge_parents(&mut slots, &fresh, &blocked),
            Some(_) => return Ok(PeerOutcome::BackToSource("elected back-to-source")),
            None if slots.is_empty() => {
                return Ok(PeerOutcome::BackToSource("no scheduler and no parents"))
            }
            None => {}
        }
    }

    let mut inflight = FuturesUnordered::new();
    let mut inflight_pieces: HashSet<u32> = HashSet::new();
    let mut avoid = PieceAvoidance::default();
    let mut refresh_at = Instant::now() + config.parent_refresh;
    let demand = &ctx.progress.demand;
    let mut demand_changes = demand.subscribe();
    let mut pacer = Pacer::new(config.prefetch_rate);
    let mut background_inflight: HashSet<u32> = HashSet::new();
    let mut scheduler_lost_since: Option<Instant> = None;
    let mut stats = ExchangeStats::default();
    let salt = piece_order::salt_for(&ctx.host_id);
    let recorded = Arc::new(RecordedDigests::default());
    last_progress = Instant::now();
    loop {
        stats.end_starved();
        let (missing, piece_length) = task.with_meta(|m| (m.missing_pieces(), m.piece_length));
        if missing.is_empty() && inflight.is_empty() {
            stats.log();
            return Ok(PeerOutcome::Done);
        }
        demand_changes.borrow_and_update();
        let selection = demand.select(&missing, piece_length);
        if selection.is_empty() {
            if inflight.is_empty() {
                // Lazy run with nothing wanted: wait for more, then end.
                match tokio::time::timeout(config.lazy_linger, demand_changes.changed()).await {
                    Ok(Ok(())) => {
                        last_progress = Instant::now();
                        continue;
                    }
                    _ => return Ok(PeerOutcome::Partial),
                }
            }
            // Idle is not a stall.
            last_progress = Instant::now();
        }
        let now = Instant::now();
        // Without a scheduler no record vouches for a child's copy: only
        // the source's pieces are taken, so it is not put last then.
        let complete_last = !ctx.schedulers.is_lost();
        let order: Vec<(u32, bool)> = if selection.capped {
            selection.ordered().collect()
        } else {
            let holders = |index: u32| holders_of(&slots, &blocked, index, complete_last);
            selection
                .urgent
                .iter()
                .map(|&i| (i, true))
                .chain(
                    piece_order::exchange_order(&selection.background, holders, salt)
                        .into_iter()
                        .map(|i| (i, false)),
                )
                .collect()
        };
        for (index, urgent) in order {
            if inflight_pieces.contains(&index) {
                continue;
            }
            if inflight.len() >= config.concurrent_pieces {
                break;
            }
            // A prefetch goes one paced piece at a time.
            let paced = !urgent && selection.capped;
            if paced && (!background_inflight.is_empty() || !pacer.ready(now)) {
                break;
            }
            let Some(i) = pick_parent(
                &slots,
                &blocked,
                index,
                config.concurrent_pieces_per_parent,
                now,
                &avoid,
                complete_last,
            ) else {
                continue;
            };
            if paced {
                pacer.spend(piece_length as u64, now);
                background_inflight.insert(index);
            }
            slots[i].inflight += 1;
            inflight_pieces.insert(index);
            let source_among_parents = slots.iter().any(|s| s.is_source);
            inflight.push(fetch_verified(
                ctx,
                task.clone(),
                recorded.clone(),
                slots[i].base.clone(),
                slots[i].id.clone(),
                index,
                Sender {
                    is_source: slots[i].is_source,
                    task_has_source: source_among_parents,
                },
            ));
        }
        if inflight.is_empty()
            && only_the_origin_has(
                &slots,
                &blocked,
                &avoid,
                selection.ordered().map(|(i, _)| i),
            )
        {
            return drain(
                ctx,
                task,
                reporter,
                &mut inflight,
                "no parent holds the remaining pieces",
            )
            .await;
        }
        // Wake up when the next paced prefetch piece may go.
        let prefetch_waits = selection.capped
            && selection
                .background
                .iter()
                .any(|i| !inflight_pieces.contains(i))
            && background_inflight.is_empty()
            && !pacer.ready(Instant::now());
        if last_progress.elapsed() > config.stall_timeout {
            // Why the swarm stalled is what an operator needs to see here.
            tracing::warn!(
                stats = %stats.summary(),
                parents = %describe_parents(&slots, &blocked, now),
                inflight = inflight.len(),
                missing = missing.len(),
                deferred = avoid.deferred.len(),
                lacking = avoid.lacking.len(),
                scheduler_lost = scheduler_lost_since.is_some(),
                "no piece from peers for the stall timeout"
            );
            return drain(ctx, task, reporter, &mut inflight, "no progress from peers").await;
        }
        if inflight.len() < config.concurrent_pieces {
            stats.start_starved();
        }
        tokio::select! {
            Some((index, parent_id, result)) = inflight.next(), if !inflight.is_empty() => {
                stats.count(&result);
                inflight_pieces.remove(&index);
                background_inflight.remove(&index);
                if let Some(slot) = slots.iter_mut().find(|s| s.id == parent_id) {
                    slot.inflight = slot.inflight.saturating_sub(1);
                    if matches!(result, Err(PeerError::Unverified(_))) {
                        avoid.defer(&parent_id, index, Instant::now() + COOLDOWN);
                        // With a scheduler, the record catches up within
                        // moments; without one it never will.
                        if ctx.schedulers.is_lost() {
                            avoid.source_only.insert(index);
                        }
                    } else if matches!(result, Err(PeerError::PieceBusy)) {
                        avoid.defer(&parent_id, index, Instant::now() + COOLDOWN);
                    } else if result.as_ref().is_err_and(PeerError::is_soft) {
                        slot.cooldown_until = Some(Instant::now() + COOLDOWN);
                    }
                }
                match result {
                    Ok((data, digest)) => {
                        tracing::debug!(piece = index, parent = %parent_id, "piece stored from a peer");
                        accept_piece(ctx, task, reporter, index, data, digest).await?;
                        last_progress = Instant::now();
                    }
                    Err(e) if e.is_soft() => {}
                    Err(PeerError::NotFound) => {
                        // The parent lacks this piece (e.g. it discarded a
                        // damaged copy): ask others, keep it for the rest.
                        ctx.metrics.failure(PeerError::NotFound.metric_label());
                        avoid.lacking.insert((parent_id.clone(), index));
                        match report_parent_failure(ctx, task, &parent_id, &PeerError::NotFound).await {
                            Some(Plan::Peers(fresh)) => merge_parents(&mut slots, &fresh, &blocked),
                            Some(_) => return drain(ctx, task, reporter, &mut inflight, "elected back-to-source: no parent holds a piece").await,
                            None => {}
                        }
                    }
                    Err(e) => {
                        tracing::warn!(parent = %parent_id, piece = index, error = %e, "parent failed; avoiding it");
                        ctx.metrics.failure(e.metric_label());
                        blocked.insert(parent_id.clone());
                        // Blocked parents stay listed only while pieces from
                        // them are still in flight, and are never picked again.
                        for slot in slots.iter_mut().filter(|s| s.id == parent_id) {
                            slot.cooldown_until = Some(Instant::now() + Duration::from_secs(3600));
                        }
                        slots.retain(|s| !blocked.contains(&s.id) || s.inflight > 0);
                        match report_parent_failure(ctx, task, &parent_id, &e).await {
                            Some(Plan::Peers(fresh)) => merge_parents(&mut slots, &fresh, &blocked),
                            Some(_) => return drain(ctx, task, reporter, &mut inflight, "elected back-to-source after a parent failed").await,
                            None if slots.iter().all(|s| blocked.contains(&s.id)) => {
                                return drain(ctx, task, reporter, &mut inflight, "every parent failed and no scheduler answers").await
                            }
                            None => {}
                        }
                    }
                }
            }
            _ = demand_changes.changed() => {}
            _ = tokio::time::sleep_until(pacer.next), if prefetch_waits => {}
            _ = tokio::time::sleep_until(refresh_at) => {
                refresh_at = Instant::now() + config.parent_refresh;
                match get_parents(ctx, task).await {
                    Some(Plan::Peers(fresh)) => {
                        scheduler_lost_since = None;
                        stats.parent_lists += 1;
                        merge_parents(&mut slots, &fresh, &blocked)
                    }
                    Some(_) => return drain(ctx, task, reporter, &mut inflight, "elected back-to-source").await,
                    None if slots.iter().all(|s| blocked.contains(&s.id)) => {
                        return drain(ctx, task, reporter, &mut inflight, "no parents and no scheduler").await
                    }
                    None => {
                        stats.scheduler_misses += 1;
                        // Without the scheduler, parents' bitmaps come from
                        // the parents themselves, and the swarm carries on.
                        // Pieces held only by peers not on the list never
                        // come, though: if some stay uncovered, a reader
                        // waiting for one would stall. Not for long.
                        let since = *scheduler_lost_since.get_or_insert_with(Instant::now);
                        refresh_bitmaps_from_parents(ctx, task, &mut slots, &blocked).await;
                        let missing = task.with_meta(|m| m.missing_pieces());
                        if since.elapsed() > config.stall_timeout / 3
                            && !parents_cover(&slots, &blocked, &missing)
                        {
                            return drain(ctx, task, reporter, &mut inflight, "scheduler unreachable and no parent holds what is missing").await;
                        }
                    }
                }
            }
        }
    }
}

/// How a download from peers went, for tuning: how long it had fewer
/// pieces in flight than allowed, and how often parents said "later".
struct ExchangeStats {
    started: Instant,
    starved: Duration,
    starved_since: Option<Instant>,
    not_ready: u32,
    busy: u32,
    piece_busy: u32,
    unverified: u32,
    stored: u32,
    failed: u32,
    parent_lists: u32,
    scheduler_misses: u32,
}

impl Default for ExchangeStats {
    fn default() -> Self {
        ExchangeStats {
            started: Instant::now(),
            starved: Duration::ZERO,
            starved_since: None,
            not_ready: 0,
            busy: 0,
            piece_busy: 0,
            unverified: 0,
            stored: 0,
            failed: 0,
            parent_lists: 0,
            scheduler_misses: 0,
        }
    }
}

impl ExchangeStats {
    fn start_starved(&mut self) {
        self.starved_since = Some(Instant::now());
    }

    fn end_starved(&mut self) {
        if let Some(since) = self.starved_since.take() {
            self.starved += since.elapsed();
        }
    }

    fn count<T>(&mut self, result: &Result<T, PeerError>) {
        match result {
            Err(PeerError::NotReady) => self.not_ready += 1,
            Err(PeerError::Busy) => self.busy += 1,
            Err(PeerError::PieceBusy) => self.piece_busy += 1,
            Err(PeerError::Unverified(_)) => self.unverified += 1,
            Ok(_) => self.stored += 1,
            Err(_) => self.failed += 1,
        }
    }

    fn summary(&self) -> String {
        format!(
            "{} s: {} stored, {} not ready, {} busy, {} piece busy, {} unverified, {} failed; {} parent lists, {} scheduler misses",
            self.started.elapsed().as_secs(),
            self.stored,
            self.not_ready,
            self.busy,
            self.piece_busy,
            self.unverified,
            self.failed,
            self.parent_lists,
            self.scheduler_misses,
        )
    }

    fn log(&self) {
        tracing::debug!(
            elapsed_ms = self.started.elapsed().as_millis() as u64,
            below_concurrency_ms = self.starved.as_millis() as u64,
            not_ready = self.not_ready,
            busy = self.busy,
            piece_busy = self.piece_busy,
            "pieces from peers done"
        );
    }
}

/// Sends finished pieces to the scheduler in batches, off the download path.
struct PieceReporter {
    tx: mpsc::UnboundedSender<u32>,
}

impl PieceReporter {
    fn start(
        schedulers: Arc<SchedulerPool>,
        host_id: String,
        task: Arc<StoredTask>,
        url: String,
    ) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<u32>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut pieces = vec![first];
                while let Ok(more) = rx.try_recv() {
                    pieces.push(more);
                }
                // The digests go along: the scheduler keeps the source's
                // as the reference children check parents against.
                let digests = task.with_meta(|m| {
                    pieces
                        .iter()
                        .filter_map(|&index| {
                            let digest = m.digests.get(index as usize)?.clone()?;
                            Some(proto::PieceDigest { index, digest })
                        })
                        .collect()
                });
                let req = proto::ReportPiecesRequest {
                    task_id: task.id.clone(),
                    host_id: host_id.clone(),
                    shape: Some(shape_of(&task)),
                    pieces,
                    replace: false,
                    bitmap: Vec::new(),
                    complete: false,
                    url: url.clone(),
                    digests,
                };
                let result = schedulers.report_pieces(req).await;
                if let Err(e) = result {
                    tracing::debug!(error = %e, "piece report not delivered");
                }
            }
        });
        PieceReporter { tx }
    }

    fn report(&self, index: u32) {
        let _ = self.tx.send(index);
    }
}

#[cfg(test)]
mod seed_request_tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> TaskRequest {
        TaskRequest {
            url: "https://registry.example/v2/app/blobs/sha256:00".into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            output: Some("/root/out".into()),
            ..Default::default()
        }
    }

    #[test]
    fn credentials_reach_a_seed_over_mutual_tls_only() {
        let private = request(&[
            ("authorization", "Basic YWxpY2U6czNjcmV0"),
            ("Accept", "*/*"),
        ]);
        assert!(seed_request_for(&private, "t1", false, false).is_none());
        let sent = seed_request_for(&private, "t1", true, true).expect("over TLS");
        assert_eq!(
            sent.headers.get("authorization").map(String::as_str),
            Some("Basic YWxpY2U6czNjcmV0")
        );
        assert_eq!(sent.task_id.as_deref(), Some("t1"));
        assert!(sent.seed_request && sent.lazy);
        assert_eq!(
            sent.output, None,
            "a local output path never leaves the node"
        );
    }

    #[test]
    fn public_downloads_go_to_seeds_either_way() {
        let public = request(&[("Accept", "*/*"), ("X-Secret-Token", "local only")]);
        for over_tls in [false, true] {
            let sent = seed_request_for(&public, "t2", false, over_tls).expect("delegated");
            assert!(!sent.headers.contains_key("X-Secret-Token"));
            assert!(!sent.lazy);
        }
    }
}
