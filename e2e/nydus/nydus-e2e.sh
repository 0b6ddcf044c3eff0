#!/usr/bin/env bash
# End-to-end lazy pull with the real nydus client (seed 004: nydus + Dragonfly
# mirror mode), all on loopback:
#
#  1. a RAFS v6 image is built offline with `nydus-image create` from a tree
#     of random files; its data blob is pushed (monolithic upload) to a real
#     distribution registry (Debian docker-registry) that requires htpasswd
#     credentials, so nydusd sends Authorization and uses its mirror;
#  2. a scheduler, a seed and three node dfdaemons; one nydusd per node (FUSE)
#     with the registry backend and the node's dfdaemon as mirror, with the
#     seed 004 mirror settings (X-Dragonfly-Registry header, ping_url on the
#     admin port, auth_through false, timeout 10, retry_limit 2);
#  3. every node reads the same subset of files (a lazy pull: not all of
#     them), compared byte for byte (sha256) with the source; the registry's
#     access log gives blob requests and bytes; nydusd's own debug log gives
#     the ranges it asked for, hence the pieces they touch (piece length from
#     dfdaemon's task API);
#  4. baseline in the same run: fresh nydusd instances without mirror, fresh
#     caches, the same reads straight to the registry;
#  5. fault (a): node 2's dfdaemon is killed (SIGKILL, by PID) while node 2
#     reads a large file; nodes 1 and 3 read it at the same time;
#  6. fault (b): node 3's dfdaemon names its upstream through a TCP forwarder
#     (e2e/nydus/blackhole.py) that is switched into black-hole mode; node 3
#     then reads a second image nobody has read: /server/ping must report
#     the broken mirror (>= 500) and reads must not stall every time.
#
# Functional failures (wrong bytes, failed reads, origin bytes > N x the bytes
# of the touched pieces, a mirror never used, a ping that never reports the
# cut) make the script exit non-zero after all phases ran; every figure is
# printed. STRICT=1 also fails when origin bytes exceed the touched pieces
# (the goal: each piece from the origin once for the whole cluster) or when
# more reads stall than nydusd's failure limit.
# Needs root (FUSE). Installs its packages when missing.
# Usage: e2e/nydus/nydus-e2e.sh   (KEEP=1 keeps the work dir; SKIP_BUILD=1 uses
#        the dfdaemon and scheduler already built in target/debug)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORK=$(mktemp -d /tmp/dragonfly-nydus-e2e.XXXXXX)
REGISTRY=127.0.0.1:5057
FORWARDER=127.0.0.1:5058
REPO=e2e/nydus
CREDS=alice:s3cret
SCHED_IP=127.0.0.39
SEED_IP=127.0.0.40
NODE_IP=("" 127.0.0.41 127.0.0.42 127.0.0.43)
N=3
NYDUS_TIMEOUT=10 # seed 004: timeout / connect_timeout
PIDS=()
declare -A NYDUSD_PID=()
declare -A MNT=()
DFDAEMON_PID=()
FAILURES=()
GOALS=()

log() { printf '\n== %s\n' "$*"; }
die() { printf '\nFAIL: %s\n' "$*" >&2; exit 1; }
failed() { FAILURES+=("$*"); printf 'FAIL: %s\n' "$*" >&2; }
goal_missed() { GOALS+=("$*"); printf 'GOAL NOT MET: %s\n' "$*" >&2; }
now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }

cleanup() {
  local code=$?
  set +e
  for name in "${!NYDUSD_PID[@]}"; do kill -TERM "${NYDUSD_PID[$name]}" 2>/dev/null; done
  for name in "${!NYDUSD_PID[@]}"; do
    for _ in $(seq 1 50); do kill -0 "${NYDUSD_PID[$name]}" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "${NYDUSD_PID[$name]}" 2>/dev/null
  done
  grep " $WORK/" /proc/mounts | awk '{print $2}' | sort -r | while read -r m; do
    fusermount3 -uz "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
  done
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
  if [ "$code" -ne 0 ]; then
    for f in "$WORK"/logs/*.log; do
      [ -f "$f" ] && { echo "--- $f"; grep -v ' DEBUG ' "$f" | tail -n 15; }
    done
  fi
  if [ -z "${KEEP:-}" ]; then rm -rf "$WORK"; else echo "kept $WORK"; fi
  exit "$code"
}
trap cleanup EXIT

need() { command -v "$1" >/dev/null 2>&1; }
if ! need docker-registry || ! need fusermount3 || ! need bc || ! need jq || ! need curl; then
  log "installing packages"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-registry fuse3 bc jq curl >/dev/null
fi
[ -e /dev/fuse ] || die "/dev/fuse missing"

log "nydus tools"
NYDUS_BIN=$("$ROOT/e2e/nydus/install.sh" | tail -n 1)
NYDUSD=$NYDUS_BIN/nydusd
NYDUS_IMAGE=$NYDUS_BIN/nydus-image
[ -x "$NYDUSD" ] && [ -x "$NYDUS_IMAGE" ] || die "nydus tools missing in $NYDUS_BIN"
echo "$NYDUS_BIN"

if [ -z "${SKIP_BUILD:-}" ]; then
  log "building dfdaemon and the scheduler"
  (cd "$ROOT" && cargo build -q -p dragonfly-node-agent -p dragonfly-scheduler --bins)
else
  log "SKIP_BUILD: using the binaries already in target/debug"
fi
BIN=$ROOT/target/debug
mkdir -p "$WORK/logs" "$WORK/mnt" "$WORK/cache"

wait_http() { # URL
  for _ in $(seq 1 200); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  die "$1 not ready"
}
http_code() { curl -s -o /dev/null -m "${2:-3}" -w '%{http_code}' "$1" 2>/dev/null || true; }

# ---------------------------------------------------------------- image
log "building the source trees and the RAFS images offline"
python3 - "$WORK" <<'PY'
import os, random, sys
work = sys.argv[1]
rng = random.Random(4)
KIB, MIB = 1024, 1024 * 1024
def write(root, rel, size):
    path = os.path.join(work, root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, MIB)
            f.write(os.urandom(n))
            left -= n
subset = []
for i in range(32):
    rel = f"app/lib/lib{i:02d}.so"
    write("src", rel, rng.randint(8 * KIB, 160 * KIB))
    if i % 2 == 0:
        subset.append(rel)
for i in range(6):
    rel = f"app/bin/tool{i}"
    write("src", rel, rng.randint(512 * KIB, 3 * MIB))
    if i in (1, 4):
        subset.append(rel)
for i in range(10):
    rel = f"app/etc/conf{i}"
    write("src", rel, rng.randint(100, 2000))
    subset.append(rel)
for rel, size in [("data/big-24m.bin", 24 * MIB), ("data/blob-12m.bin", 12 * MIB),
                  ("data/blob-8m.bin", 8 * MIB), ("data/blob-6m.bin", 6 * MIB)]:
    write("src", rel, size)
# The second image (fault b): 1 MiB files, one chunk each.
for i in range(12):
    write("srcb", f"f{i:02d}.bin", MIB)
with open(os.path.join(work, "subset.txt"), "w") as f:
    f.write("\n".join(subset) + "\n")
PY
(cd "$WORK/src" && find . -type f | sort | xargs sha256sum) >"$WORK/src.sha256"
(cd "$WORK/srcb" && find . -type f | sort | xargs sha256sum) >"$WORK/srcb.sha256"
src_bytes=$(du -sb --apparent-size "$WORK/src" | cut -f1)
subset_bytes=$(cd "$WORK/src" && xargs stat -c %s <"$WORK/subset.txt" | awk '{s+=$1} END {print s}')
echo "source: $(wc -l <"$WORK/src.sha256") files, $src_bytes bytes; subset read on every node: $(wc -l <"$WORK/subset.txt") files, $subset_bytes bytes"

build_image() { # SRC NAME -> prints blob hex
  mkdir -p "$WORK/$2-blobs"
  "$NYDUS_IMAGE" create --fs-version 6 --log-level warn --bootstrap "$WORK/$2.boot" \
    --blob-dir "$WORK/$2-blobs" -J "$WORK/$2.json" "$WORK/$1" >"$WORK/logs/nydus-image-$2.log" 2>&1 ||
    die "nydus-image create: $(tail -n 5 "$WORK/logs/nydus-image-$2.log")"
  jq -r '.blobs[0]' "$WORK/$2.json"
}
BLOB_A=$(build_image src image-a)
BLOB_B=$(build_image srcb image-b)
BLOB_A_SIZE=$(stat -c %s "$WORK/image-a-blobs/$BLOB_A")
BLOB_B_SIZE=$(stat -c %s "$WORK/image-b-blobs/$BLOB_B")
echo "image A: blob sha256:$BLOB_A, $BLOB_A_SIZE bytes; image B: blob sha256:$BLOB_B, $BLOB_B_SIZE bytes"

# ---------------------------------------------------------------- registry
log "registry on $REGISTRY (htpasswd)"
python3 -W ignore -c 'import crypt; print("alice:" + crypt.crypt("s3cret", crypt.mksalt(crypt.METHOD_BLOWFISH)))' >"$WORK/htpasswd"
cat >"$WORK/registry.yml" <<YML
version: 0.1
log:
  level: warn
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $WORK/registry-data
http:
  addr: $REGISTRY
auth:
  htpasswd:
    realm: dragonfly-e2e
    path: $WORK/htpasswd
YML
docker-registry serve "$WORK/registry.yml" >"$WORK/logs/registry.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do
  [ "$(http_code "http://$REGISTRY/v2/")" = 401 ] && break
  sleep 0.1
done
[ "$(http_code "http://$REGISTRY/v2/")" = 401 ] || die "registry does not require credentials"

push_blob() { # FILE HEX
  local loc sep
  loc=$(curl -fsS -u "$CREDS" -X POST -D - -o /dev/null "http://$REGISTRY/v2/$REPO/blobs/uploads/" |
    awk 'tolower($1) == "location:" {print $2}' | tr -d '\r')
  [ -n "$loc" ] || die "no upload location"
  case $loc in http*) ;; *) loc="http://$REGISTRY$loc" ;; esac
  sep='?'
  [[ $loc == *\?* ]] && sep='&'
  curl -fsS -u "$CREDS" -X PUT -H 'Content-Type: application/octet-stream' \
    --data-binary @"$1" "$loc${sep}digest=sha256:$2" -o /dev/null || die "monolithic upload of $2 failed"
  [ "$(curl -s -o /dev/null -w '%{http_code}' -u "$CREDS" -I "http://$REGISTRY/v2/$REPO/blobs/sha256:$2")" = 200 ] ||
    die "blob $2 not in the registry after upload"
}
push_blob "$WORK/image-a-blobs/$BLOB_A" "$BLOB_A"
push_blob "$WORK/image-b-blobs/$BLOB_B" "$BLOB_B"
echo "pushed both data blobs to $REPO (POST + PUT ?digest=)"

log "black-hole-capable forwarder $FORWARDER -> $REGISTRY (node 3's upstream path)"
python3 -u "$ROOT/e2e/nydus/blackhole.py" "$FORWARDER" "$REGISTRY" >"$WORK/logs/forwarder.log" 2>&1 &
FORWARDER_PID=$!
PIDS+=("$FORWARDER_PID")
for _ in $(seq 1 50); do grep -q ready "$WORK/logs/forwarder.log" && break; sleep 0.1; done
[ "$(http_code "http://$FORWARDER/v2/")" = 401 ] || die "forwarder does not reach the registry"

# Registry access log: "GET /v2/<repo>/blobs/sha256:<hex> HTTP/1.1" STATUS BYTES
reg_mark() { wc -l <"$WORK/logs/registry.log"; }
reg_count() { # FROM_LINE HEX -> "gets2xx bytes gets401 heads other"
  tail -n +"$(($1 + 1))" "$WORK/logs/registry.log" |
    awk -v blob="blobs/sha256:$2 " '
      index($0, blob) && match($0, /"(GET|HEAD) [^"]*" [0-9]+ [0-9-]+/) {
        split(substr($0, RSTART, RLENGTH), f, " ")
        m = substr(f[1], 2); st = f[4]; b = f[5] + 0
        if (m == "HEAD") heads++
        else if (st == 200 || st == 206) { gets++; bytes += b }
        else if (st == 401) unauth++
        else other++
      }
      END { printf "%d %d %d %d %d\n", gets, bytes, unauth, heads, other }'
}
# Access log lines are written when a response ends: wait until it is quiet.
reg_settle() {
  local last=-1 cur stable=0
  for _ in $(seq 1 120); do
    cur=$(reg_mark)
    if [ "$cur" = "$last" ]; then stable=$((stable + 1)); else stable=0; fi
    [ "$stable" -ge 6 ] && return 0
    last=$cur
    sleep 0.5
  done
  echo "registry log still growing after 60 s" >&2
}

# ---------------------------------------------------------------- swarm
log "scheduler, seed and $N dfdaemons"
"$BIN/dragonfly-scheduler" --listen $SCHED_IP:8002 --admin-listen $SCHED_IP:8000 \
  >"$WORK/logs/scheduler.log" 2>&1 &
PIDS+=($!)
wait_http http://$SCHED_IP:8000/readyz
start_dfdaemon() { # NAME IP [extra args...]
  local name=$1 ip=$2
  shift 2
  "$BIN/dfdaemon" run --data-dir "$WORK/$name/data" --scheduler $SCHED_IP:8002 \
    --proxy-listen "$ip:65001" --peer-listen "$ip:65002" --admin-listen "$ip:40901" \
    --api-listen "$ip:65003" --allow-destination 127.0.0.0/8 \
    --advertise-ip "$ip" --hostname "$name" --cache-size 2GiB --heartbeat-interval 1s "$@" \
    >"$WORK/logs/$name.log" 2>&1 &
  PIDS+=($!)
  LAST_PID=$!
  wait_http "http://$ip:40901/readyz"
}
start_dfdaemon seed $SEED_IP --seed
for n in $(seq 1 $N); do
  start_dfdaemon "node$n" "${NODE_IP[$n]}"
  DFDAEMON_PID[$n]=$LAST_PID
done
sleep 1.5 # one heartbeat: the scheduler knows every host

# ---------------------------------------------------------------- nydusd
AUTH_B64=$(printf %s "$CREDS" | base64 -w0)
nydus_config() { # FILE CACHE_DIR [MIRROR_IP UPSTREAM]
  local mirrors="[]"
  if [ -n "${3:-}" ]; then
    mirrors="[{\"host\": \"http://$3:65001\", \"auth_through\": false,
      \"headers\": {\"X-Dragonfly-Registry\": \"$4\"},
      \"ping_url\": \"http://$3:40901/server/ping\"}]"
  fi
  cat >"$1" <<JSON
{
  "device": {
    "backend": {
      "type": "registry",
      "config": {
        "scheme": "http",
        "host": "$REGISTRY",
        "repo": "$REPO",
        "auth": "$AUTH_B64",
        "mirrors": $mirrors,
        "skip_verify": false,
        "timeout": $NYDUS_TIMEOUT,
        "connect_timeout": $NYDUS_TIMEOUT,
        "retry_limit": 2
      }
    },
    "cache": {"type": "blobcache", "config": {"work_dir": "$2"}}
  },
  "mode": "direct",
  "digest_validate": false,
  "iostats_files": false,
  "enable_xattr": true,
  "fs_prefetch": {"enable": false}
}
JSON
}
# Node n's mirror upstream: node 3 goes through the forwarder.
upstream_of() { if [ "$1" = 3 ]; then echo "http://$FORWARDER"; else echo "http://$REGISTRY"; fi; }

start_nydusd() { # NAME BOOTSTRAP [MIRROR_IP UPSTREAM]
  local name=$1 boot=$2 mnt=$WORK/mnt/$1
  mkdir -p "$mnt" "$WORK/cache/$name"
  nydus_config "$WORK/$name.json" "$WORK/cache/$name" "${3:-}" "${4:-}"
  "$NYDUSD" --config "$WORK/$name.json" --bootstrap "$boot" --mountpoint "$mnt" \
    --apisock "$WORK/$name.sock" --rlimit-nofile 0 --log-level debug \
    >"$WORK/logs/nydusd-$name.log" 2>&1 &
  NYDUSD_PID[$name]=$!
  MNT[$name]=$mnt
  for _ in $(seq 1 100); do
    mountpoint -q "$mnt" && return 0
    kill -0 "${NYDUSD_PID[$name]}" 2>/dev/null || break
    sleep 0.1
  done
  die "nydusd $name did not mount: $(tail -n 5 "$WORK/logs/nydusd-$name.log")"
}
stop_nydusd() { # NAME
  local pid=${NYDUSD_PID[$1]}
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  mountpoint -q "${MNT[$1]}" && { fusermount3 -uz "${MNT[$1]}" 2>/dev/null || umount -l "${MNT[$1]}"; }
  unset "NYDUSD_PID[$1]"
}

# Reads LIST (paths relative to the image root) through mount NAME and
# writes "OK path" / "BAD path" / "ERR path" lines to OUT.
read_list() { # NAME LIST SUMS OUT
  local name=$1 mnt=${MNT[$1]} rel want got
  : >"$4"
  while read -r rel; do
    want=$(awk -v p="./$rel" '$2 == p {print $1}' "$3")
    if got=$(timeout 120 sha256sum "$mnt/$rel" 2>>"$WORK/logs/read-$name.err" | cut -d' ' -f1) && [ -n "$got" ]; then
      if [ "$got" = "$want" ]; then echo "OK $rel"; else echo "BAD $rel"; fi
    else
      echo "ERR $rel"
    fi
  done <"$2" >>"$4"
}
check_reads() { # NAME OUT WHAT
  local ok bad
  ok=$(grep -c '^OK ' "$2" || true)
  bad=$(grep -vc '^OK ' "$2" || true)
  echo "  $1: $ok files identical to the source, $bad wrong or failed"
  [ "$bad" -eq 0 ] || failed "$3 on $1: $(grep -v '^OK ' "$2" | sed -n 1,5p | tr '\n' ' ')"
}

# Ranges nydusd asked for (its debug log: "Request: GET URL headers: {... "range": "bytes=a-b" ...}"),
# only the part of each log after the given byte offset.
ranges_of() { # HEX FILE:OFFSET... -> "start end url" lines
  local hex=$1
  shift
  python3 - "$hex" "$@" <<'PY'
import re, sys
hex_ = sys.argv[1]
pat = re.compile(r'Request: (GET|HEAD) (\S+) headers: (.*?), proxy:')
rng = re.compile(r'"range": "bytes=(\d+)-(\d+)"')
for arg in sys.argv[2:]:
    path, off = arg.rsplit(":", 1)
    with open(path, "rb") as f:
        f.seek(int(off))
        for line in f.read().decode("utf-8", "replace").splitlines():
            m = pat.search(line)
            if not m or hex_ not in m.group(2):
                continue
            r = rng.search(m.group(3))
            if r:
                print(r.group(1), int(r.group(2)) + 1, m.group(2))
PY
}
# Pieces touched by those ranges: "requests requested_bytes pieces touched_bytes list"
touched() { # PIECE_LENGTH BLOB_SIZE < ranges
  python3 -c '
import sys
pl, size = int(sys.argv[1]), int(sys.argv[2])
reqs = 0; asked = 0; pieces = set()
for line in sys.stdin:
    s, e, _ = line.split(None, 2)
    s, e = int(s), min(int(e), size)
    if e <= s: continue
    reqs += 1; asked += e - s
    pieces.update(range(s // pl, (e - 1) // pl + 1))
tb = sum(min(pl, size - p * pl) for p in pieces)
print(reqs, asked, len(pieces), tb, ",".join(map(str, sorted(pieces))) or "-")
' "$1" "$2"
}
log_offset() { stat -c %s "$WORK/logs/nydusd-$1.log"; }
ping_code() { http_code "http://${NODE_IP[$1]}:40901/server/ping" 3; }

# ---------------------------------------------------------------- phase 1
log "phase 1: $N nodes mount image A through their dfdaemon and read the subset"
mark=$(reg_mark) # nydusd reads the blob's chunk table at mount: count it too
for n in $(seq 1 $N); do
  start_nydusd "n$n" "$WORK/image-a.boot" "${NODE_IP[$n]}" "$(upstream_of "$n")"
done
echo "nydusd mirror config of node 1:"
jq -c '.device.backend.config.mirrors' "$WORK/n1.json"
t0=$(now)
jobs_=()
for n in $(seq 1 $N); do
  read_list "n$n" "$WORK/subset.txt" "$WORK/src.sha256" "$WORK/p1-n$n.out" &
  jobs_+=($!)
done
for j in "${jobs_[@]}"; do wait "$j" || true; done
echo "subset read on $N nodes in $(since "$t0") s"
for n in $(seq 1 $N); do check_reads "node $n" "$WORK/p1-n$n.out" "mirror-phase read"; done
reg_settle
read -r M_GETS M_BYTES M_401 M_HEADS M_OTHER <<<"$(reg_count "$mark" "$BLOB_A")"

# Piece length as dfdaemon recorded it for the task (the task id is the digest).
PIECE_LENGTH=
for ip in "${NODE_IP[@]:1}" $SEED_IP; do
  pl=$(curl -fsS -m 3 "http://$ip:65002/api/v1/tasks/$BLOB_A" 2>/dev/null | jq -r '.piece_length // empty' || true)
  if [ -n "$pl" ] && [ "$pl" -gt 0 ]; then PIECE_LENGTH=$pl; PIECE_FROM="task API on $ip"; break; fi
done
if [ -z "$PIECE_LENGTH" ]; then
  # wire/src/piece_length.rs rule: next power of two of length/1000,
  # clamped to 512 KiB-64 MiB.
  PIECE_LENGTH=$(python3 -c "n=-(-$BLOB_A_SIZE//1000); p=1
while p<n: p*=2
print(min(max(p,1<<19),64<<20))")
  PIECE_FROM="the piece-length rule (no node reported the task)"
fi
PIECES_TOTAL=$(( (BLOB_A_SIZE + PIECE_LENGTH - 1) / PIECE_LENGTH ))
args=()
for n in $(seq 1 $N); do args+=("$WORK/logs/nydusd-n$n.log:0"); done
ranges_of "$BLOB_A" "${args[@]}" >"$WORK/p1.ranges"
read -r T_REQS T_ASKED T_PIECES T_BYTES T_LIST <<<"$(touched "$PIECE_LENGTH" "$BLOB_A_SIZE" <"$WORK/p1.ranges")"
for n in $(seq 1 $N); do
  via=$(grep -c "http://${NODE_IP[$n]}:65001/" "$WORK/p1.ranges" || true)
  echo "  node $n nydusd: $via range requests to its mirror"
  [ "$via" -gt 0 ] || failed "node $n's nydusd never used its mirror"
done
echo "  nydusd range requests straight to the registry (all nodes; 401 round trips included): $(grep -c "http://$REGISTRY/" "$WORK/p1.ranges" || true)"
echo "piece length $PIECE_LENGTH ($PIECE_FROM); blob A has $PIECES_TOTAL pieces"
echo "nydusd asked for $T_ASKED bytes in $T_REQS ranges (all nodes); distinct pieces touched: $T_PIECES ($T_LIST) = $T_BYTES bytes"

# ---------------------------------------------------------------- phase 2
log "phase 2 (baseline): fresh nydusd without mirror, fresh caches, the same reads"
bmark=$(reg_mark)
for n in $(seq 1 $N); do start_nydusd "base$n" "$WORK/image-a.boot"; done
t0=$(now)
jobs_=()
for n in $(seq 1 $N); do
  read_list "base$n" "$WORK/subset.txt" "$WORK/src.sha256" "$WORK/p2-n$n.out" &
  jobs_+=($!)
done
for j in "${jobs_[@]}"; do wait "$j" || true; done
echo "subset read on $N nodes in $(since "$t0") s"
for n in $(seq 1 $N); do check_reads "baseline node $n" "$WORK/p2-n$n.out" "baseline read"; done
reg_settle
read -r B_GETS B_BYTES B_401 B_HEADS B_OTHER <<<"$(reg_count "$bmark" "$BLOB_A")"
for n in $(seq 1 $N); do stop_nydusd "base$n"; done

log "origin load for the same reads (registry access log, blob A)"
printf '%-44s %10s %6s %6s %6s %12s\n' "" "GETs 2xx" "401" "other" "HEAD" "bytes"
printf '%-44s %10s %6s %6s %6s %12s\n' "through dfdaemon (3 nodes, mirror mode)" "$M_GETS" "$M_401" "$M_OTHER" "$M_HEADS" "$M_BYTES"
printf '%-44s %10s %6s %6s %6s %12s\n' "nydusd straight to the registry (3 nodes)" "$B_GETS" "$B_401" "$B_OTHER" "$B_HEADS" "$B_BYTES"
printf '%-44s %10s %6s %6s %6s %12s\n' "pieces touched by the reads ($T_PIECES x $PIECE_LENGTH)" "" "" "" "" "$T_BYTES"
printf '%-44s %10s %6s %6s %6s %12s\n' "whole blob A" "" "" "" "" "$BLOB_A_SIZE"
[ "$M_BYTES" -le $((N * T_BYTES)) ] ||
  failed "origin bytes through the mirrors ($M_BYTES) exceed $N x the touched pieces ($((N * T_BYTES)))"
[ "$M_BYTES" -le "$T_BYTES" ] ||
  failed "origin bytes through the mirrors ($M_BYTES) exceed the touched pieces ($T_BYTES): more than each touched piece once"
[ "$M_GETS" -lt "$B_GETS" ] ||
  failed "origin GETs through the mirrors ($M_GETS) not fewer than straight to the registry ($B_GETS)"
echo "origin GETs: $M_GETS via mirrors vs $B_GETS direct; origin bytes: $M_BYTES via mirrors vs $B_BYTES direct"

# ---------------------------------------------------------------- fault a
BIG=data/big-24m.bin
BIG_SUM=$(awk -v p="./$BIG" '$2 == p {print $1}' "$WORK/src.sha256")
BIG_SIZE=$(stat -c %s "$WORK/src/$BIG")
log "fault (a): node 2's dfdaemon killed while node 2 reads $BIG ($BIG_SIZE bytes); nodes 1 and 3 read it too"
amark=$(reg_mark)
declare -A aoff=()
for n in $(seq 1 $N); do aoff[$n]=$(log_offset "n$n"); done
: >"$WORK/fa.progress"
t0=$(now)
timeout 300 python3 - "${MNT[n2]}/$BIG" "$WORK/fa.progress" >"$WORK/fa-n2.out" 2>"$WORK/logs/read-fa-n2.err" <<'PY' &
import hashlib, sys, time
h = hashlib.sha256(); n = 0
with open(sys.argv[1], "rb") as f:
    while True:
        b = f.read(1 << 20)
        if not b:
            break
        h.update(b); n += len(b)
        with open(sys.argv[2], "w") as p:
            p.write(str(n))
        time.sleep(0.15)  # paced, so the kill lands mid-read
print(h.hexdigest())
PY
reader=$!
others=()
for n in 1 3; do
  ( s=$(now); sum=$(timeout 300 sha256sum "${MNT[n$n]}/$BIG" | cut -d' ' -f1) || sum=ERR
    echo "$sum $(since "$s")" >"$WORK/fa-n$n.out" ) &
  others+=($!)
done
killed_at=
for _ in $(seq 1 600); do
  p=$(cat "$WORK/fa.progress" 2>/dev/null || echo 0)
  if [ "${p:-0}" -ge $((6 * 1024 * 1024)) ]; then
    kill -KILL "${DFDAEMON_PID[2]}"
    killed_at=$(now)
    { wait "${DFDAEMON_PID[2]}"; } 2>/dev/null || true
    echo "killed node 2's dfdaemon (PID ${DFDAEMON_PID[2]}) after node 2 read $p of $BIG_SIZE bytes, $(echo "$killed_at - $t0" | bc) s into the read"
    break
  fi
  kill -0 "$reader" 2>/dev/null || break
  sleep 0.05
done
[ -n "$killed_at" ] || failed "node 2's read never reached 6 MiB; dfdaemon not killed"
rc=0
wait "$reader" || rc=$?
n2_total=$(since "$t0")
[ -n "$killed_at" ] && echo "node 2 finished $(since "$killed_at") s after the kill (read paced at 150 ms per MiB)"
for j in "${others[@]}"; do wait "$j" || true; done
got=$(cat "$WORK/fa-n2.out" 2>/dev/null || true)
if [ "$rc" -ne 0 ] || [ "$got" != "$BIG_SUM" ]; then
  failed "node 2's read of $BIG after its dfdaemon died: rc $rc, sha256 '${got}' (want $BIG_SUM): $(tail -n 3 "$WORK/logs/read-fa-n2.err")"
else
  echo "  node 2: $BIG identical to the source ($n2_total s in all)"
fi
for n in 1 3; do
  read -r sum secs <"$WORK/fa-n$n.out" || true
  if [ "$sum" = "$BIG_SUM" ]; then echo "  node $n: $BIG identical to the source in $secs s"
  else failed "node $n's read of $BIG during node 2's fault: sha256 $sum"; fi
done
echo "  node 2 nydusd after the kill: $(tail -c +"$((aoff[2] + 1))" "$WORK/logs/nydusd-n2.log" | grep -c 'request mirror server failed' || true) failed mirror requests, $(tail -c +"$((aoff[2] + 1))" "$WORK/logs/nydusd-n2.log" | grep -c 'disable mirror' || true) 'disable mirror', $(tail -c +"$((aoff[2] + 1))" "$WORK/logs/nydusd-n2.log" | grep -c 'fallback to original server' || true) fallbacks logged"
# Node 2 keeps working on data it never read.
s=$(now)
more=data/blob-8m.bin
sum=$(timeout 120 sha256sum "${MNT[n2]}/$more" | cut -d' ' -f1) || sum=ERR
if [ "$sum" = "$(awk -v p="./$more" '$2 == p {print $1}' "$WORK/src.sha256")" ]; then
  echo "  node 2 (dfdaemon still down): $more identical to the source in $(since "$s") s"
else
  failed "node 2 read of $more with its dfdaemon down: $sum"
fi
reg_settle
read -r A_GETS A_BYTES A_401 A_HEADS A_OTHER <<<"$(reg_count "$amark" "$BLOB_A")"
args=()
for n in $(seq 1 $N); do args+=("$WORK/logs/nydusd-n$n.log:${aoff[$n]}"); done
ranges_of "$BLOB_A" "${args[@]}" >"$WORK/fa.ranges"
read -r FA_REQS FA_ASKED FA_PIECES FA_BYTES FA_LIST <<<"$(touched "$PIECE_LENGTH" "$BLOB_A_SIZE" <"$WORK/fa.ranges")"
echo "fault (a) origin load: $A_GETS GETs, $A_BYTES bytes, $A_401 401s, $A_OTHER other GETs, $A_HEADS HEADs; nydusd asked $FA_ASKED bytes in $FA_REQS ranges, $FA_PIECES pieces $FA_LIST ($FA_BYTES bytes)"
echo "  node 2 ranges straight to the registry after the kill: $(grep -c "http://$REGISTRY/" <(ranges_of "$BLOB_A" "$WORK/logs/nydusd-n2.log:${aoff[2]}") || true)"

# ---------------------------------------------------------------- fault b
log "fault (b): node 3's mirror upstream path cut (black hole) while dfdaemon lives"
# Image B has never been read anywhere: nothing of it is in the swarm. The
# path is cut before node 3 mounts it, so even its chunk table must come
# from the registry through the cut path (or by nydusd's fallback).
echo "node 3 ping before the cut: $(ping_code 3)"
bmark2=$(reg_mark)
kill -USR1 "$FORWARDER_PID"
cut_at=$(now)
sleep 0.2
grep -q "black-hole mode ON" "$WORK/logs/forwarder.log" || failed "forwarder did not switch to black-hole mode"
start_nydusd n3b "$WORK/image-b.boot" "${NODE_IP[3]}" "$(upstream_of 3)"
boff=0
( for _ in $(seq 1 600); do
    [ -f "$WORK/fb.done" ] && break
    # nydusd pings with its own timeout ($NYDUS_TIMEOUT s); so does this.
    echo "$(echo "$(now) - $cut_at" | bc) $(http_code "http://${NODE_IP[3]}:40901/server/ping" $NYDUS_TIMEOUT) $(ping_code 1)"
    sleep 0.5
  done ) >"$WORK/fb.ping" &
poller=$!
ls "${MNT[n3b]}" >/dev/null
stalls=0
reads=0
bad_reads=0
lat=()
for f in $(cd "$WORK/srcb" && ls); do
  s=$(now)
  sum=$(timeout 120 sha256sum "${MNT[n3b]}/$f" 2>>"$WORK/logs/read-fb.err" | cut -d' ' -f1) || sum=ERR
  secs=$(since "$s")
  reads=$((reads + 1))
  lat+=("$(printf '%.2f' "$secs")")
  if [ "$sum" != "$(awk -v p="./$f" '$2 == p {print $1}' "$WORK/srcb.sha256")" ]; then
    bad_reads=$((bad_reads + 1))
    echo "  $f: WRONG ($sum) after $secs s"
  fi
  [ "$(echo "$secs >= $NYDUS_TIMEOUT - 0.5" | bc)" = 1 ] && stalls=$((stalls + 1))
  sleep 1 # an application reading over time: spans nydusd's 5 s mirror re-check
done
touch "$WORK/fb.done"
wait "$poller" || true
echo "per-read latency, 1 MiB each, not cached anywhere, 1 s apart (s): ${lat[*]}"
echo "reads: $reads, wrong/failed: $bad_reads, stalled >= $((NYDUS_TIMEOUT - 1)).5 s: $stalls"
first5xx=$(awk '$2 >= 500 {print $1; exit}' "$WORK/fb.ping")
echo "node 3 /server/ping after the cut: $(awk '{print $2}' "$WORK/fb.ping" | sort | uniq -c | awk '{printf "%s x %s, ", $1, $2}')first >= 500 at ${first5xx:-never} s; node 1 ping meanwhile: $(awk '{print $3}' "$WORK/fb.ping" | sort | uniq -c | awk '{printf "%s x %s ", $1, $2}')"
echo "node 3 ping now: $(ping_code 3)"
echo "nydusd (image B) log: $(tail -c +"$((boff + 1))" "$WORK/logs/nydusd-n3b.log" | grep -c 'request mirror server failed' || true) failed mirror requests, $(tail -c +"$((boff + 1))" "$WORK/logs/nydusd-n3b.log" | grep -c 'disable mirror' || true) mirror disabled, $(tail -c +"$((boff + 1))" "$WORK/logs/nydusd-n3b.log" | grep -c 'Mirror server .* recovered' || true) recovered (re-enabled by ping)"
[ "$bad_reads" -eq 0 ] || failed "$bad_reads reads failed or returned wrong bytes on node 3 with its upstream cut"
[ "$stalls" -lt "$reads" ] || failed "every read on node 3 stalled for the nydus timeout ($NYDUS_TIMEOUT s)"
[ -n "$first5xx" ] || failed "node 3's /server/ping never answered >= 500 while its mirror upstream was cut"
# The mirror answers (5xx) within range_timeout, well before nydusd's own
# timeout: a read that still waits that long means the mirror hung.
[ "$stalls" -le 1 ] || failed "$stalls reads stalled for the nydus timeout ($NYDUS_TIMEOUT s): the mirror hung instead of failing fast"
reg_settle
read -r C_GETS C_BYTES C_401 C_HEADS C_OTHER <<<"$(reg_count "$bmark2" "$BLOB_B")"
echo "fault (b) origin load for blob B: $C_GETS GETs, $C_BYTES bytes, $C_401 401s, $C_OTHER other GETs, $C_HEADS HEADs"
kill -USR2 "$FORWARDER_PID"
back=
for i in $(seq 1 60); do
  [ "$(ping_code 3)" = 200 ] && { back=$((i / 2)); break; }
  sleep 0.5
done
echo "path restored: node 3 ping 200 again after ${back:-more than 30} s"
stop_nydusd n3b

# ---------------------------------------------------------------- metrics
log "dfdaemon metrics (mirror, range, origin)"
for n in 1 3; do
  echo "node $n:"
  curl -fsS -m 3 "http://${NODE_IP[$n]}:40901/metrics" 2>/dev/null |
    grep -E '^dfdaemon_(mirror|range|origin|download_bytes|source)' | sed 's/^/  /' || true
done
echo "seed:"
curl -fsS -m 3 "http://$SEED_IP:40901/metrics" 2>/dev/null |
  grep -E '^dfdaemon_(mirror|range|origin|download_bytes|source)' | sed 's/^/  /' || true

for n in 1 3; do stop_nydusd "n$n"; done
stop_nydusd n2

log "summary"
printf '%-58s %s\n' "origin GETs / bytes, 3 nodes via dfdaemon:" "$M_GETS / $M_BYTES"
printf '%-58s %s\n' "origin GETs / bytes, 3 nodes straight to the registry:" "$B_GETS / $B_BYTES"
printf '%-58s %s\n' "bytes of the pieces touched (union of all nodes):" "$T_BYTES ($T_PIECES of $PIECES_TOTAL pieces of $PIECE_LENGTH)"
printf '%-58s %s\n' "fault (a) origin GETs / bytes:" "$A_GETS / $A_BYTES"
printf '%-58s %s\n' "fault (b) reads stalled / reads; ping first >= 500 at:" "$stalls / $reads; ${first5xx:-never}"
for g in "${GOALS[@]}"; do echo "GOAL NOT MET: $g"; done
if [ "${#FAILURES[@]}" -gt 0 ]; then
  for f in "${FAILURES[@]}"; do echo "FAIL: $f"; done
  exit 1
fi
if [ -n "${STRICT:-}" ] && [ "${#GOALS[@]}" -gt 0 ]; then
  echo "FAIL (STRICT): goals not met"
  exit 1
fi
log "PASS"
