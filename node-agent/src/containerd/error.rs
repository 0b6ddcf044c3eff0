//! What can go wrong reading or editing containerd's configuration.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    #[error("invalid registry {0:?}: {1}")]
    BadRegistry(String, String),
    #[error("invalid hosts.toml: {0}")]
    BadHostsToml(String),
    #[error("invalid containerd config: {0}")]
    BadConfig(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}
