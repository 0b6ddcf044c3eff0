//! A registry behind a private CA, mirrored: the in-process registry serves
//! HTTPS only, with a certificate from a CA no trust store holds. A
//! dfdaemon given that CA as `mirror.registries.<host>.ca_file` (what the
//! operator renders from `spec.registryConfigs[].caBundle`) serves the
//! registry's manifest and blob through the mirror, byte for byte; one
//! without it refuses with an error status and hands out no bytes.

use bytes::Bytes;
use dragonfly_e2e::origin::{random_bytes, sha256_hex};
use dragonfly_e2e::procs::{DaemonProc, DaemonSpec};
use dragonfly_e2e::registry::{FakeRegistry, PrivateCa, OCI_MANIFEST};
use reqwest::StatusCode;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

const MIB: usize = 1024 * 1024;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("http client")
}

/// A standalone dfdaemon reading `config` (YAML) as its `--config` file.
async fn daemon(name: &str, last: u8, dir: &Path, config: &str) -> DaemonProc {
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, config).expect("write the dfdaemon config");
    let spec = DaemonSpec {
        name: name.to_string(),
        ip: IpAddr::V4(Ipv4Addr::new(127, 0, 47, last)),
        scheduler: None,
        seed: false,
        data_dir: dir.join(name),
        extra_args: vec!["--config".into(), file.display().to_string()],
        peer_port: 0,
        admin_port: 0,
    };
    DaemonProc::start(spec, dir).await.expect("dfdaemon starts")
}

/// The mirror's config for `host`: HTTPS (a loopback host would default to
/// plain HTTP), with `ca_file` when given, as the operator renders it.
fn mirror_config(host: &str, ca_file: Option<&Path>) -> String {
    let ca = ca_file
        .map(|f| format!("\n      ca_file: {}", f.display()))
        .unwrap_or_default();
    format!(
        "mirror:\n  mirrored_registries:\n  - {host}\n  registries:\n    \"{host}\":\n      plain_http: false{ca}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_behind_a_private_ca_is_mirrored_with_its_ca_and_refused_without() {
    let dir = tempfile::tempdir().unwrap();
    let ca = PrivateCa::generate("registry test CA").unwrap();
    let registry = FakeRegistry::start_tls("127.0.0.1:0", None, &ca)
        .await
        .unwrap();
    let host = registry.host();
    let data = random_bytes(3 * MIB);
    let digest = registry.push_blob_to("team/app", data.clone());
    let manifest = Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{digest}","size":{}}},"layers":[]}}"#,
        data.len()
    ));
    let manifest_digest = registry.push_manifest("team/app", "v1", manifest.clone());

    // The registry really is HTTPS with a certificate nobody trusts.
    let plain = client()
        .get(format!("https://{host}/v2/"))
        .send()
        .await
        .expect_err("the system trust store does not hold the private CA");
    assert!(plain.is_connect(), "{plain:?}");
    let handshakes = || registry.stats().failed_handshakes.load(Ordering::SeqCst);
    // The server side of that handshake may finish after the client's.
    for _ in 0..100 {
        if handshakes() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused_before = handshakes();
    assert_eq!(refused_before, 1, "the registry refused that client");

    let ca_file = dir.path().join("registry-ca.crt");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    let trusted = daemon(
        "trusted",
        10,
        dir.path(),
        &mirror_config(&host, Some(&ca_file)),
    )
    .await;
    let http = client();

    // As containerd asks through hosts.toml: the upstream named in the header.
    let m = http
        .get(format!(
            "http://{}/v2/team/app/manifests/v1?ns={host}",
            trusted.proxy
        ))
        .header("X-Dragonfly-Registry", format!("https://{host}"))
        .header("Accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(m.status(), StatusCode::OK);
    assert_eq!(
        m.headers()["docker-content-digest"].to_str().unwrap(),
        manifest_digest
    );
    assert_eq!(m.bytes().await.unwrap(), manifest);

    // The blob, through the mirror's download path (back to source over TLS).
    let b = http
        .get(format!(
            "http://{}/v2/team/app/blobs/{digest}?ns={host}",
            trusted.proxy
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(b.status(), StatusCode::OK);
    let body = b.bytes().await.unwrap();
    assert_eq!(body.len(), data.len());
    assert_eq!(sha256_hex(&body), digest);
    assert!(
        registry.blob_bytes() >= data.len() as u64,
        "the bytes came from the TLS registry: {}",
        registry.blob_bytes()
    );
    assert_eq!(
        handshakes(),
        refused_before,
        "the mirror trusted the registry"
    );

    // The same registry without the CA: the mirror cannot verify it, answers
    // an error (containerd then tries its next host) and serves no bytes.
    let before = registry.blob_bytes();
    let untrusted = daemon("untrusted", 11, dir.path(), &mirror_config(&host, None)).await;
    for path in [
        format!("team/app/blobs/{digest}"),
        "team/app/manifests/v1".to_string(),
    ] {
        let r = http
            .get(format!("http://{}/v2/{path}?ns={host}", untrusted.proxy))
            .header("X-Dragonfly-Registry", format!("https://{host}"))
            .header("Accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body = r.bytes().await.unwrap_or_default();
        assert!(
            status == StatusCode::BAD_GATEWAY || status == StatusCode::SERVICE_UNAVAILABLE,
            "{path}: {status} {}",
            String::from_utf8_lossy(&body)
        );
        assert!(
            !body.windows(64).any(|w| data.windows(64).next() == Some(w)),
            "{path}: no content"
        );
    }
    assert_eq!(
        registry.blob_bytes(),
        before,
        "nothing reached the registry's blob handler"
    );
    for _ in 0..100 {
        if handshakes() > refused_before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        handshakes() > refused_before,
        "the untrusted mirror did try, and TLS refused it"
    );
    // And it never cached anything to hand out later.
    let again = http
        .get(format!(
            "http://{}/v2/team/app/blobs/{digest}?ns={host}",
            untrusted.proxy
        ))
        .send()
        .await
        .unwrap();
    assert_ne!(again.status(), StatusCode::OK);
}
