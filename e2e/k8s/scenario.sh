#!/usr/bin/env bash
# The Kubernetes scenario, against the cluster in KUBECONFIG (the local one
# from up.sh, or any cluster that meets the contract below).
#   scenario.sh manifests   install with `kubectl apply -f manifests/`
#   scenario.sh helm        install with `helm install` (the full scenario)
# Contract with the cluster (lib.sh): the registries REGISTRY (anonymous) and
# PRIVATE_REGISTRY (htpasswd e2e:e2e-secret) hold the images of images.sh;
# node_dir NAME gives the host path of a node's /etc/containerd, and
# registry_log / registry_stop / registry_start reach the registry.
# Every wait is bounded; the first failed check exits non-zero.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
# shellcheck source=lib.sh
. "$here/lib.sh"
mode=${1:?usage: scenario.sh manifests|helm}
BIN=$(cat "$K8S_RUN/bin")
export PATH="$BIN:$PATH"
NSP=dragonfly-system
DFC=dragonfly
TAG=${TAG:-$(sed -n 's/^appVersion: "\(.*\)"/\1/p' "$root/charts/dragonfly/Chart.yaml")}
REPORT=${REPORT:-$K8S_RUN/report-$mode.txt}
: >"$REPORT"
kc() { kubectl "$@"; }
note() { log "$*"; echo "$*" >>"$REPORT"; }
check() { # DESCRIPTION COMMAND...: fails the scenario when COMMAND fails.
  local what=$1
  shift
  if "$@"; then note "ok: $what"; else die "$what"; fi
}
node_names() { for ((n = 1; n <= NODES; n++)); do node_name "$n"; done; }
node_etc() { echo "$K8S_RUN/nodes/$1/root/etc/containerd"; }

# What every node's containerd mirror config looks like: path and sha256 of
# every file under /etc/containerd.
snapshot_nodes() {
  local name
  for name in $(node_names); do
    (cd "$(node_etc "$name")" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sed "s|^|$name |")
  done
}

# Bytes the registry sent for blob GETs of REPO since log line FROM, per digest.
registry_blob_bytes() { # LOGNAME FROM REPO
  tail -n +"$2" "$K8S_RUN/logs/$1.log" | grep 'response completed' |
    grep "http.request.method=GET" | grep -o "http.request.uri=\"/v2/$3/blobs/sha256:[0-9a-f]*\".*http.response.written=[0-9]*" |
    sed -E 's|.*blobs/(sha256:[0-9a-f]+)".*written=([0-9]+)|\1 \2|' |
    awk '{b[$1] += $2} END {for (d in b) print d, b[d]}' | sort
}
log_lines() { wc -l <"$K8S_RUN/logs/$1.log"; }
# Layer and config digests and sizes of an image: "digest size" lines.
image_blobs() { # REGISTRY REPO TAG [USER:PASS]
  local auth=()
  [ -n "${4:-}" ] && auth=(-u "$4")
  curl -sf "${auth[@]}" -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    "http://$1/v2/$2/manifests/$3" | jq -r '.config, .layers[] | "\(.digest) \(.size)"' | sort
}
# Every blob of an image served exactly once since FROM: prints "served/size"
# per blob into the report and fails on anything but 1.00x.
check_blobs_once() { # LOGNAME FROM REGISTRY REPO TAG [AUTH]
  local served expect ok=0 d size got total=0 total_served=0
  expect=$(image_blobs "$3" "$4" "$5" "${6:-}")
  served=$(registry_blob_bytes "$1" "$2" "$4")
  while read -r d size; do
    got=$(echo "$served" | awk -v d="$d" '$1 == d {print $2}')
    got=${got:-0}
    total=$((total + size))
    total_served=$((total_served + got))
    [ "$got" = "$size" ] || ok=1
    note "  $4:$5 blob ${d:7:12} size $size served $got"
  done <<<"$expect"
  note "  $4:$5 registry blob bytes $total_served for $total bytes of blobs ($(awk -v a="$total_served" -v b="$total" 'BEGIN {printf "%.2f", a / b}')x)"
  return $ok
}
dfdaemon_pods() { kc -n "$NSP" get pods -l app.kubernetes.io/component=dfdaemon -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}'; }
# A dfdaemon metric summed over the pod's series with the given label.
pod_metric() { # POD METRIC LABEL
  kc get --raw "/api/v1/namespaces/$NSP/pods/$1:40901/proxy/metrics" 2>/dev/null |
    awk -v m="$2" -v l="$3" 'index($0, m) == 1 && index($0, l) > 0 {s += $NF} END {printf "%d\n", s}'
}
# A Deployment with one replica on each node, pulling IMAGE.
deploy_app() { # NAME IMAGE [PULL-SECRET] [REPLICAS]
  local secrets=""
  [ -n "${3:-}" ] && secrets="imagePullSecrets: [{name: $3}]"
  kc apply -f - >/dev/null <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: $1, namespace: e2e}
spec:
  replicas: ${4:-$NODES}
  selector: {matchLabels: {app: $1}}
  template:
    metadata: {labels: {app: $1}}
    spec:
      $secrets
      terminationGracePeriodSeconds: 1
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            - labelSelector: {matchLabels: {app: $1}}
              topologyKey: kubernetes.io/hostname
      containers:
        - name: app
          image: $2
          imagePullPolicy: IfNotPresent
YAML
}
# Every pod of the app runs and its data matches the layers that were pushed.
check_app_content() { # NAME
  local pod sums
  for pod in $(kc -n e2e get pods -l "app=$1" -o jsonpath='{.items[*].metadata.name}'); do
    sums=$(kc -n e2e exec "$pod" -- sh -c 'sha256sum /data/* 2>/dev/null' | awk '{print $1}' | sort | tr '\n' ' ')
    [ "$sums" = "$(cat "$K8S_RUN/app-data.sha256")" ] || { log "pod $pod has data $sums"; return 1; }
  done
}
rollout() { kc -n "$2" rollout status "$1" --timeout="${3:-300s}" >&2; }

install() {
  case $mode in
    manifests)
      kc apply -f "$root/manifests/00-namespace.yaml" -f "$root/manifests/01-crds.yaml" >/dev/null
      kc wait --for=condition=Established crd --all --timeout=60s >/dev/null
      kc apply -f "$root/manifests/02-rbac.yaml" -f "$root/manifests/03-operator.yaml" >/dev/null
      # The sample cluster, mirroring the local registries instead of docker.io.
      sed -e "s|^  - docker.io|  - http://$REGISTRY\n  - http://$PRIVATE_REGISTRY|" \
        "$root/manifests/04-dragonflycluster.yaml" | kc apply -f - >/dev/null
      ;;
    helm)
      helm install dragonfly "$root/charts/dragonfly" --namespace "$NSP" --create-namespace \
        --set "cluster.spec.registries={http://$REGISTRY,http://$PRIVATE_REGISTRY}" --wait --timeout 5m >&2
      ;;
  esac
}

uninstall() {
  case $mode in
    manifests)
      kc delete -f "$root/manifests/" --wait --timeout=300s >&2
      ;;
    helm)
      kc -n "$NSP" delete dfc "$DFC" --wait --timeout=300s >&2
      helm uninstall dragonfly --namespace "$NSP" --wait --timeout 5m >&2
      kc delete namespace "$NSP" --wait --timeout=300s >&2
      ;;
  esac
}

# Seed peers keep their cache on a PersistentVolume; this cluster has no
# provisioner, so an admin's static volumes back the claims.
seed_volumes() {
  local i
  for i in 0 1 2; do
    kc apply -f - >/dev/null <<YAML
apiVersion: v1
kind: PersistentVolume
metadata: {name: e2e-seed-$i, labels: {e2e: seed}}
spec:
  capacity: {storage: 100Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Delete
  hostPath: {path: $K8S_RUN/seed-volumes/$mode-$i, type: DirectoryOrCreate}
YAML
  done
}

# --- 1. install; Ready; printer columns; per-node health -------------------
before=$(snapshot_nodes)
kc create namespace e2e --dry-run=client -o yaml | kc apply -f - >/dev/null
seed_volumes
t=$(date +%s)
install
wait_for 600 "DragonflyCluster Ready" sh -c "kubectl -n $NSP get dfc $DFC -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True" ||
  { kc -n "$NSP" get dfc,pods -o wide >&2; kc -n "$NSP" describe dfc "$DFC" | tail -30 >&2; die "cluster not Ready"; }
note "install ($mode): Ready in $(($(date +%s) - t)) s"
kc -n "$NSP" get dfc -o wide | tee -a "$REPORT" >&2
columns=$(kc -n "$NSP" get dfc "$DFC" --no-headers -o wide)
check "printer columns have real values" sh -c "echo '$columns' | awk '{exit !(\$2 == \"True\" && \$3 ~ /^[0-9]+\\/[0-9]+/ && \$5 ~ /^$NODES\\/$NODES/)}'"
configured=$(kc -n "$NSP" get dfc "$DFC" -o jsonpath='{.status.nodesConfigured}')
check "status: $configured of $NODES nodes configured" test "$configured" = "$NODES"

# --- 2. every node's containerd points at its dfdaemon ----------------------
for name in $(node_names); do
  hosts=$(node_etc "$name")/certs.d/$REGISTRY/hosts.toml
  check "$name: containerd mirror config rewritten" grep -q '127.0.0.1:65001' "$hosts"
  code=$(ip netns exec "$name" curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:65001/v2/" || true)
  check "$name: hostPort 65001 answers containerd's address ($code)" test "$code" != 000
done

# --- 3. a Deployment on every node pulls through the mirror, once ----------
APP_SUMS=$("$here/images.sh" app "$REGISTRY" "e2e/app-$mode" v1 16)
echo "$APP_SUMS" >"$K8S_RUN/app-data.sha256"
from=$(log_lines registry)
deploy_app app "$REGISTRY/e2e/app-$mode:v1"
rollout deploy/app e2e
check "app pods read back the pushed bytes" check_app_content app
check "registry served each blob of e2e/app-$mode once" check_blobs_once registry "$from" "$REGISTRY" "e2e/app-$mode" v1
peers_total=0
for pod in $(dfdaemon_pods); do
  peer=$(pod_metric "$pod" dfdaemon_download_bytes_total 'source="peer"')
  origin=$(pod_metric "$pod" dfdaemon_download_bytes_total 'source="origin"')
  note "  $pod: from peers $peer B, from origin $origin B"
  peers_total=$((peers_total + peer))
done
check "nodes got bytes from peers" test "$peers_total" -gt 0
