//! What a manifest read proves. A registry accepts a manifest into a
//! repository only when everything it references is there, so the
//! credentials that read a manifest under a repository may read its config,
//! its layers and the manifests of an index under that repository too. The
//! access cache learns those yeses from the manifest itself, and a pull
//! costs the registry no access check per blob.

use serde_json::Value;

use super::auth::AuthKey;
use super::state::{Ctx, Mirror};

/// References taken from one manifest; an index of more platforms than
/// this still works, the rest checked one by one.
pub const MAX_REFERENCES: usize = 1024;

/// The digests `body` references (config, layers, an index's manifests, an
/// artifact's blobs, a schema-1 manifest's `blobSum`s), each a well-formed
/// `sha256:<64 hex>`, at most [`MAX_REFERENCES`], without repeats. Nothing
/// for a body that is not a JSON object.
pub fn referenced_digests(body: &[u8]) -> Vec<String> {
    let Ok(Value::Object(manifest)) = serde_json::from_slice::<Value>(body) else {
        return Vec::new();
    };
    let descriptors = |field: &str| -> Vec<&Value> {
        match manifest.get(field) {
            Some(Value::Array(items)) => items.iter().collect(),
            Some(one @ Value::Object(_)) => vec![one],
            _ => Vec::new(),
        }
    };
    let mut out: Vec<String> = Vec::new();
    let candidates = ["config", "layers", "manifests", "blobs"]
        .into_iter()
        .flat_map(|field| descriptors(field).into_iter().map(|d| d.get("digest")))
        .chain(
            descriptors("fsLayers")
                .into_iter()
                .map(|d| d.get("blobSum")),
        );
    for digest in candidates.flatten().filter_map(Value::as_str) {
        if out.len() >= MAX_REFERENCES {
            break;
        }
        if is_sha256(digest) && !out.iter().any(|d| d == digest) {
            out.push(digest.to_string());
        }
    }
    out
}

fn is_sha256(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// The caller just read `body`, a manifest of `name`, with the registry's
/// yes: its references are readable with the same credentials.
pub fn grant(mirror: &Mirror, ctx: &Ctx, name: &str, body: &[u8]) {
    for digest in referenced_digests(body) {
        grant_one(mirror, ctx, name, &digest);
    }
}

/// The caller may read the object `digest` under `name`, as the registry
/// showed; shared with the cluster when read without credentials.
pub fn grant_one(mirror: &Mirror, ctx: &Ctx, name: &str, digest: &str) {
    if !is_sha256(digest) {
        return;
    }
    let key = AuthKey::blob(&ctx.upstream.host, name, digest, ctx.authorization());
    // Known already: the scheduler heard of it within the access TTL, so a
    // pod restarting in a loop does not turn into a stream of reports.
    if mirror.auth.is_fresh(&key) {
        return;
    }
    mirror.auth.record_allowed(&key);
    super::anonymous::share(mirror, &key);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn every_kind_of_manifest_names_its_references() {
        let image = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{}"}},"layers":[{{"digest":"{}"}},{{"digest":"{}"}},{{"digest":"{}"}}],"subject":{{"digest":"{}"}}}}"#,
            d('a'),
            d('b'),
            d('c'),
            d('b'),
            d('f')
        );
        // The subject is another manifest, not something this one needs.
        assert_eq!(
            referenced_digests(image.as_bytes()),
            [d('a'), d('b'), d('c')]
        );
        let index = format!(
            r#"{{"manifests":[{{"digest":"{}","platform":{{}}}},{{"digest":"{}"}}]}}"#,
            d('1'),
            d('2')
        );
        assert_eq!(referenced_digests(index.as_bytes()), [d('1'), d('2')]);
        let artifact = format!(r#"{{"blobs":[{{"digest":"{}"}}]}}"#, d('3'));
        assert_eq!(referenced_digests(artifact.as_bytes()), [d('3')]);
        let schema1 = format!(r#"{{"fsLayers":[{{"blobSum":"{}"}}]}}"#, d('4'));
        assert_eq!(referenced_digests(schema1.as_bytes()), [d('4')]);
    }

    #[test]
    fn malformed_digests_and_bodies_grant_nothing() {
        for body in [
            "not json".to_string(),
            "[]".to_string(),
            r#"{"layers":"sha256:x"}"#.to_string(),
            r#"{"layers":[{"digest":"sha256:ABC"}]}"#.to_string(),
            format!(
                r#"{{"layers":[{{"digest":"sha512:{}"}}]}}"#,
                "a".repeat(128)
            ),
            format!(r#"{{"layers":[{{"digest":"{}x"}}]}}"#, d('a')),
            format!(r#"{{"layers":[{{"digest":7}}, {{"size":"{}"}}]}}"#, d('a')),
        ] {
            assert!(referenced_digests(body.as_bytes()).is_empty(), "{body}");
        }
    }

    #[test]
    fn references_are_capped() {
        let layers: Vec<String> = (0..MAX_REFERENCES + 10)
            .map(|i| format!(r#"{{"digest":"sha256:{i:064x}"}}"#))
            .collect();
        let body = format!(r#"{{"layers":[{}]}}"#, layers.join(","));
        assert_eq!(referenced_digests(body.as_bytes()).len(), MAX_REFERENCES);
    }
}
