//! A client that pulls like containerd does: the manifest by tag, then the
//! config and layers (three at a time), every blob checked against its
//! digest while it streams. Through a mirror it sends the mirror's header
//! and `?ns=`, as containerd does with a hosts.toml mirror.

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

use super::image::MANIFEST_MEDIA_TYPE;

#[derive(Debug, Clone)]
pub struct PullTarget {
    /// Base URL the requests go to (origin, pull-through cache or mirror).
    pub base: String,
    pub repository: String,
    pub tag: String,
    /// Extra headers (e.g. X-Dragonfly-Registry for the mirror).
    pub headers: Vec<(String, String)>,
    /// `ns` query parameter, as containerd adds for mirrors.
    pub ns: Option<String>,
    pub concurrency: usize,
    /// Attempts per blob (a retry resumes nothing: the blob is fetched again).
    pub attempts: u32,
    /// Fetch blobs through this dfdaemon task API (`http://127.0.0.1:65003`)
    /// instead of GETs to `base`; the manifest still comes from `base`.
    pub task_api: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct PullResult {
    pub ok: bool,
    pub seconds: f64,
    pub bytes: u64,
    /// Blobs whose bytes did not match their digest.
    pub corrupt_blobs: u32,
    pub retries: u32,
    pub error: Option<String>,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
}

#[derive(Deserialize)]
struct Manifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

enum BlobError {
    Corrupt,
    Failed(String),
}

impl PullTarget {
    fn url(&self, path: &str) -> String {
        match &self.ns {
            Some(ns) => format!("{}{path}?ns={ns}", self.base),
            None => format!("{}{path}", self.base),
        }
    }

    fn get(&self, client: &reqwest::Client, url: String) -> reqwest::RequestBuilder {
        let mut req = client.get(url);
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        req
    }

    async fn blob_response(
        &self,
        client: &reqwest::Client,
        digest: &str,
    ) -> Result<reqwest::Response, BlobError> {
        let url = self.url(&format!("/v2/{}/blobs/{digest}", self.repository));
        let failed = |e: reqwest::Error| BlobError::Failed(e.to_string());
        let Some(api) = &self.task_api else {
            return self.get(client, url).send().await.map_err(failed);
        };
        let started: serde_json::Value = client
            .post(format!("{api}/api/v1/tasks"))
            .json(&serde_json::json!({ "url": url, "digest": digest }))
            .send()
            .await
            .map_err(failed)?
            .error_for_status()
            .map_err(failed)?
            .json()
            .await
            .map_err(failed)?;
        let task = started["task_id"].as_str().unwrap_or_default();
        client
            .get(format!("{api}/api/v1/tasks/{task}/content"))
            .send()
            .await
            .map_err(failed)
    }

    async fn blob(&self, client: &reqwest::Client, digest: &str) -> Result<u64, BlobError> {
        let resp = self.blob_response(client, digest).await?;
        if !resp.status().is_success() {
            return Err(BlobError::Failed(format!("{digest}: {}", resp.status())));
        }
        let mut hasher = Sha256::new();
        let mut bytes = 0u64;
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| BlobError::Failed(format!("{digest}: {e}")))?;
            hasher.update(&chunk);
            bytes += chunk.len() as u64;
        }
        if format!("sha256:{}", hex::encode(hasher.finalize())) != digest {
            return Err(BlobError::Corrupt);
        }
        Ok(bytes)
    }

    pub async fn pull(&self) -> PullResult {
        let started = Instant::now();
        let mut result = PullResult::default();
        let client = match reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .no_proxy()
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                result.error = Some(e.to_string());
                return result;
            }
        };
        let manifest_url = self.url(&format!("/v2/{}/manifests/{}", self.repository, self.tag));
        let manifest: Manifest = match async {
            let resp = self
                .get(&client, manifest_url)
                .header("Accept", MANIFEST_MEDIA_TYPE)
                .send()
                .await?
                .error_for_status()?;
            resp.json::<Manifest>().await
        }
        .await
        {
            Ok(m) => m,
            Err(e) => {
                result.error = Some(format!("manifest: {e}"));
                result.seconds = started.elapsed().as_secs_f64();
                return result;
            }
        };
        let digests: Vec<String> = std::iter::once(manifest.config.digest)
            .chain(manifest.layers.into_iter().map(|l| l.digest))
            .collect();
        let outcomes: Vec<(u64, u32, u32, Option<String>)> = futures::stream::iter(digests)
            .map(|digest| {
                let client = client.clone();
                async move {
                    let (mut retries, mut corrupt) = (0, 0);
                    let mut last = None;
                    for attempt in 0..self.attempts.max(1) {
                        if attempt > 0 {
                            retries += 1;
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        match self.blob(&client, &digest).await {
                            Ok(bytes) => return (bytes, retries, corrupt, None),
                            Err(BlobError::Corrupt) => {
                                corrupt += 1;
                                last = Some(format!("{digest}: content does not match its digest"));
                            }
                            Err(BlobError::Failed(e)) => last = Some(e),
                        }
                    }
                    (0, retries, corrupt, last)
                }
            })
            .buffer_unordered(self.concurrency.max(1))
            .collect()
            .await;
        result.ok = true;
        for (bytes, retries, corrupt, error) in outcomes {
            result.bytes += bytes;
            result.retries += retries;
            result.corrupt_blobs += corrupt;
            if let Some(e) = error {
                result.ok = false;
                result.error.get_or_insert(e);
            }
        }
        result.seconds = started.elapsed().as_secs_f64();
        result
    }
}
