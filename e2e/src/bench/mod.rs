//! The multi-host benchmark and fault matrix in network namespaces.

pub mod cluster;
pub mod image;
pub mod plot;
pub mod pull;
pub mod report;
pub mod rss;
pub mod scenarios;
pub mod waves;
