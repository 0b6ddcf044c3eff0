#!/usr/bin/env bash
# Builds the project's container images without a Docker engine, for one or
# more architectures, each as ONE multi-arch OCI image index:
#   dragonfly-operator  /usr/local/bin/dragonfly-operator (entrypoint; cmd `run`)
#   dragonfly           the data plane: dfdaemon (entrypoint), dragonfly-scheduler,
#                       dfget, and a static `sleep` (sleep.c; the operator's
#                       cleanup DaemonSet runs `sleep infinity` from this image)
# Every image holds the stripped binaries, the shared libraries they link
# (read with readelf from the target architecture's own libraries), the CA
# bundle (/etc/ssl/certs/ca-certificates.crt, read by rustls-native-certs),
# /etc/passwd with root and nonroot (65532), /tmp (1777). No shell. The
# default user is 65532:65532; every file is world-readable (and binaries
# world-executable), so pods may run it as root or as 65532.
# The binaries are built here: natively for the host's architecture, with
# the Rust target and Debian's cross gcc for the other one (arm64 on amd64).
# Output: OUT/dragonfly and OUT/dragonfly-operator, OCI layouts in which each
# TAG names an image index with one manifest per architecture (platform
# linux/ARCH). Labels and annotations: org.opencontainers.image.{source,
# version,revision,created,...}; created is SOURCE_DATE_EPOCH (default: the
# commit's time): the same binaries give the same layers and digests.
#
# Usage: images/build.sh [OPTIONS]
#   --arch LIST          architectures, comma-separated (amd64,arm64; default both)
#   --profile P          release (default) or debug
#   --tag TAG            image tag, repeatable (default: the chart's appVersion)
#   --out DIR            where the OCI layouts go (default: target/images)
#   --push REG/PREFIX    then copy every index to docker://REG/PREFIX/NAME:TAG
#                        (skopeo copy --all: all architectures)
#   --insecure           push over plain HTTP / without verifying TLS
#   --creds USER:PASS    registry credentials for --push
#   --data-plane-user U:G  default user of the dragonfly image (65532:65532)
#   --smoke              run each binary of each image from the image's own
#                        root (foreign architectures under qemu-user):
#                        --version and a small functional check
#   --smoke-only BIN     no images: build only BIN (dfget, dfdaemon,
#                        dragonfly-scheduler, dragonfly-operator) for each
#                        --arch and smoke it (one binary, no image)
#   --no-build           use the binaries already in the target directory
#   --no-install         do not install packages or the Rust target
# Environment: CARGO_TARGET_DIR (default ./target), SOURCE_DATE_EPOCH,
# IMAGE_SOURCE (the org.opencontainers.image.source URL).
# Example: images/build.sh --arch amd64,arm64 --smoke --push registry.example.com/dragonfly-p2p
set -euo pipefail
umask 022
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
log() { echo "images: $*" >&2; }
die() { echo "images: error: $*" >&2; exit 1; }

archs=amd64,arm64 profile=release out="" push="" insecure=0 creds="" smoke=0
smoke_only="" build=1 install=1 dp_user=65532:65532
tags=()
while [ $# -gt 0 ]; do
  case $1 in
    --arch) archs=$2; shift 2 ;;
    --profile) profile=$2; shift 2 ;;
    --tag) tags+=("$2"); shift 2 ;;
    --out) out=$2; shift 2 ;;
    --push) push=$2; shift 2 ;;
    --insecure) insecure=1; shift ;;
    --creds) creds=$2; shift 2 ;;
    --data-plane-user) dp_user=$2; shift 2 ;;
    --smoke) smoke=1; shift ;;
    --smoke-only) smoke_only=$2; smoke=1; shift 2 ;;
    --no-build) build=0; shift ;;
    --no-install) install=0; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
case $profile in release | debug) ;; *) die "--profile release|debug" ;; esac
IFS=, read -r -a arch_list <<<"$archs"
[ ${#arch_list[@]} -gt 0 ] || die "--arch needs at least one architecture"
for a in "${arch_list[@]}"; do
  case $a in amd64 | arm64) ;; *) die "unsupported architecture $a (amd64, arm64)" ;; esac
done
if [ ${#tags[@]} -eq 0 ]; then
  tags=("$(sed -n 's/^appVersion: "\(.*\)"/\1/p' "$root/charts/dragonfly/Chart.yaml")")
  [ -n "${tags[0]}" ] || die "no --tag and no appVersion in charts/dragonfly/Chart.yaml"
fi
target_dir=${CARGO_TARGET_DIR:-$root/target}
out=${out:-$target_dir/images}
host_arch=$(dpkg --print-architecture)

# Per architecture: Rust target, Debian's names and paths for its toolchain.
declare -A TRIPLE=([amd64]=x86_64-unknown-linux-gnu [arm64]=aarch64-unknown-linux-gnu)
declare -A GNU=([amd64]=x86_64-linux-gnu [arm64]=aarch64-linux-gnu)
declare -A QEMU=([amd64]=x86_64 [arm64]=aarch64)
declare -A CROSS_PKGS=(
  [amd64]="gcc-x86-64-linux-gnu libc6-dev-amd64-cross binutils-x86-64-linux-gnu"
  [arm64]="gcc-aarch64-linux-gnu libc6-dev-arm64-cross binutils-aarch64-linux-gnu")
cross() { [ "$1" != "$host_arch" ]; }
# Where the target's shared libraries are on this machine.
libdirs() {
  if cross "$1"; then echo "/usr/${GNU[$1]}/lib"; else echo "/lib/${GNU[$1]} /usr/lib/${GNU[$1]}"; fi
}
tool() { if cross "$1"; then echo "${GNU[$1]}-$2"; else echo "$2"; fi; }

# --- tools, installed once --------------------------------------------------
if [ "$install" = 1 ]; then
  need=(jq binutils gcc libc6-dev)
  [ -n "$smoke_only" ] || need+=(umoci ca-certificates)
  if [ -n "$push" ]; then need+=(skopeo); fi
  for a in "${arch_list[@]}"; do
    if cross "$a"; then
      read -r -a p <<<"${CROSS_PKGS[$a]}"
      need+=("${p[@]}")
      if [ "$smoke" = 1 ]; then need+=(qemu-user-static); fi
    fi
  done
  missing=()
  for p in "${need[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  if [ "$build" = 1 ]; then
    for a in "${arch_list[@]}"; do
      if cross "$a" && ! rustup target list --installed | grep -qx "${TRIPLE[$a]}"; then
        log "rustup target add ${TRIPLE[$a]}"
        rustup target add "${TRIPLE[$a]}" >&2
      fi
    done
  fi
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# --- binaries ---------------------------------------------------------------
declare -A PKG=([dfdaemon]=dragonfly-node-agent [dfget]=dragonfly-node-agent
  [dragonfly-scheduler]=dragonfly-scheduler [dragonfly-operator]=dragonfly-operator)
if [ -n "$smoke_only" ]; then
  [ -n "${PKG[$smoke_only]:-}" ] || die "--smoke-only: one of ${!PKG[*]}"
  cargo_sel=(-p "${PKG[$smoke_only]}" --bin "$smoke_only")
else
  cargo_sel=(-p dragonfly-scheduler -p dragonfly-node-agent -p dragonfly-operator --bins)
fi
bin_dir() {
  local d=$target_dir
  cross "$1" && d=$d/${TRIPLE[$1]}
  echo "$d/$profile"
}
build_arch() {
  local a=$1 t0 args=(build --locked -q "${cargo_sel[@]}")
  [ "$profile" = release ] && args+=(--release)
  t0=$(date +%s)
  if cross "$a"; then
    local u=${TRIPLE[$a]//-/_}
    local U=${u^^}
    args+=(--target "${TRIPLE[$a]}")
    (cd "$root" && env "CARGO_TARGET_${U}_LINKER=${GNU[$a]}-gcc" "CC_${u}=${GNU[$a]}-gcc" \
      "CXX_${u}=${GNU[$a]}-g++" "AR_${u}=${GNU[$a]}-ar" cargo "${args[@]}")
  else
    (cd "$root" && cargo "${args[@]}")
  fi
  log "built $a $profile binaries in $(($(date +%s) - t0)) s"
}
if [ "$build" = 1 ]; then
  for a in "${arch_list[@]}"; do build_arch "$a"; done
fi

# --- root file systems --------------------------------------------------------
# needed ELF: the DT_NEEDED names; interp ELF: the program interpreter.
needed() { readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p'; }
interp() { readelf -l "$1" | sed -n 's/.*Requesting program interpreter: \(.*\)\]$/\1/p'; }
find_lib() {
  local d
  for d in $(libdirs "$1"); do
    [ -e "$d/$2" ] && { echo "$d/$2"; return 0; }
  done
  return 1
}
# libs ARCH ROOT ELF...: copies the libraries the ELF files need, transitively,
# to /lib/<gnu triplet>/ in ROOT, and the interpreter to its own path.
libs() {
  local a=$1 r=$2
  shift 2
  local queue=("$@") seen=" " i=0 f n src ld
  ld=$(interp "$1")
  [ -n "$ld" ] || die "$1: no program interpreter (not a dynamic executable?)"
  src=$(find_lib "$a" "$(basename "$ld")") || die "$a: no $(basename "$ld") in $(libdirs "$a")"
  mkdir -p "$r$(dirname "$ld")" "$r/lib/${GNU[$a]}"
  cp -L "$src" "$r$ld"
  while [ $i -lt ${#queue[@]} ]; do
    [ $i -lt 500 ] || die "more than 500 libraries: a loop in the search?"
    f=${queue[$i]}
    i=$((i + 1))
    for n in $(needed "$f"); do
      case $seen in *" $n "*) continue ;; esac
      seen="$seen$n "
      [ "$n" = "$(basename "$ld")" ] && continue
      src=$(find_lib "$a" "$n") || die "$a: $f needs $n, not found in $(libdirs "$a")"
      cp -L "$src" "$r/lib/${GNU[$a]}/$n"
      queue+=("$r/lib/${GNU[$a]}/$n")
    done
  done
}
# base ROOT: what every image has besides its binaries and libraries.
base_root() {
  local r=$1
  mkdir -p "$r/etc/ssl/certs" "$r/tmp" "$r/home/nonroot" "$r/usr/local/bin"
  chmod 1777 "$r/tmp"
  chmod 0755 "$r"
  printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
    'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$r/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nonroot:x:65532:' >"$r/etc/group"
  echo 'hosts: files dns' >"$r/etc/nsswitch.conf"
  cp /etc/ssl/certs/ca-certificates.crt "$r/etc/ssl/certs/ca-certificates.crt"
}
epoch=${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)}
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
# layer DIR OUT.tar: a reproducible tarball, everything owned by root except
# /home/nonroot (65532), everything readable by all.
layer() {
  local opts=(--sort=name --numeric-owner --mtime="@$epoch" --mode=a+rX)
  tar "${opts[@]}" --owner=0 --group=0 --exclude=./home/nonroot -C "$1" -cf "$2" .
  if [ -d "$1/home/nonroot" ]; then
    tar "${opts[@]}" --owner=65532 --group=65532 --no-recursion -C "$1" -rf "$2" ./home/nonroot
  fi
}
# rootfs ARCH ROOT BIN...: the stripped binaries (+ sleep) and their libraries.
rootfs() {
  local a=$1 r=$2 b
  shift 2
  mkdir -p "$r/usr/local/bin"
  chmod 0755 "$r"
  for b in "$@"; do
    if [ "$b" = sleep ]; then
      mkdir -p "$r/bin"
      "$(tool "$a" gcc)" -static -s -O2 -o "$r/bin/sleep" "$here/sleep.c" -lm
    else
      "$(tool "$a" strip)" -o "$r/usr/local/bin/$b" "$(bin_dir "$a")/$b"
    fi
  done
  local elfs=()
  for b in "$@"; do [ "$b" = sleep ] || elfs+=("$r/usr/local/bin/$b"); done
  libs "$a" "$r" "${elfs[@]}"
}

# --- smoke --------------------------------------------------------------------
# run ARCH ROOT CMD...: CMD from ROOT as its / (chroot for the host's
# architecture when root, qemu-user with ROOT as the sysroot otherwise), so a
# library missing from the image fails here.
run_in() {
  local a=$1 r=$2
  shift 2
  if cross "$a"; then
    env -i PATH=/usr/local/bin:/bin HOME=/tmp "qemu-${QEMU[$a]}-static" -L "$r" "$r$1" "${@:2}"
  elif [ "$(id -u)" = 0 ]; then
    env -i PATH=/usr/local/bin:/bin HOME=/tmp "$(command -v chroot)" "$r" "$@"
  else
    "$r$1" "${@:2}"
  fi
}
smoke_bin() {
  local a=$1 r=$2 b=$3 p=/usr/local/bin/$3 v
  if [ "$b" = sleep ]; then
    run_in "$a" "$r" /bin/sleep 0.1 || die "smoke $a sleep 0.1"
    log "smoke $a: sleep 0.1 ok"
    return
  fi
  v=$(run_in "$a" "$r" "$p" --version) || die "smoke $a $b --version"
  log "smoke $a: $b --version: $v"
  run_in "$a" "$r" "$p" --help >"$work/help" || die "smoke $a $b --help"
  log "smoke $a: $b --help: $(head -1 "$work/help")"
  case $b in
    dragonfly-operator)
      v=$(run_in "$a" "$r" "$p" crd | grep -c '^kind: CustomResourceDefinition$') || die "smoke $a operator crd"
      log "smoke $a: dragonfly-operator crd: $v CustomResourceDefinitions"
      # Key generation and signing: the cross-compiled C and assembly of ring.
      # (A directory that is not in ROOT stays outside it under qemu -L, so
      # cross runs write under $work; chroot runs under ROOT's /tmp.)
      local t=/tmp/smoke-certs
      cross "$a" && t=$work/smoke-certs-$a
      run_in "$a" "$r" "$p" certs --out "$t/ca" --name smoke-ca >/dev/null 2>&1 ||
        die "smoke $a operator certs (CA)"
      run_in "$a" "$r" "$p" certs --out "$t/node" --name smoke-node --ca-dir "$t/ca" >/dev/null 2>&1 ||
        die "smoke $a operator certs (member)"
      log "smoke $a: dragonfly-operator certs: a CA and a member certificate signed by it"
      ;;
  esac
}

if [ -n "$smoke_only" ]; then
  for a in "${arch_list[@]}"; do
    r=$work/smoke-$a
    rootfs "$a" "$r" "$smoke_only"
    mkdir -p "$r/tmp"
    chmod 1777 "$r/tmp"
    smoke_bin "$a" "$r" "$smoke_only"
  done
  exit 0
fi

# --- images -------------------------------------------------------------------
version=$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version = "\(.*\)"/\1/p' "$root/Cargo.toml")
revision=$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)
[ -z "$(git -C "$root" status --porcelain 2>/dev/null)" ] || revision=$revision-dirty
source_url=${IMAGE_SOURCE:-$(sed -n 's/^home: //p' "$root/charts/dragonfly/Chart.yaml")}
declare -A DESC=([dragonfly]="Dragonfly P2P data plane: dfdaemon, dragonfly-scheduler, dfget"
  [dragonfly-operator]="Dragonfly P2P operator")
annotations() { # NAME: key=value lines
  printf '%s\n' "org.opencontainers.image.title=$1" "org.opencontainers.image.description=${DESC[$1]}" \
    "org.opencontainers.image.source=$source_url" "org.opencontainers.image.version=$version" \
    "org.opencontainers.image.revision=$revision" "org.opencontainers.image.created=$created" \
    "org.opencontainers.image.licenses=Apache-2.0"
}

base_root "$work/base"
layer "$work/base" "$work/base.tar"
mkdir -p "$out"
for name in dragonfly dragonfly-operator; do
  lay=$work/oci-$name
  umoci init --layout "$lay"
  if [ "$name" = dragonfly ]; then
    bins=(dfdaemon dragonfly-scheduler dfget sleep) user=$dp_user
    cfg=(--config.entrypoint /usr/local/bin/dfdaemon)
    for p in 65001 65002 40901 8000 8002; do cfg+=(--config.exposedports "$p/tcp"); done
  else
    bins=(dragonfly-operator) user=65532:65532
    cfg=(--config.entrypoint /usr/local/bin/dragonfly-operator --config.cmd run --config.exposedports 8000/tcp)
  fi
  labels=()
  while IFS= read -r kv; do labels+=(--config.label "$kv" --manifest.annotation "$kv"); done < <(annotations "$name")
  for a in "${arch_list[@]}"; do
    log "$name $a: ${bins[*]}"
    r=$work/root-$name-$a
    rootfs "$a" "$r" "${bins[@]}"
    layer "$r" "$work/$name-$a.tar"
    umoci new --image "$lay:$a"
    umoci raw add-layer --image "$lay:$a" --history.created "$created" \
      --history.created_by "images/build.sh: /etc, CA certificates, /tmp" "$work/base.tar"
    umoci raw add-layer --image "$lay:$a" --history.created "$created" \
      --history.created_by "images/build.sh: ${bins[*]} ($profile, $a) and their libraries" "$work/$name-$a.tar"
    umoci config --image "$lay:$a" --no-history --created "$created" --os linux --architecture "$a" \
      --config.user "$user" --config.workingdir / --config.env PATH=/usr/local/bin:/usr/bin:/bin \
      "${cfg[@]}" "${labels[@]}"
    if [ "$smoke" = 1 ]; then
      for b in "${bins[@]}"; do smoke_bin "$a" "$r" "$b"; done
    fi
  done
  umoci gc --layout "$lay"
  # The multi-arch layout: the same blobs plus one image index over the
  # per-architecture manifests; index.json names it once per tag.
  final=$out/$name
  rm -rf "$final"
  mkdir -p "$final/blobs/sha256"
  cp "$lay/oci-layout" "$final/"
  cp "$lay"/blobs/sha256/* "$final/blobs/sha256/"
  for a in "${arch_list[@]}"; do
    jq -c --arg a "$a" '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $a)
      | {mediaType, digest, size, platform: {architecture: $a, os: "linux"}}' "$lay/index.json"
  done | jq -s . >"$work/manifests.json"
  annotations "$name" | jq -R 'split("=") | {key: .[0], value: (.[1:] | join("="))}' | jq -s from_entries >"$work/ann.json"
  jq -cn --slurpfile m "$work/manifests.json" --slurpfile ann "$work/ann.json" \
    '{schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json", manifests: $m[0], annotations: $ann[0]}' \
    | tr -d '\n' >"$work/index-blob.json"
  digest=$(sha256sum "$work/index-blob.json" | cut -d' ' -f1)
  size=$(stat -c %s "$work/index-blob.json")
  cp "$work/index-blob.json" "$final/blobs/sha256/$digest"
  printf '%s\n' "${tags[@]}" | jq -R . | jq -cs --arg d "sha256:$digest" --argjson s "$size" \
    '{schemaVersion: 2, manifests: [.[] | {mediaType: "application/vnd.oci.image.index.v1+json",
      digest: $d, size: $s, annotations: {"org.opencontainers.image.ref.name": .}}]}' >"$final/index.json"
  log "$name: $final (index sha256:$digest; ${arch_list[*]}; tags ${tags[*]})"
done

if [ -n "$push" ]; then
  opts=(--all -q)
  [ "$insecure" = 1 ] && opts+=(--dest-tls-verify=false)
  [ -n "$creds" ] && opts+=(--dest-creds "$creds")
  for name in dragonfly dragonfly-operator; do
    for t in "${tags[@]}"; do
      log "push $push/$name:$t"
      skopeo copy "${opts[@]}" "oci:$out/$name:$t" "docker://$push/$name:$t" >&2
    done
  done
fi
