# shellcheck shell=bash
# Shared pieces of the local end-to-end rig (sourced, not run): a real
# distribution registry with its access log, real containerd daemons, the
# scheduler and dfdaemons on loopback addresses.
#
# The sourcing script sets, before calling anything here:
#   ROOT  repository root          WORK  the run's temp dir (logs in $WORK/logs)
#   BIN   target/debug of ROOT     PIDS  an array; every process started is added
# and installs `trap rig_cleanup EXIT`.

log() { printf '\n== %s\n' "$*"; }
fail() { printf '\nFAIL: %s\n' "$*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1; }

# Stops every process by PID, unmounts what containers left under $WORK,
# shows the logs' tails on failure, removes $WORK unless KEEP is set.
rig_cleanup() {
  local code=$?
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  grep " $WORK/" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  if [ "$code" -ne 0 ]; then
    for f in "$WORK"/logs/*.log; do
      [ -f "$f" ] && { echo "--- $f"; tail -n 25 "$f"; }
    done
  fi
  if [ -z "${KEEP:-}" ]; then rm -rf "$WORK"; else echo "kept $WORK"; fi
  exit "$code"
}

rig_install_packages() {
  if ! need docker-registry || ! need containerd || ! need skopeo || ! need umoci || ! [ -x /bin/busybox ]; then
    log "installing packages"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-registry containerd skopeo umoci busybox-static >/dev/null
  fi
}

wait_http() { # URL
  for _ in $(seq 1 200); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  fail "$1 not ready"
}

# Starts `docker-registry` as NAME on ADDR with its access log in
# $WORK/logs/NAME.log; extra YAML (e.g. an auth section) on stdin when
# EXTRA=1. Sets LAST_PID.
start_registry() { # NAME ADDR
  local name=$1 addr=$2
  cat >"$WORK/$name.yml" <<YML
version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $WORK/$name-data
  delete:
    enabled: true
http:
  addr: $addr
YML
  if [ -n "${EXTRA:-}" ]; then cat >>"$WORK/$name.yml"; fi
  docker-registry serve "$WORK/$name.yml" >"$WORK/logs/$name.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

start_scheduler() { # IP
  "$BIN/dragonfly-scheduler" --listen "$1:8002" --admin-listen "$1:8000" \
    >"$WORK/logs/scheduler.log" 2>&1 &
  PIDS+=($!)
  wait_http "http://$1:8000/readyz"
}

# dfdaemon NAME on IP (ports 65001/65002/40901) talking to the scheduler on
# SCHEDULER_IP. Sets LAST_PID and adds it to DFDAEMON_PIDS.
DFDAEMON_PIDS=()
start_dfdaemon() { # NAME IP [extra args...]
  local name=$1 ip=$2
  shift 2
  "$BIN/dfdaemon" run --data-dir "$WORK/$name/data" --scheduler "$SCHEDULER_IP:8002" \
    --proxy-listen "$ip:65001" --peer-listen "$ip:65002" --admin-listen "$ip:40901" \
    --api-listen "$ip:65003" --allow-destination 127.0.0.0/8 \
    --advertise-ip "$ip" --hostname "$name" --cache-size 2GiB --heartbeat-interval 1s "$@" \
    >"$WORK/logs/$name.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
  DFDAEMON_PIDS+=("$LAST_PID")
  wait_http "http://$ip:40901/readyz"
}

# A private containerd for node N: everything under $WORK/nodeN/containerd,
# registry hosts from $WORK/nodeN/certs.d.
start_containerd() { # N
  local n=$1 dir=$WORK/node$1/containerd
  mkdir -p "$dir"
  cat >"$dir/config.toml" <<TOML
version = 2
root = "$dir/root"
state = "$dir/state"
[grpc]
  address = "$dir/containerd.sock"
[ttrpc]
  address = "$dir/containerd-ttrpc.sock"
[debug]
  address = "$dir/debug.sock"
[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "$WORK/node$n/certs.d"
TOML
  containerd --config "$dir/config.toml" >"$WORK/logs/containerd$n.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 100); do
    ctr -a "$dir/containerd.sock" version >/dev/null 2>&1 && break
    sleep 0.1
  done
  "$BIN/dfdaemon" containerd check --config-path "$WORK/node$n/certs.d" \
    --containerd-config "$dir/config.toml"
}

blob_bytes() { # [LOG] (default: registry) bytes of blob GETs in a registry's access log so far
  { grep -E '"GET /v2/[^ ]+/blobs/sha256:[0-9a-f]+ HTTP/[0-9.]+" 20[06] ' "$WORK/logs/${1:-registry}.log" || true; } |
    sed -E 's/.*" 20[06] ([0-9]+) .*/\1/' | awk '{s += $1} END {print s + 0}'
}

# "DIGEST BYTES" per blob GET in a registry's access log, after line SKIP.
blob_gets() { # LOG SKIP
  tail -n "+$(($2 + 1))" "$WORK/logs/$1.log" |
    { grep -E '"GET /v2/[^ ]+/blobs/sha256:[0-9a-f]+ HTTP/[0-9.]+" 20[06] ' || true; } |
    sed -E 's|.*/blobs/(sha256:[0-9a-f]+) HTTP/[0-9.]+" 20[06] ([0-9]+) .*|\1 \2|'
}

cri_pull() { # N REF [USER:PASSWORD]
  local n=$1 ref=$2
  shift 2
  "$CRI_PULL" "$WORK/node$n/containerd/containerd.sock" "$ref" "$@" >>"$WORK/logs/cri-pull$n.log" 2>&1 ||
    fail "CRI pull on node $n: $(tail -n 5 "$WORK/logs/cri-pull$n.log")"
  echo "node $n CRI PullImage: $(tail -n 1 "$WORK/logs/cri-pull$n.log")"
}

ctr_pull() { # N REF [ctr pull options...]
  local n=$1 ref=$2
  shift 2
  ctr -a "$WORK/node$n/containerd/containerd.sock" images pull --snapshotter native \
    --hosts-dir "$WORK/node$n/certs.d" "$@" "$ref" >"$WORK/logs/pull$n.log" 2>&1 ||
    fail "pull on node $n: $(tail -n 5 "$WORK/logs/pull$n.log")"
}
