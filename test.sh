#!/usr/bin/env bash
# The project's test command: formatting, lints, unit tests, loopback
# integration tests with the real binaries, and the operator's offline checks.
# Installs what it needs itself; safe to run on a fresh machine as root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

step() { printf '\n== %s\n' "$*"; }

# The tests are not about disk watermarks (node-agent/tests/disk_watermark.rs
# sets its own on a tmpfs): dfdaemons started by them cache whatever the
# machine's disk looks like (filesystems with large reservations look full).
export DFDAEMON_GC_HIGH_WATERMARK=99 DFDAEMON_GC_LOW_WATERMARK=98

step "toolchain"
cargo --version
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  rustup component add rustfmt clippy
fi

step "format"
cargo fmt --all -- --check

step "lint"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build binaries (the integration tests run them)"
cargo build --workspace --bins --locked

step "unit and integration tests"
cargo test --workspace --locked --no-fail-fast

if [ "$(id -u)" = 0 ]; then
  step "end to end: real registry and containerd pulling through the mirror"
  e2e/mirror/containerd-e2e.sh

  step "end to end: dfdaemon containerd check held to what the real containerd releases of the local cluster do (1.6, 2.2, 2.4; built once, cached outside the repository)"
  # shellcheck source=e2e/containerd/versions.sh
  . e2e/containerd/versions.sh
  e2e/containerd/bypass-matrix.sh 1.6.20 "$CONTAINERD_2_2" "$CONTAINERD_2_4"

  step "end to end: Preheat on real dfdaemons, then pulls with the registry stopped"
  e2e/preheat/preheat-e2e.sh

  step "end to end: the OCI distribution-spec conformance suite through the mirror and against the bare registry, skopeo, crane and oras (tools built once, cached outside the repository)"
  e2e/oci/conformance-e2e.sh

  step "end to end: lazy pull with the real nydus client through the swarm (builds nydus once, cached outside the repository)"
  SKIP_BUILD=1 e2e/nydus/nydus-e2e.sh

  step "Kubernetes end to end: a real local cluster (3 nodes), install by manifests and by Helm, pulls, Preheat, faults, upgrade, uninstall (builds Kubernetes once, cached outside the repository)"
  PROFILE=debug e2e/k8s/run.sh

  step "multi-host run in network namespaces with faults (fails on failed pulls or wrong bytes, never on timings)"
  PROFILE=debug e2e/bench.sh --hosts 4 --layers 2 --layer-mib 16 --faults all --out target/bench-ci
else
  echo "not root: skipping the containerd and network-namespace suites (run as root to include them)"
fi

if [ -x operator/check.sh ]; then
  step "operator: CRDs, manifests and chart"
  operator/check.sh
fi

step "fuzzing: every parser of network input, 10 s per cargo-fuzz target (nightly, built once; long runs: fuzz/run.sh SECONDS)"
fuzz/run.sh 10
