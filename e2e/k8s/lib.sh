# Shared settings of the local cluster scripts (sourced).
# shellcheck disable=SC2034
K8S_RUN=${K8S_RUN:-/var/lib/dragonfly-k8s}
NODES=${NODES:-3}
NS_PREFIX=dfk
FABRIC=$NS_PREFIX-fabric
CP=$NS_PREFIX-cp
REG=$NS_PREFIX-reg
HOST_IP=10.99.0.254
CP_IP=10.99.0.10
REG_IP=10.99.0.2
REGISTRY=$REG_IP:5000
PRIVATE_REGISTRY=$REG_IP:5001
# Anonymous, over TLS with a certificate from a CA of its own (not in any
# trust store): the cluster must be given the CA to mirror it.
TLS_REGISTRY=$REG_IP:5443
TLS_REGISTRY_CA=$K8S_RUN/registry/tls/ca.crt
SERVICE_CIDR=10.96.0.0/16
KUBERNETES_SVC_IP=10.96.0.1
DNS_IP=10.96.0.10
CLUSTER_CIDR=10.244.0.0/16
node_name() { echo "$NS_PREFIX-node$1"; }
node_ip() { echo "10.99.0.$((20 + $1))"; }
node_cidr() { echo "10.244.$1.0/24"; }
# node_containerd N: the containerd release node N runs (versions.sh).
node_containerd() {
  # shellcheck source=versions.sh
  . "$(dirname "${BASH_SOURCE[0]}")/versions.sh"
  echo "${NODE_CONTAINERD[$((($1 - 1) % ${#NODE_CONTAINERD[@]}))]}"
}
log() { printf '%s k8s: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }
# wait_for SECONDS DESCRIPTION COMMAND...: polls once a second, bounded.
wait_for() {
  local limit=$1 what=$2
  shift 2
  local i
  for ((i = 0; i < limit; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  log "timed out after ${limit}s waiting for $what"
  return 1
}
# start NAME NETNS COMMAND...: a background process in a network namespace
# and a mount namespace of its own (a slave of the host's, so it sees /sys
# and the cgroup mounts as they are: `ip netns exec` would remount /sys and
# hide them), its PID recorded for down.sh, its output in logs/NAME.log.
start() {
  local name=$1 netns=$2
  shift 2
  mkdir -p "$K8S_RUN/logs" "$K8S_RUN/pids"
  setsid nsenter --net="/run/netns/$netns" unshare --mount --propagation slave -- "$@" \
    >"$K8S_RUN/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$K8S_RUN/pids/$name"
}
# The anonymous registry, stopped and started again (same storage) by tests.
registry_stop() {
  kill -TERM "$(cat "$K8S_RUN/pids/registry")" 2>/dev/null || true
  wait_for 20 "registry to stop" sh -c "! curl -s --max-time 1 http://$REGISTRY/v2/"
}
registry_start() {
  start registry "$REG" docker-registry serve "$K8S_RUN/registry/public.yaml"
  wait_for 30 "registry" curl -sf "http://$REGISTRY/v2/"
}
