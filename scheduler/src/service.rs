//! The gRPC service: unwraps requests, runs one state method under the lock
//! inside a span carrying the task and host, counts the outcome.

use std::sync::Arc;
use std::time::{Duration, Instant};

use identity::Role;
use proto::scheduler_server::Scheduler;
use proto::{
    AnnounceHostRequest, AnnounceHostResponse, Empty, GetParentsRequest, LeaveHostRequest,
    LeaveTaskRequest, RegisterPeerRequest, ReportParentFailureRequest, ReportPeerResultRequest,
    ReportPiecesRequest, ReportTagRequest, ResolveTagRequest, ResolveTagResponse, ScheduleResponse,
    StatRequest, StatResponse,
};
use tonic::{Request, Response, Status};
use tracing::debug;

use crate::members::Caller;
use crate::metrics::Metrics;
use crate::rate::RateLimiter;
use crate::state::{ScheduleError, SharedState, State};

#[derive(Debug, Clone)]
pub struct SchedulerService {
    state: Arc<SharedState>,
    metrics: Arc<Metrics>,
    heartbeat_interval_ms: u32,
    /// Whether callers are cluster members with an identity: then each one
    /// speaks only for the host its certificate names.
    members_only: bool,
    /// Calls per member identity.
    rate: Arc<RateLimiter>,
}

/// Who called, whichever kind of listener took the connection.
fn caller_of<T>(request: &Request<T>) -> Caller {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or_else(|| Caller {
            remote: request.remote_addr(),
            identity: None,
        })
}

impl SchedulerService {
    pub fn new(
        state: Arc<SharedState>,
        metrics: Arc<Metrics>,
        heartbeat_interval: Duration,
    ) -> Self {
        SchedulerService {
            state,
            metrics,
            heartbeat_interval_ms: u32::try_from(heartbeat_interval.as_millis())
                .unwrap_or(u32::MAX),
            members_only: false,
            rate: Arc::default(),
        }
    }

    /// Callers must be cluster members, each speaking for itself only.
    pub fn members_only(mut self) -> Self {
        self.members_only = true;
        self
    }

    /// The caller may act as `host_id`: its certificate names that host
    /// (a node or a seed). Refusals are counted like any other answer.
    fn speaks_for(
        &self,
        method: &'static str,
        caller: &Caller,
        host_id: &str,
    ) -> Result<(), Status> {
        if !self.members_only {
            return Ok(());
        }
        let refused = match &caller.identity {
            None => Status::unauthenticated("no cluster identity on this connection"),
            Some(id) if matches!(id.role, Role::Node | Role::Seed) && id.name == host_id => {
                return self.within_rate(method, caller);
            }
            Some(id) => {
                Status::permission_denied(format!("{id} may not speak for host {host_id:?}"))
            }
        };
        debug!(method, caller = ?caller.identity, host_id, error = %refused.message(), "request refused");
        self.metrics.request(method, refused.code());
        Err(refused)
    }

    /// One call of the caller's identity against its rate (members only).
    fn within_rate(&self, method: &'static str, caller: &Caller) -> Result<(), Status> {
        let Some(id) = caller.identity.as_ref().filter(|_| self.members_only) else {
            return Ok(());
        };
        if self.rate.allow(&id.name, Instant::now()) {
            return Ok(());
        }
        let refused = Status::resource_exhausted(format!("{id} calls faster than its share"));
        debug!(method, caller = %id, "request refused: over its rate");
        self.metrics.request(method, refused.code());
        Err(refused)
    }

    /// Who may see what in `Stat`: the operator (or anyone, without a
    /// cluster identity) everything (`None`); a node or seed its own part.
    fn viewer(&self, caller: &Caller) -> Result<Option<String>, Status> {
        if !self.members_only {
            return Ok(None);
        }
        match &caller.identity {
            None => Err(Status::unauthenticated(
                "no cluster identity on this connection",
            )),
            Some(id) if id.role == Role::Operator => Ok(None),
            Some(id) => Ok(Some(id.name.clone())),
        }
    }

    /// A host announces itself: its own id, and the seed type only with a
    /// seed certificate (seeds are trusted to fetch for everyone), at an
    /// address it may announce (`address`).
    fn may_announce(&self, caller: &Caller, host: Option<&proto::Host>) -> Result<(), Status> {
        let Some(host) = host else { return Ok(()) };
        self.speaks_for("announce_host", caller, &host.id)?;
        if self.members_only {
            let role = caller.identity.as_ref().map(|id| id.role);
            if let Err(e) = crate::address::check(&host.ip, role, caller.remote.map(|a| a.ip())) {
                let refused = Status::permission_denied(e.to_string());
                debug!(caller = ?caller.identity, error = %e, "announce refused");
                self.metrics.request("announce_host", refused.code());
                return Err(refused);
            }
        }
        let claims_seed = host.r#type == proto::HostType::Seed as i32;
        let is_seed = caller.identity.as_ref().map(|id| id.role) == Some(Role::Seed);
        if self.members_only && claims_seed != is_seed {
            let refused = Status::permission_denied(if claims_seed {
                "only a seed certificate may announce a seed"
            } else {
                "a seed certificate announces a seed"
            });
            self.metrics.request("announce_host", refused.code());
            return Err(refused);
        }
        Ok(())
    }

    /// Runs one RPC against the state.
    fn call<T>(
        &self,
        method: &'static str,
        task_id: &str,
        host_id: &str,
        f: impl FnOnce(&mut State, Instant) -> Result<T, ScheduleError>,
    ) -> Result<Response<T>, Status> {
        let span = tracing::info_span!("rpc", method, task_id, host_id);
        span.in_scope(|| {
            let result = self
                .state
                .with(|state| f(state, Instant::now()))
                .map(Response::new)
                .map_err(Status::from);
            let code = match &result {
                Ok(_) => tonic::Code::Ok,
                Err(status) => {
                    debug!(error = %status.message(), "request refused");
                    status.code()
                }
            };
            self.metrics.request(method, code);
            result
        })
    }
}

#[tonic::async_trait]
impl Scheduler for SchedulerService {
    async fn announce_host(
        &self,
        request: Request<AnnounceHostRequest>,
    ) -> Result<Response<AnnounceHostResponse>, Status> {
        let caller = caller_of(&request);
        let client = caller.remote.map(|a| a.ip());
        let host = request.into_inner().host;
        self.may_announce(&caller, host.as_ref())?;
        let host_id = host.as_ref().map(|h| h.id.clone()).unwrap_or_default();
        let heartbeat_interval_ms = self.heartbeat_interval_ms;
        self.call("announce_host", "", &host_id, |s, now| {
            let known = s.announce_host_from(host, client, now)?;
            if !known {
                debug!("new host");
            }
            Ok(AnnounceHostResponse {
                known,
                heartbeat_interval_ms,
            })
        })
    }

    async fn leave_host(
        &self,
        request: Request<LeaveHostRequest>,
    ) -> Result<Response<Empty>, Status> {
        let caller = caller_of(&request);
        let req = request.into_inner();
        self.speaks_for("leave_host", &caller, &req.host_id)?;
        self.call("leave_host", "", &req.host_id, |s, now| {
            s.leave_host(&req.host_id, now).map(|()| Empty {})
        })
    }

    async fn register_peer(
        &self,
        request: Request<RegisterPeerRequest>,
    ) -> Result<Response<ScheduleResponse>, Status> {
        let caller = caller_of(&request);
        let req = request.into_inner();
        self.speaks_for("register_peer", &caller, &req.host_id)?;
        self.call("register_peer", &req.task_id, &req.host_id, |s, now| {
            s.register_peer(&req, now)
        })
    }

    async fn get_parents(
        &self,
        request: Request<GetParentsRequest>,
    ) -> Result<Response<ScheduleResponse>, Status> {
        let caller = caller_of(&request);
        let req = request.into_inner();
        self.speaks_for("get_parents", &caller, &req.host_id)?;
        self.call("get_parents", &req.task_id, &req.host_id, |s, now| {
            s.get_parents(&req.task_id, &req.host_id, now)
        })
    }

    async fn report_pieces(
        &self,
        request: Request<ReportPiecesRequest>,
    ) -> Result<Response<Empty>, Status> {
        let caller = caller_of(&request);
        let req = request.into_inner();
        self.speaks_for("report_pieces", &caller, &req.host_id)?;
        self.call("report_pieces", &req.task_id, &req.host_id, |s, now| {
            s.report_pieces(&req, now).map(|()| Empty {})
        })
    }

    async fn get_piece_digests(
        &self,
        request: Request<proto::GetPieceDigestsRequest>,
    ) -> Result<Response<proto::GetPieceDigestsResponse>, Status> {
        let caller = caller_of(&request);
        let req = request.into_inner();
        self.speaks_for("get_piece_digests", &caller, &req.host_id)?;
        self.call("get_piece_digests", &req.task_id, &req.host_id, |s, now| {
            s.get_piece_digests(&req, now)
        })
    }

    async fn report_parent_failure(
        &self,
        request: Request<ReportParentFailureRequest>,
    ) -> Result<Response<ScheduleResponse>, Status> {
        let caller = caller_of(&request);
        let req = request.into_inner();
        self.speaks_for("report_parent_failure", &caller, &req.host_id)?;
        self.call(
            "report_parent_failure",
            &req.task_id,
            &req.host_id,
            |s, now| s.report_parent_failure(&req, now),
        )
    }

    async fn report_peer_result(
        &self,
        request: Request<ReportPeerResultRequest>,
    ) -> Result<Response<Empty>, Status> {
        let caller = caller_of(&request);
        let req = request.into_inner();
        self.speaks_for("report_peer_result", &caller, &req.host_id)?;
        self.call(
            "report_peer_result",
            &req.task_id,
            &req.host_id,
            |s, now| s.report_peer_result(&req, now).map(|()| Empty {}),
        )
    }

    async fn leave_task(
        &self,
        request: Request<LeaveTaskRequest>,
    ) -> Result<Response<Empty>, Status> {
        let caller = caller_of(&request);
        let req = request.into_inner();
        self.speaks_for("leave_task", &caller, &req.host_id)?;
        self.call("leave_task", &req.task_id, &req.host_id, |s, now| {
            s.leave_task(&req.task_id, &req.host_id, now)
                .map(|()| Empty {})
        })
    }

    async fn report_tag(
        &self,
        request: Request<ReportTagRequest>,
    ) -> Result<Response<Empty>, Status> {
        let caller = caller_of(&request);
        let req = request.into_inner();
        self.speaks_for("report_tag", &caller, &req.host_id)?;
        let tag = req
            .tag
            .as_ref()
            .map(proto::ImageTag::name)
            .unwrap_or_default();
        self.call("report_tag", &tag, &req.host_id, |s, now| {
            s.report_tag(&req, now).map(|()| Empty {})
        })
    }

    async fn resolve_tag(
        &self,
        request: Request<ResolveTagRequest>,
    ) -> Result<Response<ResolveTagResponse>, Status> {
        self.within_rate("resolve_tag", &caller_of(&request))?;
        let req = request.into_inner();
        let tag = req
            .tag
            .as_ref()
            .map(proto::ImageTag::name)
            .unwrap_or_default();
        self.call("resolve_tag", &tag, "", |s, now| s.resolve_tag(&req, now))
    }

    async fn report_anonymous_read(
        &self,
        request: Request<proto::ReportAnonymousReadRequest>,
    ) -> Result<Response<Empty>, Status> {
        let caller = caller_of(&request);
        let req = request.into_inner();
        self.speaks_for("report_anonymous_read", &caller, &req.host_id)?;
        let digest = req
            .object
            .as_ref()
            .map(|o| o.digest.clone())
            .unwrap_or_default();
        self.call("report_anonymous_read", &digest, &req.host_id, |s, now| {
            s.report_anonymous_read(&req, now).map(|()| Empty {})
        })
    }

    async fn check_anonymous_read(
        &self,
        request: Request<proto::CheckAnonymousReadRequest>,
    ) -> Result<Response<proto::CheckAnonymousReadResponse>, Status> {
        self.within_rate("check_anonymous_read", &caller_of(&request))?;
        let req = request.into_inner();
        let digest = req
            .object
            .as_ref()
            .map(|o| o.digest.clone())
            .unwrap_or_default();
        self.call("check_anonymous_read", &digest, "", |s, now| {
            s.check_anonymous_read(&req, now)
        })
    }

    async fn stat(&self, request: Request<StatRequest>) -> Result<Response<StatResponse>, Status> {
        let caller = caller_of(&request);
        self.within_rate("stat", &caller)?;
        let viewer = self.viewer(&caller)?;
        let req = request.into_inner();
        self.call("stat", &req.task_id, "", |s, now| {
            Ok(s.stat_for(&req.task_id, viewer.as_deref(), now))
        })
    }
}
