# Pinned versions of the local cluster's components (sourced by the scripts).
# Kubernetes 1.34: the last minor whose kubelet runs on cgroup v1 without an
# opt-out and speaks to Debian's containerd 1.6 (CRI v1).
K8S_VERSION=v1.34.4
# helm 3.19 is built on the k8s.io v0.34 libraries, so it shares the build.
HELM_VERSION=v3.19.0
# The etcd release Kubernetes 1.34 itself is tested with.
ETCD_VERSION=v3.6.4
COREDNS_VERSION=v1.13.1
