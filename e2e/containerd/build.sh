#!/usr/bin/env bash
# Builds `containerd`, `ctr` and the runc shim (`containerd-shim-runc-v2`,
# which the local Kubernetes cluster's nodes need to run containers) from
# the Go module proxy, once per version,
# into a cache outside the repository:
#   /var/cache/dragonfly-e2e/containerd-$VERSION/bin
# Debian only packages containerd 1.6, and the check in
# node-agent/src/containerd/check.rs must be measured against the real 1.7
# and 2.x daemons, whose config layout and CRI pull path differ.
# Usage: e2e/containerd/build.sh [VERSION...]   (default: every pinned version)
# Prints one bin directory per version on stdout; everything else to stderr.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.sh
. "$here/versions.sh"

CACHE_ROOT=${CONTAINERD_CACHE:-/var/cache/dragonfly-e2e}
[ "$#" -gt 0 ] || set -- "${CONTAINERD_VERSIONS[@]}"

command -v go >/dev/null || { echo "build.sh: go is not installed" >&2; exit 1; }
# -mod=mod: `go install pkg@version` must resolve containerd's own go.mod
# without a vendor directory; -buildvcs=false: there is no VCS checkout.
export GOFLAGS="-mod=mod -buildvcs=false"

for version in "$@"; do
  case $version in
    v*) ;;
    *) version=v$version ;;
  esac
  case $version in
    v2.*) module=github.com/containerd/containerd/v2 ;;
    v1.*) module=github.com/containerd/containerd ;;
    *) echo "build.sh: unsupported version $version" >&2; exit 1 ;;
  esac
  bin=$CACHE_ROOT/containerd-$version/bin
  if [ -x "$bin/containerd" ] && [ -x "$bin/ctr" ] && [ -x "$bin/containerd-shim-runc-v2" ]; then
    echo "build.sh: containerd $version already in $bin" >&2
    echo "$bin"
    continue
  fi
  # Build into a scratch directory and rename at the end, so an interrupted
  # build never leaves a half-filled bin that a later run would skip.
  tmp=$CACHE_ROOT/containerd-$version/bin.tmp
  rm -rf "$tmp"
  mkdir -p "$tmp"
  echo "build.sh: building containerd $version into $bin" >&2
  start=$(date +%s)
  # no_btrfs: the btrfs snapshotter needs libbtrfs headers that are not
  # installed and the rig never uses it. The -X flags make `containerd
  # --version` print the release (the Makefile does the same); without them
  # it reports a placeholder.
  ldflags="-X $module/version.Version=$version -X $module/version.Revision=go-module-proxy"
  gomod=$(go mod download -json "$module@$version" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  if ! grep -qE '^(exclude|replace)\b' "$gomod"; then
    GOBIN=$tmp nice -n 10 go install -tags no_btrfs -ldflags "$ldflags" \
      "$module/cmd/containerd@$version" "$module/cmd/ctr@$version" \
      "$module/cmd/containerd-shim-runc-v2@$version" >&2
  else
    # `go install pkg@version` refuses a module whose go.mod has exclude or
    # replace directives (v1.7.x, v2.0.x, v2.1.x do). Build it as the one
    # requirement of a throwaway main module carrying the same directives,
    # so the dependency versions are the ones the release selects.
    src=$CACHE_ROOT/containerd-$version/src
    rm -rf "$src"
    mkdir -p "$src"
    {
      echo "module dragonfly.local/containerd-build"
      echo
      grep -E '^go [0-9.]+$' "$gomod"
      echo
      echo "require $module $version"
      echo
      # Every exclude/replace line or block, as written upstream.
      awk '/^(exclude|replace) *\(/ {blk=1} blk {print; if (/^\)/) blk=0; next} /^(exclude|replace) / {print}' "$gomod"
    } >"$src/go.mod"
    (cd "$src" && nice -n 10 go build -tags no_btrfs -ldflags "$ldflags" -o "$tmp/" \
      "$module/cmd/containerd" "$module/cmd/ctr" "$module/cmd/containerd-shim-runc-v2" >&2)
  fi
  rm -rf "$bin"
  mv "$tmp" "$bin"
  echo "build.sh: containerd $version built in $(( $(date +%s) - start )) s" >&2
  "$bin/containerd" --version >&2
  echo "$bin"
done
