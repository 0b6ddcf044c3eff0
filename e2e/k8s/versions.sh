# Pinned versions of the local cluster's components (sourced by the scripts).
# Kubernetes 1.34: the last minor whose kubelet runs on cgroup v1 without an
# opt-out and speaks to Debian's containerd 1.6 (CRI v1).
K8S_VERSION=v1.34.4
# helm 3.19 is built on the k8s.io v0.34 libraries, so it shares the build.
HELM_VERSION=v3.19.0
# The etcd release Kubernetes 1.34 itself is tested with.
ETCD_VERSION=v3.6.4
COREDNS_VERSION=v1.13.1
# containerd of each node, in node order (repeating past the last): Debian's
# 1.6 (config version 2), then 2.2 and 2.4 built from their Go modules
# (e2e/containerd/build.sh, cached outside the repository), each with the
# config its own `containerd config default` writes (version 3 and 4).
NODE_CONTAINERD=(debian v2.2.10 v2.4.2)
