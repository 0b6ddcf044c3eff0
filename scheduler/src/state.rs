//! The scheduler's soft state and every decision taken on it: which peer
//! goes back to source, which parents a peer gets, what is forgotten when.
//!
//! Every method takes `now` so tests drive the clock; the service passes
//! `Instant::now()`. Methods are synchronous and short: the service holds
//! one mutex around the whole state for the duration of one call.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::{
    Decision, FailureReason, Host, Parent, PeerStat, RegisterPeerRequest,
    ReportParentFailureRequest, ReportPeerResultRequest, ReportPiecesRequest, ScheduleResponse,
    StatResponse, TaskStat,
};
use thiserror::Error;
use tracing::{debug, info, warn};

use crate::budget;
use crate::digests::{self, Claim, Recorded};
use crate::hosts::Hosts;
use crate::metrics::{Gauges, Metrics};
use crate::quarantine::Quarantine;
use crate::ranking::{self, Candidate, Requester};
use crate::tasks::Task;
use wire::bitmap::{Bitmap, BitmapError, MAX_PIECES};

/// Ids longer than this are rejected: real ids are digests or short names,
/// and the state keeps them in memory.
const MAX_ID_LEN: usize = 1024;
/// What callers can make the scheduler hold. Its gRPC port is reachable
/// from every pod, so each thing a call creates is bounded: in all, and
/// per host or per client address.
pub const MAX_HOSTS: usize = 20_000;
/// Host ids announced from one client address (a node runs one dfdaemon;
/// a restart keeps its id).
pub const MAX_HOSTS_PER_CLIENT: usize = 8;
pub const MAX_TASKS: usize = 200_000;
/// Tasks one host may take part in at once.
pub const MAX_TASKS_PER_HOST: usize = 20_000;
const MAX_URL_LEN: usize = 8 * 1024;
/// What one call is charged for what it makes the state hold (entries,
/// their maps' overhead, allocator slack), against the caller's share
/// `budget::MEMBER_CHARGE_BYTES`. Generous on purpose.
const TASK_CHARGE: u64 = 1024;
const PEER_CHARGE: u64 = 512;
const DIGEST_CHARGE: u64 = 96;
const MAX_LABELS: usize = 32;
const MAX_FIELD_LEN: usize = 256;

/// A source elected but never seen registering (a triggered seed nobody
/// reached) stops blocking the task after this long.
pub const SOURCE_REGISTER_TIMEOUT: Duration = Duration::from_secs(30);
/// Distinct peers that must report the source failing (for reasons other
/// than a refused connection) before another source is elected: one slow
/// link should not cost a second origin download.
const SOURCE_FAILURE_REPORTERS: usize = 2;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ScheduleError {
    #[error("host not announced")]
    HostNotAnnounced,
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("limit reached: {0}")]
    Exhausted(String),
    #[error("refused: {0}")]
    Refused(String),
}

impl From<BitmapError> for ScheduleError {
    fn from(e: BitmapError) -> Self {
        ScheduleError::InvalidArgument(e.to_string())
    }
}

impl From<ScheduleError> for tonic::Status {
    fn from(e: ScheduleError) -> Self {
        match e {
            ScheduleError::HostNotAnnounced => tonic::Status::failed_precondition(e.to_string()),
            ScheduleError::InvalidArgument(_) => tonic::Status::invalid_argument(e.to_string()),
            ScheduleError::Exhausted(_) => tonic::Status::resource_exhausted(e.to_string()),
            ScheduleError::Refused(_) => tonic::Status::permission_denied(e.to_string()),
        }
    }
}

pub type Result<T, E = ScheduleError> = std::result::Result<T, E>;

/// The knobs the state needs from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub max_parents: usize,
    pub host_ttl: Duration,
    pub task_idle_ttl: Duration,
    /// How long a reported tag -> digest answer is handed out.
    pub tag_ttl: Duration,
}

/// What one sweep forgot.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub hosts: Vec<String>,
    pub peers: usize,
    pub tasks: usize,
}

#[derive(Debug)]
pub struct State {
    hosts: Hosts,
    tasks: HashMap<String, Task>,
    /// Tasks each host takes part in: counted again at every sweep, raised
    /// as peers are added in between (so it errs on the strict side).
    tasks_per_host: HashMap<String, usize>,
    /// Bytes of state charged to each host, recounted like the above.
    bytes_per_host: HashMap<String, u64>,
    tags: crate::tags::TagBook,
    anonymous_reads: crate::anonymous::AnonymousReads,
    /// Parents that served pieces failing the recorded digests.
    quarantine: Quarantine,
    /// Piece digests recorded over all tasks (recounted at every sweep).
    recorded_digests: usize,
    /// When anything last held the state; the sweeper does at least once a
    /// second, so a longer gap means this process did not run.
    last_held: Option<Instant>,
    settings: Settings,
    metrics: Arc<Metrics>,
}

/// The shortest gap between two holds of the state taken for a pause of the
/// scheduler itself rather than a quiet moment.
const MIN_PAUSE: Duration = Duration::from_secs(1);

fn check_id(what: &str, id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(ScheduleError::InvalidArgument(format!("{what} is empty")));
    }
    if id.len() > MAX_ID_LEN {
        return Err(ScheduleError::InvalidArgument(format!(
            "{what} is longer than {MAX_ID_LEN} bytes"
        )));
    }
    Ok(())
}

fn check_url(url: &str) -> Result<()> {
    if url.len() > MAX_URL_LEN {
        return Err(ScheduleError::InvalidArgument(format!(
            "url is longer than {MAX_URL_LEN} bytes"
        )));
    }
    Ok(())
}

fn check_host_fields(host: &Host) -> Result<()> {
    let too_long = [&host.hostname, &host.ip]
        .into_iter()
        .chain(host.labels.keys())
        .chain(host.labels.values())
        .any(|v| v.len() > MAX_FIELD_LEN);
    if too_long || host.labels.len() > MAX_LABELS {
        return Err(ScheduleError::InvalidArgument(format!(
            "host fields are limited to {MAX_FIELD_LEN} bytes and {MAX_LABELS} labels"
        )));
    }
    Ok(())
}

fn check_ids(task_id: &str, host_id: &str) -> Result<()> {
    check_id("task_id", task_id)?;
    check_id("host_id", host_id)
}

impl State {
    pub fn new(settings: Settings, metrics: Arc<Metrics>) -> Self {
        State {
            hosts: Hosts::new(settings.host_ttl),
            tasks: HashMap::new(),
            tasks_per_host: HashMap::new(),
            bytes_per_host: HashMap::new(),
            tags: crate::tags::TagBook::default(),
            anonymous_reads: Default::default(),
            quarantine: Quarantine::default(),
            recorded_digests: 0,
            last_held: None,
            settings,
            metrics,
        }
    }

    /// Marks the state held at `now`. After a pause of this process (stopped,
    /// starved of CPU, its VM frozen) every heartbeat looks late: hosts would
    /// all expire at once and live sources be replaced, sending their tasks
    /// to the origin again. Heartbeats it could not hear are excused.
    pub fn note_held(&mut self, now: Instant) {
        let gap = self
            .last_held
            .map_or(Duration::ZERO, |last| now.saturating_duration_since(last));
        self.last_held = Some(now);
        if gap > (self.settings.host_ttl / 2).max(MIN_PAUSE) {
            self.hosts.excuse(gap, now);
            warn!(
                paused_ms = gap.as_millis() as u64,
                "the scheduler did not run for a while; heartbeats it missed are excused"
            );
        }
    }

    // ---- hosts -------------------------------------------------------------

    /// Returns whether the host was already known.
    pub fn announce_host(&mut self, host: Option<Host>, now: Instant) -> Result<bool> {
        self.announce_host_from(host, None, now)
    }

    /// Announces a host for a caller at `client` (its address as the
    /// scheduler sees it).
    pub fn announce_host_from(
        &mut self,
        host: Option<Host>,
        client: Option<std::net::IpAddr>,
        now: Instant,
    ) -> Result<bool> {
        let host = host.ok_or_else(|| ScheduleError::InvalidArgument("host is missing".into()))?;
        check_id("host.id", &host.id)?;
        check_host_fields(&host)?;
        if self.hosts.get(&host.id).is_none() {
            if self.hosts.len() >= MAX_HOSTS {
                return Err(ScheduleError::Exhausted(format!(
                    "{MAX_HOSTS} hosts are known"
                )));
            }
            // Loopback callers share this host (tests, the all-in-one mode).
            if let Some(ip) = client.filter(|ip| !ip.is_loopback()) {
                if self.hosts.from_client(ip, now) >= MAX_HOSTS_PER_CLIENT {
                    return Err(ScheduleError::Exhausted(format!(
                        "{MAX_HOSTS_PER_CLIENT} hosts already announced from {ip}"
                    )));
                }
            }
        }
        self.check_address_is_free(&host, now)?;
        let known = self.hosts.announce_from(host, client, now);
        Ok(known)
    }

    /// An address and peer port name one live host: a member cannot take
    /// another's (children sent to it would knock on the other's door).
    /// Loopback addresses are left alone (one machine: tests, all-in-one).
    fn check_address_is_free(&self, host: &Host, now: Instant) -> Result<()> {
        let unchanged = self
            .hosts
            .get(&host.id)
            .is_some_and(|e| e.host.ip == host.ip && e.host.peer_port == host.peer_port);
        let loopback = host
            .ip
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
        if unchanged || loopback || host.ip.is_empty() {
            return Ok(());
        }
        let taken = self.hosts.iter().find(|e| {
            e.host.id != host.id
                && e.host.ip == host.ip
                && e.host.peer_port == host.peer_port
                && self.hosts.is_alive(&e.host.id, now)
        });
        match taken {
            Some(other) => Err(ScheduleError::Refused(format!(
                "{}:{} is announced by live host {}",
                host.ip, host.peer_port, other.host.id
            ))),
            None => Ok(()),
        }
    }

    /// Room for `host_id` to take part in `task_id` (a new task, or a new
    /// peer of one) and to make the state hold `bytes` more: the bytes a
    /// call adds are charged to its caller (see `budget`). Returns the
    /// charge, to pass to `admit` once the call is validated.
    fn check_room(&self, task_id: &str, host_id: &str, bytes: u64) -> Result<u64> {
        let task = self.tasks.get(task_id);
        if task.is_none() && self.tasks.len() >= MAX_TASKS {
            return Err(ScheduleError::Exhausted(format!(
                "{MAX_TASKS} tasks are known"
            )));
        }
        let new_peer = task.is_none_or(|t| !t.peers.contains_key(host_id));
        if new_peer && self.tasks_per_host.get(host_id).copied().unwrap_or(0) >= MAX_TASKS_PER_HOST
        {
            return Err(ScheduleError::Exhausted(format!(
                "host {host_id} takes part in {MAX_TASKS_PER_HOST} tasks"
            )));
        }
        let charge = bytes
            + if task.is_none() { TASK_CHARGE } else { 0 }
            + if new_peer { PEER_CHARGE } else { 0 };
        let held = self.bytes_per_host.get(host_id).copied().unwrap_or(0);
        if charge > 0 && held + charge > budget::MEMBER_CHARGE_BYTES {
            return Err(ScheduleError::Exhausted(format!(
                "host {host_id} holds its share of the scheduler's state ({} bytes)",
                budget::MEMBER_CHARGE_BYTES
            )));
        }
        Ok(charge)
    }

    /// Counts `host_id` in `task_id` and charges it `charge` bytes (from
    /// `check_room`); creates the task, charged to its creator.
    fn admit(&mut self, task_id: &str, host_id: &str, charge: u64, now: Instant) -> &mut Task {
        let new_peer = self
            .tasks
            .get(task_id)
            .is_none_or(|t| !t.peers.contains_key(host_id));
        if new_peer {
            *self.tasks_per_host.entry(host_id.to_string()).or_default() += 1;
        }
        if charge > 0 {
            *self.bytes_per_host.entry(host_id.to_string()).or_default() += charge;
        }
        self.tasks.entry(task_id.to_string()).or_insert_with(|| {
            let mut task = Task::new(task_id, now);
            task.created_by = host_id.to_string();
            task
        })
    }

    /// Bytes `host_id` would add by storing `bitmap_len` bytes of bitmap
    /// for `task_id` (growth only).
    fn bitmap_growth(&self, task_id: &str, host_id: &str, bitmap_len: usize) -> u64 {
        let held = self
            .tasks
            .get(task_id)
            .and_then(|t| t.peers.get(host_id))
            .map_or(0, |p| p.bitmap.as_bytes().len());
        bitmap_len.saturating_sub(held) as u64
    }

    /// Bytes a URL adds to a task it does not name yet.
    fn url_growth(&self, task_id: &str, url: &str) -> u64 {
        let kept = crate::tasks::kept_url(url);
        match self.tasks.get(task_id) {
            Some(t) if t.url == kept => 0,
            _ => kept.len() as u64,
        }
    }

    pub fn leave_host(&mut self, host_id: &str, now: Instant) -> Result<()> {
        check_id("host_id", host_id)?;
        if self.hosts.remove(host_id).is_some() {
            info!(host_id, "host left");
        }
        self.forget_peers_of(&HashSet::from([host_id]), now);
        Ok(())
    }

    /// Removes every peer of the given hosts, clearing sources they held.
    fn forget_peers_of(&mut self, host_ids: &HashSet<&str>, now: Instant) -> usize {
        let mut removed = 0;
        for task in self.tasks.values_mut() {
            for id in host_ids {
                if task.peers.contains_key(*id) || task.is_source(id) {
                    removed += usize::from(task.peers.contains_key(*id));
                    if task.remove_peer(id) {
                        info!(task_id = %task.id, host_id = %id, "source host gone");
                    }
                    task.last_active = now;
                }
            }
        }
        removed
    }

    // ---- scheduling ----------------------------------------------------------

    pub fn register_peer(
        &mut self,
        req: &RegisterPeerRequest,
        now: Instant,
    ) -> Result<ScheduleResponse> {
        check_ids(&req.task_id, &req.host_id)?;
        check_url(&req.url)?;
        let bitmap = Bitmap::from_bytes(&req.bitmap)?;
        let requester = self
            .hosts
            .alive(&req.host_id, now)
            .ok_or(ScheduleError::HostNotAnnounced)?;
        let labels = requester.host.labels.clone();
        let bytes = self.bitmap_growth(&req.task_id, &req.host_id, bitmap.as_bytes().len())
            + self.url_growth(&req.task_id, &req.url);
        let charge = self.check_room(&req.task_id, &req.host_id, bytes)?;
        self.admit(&req.task_id, &req.host_id, charge, now);
        let Some(task) = self.tasks.get_mut(&req.task_id) else {
            return Err(ScheduleError::InvalidArgument("task vanished".into()));
        };
        task.last_active = now;
        task.set_url(&req.url);
        task.update_shape(req.shape.as_ref());
        let peer = task.peer_or_insert(&req.host_id, now);
        // A registration starts a download: what the peer holds now is what
        // it says, whatever was reported before.
        peer.bitmap = bitmap;
        peer.complete = false;
        peer.no_seed = req.no_seed;

        let source = live_source(&self.hosts, task, now);
        let parents = rank_parents(
            &self.hosts,
            &self.quarantine,
            task,
            &req.host_id,
            &labels,
            now,
            self.settings.max_parents,
        );

        let response = if source.as_deref() == Some(req.host_id.as_str()) {
            // The source itself registering again (a retry): it stays source.
            back_to_source(task)
        } else if req.seed_request && source.is_none() && !parents.iter().any(|p| p.complete) {
            elect(task, &req.host_id, now, &self.metrics);
            back_to_source(task)
        } else if source.is_some() || !parents.is_empty() {
            from_peers(task, parents)
        } else if has_complete_holder(&self.hosts, &self.quarantine, task, &req.host_id, now) {
            // Holders exist but none is for this peer (it blocked them all):
            // it may fetch for itself, but its reading is no record and it is
            // no source, so reporting every holder unreachable takes nothing
            // over.
            info!(task_id = %task.id, host_id = %req.host_id, "every holder blocked for this peer: it fetches for itself, unelected");
            back_to_source(task)
        } else if let Some(seed) = (!req.no_seed)
            .then(|| pick_seed(&self.hosts, &self.quarantine, task, &req.host_id, now))
            .flatten()
        {
            elect(task, &seed.id, now, &self.metrics);
            trigger_seed(task, seed)
        } else {
            elect(task, &req.host_id, now, &self.metrics);
            back_to_source(task)
        };
        give(task, &req.host_id, &response.parents, now);
        self.metrics.registration(response.decision());
        debug!(decision = ?response.decision(), parents = response.parents.len(), "registered");
        Ok(response)
    }

    pub fn get_parents(
        &mut self,
        task_id: &str,
        host_id: &str,
        now: Instant,
    ) -> Result<ScheduleResponse> {
        check_ids(task_id, host_id)?;
        let labels = self
            .hosts
            .alive(host_id, now)
            .ok_or(ScheduleError::HostNotAnnounced)?
            .host
            .labels
            .clone();
        let requester_is_seed = self.hosts.alive(host_id, now).is_some_and(|e| e.is_seed());
        let charge = self.check_room(task_id, host_id, 0)?;
        self.admit(task_id, host_id, charge, now);
        let Some(task) = self.tasks.get_mut(task_id) else {
            return Err(ScheduleError::InvalidArgument("task vanished".into()));
        };
        task.last_active = now;
        let no_seed = task.peer_or_insert(host_id, now).no_seed;

        let source = live_source(&self.hosts, task, now);
        if source.as_deref() == Some(host_id) {
            return Ok(back_to_source(task));
        }
        let parents = rank_parents(
            &self.hosts,
            &self.quarantine,
            task,
            host_id,
            &labels,
            now,
            self.settings.max_parents,
        );
        if parents.is_empty() && source.is_none() {
            if has_complete_holder(&self.hosts, &self.quarantine, task, host_id, now) {
                // Every holder blocked for this peer: it fetches for itself,
                // unelected (see register_peer).
                return Ok(back_to_source(task));
            }
            // Nobody has what this peer lacks and nobody is fetching it (a
            // dead source, or a scheduler that restarted and has not yet
            // heard from the holders): a seed takes over, as for a new task,
            // so the origin is read once however many children ask; it may
            // well hold the task already. Without a seed this peer becomes
            // the source.
            if !no_seed && !requester_is_seed {
                if let Some(seed) = pick_seed(&self.hosts, &self.quarantine, task, host_id, now) {
                    info!(task_id = %task.id, seed = %seed.id, "no holder known: a seed takes the task over");
                    elect(task, &seed.id, now, &self.metrics);
                    let response = trigger_seed(task, seed);
                    give(task, host_id, &response.parents, now);
                    return Ok(response);
                }
            }
            elect(task, host_id, now, &self.metrics);
            return Ok(back_to_source(task));
        }
        give(task, host_id, &parents, now);
        Ok(from_peers(task, parents))
    }

    pub fn report_parent_failure(
        &mut self,
        req: &ReportParentFailureRequest,
        now: Instant,
    ) -> Result<ScheduleResponse> {
        check_ids(&req.task_id, &req.host_id)?;
        check_id("parent_host_id", &req.parent_host_id)?;
        self.metrics.parent_failure(req.reason);
        if req.reason == FailureReason::NotFound as i32 {
            // The parent is fine; it lacks one piece (e.g. it discarded a
            // damaged copy) and the child avoids it for that piece only.
            // Blocking or deposing it would cut the child off the swarm.
            return self.get_parents(&req.task_id, &req.host_id, now);
        }
        let charge = self.check_room(&req.task_id, &req.host_id, 0)?;
        self.admit(&req.task_id, &req.host_id, charge, now);
        // A report counts against a parent only when the scheduler handed
        // that parent to the reporter: a member cannot accuse hosts it was
        // never sent to. Otherwise it only blocks the parent for itself.
        let given = self
            .tasks
            .get(&req.task_id)
            .and_then(|t| t.peers.get(&req.host_id))
            .is_some_and(|p| p.was_given(&req.parent_host_id, now));
        if given {
            self.hosts.record_failure(&req.parent_host_id, now);
            self.judge_digest_report(req, now);
        } else {
            debug!(parent = %req.parent_host_id, "report against a parent this peer was never given: counts for itself only");
        }

        let parent_alive = self.hosts.is_alive(&req.parent_host_id, now);
        let Some(task) = self.tasks.get_mut(&req.task_id) else {
            return Err(ScheduleError::InvalidArgument("task vanished".into()));
        };
        task.last_active = now;
        task.peer_or_insert(&req.host_id, now)
            .block(&req.parent_host_id, now);

        if given && task.is_source(&req.parent_host_id) {
            let reporters = task.report_source_failure(&req.host_id);
            let refused = req.reason == FailureReason::Connect as i32;
            // With fewer children than the quorum, every child complaining
            // is enough; otherwise a lone child would wait out its block.
            let children = task.peers.keys().filter(|id| !task.is_source(id)).count();
            let quorum = SOURCE_FAILURE_REPORTERS.min(children.max(1));
            let pc = task.piece_count();
            // A finished source has nothing left to bring from the origin:
            // it is a holder like any other, deposed by nobody's word (only
            // by leaving or going silent). A refused connection deposes at
            // once only while nobody else got anything (a seed triggered but
            // unreachable); a source others reach needs the quorum.
            let finished = task
                .peers
                .get(&req.parent_host_id)
                .is_some_and(|p| p.is_complete(pc));
            let others_reach = task.peers.iter().any(|(id, p)| {
                *id != req.host_id
                    && *id != req.parent_host_id
                    && (p.complete || p.bitmap.count(pc) > 0)
            });
            let lone_refusal = refused && !others_reach;
            if !finished && (lone_refusal || !parent_alive || reporters >= quorum) {
                task.clear_source();
                task.remember_failed_source(&req.parent_host_id, now);
                info!(
                    parent = %req.parent_host_id,
                    reason = req.reason,
                    reporters,
                    "source deposed after failure reports"
                );
            }
        }
        self.get_parents(&req.task_id, &req.host_id, now)
    }

    /// A child says a parent served a piece failing the recorded digest
    /// under a digest of its own: evidence only when the claimed digest
    /// really differs from the recorded one.
    fn judge_digest_report(&mut self, req: &ReportParentFailureRequest, now: Instant) {
        if req.reason != FailureReason::DigestMismatch as i32 || req.claimed_digest.is_empty() {
            return;
        }
        let claim = self
            .tasks
            .get(&req.task_id)
            .and_then(|t| t.digests.judge(req.piece, &req.claimed_digest));
        if claim == Some(Claim::Superseded) {
            // An old copy of content the origin has since changed: no
            // forgery, but no parent for this task any more either.
            if let Some(task) = self.tasks.get_mut(&req.task_id) {
                task.remove_peer(&req.parent_host_id);
            }
            tracing::info!(parent = %req.parent_host_id, task_id = %req.task_id, "parent holds superseded content; dropped from the task");
            return;
        }
        let lied = claim == Some(Claim::Other);
        // The host whose reading is the record cannot testify against others
        // with it: after a takeover, its record and its accusation would be
        // one liar's word twice (and the honest nodes it fooled a third).
        let recorder = self
            .tasks
            .get(&req.task_id)
            .and_then(|t| t.digests.recorder());
        if lied && recorder == Some(req.host_id.as_str()) {
            debug!(parent = %req.parent_host_id, "the record's own reader accuses: not counted");
            return;
        }
        if lied
            && self
                .quarantine
                .accuse(&req.parent_host_id, &req.host_id, now)
        {
            self.metrics.host_quarantined();
            tracing::warn!(
                parent = %req.parent_host_id,
                task_id = %req.task_id,
                piece = req.piece,
                "host quarantined: served pieces failing the recorded digests"
            );
        }
    }

    pub fn is_quarantined(&self, host_id: &str, now: Instant) -> bool {
        self.quarantine.is_quarantined(host_id, now)
    }

    // ---- reports -------------------------------------------------------------

    pub fn report_pieces(&mut self, req: &ReportPiecesRequest, now: Instant) -> Result<()> {
        check_ids(&req.task_id, &req.host_id)?;
        check_url(&req.url)?;
        // Validate everything before touching the state.
        let replacement = if req.replace {
            Some(Bitmap::from_bytes(&req.bitmap)?)
        } else {
            if let Some(&bad) = req.pieces.iter().find(|&&p| p >= MAX_PIECES) {
                return Err(BitmapError::PieceOutOfRange(bad).into());
            }
            None
        };
        let reported_digests = parse_digests(&req.digests)?;
        let bitmap_len = match &replacement {
            Some(bitmap) => bitmap.as_bytes().len(),
            None => req.pieces.iter().max().map_or(0, |&p| p as usize / 8 + 1),
        };
        let bytes = self.bitmap_growth(&req.task_id, &req.host_id, bitmap_len)
            + self.url_growth(&req.task_id, &req.url)
            + reported_digests.len() as u64 * DIGEST_CHARGE;
        let charge = self.check_room(&req.task_id, &req.host_id, bytes)?;
        let trusted = self.hosts.get(&req.host_id).is_some_and(|e| e.is_seed());

        self.admit(&req.task_id, &req.host_id, charge, now);
        let Some(task) = self.tasks.get_mut(&req.task_id) else {
            return Err(ScheduleError::InvalidArgument("task vanished".into()));
        };
        task.last_active = now;
        task.set_url(&req.url);
        task.update_shape(req.shape.as_ref());
        let peer = task.peer_or_insert(&req.host_id, now);
        match replacement {
            Some(bitmap) => peer.bitmap = bitmap,
            None => {
                for &piece in &req.pieces {
                    peer.bitmap.set(piece)?;
                }
            }
        }
        if req.complete {
            peer.complete = true;
        }
        // Only what a source read from the origin is a reference. A source
        // deposed by its children's reports is mostly alive and still
        // reading: it fills in pieces nobody recorded (never replacing a
        // record), or every copy of those pieces in the swarm stays
        // unverifiable and the swarm waits out its stall limit.
        let is_source = task.is_source(&req.host_id);
        // Once the origin changed (a replaced record), a deposed source may
        // hold the old content: then only the current source records.
        let may_record = is_source
            || (task.failed_as_source_recently(&req.host_id, now)
                && task.digests.replacements() == 0
                && !self.quarantine.is_quarantined(&req.host_id, now));
        if may_record && !reported_digests.is_empty() {
            let held_before = task.digests.held();
            let (mut replaced, mut disputed) = (false, false);
            let reader = digests::Reader {
                host_id: &req.host_id,
                trusted,
            };
            for (index, digest) in reported_digests {
                if self.recorded_digests - held_before + task.digests.held() >= digests::MAX_TOTAL {
                    debug!("piece digest cap reached; not recording more");
                    break;
                }
                if is_source {
                    match task.digests.record(index, digest, reader) {
                        Recorded::Replaced => replaced = true,
                        Recorded::Disputed => disputed = true,
                        Recorded::New | Recorded::Same => {}
                    }
                } else {
                    task.digests.fill(index, digest);
                }
            }
            if disputed {
                tracing::warn!(task_id = %req.task_id, source = %req.host_id, recorder = ?task.digests.recorder(), "the source read other content than another host recorded; the record stands until a seed or a second host confirms the change");
            }
            self.recorded_digests = self.recorded_digests - held_before + task.digests.held();
            if replaced {
                tracing::warn!(task_id = %req.task_id, source = %req.host_id, replacements = task.digests.replacements(), "the source read other content than recorded (the origin changed); its digests replace the record");
            }
        }
        Ok(())
    }

    /// The recorded digests of a range of a task's pieces.
    pub fn get_piece_digests(
        &self,
        req: &proto::GetPieceDigestsRequest,
        now: Instant,
    ) -> Result<proto::GetPieceDigestsResponse> {
        check_ids(&req.task_id, &req.host_id)?;
        if !self.hosts.is_alive(&req.host_id, now) {
            return Err(ScheduleError::HostNotAnnounced);
        }
        let digests = self
            .tasks
            .get(&req.task_id)
            .map(|t| t.digests.range(req.first, req.count))
            .unwrap_or_default();
        Ok(proto::GetPieceDigestsResponse { digests })
    }

    pub fn report_peer_result(
        &mut self,
        req: &ReportPeerResultRequest,
        now: Instant,
    ) -> Result<()> {
        check_ids(&req.task_id, &req.host_id)?;
        if req.success {
            let charge = self.check_room(&req.task_id, &req.host_id, 0)?;
            let task = self.admit(&req.task_id, &req.host_id, charge, now);
            task.last_active = now;
            task.learn_content_length(req.content_length);
            task.peer_or_insert(&req.host_id, now).complete = true;
            return Ok(());
        }
        let Some(task) = self.tasks.get_mut(&req.task_id) else {
            return Ok(());
        };
        task.last_active = now;
        if task.remove_peer(&req.host_id) || req.was_source {
            // Whatever made it fail (origin unreachable from there, disk
            // full) may well happen again: try someone else first.
            task.remember_failed_source(&req.host_id, now);
            info!(error = %req.error, "source failed; another will be elected");
        }
        Ok(())
    }

    pub fn leave_task(&mut self, task_id: &str, host_id: &str, now: Instant) -> Result<()> {
        check_ids(task_id, host_id)?;
        if let Some(task) = self.tasks.get_mut(task_id) {
            task.last_active = now;
            if task.remove_peer(host_id) {
                info!("source left the task");
            }
        }
        Ok(())
    }

    // ---- housekeeping --------------------------------------------------------

    /// Forgets hosts whose heartbeat stopped (with their peers), peers whose
    /// host never announced, and tasks idle with no peers.
    pub fn sweep(&mut self, now: Instant) -> Swept {
        let expired = self.hosts.expire(now);
        self.metrics.hosts_expired(expired.len());
        for id in &expired {
            info!(host_id = %id, "host expired");
        }
        let expired_set: HashSet<&str> = expired.iter().map(String::as_str).collect();
        let mut peers = self.forget_peers_of(&expired_set, now);

        // Peers reported by a host that never announced (e.g. re-reports
        // racing the announce after a scheduler restart) get one TTL of grace.
        let ttl = self.settings.host_ttl;
        for task in self.tasks.values_mut() {
            let orphans: Vec<String> = task
                .peers
                .iter()
                .filter(|(id, p)| {
                    !self.hosts.is_known(id) && now.saturating_duration_since(p.updated) > ttl
                })
                .map(|(id, _)| id.clone())
                .collect();
            for id in orphans {
                task.remove_peer(&id);
                task.last_active = now;
                peers += 1;
            }
        }

        self.tags.sweep(now, self.settings.tag_ttl);
        self.anonymous_reads.sweep(now, self.settings.tag_ttl);
        self.quarantine.sweep(now);
        let before = self.tasks.len();
        let idle_ttl = self.settings.task_idle_ttl;
        self.tasks.retain(|_, t| !t.is_idle(now, idle_ttl));
        self.recorded_digests = self.tasks.values().map(|t| t.digests.held()).sum();
        self.tasks_per_host.clear();
        self.bytes_per_host.clear();
        for task in self.tasks.values() {
            for (id, peer) in &task.peers {
                *self.tasks_per_host.entry(id.clone()).or_default() += 1;
                *self.bytes_per_host.entry(id.clone()).or_default() +=
                    PEER_CHARGE + peer.bitmap.as_bytes().len() as u64;
            }
            *self
                .bytes_per_host
                .entry(task.created_by.clone())
                .or_default() += TASK_CHARGE + task.url.len() as u64;
            if let Some(recorder) = task.digests.recorder() {
                *self.bytes_per_host.entry(recorder.to_string()).or_default() +=
                    task.digests.held() as u64 * DIGEST_CHARGE;
            }
        }
        Swept {
            hosts: expired,
            peers,
            tasks: before - self.tasks.len(),
        }
    }

    pub fn gauges(&self) -> Gauges {
        let seed_hosts = self.hosts.iter().filter(|e| e.is_seed()).count();
        Gauges {
            normal_hosts: self.hosts.len() - seed_hosts,
            seed_hosts,
            tasks: self.tasks.len(),
            peers: self.tasks.values().map(|t| t.peers.len()).sum(),
        }
    }

    /// Records that a member saw its registry serve an object without
    /// credentials (kept as long as tags).
    pub fn report_anonymous_read(
        &mut self,
        req: &proto::ReportAnonymousReadRequest,
        now: Instant,
    ) -> Result<()> {
        check_id("host_id", &req.host_id)?;
        let trusted = self.hosts.get(&req.host_id).is_some_and(|e| e.is_seed());
        self.anonymous_reads
            .report(req.object.as_ref(), &req.host_id, trusted, now)
    }

    pub fn check_anonymous_read(
        &self,
        req: &proto::CheckAnonymousReadRequest,
        now: Instant,
    ) -> Result<proto::CheckAnonymousReadResponse> {
        let age = self
            .anonymous_reads
            .check(req.object.as_ref(), now, self.settings.tag_ttl)?;
        Ok(proto::CheckAnonymousReadResponse {
            readable: age.is_some(),
            age_ms: age.map_or(0, |a| a.as_millis() as u64),
        })
    }

    /// Records what a tag resolved to at its registry.
    pub fn report_tag(&mut self, req: &proto::ReportTagRequest, now: Instant) -> Result<()> {
        check_id("host_id", &req.host_id)?;
        let trusted = self.hosts.get(&req.host_id).is_some_and(|e| e.is_seed());
        self.tags.report(req, trusted, now)
    }

    pub fn resolve_tag(
        &self,
        req: &proto::ResolveTagRequest,
        now: Instant,
    ) -> Result<proto::ResolveTagResponse> {
        let records = self
            .tags
            .resolve(req.tag.as_ref(), now, self.settings.tag_ttl)?;
        Ok(proto::ResolveTagResponse { records })
    }

    /// Every host and every task (or just `task_id`), sorted by id: the
    /// operator's view.
    pub fn stat(&self, task_id: &str) -> StatResponse {
        self.stat_for(task_id, None, Instant::now())
    }

    /// What `viewer` may see (everything for `None`, the operator): a
    /// member sees only the tasks it takes part in, and in them itself and
    /// the parents it was handed; only their hosts; no URL query anywhere
    /// (none is kept).
    pub fn stat_for(&self, task_id: &str, viewer: Option<&str>, now: Instant) -> StatResponse {
        let mut visible_hosts: HashSet<&str> = HashSet::new();
        let mut tasks: Vec<TaskStat> = self
            .tasks
            .values()
            .filter(|t| task_id.is_empty() || t.id == task_id)
            .filter(|t| viewer.is_none_or(|v| t.peers.contains_key(v)))
            .map(|t| {
                let pc = t.piece_count();
                let me = viewer.and_then(|v| t.peers.get(v));
                let sees = |id: &str| {
                    viewer.is_none_or(|v| id == v || me.is_some_and(|p| p.was_given(id, now)))
                };
                visible_hosts.extend(t.peers.keys().map(String::as_str).filter(|id| sees(id)));
                let source = t.source_id().filter(|id| sees(id)).unwrap_or_default();
                let mut peers: Vec<PeerStat> = t
                    .peers
                    .iter()
                    .filter(|(id, _)| sees(id))
                    .map(|(id, p)| PeerStat {
                        host_id: id.clone(),
                        finished_pieces: p.finished(pc),
                        complete: p.is_complete(pc),
                    })
                    .collect();
                peers.sort_by(|a, b| a.host_id.cmp(&b.host_id));
                TaskStat {
                    task_id: t.id.clone(),
                    url: t.url.clone(),
                    shape: Some(t.shape),
                    source_host_id: source.to_string(),
                    peers,
                    source_elections: t.source_elections,
                    recorded_digests: t.digests.len() as u32,
                }
            })
            .collect();
        tasks.sort_by(|a, b| a.task_id.cmp(&b.task_id));
        if let Some(v) = viewer {
            visible_hosts.insert(v);
        }
        let mut hosts: Vec<Host> = self
            .hosts
            .iter()
            .filter(|e| viewer.is_none() || visible_hosts.contains(e.host.id.as_str()))
            .map(|e| e.host.clone())
            .collect();
        hosts.sort_by(|a, b| a.id.cmp(&b.id));
        let quarantined = self
            .quarantine
            .list(now)
            .into_iter()
            .filter(|id| viewer.is_none() || visible_hosts.contains(id.as_str()))
            .collect();
        StatResponse {
            hosts,
            tasks,
            quarantined,
        }
    }
}

/// The task's source if it can still deliver; a source whose host stopped
/// heart-beating, or that was elected but never registered, is cleared here
/// so the next decision elects another.
fn live_source(hosts: &Hosts, task: &mut Task, now: Instant) -> Option<String> {
    let source = task.source()?;
    let id = source.host_id.clone();
    let host_alive = hosts.is_alive(&id, now);
    let never_came = !task.peers.contains_key(&id)
        && now.saturating_duration_since(source.elected_at) > SOURCE_REGISTER_TIMEOUT;
    if host_alive && !never_came {
        return Some(id);
    }
    info!(task_id = %task.id, source = %id, host_alive, "source lost");
    task.clear_source();
    task.remember_failed_source(&id, now);
    None
}

/// A live seed to fetch the task for the requester, chosen by rendezvous
/// hash so tasks spread over seeds. Seeds that failed as this task's source
/// lately are passed over.
/// The answer that hands a task to `seed` (already elected its source).
fn trigger_seed(task: &Task, seed: Host) -> ScheduleResponse {
    ScheduleResponse {
        decision: Decision::TriggerSeed as i32,
        parents: vec![Parent {
            host: Some(seed),
            is_source: true,
            ..Default::default()
        }],
        shape: Some(task.shape),
    }
}

fn pick_seed(
    hosts: &Hosts,
    quarantine: &Quarantine,
    task: &Task,
    requester: &str,
    now: Instant,
) -> Option<Host> {
    let eligible: Vec<&str> = hosts
        .live_seeds(now)
        .map(|e| e.host.id.as_str())
        .filter(|id| {
            *id != requester
                && !task.failed_as_source_recently(id, now)
                && !quarantine.is_quarantined(id, now)
        })
        .collect();
    let chosen = ranking::pick_seed(&task.id, eligible)?;
    hosts.alive(chosen, now).map(|e| e.host.clone())
}

/// A report's piece digests, checked before anything is recorded.
fn parse_digests(reported: &[proto::PieceDigest]) -> Result<Vec<(u32, [u8; 32])>> {
    if reported.len() > MAX_PIECES as usize {
        return Err(ScheduleError::InvalidArgument(format!(
            "more than {MAX_PIECES} piece digests"
        )));
    }
    reported
        .iter()
        .map(|d| {
            if d.index >= MAX_PIECES {
                return Err(BitmapError::PieceOutOfRange(d.index).into());
            }
            digests::parse(&d.digest)
                .map(|raw| (d.index, raw))
                .ok_or_else(|| {
                    ScheduleError::InvalidArgument(format!(
                        "piece {} digest is not sha256:<hex>",
                        d.index
                    ))
                })
        })
        .collect()
}

/// Ranked parents for `requester`, as sent on the wire.
fn rank_parents(
    hosts: &Hosts,
    quarantine: &Quarantine,
    task: &Task,
    requester: &str,
    labels: &HashMap<String, String>,
    now: Instant,
    max_parents: usize,
) -> Vec<Parent> {
    let empty = Bitmap::default();
    let piece_count = task.piece_count();
    let me = task.peers.get(requester);
    let req = Requester {
        host_id: requester,
        labels,
        bitmap: me.map_or(&empty, |p| &p.bitmap),
    };
    let blocked = |id: &str| me.is_some_and(|p| p.is_blocked(id, now));

    let mut candidates: Vec<Candidate> = task
        .peers
        .iter()
        .filter_map(|(id, peer)| {
            // Peers of hosts we have not heard from yet are not offered: we
            // would not know where to send the child. Quarantined hosts
            // never are.
            if quarantine.is_quarantined(id, now) {
                return None;
            }
            let entry = hosts.get(id)?;
            Some(Candidate {
                host: &entry.host,
                bitmap: &peer.bitmap,
                complete: peer.is_complete(piece_count),
                is_source: task.is_source(id),
                alive: hosts.is_alive(id, now),
                blocked: blocked(id),
                recent_failures: hosts.recent_failures(id, now),
            })
        })
        .collect();
    // A triggered seed is the source before it registers as a peer.
    if let Some(source) = task
        .source_id()
        .filter(|s| !task.peers.contains_key(*s) && !quarantine.is_quarantined(s, now))
    {
        if let Some(entry) = hosts.get(source) {
            candidates.push(Candidate {
                host: &entry.host,
                bitmap: &empty,
                complete: false,
                is_source: true,
                alive: hosts.is_alive(source, now),
                blocked: blocked(source),
                recent_failures: hosts.recent_failures(source, now),
            });
        }
    }

    ranking::rank(&req, candidates, piece_count, max_parents)
        .into_iter()
        .map(|c| Parent {
            host: Some(c.host.clone()),
            bitmap: c.bitmap.as_bytes().to_vec(),
            finished_pieces: if c.complete && piece_count > 0 {
                piece_count
            } else {
                c.bitmap.count(piece_count)
            },
            complete: c.complete,
            is_source: c.is_source,
        })
        .collect()
}

/// Remembers the parents handed to `requester`: only reports against them
/// count against those hosts.
fn give(task: &mut Task, requester: &str, parents: &[Parent], now: Instant) {
    if parents.is_empty() {
        return;
    }
    let peer = task.peer_or_insert(requester, now);
    for id in parents
        .iter()
        .filter_map(|p| p.host.as_ref().map(|h| &h.id))
    {
        peer.give(id, now);
    }
}

/// Whether a live, unquarantined host other than `requester` holds the
/// whole task.
fn has_complete_holder(
    hosts: &Hosts,
    quarantine: &Quarantine,
    task: &Task,
    requester: &str,
    now: Instant,
) -> bool {
    let pc = task.piece_count();
    task.peers.iter().any(|(id, p)| {
        id != requester
            && p.is_complete(pc)
            && hosts.is_alive(id, now)
            && !quarantine.is_quarantined(id, now)
    })
}

fn elect(task: &mut Task, host_id: &str, now: Instant, metrics: &Metrics) {
    if task.elect_source(host_id, now) {
        metrics.source_elected();
        info!(
            task_id = %task.id,
            source = host_id,
            elections = task.source_elections,
            "back-to-source peer elected"
        );
    }
}

fn back_to_source(task: &Task) -> ScheduleResponse {
    ScheduleResponse {
        decision: Decision::BackToSource as i32,
        parents: Vec::new(),
        shape: Some(task.shape),
    }
}

fn from_peers(task: &Task, parents: Vec<Parent>) -> ScheduleResponse {
    ScheduleResponse {
        decision: Decision::FromPeers as i32,
        parents,
        shape: Some(task.shape),
    }
}

/// The state behind one mutex, shared by the gRPC service, the admin server
/// and the sweeper.
#[derive(Debug)]
pub struct SharedState {
    inner: Mutex<State>,
}

impl SharedState {
    pub fn new(state: State) -> Arc<Self> {
        Arc::new(SharedState {
            inner: Mutex::new(state),
        })
    }

    /// Runs `f` under the lock. A panic in an earlier holder leaves soft
    /// state that is at worst stale, so a poisoned lock is simply reused.
    pub fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        guard.note_held(Instant::now());
        f(&mut guard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{HostType, TaskShape};

    const TTL: Duration = Duration::from_secs(15);

    fn state() -> State {
        State::new(
            Settings {
                max_parents: 4,
                host_ttl: TTL,
                task_idle_ttl: Duration::from_secs(600),
                tag_ttl: Duration::from_secs(3600),
            },
            Arc::new(Metrics::new()),
        )
    }

    fn host(id: &str, ty: HostType) -> Host {
        Host {
            id: id.into(),
            ip: "127.0.0.1".into(),
            r#type: ty as i32,
            upload_capacity: 4,
            free_upload_slots: 4,
            ..Default::default()
        }
    }

    #[test]
    fn callers_cannot_grow_the_state_without_bound() {
        let mut s = state();
        let now = Instant::now();
        let pod: std::net::IpAddr = [10, 244, 1, 7].into();
        for n in 0..MAX_HOSTS_PER_CLIENT {
            s.announce_host_from(
                Some(host(&format!("h{n}"), HostType::Normal)),
                Some(pod),
                now,
            )
            .unwrap();
        }
        let more = s.announce_host_from(Some(host("one-more", HostType::Normal)), Some(pod), now);
        assert!(matches!(more, Err(ScheduleError::Exhausted(_))), "{more:?}");
        // A known host keeps announcing; another client is not affected.
        s.announce_host_from(Some(host("h0", HostType::Normal)), Some(pod), now)
            .unwrap();
        s.announce_host_from(
            Some(host("other", HostType::Normal)),
            Some([10, 0, 0, 1].into()),
            now,
        )
        .unwrap();
        // Oversized fields are refused.
        let mut labelled = host("labelled", HostType::Normal);
        labelled.labels = (0..=MAX_LABELS)
            .map(|i| (i.to_string(), "x".into()))
            .collect();
        assert!(s.announce_host(Some(labelled), now).is_err());
        let long_url = RegisterPeerRequest {
            task_id: "t".into(),
            host_id: "h0".into(),
            url: "x".repeat(MAX_URL_LEN + 1),
            ..Default::default()
        };
        assert!(s.register_peer(&long_url, now).is_err());
        // One host cannot take part in more than its share of tasks, even
        // by reporting pieces without registering.
        for n in 0..MAX_TASKS_PER_HOST {
            let req = ReportPiecesRequest {
                task_id: format!("t{n}"),
                host_id: "h1".into(),
                pieces: vec![0],
                ..Default::default()
            };
            s.report_pieces(&req, now).unwrap();
        }
        let over = ReportPiecesRequest {
            task_id: "t-over".into(),
            host_id: "h1".into(),
            pieces: vec![0],
            ..Default::default()
        };
        assert!(matches!(
            s.report_pieces(&over, now),
            Err(ScheduleError::Exhausted(_))
        ));
        // Others still can.
        let other = ReportPiecesRequest {
            host_id: "h2".into(),
            ..over.clone()
        };
        s.report_pieces(&other, now).unwrap();
        // The count is redone at each sweep, from what is really held.
        s.leave_task("t0", "h1", now).unwrap();
        s.sweep(now);
        s.report_pieces(&over, now).unwrap();
    }

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn report_with_digests(
        s: &mut State,
        task: &str,
        id: &str,
        pieces: &[(u32, String)],
        now: Instant,
    ) {
        s.report_pieces(
            &ReportPiecesRequest {
                task_id: task.into(),
                host_id: id.into(),
                shape: Some(TaskShape {
                    content_length: 400,
                    piece_length: 100,
                    piece_count: 4,
                    known: true,
                }),
                pieces: pieces.iter().map(|(i, _)| *i).collect(),
                digests: pieces
                    .iter()
                    .map(|(index, digest)| proto::PieceDigest {
                        index: *index,
                        digest: digest.clone(),
                    })
                    .collect(),
                ..Default::default()
            },
            now,
        )
        .unwrap();
    }

    fn forged(s: &mut State, task: &str, child: &str, parent: &str, claimed: &str, now: Instant) {
        s.report_parent_failure(
            &ReportParentFailureRequest {
                task_id: task.into(),
                host_id: child.into(),
                parent_host_id: parent.into(),
                reason: FailureReason::DigestMismatch as i32,
                piece: 1,
                claimed_digest: claimed.into(),
                ..Default::default()
            },
            now,
        )
        .unwrap();
    }

    #[test]
    fn digests_come_from_the_source_and_forgers_are_quarantined() {
        let mut s = state();
        let now = Instant::now();
        for id in ["src", "evil", "c1", "c2", "c3"] {
            announce(&mut s, id, HostType::Normal, now);
        }
        assert_eq!(
            register(&mut s, "t", "src", now).decision(),
            Decision::BackToSource
        );
        report_with_digests(
            &mut s,
            "t",
            "src",
            &[(0, digest('a')), (1, digest('b'))],
            now,
        );
        // Another peer's digests are not a reference.
        register(&mut s, "t", "evil", now);
        report_with_digests(
            &mut s,
            "t",
            "evil",
            &[(0, digest('a')), (1, digest('e')), (2, digest('e'))],
            now,
        );
        let req = |first, count| proto::GetPieceDigestsRequest {
            task_id: "t".into(),
            host_id: "c1".into(),
            first,
            count,
        };
        let got = s.get_piece_digests(&req(0, 10), now).unwrap().digests;
        let got: Vec<(u32, &str)> = got.iter().map(|d| (d.index, d.digest.as_str())).collect();
        assert_eq!(
            got,
            vec![(0, digest('a').as_str()), (1, digest('b').as_str())]
        );
        assert_eq!(s.stat("t").tasks[0].recorded_digests, 2);
        // Malformed digests are refused before anything is recorded.
        let bad = ReportPiecesRequest {
            task_id: "t".into(),
            host_id: "src".into(),
            pieces: vec![3],
            digests: vec![proto::PieceDigest {
                index: 3,
                digest: "md5:x".into(),
            }],
            ..Default::default()
        };
        assert!(s.report_pieces(&bad, now).is_err());
        assert!(s
            .get_piece_digests(
                &proto::GetPieceDigestsRequest {
                    host_id: "nobody".into(),
                    ..req(0, 1)
                },
                now
            )
            .is_err());

        for c in ["c1", "c2", "c3"] {
            register(&mut s, "t", c, now);
        }
        let offered = |s: &mut State, child: &str| -> Vec<String> {
            s.get_parents("t", child, now)
                .unwrap()
                .parents
                .iter()
                .filter_map(|p| p.host.as_ref().map(|h| h.id.clone()))
                .collect()
        };
        assert!(offered(&mut s, "c3").contains(&"evil".to_string()));
        // A report naming the recorded digest as the claim is no evidence
        // (the bytes broke on the way); one child's word is not enough.
        forged(&mut s, "t", "c1", "evil", &digest('b'), now);
        forged(&mut s, "t", "c2", "evil", &digest('b'), now);
        assert!(!s.is_quarantined("evil", now));
        forged(&mut s, "t", "c1", "evil", &digest('e'), now);
        assert!(!s.is_quarantined("evil", now));
        assert!(offered(&mut s, "c3").contains(&"evil".to_string()));
        // A second peer: quarantined for everyone, in every task.
        forged(&mut s, "t", "c2", "evil", &digest('e'), now);
        assert!(s.is_quarantined("evil", now));
        assert!(!offered(&mut s, "c3").contains(&"evil".to_string()));
        assert_eq!(s.stat("").quarantined, vec!["evil".to_string()]);
        // Re-announcing does not lift it.
        announce(&mut s, "evil", HostType::Normal, now);
        assert!(!offered(&mut s, "c3").contains(&"evil".to_string()));
    }

    #[test]
    fn a_changed_origin_replaces_the_record_and_old_copies_are_stale_not_forged() {
        let mut s = state();
        let now = Instant::now();
        for id in ["src", "old", "c1", "c2"] {
            announce(&mut s, id, HostType::Normal, now);
        }
        register(&mut s, "t", "src", now);
        report_with_digests(
            &mut s,
            "t",
            "src",
            &[(0, digest('a')), (1, digest('b'))],
            now,
        );
        register(&mut s, "t", "old", now);
        pieces(&mut s, "t", "old", &[0, 1], now);
        // The origin's content changed; the source read it again.
        report_with_digests(&mut s, "t", "src", &[(0, digest('c'))], now);
        let got = s
            .get_piece_digests(
                &proto::GetPieceDigestsRequest {
                    task_id: "t".into(),
                    host_id: "c1".into(),
                    first: 0,
                    count: 10,
                },
                now,
            )
            .unwrap()
            .digests;
        assert_eq!(got.len(), 1, "piece 1's old digest no longer vouches");
        assert_eq!(got[0].digest, digest('c'));
        assert_eq!(s.stat("t").tasks[0].recorded_digests, 1);
        // Two children find the old copy: stale, not forged; the holder is
        // no parent of the task any more, and no one is quarantined.
        for c in ["c1", "c2"] {
            register(&mut s, "t", c, now);
            forged(&mut s, "t", c, "old", &digest('a'), now);
        }
        assert!(!s.is_quarantined("old", now));
        assert!(s.stat("").quarantined.is_empty());
        let parents = s.get_parents("t", "c1", now).unwrap();
        assert!(!parent_ids(&parents).contains(&"old".to_string()));
    }

    #[test]
    fn a_pause_of_the_scheduler_itself_expires_no_host() {
        let mut s = state();
        let t0 = Instant::now();
        s.note_held(t0);
        announce(&mut s, "src", HostType::Normal, t0);
        announce(&mut s, "child", HostType::Normal, t0);
        assert_eq!(
            register(&mut s, "t", "src", t0).decision(),
            Decision::BackToSource
        );
        // Stopped for longer than the TTL: nothing held the state meanwhile.
        let thawed = t0 + TTL + Duration::from_secs(5);
        s.note_held(thawed);
        assert!(s.sweep(thawed).hosts.is_empty());
        let r = register(&mut s, "t", "child", thawed);
        assert_eq!(r.decision(), Decision::FromPeers, "the source stays");
        assert!(r.parents.iter().any(|p| p.is_source));
        // Running all along (the sweeper holds the state every second),
        // hosts that go quiet still expire.
        let mut now = thawed;
        for _ in 0..20 {
            now += Duration::from_secs(1);
            s.note_held(now);
            s.sweep(now);
        }
        assert!(!s.hosts.is_known("src"));
        assert!(!s.hosts.is_known("child"));
    }

    fn announce(s: &mut State, id: &str, ty: HostType, now: Instant) {
        s.announce_host(Some(host(id, ty)), now).unwrap();
    }

    fn register(s: &mut State, task: &str, id: &str, now: Instant) -> ScheduleResponse {
        s.register_peer(
            &RegisterPeerRequest {
                task_id: task.into(),
                host_id: id.into(),
                url: "http://origin/blob".into(),
                ..Default::default()
            },
            now,
        )
        .unwrap()
    }

    fn seed_register(s: &mut State, task: &str, id: &str, now: Instant) -> ScheduleResponse {
        s.register_peer(
            &RegisterPeerRequest {
                task_id: task.into(),
                host_id: id.into(),
                seed_request: true,
                ..Default::default()
            },
            now,
        )
        .unwrap()
    }

    fn fail_parent(
        s: &mut State,
        task: &str,
        id: &str,
        parent: &str,
        reason: FailureReason,
        now: Instant,
    ) -> ScheduleResponse {
        s.report_parent_failure(
            &ReportParentFailureRequest {
                task_id: task.into(),
                host_id: id.into(),
                parent_host_id: parent.into(),
                reason: reason as i32,
                ..Default::default()
            },
            now,
        )
        .unwrap()
    }

    fn pieces(s: &mut State, task: &str, id: &str, pieces: &[u32], now: Instant) {
        s.report_pieces(
            &ReportPiecesRequest {
                task_id: task.into(),
                host_id: id.into(),
                shape: Some(TaskShape {
                    content_length: 40,
                    piece_length: 10,
                    piece_count: 4,
                    known: true,
                }),
                pieces: pieces.to_vec(),
                ..Default::default()
            },
            now,
        )
        .unwrap();
    }

    fn source_of(s: &State, task: &str) -> String {
        s.stat(task).tasks[0].source_host_id.clone()
    }

    fn elections(s: &State, task: &str) -> u32 {
        s.stat(task).tasks[0].source_elections
    }

    fn parent_ids(r: &ScheduleResponse) -> Vec<String> {
        r.parents
            .iter()
            .map(|p| p.host.as_ref().map(|h| h.id.clone()).unwrap_or_default())
            .collect()
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn first_peer_goes_to_source_the_rest_fetch_from_it() {
        let t0 = Instant::now();
        let mut s = state();
        for id in ["a", "b", "c"] {
            announce(&mut s, id, HostType::Normal, t0);
        }
        assert_eq!(
            register(&mut s, "t", "a", t0).decision(),
            Decision::BackToSource
        );
        let b = register(&mut s, "t", "b", t0);
        assert_eq!(b.decision(), Decision::FromPeers);
        assert_eq!(parent_ids(&b), vec!["a"]);
        assert!(b.parents[0].is_source);

        pieces(&mut s, "t", "b", &[0], t0);
        let c = register(&mut s, "t", "c", t0);
        assert_eq!(c.decision(), Decision::FromPeers);
        assert_eq!(parent_ids(&c).len(), 2);
        assert_eq!(source_of(&s, "t"), "a");
        assert_eq!(elections(&s, "t"), 1);
    }

    #[test]
    fn one_source_across_concurrent_registrations() {
        let t0 = Instant::now();
        let shared = SharedState::new(state());
        let n = 32;
        shared.with(|s| {
            for i in 0..n {
                announce(s, &format!("h{i}"), HostType::Normal, t0);
            }
        });
        let threads: Vec<_> = (0..n)
            .map(|i| {
                let shared = shared.clone();
                std::thread::spawn(move || {
                    shared.with(|s| register(s, "t", &format!("h{i}"), Instant::now()).decision())
                })
            })
            .collect();
        let decisions: Vec<Decision> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let sources = decisions
            .iter()
            .filter(|d| **d == Decision::BackToSource)
            .count();
        assert_eq!(sources, 1, "{decisions:?}");
        assert!(decisions
            .iter()
            .all(|d| matches!(d, Decision::BackToSource | Decision::FromPeers)));
        shared.with(|s| assert_eq!(elections(s, "t"), 1));
    }

    #[test]
    fn a_seed_is_preferred_and_then_goes_to_source() {
        let t0 = Instant::now();
        let mut s = state();
        announce(&mut s, "seed", HostType::Seed, t0);
        announce(&mut s, "a", HostType::Normal, t0);
        announce(&mut s, "b", HostType::Normal, t0);

        let a = register(&mut s, "t", "a", t0);
        assert_eq!(a.decision(), Decision::TriggerSeed);
        assert_eq!(parent_ids(&a), vec!["seed"]);
        assert!(a.parents[0].is_source);
        assert_eq!(source_of(&s, "t"), "seed");

        // Before the seed registers, others already get it as their source.
        let b = register(&mut s, "t", "b", t0);
        assert_eq!(b.decision(), Decision::FromPeers);
        assert_eq!(parent_ids(&b), vec!["seed"]);
        assert!(b.parents[0].is_source);

        assert_eq!(
            seed_register(&mut s, "t", "seed", t0).decision(),
            Decision::BackToSource
        );
        assert_eq!(elections(&s, "t"), 1);
    }

    #[test]
    fn a_peer_that_keeps_its_credentials_is_elected_instead_of_a_seed() {
        let t0 = Instant::now();
        let mut s = state();
        announce(&mut s, "seed", HostType::Seed, t0);
        announce(&mut s, "a", HostType::Normal, t0);
        announce(&mut s, "b", HostType::Normal, t0);
        let a = s
            .register_peer(
                &RegisterPeerRequest {
                    task_id: "t".into(),
                    host_id: "a".into(),
                    url: "http://origin/private".into(),
                    no_seed: true,
                    ..Default::default()
                },
                t0,
            )
            .unwrap();
        assert_eq!(a.decision(), Decision::BackToSource);
        assert_eq!(source_of(&s, "t"), "a");
        // The others take it from that source, as from any.
        let b = register(&mut s, "t", "b", t0);
        assert_eq!(b.decision(), Decision::FromPeers);
        assert_eq!(parent_ids(&b), vec!["a"]);
    }

    #[test]
    fn a_seed_request_joins_an_existing_source() {
        let t0 = Instant::now();
        let mut s = state();
        announce(&mut s, "a", HostType::Normal, t0);
        assert_eq!(
            register(&mut s, "t", "a", t0).decision(),
            Decision::BackToSource
        );
        announce(&mut s, "seed", HostType::Seed, t0);
        let r = seed_register(&mut s, "t", "seed", t0);
        assert_eq!(r.decision(), Decision::FromPeers);
        assert_eq!(parent_ids(&r), vec!["a"]);
        assert_eq!(source_of(&s, "t"), "a");
    }

    #[test]
    fn seeds_share_tasks() {
        let t0 = Instant::now();
        let mut s = state();
        announce(&mut s, "seed-1", HostType::Seed, t0);
        announce(&mut s, "seed-2", HostType::Seed, t0);
        announce(&mut s, "a", HostType::Normal, t0);
        let chosen: HashSet<String> = (0..20)
            .map(|i| parent_ids(&register(&mut s, &format!("task-{i}"), "a", t0))[0].clone())
            .collect();
        assert_eq!(chosen.len(), 2);
    }

    #[test]
    fn a_dead_source_is_replaced() {
        let t0 = Instant::now();
        let mut s = state();
        announce(&mut s, "a", HostType::Normal, t0);
        announce(&mut s, "b", HostType::Normal, t0);
        register(&mut s, "t", "a", t0);
        assert_eq!(
            register(&mut s, "t", "b", t0).decision(),
            Decision::FromPeers
        );

        // a stops heart-beating; b keeps going and asks again before any sweep.
        let later = t0 + TTL + secs(1);
        announce(&mut s, "b", HostType::Normal, later);
        let r = s.get_parents("t", "b", later).unwrap();
        assert_eq!(r.decision(), Decision::BackToSource);
        assert_eq!(source_of(&s, "t"), "b");
        assert_eq!(elections(&s, "t"), 2);

        let swept = s.sweep(later);
        assert_eq!(swept.hosts, vec!["a".to_string()]);
        assert_eq!(s.stat("t").tasks[0].peers.len(), 1);
    }

    #[test]
    fn expiry_removes_peers_and_clears_the_source() {
        let t0 = Instant::now();
        let mut s = state();
        announce(&mut s, "a", HostType::Normal, t0);
        announce(&mut s, "b", HostType::Normal, t0);
        register(&mut s, "t", "a", t0);
        register(&mut s, "t", "b", t0);
        announce(&mut s, "b", HostType::Normal, t0 + secs(10));

        assert_eq!(s.sweep(t0 + secs(10)), Swept::default());
        let swept = s.sweep(t0 + TTL + secs(1));
        assert_eq!(swept.hosts, vec!["a".to_string()]);
        assert_eq!(swept.peers, 1);
        assert_eq!(source_of(&s, "t"), "");
        assert_eq!(s.gauges().normal_hosts, 1);
        assert_eq!(s.gauges().peers, 1);
    }

    #[test]
    fn a_seed_that_failed_is_not_elected_again() {
        let t0 = Instant::now();
        let mut s = state();
        announce(&mut s, "seed", HostType::Seed, t0);
        announce(&mut s, "a", HostType::Normal, t0);
        announce(&mut s, "b", HostType::Normal, t0);
        assert_eq!(
            register(&mut s, "t", "a", t0).decision(),
            Decision::TriggerSeed
        );

        // a cannot reach the seed: the source is deposed at once and a,
        // with nobody else to fetch from, goes to the origin itself.
        let r = fail_parent(&mut s, "t", "a", "seed", FailureReason::Connect, t0);
        assert_eq!(r.decision(), Decision::BackToSource);
        assert_eq!(source_of(&s, "t"), "a");

        // a gives up; b must not be sent to the failed seed again.
        s.report_peer_result(
            &ReportPeerResultRequest {
                task_id: "t".into(),
                host_id: "a".into(),
                success: false,
                was_source: true,
                ..Default::default()
            },
            t0,
        )
        .unwrap();
        assert_eq!(
            register(&mut s, "t", "b", t0).decision(),
            Decision::BackToSource
        );
        assert_eq!(elections(&s, "t"), 3);

        // Long after, the seed is trusted again for a fresh task state.
        let later = t0 + crate::tasks::SOURCE_FAILURE_MEMORY + secs(1);
        announce(&mut s, "seed", HostType::Seed, later);
        announce(&mut s, "a", HostType::Normal, later);
        s.leave_task("t", "b", later).unwrap();
        assert_eq!(
            register(&mut s, "t", "a", later).decision(),
            Decision::TriggerSeed
        );
    }

    #[test]
    fn another_seed_is_used_when_one_failed() {
        let t0 = Instant::now();
        let mut s = state();
        announce(&mut s, "seed-1", HostType::Seed, t0);
        announce(&mut s, "seed-2", HostType::Seed, t0);
        announce(&mut s, "a", HostType::Normal, t0);
        announce(&mut s, "b", HostType::Normal, t0);
        let first = parent_ids(&register(&mut s, "t", "a", t0))[0].clone();
        // The child that found the seed unreachable is handed the other one.
        let r = fail_parent(&mut s, "t", "a", &first, FailureReason::Connect, t0);
        assert_eq!(r.decision(), Decision::TriggerSeed);
        let second = parent_ids(&r)[0].clone();
        assert_ne!(second, first);
        s.leave_task("t", "a", t0).unwrap();

        // A later child finds that seed fetching (or done) as the source.
        let r = register(&mut s, "t", "b", t0);
        assert_eq!(r.decision(), Decision::FromPeers);
        assert_eq!(parent_ids(&r), vec![second]);
    }

    /// A scheduler that restarted knows the task but none of its holders
    /// yet (they report at their next heartbeat): a child asking for
    /// parents is sent to a seed, not made a second reader of the origin.
    #[test]
    fn a_child_without_known_holders_is_sent_to_a_seed() {
        let t0 = Instant::now();
        let mut s = state();
        announce(&mut s, "seed", HostType::Seed, t0);
        announce(&mut s, "a", HostType::Normal, t0);
        let r = s.get_parents("t", "a", t0).unwrap();
        assert_eq!(r.decision(), Decision::TriggerSeed);
        assert_eq!(parent_ids(&r), vec!["seed".to_string()]);
        // The seed asking in turn fetches it itself.
        let r = s.get_parents("t", "seed", t0 + secs(1)).unwrap();
        assert_eq!(r.decision(), Decision::BackToSource);
    }

    #[test]
    fn a_slow_source_needs_two_reporters() {
        let t0 = Instant::now();
        let mut s = state();
        for id in ["a", "b", "c"] {
            announce(&mut s, id, HostType::Normal, t0);
            register(&mut s, "t", id, t0);
        }
        assert_eq!(source_of(&s, "t"), "a");

        let b = fail_parent(&mut s, "t", "b", "a", FailureReason::Timeout, t0);
        assert_eq!(
            b.decision(),
            Decision::FromPeers,
            "one report is not enough"
        );
        assert!(b.parents.is_empty(), "a is blocked for b");
        assert_eq!(source_of(&s, "t"), "a");
        // The same reporter again does not count twice.
        fail_parent(&mut s, "t", "b", "a", FailureReason::Timeout, t0);
        assert_eq!(source_of(&s, "t"), "a");

        let c = fail_parent(&mut s, "t", "c", "a", FailureReason::Timeout, t0);
        assert_eq!(c.decision(), Decision::BackToSource);
        assert_eq!(source_of(&s, "t"), "c");
    }

    /// Source a records piece 0 and b copies it; b and c then depose a.
    /// b holds piece 0, so c has a parent and nobody is elected.
    fn swarm_with_a_deposed_source(t0: Instant) -> State {
        let mut s = state();
        for id in ["a", "b", "c"] {
            announce(&mut s, id, HostType::Normal, t0);
            register(&mut s, "t", id, t0);
        }
        assert_eq!(source_of(&s, "t"), "a");
        report_with_digests(&mut s, "t", "a", &[(0, digest('a'))], t0);
        report_with_digests(&mut s, "t", "b", &[(0, digest('a'))], t0);
        fail_parent(&mut s, "t", "b", "a", FailureReason::Timeout, t0);
        fail_parent(&mut s, "t", "c", "a", FailureReason::Timeout, t0);
        assert_ne!(source_of(&s, "t"), "a");
        s
    }

    /// Task t's recorded digests, as member b asks for them.
    fn recorded(s: &State, now: Instant) -> Vec<(u32, String)> {
        s.get_piece_digests(
            &proto::GetPieceDigestsRequest {
                task_id: "t".into(),
                host_id: "b".into(),
                first: 0,
                count: 4,
            },
            now,
        )
        .unwrap()
        .digests
        .into_iter()
        .map(|d| (d.index, d.digest))
        .collect()
    }

    #[test]
    fn a_deposed_source_still_fills_in_what_nobody_recorded() {
        let t0 = Instant::now();
        let mut s = swarm_with_a_deposed_source(t0);
        // Piece 1 is new: recorded. Piece 0 differs: the record stands.
        report_with_digests(&mut s, "t", "a", &[(0, digest('e')), (1, digest('b'))], t0);
        assert_eq!(recorded(&s, t0), vec![(0, digest('a')), (1, digest('b'))]);
        // Any other member's word is still no record.
        report_with_digests(&mut s, "t", "b", &[(2, digest('c'))], t0);
        assert_eq!(recorded(&s, t0).len(), 2);
        // Once the failure is forgotten, neither is the old source's.
        let later = t0 + crate::tasks::SOURCE_FAILURE_MEMORY + secs(1);
        for id in ["a", "b"] {
            announce(&mut s, id, HostType::Normal, later);
        }
        report_with_digests(&mut s, "t", "a", &[(3, digest('d'))], later);
        assert!(!recorded(&s, later).iter().any(|(i, _)| *i == 3));
    }

    #[test]
    fn a_deposed_source_records_nothing_once_the_origin_changed() {
        let t0 = Instant::now();
        let mut s = swarm_with_a_deposed_source(t0);
        // b leaves, so c has no parent left and becomes the source.
        s.leave_task("t", "b", t0).unwrap();
        s.get_parents("t", "c", t0).unwrap();
        assert_eq!(source_of(&s, "t"), "c");
        // The new source reads other bytes: alone, its word does not
        // replace what a recorded (it could be a takeover).
        report_with_digests(&mut s, "t", "c", &[(0, digest('f'))], t0);
        assert_eq!(recorded(&s, t0), vec![(0, digest('a'))]);
        // A second source reading the same: the origin changed. The old
        // source's copy may be of the old content, so it fills in nothing
        // any more.
        announce(&mut s, "d", HostType::Normal, t0);
        s.leave_task("t", "c", t0).unwrap();
        s.get_parents("t", "d", t0).unwrap();
        fail_parent(&mut s, "t", "d", "a", FailureReason::Timeout, t0);
        assert_eq!(source_of(&s, "t"), "d");
        report_with_digests(&mut s, "t", "d", &[(0, digest('f'))], t0);
        report_with_digests(&mut s, "t", "a", &[(1, digest('b'))], t0);
        assert_eq!(recorded(&s, t0), vec![(0, digest('f'))]);
    }

    /// A task complete on node a and the seed (its source, its digests
    /// recorded); b is a member given both as parents.
    fn finished_task_with_a_seed_source(t0: Instant) -> State {
        let mut s = state();
        announce(&mut s, "seed", HostType::Seed, t0);
        for id in ["a", "b", "c", "d"] {
            announce(&mut s, id, HostType::Normal, t0);
        }
        assert_eq!(
            register(&mut s, "t", "a", t0).decision(),
            Decision::TriggerSeed
        );
        seed_register(&mut s, "t", "seed", t0);
        let honest: Vec<(u32, String)> = (0..4).map(|i| (i, digest('a'))).collect();
        report_with_digests(&mut s, "t", "seed", &honest, t0);
        report_with_digests(&mut s, "t", "a", &honest, t0);
        assert_eq!(source_of(&s, "t"), "seed");
        let r = register(&mut s, "t", "b", t0);
        let mut given = parent_ids(&r);
        given.sort();
        assert_eq!(given, vec!["a", "seed"]);
        s
    }

    #[test]
    fn one_member_cannot_take_over_a_finished_task() {
        let t0 = Instant::now();
        let mut s = finished_task_with_a_seed_source(t0);
        // b says it reaches neither holder and asks to fetch itself.
        for parent in ["seed", "a"] {
            fail_parent(&mut s, "t", "b", parent, FailureReason::Connect, t0);
        }
        assert_eq!(
            source_of(&s, "t"),
            "seed",
            "a finished source is not deposed"
        );
        let r = s
            .register_peer(
                &RegisterPeerRequest {
                    task_id: "t".into(),
                    host_id: "b".into(),
                    no_seed: true,
                    ..Default::default()
                },
                t0,
            )
            .unwrap();
        assert_ne!(r.decision(), Decision::BackToSource);
        // Its own digests replace nothing, source or not.
        let forged: Vec<(u32, String)> = (0..4).map(|i| (i, digest('e'))).collect();
        report_with_digests(&mut s, "t", "b", &forged, t0);
        assert_eq!(
            recorded(&s, t0),
            (0..4).map(|i| (i, digest('a'))).collect::<Vec<_>>()
        );
        assert_eq!(elections(&s, "t"), 1);
        // Once the seed goes, b fetches for itself at most, unelected while
        // a complete holder is left: still nothing it reads is the record.
        s.leave_host("seed", t0).unwrap();
        let r = s.get_parents("t", "b", t0).unwrap();
        assert_eq!(r.decision(), Decision::BackToSource);
        assert_eq!(source_of(&s, "t"), "");
        report_with_digests(&mut s, "t", "b", &forged, t0);
        assert_eq!(recorded(&s, t0)[0], (0, digest('a')));
        // An honest child checks against the seed's record.
        let c = register(&mut s, "t", "c", t0);
        assert!(parent_ids(&c).contains(&"a".to_string()));
    }

    #[test]
    fn one_member_cannot_get_an_honest_member_quarantined() {
        let t0 = Instant::now();
        let mut s = finished_task_with_a_seed_source(t0);
        // b accuses a host it was never handed, and the honest holders
        // claiming their (recorded) digests: nothing counts.
        forged(&mut s, "t", "b", "d", &digest('e'), t0);
        forged(&mut s, "t", "b", "a", &digest('a'), t0);
        forged(&mut s, "t", "b", "seed", &digest('a'), t0);
        // Even with a claim that differs, one member plus a member never
        // sent to a do not make two reporters.
        forged(&mut s, "t", "b", "a", &digest('f'), t0);
        forged(&mut s, "t", "d", "a", &digest('f'), t0);
        assert!(
            s.stat("").quarantined.is_empty(),
            "{:?}",
            s.stat("").quarantined
        );

        // Where b's own reading is the record (b was the task's first
        // source), b and an honest node it fooled are one liar: a is not
        // quarantined on their word.
        let mut s = state();
        for id in ["b", "a", "c"] {
            announce(&mut s, id, HostType::Normal, t0);
        }
        register(&mut s, "u", "b", t0);
        report_with_digests(&mut s, "u", "b", &[(1, digest('e'))], t0);
        register(&mut s, "u", "a", t0);
        pieces(&mut s, "u", "a", &[0, 1, 2, 3], t0);
        for child in ["c", "b"] {
            register(&mut s, "u", child, t0);
            forged(&mut s, "u", child, "a", &digest('a'), t0);
        }
        assert!(!s.is_quarantined("a", t0));
    }

    #[test]
    fn one_member_cannot_hold_more_than_its_share() {
        let t0 = Instant::now();
        let mut s = state();
        announce(&mut s, "m", HostType::Normal, t0);
        announce(&mut s, "honest", HostType::Normal, t0);
        let big = |task: String, host: &str| ReportPiecesRequest {
            task_id: task,
            host_id: host.into(),
            replace: true,
            bitmap: vec![0xff; 32 * 1024],
            url: format!("http://o/{}?{}", "x".repeat(7000), "q".repeat(900)),
            ..Default::default()
        };
        let mut accepted = 0u64;
        let refused = loop {
            match s.report_pieces(&big(format!("t{accepted}"), "m"), t0) {
                Ok(()) => accepted += 1,
                Err(e) => break e,
            }
        };
        assert!(matches!(refused, ScheduleError::Exhausted(_)), "{refused}");
        let per_call = 32 * 1024 + 1024 + TASK_CHARGE + PEER_CHARGE;
        assert!(accepted * per_call <= budget::MEMBER_CHARGE_BYTES);
        assert!((accepted + 2) * per_call > budget::MEMBER_CHARGE_BYTES);
        // No query is kept, and URLs are cut.
        assert!(s
            .stat("")
            .tasks
            .iter()
            .all(|t| !t.url.contains('?') && t.url.len() <= 1024));
        // Others are not affected; the sweep recounts from what is held.
        s.report_pieces(&big("h".into(), "honest"), t0).unwrap();
        s.sweep(t0);
        assert!(s.report_pieces(&big("one-more".into(), "m"), t0).is_err());
        s.leave_task("t0", "m", t0).unwrap();
        s.leave_task("t1", "m", t0).unwrap();
        s.sweep(t0 + Duration::from_secs(601));
        announce(&mut s, "m", HostType::Normal, t0 + Duration::from_secs(601));
        s.report_pieces(&big("one-more".into(), "m"), t0 + Duration::from_secs(601))
            .unwrap();
    }

    #[test]
    fn a_member_sees_its_own_tasks_and_parents_only() {
        let t0 = Instant::now();
        let mut s = finished_task_with_a_seed_source(t0);
        register(&mut s, "other", "d", t0);
        let b = s.stat_for("", Some("b"), t0);
        assert_eq!(b.tasks.len(), 1);
        let mut peers: Vec<&str> = b.tasks[0]
            .peers
            .iter()
            .map(|p| p.host_id.as_str())
            .collect();
        peers.sort();
        assert_eq!(peers, vec!["a", "b", "seed"]);
        let hosts: Vec<&str> = b.hosts.iter().map(|h| h.id.as_str()).collect();
        assert_eq!(hosts, vec!["a", "b", "seed"]);
        // c was never given anything in t and takes part in nothing.
        let c = s.stat_for("", Some("c"), t0);
        assert!(c.tasks.is_empty());
        assert_eq!(c.hosts.len(), 1);
        assert!(s.stat_for("other", Some("c"), t0).tasks.is_empty());
        // The operator sees everything.
        assert_eq!(s.stat_for("", None, t0).tasks.len(), 2);
    }

    #[test]
    fn an_address_names_one_live_host() {
        let t0 = Instant::now();
        let mut s = state();
        let at = |id: &str, ip: &str| Host {
            ip: ip.into(),
            peer_port: 65002,
            ..host(id, HostType::Normal)
        };
        s.announce_host(Some(at("a", "10.0.0.1")), t0).unwrap();
        let taken = s.announce_host(Some(at("b", "10.0.0.1")), t0);
        assert!(matches!(taken, Err(ScheduleError::Refused(_))), "{taken:?}");
        s.announce_host(Some(at("b", "10.0.0.2")), t0).unwrap();
        let moved = s.announce_host(Some(at("b", "10.0.0.1")), t0);
        assert!(moved.is_err());
        // Once a is gone, its address is free.
        let later = t0 + TTL + secs(1);
        s.sweep(later);
        s.announce_host(Some(at("b", "10.0.0.1")), later).unwrap();
    }

    #[test]
    fn a_lone_child_can_depose_a_failing_source() {
        let t0 = Instant::now();
        let mut s = state();
        announce(&mut s, "a", HostType::Normal, t0);
        announce(&mut s, "b", HostType::Normal, t0);
        register(&mut s, "t", "a", t0);
        register(&mut s, "t", "b", t0);
        let r = fail_parent(&mut s, "t", "b", "a", FailureReason::Timeout, t0);
        assert_eq!(r.decision(), Decision::BackToSource);
        assert_eq!(source_of(&s, "t"), "b");
    }

    #[test]
    fn a_parent_lacking_one_piece_stays_a_parent_and_the_source() {
        let t0 = Instant::now();
        let mut s = state();
        announce(&mut s, "a", HostType::Normal, t0);
        announce(&mut s, "b", HostType::Normal, t0);
        register(&mut s, "t", "a", t0);
        pieces(&mut s, "t", "a", &[0, 1, 2, 3], t0);
        register(&mut s, "t", "b", t0);
        let r = fail_parent(&mut s, "t", "b", "a", FailureReason::NotFound, t0);
        assert_eq!(r.decision(), Decision::FromPeers);
        assert_eq!(
            parent_ids(&r),
            vec!["a"],
            "a still serves b its other pieces"
        );
        assert_eq!(source_of(&s, "t"), "a");
    }

    #[test]
    fn a_blocked_parent_returns_after_the_block_expires() {
        let t0 = Instant::now();
        let mut s = state();
        for id in ["a", "b", "c"] {
            announce(&mut s, id, HostType::Normal, t0);
        }
        register(&mut s, "t", "a", t0);
        pieces(&mut s, "t", "b", &[0, 1], t0);
        register(&mut s, "t", "c", t0);

        let r = fail_parent(&mut s, "t", "c", "b", FailureReason::DigestMismatch, t0);
        assert_eq!(parent_ids(&r), vec!["a"]);

        let later = t0 + crate::tasks::BLOCK_TTL + secs(1);
        for id in ["a", "b", "c"] {
            announce(&mut s, id, HostType::Normal, later);
        }
        let r = s.get_parents("t", "c", later).unwrap();
        let mut ids = parent_ids(&r);
        ids.sort();
        assert_eq!(ids, vec!["a", "b"]);
    }

    #[test]
    fn unknown_hosts_must_announce_first() {
        let t0 = Instant::now();
        let mut s = state();
        let err = s
            .register_peer(
                &RegisterPeerRequest {
                    task_id: "t".into(),
                    host_id: "nobody".into(),
                    ..Default::default()
                },
                t0,
            )
            .unwrap_err();
        assert_eq!(err, ScheduleError::HostNotAnnounced);
        assert_eq!(
            tonic::Status::from(err).code(),
            tonic::Code::FailedPrecondition
        );
        assert_eq!(
            s.get_parents("t", "nobody", t0).unwrap_err(),
            ScheduleError::HostNotAnnounced
        );
        assert!(matches!(
            s.get_parents("", "x", t0),
            Err(ScheduleError::InvalidArgument(_))
        ));
        assert!(matches!(
            s.announce_host(None, t0),
            Err(ScheduleError::InvalidArgument(_))
        ));
    }

    #[test]
    fn re_reported_pieces_serve_once_the_host_announces() {
        let t0 = Instant::now();
        let mut s = state();
        // After a scheduler restart, "old" re-reports a complete task
        // before its announce lands.
        s.report_pieces(
            &ReportPiecesRequest {
                task_id: "t".into(),
                host_id: "old".into(),
                replace: true,
                bitmap: vec![0b1111],
                complete: true,
                url: "http://origin/blob".into(),
                ..Default::default()
            },
            t0,
        )
        .unwrap();
        announce(&mut s, "new", HostType::Normal, t0);
        announce(&mut s, "old", HostType::Normal, t0);
        let r = register(&mut s, "t", "new", t0);
        assert_eq!(r.decision(), Decision::FromPeers);
        assert_eq!(parent_ids(&r), vec!["old"]);
        assert!(r.parents[0].complete);
        assert_eq!(source_of(&s, "t"), "", "no election needed");
    }

    #[test]
    fn peers_of_hosts_that_never_announce_are_dropped() {
        let t0 = Instant::now();
        let mut s = state();
        pieces(&mut s, "t", "ghost", &[0], t0);
        assert_eq!(s.sweep(t0 + secs(1)).peers, 0);
        assert_eq!(s.sweep(t0 + TTL + secs(1)).peers, 1);
        assert_eq!(s.gauges().peers, 0);
    }

    #[test]
    fn idle_tasks_are_forgotten() {
        let t0 = Instant::now();
        let mut s = state();
        announce(&mut s, "a", HostType::Normal, t0);
        register(&mut s, "t", "a", t0);
        s.leave_task("t", "a", t0).unwrap();
        assert_eq!(s.sweep(t0 + secs(1)).tasks, 0);
        announce(&mut s, "a", HostType::Normal, t0 + secs(601));
        assert_eq!(s.sweep(t0 + secs(601)).tasks, 1);
        assert!(s.stat("").tasks.is_empty());
    }

    #[test]
    fn a_triggered_seed_that_never_registers_is_replaced() {
        let t0 = Instant::now();
        let mut s = state();
        announce(&mut s, "seed", HostType::Seed, t0);
        announce(&mut s, "a", HostType::Normal, t0);
        assert_eq!(
            register(&mut s, "t", "a", t0).decision(),
            Decision::TriggerSeed
        );

        let later = t0 + SOURCE_REGISTER_TIMEOUT + secs(1);
        announce(&mut s, "seed", HostType::Seed, later);
        announce(&mut s, "a", HostType::Normal, later);
        assert_eq!(
            s.get_parents("t", "a", later).unwrap().decision(),
            Decision::BackToSource
        );
        assert_eq!(source_of(&s, "t"), "a");
    }

    #[test]
    fn the_source_registering_again_stays_source() {
        let t0 = Instant::now();
        let mut s = state();
        announce(&mut s, "a", HostType::Normal, t0);
        register(&mut s, "t", "a", t0);
        assert_eq!(
            register(&mut s, "t", "a", t0).decision(),
            Decision::BackToSource
        );
        assert_eq!(
            s.get_parents("t", "a", t0).unwrap().decision(),
            Decision::BackToSource
        );
        assert_eq!(elections(&s, "t"), 1);
    }

    #[test]
    fn leaving_host_clears_its_source_role() {
        let t0 = Instant::now();
        let mut s = state();
        announce(&mut s, "a", HostType::Normal, t0);
        announce(&mut s, "b", HostType::Normal, t0);
        register(&mut s, "t", "a", t0);
        register(&mut s, "t", "b", t0);
        s.leave_host("a", t0).unwrap();
        assert_eq!(source_of(&s, "t"), "");
        assert_eq!(
            s.get_parents("t", "b", t0).unwrap().decision(),
            Decision::BackToSource
        );
    }

    #[test]
    fn success_marks_complete_and_learns_the_length() {
        let t0 = Instant::now();
        let mut s = state();
        announce(&mut s, "a", HostType::Normal, t0);
        announce(&mut s, "b", HostType::Normal, t0);
        register(&mut s, "t", "a", t0);
        s.report_peer_result(
            &ReportPeerResultRequest {
                task_id: "t".into(),
                host_id: "a".into(),
                success: true,
                was_source: true,
                content_length: 1234,
                ..Default::default()
            },
            t0,
        )
        .unwrap();
        let stat = &s.stat("t").tasks[0];
        assert!(stat.peers[0].complete);
        assert_eq!(stat.shape.unwrap().content_length, 1234);
        let r = register(&mut s, "t", "b", t0);
        assert!(r.parents[0].complete);
    }

    #[test]
    fn piece_reports_update_the_bitmap() {
        let t0 = Instant::now();
        let mut s = state();
        pieces(&mut s, "t", "a", &[0, 2], t0);
        pieces(&mut s, "t", "a", &[2, 3], t0);
        let peer = &s.stat("t").tasks[0].peers[0];
        assert_eq!(peer.finished_pieces, 3);
        assert!(!peer.complete);

        pieces(&mut s, "t", "a", &[1], t0);
        let peer = &s.stat("t").tasks[0].peers[0];
        assert!(peer.complete, "every piece of the known shape");

        // Out-of-range pieces are refused without touching the state.
        let err = s.report_pieces(
            &ReportPiecesRequest {
                task_id: "t".into(),
                host_id: "a".into(),
                pieces: vec![5, MAX_PIECES],
                ..Default::default()
            },
            t0,
        );
        assert!(matches!(err, Err(ScheduleError::InvalidArgument(_))));

        // A replacing report wins over everything before.
        s.report_pieces(
            &ReportPiecesRequest {
                task_id: "t".into(),
                host_id: "a".into(),
                replace: true,
                bitmap: vec![0b0001],
                pieces: vec![3],
                ..Default::default()
            },
            t0,
        )
        .unwrap();
        assert_eq!(s.stat("t").tasks[0].peers[0].finished_pieces, 1);
    }
}
