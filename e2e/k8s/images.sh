#!/usr/bin/env bash
# Builds the local cluster's images without a Docker engine (an OCI layout
# per image, assembled with umoci from layer tarballs made here) and pushes
# them to the cluster's registry:
#   pause            a static pause program (pause.c)
#   coredns          the CoreDNS binary built by build.sh
#   dragonfly-p2p/dragonfly, dragonfly-p2p/dragonfly-operator
#                    the product images, built by images/build.sh (amd64
#                    only here) from the binaries up.sh built
# Usage: images.sh system REGISTRY(host:port) K8S_BIN TAG [TAG...]
#        images.sh app REGISTRY REPO TAG MIB [USER:PASS]
#   a test image: busybox plus two layers of MIB MiB of random bytes each in
#   /data; prints the sha256 of each data file (what a pod must read back).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
what=$1 registry=$2
shift 2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# layer DIR OUT.tar: a reproducible tarball of DIR's contents owned by root.
layer() {
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime='@0' -C "$1" -cf "$2" .
}

# image NAME TAG ENTRYPOINT-JSON LAYER.tar... : OCI layout, then push.
image() {
  local name=$1 tag=$2 entry=$3
  shift 3
  local oci="$work/oci-${name//\//-}"
  rm -rf "$oci"
  umoci init --layout "$oci" >/dev/null
  umoci new --image "$oci:$tag"
  local l
  for l in "$@"; do umoci raw add-layer --image "$oci:$tag" "$l"; done
  local args=()
  local e
  while IFS= read -r e; do args+=(--config.entrypoint "$e"); done < <(printf '%s' "$entry" | jq -r '.[]')
  umoci config --image "$oci:$tag" "${args[@]}" --config.user 0:0 \
    --config.env PATH=/usr/local/bin:/usr/bin:/bin --architecture amd64 --os linux
  local creds=()
  [ -n "${PUSH_CREDS:-}" ] && creds=(--dest-creds "$PUSH_CREDS")
  skopeo copy -q --dest-tls-verify=false "${creds[@]}" "oci:$oci:$tag" "docker://$registry/$name:$tag" >&2
}

# rootfs with busybox as /bin/sh, sleep and friends.
busybox_root() {
  local d=$1
  mkdir -p "$d/bin" "$d/tmp" "$d/etc" "$d/usr/local/bin"
  chmod 1777 "$d/tmp"
  cp /bin/busybox "$d/bin/busybox"
  local applet
  for applet in sh sleep cat ls echo wget true sha256sum; do ln -sf busybox "$d/bin/$applet"; done
  echo 'root:x:0:0:root:/:/bin/sh' >"$d/etc/passwd"
  echo 'root:x:0:' >"$d/etc/group"
  echo 'hosts: files dns' >"$d/etc/nsswitch.conf"
}

if [ "$what" = app ]; then
  repo=$1 tag=$2 mib=$3
  PUSH_CREDS=${4:-}
  echo "images.sh: $repo:$tag (busybox and two $mib MiB random layers)" >&2
  mkdir -p "$work/app/base" "$work/app/l1/data" "$work/app/l2/data"
  busybox_root "$work/app/base"
  head -c $((mib << 20)) /dev/urandom >"$work/app/l1/data/one"
  head -c $((mib << 20)) /dev/urandom >"$work/app/l2/data/two"
  for l in base l1 l2; do layer "$work/app/$l" "$work/app-$l.tar"; done
  image "$repo" "$tag" '["/bin/sh","-c","sleep 100000"]' "$work/app-base.tar" "$work/app-l1.tar" "$work/app-l2.tar"
  sha256sum "$work/app/l1/data/one" "$work/app/l2/data/two" | awk '{print $1}' | sort | tr '\n' ' '
  echo
  exit 0
fi
[ "$what" = system ] || { echo "usage: images.sh system|app ..." >&2; exit 2; }
k8s_bin=$1
shift
tags=("$@")
echo "images.sh: pause" >&2
mkdir -p "$work/pause"
gcc -static -O2 -o "$work/pause/pause" "$here/images/pause.c"
layer "$work/pause" "$work/pause.tar"
image pause 3.10 '["/pause"]' "$work/pause.tar"

echo "images.sh: coredns" >&2
mkdir -p "$work/coredns"
cp "$k8s_bin/coredns" "$work/coredns/coredns"
layer "$work/coredns" "$work/coredns.tar"
image coredns v1 '["/coredns"]' "$work/coredns.tar"

echo "images.sh: dragonfly ${tags[*]}" >&2
# The product images as they ship (images/build.sh), amd64 only (the
# cluster's nodes), from the binaries up.sh built: PROFILE=debug reuses the
# test command's debug build (stripped, so the image stays small). The
# data-plane image runs as root here (DATA_PLANE_USER, default 0:0) while
# the operator's dfdaemon, seed-peer and cleanup pods set no runAsUser:
# dfdaemon edits the node's root-owned containerd files. The shipped
# default is 65532:65532.
tag_args=()
for t in "${tags[@]}"; do tag_args+=(--tag "$t"); done
"$root/images/build.sh" --arch amd64 --profile "${PROFILE:-release}" --no-build "${tag_args[@]}" \
  --out "$work/images" --data-plane-user "${DATA_PLANE_USER:-0:0}" \
  --push "$registry/dragonfly-p2p" --insecure
