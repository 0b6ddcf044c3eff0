//! dragonfly-operator: turns a `DragonflyCluster` into schedulers, seed peers and
//! a dfdaemon on every node, and `Preheat`s into downloads on them (`preheat/`).
//!
//! Reconcile is a pipeline, one module per step:
//! `validate` → `build` (pure) → `apply` (server-side apply, prune) → `status`.

pub mod apply;
pub mod availability;
pub mod build;
pub mod bypass;
pub mod ca_bundles;
pub mod causes;
pub mod certs;
pub mod cluster_ca;
pub mod controller;
pub mod crd;
pub mod crd_manage;
pub mod crd_rules;
pub mod crdgen;
pub mod issuer;
pub mod kube_version;
pub mod leader;
pub mod manifests;
pub mod metrics;
pub mod node_agents;
pub mod nodes;
pub mod preheat;
pub mod run;
pub mod seed_storage;
pub mod status;
pub mod uninstall;
pub mod validate;

#[cfg(test)]
pub(crate) mod fake_api;
