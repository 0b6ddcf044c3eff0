//! The benchmark image, generated deterministically from a seed so the
//! origin (in its own namespace) and the harness agree on it without
//! shipping gigabytes around: random layers, a config blob, an OCI manifest.

use bytes::Bytes;
use rand::{RngCore, SeedableRng};
use serde_json::json;

use crate::origin::sha256_hex;

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const REPOSITORY: &str = "bench/app";
pub const TAG: &str = "v1";

pub struct Image {
    pub layers: Vec<Bytes>,
    pub config: Bytes,
    pub manifest: Bytes,
}

impl Image {
    pub fn generate(seed: u64, layers: usize, layer_bytes: usize) -> Image {
        let layers: Vec<Bytes> = (0..layers)
            .map(|i| {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(i as u64));
                let mut data = vec![0u8; layer_bytes];
                rng.fill_bytes(&mut data);
                Bytes::from(data)
            })
            .collect();
        let config = Bytes::from(
            serde_json::to_vec(&json!({
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| sha256_hex(l)).collect::<Vec<_>>()},
                "config": {"Cmd": ["/bin/true"]},
            }))
            .unwrap_or_default(),
        );
        let manifest = Bytes::from(
            serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": MANIFEST_MEDIA_TYPE,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": sha256_hex(&config),
                    "size": config.len(),
                },
                "layers": layers.iter().map(|l| json!({
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": sha256_hex(l),
                    "size": l.len(),
                })).collect::<Vec<_>>(),
            }))
            .unwrap_or_default(),
        );
        Image {
            layers,
            config,
            manifest,
        }
    }

    /// Pieces dfdaemon cuts the image's blobs into (config and layers), by
    /// the rule every dfdaemon follows.
    pub fn pieces(&self) -> u64 {
        std::iter::once(&self.config)
            .chain(&self.layers)
            .map(|blob| {
                let len = blob.len() as u64;
                wire::piece_length::piece_count(
                    len,
                    wire::piece_length::piece_length_for(Some(len)),
                ) as u64
            })
            .sum()
    }

    /// Bytes a puller downloads: config and layers.
    pub fn size(&self) -> u64 {
        self.config.len() as u64 + self.layers.iter().map(|l| l.len() as u64).sum::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_image() {
        let a = Image::generate(7, 2, 1000);
        let b = Image::generate(7, 2, 1000);
        assert_eq!(a.manifest, b.manifest);
        assert_ne!(a.layers[0], a.layers[1]);
        assert_ne!(Image::generate(8, 2, 1000).manifest, a.manifest);
        assert_eq!(a.size(), 2000 + a.config.len() as u64);
        // One piece each for the config and two small layers; 512 KiB
        // pieces for a 3 MiB layer.
        assert_eq!(a.pieces(), 3);
        assert_eq!(Image::generate(7, 1, 3 << 20).pieces(), 7);
    }
}
