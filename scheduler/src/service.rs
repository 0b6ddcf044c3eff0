//! The gRPC service: unwraps requests, runs one state method under the lock
//! inside a span carrying the task and host, counts the outcome.

use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::scheduler_server::Scheduler;
use proto::{
    AnnounceHostRequest, AnnounceHostResponse, Empty, GetParentsRequest, LeaveHostRequest,
    LeaveTaskRequest, RegisterPeerRequest, ReportParentFailureRequest, ReportPeerResultRequest,
    ReportPiecesRequest, ReportTagRequest, ResolveTagRequest, ResolveTagResponse, ScheduleResponse,
    StatRequest, StatResponse,
};
use tonic::{Request, Response, Status};
use tracing::debug;

use crate::metrics::Metrics;
use crate::state::{ScheduleError, SharedState, State};

#[derive(Debug, Clone)]
pub struct SchedulerService {
    state: Arc<SharedState>,
    metrics: Arc<Metrics>,
    heartbeat_interval_ms: u32,
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
        }
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
        let client = request.remote_addr().map(|a| a.ip());
        let host = request.into_inner().host;
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
        let req = request.into_inner();
        self.call("leave_host", "", &req.host_id, |s, now| {
            s.leave_host(&req.host_id, now).map(|()| Empty {})
        })
    }

    async fn register_peer(
        &self,
        request: Request<RegisterPeerRequest>,
    ) -> Result<Response<ScheduleResponse>, Status> {
        let req = request.into_inner();
        self.call("register_peer", &req.task_id, &req.host_id, |s, now| {
            s.register_peer(&req, now)
        })
    }

    async fn get_parents(
        &self,
        request: Request<GetParentsRequest>,
    ) -> Result<Response<ScheduleResponse>, Status> {
        let req = request.into_inner();
        self.call("get_parents", &req.task_id, &req.host_id, |s, now| {
            s.get_parents(&req.task_id, &req.host_id, now)
        })
    }

    async fn report_pieces(
        &self,
        request: Request<ReportPiecesRequest>,
    ) -> Result<Response<Empty>, Status> {
        let req = request.into_inner();
        self.call("report_pieces", &req.task_id, &req.host_id, |s, now| {
            s.report_pieces(&req, now).map(|()| Empty {})
        })
    }

    async fn report_parent_failure(
        &self,
        request: Request<ReportParentFailureRequest>,
    ) -> Result<Response<ScheduleResponse>, Status> {
        let req = request.into_inner();
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
        let req = request.into_inner();
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
        let req = request.into_inner();
        self.call("leave_task", &req.task_id, &req.host_id, |s, now| {
            s.leave_task(&req.task_id, &req.host_id, now)
                .map(|()| Empty {})
        })
    }

    async fn report_tag(
        &self,
        request: Request<ReportTagRequest>,
    ) -> Result<Response<Empty>, Status> {
        let req = request.into_inner();
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
        let req = request.into_inner();
        let tag = req
            .tag
            .as_ref()
            .map(proto::ImageTag::name)
            .unwrap_or_default();
        self.call("resolve_tag", &tag, "", |s, now| s.resolve_tag(&req, now))
    }

    async fn stat(&self, request: Request<StatRequest>) -> Result<Response<StatResponse>, Status> {
        let req = request.into_inner();
        self.call("stat", &req.task_id, "", |s, _| Ok(s.stat(&req.task_id)))
    }
}
