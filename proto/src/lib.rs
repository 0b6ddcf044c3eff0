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

impl ImageTag {
    /// `registry/repository:tag`: names the tag in logs, and routes it to a
    /// scheduler replica (prefixed with `tag:`) the way task ids are routed.
    pub fn name(&self) -> String {
        format!("{}/{}:{}", self.registry, self.repository, self.tag)
    }
}
