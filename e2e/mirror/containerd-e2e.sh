#!/usr/bin/env bash
# End-to-end: a real distribution registry (Debian docker-registry), real
# containerd daemons (Debian containerd 1.6), a scheduler, a seed and two
# dfdaemons standing for two nodes, all on loopback.
#
#  1. builds an image offline (umoci + busybox-static, plus a random layer)
#     and pushes it to the registry;
#  2. each dfdaemon starts with --containerd and writes its node's certs.d
#     (an existing hosts.toml and certificate there are backed up first);
#  3. node 1 pulls through its mirror with CRI PullImage (the kubelet path,
#     which reads the daemon's config_path) and with `ctr images pull
#     --hosts-dir`;
#  4. node 2 pulls the same image the same two ways: the registry's access
#     log must show 0 blob bytes for those pulls (the swarm served them);
#  5. node 2 runs the image with `ctr run`;
#  6. a second registry requires htpasswd credentials: pulls with them work
#     (node 2's pull again takes 0 blob bytes from it); without them the
#     mirror answers the registry's 401 and no blob bytes leave it, although
#     the blobs are cached in the cluster;
#  7. the first registry is stopped; node 3, which never reached it, still
#     pulls the image by digest from its peers and runs it, and by tag, which
#     it never resolved itself (the scheduler knows what the tag pointed to),
#     with the default offline policy: the other nodes saw the registry serve
#     that image without credentials;
#  8. stopping the dfdaemons restores certs.d byte for byte.
#
# Bytes are counted from the registry's own access log, not our metrics.
# Needs root (containerd, runc). Installs its packages when missing.
# Usage: e2e/mirror/containerd-e2e.sh   (KEEP=1 keeps the work dir)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORK=$(mktemp -d /tmp/dragonfly-containerd-e2e.XXXXXX)
REGISTRY=127.0.0.1:5055
IMAGE=$REGISTRY/library/app:v1
PRIVATE=127.0.0.1:5056
PRIVATE_IMAGE=$PRIVATE/team/private:v1
CREDS=alice:s3cret
SCHEDULER_IP=127.0.0.20
# Every process rig.sh starts; rig_cleanup stops them by PID.
# shellcheck disable=SC2034
PIDS=()
BIN=$ROOT/target/debug
# shellcheck source=e2e/lib/rig.sh
. "$ROOT/e2e/lib/rig.sh"
trap rig_cleanup EXIT
rig_install_packages

log "building dfdaemon and the scheduler"
(cd "$ROOT" && cargo build -q -p dragonfly-node-agent -p dragonfly-scheduler --bins &&
  cargo build -q -p dragonfly-e2e --example cri_pull)
CRI_PULL=$BIN/examples/cri_pull
mkdir -p "$WORK/logs"

log "registry on $REGISTRY"
start_registry registry "$REGISTRY"
REGISTRY_PID=$LAST_PID
wait_http "http://$REGISTRY/v2/"

log "private registry on $PRIVATE (htpasswd)"
python3 -W ignore -c 'import crypt; print("alice:" + crypt.crypt("s3cret", crypt.mksalt(crypt.METHOD_BLOWFISH)))' >"$WORK/htpasswd"
EXTRA=1 start_registry private "$PRIVATE" <<YML
auth:
  htpasswd:
    realm: dragonfly-e2e
    path: $WORK/htpasswd
YML
for _ in $(seq 1 100); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$PRIVATE/v2/")" = 401 ] && break
  sleep 0.1
done

log "building the image offline"
cd "$WORK"
umoci init --layout oci >/dev/null
umoci new --image oci:app >/dev/null
umoci unpack --rootless --image oci:app bundle >/dev/null
mkdir -p bundle/rootfs/bin bundle/rootfs/data
cp /bin/busybox bundle/rootfs/bin/busybox
head -c $((24 * 1024 * 1024)) /dev/urandom >bundle/rootfs/data/random.bin
umoci repack --image oci:app bundle >/dev/null
umoci config --image oci:app --config.entrypoint /bin/busybox \
  --config.cmd echo --config.cmd hello-from-dragonfly >/dev/null
skopeo copy -q --dest-tls-verify=false oci:"$WORK/oci:app" "docker://$IMAGE"
# The private image has a layer of its own.
umoci unpack --rootless --image oci:app private-bundle >/dev/null
head -c $((8 * 1024 * 1024)) /dev/urandom >private-bundle/rootfs/data/private.bin
umoci repack --image oci:private private-bundle >/dev/null
skopeo copy -q --dest-tls-verify=false --dest-creds "$CREDS" oci:"$WORK/oci:private" "docker://$PRIVATE_IMAGE"
cd "$ROOT"

log "scheduler, seed and three dfdaemons"
start_scheduler "$SCHEDULER_IP"

# Each node's certs.d starts with a hosts.toml and a certificate of its own,
# which the mirror must keep as fallback and restore exactly.
for n in 1 2 3; do
  d=$WORK/node$n/certs.d/$REGISTRY
  mkdir -p "$d"
  printf 'server = "http://%s"\n\n[host."http://%s"]\n  capabilities = ["pull", "resolve"]\n' "$REGISTRY" "$REGISTRY" >"$d/hosts.toml"
  printf 'not really a certificate %s\n' "$n" >"$d/ca.crt"
  (cd "$WORK/node$n/certs.d" && find . -type f -print0 | sort -z | xargs -0 sha256sum) >"$WORK/node$n.before"
done

start_dfdaemon seed 127.0.0.21 --seed
# Every node with the default offline policy (anonymous): node 3 never
# reaches the registry before the outage, and serves what the cluster saw
# served without credentials.
for n in 1 2 3; do
  start_dfdaemon "node$n" "127.0.0.2$((n + 1))" --containerd \
    --containerd-config-path "$WORK/node$n/certs.d" --containerd-registry "http://$REGISTRY" \
    --containerd-registry "http://$PRIVATE"
done
sleep 1.5 # one heartbeat: the scheduler knows every host

echo "node1 hosts.toml written by dfdaemon:"
cat "$WORK/node1/certs.d/$REGISTRY/hosts.toml"

log "three containerd daemons"
start_containerd 1
start_containerd 2
start_containerd 3

log "pull on node 1"
before=$(blob_bytes)
start=$(date +%s.%N)
cri_pull 1 "$IMAGE"
ctr_pull 1 "$IMAGE"
node1_bytes=$(( $(blob_bytes) - before ))
echo "node 1 pulled in $(echo "$(date +%s.%N) - $start" | bc) s; registry served $node1_bytes blob bytes"
[ "$node1_bytes" -gt $((24 * 1024 * 1024)) ] || fail "node 1's pull did not reach the registry as expected ($node1_bytes bytes)"

log "pull on node 2"
before=$(blob_bytes)
start=$(date +%s.%N)
cri_pull 2 "$IMAGE"
ctr_pull 2 "$IMAGE"
node2_bytes=$(( $(blob_bytes) - before ))
echo "node 2 pulled in $(echo "$(date +%s.%N) - $start" | bc) s; registry served $node2_bytes blob bytes"
[ "$node2_bytes" -eq 0 ] || fail "node 2 fetched $node2_bytes blob bytes from the registry"
grep -q "mirror" "$WORK/logs/node2.log" || true
curl -fsS http://127.0.0.23:40901/metrics | grep -E '^dfdaemon_(mirror_requests|mirror_blob_bytes|mirror_blobs_served|download_bytes)' || true

log "run the image on node 2"
out=$(ctr -a "$WORK/node2/containerd/containerd.sock" run --rm --snapshotter native "$IMAGE" e2e-run 2>&1) ||
  fail "ctr run: $out"
echo "$out"
[ "$out" = "hello-from-dragonfly" ] || fail "unexpected container output"

log "private registry: credentials pass through, cached blobs stay private"
before=$(blob_bytes private)
ctr_pull 1 "$PRIVATE_IMAGE" --user "$CREDS"
p1=$(( $(blob_bytes private) - before ))
echo "node 1 pulled the private image with credentials; registry served $p1 blob bytes"
[ "$p1" -gt $((8 * 1024 * 1024)) ] || fail "node 1's private pull served $p1 blob bytes"
layer=$(skopeo inspect --tls-verify=false --creds "$CREDS" --raw "docker://$PRIVATE_IMAGE" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["layers"][-1]["digest"])')
before=$(blob_bytes private)
headers=$(curl -s -D - -o /dev/null -H "X-Dragonfly-Registry: http://$PRIVATE" \
  "http://127.0.0.23:65001/v2/team/private/blobs/$layer")
echo "$headers" | sed -n 1p | grep -q " 401" || fail "mirror served a private blob without credentials: $headers"
echo "$headers" | grep -qi '^www-authenticate: Basic realm="dragonfly-e2e"' || fail "challenge not relayed: $headers"
echo "node 2 without credentials: $(echo "$headers" | sed -n 1p | tr -d '\r'), $(echo "$headers" | grep -i '^www-authenticate' | tr -d '\r')"
if ctr -a "$WORK/node2/containerd/containerd.sock" images pull --snapshotter native \
  --hosts-dir "$WORK/node2/certs.d" "$PRIVATE_IMAGE" >"$WORK/logs/pull2-nocreds.log" 2>&1; then
  fail "node 2 pulled the private image without credentials"
fi
[ "$(( $(blob_bytes private) - before ))" -eq 0 ] || fail "blob bytes left the private registry for a client without credentials"
echo "node 2 ctr pull without credentials refused; 0 blob bytes left the registry"
before=$(blob_bytes private)
ctr_pull 2 "$PRIVATE_IMAGE" --user "$CREDS"
p2=$(( $(blob_bytes private) - before ))
echo "node 2 pulled the private image with credentials; registry served $p2 blob bytes"
[ "$p2" -eq 0 ] || fail "node 2's private pull took $p2 blob bytes from the registry"

log "registry outage: node 3 pulls by digest from its peers"
digest=$(ctr -a "$WORK/node1/containerd/containerd.sock" images ls | awk -v ref="$IMAGE" '$1 == ref {print $3}')
[ -n "$digest" ] || fail "no digest for $IMAGE on node 1"
kill "$REGISTRY_PID"
wait "$REGISTRY_PID" 2>/dev/null || true
curl -fsS -o /dev/null "http://$REGISTRY/v2/" 2>/dev/null && fail "registry still answers"
start=$(date +%s.%N)
ctr_pull 3 "$REGISTRY/library/app@$digest"
echo "node 3 pulled $REGISTRY/library/app@$digest in $(echo "$(date +%s.%N) - $start" | bc) s with the registry down"
curl -fsS "http://127.0.0.24:40901/metrics" >"$WORK/node3.metrics"
grep mirror_auth_checks "$WORK/node3.metrics" || true
public=$(awk '/mirror_auth_checks_total\{.*result="offline_allowed_public"/ {s += $NF} END {print s + 0}' "$WORK/node3.metrics")
echo "node 3 served $public objects the cluster saw read without credentials (default offline policy)"
[ "$public" -gt 0 ] || fail "node 3 pulled without the cluster's anonymous reads: another policy at work?"
out=$(ctr -a "$WORK/node3/containerd/containerd.sock" run --rm --snapshotter native "$REGISTRY/library/app@$digest" e2e-run3 2>&1) ||
  fail "ctr run on node 3: $out"
echo "$out"
[ "$out" = "hello-from-dragonfly" ] || fail "unexpected container output on node 3"
# Node 3 never resolved the tag itself: the cluster knows what it pointed to.
ctr_pull 3 "$IMAGE"
tagged=$(ctr -a "$WORK/node3/containerd/containerd.sock" images ls | awk -v ref="$IMAGE" '$1 == ref {print $3}')
[ "$tagged" = "$digest" ] || fail "node 3 resolved $IMAGE to '$tagged', expected $digest"
echo "node 3 pulled $IMAGE by tag with the registry down (resolved from the cluster to $digest)"

log "stopping dfdaemons restores certs.d"
for pid in "${DFDAEMON_PIDS[@]}"; do kill -TERM "$pid"; done
for pid in "${DFDAEMON_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
for n in 1 2 3; do
  (cd "$WORK/node$n/certs.d" && find . -type f -print0 | sort -z | xargs -0 sha256sum) >"$WORK/node$n.after"
  diff -u "$WORK/node$n.before" "$WORK/node$n.after" || fail "node $n certs.d differs after restore"
  echo "node $n certs.d byte-identical after restore"
done

log "PASS: node 1 pulled $node1_bytes blob bytes from the registry, node 2 pulled 0 and ran the image, node 3 pulled by digest and by tag during the outage"
