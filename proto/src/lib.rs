//! The gRPC contract between dfdaemon peers and the scheduler.
//!
//! Bulk piece data never crosses this contract: it moves peer to peer over
//! plain HTTP. The scheduler only learns who holds which pieces and answers
//! with parents to fetch from.

#[allow(clippy::all, clippy::pedantic)]
pub mod scheduler {
    pub mod v1 {
        tonic::include_proto!("dragonfly.scheduler.v1");
    }
}

pub use scheduler::v1::*;
