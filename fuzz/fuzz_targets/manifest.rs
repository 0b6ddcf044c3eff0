//! Manifest and index bodies from a registry or a peer (media type
//! detection), and the Accept lists clients send.
//!
//! Input: the body; for the Accept check, the body read as UTF-8.
//! Invariants: the media type is one of the manifest types or
//! `application/octet-stream`, the latter exactly for bodies that are not
//! JSON; an empty Accept or one listing `*/*` or the type takes it; the
//! references a manifest grants access to are distinct well-formed sha256
//! digests found in the body, at most `MAX_REFERENCES`.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use node_agent::mirror::manifest::accepts;
use node_agent::mirror::manifest_p2p::media_type;
use node_agent::mirror::references::{referenced_digests, MAX_REFERENCES};

const TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];

fuzz_target!(|data: &[u8]| {
    let body = Bytes::copy_from_slice(data);
    let found = media_type(&body);
    let is_json = serde_json::from_slice::<serde_json::Value>(data).is_ok();
    if is_json {
        assert!(TYPES.contains(&found), "{found:?}");
    } else {
        assert_eq!(found, "application/octet-stream");
    }

    let references = referenced_digests(data);
    assert!(references.len() <= MAX_REFERENCES);
    if !references.is_empty() {
        assert!(is_json);
    }
    for (i, digest) in references.iter().enumerate() {
        let hex = digest.strip_prefix("sha256:").expect("sha256 only");
        assert!(
            hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        assert!(!references[..i].contains(digest), "repeated {digest}");
    }

    if let Ok(accept) = std::str::from_utf8(data) {
        // One type per input (the length picks it), to keep executions fast.
        let t = TYPES[data.len() % TYPES.len()];
        let listed = accepts(accept, t);
        assert!(accepts(&format!("{accept}, {t}"), t), "{accept:?} + {t}");
        assert!(accepts(&format!("{accept},*/*"), t), "{accept:?} + */*");
        if accept
            .split(',')
            .all(|p| p.split(';').next().unwrap_or("").trim().is_empty())
        {
            assert!(listed, "empty Accept {accept:?} refuses {t}");
        }
        let _ = accepts(accept, found);
    }
});
