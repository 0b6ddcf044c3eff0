# Pinned containerd releases for the e2e rig (sourced by the scripts). Each is
# the newest patch of its line that the Go module proxy serves
# (`go list -m -versions github.com/containerd/containerd/v2` and
# `.../containerd` for 1.7). Debian's 1.6.20 comes from apt, not from here.
# 1.7: the last line with the version-2 config and the CRI plugin as one
# `io.containerd.grpc.v1.cri` table.
CONTAINERD_1_7=v1.7.35
# 2.0: config version 3, CRI split into io.containerd.cri.v1.images/runtime.
CONTAINERD_2_0=v2.0.14
# 2.1: adds use_local_image_pull (the transfer service becomes CRI's default).
CONTAINERD_2_1=v2.1.9
# 2.2: the built-in certs.d default appears (local pull path only).
CONTAINERD_2_2=v2.2.10
# 2.4: `config default` writes version 4 (server sockets move into plugins).
CONTAINERD_2_4=v2.4.2
CONTAINERD_VERSIONS=("$CONTAINERD_1_7" "$CONTAINERD_2_0" "$CONTAINERD_2_1" "$CONTAINERD_2_2" "$CONTAINERD_2_4")
