#!/usr/bin/env bash
# Builds the OCI client tools of the conformance end-to-end test from their
# Go modules, once per pinned version, into a cache outside the repository:
#   conformance  the OCI distribution-spec conformance suite
#   oras         an OCI artifact client (push, attach, discover, pull)
#   crane        go-containerregistry's registry client
# Prints the bin directory on stdout; everything else goes to stderr.
set -euo pipefail

CONFORMANCE_VERSION=v0.0.0-20260831232431-97274622c111
ORAS_VERSION=v1.3.6
CRANE_VERSION=v0.22.1

CACHE=${OCI_TOOLS_CACHE:-/var/cache/dragonfly-e2e/oci-tools-conformance-$CONFORMANCE_VERSION-oras-$ORAS_VERSION-crane-$CRANE_VERSION}
BIN=$CACHE/bin
want=(conformance oras crane)
have_all() { for b in "${want[@]}"; do [ -x "$BIN/$b" ] || return 1; done; }
if have_all; then echo "$BIN"; exit 0; fi

command -v go >/dev/null || { echo "tools.sh: go is not installed" >&2; exit 1; }
export GOFLAGS="-buildvcs=false" CGO_ENABLED=0 GOBIN=$BIN
mkdir -p "$BIN"
start=$(date +%s)
go install -trimpath -ldflags "-s -w" "github.com/opencontainers/distribution-spec/conformance@$CONFORMANCE_VERSION" >&2
go install -trimpath -ldflags "-s -w" "oras.land/oras/cmd/oras@$ORAS_VERSION" >&2
go install -trimpath -ldflags "-s -w" "github.com/google/go-containerregistry/cmd/crane@$CRANE_VERSION" >&2
have_all || { echo "tools.sh: a tool is missing after the build" >&2; exit 1; }
echo "tools.sh: built ${want[*]} in $(($(date +%s) - start)) s" >&2
echo "$BIN"
