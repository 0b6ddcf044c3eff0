#!/usr/bin/env bash
# Builds the local cluster's Kubernetes components from their Go modules, once
# per pinned version, into a cache outside the repository:
#   kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy
#   kubectl (one `go build`, so shared packages compile once) and helm (in
#   the same module: helm's k8s.io libraries are the same release line),
#   etcd (go.etcd.io/etcd/server at the version Kubernetes itself uses), and
#   coredns (its own module: its plugin tree pins other versions), with only
#   the plugins the local cluster's Corefile uses: the full tree (cloud DNS
#   providers and their SDKs) costs minutes more on a fresh machine.
# Prints the bin directory on stdout; everything else goes to stderr.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.sh
. "$here/versions.sh"

CACHE=${K8S_CACHE:-/var/cache/dragonfly-e2e/k8s-$K8S_VERSION-helm-$HELM_VERSION-etcd-$ETCD_VERSION-coredns-$COREDNS_VERSION}
BIN=$CACHE/bin
want_k8s=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl helm etcd)
have_k8s() { for b in "${want_k8s[@]}"; do [ -x "$BIN/$b" ] || return 1; done; }
# The marker tells the slim CoreDNS from a full one a cache may still hold.
have_coredns() { [ -x "$BIN/coredns" ] && [ -e "$BIN/coredns.slim" ]; }
have_all() { have_k8s && have_coredns; }
if have_all; then echo "$BIN"; exit 0; fi

command -v go >/dev/null || { echo "build.sh: go is not installed" >&2; exit 1; }
export GOFLAGS="-buildvcs=false -mod=mod"
export CGO_ENABLED=0
src=$CACHE/src
mkdir -p "$src/k8s" "$src/coredns" "$BIN"

k8s_mod() { # go.mod that builds the k8s.io/kubernetes commands as a dependency
  local dir=$1 minor=${K8S_VERSION#v1.}
  local staging="v0.$minor"
  go mod download -json "k8s.io/kubernetes@$K8S_VERSION" >"$dir/k8s.json"
  local upstream
  upstream=$(sed -n 's/.*"GoMod": "\(.*\)".*/\1/p' "$dir/k8s.json")
  {
    echo "module dragonfly.local/k8s-build"
    echo
    echo "go 1.24"
    echo
    echo "require ("
    echo "	k8s.io/kubernetes $K8S_VERSION"
    echo "	helm.sh/helm/v3 $HELM_VERSION"
    echo "	go.etcd.io/etcd/server/v3 $ETCD_VERSION"
    echo ")"
    echo
    # Kubernetes replaces its staging modules with local paths; a consumer
    # names the published v0.x.y that belongs to the same release.
    grep -E '^\s*k8s.io/[a-z0-9-]+ => \./staging' "$upstream" |
      awk -v v="$staging" '{print "replace " $1 " => " $1 " " v}'
  } >"$dir/go.mod"
  cat >"$dir/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "helm.sh/helm/v3/cmd/helm"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
GO
}

ldflags_k8s() {
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  local v
  for v in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    printf -- '-X %s.gitVersion=%s -X %s.gitMajor=1 -X %s.gitMinor=%s -X %s.gitTreeState=clean -X %s.buildDate=2000-01-01T00:00:00Z ' \
      "$v" "$K8S_VERSION" "$v" "$v" "$minor" "$v" "$v"
  done
  printf -- '-X helm.sh/helm/v3/internal/version.version=%s ' "$HELM_VERSION"
  printf -- '-s -w'
}

start=$(date +%s)
have_k8s || (
  echo "build.sh: Kubernetes $K8S_VERSION, helm $HELM_VERSION, etcd $ETCD_VERSION into $BIN" >&2
  cd "$src/k8s"
  k8s_mod "$src/k8s"
  go mod tidy -e >&2 2>"$src/k8s/tidy.log" || true
  go build -trimpath -ldflags "$(ldflags_k8s)" -o "$BIN/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubelet \
    k8s.io/kubernetes/cmd/kube-proxy \
    k8s.io/kubernetes/cmd/kubectl \
    helm.sh/helm/v3/cmd/helm \
    go.etcd.io/etcd/server/v3 >&2
  [ -x "$BIN/v3" ] && mv "$BIN/v3" "$BIN/etcd"
  [ -x "$BIN/server" ] && mv "$BIN/server" "$BIN/etcd"
  echo "build.sh: kubernetes, helm and etcd built in $(( $(date +%s) - start )) s" >&2
)
start=$(date +%s)
have_coredns || (
  cd "$src/coredns"
  rm -f tools.go go.sum "$BIN/coredns.slim"
  cat >go.mod <<GOMOD
module dragonfly.local/coredns-build

go 1.24

require github.com/coredns/coredns $COREDNS_VERSION
GOMOD
  # The plugins of up.sh's Corefile, and nothing else.
  cat >main.go <<'GO'
package main

import (
	_ "github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

func main() { coremain.Run() }
GO
  go mod tidy -e >&2 2>"$src/coredns/tidy.log" || true
  go build -trimpath -ldflags "-s -w" -o "$BIN/coredns" . >&2
  plugins=$("$BIN/coredns" -plugins)
  for p in cache errors health kubernetes loop ready reload; do
    grep -Eq "^(dns\.)?$p\$" <<<"$plugins" || { echo "build.sh: coredns lacks the $p plugin" >&2; exit 1; }
  done
  touch "$BIN/coredns.slim"
  echo "build.sh: coredns (slim) built in $(( $(date +%s) - start )) s" >&2
)
have_all || { echo "build.sh: missing binaries in $BIN" >&2; ls "$BIN" >&2; exit 1; }
echo "$BIN"
