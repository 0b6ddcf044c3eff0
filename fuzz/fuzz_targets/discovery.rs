//! Content discovery input: a client's tag-list and referrers query, an
//! upstream's `Link` header and its fallback-tag index.
//!
//! Invariants: what goes upstream from a tag-list query is only `n` (digits)
//! and `last` (a tag); a rewritten link always points at the route's own
//! path on the mirror; a referrers answer keeps only descriptors matching
//! the filter; a fallback tag is a valid tag.
#![no_main]

use libfuzzer_sys::fuzz_target;
use node_agent::mirror::discovery;
use node_agent::mirror::route;

const PATH: &str = "/v2/team/app/tags/list";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        let _ = discovery::referrers_index(data, None);
        return;
    };
    if let Ok(query) = discovery::tags_query(Some(text)) {
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "n" => assert!(!v.is_empty() && v.bytes().all(|b| b.is_ascii_digit())),
                "last" => assert!(route::parse_reference(&v).is_ok() && !v.contains(':')),
                other => panic!("{other:?} passed upstream from {text:?}"),
            }
        }
    }
    if let Ok(Some(t)) = discovery::artifact_type(Some(text)) {
        assert!(t.contains('/') && !t.bytes().any(|b| b.is_ascii_control()), "{t:?}");
    }
    if let Some(link) = discovery::rewrite_link(text, "r.io", PATH, Some("r.io")) {
        let target = link
            .strip_prefix('<')
            .and_then(|l| l.split_once('>'))
            .map(|(t, _)| t)
            .unwrap_or_else(|| panic!("{link:?}"));
        let path = target.split_once('?').map_or(target, |(p, _)| p);
        assert_eq!(path, PATH, "{text:?} -> {link:?}");
    }
    if let Some(tag) = discovery::fallback_tag(text) {
        assert!(route::parse_reference(&tag).is_ok(), "{tag:?}");
    }
    let filter = text.split_once('\n').map(|(f, _)| f);
    if let Ok(index) = discovery::referrers_index(data, filter) {
        let manifests = index["manifests"].as_array().expect("manifests");
        if let Some(f) = filter {
            assert!(manifests.iter().all(|d| d["artifactType"] == f));
        }
    }
});
