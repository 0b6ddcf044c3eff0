#!/usr/bin/env bash
# One worker node: started by up.sh inside the node's network namespace. It
# gives the node private copies of the host paths a node owns (containerd's
# config and state, the kubelet's, /var/lib/dragonfly, CNI), so hostPath
# volumes of pods on this node see this node's files only, then runs
# containerd and the kubelet. Both share this mount namespace, which
# start (lib.sh) made for this process tree.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
. "$here/lib.sh"
n=$1 bin=$2
name=$(node_name "$n")
dir=$K8S_RUN/nodes/$name

# The host paths a node owns, each bound to this node's directory.
for p in /etc/containerd /var/lib/containerd /run/containerd /var/lib/kubelet \
  /var/log/pods /var/log/containers /var/lib/dragonfly /run/dragonfly \
  /etc/cni/net.d /var/lib/cni /run/netns; do
  mkdir -p "$p" "$dir/root$p"
  mount --bind "$dir/root$p" "$p"
done
# containerd makes pod network namespaces here; they must be visible to the
# CNI plugins it runs (same mount namespace) and to nobody else.
mount --make-shared /run/netns 2>/dev/null || true

# The kubelet's cgroupRoot: one tree per node in every hierarchy, made here
# because the kubelet expects it to exist.
for h in /sys/fs/cgroup/*/; do
  mkdir -p "$h$name"
done
if [ -d /sys/fs/cgroup/cpuset ]; then
  cat /sys/fs/cgroup/cpuset/cpuset.cpus >"/sys/fs/cgroup/cpuset/$name/cpuset.cpus"
  cat /sys/fs/cgroup/cpuset/cpuset.mems >"/sys/fs/cgroup/cpuset/$name/cpuset.mems"
fi

# A node of a containerd release built from its Go module runs that
# release's containerd (and its shim, found next to it on PATH).
if [ -s "$dir/containerd-bin" ]; then
  PATH="$(cat "$dir/containerd-bin"):$PATH"
fi
containerd --config /etc/containerd/config.toml >"$K8S_RUN/logs/$name-containerd.log" 2>&1 &
echo $! >"$K8S_RUN/pids/$name-containerd"
wait_for 60 "containerd on $name" test -S /run/containerd/containerd.sock

exec "$bin/kubelet" --config "$dir/kubelet.yaml" --kubeconfig "$dir/kubelet.kubeconfig" \
  --hostname-override "$name" --node-ip "$(node_ip "$n")" --v=1
