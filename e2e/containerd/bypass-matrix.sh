#!/usr/bin/env bash
# Evidence for `dfdaemon containerd check`: which containerd settings make a
# CRI PullImage (the kubelet path) skip the mirror named in hosts.toml.
#
# For each containerd version (Debian's 1.6.20 from apt, the others built by
# e2e/containerd/build.sh) it takes that version's own `containerd config
# default`, moves only root/state and the socket, NRI and opt paths under a
# temp dir (nothing is written to the host's /run, /var/lib, /opt or /etc),
# applies one variant, starts the daemon, pulls a small image with CRI
# PullImage (e2e/examples/cri_pull, exactly as kubelet does) and counts the
# manifest and blob requests in three registries' own access logs:
#   origin  127.0.0.1:5081   the registry the image is named after
#   mirror  127.0.0.1:65081  the only host named in hosts.toml (stands in for
#                            dfdaemon's 127.0.0.1:65001: a registry holding
#                            the same image, so it can answer everything)
#   legacy  127.0.0.1:65082  the endpoint of the legacy `registry.mirrors`
# A pull that used the mirror shows its manifest and blob GETs in the mirror's
# log and none in the origin's; a bypass shows them in the origin's.
#
# Variants (config_path is set to the run's certs.d unless said otherwise):
#   a        registry config_path = certs.d (what the install does)
#   b        the config as `config default` prints it (config_path untouched),
#            with hosts.toml in /etc/containerd/certs.d
#   b-unset  the config_path key removed, hosts.toml in /etc/containerd/certs.d
#   b-local  as b, with use_local_image_pull = true (2.1+)
#   b-etc    config_path = "/etc/containerd/certs.d" (one directory), hosts.toml
#            there
#   a-multi  config_path = "<certs.d>:/etc/docker/certs.d" (a list, as the
#            2.2+ built-in default is)
#   a-multi-local  a-multi with use_local_image_pull = true (2.1+)
#   c        discard_unpacked_layers = true
#   d-local  use_local_image_pull = true        (2.1+)
#   d-transfer use_local_image_pull = false     (2.1+: the transfer service)
#   e        config_path only in an `imports` drop-in (key removed from main)
#   e-kept   drop-in sets config_path, main keeps the printed default value
#   f        legacy registry.mirrors (to `legacy`) together with config_path
#   g        legacy registry.mirrors only, config_path = ""
#   t        only [plugins.'io.containerd.transfer.v1.local'] config_path set
#            (where `config default` prints that key: 1.7 and 2.x)
#   v1       not the default: a version-1 file ([plugins.cri.registry]
#            config_path)
#   v2       not the default: a version-2 file like e2e/lib/rig.sh's (CRI
#            table io.containerd.grpc.v1.cri, config_path set)
#   v2-discard     the same with [...cri.containerd] discard_unpacked_layers
#   v2-discard-rt  the same plus a [...cri.containerd.runtimes.runc] table
#   v2-local the v2 file with [...cri] use_local_image_pull = true (2.1+)
# Every daemon runs in its own mount namespace (`unshare -m`) with a tmpfs
# over /etc/containerd, so the built-in default certs.d can be exercised
# without touching the host's /etc, and over /run and /opt: 2.x creates
# /run/containerd whatever its state dir (its shim socket root is hard-coded
# there), and the version-2 files below leave the opt and NRI plugins at
# their defaults (/opt/containerd, /run/nri).
#
# Also records, per version (facts.tsv): the config version `config default`
# writes, whether a version-2 file (the rig's start_containerd layout) still
# loads (`containerd config dump`) and where its config_path and
# discard_unpacked_layers land, and whether minimal version 1, 3 and 4 files
# load and keep the CRI config_path.
#
# Beside each run it asks `dfdaemon containerd check` (with that release's
# version) for its verdict on the same config, and fails when the verdict
# and the real daemon disagree: the check claims a bypass (exit 1) exactly
# where containerd did not pull through the mirror. It also fails when the
# rig itself fails (or the host was changed).
#
# Usage: e2e/containerd/bypass-matrix.sh [VERSION...]   (default: 1.6.20 and
#   every version in versions.sh). Results go to $MATRIX_OUT (default
#   target/containerd-matrix): results.tsv, a Markdown table (also printed),
#   the defaults, configs and each daemon's log. CRI_PULL=path skips building
#   the cri_pull example. KEEP=1 keeps the work dir.
# Needs root. Only loopback traffic.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
here=$ROOT/e2e/containerd
# shellcheck source=e2e/containerd/versions.sh
. "$here/versions.sh"
WORK=$(mktemp -d /tmp/dragonfly-containerd-matrix.XXXXXX)
OUT=${MATRIX_OUT:-$ROOT/target/containerd-matrix}
ORIGIN=127.0.0.1:5081
MIRROR=127.0.0.1:65081
LEGACY=127.0.0.1:65082
IMAGE=$ORIGIN/library/matrix:v1
DEBIAN_VERSION=1.6.20
# shellcheck disable=SC2034
PIDS=()
BIN=$ROOT/target/debug
# shellcheck source=e2e/lib/rig.sh
. "$ROOT/e2e/lib/rig.sh"
trap rig_cleanup EXIT
rig_install_packages
need unshare || fail "unshare (util-linux) is missing"

if [ "$#" -eq 0 ]; then set -- "$DEBIAN_VERSION" "${CONTAINERD_VERSIONS[@]}"; fi
(cd "$ROOT" && cargo build -q -p dragonfly-node-agent --bin dfdaemon)
DFDAEMON=$BIN/dfdaemon
if [ -z "${CRI_PULL:-}" ]; then
  log "building the cri_pull example"
  (cd "$ROOT" && cargo build -q -p dragonfly-e2e --example cri_pull)
  CRI_PULL=$BIN/examples/cri_pull
fi
rm -rf "$OUT"
mkdir -p "$WORK/logs" "$OUT/logs" "$OUT/configs" "$OUT/defaults"

# Paths a daemon started from a default config would create on the host.
host_paths=(/run/containerd /var/lib/containerd /opt/containerd /run/nri /run/mount /etc/containerd/certs.d /etc/containerd/conf.d)
host_before=$(ls -d "${host_paths[@]}" 2>/dev/null || true)

log "three registries: origin $ORIGIN, mirror $MIRROR, legacy $LEGACY"
for r in origin:$ORIGIN mirror:$MIRROR legacy:$LEGACY; do
  start_registry "${r%%:*}" "${r#*:}"
  wait_http "http://${r#*:}/v2/"
done

log "a small image (one layer: busybox and 1 MiB of random data) in all three"
(
  cd "$WORK"
  umoci init --layout oci >/dev/null
  umoci new --image oci:matrix >/dev/null
  umoci unpack --rootless --image oci:matrix bundle >/dev/null
  mkdir -p bundle/rootfs/bin bundle/rootfs/data
  cp /bin/busybox bundle/rootfs/bin/busybox
  head -c $((1024 * 1024)) /dev/urandom >bundle/rootfs/data/random.bin
  umoci repack --image oci:matrix bundle >/dev/null
  umoci config --image oci:matrix --config.entrypoint /bin/busybox >/dev/null
  for r in $ORIGIN $MIRROR $LEGACY; do
    skopeo copy -q --dest-tls-verify=false oci:"$WORK/oci:matrix" "docker://$r/library/matrix:v1"
  done
)

# hosts.toml as dfdaemon writes it: the registry as server, the mirror as the
# one host with pull and resolve.
hosts_toml() { # DIR
  mkdir -p "$1/$ORIGIN"
  cat >"$1/$ORIGIN/hosts.toml" <<TOML
server = "http://$ORIGIN"

[host."http://$MIRROR"]
  capabilities = ["pull", "resolve"]
  [host."http://$MIRROR".header]
    X-Dragonfly-Registry = ["http://$ORIGIN"]
TOML
}

# Writes the variant's config from the version's default config. The default
# is parsed (tomllib), edited as data and written back, so the same edits
# work on version 2, 3 and 4 files whatever their quoting style.
# Prints "config_version" on stdout.
make_config() { # DEFAULT DIR VARIANT CERTS
  python3 - "$@" <<'PY'
import json, os, re, sys, tomllib

default, d, variant, certs = sys.argv[1:5]
origin, legacy = os.environ["ORIGIN"], os.environ["LEGACY"]
text = open(default).read()
# Only the daemon's own locations move; every other value stays as printed.
for old, new in [("/var/lib/containerd", d + "/root"), ("/run/containerd", d + "/state"),
                 ("/var/run/nri", d + "/nri"), ("/run/nri", d + "/nri"),
                 ("/opt/containerd", d + "/opt")]:
    text = text.replace(old, new)
cfg = tomllib.loads(text)
if variant.startswith("v2"):
    # Not the default: a version-2 file as e2e/lib/rig.sh writes it, to see
    # what a newer daemon's migration makes of it.
    cri = {"disable_tcp_service": True, "registry": {"config_path": certs}}
    if variant != "v2":
        cri["containerd"] = {"discard_unpacked_layers": True}
    if variant == "v2-local":
        cri.pop("containerd", None)
        cri["use_local_image_pull"] = True
    if variant == "v2-discard-rt":
        cri["containerd"]["runtimes"] = {"runc": {"runtime_type": "io.containerd.runc.v2"}}
    cfg = {"version": 2, "root": d + "/root", "state": d + "/state",
           "plugins": {"io.containerd.grpc.v1.cri": cri}}
if variant == "v1":
    # A version-1 file: short plugin names.
    cfg = {"version": 1, "root": d + "/root", "state": d + "/state",
           "plugins": {"cri": {"disable_tcp_service": True, "registry": {"config_path": certs}}}}
version = cfg.get("version", 1)
plugins = cfg.setdefault("plugins", {})
# Sockets: version 4 ignores the top-level [grpc]/[ttrpc]/[debug] tables and
# reads them from the server plugins.
socks = {"grpc": d + "/containerd.sock", "ttrpc": d + "/containerd.sock.ttrpc", "debug": d + "/debug.sock"}
if version >= 4 and variant[:2] not in ("v1", "v2"):
    for k, v in socks.items():
        plugins.setdefault("io.containerd.server.v1." + k, {})["address"] = v
else:
    for k, v in socks.items():
        cfg.setdefault(k, {})["address"] = v
if version == 1:
    images = plugins["cri"]
    discard_table = images
    main_path = []
elif version >= 3:
    images = plugins.setdefault("io.containerd.cri.v1.images", {})
    discard_table = images
    main_path = ["plugins", "io.containerd.cri.v1.images", "registry"]
else:
    images = plugins.setdefault("io.containerd.grpc.v1.cri", {})
    images["disable_tcp_service"] = True
    discard_table = images.setdefault("containerd", {})
    main_path = ["plugins", "io.containerd.grpc.v1.cri", "registry"]
registry = images.setdefault("registry", {})

def dropin():
    t = {"version": version}
    cur = t
    for k in main_path:
        cur = cur.setdefault(k, {})
    cur["config_path"] = certs
    return t

extra = None
if variant in ("a", "c", "d-local", "d-transfer", "f"):
    registry["config_path"] = certs
if variant == "b-unset" or variant == "e":
    registry.pop("config_path", None)
if variant == "b-local":
    images["use_local_image_pull"] = True
if variant == "b-etc":
    registry["config_path"] = "/etc/containerd/certs.d"
if variant == "t":
    # Only the transfer plugin's own config_path, CRI's left as printed.
    plugins["io.containerd.transfer.v1.local"]["config_path"] = certs
if variant in ("a-multi", "a-multi-local"):
    registry["config_path"] = certs + ":/etc/docker/certs.d"
if variant == "a-multi-local":
    images["use_local_image_pull"] = True
if variant == "c":
    discard_table["discard_unpacked_layers"] = True
if variant == "d-local":
    images["use_local_image_pull"] = True
if variant == "d-transfer":
    images["use_local_image_pull"] = False
if variant in ("e", "e-kept"):
    os.makedirs(d + "/conf.d", exist_ok=True)
    # Added to the imports the default already has (2.x: conf.d).
    cfg["imports"] = cfg.get("imports", []) + [d + "/conf.d/*.toml"]
    extra = dropin()
if variant in ("f", "g"):
    registry.setdefault("mirrors", {})[origin] = {"endpoint": ["http://" + legacy]}
if variant == "g":
    registry["config_path"] = ""

def key(k):
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)

def val(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(val(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(key(k) + " = " + val(x) for k, x in v.items()) + "}"
    raise TypeError(type(v))

def dump(t, prefix, out):
    for k, v in t.items():
        if not isinstance(v, dict):
            out.append(key(k) + " = " + val(v))
    for k, v in t.items():
        if isinstance(v, dict):
            p = prefix + [key(k)]
            out.append("")
            out.append("[" + ".".join(p) + "]")
            dump(v, p, out)
    return out

open(d + "/config.toml", "w").write("\n".join(dump(cfg, [], [])) + "\n")
if extra is not None:
    open(d + "/conf.d/registry.toml", "w").write("\n".join(dump(extra, [], [])) + "\n")
print(version)
PY
}

count() { # LOG SKIP KIND: requests of KIND (manifests|blobs) after line SKIP
  local re
  case $3 in
    manifests) re='"(HEAD|GET) /v2/[^ ]+/manifests/[^ ]+ HTTP/[0-9.]+" 20[0-9] ' ;;
    blobs) re='"GET /v2/[^ ]+/blobs/sha256:[0-9a-f]+[^ ]* HTTP/[0-9.]+" 20[0-9] ' ;;
  esac
  tail -n "+$(($2 + 1))" "$WORK/logs/$1.log" | grep -cE "$re" || true
}

# The lines of a daemon log that tell which pull path and registry config
# were taken (plugin skips of unrelated snapshotters left out).
interesting='transfer service|local image pull|Falling back|incompatible with transfer|failed to load plugin io.containerd.(grpc.v1.cri|cri)|mirrors|config_path|deprecated|trying next host|loading host directory|msg=resolving|PullImage .*(failed|error)|level=fatal'
TSV=$OUT/results.tsv
printf 'version\tvariant\tconfig_version\tstarted\tpulled\tmirror_manifests\tmirror_blobs\torigin_manifests\torigin_blobs\tlegacy_manifests\tlegacy_blobs\teffective\tlog\tcheck\n' >"$TSV"
DISAGREE=0
FACTS=$OUT/facts.tsv
printf 'version\tdefault_config_version\tdefault_config_path\tv2_file_loads\tv2_config_path_lands_in\tother_versions\n' >"$FACTS"

run_variant() { # VERSION BINDIR VARIANT
  local v=$1 bindir=$2 variant=$3
  local d=$WORK/$v-$variant
  mkdir -p "$d" "$WORK/certs-$v-$variant"
  local certs=$WORK/certs-$v-$variant
  hosts_toml "$certs"
  local cv
  cv=$(ORIGIN=$ORIGIN LEGACY=$LEGACY make_config "$OUT/defaults/containerd-$v.toml" "$d" "$variant" "$certs")
  cp "$d/config.toml" "$OUT/configs/$v-$variant.toml"
  [ -f "$d/conf.d/registry.toml" ] && cp "$d/conf.d/registry.toml" "$OUT/configs/$v-$variant.dropin.toml"
  # The host's /etc/containerd is hidden behind a tmpfs in the daemon's own
  # mount namespace; variant b puts hosts.toml where the built-in default
  # config_path looks.
  local etc_hosts=""
  case $variant in b | b-*) etc_hosts=$WORK/etc-hosts-$v-$variant; hosts_toml "$etc_hosts" ;; esac
  # What containerd itself makes of the file (imports merged, migrated).
  local effective
  if "$bindir/containerd" --config "$d/config.toml" config dump >"$OUT/configs/$v-$variant.dump.toml" 2>"$OUT/logs/$v-$variant.dump.err"; then
    effective=$(python3 - "$OUT/configs/$v-$variant.dump.toml" <<'PY'
import sys, tomllib
cfg = tomllib.load(open(sys.argv[1], "rb"))
hits = []
def walk(t, path):
    for k, v in t.items():
        if isinstance(v, dict):
            if k != "mirrors":
                walk(v, path + [k])
            elif v:
                hits.append(".".join(path + [k]) + "=" + ",".join(v))
        elif k in ("config_path", "discard_unpacked_layers", "use_local_image_pull"):
            hits.append(".".join(path[1:] + [k]) + "=" + repr(v))
walk(cfg, [])
print("; ".join(hits) or "-")
PY
)
  else
    effective="dump failed: $(tail -n 1 "$OUT/logs/$v-$variant.dump.err" | cut -c1-200)"
  fi
  local skip_o skip_m skip_l
  skip_o=$(wc -l <"$WORK/logs/origin.log")
  skip_m=$(wc -l <"$WORK/logs/mirror.log")
  skip_l=$(wc -l <"$WORK/logs/legacy.log")
  local clog=$OUT/logs/$v-$variant.log
  ETC_HOSTS=$etc_hosts unshare -m --propagation private sh -c '
    for m in /run /opt /etc/containerd; do
      mount -n -t tmpfs -o size=4m,mode=0755 dragonfly-matrix "$m" || exit 97
    done
    if [ -n "$ETC_HOSTS" ]; then mkdir -p /etc/containerd/certs.d && cp -r "$ETC_HOSTS"/. /etc/containerd/certs.d/; fi
    exec "$0" "$@"' "$bindir/containerd" --log-level debug --config "$d/config.toml" >"$clog" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  local started=no pulled=no
  for _ in $(seq 1 150); do
    if "$bindir/ctr" -a "$d/containerd.sock" version >/dev/null 2>&1; then started=yes; break; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if [ "$started" = yes ]; then
    if timeout 90 "$CRI_PULL" "$d/containerd.sock" "$IMAGE" >"$OUT/logs/$v-$variant.pull" 2>&1; then
      pulled=yes
    else
      pulled="no: $({ grep -m1 'message:' "$OUT/logs/$v-$variant.pull" || tail -n 1 "$OUT/logs/$v-$variant.pull"; } |
        tr '\t' ' ' | sed -E 's/^ +//' | cut -c1-200)"
    fi
  fi
  sleep 0.5
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  local keep=() p
  for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
  PIDS=("${keep[@]}")
  # The check's verdict on the same files: a bypass (1) exactly where the
  # daemon did not pull through the mirror.
  local expected_dir=$certs check_rc verdict mirrored=no
  case $variant in b | b-*) expected_dir=/etc/containerd/certs.d ;; esac
  [ "$pulled" = yes ] && [ "$(count mirror "$skip_m" blobs)" -gt 0 ] && mirrored=yes
  set +e
  "$DFDAEMON" containerd check --containerd-config "$d/config.toml" --config-path "$expected_dir" \
    --containerd-version "$v" >"$OUT/logs/$v-$variant.check" 2>&1
  check_rc=$?
  set -e
  if { [ "$mirrored" = yes ] && [ "$check_rc" = 0 ]; } || { [ "$mirrored" = no ] && [ "$check_rc" = 1 ]; }; then
    verdict="agrees ($check_rc)"
  else
    verdict="DISAGREES (check $check_rc, mirror used: $mirrored)"
    DISAGREE=$((DISAGREE + 1))
  fi
  local line
  line=$(grep -E "$interesting" "$clog" | grep -vE 'msg="(skip loading|loading plugin)' |
    sed -E -e 's/^time="[^"]*" //' -e "s|$WORK/||g" -e 's/ (type|name)=[^ ]+$//' | cut -c1-220 | awk '!seen[$0]++' |
    head -n 4 | tr '\t' ' ' | paste -sd '|' || true)
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$v" "$variant" "$cv" "$started" "$pulled" \
    "$(count mirror "$skip_m" manifests)" "$(count mirror "$skip_m" blobs)" \
    "$(count origin "$skip_o" manifests)" "$(count origin "$skip_o" blobs)" \
    "$(count legacy "$skip_l" manifests)" "$(count legacy "$skip_l" blobs)" "$effective" "$line" "$verdict" | tee -a "$TSV" >&2
  grep " $d/" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$d"
}

# A version-2 file as e2e/lib/rig.sh writes it: does this version load it,
# and where does config_path end up after migration?
v2_facts() { # VERSION BINDIR
  local v=$1 bindir=$2 d=$WORK/v2file-$1
  mkdir -p "$d"
  local loads="" lands="" rt
  for rt in no yes; do
    {
      cat <<TOML
version = 2
root = "$d/root"
state = "$d/state"
[grpc]
  address = "$d/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "$d/certs.d"
[plugins."io.containerd.grpc.v1.cri".containerd]
  discard_unpacked_layers = true
TOML
      if [ "$rt" = yes ]; then
        printf '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]\n  runtime_type = "io.containerd.runc.v2"\n'
      fi
    } >"$d/config.toml"
    local dump=$OUT/configs/$v-v2file-runtimes-$rt.dump.toml
    if "$bindir/containerd" --config "$d/config.toml" config dump >"$dump" 2>"$OUT/logs/$v-v2file.dump.err"; then
      loads=yes
      lands+="[with runtimes table: $rt] $(python3 - "$dump" "$d/certs.d" <<'PY'
import sys, tomllib
cfg = tomllib.load(open(sys.argv[1], "rb"))
want, hits = sys.argv[2], []
def walk(t, path):
    for k, v in t.items():
        if isinstance(v, dict):
            walk(v, path + [k])
        elif v == want:
            hits.append(".".join(path + [k]))
        elif k == "discard_unpacked_layers":
            hits.append(".".join(path + [k]) + "=" + str(v).lower())
walk(cfg, [])
print("version %s: %s" % (cfg.get("version"), "; ".join(hits) or "config_path dropped"))
PY
) "
    else
      loads="no: $(tail -n 1 "$OUT/logs/$v-v2file.dump.err" | cut -c1-200)"
      lands=-
      break
    fi
  done
  # Minimal files of the other versions: does this daemon load them, and
  # does the CRI config_path survive?
  local others="" cv
  for cv in 1 3 4; do
    case $cv in
      1) printf 'version = 1\nroot = "%s/root"\nstate = "%s/state"\n[grpc]\n  address = "%s/c.sock"\n[plugins.cri.registry]\n  config_path = "%s/certs.d"\n' "$d" "$d" "$d" "$d" ;;
      3) printf 'version = 3\nroot = "%s/root"\nstate = "%s/state"\n[grpc]\n  address = "%s/c.sock"\n[plugins."io.containerd.cri.v1.images".registry]\n  config_path = "%s/certs.d"\n' "$d" "$d" "$d" "$d" ;;
      4) printf 'version = 4\nroot = "%s/root"\nstate = "%s/state"\n[plugins."io.containerd.server.v1.grpc"]\n  address = "%s/c.sock"\n[plugins."io.containerd.cri.v1.images".registry]\n  config_path = "%s/certs.d"\n' "$d" "$d" "$d" "$d" ;;
    esac >"$d/v$cv.toml"
    if "$bindir/containerd" --config "$d/v$cv.toml" config dump >"$OUT/configs/$v-v${cv}file.dump.toml" 2>"$OUT/logs/$v-v${cv}file.dump.err"; then
      if grep -q "$d/certs.d" "$OUT/configs/$v-v${cv}file.dump.toml"; then
        others+="v$cv: loads, config_path kept; "
      else
        others+="v$cv: loads, config_path DROPPED; "
      fi
    else
      others+="v$cv: rejected ($(tail -n 1 "$OUT/logs/$v-v${cv}file.dump.err" | sed -E 's/.*: //' | cut -c1-120)); "
    fi
  done
  local dv dp
  dv=$(python3 -c 'import sys,tomllib; print(tomllib.load(open(sys.argv[1],"rb")).get("version", 1))' "$OUT/defaults/containerd-$v.toml")
  dp=$(grep -E '^\s*config_path\s*=' "$OUT/defaults/containerd-$v.toml" | head -n 1 | sed -E 's/^\s*//' || true)
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$v" "$dv" "${dp:-absent}" "$loads" "$lands" "$others" | tee -a "$FACTS" >&2
  rm -rf "$d"
}

for v in "$@"; do
  v=${v#v}
  if [ "$v" = "$DEBIAN_VERSION" ]; then
    bindir=$(dirname "$(command -v containerd)")
    "$bindir/containerd" --version | grep -q "$DEBIAN_VERSION" || fail "Debian containerd is not $DEBIAN_VERSION"
  else
    bindir=$("$here/build.sh" "v$v" | tail -n 1)
  fi
  log "containerd $v from $bindir"
  "$bindir/containerd" config default >"$OUT/defaults/containerd-$v.toml"
  v2_facts "$v" "$bindir"
  variants=(a a-multi b b-unset b-etc c e e-kept f g v1 v2 v2-discard v2-discard-rt)
  case $v in 1.* | 2.0.*) ;; *) variants+=(b-local d-local d-transfer a-multi-local v2-local) ;; esac
  if grep -A10 'io.containerd.transfer.v1.local.\]' "$OUT/defaults/containerd-$v.toml" | grep -q config_path; then
    variants+=(t)
  fi
  for variant in "${variants[@]}"; do run_variant "$v" "$bindir" "$variant"; done
done

host_after=$(ls -d "${host_paths[@]}" 2>/dev/null || true)
[ "$host_before" = "$host_after" ] || fail "the host changed: before [$host_before], after [$host_after]"

log "results ($TSV)"
{
  echo "| version | variant | config version | started | pulled | mirror manifests/blobs | origin manifests/blobs | legacy manifests/blobs | check's verdict | effective (config dump) | containerd log |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
  tail -n +2 "$TSV" | while IFS=$'\t' read -r v variant cv started pulled mm mb om ob lm lb eff line verdict; do
    echo "| $v | $variant | $cv | $started | $pulled | $mm/$mb | $om/$ob | $lm/$lb | $verdict | \`$eff\` | \`${line//|/\` \`}\` |"
  done
  echo
  echo "| version | config default writes | default config_path | version-2 file loads | version-2 config_path after migration | version 1/3/4 files |"
  echo "|---|---|---|---|---|---|"
  tail -n +2 "$FACTS" | while IFS=$'\t' read -r v dv dp loads lands others; do
    echo "| $v | version $dv | \`$dp\` | $loads | $lands | $others |"
  done
} | tee "$OUT/matrix.md"
[ "$DISAGREE" = 0 ] || fail "dfdaemon containerd check disagrees with the real containerd in $DISAGREE run(s): see the table"
log "dfdaemon containerd check agrees with the real containerd in every run"
