//! `Preheat`: warm images and files into a DragonflyCluster before anyone
//! pulls them, so the first real pull on any node comes from peers.
//!
//! One module per step, data flowing one way:
//! `validate` (spec, with `reference` and `platform`) → `resolve` (registry:
//! tag → digest → platform manifests → blobs) → `targets` (which dfdaemon
//! pods) → `execute` (drive the dfdaemons' mirror and task API) → `status`
//! (progress, transitions, conditions). `job` holds one run in memory;
//! `controller` runs it from Kubernetes, `local` from the command line.

pub mod controller;
pub mod crd;
pub mod credentials;
pub mod execute;
pub mod job;
pub mod local;
pub mod platform;
pub mod reference;
pub mod resolve;
pub mod status;
pub mod targets;
pub mod validate;

#[cfg(test)]
pub(crate) mod fakes;

pub use crd::{Preheat, PreheatSpec, PreheatStatus};
