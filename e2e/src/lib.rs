//! Loopback harness shared by the all-in-one local cluster and the
//! integration tests: an origin HTTP server that counts what it serves, and
//! supervision of the real scheduler and dfdaemon processes.

pub mod bench;
pub mod netns;
pub mod origin;
pub mod procs;
pub mod registry;
