//! Drives an in-process scheduler over real gRPC and HTTP on loopback.

use std::net::SocketAddr;
use std::time::Duration;

use proto::scheduler_client::SchedulerClient;
use proto::{
    AnnounceHostRequest, Decision, GetParentsRequest, Host, HostType, LeaveHostRequest,
    RegisterPeerRequest, ReportPeerResultRequest, ReportPiecesRequest, StatRequest, TaskShape,
};
use scheduler::{Config, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

const HEARTBEAT: Duration = Duration::from_millis(200);

struct Running {
    grpc: SocketAddr,
    admin: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start() -> Running {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        heartbeat_interval: HEARTBEAT,
        ..Config::default()
    };
    let server = Server::bind(config).await.unwrap();
    let (grpc, admin) = (server.grpc_addr(), server.admin_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    Running {
        grpc,
        admin,
        stop,
        task,
    }
}

async fn client(addr: SocketAddr) -> SchedulerClient<Channel> {
    SchedulerClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

fn host(id: &str, ty: HostType) -> Host {
    Host {
        id: id.into(),
        hostname: id.into(),
        ip: "127.0.0.1".into(),
        peer_port: 65002,
        r#type: ty as i32,
        upload_capacity: 8,
        free_upload_slots: 8,
        ..Default::default()
    }
}

async fn announce(c: &mut SchedulerClient<Channel>, id: &str, ty: HostType) -> bool {
    let r = c
        .announce_host(AnnounceHostRequest {
            host: Some(host(id, ty)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.heartbeat_interval_ms, 200);
    r.known
}

fn register(task: &str, host: &str, seed_request: bool) -> RegisterPeerRequest {
    RegisterPeerRequest {
        task_id: task.into(),
        host_id: host.into(),
        url: "http://origin.example/blob".into(),
        seed_request,
        ..Default::default()
    }
}

/// A minimal HTTP/1.1 GET, enough for the admin endpoints.
async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    response
}

#[tokio::test]
async fn schedules_a_swarm_over_grpc() {
    let server = start().await;
    let mut c = client(server.grpc).await;

    assert!(http_get(server.admin, "/healthz")
        .await
        .starts_with("HTTP/1.1 200"));
    assert!(http_get(server.admin, "/readyz")
        .await
        .starts_with("HTTP/1.1 200"));

    // Unknown hosts are told to announce first.
    let err = c
        .register_peer(register("t1", "a", false))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);

    assert!(!announce(&mut c, "seed", HostType::Seed).await);
    assert!(!announce(&mut c, "a", HostType::Normal).await);
    assert!(!announce(&mut c, "b", HostType::Normal).await);
    assert!(announce(&mut c, "a", HostType::Normal).await);

    // The first downloader is sent to the seed; the seed goes to the origin.
    let r = c
        .register_peer(register("t1", "a", false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.decision(), Decision::TriggerSeed);
    let seed = r.parents[0].host.as_ref().unwrap();
    assert_eq!(seed.id, "seed");
    assert_eq!(seed.peer_port, 65002);
    let r = c
        .register_peer(register("t1", "seed", true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.decision(), Decision::BackToSource);

    let shape = TaskShape {
        content_length: 300,
        piece_length: 100,
        piece_count: 3,
        known: true,
    };
    c.report_pieces(ReportPiecesRequest {
        task_id: "t1".into(),
        host_id: "seed".into(),
        shape: Some(shape),
        pieces: vec![0, 1],
        ..Default::default()
    })
    .await
    .unwrap();

    let r = c
        .get_parents(GetParentsRequest {
            task_id: "t1".into(),
            host_id: "a".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.decision(), Decision::FromPeers);
    assert_eq!(r.shape, Some(shape));
    assert_eq!(r.parents.len(), 1);
    assert!(r.parents[0].is_source);
    assert_eq!(r.parents[0].finished_pieces, 2);
    assert_eq!(r.parents[0].bitmap, vec![0b011]);

    c.report_peer_result(ReportPeerResultRequest {
        task_id: "t1".into(),
        host_id: "seed".into(),
        success: true,
        was_source: true,
        content_length: 300,
        ..Default::default()
    })
    .await
    .unwrap();
    let r = c
        .register_peer(register("t1", "b", false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.decision(), Decision::FromPeers);
    assert!(r.parents.iter().any(|p| p.complete));

    let stat = c
        .stat(StatRequest {
            task_id: "t1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stat.hosts.len(), 3);
    let task = &stat.tasks[0];
    assert_eq!(task.source_host_id, "seed");
    assert_eq!(task.source_elections, 1);
    assert_eq!(task.url, "http://origin.example/blob");
    assert_eq!(task.peers.len(), 3);

    // The seed leaves; the next peer to ask heals the task.
    c.leave_host(LeaveHostRequest {
        host_id: "seed".into(),
    })
    .await
    .unwrap();
    let r = c
        .get_parents(GetParentsRequest {
            task_id: "t1".into(),
            host_id: "b".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.decision(), Decision::BackToSource);

    let metrics = http_get(server.admin, "/metrics").await;
    for needle in [
        "dragonfly_scheduler_hosts{host_type=\"normal\"} 2",
        "dragonfly_scheduler_registrations_total{decision=\"trigger_seed\"} 1",
        "dragonfly_scheduler_source_elections_total 2",
        "dragonfly_scheduler_requests_total{method=\"register_peer\",code=\"FailedPrecondition\"} 1",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }

    server.stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(15), server.task)
        .await
        .expect("shutdown in time")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn forgets_silent_hosts() {
    let server = start().await;
    let mut c = client(server.grpc).await;
    announce(&mut c, "quiet", HostType::Normal).await;
    announce(&mut c, "chatty", HostType::Normal).await;
    c.register_peer(register("t", "quiet", false))
        .await
        .unwrap();

    // Host TTL is 3 heartbeats (600 ms); keep one host alive and wait, for a
    // bounded time, for the other to be forgotten.
    let mut forgotten = false;
    for _ in 0..50 {
        tokio::time::sleep(HEARTBEAT / 2).await;
        announce(&mut c, "chatty", HostType::Normal).await;
        let stat = c.stat(StatRequest::default()).await.unwrap().into_inner();
        if stat.hosts.iter().all(|h| h.id != "quiet") {
            assert!(stat.tasks.iter().all(|t| t.source_host_id.is_empty()));
            assert!(stat.tasks.iter().all(|t| t.peers.is_empty()));
            forgotten = true;
            break;
        }
    }
    assert!(forgotten, "silent host still known");
    // A forgotten host learns it must re-report.
    assert!(!announce(&mut c, "quiet", HostType::Normal).await);
    let metrics = http_get(server.admin, "/metrics").await;
    assert!(
        metrics.contains("dragonfly_scheduler_host_expiries_total 1"),
        "{metrics}"
    );

    server.stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(15), server.task)
        .await
        .expect("shutdown in time")
        .unwrap()
        .unwrap();
}
