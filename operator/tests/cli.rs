//! The binary as users meet it: printed CRDs match `crds/`, and `run`
//! against an unreachable API server ends with a clear error, not a panic.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_dragonfly-operator");

/// Run to completion within `limit`, killing the child otherwise.
fn run_bounded(cmd: &mut Command, limit: Duration) -> (Option<i32>, String, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (status.code(), out, err)
}

#[test]
fn printed_crds_match_the_committed_ones() {
    let (code, out, err) = run_bounded(Command::new(BIN).arg("crd"), Duration::from_secs(30));
    assert_eq!(code, Some(0), "{err}");
    let committed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/dragonflyclusters.yaml"),
    )
    .expect("crds/dragonflyclusters.yaml");
    assert!(
        out == committed,
        "crds/ drifted from the Rust types: run `dragonfly-operator crd > crds/dragonflyclusters.yaml`"
    );
}

#[test]
fn run_against_nowhere_fails_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("config");
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: \"https://127.0.0.1:1\"}\n\
         contexts:\n- name: c\n  context: {cluster: c, user: u}\ncurrent-context: c\nusers:\n- name: u\n  user: {token: x}\n",
    )
    .expect("write kubeconfig");
    let (code, _, err) = run_bounded(
        Command::new(BIN)
            .args(["run", "--admin-listen", "127.0.0.1:0"])
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST"),
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("cannot reach the Kubernetes API at https://127.0.0.1:1"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    let (code, _, err) = run_bounded(
        Command::new(BIN)
            .arg("run")
            .env("KUBECONFIG", dir.path().join("missing"))
            .env_remove("KUBERNETES_SERVICE_HOST"),
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no Kubernetes configuration found"), "{err}");
}
