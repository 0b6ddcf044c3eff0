#!/usr/bin/env bash
# Tears down the local cluster that up.sh made: every process it started (by
# PID, then whatever still runs in its network namespaces or in the nodes'
# pod cgroups), the namespaces, the host veth, the cgroups and the run
# directory. Safe to run twice, or after a half-finished up.sh.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
. "$here/lib.sh"
[ "$(id -u)" = 0 ] || die "run as root"

# Kubelets first, so they do not restart what is killed below.
if [ -d "$K8S_RUN/pids" ]; then
  for f in "$K8S_RUN"/pids/*-kubelet "$K8S_RUN"/pids/*; do
    [ -f "$f" ] || continue
    kill -TERM "$(cat "$f")" 2>/dev/null
  done
  sleep 1
  for f in "$K8S_RUN"/pids/*; do
    [ -f "$f" ] || continue
    kill -KILL "$(cat "$f")" 2>/dev/null
  done
fi
# Containers and shims outlive containerd: end everything left in the
# nodes' pod cgroups and in the cluster's network namespaces.
for round in 1 2 3; do
  pids=$(
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$NS_PREFIX-"); do ip netns pids "$ns" 2>/dev/null; done
    find /sys/fs/cgroup/*/"$NS_PREFIX"-node* -name cgroup.procs -exec cat {} + 2>/dev/null
  )
  [ -z "$pids" ] && break
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null
  sleep 1
done
# Cgroups, deepest first.
for c in /sys/fs/cgroup/*/"$NS_PREFIX"-node*; do
  [ -d "$c" ] && find "$c" -depth -type d -exec rmdir {} + 2>/dev/null
done
# Pod network namespaces that containerd left in the shared /run/netns.
for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$NS_PREFIX-"); do
  ip netns del "$ns" 2>/dev/null
done
ip link del "$NS_PREFIX-host" 2>/dev/null
# Mounts only ever lived in the nodes' private mount namespaces, which ended
# with their processes; anything still mounted under the run dir is a leak.
if mount | grep -q " $K8S_RUN/"; then
  mount | awk -v d="$K8S_RUN/" 'index($3, d) == 1 {print $3}' | sort -r | xargs -r umount -l
fi
rm -rf "$K8S_RUN"
log "down"
