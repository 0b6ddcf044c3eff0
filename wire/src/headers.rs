//! HTTP header names of the registry mirror (names are case-insensitive;
//! these are the lowercase forms HTTP/2 requires).

/// The upstream registry a mirror request is for, e.g.
/// `https://registry.example.com`. containerd sends it from the mirror's
/// hosts.toml; the operator sends it when it preheats through a mirror.
pub const REGISTRY: &str = "x-dragonfly-registry";

/// Loop guard: the host ids of the dfdaemons a request went through.
pub const VIA: &str = "x-dragonfly-via";
