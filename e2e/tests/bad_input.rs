//! Bad input and damaged data: clear errors, distinct dfget exit codes, and
//! nothing wrong left in the cache.

use dragonfly_e2e::origin::{random_bytes, sha256_hex, Origin};
use dragonfly_e2e::procs::{dfget, free_port, tasks, DaemonProc, DaemonSpec, SchedulerProc};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

const MIB: usize = 1024 * 1024;

fn ip(block: u8, last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, block, last))
}

fn spec(name: &str, ip: IpAddr, dir: &Path, scheduler: Option<SocketAddr>) -> DaemonSpec {
    DaemonSpec {
        name: name.into(),
        ip,
        scheduler,
        seed: false,
        data_dir: dir.join(name),
        extra_args: Vec::new(),
        peer_port: 0,
        admin_port: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dfget_exit_codes_and_clean_cache() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start("127.0.0.1:0").await.unwrap();
    let data = random_bytes(5 * MIB);
    let digest = sha256_hex(&data);
    let url = origin.add("f.bin", data);
    let d = DaemonProc::start(spec("d", ip(20, 10), dir.path(), None), dir.path())
        .await
        .unwrap();
    let out = dir.path().join("out");

    // Origin 404: exit 2, no output file.
    let (code, stderr) = dfget(&origin.url("missing.bin"), &out, d.api, &[])
        .await
        .unwrap();
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("404"), "{stderr}");
    assert!(!out.exists());

    // Wrong digest: exit 3, no output, nothing left in the daemon's cache.
    let wrong = format!("sha256:{}", "0".repeat(64));
    let (code, stderr) = dfget(&url, &out, d.api, &[&format!("--digest={wrong}")])
        .await
        .unwrap();
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("digest"), "{stderr}");
    assert!(!out.exists());
    let client = reqwest::Client::new();
    // The peer port serves cluster members only: a member's malformed
    // requests are refused all the same.
    let member = dragonfly_e2e::procs::member_http(identity::Role::Node, "other-node");
    let held = tasks(&d).await.unwrap();
    assert!(
        held.iter().all(|t| t["task_id"] != "0".repeat(64)),
        "the mismatching content was removed from the cache: {held:?}"
    );
    // Asking about it afterwards tells why it is gone.
    let resp = client
        .get(format!("{}/api/v1/tasks/{}", d.task_api(), "0".repeat(64)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["failure"]["kind"], "digest_mismatch", "{body}");

    // Right digest: exit 0.
    let (code, stderr) = dfget(&url, &out, d.api, &[&format!("--digest={digest}")])
        .await
        .unwrap();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(sha256_hex(&std::fs::read(&out).unwrap()), digest);

    // Unreachable daemon: falls back to the origin with a warning, or
    // exits 4 with --no-direct.
    let nobody = SocketAddr::new(ip(20, 99), free_port(ip(20, 99)).unwrap());
    let out2 = dir.path().join("out2");
    let (code, stderr) = dfget(&url, &out2, nobody, &[]).await.unwrap();
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("straight from the origin"), "{stderr}");
    assert_eq!(sha256_hex(&std::fs::read(&out2).unwrap()), digest);
    let (code, _) = dfget(&url, &dir.path().join("out3"), nobody, &["--no-direct"])
        .await
        .unwrap();
    assert_eq!(code, 4);

    // Malformed input: 1 from dfget, 4xx from the API.
    let (code, _) = dfget("ftp://nope", &out2, d.api, &[]).await.unwrap();
    assert_eq!(code, 1);
    let base = d.task_api();
    let cases = [
        client
            .post(format!("{base}/api/v1/tasks"))
            .body("{not json")
            .header("content-type", "application/json"),
        client
            .post(format!("{base}/api/v1/tasks"))
            .json(&serde_json::json!({"url": "not a url"})),
        client
            .post(format!("{base}/api/v1/tasks"))
            .json(&serde_json::json!({"url": url, "digest": "md5:1"})),
        client
            .post(format!("{base}/api/v1/tasks"))
            .json(&serde_json::json!({"url": url, "surprise": 1})),
        client.get(format!("{base}/api/v1/tasks/..%2f..%2fetc")),
        member.get(format!(
            "{}/api/v1/tasks/{digest}/pieces/notanumber",
            d.peer_api()
        )),
    ];
    for case in cases {
        let resp = case.send().await.unwrap();
        assert!(resp.status().is_client_error(), "{:?}", resp.status());
    }
    let unknown = "a".repeat(64);
    for (http, url) in [
        (&client, format!("{base}/api/v1/tasks/{unknown}")),
        (
            &member,
            format!("{}/api/v1/tasks/{unknown}/pieces/0", d.peer_api()),
        ),
    ] {
        let resp = http.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{url}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_piece_on_a_parent_is_never_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start("127.0.0.1:0").await.unwrap();
    let data = random_bytes(16 * MIB);
    let digest = sha256_hex(&data);
    let url = origin.add("f.bin", data);
    let scheduler = SchedulerProc::start(ip(21, 1), dir.path()).await.unwrap();
    let a = DaemonProc::start(
        spec("a", ip(21, 10), dir.path(), Some(scheduler.grpc)),
        dir.path(),
    )
    .await
    .unwrap();
    let out = dir.path().join("a.out");
    let (code, stderr) = dfget(&url, &out, a.api, &[&format!("--digest={digest}")])
        .await
        .unwrap();
    assert_eq!(code, 0, "{stderr}");

    // Flip bytes in piece 1 of a's cached copy.
    let task_id = digest.trim_start_matches("sha256:");
    let piece_length = dragonfly_e2e::procs::task_status(&a, task_id)
        .await
        .unwrap()["piece_length"]
        .as_u64()
        .unwrap() as usize;
    let data_file = dir
        .path()
        .join("a")
        .join("tasks")
        .join(task_id)
        .join("data");
    let mut bytes = std::fs::read(&data_file).unwrap();
    for b in &mut bytes[piece_length + 100..piece_length + 200] {
        *b ^= 0x5a;
    }
    std::fs::write(&data_file, bytes).unwrap();

    let b = DaemonProc::start(
        spec("b", ip(21, 11), dir.path(), Some(scheduler.grpc)),
        dir.path(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let out_b = dir.path().join("b.out");
    let (code, stderr) = dfget(&url, &out_b, b.api, &[&format!("--digest={digest}")])
        .await
        .unwrap();
    assert_eq!(
        code,
        0,
        "{stderr}\n{}\n{}",
        a.proc.log_tail(20),
        b.proc.log_tail(20)
    );
    assert_eq!(sha256_hex(&std::fs::read(&out_b).unwrap()), digest);
    let b_tasks = tasks(&b).await.unwrap();
    eprintln!(
        "b: {b_tasks:?}; origin served {} bytes",
        origin.bytes_served()
    );
    // Only the damaged piece may have come from the origin again.
    assert!(
        origin.bytes_served() <= (16 * MIB + piece_length) as u64,
        "a:\n{}\nb:\n{}",
        a.proc.log_tail(30),
        b.proc.log_tail(30)
    );
}
