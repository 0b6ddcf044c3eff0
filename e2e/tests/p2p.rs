//! Loopback integration tests of the P2P core with the real binaries: one
//! origin, one scheduler, a seed and several dfdaemons, each on its own
//! loopback address. Origin bytes are counted at the origin itself.

use dragonfly_e2e::origin::{random_bytes, sha256_hex, Origin};
use dragonfly_e2e::procs::{dfget, tasks, DaemonProc, DaemonSpec, SchedulerProc};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

const MIB: usize = 1024 * 1024;

fn ip(last: u8, block: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, block, last))
}

fn spec(
    name: &str,
    ip: IpAddr,
    dir: &Path,
    scheduler: Option<&SchedulerProc>,
    seed: bool,
) -> DaemonSpec {
    DaemonSpec {
        name: name.to_string(),
        ip,
        scheduler: scheduler.map(|s| s.grpc),
        seed,
        data_dir: dir.join(name),
        extra_args: Vec::new(),
        peer_port: 0,
        admin_port: 0,
    }
}

async fn start_daemons(
    count: usize,
    block: u8,
    dir: &Path,
    scheduler: Option<&SchedulerProc>,
    extra: &[&str],
) -> Vec<DaemonProc> {
    let mut daemons = Vec::new();
    for i in 0..count {
        let mut s = spec(
            &format!("peer-{i}"),
            ip(10 + i as u8, block),
            dir,
            scheduler,
            false,
        );
        s.extra_args = extra.iter().map(|s| s.to_string()).collect();
        daemons.push(DaemonProc::start(s, dir).await.expect("dfdaemon starts"));
    }
    daemons
}

/// Downloads `url` through every daemon at once with dfget and checks each
/// copy against `digest`.
/// With `by_digest` the task id is the content digest, else the URL.
async fn download_everywhere(
    url: &str,
    digest: &str,
    by_digest: bool,
    daemons: &[&DaemonProc],
    dir: &Path,
) {
    let mut jobs = Vec::new();
    for (i, d) in daemons.iter().enumerate() {
        let out = dir.join(format!("out-{}-{i}", d.spec.name));
        let url = url.to_string();
        let peer = d.api;
        let digest_arg = format!("--digest={digest}");
        jobs.push(tokio::spawn(async move {
            let extra: Vec<&str> = if by_digest {
                vec![digest_arg.as_str()]
            } else {
                vec![]
            };
            let result = dfget(&url, &out, peer, &extra).await;
            (out, result)
        }));
    }
    for job in jobs {
        let (out, result) = job.await.expect("dfget task");
        let (code, stderr) = result.expect("dfget runs");
        assert_eq!(code, 0, "dfget failed: {stderr}");
        let data = std::fs::read(&out).expect("output written");
        assert_eq!(
            sha256_hex(&data),
            digest,
            "{} differs from the origin",
            out.display()
        );
    }
}

fn dump_logs(daemons: &[&DaemonProc]) {
    for d in daemons {
        eprintln!("--- {} ---\n{}", d.spec.name, d.proc.log_tail(40));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_fetches_from_origin_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start("127.0.0.1:0").await.unwrap();
    let data = random_bytes(64 * MIB);
    let digest = sha256_hex(&data);
    let url = origin.add("big.bin", data);

    let scheduler = SchedulerProc::start(ip(1, 1), dir.path()).await.unwrap();
    let seed = DaemonProc::start(
        spec("seed", ip(2, 1), dir.path(), Some(&scheduler), true),
        dir.path(),
    )
    .await
    .unwrap();
    let daemons = start_daemons(4, 1, dir.path(), Some(&scheduler), &[]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let refs: Vec<&DaemonProc> = daemons.iter().collect();
    download_everywhere(&url, &digest, false, &refs, dir.path()).await;

    let served = origin.bytes_served();
    if served != 64 * MIB as u64 {
        let mut all = refs.clone();
        all.push(&seed);
        dump_logs(&all);
    }
    assert_eq!(
        served,
        64 * MIB as u64,
        "origin must serve the file exactly once"
    );

    // The peers' own accounting agrees: nearly everything came from peers.
    let mut from_peers = 0;
    for d in &daemons {
        for t in tasks(d).await.unwrap() {
            from_peers += t["from_peers"].as_u64().unwrap_or(0);
        }
    }
    assert_eq!(
        from_peers,
        4 * 64 * MIB as u64,
        "every daemon got its bytes from peers"
    );

    // Asked again, a daemon serves its cache: no new origin bytes.
    download_everywhere(&url, &digest, false, &refs[..1], dir.path()).await;
    assert_eq!(origin.bytes_served(), 64 * MIB as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_survive_their_parent_being_killed() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start("127.0.0.1:0").await.unwrap();
    let data = random_bytes(64 * MIB);
    let digest = sha256_hex(&data);
    let url = origin.add("big.bin", data);

    let scheduler = SchedulerProc::start(ip(1, 2), dir.path()).await.unwrap();
    // The seed uploads slowly so the kill lands mid-transfer.
    let mut seed_spec = spec("seed", ip(2, 2), dir.path(), Some(&scheduler), true);
    seed_spec.extra_args = vec!["--upload-rate".into(), "24MiB".into()];
    let mut seed = DaemonProc::start(seed_spec, dir.path()).await.unwrap();
    let daemons = start_daemons(4, 2, dir.path(), Some(&scheduler), &[]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let refs: Vec<&DaemonProc> = daemons.iter().collect();
    let download = download_everywhere(&url, &digest, true, &refs, dir.path());
    let killer = async {
        // Kill the seed (everyone's first parent) once peers hold some pieces
        // but before they are done.
        wait_until_peers_hold(&daemons, 16 * MIB as u64).await;
        seed.proc.kill();
        eprintln!("seed killed after peers held pieces");
    };
    tokio::join!(download, killer);
    // Killing the only complete parent costs some origin bytes, never
    // correctness; the swarm should still save most of the traffic.
    let served = origin.bytes_served();
    eprintln!(
        "origin served {served} bytes for 4 downloads of {} bytes",
        64 * MIB
    );
    assert!(
        served < 4 * 64 * MIB as u64,
        "the swarm still saved origin traffic"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_parent_is_left_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start("127.0.0.1:0").await.unwrap();
    let data = random_bytes(64 * MIB);
    let digest = sha256_hex(&data);
    let url = origin.add("frozen.bin", data);

    let scheduler = SchedulerProc::start(ip(1, 9), dir.path()).await.unwrap();
    // The seed uploads slowly so the freeze lands mid-transfer.
    let mut seed_spec = spec("seed", ip(2, 9), dir.path(), Some(&scheduler), true);
    seed_spec.extra_args = vec!["--upload-rate".into(), "24MiB".into()];
    let seed = DaemonProc::start(seed_spec, dir.path()).await.unwrap();
    let daemons = start_daemons(4, 9, dir.path(), Some(&scheduler), &[]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let refs: Vec<&DaemonProc> = daemons.iter().collect();
    let download = download_everywhere(&url, &digest, true, &refs, dir.path());
    let freezer = async {
        // Freeze the seed (its connections stay open, nothing answers) once
        // peers hold some pieces but before they are done.
        wait_until_peers_hold(&daemons, 16 * MIB as u64).await;
        signal(seed.proc.pid(), "-STOP");
        eprintln!("seed frozen after peers held pieces");
        Instant::now()
    };
    let ((), frozen_at) = tokio::join!(download, freezer);
    let after = frozen_at.elapsed();
    signal(seed.proc.pid(), "-CONT");
    eprintln!("downloads done {after:?} after the freeze");
    // A frozen parent must cost about a second per piece it held, not the
    // 60 s whole-piece timeout.
    assert!(
        after < Duration::from_secs(30),
        "downloads waited {after:?} on a frozen parent"
    );
}

/// Waits (at most 60 s) until `daemons` hold `bytes` between them.
async fn wait_until_peers_hold(daemons: &[DaemonProc], bytes: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut done = 0;
        for d in daemons {
            for t in tasks(d).await.unwrap_or_default() {
                done += t["bytes_done"].as_u64().unwrap_or(0);
            }
        }
        if done >= bytes || Instant::now() > deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill {sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_carries_on_when_the_scheduler_dies() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start("127.0.0.1:0").await.unwrap();
    let size = 48 * MIB;
    let data = random_bytes(size);
    let digest = sha256_hex(&data);
    let url = origin.add("long.bin", data);
    // Slow enough that the swarm outlives the scheduler by longer than a
    // daemon would wait for it (a third of the 30 s stall timeout).
    origin.set_throttle(3 * MIB as u64);

    let mut scheduler = SchedulerProc::start(ip(1, 7), dir.path()).await.unwrap();
    let seed = DaemonProc::start(
        spec("seed", ip(2, 7), dir.path(), Some(&scheduler), true),
        dir.path(),
    )
    .await
    .unwrap();
    let daemons = start_daemons(3, 7, dir.path(), Some(&scheduler), &[]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let refs: Vec<&DaemonProc> = daemons.iter().collect();
    let download = download_everywhere(&url, &digest, true, &refs, dir.path());
    let killer = async {
        // Kill the scheduler once every peer has pieces from the swarm.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut started = 0;
            for d in &daemons {
                let done: u64 = tasks(d)
                    .await
                    .unwrap_or_default()
                    .iter()
                    .map(|t| t["bytes_done"].as_u64().unwrap_or(0))
                    .sum();
                started += usize::from(done > 0);
            }
            if started == daemons.len() || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        scheduler.proc.kill();
        eprintln!("scheduler killed after every peer held pieces");
    };
    tokio::join!(download, killer);
    if origin.bytes_served() != size as u64 {
        let mut all: Vec<&DaemonProc> = vec![&seed];
        all.extend(daemons.iter());
        dump_logs(&all);
    }
    assert_eq!(
        origin.bytes_served(),
        size as u64,
        "peers kept exchanging pieces without the scheduler, not fetching from the origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_scheduler_downloads_come_from_the_origin() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start("127.0.0.1:0").await.unwrap();
    let data = random_bytes(8 * MIB);
    let digest = sha256_hex(&data);
    let url = origin.add("f.bin", data);
    // A scheduler address where nothing listens.
    let nobody =
        std::net::SocketAddr::new(ip(1, 3), dragonfly_e2e::procs::free_port(ip(1, 3)).unwrap());
    let mut daemons = Vec::new();
    for i in 0..2u8 {
        let mut s = spec(
            &format!("lonely-{i}"),
            ip(10 + i, 3),
            dir.path(),
            None,
            false,
        );
        s.scheduler = Some(nobody);
        daemons.push(DaemonProc::start(s, dir.path()).await.unwrap());
    }
    let refs: Vec<&DaemonProc> = daemons.iter().collect();
    download_everywhere(&url, &digest, true, &refs, dir.path()).await;
    assert_eq!(origin.bytes_served(), 2 * 8 * MIB as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_daemon_resumes_and_serves_its_cache() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start("127.0.0.1:0").await.unwrap();
    let size = 32 * MIB;
    let data = random_bytes(size);
    let digest = sha256_hex(&data);
    let url = origin.add("slow.bin", data);
    origin.set_throttle(8 * MIB as u64);

    let scheduler = SchedulerProc::start(ip(1, 4), dir.path()).await.unwrap();
    let a = DaemonProc::start(
        spec("a", ip(10, 4), dir.path(), Some(&scheduler), false),
        dir.path(),
    )
    .await
    .unwrap();

    // Start a download, crash the daemon half way.
    let client = reqwest::Client::new();
    let started: serde_json::Value = client
        .post(format!("{}/api/v1/tasks", a.task_api()))
        .json(&serde_json::json!({ "url": url, "digest": digest }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let task_id = started["task_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut a = a;
    loop {
        let status = dragonfly_e2e::procs::task_status(&a, &task_id)
            .await
            .unwrap();
        // 12 MiB at 8 MiB/s: past the store's 1 s metadata flush interval,
        // so the pieces are recorded on disk when the daemon dies.
        if status["bytes_done"].as_u64().unwrap_or(0) >= 12 * MIB as u64
            || Instant::now() > deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.proc.kill();
    let served_before = origin.bytes_served();
    eprintln!("crashed after the origin served {served_before} bytes");
    assert!(
        served_before < size as u64,
        "the crash happened mid-download"
    );

    // Restart on the same data dir: the recorded pieces are kept.
    origin.set_throttle(0);
    let a = a.restart(dir.path()).await.unwrap();
    let status = dragonfly_e2e::procs::task_status(&a, &task_id)
        .await
        .unwrap();
    let kept = status["pieces_done"].as_u64().unwrap_or(0);
    let piece_length = status["piece_length"].as_u64().unwrap_or(0);
    assert!(
        kept >= 2,
        "pieces recorded before the crash survive: {status}"
    );
    download_everywhere(&url, &digest, true, &[&a], dir.path()).await;
    let resumed_cost = origin.bytes_served() - served_before;
    assert!(
        resumed_cost <= size as u64 - kept * piece_length,
        "resume fetched only missing pieces ({resumed_cost} bytes)"
    );

    // Restart again: the completed task is served to another peer from A.
    let a = a.restart(dir.path()).await.unwrap();
    let served_total = origin.bytes_served();
    let b = DaemonProc::start(
        spec("b", ip(11, 4), dir.path(), Some(&scheduler), false),
        dir.path(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    download_everywhere(&url, &digest, true, &[&b], dir.path()).await;
    if origin.bytes_served() != served_total {
        dump_logs(&[&a, &b]);
    }
    assert_eq!(
        origin.bytes_served(),
        served_total,
        "b got the file from a's cache"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_scheduler_rebuilds_from_peers() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start("127.0.0.1:0").await.unwrap();
    let data = random_bytes(16 * MIB);
    let digest = sha256_hex(&data);
    let url = origin.add("f.bin", data);

    let scheduler = SchedulerProc::start(ip(1, 5), dir.path()).await.unwrap();
    let (grpc, admin) = (scheduler.grpc, scheduler.admin);
    let a = DaemonProc::start(
        spec("a", ip(10, 5), dir.path(), Some(&scheduler), false),
        dir.path(),
    )
    .await
    .unwrap();
    download_everywhere(&url, &digest, true, &[&a], dir.path()).await;
    assert_eq!(origin.bytes_served(), 16 * MIB as u64);

    // The scheduler loses everything it knew; a's next heartbeat re-reports
    // what a holds.
    drop(scheduler);
    let scheduler = SchedulerProc::start_at(grpc, admin, dir.path())
        .await
        .unwrap();
    let b = DaemonProc::start(
        spec("b", ip(11, 5), dir.path(), Some(&scheduler), false),
        dir.path(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    download_everywhere(&url, &digest, true, &[&b], dir.path()).await;
    if origin.bytes_served() != 16 * MIB as u64 {
        dump_logs(&[&a, &b]);
    }
    assert_eq!(
        origin.bytes_served(),
        16 * MIB as u64,
        "b got the file from a, not the origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_are_split_over_scheduler_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start("127.0.0.1:0").await.unwrap();
    let s1 = SchedulerProc::start(ip(1, 6), dir.path()).await.unwrap();
    let s2 = SchedulerProc::start(ip(2, 6), dir.path()).await.unwrap();
    let both = format!("{},{}", s1.grpc, s2.grpc);
    let mut daemons = Vec::new();
    for i in 0..3u8 {
        let mut s = spec(&format!("r-{i}"), ip(10 + i, 6), dir.path(), None, false);
        s.extra_args = vec!["--scheduler".into(), both.clone()];
        daemons.push(DaemonProc::start(s, dir.path()).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refs: Vec<&DaemonProc> = daemons.iter().collect();
    // Twelve tasks: the chance that one replica owns none is 2 in 4096.
    let files = 12;
    for n in 0..files {
        let data = random_bytes(MIB);
        let digest = sha256_hex(&data);
        let url = origin.add(&format!("f{n}.bin"), data);
        download_everywhere(&url, &digest, false, &refs, dir.path()).await;
    }
    assert_eq!(
        origin.bytes_served(),
        files * MIB as u64,
        "each file fetched once across replicas"
    );

    // Both replicas own some of the tasks.
    let mut owned = Vec::new();
    for s in [&s1, &s2] {
        // The gRPC port serves members only: read as the operator does.
        let tls = identity::MemberTls::load(&dragonfly_e2e::procs::member_dir(
            identity::Role::Operator,
            "stat",
        ))
        .unwrap();
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", s.grpc))
            .unwrap()
            .connect_with_connector(node_agent::scheduler_client::tls_connector(
                &tls,
                &s.grpc.to_string(),
            ))
            .await
            .unwrap();
        let mut client = proto::scheduler_client::SchedulerClient::new(channel);
        let stat = client
            .stat(proto::StatRequest::default())
            .await
            .unwrap()
            .into_inner();
        owned.push(stat.tasks.len());
    }
    eprintln!("tasks per replica: {owned:?}");
    assert_eq!(owned.iter().sum::<usize>(), files as usize);
    assert!(
        owned.iter().all(|n| *n > 0),
        "both replicas own tasks: {owned:?}"
    );
}
