#!/usr/bin/env bash
# The multi-host benchmark and fault matrix: hosts in network namespaces with
# tbf-shaped links, the same image pulled four ways, then faults injected.
# Needs root. Installs what it needs (docker-registry for the pull-through
# cache baseline, a font for the plot). Arguments go to `dragonfly-bench run`
# (try --help); results land in --out (default bench-results/).
#   e2e/bench.sh                       # full: 8 hosts, 2 x 128 MiB, every fault
#   PROFILE=debug e2e/bench.sh --hosts 4 --layer-mib 16   # quick functional run
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ "$(id -u)" != 0 ]; then
  echo "e2e/bench.sh: needs root to create network namespaces, veth links and tc qdiscs" >&2
  exit 1
fi
if ! command -v docker-registry >/dev/null || [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] \
   || ! command -v tc >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-registry fonts-dejavu-core iproute2 >/dev/null
fi
# The Debian package starts a registry service on :5000; the benchmark runs
# its own inside namespaces and needs none.
if command -v systemctl >/dev/null && systemctl is-active --quiet docker-registry 2>/dev/null; then
  systemctl stop docker-registry || true
fi

PROFILE="${PROFILE:-release}"
flag=()
[ "$PROFILE" = release ] && flag=(--release)
cargo build "${flag[@]}" --locked -p dragonfly-scheduler -p dragonfly-node-agent -p dragonfly-e2e --bins
exec "target/$PROFILE/dragonfly-bench" run "$@"
