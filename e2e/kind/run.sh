#!/usr/bin/env bash
# Kubernetes end-to-end on kind: install with Helm, wait for Ready, pull an
# image on two nodes (the second from peers, shown by dfdaemon metrics), pull
# by digest with the registry paused, uninstall, and check that every node's
# containerd certs.d is exactly as before.
#
# Needs docker, kind, kubectl and helm on PATH (a laptop or CI runner; the
# development machines of this project have no Docker engine). Run from
# anywhere:  bash e2e/kind/run.sh      (KEEP=1 keeps the cluster afterwards)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CLUSTER="${CLUSTER:-dragonfly-e2e}"
NS=dragonfly-system
TAG="${TAG:-e2e}"
REGISTRY_NAME=kind-registry
REGISTRY="http://${REGISTRY_NAME}:5000"
TIMEOUT="${TIMEOUT:-600s}"
WORK="$(mktemp -d)"

log() { printf '\n== %s\n' "$*"; }
die() { echo "e2e/kind: FAIL: $*" >&2; exit 1; }
for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || die "$tool is not installed"
done

cleanup() {
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    log "failure diagnostics"
    kubectl -n "$NS" get dragonflyclusters,pods -o wide 2>/dev/null || true
    kubectl -n "$NS" describe dragonflycluster dragonfly 2>/dev/null | tail -40 || true
    kubectl -n "$NS" logs deploy/dragonfly-operator --tail=100 2>/dev/null || true
  fi
  docker unpause "$REGISTRY_NAME" >/dev/null 2>&1 || true
  if [ -z "${KEEP:-}" ]; then
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
    docker rm -f "$REGISTRY_NAME" >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT

log "kind cluster with containerd config_path (and the seed document's port mappings)"
cat > "$WORK/kind.yaml" <<EOF
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
containerdConfigPatches:
  - |-
    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = "/etc/containerd/certs.d"
nodes:
  - role: control-plane
  - role: worker
    extraPortMappings:
      - containerPort: 30950
        hostPort: 65001
      - containerPort: 30951
        hostPort: 40901
  - role: worker
EOF
kind create cluster --name "$CLUSTER" --config "$WORK/kind.yaml" --wait 120s
NODES=$(kind get nodes --name "$CLUSTER")
WORKERS=$(kind get nodes --name "$CLUSTER" | grep worker | sort)
NODE_A=$(echo "$WORKERS" | sed -n 1p)
NODE_B=$(echo "$WORKERS" | sed -n 2p)

snapshot() { # what containerd's mirror config looks like on every node
  for n in $NODES; do
    echo "## $n"
    docker exec "$n" sh -c 'find /etc/containerd/certs.d -type f -exec sha256sum {} + 2>/dev/null | sort' || true
  done
}
snapshot > "$WORK/certs-before.txt"

log "local registry on the kind network, with a test image of two 50 MB layers"
docker rm -f "$REGISTRY_NAME" >/dev/null 2>&1 || true
docker run -d --name "$REGISTRY_NAME" --network kind --restart=no -p 127.0.0.1:5001:5000 registry:2 >/dev/null
mkdir -p "$WORK/img"
head -c 50000000 /dev/urandom > "$WORK/img/a.bin"
head -c 50000000 /dev/urandom > "$WORK/img/b.bin"
printf 'FROM busybox:1.36\nCOPY a.bin /a.bin\nCOPY b.bin /b.bin\n' > "$WORK/img/Dockerfile"
docker build -q -t localhost:5001/e2e/blob:1 "$WORK/img" >/dev/null
docker push -q localhost:5001/e2e/blob:1 >/dev/null
DIGEST=$(docker inspect --format '{{index .RepoDigests 0}}' localhost:5001/e2e/blob:1 | cut -d@ -f2)
IMAGE="${REGISTRY_NAME}:5000/e2e/blob"

log "build and load images"
docker build -q -f "$ROOT/operator/Dockerfile" -t "dragonfly-p2p/dragonfly-operator:$TAG" "$ROOT" >/dev/null
docker build -q -f "$ROOT/e2e/kind/Dockerfile.dragonfly" -t "dragonfly-p2p/dragonfly:$TAG" "$ROOT" >/dev/null
kind load docker-image --name "$CLUSTER" "dragonfly-p2p/dragonfly-operator:$TAG" "dragonfly-p2p/dragonfly:$TAG"

log "helm install"
kubectl create namespace "$NS"
kubectl label namespace "$NS" pod-security.kubernetes.io/enforce=privileged
cat > "$WORK/values.yaml" <<EOF
image:
  tag: $TAG
cluster:
  spec:
    image:
      tag: $TAG
    registries:
      - $REGISTRY
    scheduler:
      replicas: 1
    seedPeer:
      replicas: 1
      cacheSize: 800MiB
      storage:
        size: 1Gi
    dfdaemon:
      cacheSize: 1GiB
EOF
helm install dragonfly "$ROOT/charts/dragonfly" -n "$NS" -f "$WORK/values.yaml" --wait --timeout "$TIMEOUT"

log "wait for Ready"
kubectl -n "$NS" wait dragonflycluster/dragonfly --for=condition=Ready --timeout="$TIMEOUT"
kubectl -n "$NS" wait dragonflycluster/dragonfly --for=condition=NodesConfigured --timeout=120s \
  || echo "warning: NodesConfigured is not True (see status.nodeProblems)"
kubectl -n "$NS" get dragonflycluster dragonfly
for n in $NODES; do
  docker exec "$n" test -f "/etc/containerd/certs.d/${REGISTRY_NAME}:5000/hosts.toml" \
    || die "$n has no hosts.toml for $REGISTRY_NAME:5000"
done

metric_peer_bytes() { # dfdaemon_download_bytes_total{source="peer"} on a node's dfdaemon
  local pod
  pod=$(kubectl -n "$NS" get pods -l app.kubernetes.io/component=dfdaemon \
    --field-selector "spec.nodeName=$1" -o jsonpath='{.items[0].metadata.name}')
  kubectl get --raw "/api/v1/namespaces/$NS/pods/$pod:40901/proxy/metrics" \
    | awk '/^dfdaemon_download_bytes_total\{.*source="peer"/ {s+=$2} END {print s+0}'
}

log "pull on $NODE_A (from the origin), then on $NODE_B (from peers)"
docker exec "$NODE_A" crictl pull "$IMAGE:1"
before=$(metric_peer_bytes "$NODE_B")
docker exec "$NODE_B" crictl pull "$IMAGE:1"
after=$(metric_peer_bytes "$NODE_B")
echo "peer bytes on $NODE_B: $before -> $after"
[ "$after" -gt "$before" ] || die "second pull did not come from peers"

log "registry paused: pull by digest again on $NODE_B, served by the swarm"
docker exec "$NODE_B" crictl rmi "$IMAGE:1" >/dev/null
docker pause "$REGISTRY_NAME" >/dev/null
docker exec "$NODE_B" crictl pull "$IMAGE@$DIGEST"
docker unpause "$REGISTRY_NAME" >/dev/null

log "helm uninstall (pre-delete hook waits for node restore)"
helm uninstall dragonfly -n "$NS" --wait --timeout "$TIMEOUT"
kubectl get dragonflyclusters -A --no-headers 2>/dev/null | grep . && die "DragonflyClusters left behind"
snapshot > "$WORK/certs-after.txt"
diff -u "$WORK/certs-before.txt" "$WORK/certs-after.txt" || die "certs.d not restored"

echo
echo "e2e/kind: all scenarios passed"
