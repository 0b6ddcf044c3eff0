//! The multi-host benchmark and fault matrix in network namespaces, and
//! two loopback figures: dfdaemon's memory while streaming a large blob,
//! and one parent's throughput to one child.

pub mod cluster;
pub mod image;
pub mod links;
pub mod loopback;
pub mod memory;
pub mod mirror_read;
pub mod plot;
pub mod pull;
pub mod report;
pub mod rss;
pub mod scenarios;
pub mod synthetic;
pub mod waves;
