#!/usr/bin/env bash
# End-to-end Preheat: the operator's Preheat logic (`dragonfly-operator
# preheat-local`, the controller's run without Kubernetes) drives real
# dfdaemons against a real distribution registry (Debian docker-registry);
# real containerd daemons (Debian containerd 1.6) then pull with the
# registry stopped. Everything on loopback:
#
#  1. builds offline (umoci + busybox-static) a 4-layer image and a
#     two-platform image index (linux/amd64 + linux/arm64, each with a
#     random layer of its own) and pushes them;
#  2. preheats the 4-layer image on the seed peer: Succeeded with bytes
#     done = total, and the registry served each blob exactly once; a second
#     run finds everything in place and takes 0 blob bytes;
#  3. preheats the index for linux/amd64 only: the registry served no blob
#     of the arm64 manifest;
#  4. stops the registry; node 1, which never had the images, pulls the
#     4-layer image by digest and the index by digest through containerd's
#     CRI (the kubelet path) and runs the image; node 2 pulls the image by
#     tag (the tag's digest is shared through the scheduler).
#
# Blob bytes are counted from the registry's own access log.
# Needs root (containerd, runc). Installs its packages when missing.
# Usage: e2e/preheat/preheat-e2e.sh   (KEEP=1 keeps the work dir)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORK=$(mktemp -d /tmp/dragonfly-preheat-e2e.XXXXXX)
REGISTRY=127.0.0.1:5075
SCHEDULER_IP=127.0.0.30
SEED_IP=127.0.0.31
# Every process rig.sh starts; rig_cleanup stops them by PID.
# shellcheck disable=SC2034
PIDS=()
BIN=$ROOT/target/debug
# shellcheck source=e2e/lib/rig.sh
. "$ROOT/e2e/lib/rig.sh"
trap rig_cleanup EXIT
rig_install_packages

log "building dfdaemon, the scheduler, the operator and the CRI client"
(cd "$ROOT" && cargo build -q -p dragonfly-node-agent -p dragonfly-scheduler -p dragonfly-operator --bins &&
  cargo build -q -p dragonfly-e2e --example cri_pull)
CRI_PULL=$BIN/examples/cri_pull
OPERATOR=$BIN/dragonfly-operator
mkdir -p "$WORK/logs"

log "registry on $REGISTRY"
start_registry registry "$REGISTRY"
REGISTRY_PID=$LAST_PID
wait_http "http://$REGISTRY/v2/"

MiB=$((1024 * 1024))
log "building the images offline"
cd "$WORK"
umoci init --layout oci >/dev/null
# The 4-layer image: busybox, then three random layers.
umoci new --image oci:app >/dev/null
umoci unpack --rootless --image oci:app app-bundle >/dev/null
mkdir -p app-bundle/rootfs/bin app-bundle/rootfs/data
cp /bin/busybox app-bundle/rootfs/bin/busybox
umoci repack --refresh-bundle --image oci:app app-bundle >/dev/null
for i in 1 2 3; do
  head -c $((6 * MiB)) /dev/urandom >"app-bundle/rootfs/data/layer$i.bin"
  umoci repack --refresh-bundle --image oci:app app-bundle >/dev/null
done
umoci config --image oci:app --config.entrypoint /bin/busybox \
  --config.cmd echo --config.cmd hello-from-preheat >/dev/null
skopeo copy -q --dest-tls-verify=false oci:"$WORK/oci:app" "docker://$REGISTRY/library/app:v1"
# One image per platform, each with a random layer of its own.
for arch in amd64 arm64; do
  umoci new --image "oci:multi-$arch" >/dev/null
  umoci unpack --rootless --image "oci:multi-$arch" "multi-$arch" >/dev/null
  mkdir -p "multi-$arch/rootfs/bin" "multi-$arch/rootfs/data"
  cp /bin/busybox "multi-$arch/rootfs/bin/busybox"
  head -c $((5 * MiB)) /dev/urandom >"multi-$arch/rootfs/data/$arch.bin"
  umoci repack --image "oci:multi-$arch" "multi-$arch" >/dev/null
  umoci config --image "oci:multi-$arch" --os linux --architecture "$arch" \
    --config.entrypoint /bin/busybox --config.cmd echo --config.cmd "hello-from-$arch" >/dev/null
  skopeo copy -q --dest-tls-verify=false oci:"$WORK/oci:multi-$arch" "docker://$REGISTRY/library/multi:$arch"
done
MANIFEST_ACCEPT="application/vnd.oci.image.manifest.v1+json"
curl -fsS -H "Accept: $MANIFEST_ACCEPT" "http://$REGISTRY/v2/library/app/manifests/v1" -o app.json
for arch in amd64 arm64; do
  curl -fsS -H "Accept: $MANIFEST_ACCEPT" "http://$REGISTRY/v2/library/multi/manifests/$arch" -o "$arch.json"
done
# The index, and "DIGEST SIZE" lists of each manifest's blobs.
python3 - "$WORK" <<'PY'
import hashlib, json, sys
w = sys.argv[1]
def blobs(name):
    m = json.load(open(f"{w}/{name}.json"))
    with open(f"{w}/{name}.blobs", "w") as f:
        for d in [m["config"]] + m["layers"]:
            f.write(f'{d["digest"]} {d["size"]}\n')
blobs("app")
entries = []
for arch in ("amd64", "arm64"):
    raw = open(f"{w}/{arch}.json", "rb").read()
    blobs(arch)
    entries.append({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": "sha256:" + hashlib.sha256(raw).hexdigest(),
        "size": len(raw),
        "platform": {"os": "linux", "architecture": arch},
    })
index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries}
open(f"{w}/index.json", "w").write(json.dumps(index))
PY
curl -fsS -X PUT -H "Content-Type: application/vnd.oci.image.index.v1+json" \
  --data-binary @index.json "http://$REGISTRY/v2/library/multi/manifests/v1" -o /dev/null
digest_of() { echo "sha256:$(sha256sum "$1" | cut -d' ' -f1)"; }
APP_DIGEST=$(digest_of app.json)
INDEX_DIGEST=$(digest_of index.json)
AMD64_DIGEST=$(digest_of amd64.json)
APP_BYTES=$(awk '{s += $2} END {print s}' app.blobs)
APP_BLOBS=$(wc -l <app.blobs)
sort -u amd64.blobs >amd64.sorted
sort -u arm64.blobs >arm64.sorted
comm -13 amd64.sorted arm64.sorted | cut -d' ' -f1 >arm64-only.digests
echo "app:v1 = $APP_DIGEST: $APP_BLOBS blobs, $APP_BYTES bytes"
echo "multi:v1 = index $INDEX_DIGEST; linux/amd64 $AMD64_DIGEST ($(wc -l <amd64.blobs) blobs);" \
  "linux/arm64 has $(wc -l <arm64-only.digests) blob(s) of its own"
[ "$APP_BLOBS" -eq 5 ] || fail "expected config + 4 layers in app:v1, got $APP_BLOBS blobs"
[ -s arm64-only.digests ] || fail "the arm64 manifest shares every blob with amd64"
cd "$ROOT"

log "scheduler, a seed peer and two nodes with containerd"
start_scheduler "$SCHEDULER_IP"
start_dfdaemon seed "$SEED_IP" --seed
for n in 1 2; do
  # The nodes never reach the registry before the outage; with the default
  # offline policy they serve what the cluster saw served without
  # credentials (the seed's preheat read it anonymously).
  start_dfdaemon "node$n" "127.0.0.3$((n + 1))" --containerd \
    --containerd-config-path "$WORK/node$n/certs.d" --containerd-registry "http://$REGISTRY"
done
sleep 1.5 # one heartbeat: the scheduler knows every host
start_containerd 1
start_containerd 2

preheat() { # NAME YAML-SPEC-LINES -> status JSON in $WORK/NAME.status.json
  local name=$1
  printf 'apiVersion: p2p.dragonfly.dev/v1alpha1\nkind: Preheat\nmetadata:\n  name: %s\nspec:\n  cluster: local\n%s\n' \
    "$name" "$2" >"$WORK/$name.yaml"
  "$OPERATOR" preheat-local --file "$WORK/$name.yaml" --timeout 300s \
    --dfdaemon "http://$SEED_IP:65002,http://$SEED_IP:65001" \
    >"$WORK/$name.status.json" 2>>"$WORK/logs/preheat-$name.log" ||
    fail "preheat $name: $(tail -n 3 "$WORK/logs/preheat-$name.log"); status: $(head -c 2000 "$WORK/$name.status.json")"
}

status_field() { # FILE PYTHON-EXPRESSION over `s` (the status)
  python3 -c 'import json,sys; s=json.load(open(sys.argv[1]))["status"]; print(eval(sys.argv[2]))' "$1" "$2"
}

# Per-digest bytes the registry served since access-log line SKIP, as "DIGEST BYTES".
served_since() { # SKIP
  blob_gets registry "$1" | awk '{b[$1] += $2} END {for (d in b) print d, b[d]}' | sort
}

log "preheat app:v1 on the seed peer"
skip=$(wc -l <"$WORK/logs/registry.log")
start=$(date +%s.%N)
preheat app "  images: [\"$REGISTRY/library/app:v1\"]"
secs=$(echo "$(date +%s.%N) - $start" | bc)
phase=$(status_field "$WORK/app.status.json" 's["phase"]')
done_total=$(status_field "$WORK/app.status.json" '" ".join(str(s["progress"][k]) for k in ("bytesDone", "bytesTotal", "blobsDone", "blobsTotal"))')
read -r bytes_done bytes_total blobs_done blobs_total <<<"$done_total"
echo "preheat app: $phase in $secs s; blobs $blobs_done/$blobs_total, bytes $bytes_done/$bytes_total"
[ "$phase" = Succeeded ] || fail "preheat app ended $phase"
if [ "$bytes_done" -ne "$bytes_total" ] || [ "$bytes_total" -ne "$APP_BYTES" ]; then
  fail "bytes done/total $bytes_done/$bytes_total, image has $APP_BYTES"
fi
if [ "$blobs_done" -ne "$APP_BLOBS" ] || [ "$blobs_total" -ne "$APP_BLOBS" ]; then
  fail "blobs $blobs_done/$blobs_total"
fi
[ "$(status_field "$WORK/app.status.json" 's["images"][0]["digest"]')" = "$APP_DIGEST" ] || fail "resolved digest differs"
served_since "$skip" >"$WORK/app.served"
sort -u "$WORK/app.blobs" >"$WORK/app.sorted"
diff -u "$WORK/app.sorted" "$WORK/app.served" ||
  fail "the registry did not serve each blob of app:v1 exactly once (left: the image's blobs, right: served)"
app_served=$(blob_bytes registry)
echo "registry served each of the $APP_BLOBS blobs once: $app_served blob bytes in all"

log "preheat app:v1 again: already in the cluster"
skip=$(wc -l <"$WORK/logs/registry.log")
preheat app-again "  images: [\"$REGISTRY/library/app:v1\"]"
again=$(served_since "$skip" | awk '{s += $2} END {print s + 0}')
echo "second preheat: $(status_field "$WORK/app-again.status.json" 's["phase"]'), registry served $again blob bytes"
[ "$again" -eq 0 ] || fail "a second preheat took $again blob bytes from the registry"

log "preheat multi:v1 for linux/amd64 only"
skip=$(wc -l <"$WORK/logs/registry.log")
preheat multi "  images: [\"$REGISTRY/library/multi:v1\"]
  platforms: [linux/amd64]"
phase=$(status_field "$WORK/multi.status.json" 's["phase"]')
picked=$(status_field "$WORK/multi.status.json" '" ".join(m.get("platform","?") + "=" + m["digest"] for m in s["images"][0]["manifests"])')
echo "preheat multi: $phase; manifests: $picked"
[ "$phase" = Succeeded ] || fail "preheat multi ended $phase"
[ "$picked" = "linux/amd64=$AMD64_DIGEST" ] || fail "selected $picked, expected linux/amd64=$AMD64_DIGEST"
served_since "$skip" >"$WORK/multi.served"
cut -d' ' -f1 "$WORK/multi.served" >"$WORK/multi.served.digests"
arm=$(grep -cxFf "$WORK/arm64-only.digests" "$WORK/multi.served.digests" || true)
not_amd=$(cut -d' ' -f1 "$WORK/amd64.sorted" | grep -cvxFf - "$WORK/multi.served.digests" || true)
echo "registry served $(wc -l <"$WORK/multi.served.digests") blob(s), $(awk '{s += $2} END {print s + 0}' "$WORK/multi.served") bytes:" \
  "$arm of arm64's own blobs, $not_amd outside linux/amd64"
[ "$arm" -eq 0 ] || fail "arm64 blobs were fetched for a linux/amd64 preheat"
[ "$not_amd" -eq 0 ] || fail "blobs outside the linux/amd64 manifest were fetched"
# Every amd64 blob is in the cluster: fetched now, or earlier with app:v1.
missing=$(cut -d' ' -f1 "$WORK/amd64.sorted" | grep -vxFf "$WORK/multi.served.digests" | grep -cvxFf <(cut -d' ' -f1 "$WORK/app.sorted") || true)
[ "$missing" -eq 0 ] || fail "$missing linux/amd64 blob(s) were never fetched"

log "registry outage: nodes that never had the images pull them from the cluster"
kill "$REGISTRY_PID"
wait "$REGISTRY_PID" 2>/dev/null || true
curl -fsS -o /dev/null "http://$REGISTRY/v2/" 2>/dev/null && fail "registry still answers"
before=$(blob_bytes registry)

start=$(date +%s.%N)
cri_pull 1 "$REGISTRY/library/app@$APP_DIGEST"
echo "node 1 pulled app@$APP_DIGEST by digest in $(echo "$(date +%s.%N) - $start" | bc) s"
out=$(ctr -a "$WORK/node1/containerd/containerd.sock" -n k8s.io run --rm "$REGISTRY/library/app@$APP_DIGEST" e2e-run 2>&1) ||
  fail "ctr run on node 1: $out"
[ "$out" = "hello-from-preheat" ] || fail "unexpected container output on node 1: $out"
echo "node 1 ran it: $out"
cri_pull 1 "$REGISTRY/library/multi@$INDEX_DIGEST"
echo "node 1 pulled the index multi@$INDEX_DIGEST by digest (containerd picked linux/amd64)"

# needs cluster-wide tag sharing: node 2 never resolved app:v1; only the
# scheduler knows what the tag pointed to when the seed's mirror fetched it.
tag_result="by tag: pulled"
if "$CRI_PULL" "$WORK/node2/containerd/containerd.sock" "$REGISTRY/library/app:v1" >>"$WORK/logs/cri-pull2.log" 2>&1; then
  tagged=$(ctr -a "$WORK/node2/containerd/containerd.sock" -n k8s.io images ls |
    awk -v ref="$REGISTRY/library/app:v1" '$1 == ref {print $3}')
  [ "$tagged" = "$APP_DIGEST" ] || fail "node 2 resolved app:v1 to '$tagged', expected $APP_DIGEST"
  echo "node 2 pulled $REGISTRY/library/app:v1 by tag (resolved from the cluster to $APP_DIGEST)"
elif [ -n "${TAG_PULL_OPTIONAL:-}" ]; then
  tag_result="by tag: NOT SERVED (TAG_PULL_OPTIONAL set)"
  echo "node 2 could not pull by tag during the outage: $(tail -n 2 "$WORK/logs/cri-pull2.log")"
else
  fail "node 2 could not pull $REGISTRY/library/app:v1 by tag during the outage (cluster-wide tag sharing): $(tail -n 3 "$WORK/logs/cri-pull2.log")"
fi

outage=$(( $(blob_bytes registry) - before ))
[ "$outage" -eq 0 ] || fail "the registry served $outage blob bytes during the outage"
curl -fsS "http://127.0.0.32:40901/metrics" | grep -E '^dfdaemon_mirror_blob_bytes' || true

log "PASS: preheat of app:v1 (${APP_BLOBS} blobs) done $bytes_done/$bytes_total bytes with $app_served registry blob bytes, each blob once; a second preheat 0 bytes; multi:v1 for linux/amd64 fetched no arm64 blob; with the registry down, 0 registry blob bytes: by digest pulled and ran on node 1, index by digest pulled; $tag_result"
