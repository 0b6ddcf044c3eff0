//! One task's download: ask the scheduler how, then either fetch from the
//! origin (we are the task's one back-to-source peer), ask a seed to fetch it,
//! or pull pieces concurrently from parents — verifying each, moving away
//! from parents that fail, and going to the origin when the swarm cannot help.

use futures::future::OptionFuture;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::DaemonConfig;
use crate::exchange::{Answer, Exchange, ExchangeLimits, ListOutcome, PieceAsk, SchedulerReply};
use crate::metrics::Metrics;
use crate::pacer::Pacer;
use crate::peer_client::{PeerClient, PeerError, HOLDER_ANSWER};
use crate::piece::{piece_range, Bitmap};
use crate::recorded_digests::{self, RecordedDigests, Sender, Verdict};
use crate::scheduler_client::SchedulerPool;
use crate::source::SourceClient;
use crate::store::{SealedPiece, StoreError, StoredTask, TaskFailure};
use crate::swarm::{parent_base, ParentSlot};
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
    /// The scheduler sends this download to a seed (e.g. one that restarted
    /// and knows no holder yet): the seed fetches once for everyone, or
    /// already holds the task.
    TriggerSeed(proto::Parent),
}

/// Seeds a download may be sent to after its first plan: enough to move
/// past one seed that fails, bounded so no answer loops forever.
const MAX_LATE_SEED_TRIGGERS: u32 = 2;

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
    let mut late_seed_triggers = 0;
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
                PeerOutcome::TriggerSeed(seed) if late_seed_triggers < MAX_LATE_SEED_TRIGGERS => {
                    late_seed_triggers += 1;
                    tracing::info!("the scheduler hands the rest of the task to a seed");
                    plan = Plan::TriggerSeed(seed);
                }
                PeerOutcome::TriggerSeed(_) => {
                    tracing::warn!("seeds were tried already; going to the origin");
                    plan = Plan::Source;
                }
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

/// How long a child waits for its parents' bitmaps when no scheduler
/// answers: a hung parent must not hold up the pieces in flight.
const BITMAP_REFRESH_TIMEOUT: Duration = Duration::from_secs(1);

/// Asks every usable parent which pieces it holds, for when no scheduler
/// relays it. A parent that does not answer keeps its old bitmap: a real
/// failure shows on the next piece fetched from it.
async fn refresh_bitmaps_from_parents(
    ctx: &DownloadContext,
    task: &StoredTask,
    exchange: &mut Exchange,
) {
    let asks = exchange
        .parents_to_ask()
        .into_iter()
        .map(|(id, base)| async move {
            let answer = ctx.peers.shape(&base, &id, &task.id, Duration::ZERO).await;
            (id, answer)
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
        let Some(bitmap) = hex::decode(&shape.bitmap)
            .ok()
            .and_then(|bytes| Bitmap::from_bytes(&bytes).ok())
        else {
            tracing::debug!(parent = %id, "parent sent a malformed bitmap");
            continue;
        };
        let complete = shape.piece_count > 0 && shape.finished_pieces == shape.piece_count;
        exchange.parent_told(&id, bitmap, complete);
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

type PieceResult = (u32, String, Result<Fetched, PeerError>);

/// A piece fetched from a parent, as far as the parent is concerned.
enum Fetched {
    /// On disk and verified; recorded once the exchange agrees.
    Verified(SealedPiece),
    /// Stored meanwhile by another writer: nothing to record.
    StoredMeanwhile,
    /// This node failed to store it (quota, disk): not the parent's fault.
    NotStored(StoreError),
}

/// Fetches piece `ask.index` from its parent, writing the bytes to disk as
/// they arrive and hashing them on the way; then judges them against the
/// digest the source recorded. Bytes that fail are never recorded.
async fn fetch_verified(
    ctx: &DownloadContext,
    task: Arc<StoredTask>,
    recorded: Arc<RecordedDigests>,
    ask: PieceAsk,
) -> PieceResult {
    let PieceAsk {
        index,
        parent,
        base,
        sender,
        holds,
    } = ask;
    // A holder answers at once; a parent still fetching the piece may wait
    // for it up to the piece wait first.
    let answer_within = if holds {
        HOLDER_ANSWER
    } else {
        ctx.settings.piece_wait + HOLDER_ANSWER
    };
    let result = async {
        // Claimed and reserved before asking: room first, one writer.
        let mut writer = match task.begin_piece(index).await {
            Ok(Some(writer)) => writer,
            Ok(None) => return Ok(Fetched::StoredMeanwhile),
            Err(e) => return Ok(Fetched::NotStored(e)),
        };
        let expected_len = task.with_meta(|m| {
            let (s, e) = piece_range(index, m.piece_length, m.content_length.unwrap_or(0));
            e.saturating_sub(s)
        });
        let (mut body, digest) = ctx
            .peers
            .piece(&base, &parent, &task.id, index, expected_len, answer_within)
            .await?;
        while let Some(chunk) = body.chunk().await? {
            if let Err(e) = writer.push(&chunk).await {
                return Ok(Fetched::NotStored(e));
            }
        }
        let sealed = match writer.seal().await {
            Ok(sealed) => sealed,
            Err(e) => return Ok(Fetched::NotStored(e)),
        };
        let expected = recorded
            .expected(&ctx.schedulers, &ctx.host_id, &task.id, index)
            .await;
        // Digests recorded for the task mean it has a source, listed or not.
        let sender = Sender {
            task_has_source: sender.task_has_source || recorded.any_recorded(),
            ..sender
        };
        match recorded_digests::judge(&expected, sealed.digest(), &digest, sender) {
            Verdict::Good => Ok(Fetched::Verified(sealed)),
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

/// Records a verified piece from a parent and tells the scheduler.
async fn accept_piece(
    ctx: &DownloadContext,
    reporter: &PieceReporter,
    fetched: Fetched,
) -> Result<(), TaskFailure> {
    let internal = |e: StoreError| TaskFailure::Internal {
        message: e.to_string(),
    };
    let sealed = match fetched {
        Fetched::Verified(sealed) => sealed,
        Fetched::StoredMeanwhile => return Ok(()),
        Fetched::NotStored(e) => return Err(internal(e)),
    };
    let (index, len) = (sealed.index(), sealed.len());
    sealed.record().await.map_err(internal)?;
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
    reporter: &PieceReporter,
    inflight: &mut FuturesUnordered<F>,
    why: &'static str,
) -> Result<PeerOutcome, TaskFailure>
where
    F: std::future::Future<Output = PieceResult>,
{
    drain_then(ctx, reporter, inflight, PeerOutcome::BackToSource(why)).await
}

async fn drain_then<F>(
    ctx: &DownloadContext,
    reporter: &PieceReporter,
    inflight: &mut FuturesUnordered<F>,
    outcome: PeerOutcome,
) -> Result<PeerOutcome, TaskFailure>
where
    F: std::future::Future<Output = PieceResult>,
{
    let deadline = Instant::now() + DRAIN_GRACE;
    while let Ok(Some((_, _, result))) = tokio::time::timeout_at(deadline, inflight.next()).await {
        if let Ok(fetched) = result {
            accept_piece(ctx, reporter, fetched).await?;
        }
    }
    Ok(outcome)
}

async fn from_peers(
    ctx: &DownloadContext,
    task: &Arc<StoredTask>,
    parents: Vec<proto::Parent>,
    reporter: &PieceReporter,
) -> Result<PeerOutcome, TaskFailure> {
    let config = &ctx.settings;
    let mut exchange = Exchange::new(
        &parents,
        ExchangeLimits {
            concurrent_pieces: config.concurrent_pieces,
            per_parent: config.concurrent_pieces_per_parent,
            stall_timeout: config.stall_timeout,
            prefetch_rate: config.prefetch_rate,
        },
        &ctx.host_id,
    );
    if let Some(why) = learn_shape_from_parents(ctx, task, &mut exchange).await {
        return Ok(PeerOutcome::BackToSource(why));
    }
    exchange.begin(Instant::now());

    let mut inflight = FuturesUnordered::new();
    let mut refresh_at = Instant::now() + config.parent_refresh;
    // The parent list asked for and not yet answered. It is awaited beside
    // the pieces in flight, not in their stead: a busy scheduler answers in
    // tens of milliseconds, and the pieces then went unread, five times a
    // second (8 % of a download at 8 hosts).
    let mut listing = None;
    let demand = &ctx.progress.demand;
    let mut demand_changes = demand.subscribe();
    let recorded = Arc::new(RecordedDigests::default());
    loop {
        exchange.stats.end_starved();
        let (missing, piece_length) = task.with_meta(|m| (m.missing_pieces(), m.piece_length));
        if missing.is_empty() && inflight.is_empty() {
            exchange.stats.log();
            return Ok(PeerOutcome::Done);
        }
        demand_changes.borrow_and_update();
        let selection = demand.select(&missing, piece_length);
        if selection.is_empty() {
            if inflight.is_empty() {
                // Lazy run with nothing wanted: wait for more, then end.
                match tokio::time::timeout(config.lazy_linger, demand_changes.changed()).await {
                    Ok(Ok(())) => {
                        exchange.progressed(Instant::now());
                        continue;
                    }
                    _ => return Ok(PeerOutcome::Partial),
                }
            }
            exchange.progressed(Instant::now());
        }
        // Without a scheduler no record vouches for a child's copy: only
        // the source's pieces are taken, so it is not put last then.
        let complete_last = !ctx.schedulers.is_lost();
        for ask in exchange.next_asks(&selection, piece_length, complete_last, Instant::now()) {
            inflight.push(fetch_verified(ctx, task.clone(), recorded.clone(), ask));
        }
        if exchange.only_the_origin_has(&selection) {
            let why = "no parent holds the remaining pieces";
            return drain(ctx, reporter, &mut inflight, why).await;
        }
        let prefetch_due = exchange.prefetch_due(&selection, Instant::now());
        if exchange.stalled(Instant::now()) {
            // Why the swarm stalled is what an operator needs to see here.
            let report = exchange.stall_report(Instant::now());
            tracing::warn!(
                stats = %report.stats,
                parents = %report.parents,
                inflight = report.inflight,
                missing = missing.len(),
                deferred = report.deferred,
                lacking = report.lacking,
                scheduler_lost = report.scheduler_lost,
                "no piece from peers for the stall timeout"
            );
            let why = "no progress from peers";
            return drain(ctx, reporter, &mut inflight, why).await;
        }
        if exchange.below_concurrency() {
            exchange.stats.start_starved();
        }
        tokio::select! {
            Some((index, parent, result)) = inflight.next(), if !inflight.is_empty() => {
                let lost = ctx.schedulers.is_lost();
                let answer = exchange.on_answer(index, &parent, &result, lost, Instant::now());
                match (answer, result) {
                    (Answer::Store, Ok(fetched)) => {
                        tracing::debug!(piece = index, parent = %parent, "piece stored from a peer");
                        accept_piece(ctx, reporter, fetched).await?;
                    }
                    (Answer::Lacking | Answer::Failed, Err(error)) => {
                        if answer == Answer::Failed {
                            tracing::warn!(parent = %parent, piece = index, error = %error, "parent failed; avoiding it");
                        }
                        ctx.metrics.failure(error.metric_label());
                        let reply = report_parent_failure(ctx, task, &parent, &error).await;
                        if let Some(Plan::TriggerSeed(seed)) = reply {
                            return drain_then(ctx, reporter, &mut inflight, PeerOutcome::TriggerSeed(seed)).await;
                        }
                        if let Some(why) = exchange.after_report(answer, reply_of(reply)) {
                            return drain(ctx, reporter, &mut inflight, why).await;
                        }
                    }
                    _ => {}
                }
            }
            _ = demand_changes.changed() => {}
            _ = sleep_until_some(prefetch_due), if prefetch_due.is_some() => {}
            _ = tokio::time::sleep_until(refresh_at), if listing.is_none() => {
                refresh_at = Instant::now() + config.parent_refresh;
                listing = Some(Box::pin(get_parents(ctx, task)));
            }
            Some(plan) = OptionFuture::from(listing.as_mut()), if listing.is_some() => {
                listing = None;
                if let Some(Plan::TriggerSeed(seed)) = plan {
                    return drain_then(ctx, reporter, &mut inflight, PeerOutcome::TriggerSeed(seed)).await;
                }
                match exchange.on_parent_list(reply_of(plan), Instant::now()) {
                    ListOutcome::Merged => {}
                    ListOutcome::Leave(why) => return drain(ctx, reporter, &mut inflight, why).await,
                    ListOutcome::SchedulerLost => {
                        // Parents' bitmaps come from the parents themselves.
                        refresh_bitmaps_from_parents(ctx, task, &mut exchange).await;
                        let missing = task.with_meta(|m| m.missing_pieces());
                        if let Some(why) = exchange.after_parents_asked(&missing, Instant::now()) {
                            return drain(ctx, reporter, &mut inflight, why).await;
                        }
                    }
                }
            }
        }
    }
}

/// A scheduler's answer as the exchange sees it.
fn reply_of(plan: Option<Plan>) -> SchedulerReply {
    match plan {
        Some(Plan::Peers(parents)) => SchedulerReply::Parents(parents),
        Some(_) => SchedulerReply::Elsewhere,
        None => SchedulerReply::Silent,
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

/// Waits until the task's length is known, from the scheduler's answer or
/// a parent; `Some(reason)` to go to the origin instead.
async fn learn_shape_from_parents(
    ctx: &DownloadContext,
    task: &StoredTask,
    exchange: &mut Exchange,
) -> Option<&'static str> {
    let started = Instant::now();
    while !ensure_shape(ctx, task, exchange.slots()).await {
        if started.elapsed() > ctx.settings.stall_timeout {
            return Some("no parent knows the task's length");
        }
        tokio::time::sleep(ctx.settings.parent_refresh).await;
        match get_parents(ctx, task).await {
            Some(Plan::Peers(fresh)) => exchange.merge(&fresh),
            Some(_) => return Some("elected back-to-source"),
            None if exchange.slots().is_empty() => return Some("no scheduler and no parents"),
            None => {}
        }
    }
    None
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
