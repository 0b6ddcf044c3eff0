//! Golden-file tests (`testdata/`; `UPDATE_GOLDEN=1` rewrites them) and
//! apply/restore round trips on real directories.

use super::apply::{apply, restore, Applied, Restored, BACKUP_DIR};
use super::check::check;
use super::hosts::{render, Registry};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const MIRROR: &str = "http://127.0.0.1:65001";

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/containerd/testdata")
}

fn golden(path: &Path, actual: &str) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 creates it)", path.display()));
    assert_eq!(actual, expected, "{} differs", path.display());
}

const EXISTING: &str = r#"# site settings, kept as written
server = "https://registry.example.com"

[host."https://registry-mirror.internal"]
  capabilities = ["pull", "resolve"]
  ca = "/etc/containerd/certs.d/registry.example.com/ca.crt"
  skip_verify = false
"#;

#[test]
fn hosts_toml_shapes() {
    let cases = [
        ("registry", "registry.example.com", ""),
        ("docker_hub", "docker.io", ""),
        ("plain_http", "http://10.0.0.5:5000", ""),
        ("default", "_default", ""),
        ("merged_with_existing", "registry.example.com", EXISTING),
    ];
    for (name, arg, original) in cases {
        let registry = Registry::parse(arg).unwrap();
        let rendered = render(original, &registry, MIRROR).unwrap();
        golden(&testdata().join(format!("hosts/{name}.toml")), &rendered);
        // Rendered files parse, and rendering is a fixed point.
        assert!(rendered.parse::<toml_edit::DocumentMut>().is_ok(), "{name}");
        assert_eq!(render(original, &registry, MIRROR).unwrap(), rendered);
        // The mirror is the first host.
        let first_host = rendered.find("[host.").unwrap();
        assert_eq!(
            &rendered[first_host..first_host + 7 + MIRROR.len()],
            format!("[host.\"{MIRROR}").as_str(),
            "{name}: mirror is not first"
        );
    }
    assert!(render("server = [", &Registry::parse("x.io").unwrap(), MIRROR).is_err());
}

#[test]
fn containerd_config_shapes() {
    // config/: hand-written cases; config/defaults/: what each real
    // containerd's `containerd config default` writes, as it wrote it.
    let mut names: Vec<PathBuf> = ["config", "config/defaults"]
        .iter()
        .flat_map(|dir| std::fs::read_dir(testdata().join(dir)).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    names.sort();
    assert!(names.len() >= 8, "config cases missing");
    for input in names {
        let text = std::fs::read_to_string(&input).unwrap();
        let actual = match check(&text, Some(Path::new("/etc/containerd/certs.d"))) {
            Ok(report) => serde_json::to_string_pretty(&report).unwrap() + "\n",
            Err(e) => format!("error: {e}\n"),
        };
        golden(&input.with_extension("report"), &actual);
    }
}

/// Every file under `dir` with its bytes (symlinks as their targets).
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let kind = std::fs::symlink_metadata(&path).unwrap().file_type();
            if kind.is_symlink() {
                out.insert(
                    rel,
                    std::fs::read_link(&path)
                        .unwrap()
                        .display()
                        .to_string()
                        .into_bytes(),
                );
            } else if kind.is_dir() {
                out.insert(rel + "/", Vec::new());
                walk(root, &path, out);
            } else {
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

#[test]
fn apply_is_idempotent_and_restore_is_byte_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = tmp.path().join("certs.d");
    let existing = certs.join("registry.example.com");
    std::fs::create_dir_all(existing.join("extra")).unwrap();
    std::fs::write(existing.join("hosts.toml"), EXISTING).unwrap();
    std::fs::write(
        existing.join("ca.crt"),
        b"-----BEGIN CERTIFICATE-----\nMIIB\n",
    )
    .unwrap();
    std::fs::write(existing.join("client.key"), [0u8, 1, 2, 255]).unwrap();
    std::fs::write(existing.join("extra/note"), b"x").unwrap();
    std::os::unix::fs::symlink("ca.crt", existing.join("ca.pem")).unwrap();
    let other = certs.join("untouched.io");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(
        other.join("hosts.toml"),
        "server = \"https://untouched.io\"\n",
    )
    .unwrap();
    let before = snapshot(&certs);

    let registries: Vec<Registry> = ["registry.example.com", "docker.io", "_default"]
        .iter()
        .map(|r| Registry::parse(r).unwrap())
        .collect();
    let first = apply(&certs, &registries, MIRROR).unwrap();
    assert!(
        first.iter().all(|a| matches!(a, Applied::Written(_))),
        "{first:?}"
    );
    let merged = std::fs::read_to_string(existing.join("hosts.toml")).unwrap();
    assert!(merged.contains(wire::headers::REGISTRY));
    assert!(
        merged.contains("registry-mirror.internal"),
        "existing host kept"
    );
    assert_eq!(
        std::fs::read(existing.join("client.key")).unwrap(),
        [0u8, 1, 2, 255]
    );
    let after_first = snapshot(&certs);
    let second = apply(&certs, &registries, MIRROR).unwrap();
    assert!(
        second.iter().all(|a| matches!(a, Applied::Unchanged(_))),
        "{second:?}"
    );
    assert_eq!(snapshot(&certs), after_first, "second apply changed files");
    // A new mirror address replaces the old one rather than adding to it.
    apply(&certs, &registries, "http://127.0.0.1:65011").unwrap();
    let moved = std::fs::read_to_string(existing.join("hosts.toml")).unwrap();
    assert!(
        moved.contains("65011") && !moved.contains("65001"),
        "{moved}"
    );

    let restored = restore(&certs, &[], MIRROR).unwrap();
    assert_eq!(restored.len(), 3, "{restored:?}");
    assert!(restored.contains(&Restored::Original(existing.clone())));
    assert!(restored.contains(&Restored::Removed(certs.join("docker.io"))));
    assert_eq!(snapshot(&certs), before, "restore is not byte-exact");
    assert!(!certs.join(BACKUP_DIR).exists());
    // Nothing left to restore.
    let again = restore(&certs, &registries, MIRROR).unwrap();
    assert!(again.iter().all(|r| matches!(r, Restored::NothingToDo(_))));
}

#[test]
fn corrupt_hosts_toml_is_reported_and_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = tmp.path();
    let dir = certs.join("broken.io");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hosts.toml"), "server = [unterminated").unwrap();
    let err = apply(certs, &[Registry::parse("broken.io").unwrap()], MIRROR).unwrap_err();
    assert!(err.to_string().contains("broken.io/hosts.toml"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.join("hosts.toml")).unwrap(),
        "server = [unterminated"
    );
    // The backup taken before the failure restores to the same bytes.
    restore(certs, &[], MIRROR).unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join("hosts.toml")).unwrap(),
        "server = [unterminated"
    );
}

/// Found by fuzzing (fuzz/known/toml_edit_panic): toml_edit 0.23 panicked
/// on this input; a broken file must be reported, never crash the daemon.
#[test]
fn malformed_toml_is_an_error_not_a_panic() {
    let text = "\0\0==\n.=";
    assert!(check(text, None).is_err());
    let registry = Registry::parse("docker.io").unwrap();
    assert!(render(text, &registry, MIRROR).is_err());
}

#[test]
fn later_edits_become_the_original_and_restore_brings_back_the_last_one() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = tmp.path().join("certs.d");
    let dir = certs.join("registry.example.com");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hosts.toml"), EXISTING).unwrap();
    let registry = [Registry::parse("registry.example.com").unwrap()];
    apply(&certs, &registry, MIRROR).unwrap();

    // An admin edits the managed file: adds a host and a certificate.
    let ours = std::fs::read_to_string(dir.join("hosts.toml")).unwrap();
    let edited = ours.replace(
        "[host.\"https://registry-mirror.internal\"]",
        "[host.\"https://second-cache.internal\"]\n  capabilities = [\"pull\"]\n\n[host.\"https://registry-mirror.internal\"]",
    );
    assert_ne!(edited, ours);
    std::fs::write(dir.join("hosts.toml"), &edited).unwrap();
    std::fs::write(dir.join("new-ca.crt"), b"admin's CA").unwrap();
    // The edit kept the mirror in front: adopted as the original, nothing rewritten.
    let again = apply(&certs, &registry, MIRROR).unwrap();
    assert_eq!(again, [Applied::Unchanged(dir.join("hosts.toml"))]);
    let merged = std::fs::read_to_string(dir.join("hosts.toml")).unwrap();
    assert!(merged.contains("second-cache.internal"), "{merged}");
    assert_eq!(merged, edited);
    // Stable from then on.
    assert_eq!(
        apply(&certs, &registry, MIRROR).unwrap(),
        [Applied::Unchanged(dir.join("hosts.toml"))]
    );

    // Restore gives the admin's version without the mirror, and keeps the new CA.
    restore(&certs, &[], MIRROR).unwrap();
    let restored = std::fs::read_to_string(dir.join("hosts.toml")).unwrap();
    assert!(restored.contains("second-cache.internal"), "{restored}");
    assert!(restored.contains("registry-mirror.internal"), "{restored}");
    assert!(!restored.contains("65001") && !restored.contains("Managed by dfdaemon"));
    assert_eq!(
        std::fs::read(dir.join("new-ca.crt")).unwrap(),
        b"admin's CA"
    );
    // And the restored file is the new base for the next apply, with nothing lost.
    apply(&certs, &registry, MIRROR).unwrap();
    restore(&certs, &[], MIRROR).unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join("hosts.toml")).unwrap(),
        restored
    );
}

#[test]
fn a_file_replaced_after_the_last_apply_is_left_to_its_writer_on_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = tmp.path();
    let registry = [Registry::parse("docker.io").unwrap()];
    apply(certs, &registry, MIRROR).unwrap();
    let theirs = "server = \"https://registry-1.docker.io\"\n# written by config management\n";
    std::fs::write(certs.join("docker.io/hosts.toml"), theirs).unwrap();
    assert_eq!(
        restore(certs, &[], MIRROR).unwrap(),
        [Restored::KeptOtherWriter(certs.join("docker.io"))]
    );
    assert_eq!(
        std::fs::read_to_string(certs.join("docker.io/hosts.toml")).unwrap(),
        theirs
    );
    assert!(!certs.join(BACKUP_DIR).exists());
}

#[test]
fn a_backup_from_before_the_write_record_still_restores_byte_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = tmp.path().join("certs.d");
    let dir = certs.join("registry.example.com");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hosts.toml"), EXISTING).unwrap();
    let before = snapshot(&certs);
    let registry = [Registry::parse("registry.example.com").unwrap()];
    apply(&certs, &registry, MIRROR).unwrap();
    // What an older dfdaemon left: the backup without the record.
    std::fs::remove_file(certs.join(BACKUP_DIR).join("registry.example.com/written")).unwrap();
    assert_eq!(
        apply(&certs, &registry, MIRROR).unwrap(),
        [Applied::Unchanged(dir.join("hosts.toml"))]
    );
    std::fs::remove_file(certs.join(BACKUP_DIR).join("registry.example.com/written")).unwrap();
    restore(&certs, &[], MIRROR).unwrap();
    assert_eq!(snapshot(&certs), before);
}

#[test]
fn containerd_reaches_the_mirror_at_the_nodes_address_not_loopback() {
    use super::ContainerdConfig;
    use std::net::{IpAddr, SocketAddr};
    let config = ContainerdConfig::default();
    let any: SocketAddr = "0.0.0.0:65001".parse().unwrap();
    let node: IpAddr = "10.0.0.7".parse().unwrap();
    // Bound to every address in a pod: the node's address, which a hostPort
    // covers on every CNI (127.0.0.1 only with portmap's snat).
    assert_eq!(config.mirror_url(any, Some(node)), "http://10.0.0.7:65001");
    assert_eq!(
        config.mirror_url(any, Some("fd00::7".parse().unwrap())),
        "http://[fd00::7]:65001"
    );
    // Nothing advertised (a plain host): loopback.
    assert_eq!(config.mirror_url(any, None), "http://127.0.0.1:65001");
    // Bound to one address: that one.
    let one: SocketAddr = "127.0.0.3:65001".parse().unwrap();
    assert_eq!(config.mirror_url(one, Some(node)), "http://127.0.0.3:65001");
    // Set explicitly: as set.
    let set = ContainerdConfig {
        mirror: Some("http://mirror.local:1/".into()),
        ..ContainerdConfig::default()
    };
    assert_eq!(set.mirror_url(any, Some(node)), "http://mirror.local:1");
}

#[test]
fn the_installed_containerd_names_its_version() {
    use super::parse_containerd_version as parse;
    assert_eq!(
        parse("containerd github.com/containerd/containerd/v2 v2.2.10 go-module-proxy\n")
            .as_deref(),
        Some("v2.2.10")
    );
    assert_eq!(
        parse("containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+b1\n")
            .as_deref(),
        Some("1.6.20~ds1")
    );
    assert_eq!(parse(""), None);
}
