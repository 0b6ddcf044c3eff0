//! Talking to the schedulers: resolve the configured list (addresses, or a
//! DNS name that resolves to every replica), route each task to its owner by
//! rendezvous hashing, fall back along the ranking when the owner is down,
//! and keep this host announced with a heartbeat.

use proto::scheduler_client::SchedulerClient;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::hashring;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RPC_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("no scheduler configured")]
    NoneConfigured,
    #[error("no scheduler reachable (last error: {0})")]
    Unreachable(String),
    #[error("scheduler refused: {0}")]
    Refused(Status),
}

/// Sends a task-scoped request to the scheduler owning its task.
macro_rules! task_rpc {
    ($pool:expr, $req:expr, $method:ident) => {{
        let task_id = $req.task_id.clone();
        let req = $req;
        $pool
            .call(&task_id, |mut c| {
                let req = req.clone();
                async move { c.$method(req).await }
            })
            .await
    }};
}

pub struct SchedulerPool {
    targets: Vec<String>,
    resolved: RwLock<Vec<String>>,
    clients: Mutex<HashMap<String, SchedulerClient<Channel>>>,
    host: RwLock<Option<proto::Host>>,
    /// Whether the last call found every scheduler unreachable.
    lost: AtomicBool,
    /// Mutual TLS to schedulers (which must show a scheduler certificate).
    tls: Option<identity::MemberTls>,
    /// When a failed call last re-resolved the names.
    failure_refresh: Mutex<Option<std::time::Instant>>,
    /// When the resolved set last changed (or the pool was made).
    last_change: Mutex<std::time::Instant>,
}

/// Least time between two re-resolutions caused by unreachable schedulers.
const FAILURE_REFRESH_EVERY: Duration = Duration::from_secs(2);

impl SchedulerPool {
    /// `targets` are `host:port` entries; names are resolved to every address.
    pub fn new(targets: Vec<String>, tls: Option<identity::MemberTls>) -> Arc<Self> {
        Arc::new(SchedulerPool {
            targets,
            resolved: RwLock::new(Vec::new()),
            clients: Mutex::new(HashMap::new()),
            host: RwLock::new(None),
            lost: AtomicBool::new(false),
            tls,
            failure_refresh: Mutex::new(None),
            last_change: Mutex::new(std::time::Instant::now()),
        })
    }

    pub fn is_configured(&self) -> bool {
        !self.targets.is_empty()
    }

    pub fn set_host(&self, host: proto::Host) {
        *self.host.write().unwrap_or_else(|e| e.into_inner()) = Some(host);
    }

    pub fn host(&self) -> Option<proto::Host> {
        self.host.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Re-resolves every target. Keeps the previous list if resolution fails
    /// entirely (a DNS hiccup must not forget every scheduler). Returns
    /// whether the list changed.
    pub async fn refresh(&self) -> bool {
        let mut addrs = Vec::new();
        for target in &self.targets {
            match tokio::net::lookup_host(target.as_str()).await {
                Ok(found) => addrs.extend(found.map(|a| a.to_string())),
                Err(e) => tracing::warn!(target = %target, error = %e, "cannot resolve scheduler"),
            }
        }
        addrs.sort();
        addrs.dedup();
        if addrs.is_empty() {
            return false;
        }
        let mut resolved = self.resolved.write().unwrap_or_else(|e| e.into_inner());
        if *resolved == addrs {
            return false;
        }
        tracing::info!(schedulers = ?addrs, "scheduler set changed");
        *resolved = addrs;
        *self.last_change.lock().unwrap_or_else(|e| e.into_inner()) = std::time::Instant::now();
        true
    }

    /// Whether the resolved set changed (or the pool was made) within `window`.
    pub fn changed_within(&self, window: Duration) -> bool {
        self.last_change
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
            < window
    }

    /// Re-resolves after a scheduler was unreachable, at most every
    /// `FAILURE_REFRESH_EVERY`; returns whether the set changed.
    async fn refresh_after_failure(&self) -> bool {
        {
            let mut last = self
                .failure_refresh
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < FAILURE_REFRESH_EVERY) {
                return false;
            }
            *last = Some(std::time::Instant::now());
        }
        self.refresh().await
    }

    /// True while no scheduler answers (as of the last call): the swarm's
    /// view of who holds what is then no longer relayed.
    pub fn is_lost(&self) -> bool {
        self.is_configured() && self.lost.load(Ordering::Relaxed)
    }

    pub fn addresses(&self) -> Vec<String> {
        self.resolved
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn client(&self, addr: &str) -> Result<SchedulerClient<Channel>, SchedulerError> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = clients.get(addr) {
            return Ok(client.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| SchedulerError::Unreachable(e.to_string()))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(RPC_TIMEOUT)
            .tcp_nodelay(true);
        let channel = match &self.tls {
            None => endpoint.connect_lazy(),
            Some(tls) => endpoint.connect_with_connector_lazy(tls_connector(tls, addr)),
        };
        let client = SchedulerClient::new(channel);
        clients.insert(addr.to_string(), client.clone());
        Ok(client)
    }

    /// Runs `rpc` against the scheduler that owns `task_id`, trying the next
    /// ones in ranking order when it is unreachable. An unknown-host answer
    /// (scheduler restarted) triggers an announce and one retry. When a
    /// scheduler is unreachable the names are re-resolved at once (at most
    /// every few seconds): a replaced replica has a new address, and hosts
    /// that still rank the old set would route its tasks to another owner.
    pub async fn call<T, F, Fut>(&self, task_id: &str, rpc: F) -> Result<T, SchedulerError>
    where
        F: Fn(SchedulerClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        if !self.is_configured() {
            return Err(SchedulerError::NoneConfigured);
        }
        if self.addresses().is_empty() {
            self.refresh().await;
        }
        let mut last_error = String::from("no address resolved");
        for _pass in 0..2 {
            let addrs = self.addresses();
            let mut saw_failure = false;
            for addr in hashring::rank(task_id, &addrs) {
                let client = self.client(addr)?;
                let answer = rpc(client.clone()).await;
                if !matches!(&answer, Err(status) if is_transport_failure(status)) {
                    self.lost.store(false, Ordering::Relaxed);
                }
                match answer {
                    Ok(resp) => {
                        if saw_failure {
                            self.refresh_after_failure().await;
                        }
                        return Ok(resp.into_inner());
                    }
                    Err(status) if status.code() == Code::FailedPrecondition => {
                        self.announce_to(addr).await.ok();
                        return rpc(client)
                            .await
                            .map(|r| r.into_inner())
                            .map_err(SchedulerError::Refused);
                    }
                    Err(status) if is_transport_failure(&status) => {
                        tracing::debug!(scheduler = %addr, error = %status, "scheduler unreachable, trying next");
                        last_error = format!("{addr}: {}", status.message());
                        saw_failure = true;
                    }
                    Err(status) => return Err(SchedulerError::Refused(status)),
                }
            }
            // Every scheduler failed: try again only if the set changed.
            if !self.refresh_after_failure().await {
                break;
            }
        }
        self.lost.store(true, Ordering::Relaxed);
        Err(SchedulerError::Unreachable(last_error))
    }

    pub async fn register_peer(
        &self,
        req: proto::RegisterPeerRequest,
    ) -> Result<proto::ScheduleResponse, SchedulerError> {
        task_rpc!(self, req, register_peer)
    }

    pub async fn get_parents(
        &self,
        req: proto::GetParentsRequest,
    ) -> Result<proto::ScheduleResponse, SchedulerError> {
        task_rpc!(self, req, get_parents)
    }

    pub async fn report_parent_failure(
        &self,
        req: proto::ReportParentFailureRequest,
    ) -> Result<proto::ScheduleResponse, SchedulerError> {
        task_rpc!(self, req, report_parent_failure)
    }

    pub async fn get_piece_digests(
        &self,
        req: proto::GetPieceDigestsRequest,
    ) -> Result<proto::GetPieceDigestsResponse, SchedulerError> {
        task_rpc!(self, req, get_piece_digests)
    }

    pub async fn report_pieces(
        &self,
        req: proto::ReportPiecesRequest,
    ) -> Result<proto::Empty, SchedulerError> {
        task_rpc!(self, req, report_pieces)
    }

    pub async fn report_peer_result(
        &self,
        req: proto::ReportPeerResultRequest,
    ) -> Result<proto::Empty, SchedulerError> {
        task_rpc!(self, req, report_peer_result)
    }

    pub async fn leave_task(
        &self,
        req: proto::LeaveTaskRequest,
    ) -> Result<proto::Empty, SchedulerError> {
        task_rpc!(self, req, leave_task)
    }

    /// Shares what a tag resolved to at its registry.
    pub async fn report_tag(
        &self,
        req: proto::ReportTagRequest,
    ) -> Result<proto::Empty, SchedulerError> {
        let key = tag_key(req.tag.as_ref());
        self.call(&key, |mut c| {
            let req = req.clone();
            async move { c.report_tag(req).await }
        })
        .await
    }

    /// What dfdaemons recently saw a tag resolve to.
    pub async fn resolve_tag(
        &self,
        req: proto::ResolveTagRequest,
    ) -> Result<proto::ResolveTagResponse, SchedulerError> {
        let key = tag_key(req.tag.as_ref());
        self.call(&key, |mut c| {
            let req = req.clone();
            async move { c.resolve_tag(req).await }
        })
        .await
    }

    /// Shares that the registry served an object without credentials.
    pub async fn report_anonymous_read(
        &self,
        req: proto::ReportAnonymousReadRequest,
    ) -> Result<proto::Empty, SchedulerError> {
        let key = anonymous_key(req.object.as_ref());
        self.call(&key, |mut c| {
            let req = req.clone();
            async move { c.report_anonymous_read(req).await }
        })
        .await
    }

    /// Whether some dfdaemon recently saw the registry serve an object
    /// without credentials.
    pub async fn check_anonymous_read(
        &self,
        req: proto::CheckAnonymousReadRequest,
    ) -> Result<proto::CheckAnonymousReadResponse, SchedulerError> {
        let key = anonymous_key(req.object.as_ref());
        self.call(&key, |mut c| {
            let req = req.clone();
            async move { c.check_anonymous_read(req).await }
        })
        .await
    }

    /// Announces this host to one scheduler; returns whether it knew us.
    pub async fn announce_to(
        &self,
        addr: &str,
    ) -> Result<proto::AnnounceHostResponse, SchedulerError> {
        let host = self.host().ok_or(SchedulerError::NoneConfigured)?;
        let mut client = self.client(addr)?;
        client
            .announce_host(proto::AnnounceHostRequest { host: Some(host) })
            .await
            .map(|r| r.into_inner())
            .map_err(|s| SchedulerError::Unreachable(s.to_string()))
    }

    /// Says goodbye to every scheduler so nobody picks this host as a parent.
    pub async fn leave(&self) {
        let Some(host) = self.host() else { return };
        for addr in self.addresses() {
            if let Ok(mut client) = self.client(&addr) {
                let req = proto::LeaveHostRequest {
                    host_id: host.id.clone(),
                };
                let _ = tokio::time::timeout(Duration::from_secs(1), client.leave_host(req)).await;
            }
        }
    }

    /// The scheduler that owns `task_id` now.
    pub fn owner(&self, task_id: &str) -> Option<String> {
        let addrs = self.addresses();
        hashring::rank(task_id, &addrs)
            .first()
            .map(|s| s.to_string())
    }
}

/// Dials `addr` and speaks mutual TLS to it, requiring a scheduler's
/// certificate: a pod that gets in the way cannot play the scheduler.
pub fn tls_connector(
    tls: &identity::MemberTls,
    addr: &str,
) -> impl tower::Service<
    tonic::transport::Uri,
    Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    let connector = tls.connector(&[identity::Role::Scheduler]);
    let addr = addr.to_string();
    tower::service_fn(move |_: tonic::transport::Uri| {
        let connector = connector.clone();
        let addr = addr.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(&addr).await?;
            tcp.set_nodelay(true)?;
            let name = rustls::pki_types::ServerName::try_from(identity::MEMBER_DNS_NAME)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let stream = connector.connect(name, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(stream))
        }
    })
}

fn is_transport_failure(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled
    )
}

/// Anonymous reads are spread over scheduler replicas like tasks, by this key.
fn anonymous_key(object: Option<&proto::RegistryObject>) -> String {
    object
        .map(|o| format!("anon:{}", o.digest))
        .unwrap_or_default()
}

/// Tags are spread over scheduler replicas like tasks, by this key.
fn tag_key(tag: Option<&proto::ImageTag>) -> String {
    tag.map(|t| format!("tag:{}", t.name())).unwrap_or_default()
}
