#!/usr/bin/env bash
# All-in-one local cluster: builds the binaries, then runs a scheduler, a seed
# peer and several dfdaemons on loopback addresses, serves a demo file and
# downloads it through every daemon at once. No Kubernetes, no root.
# Extra arguments go to dragonfly-all-in-one (try --help).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
cargo build --release --locked -p dragonfly-scheduler -p dragonfly-node-agent -p dragonfly-e2e --bins
exec target/release/dragonfly-all-in-one "$@"
