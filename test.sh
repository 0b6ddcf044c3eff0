#!/usr/bin/env bash
# The project's test command: formatting, lints, unit tests, loopback
# integration tests with the real binaries, and the operator's offline checks.
# Installs what it needs itself; safe to run on a fresh machine as root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

step() { printf '\n== %s\n' "$*"; }

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

if [ -x operator/check.sh ]; then
  step "operator: CRDs, manifests and chart"
  operator/check.sh
fi
