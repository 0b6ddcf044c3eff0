//! OCI distribution paths a client sends to the mirror.
//!
//! Invariants: a recognised route carries only names, tags and digests of
//! the distribution grammar (nothing that could leave the repository in a
//! file path or change the upstream URL), and it prints back to the very
//! path it was parsed from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use node_agent::mirror::route::{self, Reference, Route};

fn check_name(name: &str) {
    assert!(route::validate_name(name).is_ok());
    assert!(!name.is_empty() && name.len() <= 255, "{name:?}");
    for component in name.split('/') {
        assert!(
            !component.is_empty() && component != "." && component != "..",
            "{name:?}"
        );
    }
    assert!(
        name.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b)),
        "{name:?}"
    );
}

fn check_digest(digest: &str) {
    assert!(route::is_valid_digest(digest));
    assert!(
        digest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+._-:=".contains(&b)),
        "{digest:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    // The mirror parses the percent-decoded path, which is UTF-8.
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = route::parse(path);
    match &parsed {
        Ok(Route::Base) => assert!(path == "/v2" || path == "/v2/", "{path:?}"),
        Ok(Route::Manifest { name, reference }) => {
            check_name(name);
            match reference {
                Reference::Tag(tag) => {
                    assert!(!tag.is_empty() && tag.len() <= 128, "{tag:?}");
                    assert!(
                        tag.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)),
                        "{tag:?}"
                    );
                    assert!(!tag.starts_with('.') && !tag.starts_with('-'), "{tag:?}");
                }
                Reference::Digest(digest) => check_digest(digest),
            }
            assert_eq!(path, format!("/v2/{name}/manifests/{}", reference.as_str()));
            assert_eq!(
                route::parse_reference(reference.as_str()).as_ref(),
                Ok(reference)
            );
        }
        Ok(Route::Blob { name, digest }) => {
            check_name(name);
            check_digest(digest);
            assert_eq!(path, format!("/v2/{name}/blobs/{digest}"));
        }
        Ok(Route::Tags { name }) => {
            check_name(name);
            assert_eq!(path, format!("/v2/{name}/tags/list"));
        }
        Ok(Route::Referrers { name, digest }) => {
            check_name(name);
            check_digest(digest);
            assert_eq!(path, format!("/v2/{name}/referrers/{digest}"));
        }
        Err(_) => {}
    }
    // The pieces on their own, on the whole input.
    if route::validate_name(path).is_ok() {
        check_name(path);
    }
    if route::is_valid_digest(path) {
        check_digest(path);
    }
    let _ = route::parse_reference(path);
});
