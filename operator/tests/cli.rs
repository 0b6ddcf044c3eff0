//! The binary as users meet it: printed CRDs match `crds/`, `run` and
//! `crd --apply` against an unreachable API server and `preheat-local` on
//! bad input end with a clear error, not a panic.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_dragonfly-operator");

/// Run to completion within `limit`, killing the child otherwise. Its
/// output is drained while it runs: a child writing more than a pipe holds
/// (the CRDs are larger than 64 KiB) would otherwise block forever.
fn run_bounded(cmd: &mut Command, limit: Duration) -> (Option<i32>, String, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut text);
            }
            text
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
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
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    (status.code(), out, err)
}

const CRD_FILES: [&str; 2] = ["dragonflyclusters.yaml", "preheats.yaml"];

fn committed_crd(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crds")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn printed_crds_match_the_committed_ones() {
    let (code, out, err) = run_bounded(Command::new(BIN).arg("crd"), Duration::from_secs(30));
    assert_eq!(code, Some(0), "{err}");
    let committed: String = CRD_FILES.iter().map(|f| committed_crd(f)).collect();
    assert!(
        out == committed,
        "crds/ drifted from the Rust types: run `dragonfly-operator crd --out-dir crds`"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let (code, _, err) = run_bounded(
        Command::new(BIN)
            .arg("crd")
            .arg("--out-dir")
            .arg(dir.path()),
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(0), "{err}");
    for f in CRD_FILES {
        let written = std::fs::read_to_string(dir.path().join(f)).expect("written");
        assert!(written == committed_crd(f), "crds/{f} drifted");
    }
}

#[test]
fn preheat_local_rejects_bad_input_with_a_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("preheat.yaml");
    std::fs::write(
        &file,
        "apiVersion: p2p.dragonfly.dev/v1alpha1\nkind: Preheat\nmetadata: {name: x}\n\
         spec: {cluster: local, images: ['not a reference'], platforms: [linux]}\n",
    )
    .expect("write");
    let (code, out, err) = run_bounded(
        Command::new(BIN)
            .args([
                "preheat-local",
                "--dfdaemon",
                "http://127.0.0.1:1,http://127.0.0.1:1",
            ])
            .arg("--file")
            .arg(&file),
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(1), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("status JSON on stdout");
    assert_eq!(v["status"]["phase"], "Failed");
    let message = v["status"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("spec.images[0]: invalid image reference \"not a reference\""),
        "{message}"
    );
    assert!(
        message.contains("spec.platforms[0]: invalid platform \"linux\""),
        "{message}"
    );
    assert!(err.contains("error: preheat Failed"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let (code, _, err) = run_bounded(
        Command::new(BIN)
            .args(["preheat-local", "--dfdaemon", "nonsense", "--file"])
            .arg(&file),
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("expected PEER_URL,MIRROR_URL"), "{err}");
}

/// A kubeconfig for port 1 on loopback: nothing listens, the connection is
/// refused at once.
fn kubeconfig_to_nowhere(dir: &Path) -> std::path::PathBuf {
    let kubeconfig = dir.join("config");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: \"https://127.0.0.1:1\"}\n\
         contexts:\n- name: c\n  context: {cluster: c, user: u}\ncurrent-context: c\nusers:\n- name: u\n  user: {token: x}\n",
    )
    .expect("write kubeconfig");
    kubeconfig
}

#[test]
fn crd_apply_against_nowhere_fails_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, out, err) = run_bounded(
        Command::new(BIN)
            .args(["crd", "--apply", "--timeout-seconds", "10"])
            .env("KUBECONFIG", kubeconfig_to_nowhere(dir.path()))
            .env_remove("KUBERNETES_SERVICE_HOST"),
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("error: cannot bring the CRDs up to date at https://127.0.0.1:1/: cannot read CRD dragonflyclusters.p2p.dragonfly.dev: "),
        "{err}"
    );
    // Not a permission problem: no RBAC advice.
    assert!(!err.contains("RBAC"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.is_empty(), "nothing reported as applied: {out}");
}

#[test]
fn crd_apply_takes_no_out_dir_and_a_timeout_only_with_apply() {
    for args in [
        &["crd", "--apply", "--out-dir", "x"][..],
        &["crd", "--timeout-seconds", "5"][..],
    ] {
        let (code, _, err) = run_bounded(Command::new(BIN).args(args), Duration::from_secs(30));
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(
            err.contains("cannot be used with") || err.contains("required"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn run_against_nowhere_fails_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = kubeconfig_to_nowhere(dir.path());
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
