#!/usr/bin/env bash
# Installs the nydus tools (nydusd, nydus-image) used by the lazy-pull
# end-to-end test. Building them takes minutes, so the result is cached
# outside the repository (NYDUS_CACHE, default /var/cache/dragonfly-e2e/nydus)
# and reused by later runs on the same machine.
# Prints the directory holding the binaries.
set -euo pipefail

VERSION=2.2.0
CACHE=${NYDUS_CACHE:-/var/cache/dragonfly-e2e/nydus-$VERSION}
BIN=$CACHE/bin

if [ -x "$BIN/nydusd" ] && [ -x "$BIN/nydus-image" ]; then
  echo "$BIN"
  exit 0
fi

if ! command -v cmake >/dev/null 2>&1 || ! command -v fusermount3 >/dev/null 2>&1; then
  echo "installing cmake and fuse3" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake fuse3 >&2
fi

mkdir -p "$CACHE"
# A separate target dir keeps the build out of the repository and lets a
# repeated run reuse it after an interruption.
CARGO_TARGET_DIR=$CACHE/build cargo install nydus-rs --version "$VERSION" --locked --root "$CACHE" >&2
rm -rf "$CACHE/build"
echo "$BIN"
