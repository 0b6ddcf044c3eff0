#!/usr/bin/env bash
# The Kubernetes scenario, against the cluster in KUBECONFIG (the local one
# from up.sh, or any cluster that meets the contract below).
#   scenario.sh manifests   install with `kubectl apply -f manifests/`
#   scenario.sh helm        install the previous chart (PREV_CHART_REF) with
#                           `helm install`, `helm upgrade` to this one (the full
#                           scenario), and at the end the rendered chart applied
#                           server-side twice
# Contract with the cluster (lib.sh): the registries REGISTRY (anonymous) and
# PRIVATE_REGISTRY (htpasswd e2e:e2e-secret) hold the images of images.sh;
# node_dir NAME gives the host path of a node's /etc/containerd, and
# registry_log / registry_stop / registry_start reach the registry.
# Every wait is bounded; the first failed check exits non-zero.
set -euo pipefail
# A command that fails outside a check ends the scenario: say which.
trap 'rc=$?; echo "FAIL: scenario.sh line $LINENO: \"$BASH_COMMAND\" exited $rc" >&2' ERR
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
# shellcheck source=lib.sh
. "$here/lib.sh"
mode=${1:?usage: scenario.sh manifests|helm}
# The install path run first on this API server (run.sh says which).
FIRST_MODE=${FIRST_MODE:-$mode}
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
# "who:bytes" per client that read a blob since FROM, named after the pod or
# node that has the address now (a replaced pod shows as its address).
blob_readers() { # LOGNAME FROM REPO DIGEST
  local names
  names=$(kc get pods -A -o jsonpath='{range .items[*]}{.status.podIP} {.metadata.name}{"\n"}{end}' 2>/dev/null
    kc get nodes -o jsonpath='{range .items[*]}{.status.addresses[?(@.type=="InternalIP")].address} {.metadata.name}{"\n"}{end}' 2>/dev/null)
  tail -n +"$2" "$K8S_RUN/logs/$1.log" | grep 'response completed' | grep "http.request.method=GET" |
    grep "blobs/$4\"" | sed -E 's/.*remoteaddr="([^":]+):[0-9]+".*written=([0-9]+).*/\1 \2/' |
    awk -v names="$names" 'BEGIN {n = split(names, l, "\n"); for (i = 1; i <= n; i++) {split(l[i], f, " "); if (f[1] != "") who[f[1]] = f[2]}}
      {b[$1] += $2} END {for (a in b) printf "%s:%d ", (a in who ? who[a] : a), b[a]}'
}
# Layer and config digests and sizes of an image: "digest size" lines.
image_blobs() { # REGISTRY REPO TAG [USER:PASS]
  local auth=() scheme=http
  [ -n "${4:-}" ] && auth=(-u "$4")
  [ "$1" = "$TLS_REGISTRY" ] && { scheme=https; auth+=(--cacert "$TLS_REGISTRY_CA"); }
  curl -sf "${auth[@]}" -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    "$scheme://$1/v2/$2/manifests/$3" | jq -r '.config, .layers[] | "\(.digest) \(.size)"' | sort
}
# Whether a registry ever sent this blob (to any repository) in this run.
already_served() { # DIGEST
  local lines
  lines=$(cat "$K8S_RUN"/logs/registry{,-private,-tls}.log | grep 'response completed' |
    grep "blobs/$1\"" | grep -v 'http.response.written=0\b' || true)
  [ -n "$lines" ]
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
    if [ "$got" = 0 ] && already_served "$d"; then
      note "  $4:$5 blob ${d:7:12} size $size served 0 (the nodes had it from an earlier image)"
      total=$((total - size))
      continue
    fi
    [ "$got" = "$size" ] || ok=1
    note "  $4:$5 blob ${d:7:12} size $size served $got"
    # Who read it more than once: pod IPs (seed peers, dfdaemons) or node
    # IPs (containerd going around its mirror).
    if [ "$got" -gt "$size" ]; then note "    readers: $(blob_readers "$1" "$2" "$4" "$d")"; fi
  done <<<"$expect"
  LAST_RATIO=$(awk -v a="$total_served" -v b="$total" 'BEGIN {printf "%.2f", (b > 0 ? a / b : 0)}')
  note "  $4:$5 registry blob bytes $total_served for $total bytes of blobs (${LAST_RATIO}x)"
  # The share containerd fetched itself, around its mirror (from a node's
  # address: its dfdaemon was down or refused), against what the swarm
  # (seed peers and dfdaemons, from pod addresses) fetched.
  local direct
  direct=$(tail -n +"$2" "$K8S_RUN/logs/$1.log" | grep 'response completed' | grep "http.request.method=GET" |
    grep "/v2/$4/blobs/" | grep -E 'remoteaddr="10\.99\.0\.[0-9]+:' | grep -o 'http.response.written=[0-9]*' |
    awk -F= '{s += $2} END {print s + 0}')
  if [ "$direct" -gt 0 ]; then
    note "  $4:$5 of which containerd fetched $direct directly (fail-open around a node's mirror); the swarm $((total_served - direct)) ($(awk -v a="$((total_served - direct))" -v b="$total" 'BEGIN {printf "%.2f", (b > 0 ? a / b : 0)}')x)"
  fi
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
# Every running pod of the app reads back the bytes that were pushed.
check_app_content() { # NAME EXPECTED-SUMS
  local pod sums
  for pod in $(kc -n e2e get pods -l "app=$1" --field-selector=status.phase=Running -o jsonpath='{.items[*].metadata.name}'); do
    sums=$(kc -n e2e exec "$pod" -- sh -c 'sha256sum /data/* 2>/dev/null' | awk '{print $1}' | sort | tr '\n' ' ')
    [ "$sums" = "$2" ] || { log "pod $pod has data '$sums', pushed '$2'"; return 1; }
  done
}
rollout() { kc -n "$2" rollout status "$1" --timeout="${3:-300s}" >&2; }
# Ready means the cluster serves (one scheduler and seed peer, all but the
# tolerated dfdaemons); the figures below also need every replica up, as a
# rolled-out cluster has them.
# Every member must also announce to every scheduler replica: a host that
# still resolves an older scheduler set (it re-resolves at each heartbeat
# for two minutes after a change) routes a task to another owner, whose seed
# then fetches the blob a second time.
fully_ready() {
  local c want pod
  for c in Ready SchedulerReady SeedPeersReady DaemonsReady; do
    kubectl -n "$NSP" get dfc "$DFC" -o jsonpath="{.status.conditions[?(@.type==\"$c\")].status}" | grep -qx True || return 1
  done
  want=$(kc -n "$NSP" get deploy "$DFC-scheduler" -o jsonpath='{.status.readyReplicas}')
  for pod in $(kc -n "$NSP" get pods -l 'app.kubernetes.io/component in (dfdaemon,seed-peer)' -o jsonpath='{.items[*].metadata.name}'); do
    [ "$(pod_metric "$pod" dfdaemon_schedulers_resolved dfdaemon_schedulers_resolved)" = "$want" ] || return 1
  done
}

# The TLS registry's CA, as an admin gives it: a Secret the cluster names.
registry_ca_secret() {
  kc create namespace "$NSP" --dry-run=client -o yaml | kc apply -f - >/dev/null
  kc -n "$NSP" create secret generic e2e-registry-ca --from-file=ca.crt="$TLS_REGISTRY_CA" \
    --dry-run=client -o yaml | kc apply -f - >/dev/null
}
# The local cluster's disk is the machine's, whose free space the tests do
# not control (and which may look nearly full where a large share is
# reserved): the cache keeps caching up to 98 %, above which kubelet's 1 %
# eviction threshold (up.sh) still leaves room. The watermarks themselves
# are tested on a small tmpfs (node-agent/tests/disk_watermark.rs).
GC_HIGH=98 GC_LOW=95
WATERMARK_VALUES=(--set "cluster.spec.dfdaemon.gcHighWatermark=$GC_HIGH" --set "cluster.spec.dfdaemon.gcLowWatermark=$GC_LOW"
  --set "cluster.spec.dfdaemon.kubeletEvictionThreshold=1")
REGISTRY_CONFIGS="[{\"host\":\"$TLS_REGISTRY\",\"caBundle\":{\"secretRef\":{\"name\":\"e2e-registry-ca\",\"key\":\"ca.crt\"}}}]"
# The chart as of the last commit that changed it before this version (the
# helm install starts from it and upgrades, as a user would).
PREV_CHART_REF=${PREV_CHART_REF:-45f8e773f0571edd2e01e5566186980963ad96c2}
CRDS=(dragonflyclusters.p2p.dragonfly.dev preheats.p2p.dragonfly.dev)
# Each CRD's name and its versions' schemas, keys sorted: served (by name)
# or from files.
# Slurped: `kubectl get` prints one List, `kubectl create --dry-run` one
# object per file.
schemas_of() { jq -S -s '[.[] | (.items // [.])[] | {name: .metadata.name, versions: [.spec.versions[] | {name, schema}]}] | sort_by(.name)'; }
served_schemas() { timeout 30 kubectl get crd "$@" -o json | schemas_of; }
file_schemas() {
  local f args=()
  for f in "$@"; do args+=(-f "$f"); done
  timeout 30 kubectl create --dry-run=client -o json "${args[@]}" | schemas_of
}
# What the chart's CRD hook left behind (Helm deletes it once it succeeded).
crd_hook_left() {
  { kc get clusterroles,clusterrolebindings -o name; kc -n "$NSP" get jobs,serviceaccounts -o name; } |
    grep -- '-operator-crds$' || true
}

# helm install of the previous chart, then `helm upgrade` to this one: the
# CRDs (which Helm never upgrades) must become this version's, applied by
# this chart's pre-upgrade hook before Helm applies the release (nothing
# applies them by hand). A served schema made stale on purpose shows they
# were rewritten even when the two charts' CRDs are the same.
install_previous_then_upgrade() {
  local prev="$K8S_RUN/prev-chart" want i
  local values=(--set "cluster.spec.registries={http://$REGISTRY,http://$PRIVATE_REGISTRY,$TLS_REGISTRY}"
    --set-json "cluster.spec.registryConfigs=$REGISTRY_CONFIGS")
  rm -rf "$prev" && mkdir -p "$prev"
  git -C "$root" archive "$PREV_CHART_REF" charts/dragonfly | tar -x -C "$prev" ||
    die "cannot extract the previous chart ($PREV_CHART_REF)"
  helm install dragonfly "$prev/charts/dragonfly" --namespace "$NSP" --create-namespace \
    "${values[@]}" --wait --timeout 5m >&2
  note "ok: installed the previous chart ($PREV_CHART_REF)"
  want=$(file_schemas "$root"/charts/dragonfly/crds/*.yaml)
  if [ "$(file_schemas "$prev"/charts/dragonfly/crds/*.yaml)" = "$want" ]; then
    note "  the previous chart's CRDs equal this one's; the stale schema below is the only difference"
  fi
  # The kept-field check below proves the hook only for a field the
  # previous CRD lacks.
  if timeout 30 kubectl get crd "${CRDS[0]}" -o json |
    jq -e '.spec.versions[0].schema.openAPIV3Schema.properties.spec.properties.dfdaemon.properties.gcHighWatermark' >/dev/null; then
    note "  the previous CRD has gcHighWatermark already: its check below does not prove the CRD hook"
  fi
  timeout 30 kubectl patch crd "${CRDS[0]}" --type=json \
    -p '[{"op":"add","path":"/spec/versions/0/schema/openAPIV3Schema/description","value":"stale (e2e)"}]' >/dev/null
  # Fields the previous CRD did not have are given only now: given at
  # install they would have been pruned, and Helm's three-way merge would
  # not send them again. No CRD is applied by hand: the new chart's
  # pre-upgrade hook must update them before Helm applies the
  # DragonflyCluster, or the API server prunes those fields.
  helm upgrade dragonfly "$root/charts/dragonfly" --namespace "$NSP" "${values[@]}" "${WATERMARK_VALUES[@]}" \
    --wait --timeout 5m >&2
  check "the pre-upgrade CRD hook Job ran and succeeded" \
    test "$(helm status dragonfly --namespace "$NSP" -o json |
      jq -r '[.hooks[]? | select(.kind == "Job" and (.events | index("pre-upgrade")))][0].last_run.phase')" = Succeeded
  check "the CRD hook's Job, ServiceAccount and RBAC are deleted once it succeeded ($(crd_hook_left | tr '\n' ' '))" \
    test -z "$(crd_hook_left)"
  for ((i = 0; i < 60; i++)); do
    [ "$(served_schemas "${CRDS[@]}")" = "$want" ] && break
    sleep 2
  done
  if [ "$(served_schemas "${CRDS[@]}")" != "$want" ]; then
    diff <(served_schemas "${CRDS[@]}") <(echo "$want") >&2 || true
    die "helm upgrade from the previous chart left the served CRDs stale"
  fi
  note "ok: helm upgrade from the previous chart: the served CRDs are this version's"
  # Applied by Helm right after the hook, before the new operator ran.
  check "a field new in this CRD, set by the upgrade, is kept (gcHighWatermark)" \
    test "$(kc -n "$NSP" get dfc "$DFC" -o jsonpath='{.spec.dfdaemon.gcHighWatermark}')" = "$GC_HIGH"
}

install() {
  case $mode in
    manifests)
      kc apply -f "$root/manifests/00-namespace.yaml" -f "$root/manifests/01-crds.yaml" >/dev/null
      # A CRD created a moment ago may have no status yet, which `kubectl
      # wait` reports as an error rather than waiting: retry it, bounded.
      wait_for 60 "the CRDs to be Established" kubectl wait --for=condition=Established crd --all --timeout=5s
      kc apply -f "$root/manifests/02-rbac.yaml" -f "$root/manifests/03-operator.yaml" >/dev/null
      rollout deploy/dragonfly-operator "$NSP" 180s
      registry_ca_secret
      # The sample cluster, mirroring the local registries instead of docker.io.
      sed -e "s|^  - docker.io|  - http://$REGISTRY\n  - http://$PRIVATE_REGISTRY\n  - $TLS_REGISTRY\n  registryConfigs: $REGISTRY_CONFIGS|" \
        -e "s|^    gcHighWatermark: .*|    gcHighWatermark: $GC_HIGH|" -e "s|^    gcLowWatermark: .*|    gcLowWatermark: $GC_LOW|" \
        -e "s|^    kubeletEvictionThreshold: .*|    kubeletEvictionThreshold: 1|" \
        "$root/manifests/04-dragonflycluster.yaml" | kc apply -f - >/dev/null
      ;;
    helm)
      registry_ca_secret
      install_previous_then_upgrade
      ;;
  esac
}

uninstall() {
  case $mode in
    manifests)
      # The clusters first, while the operator that restores the nodes and
      # its RBAC still exist; then everything the manifests created.
      kc delete dfc --all --all-namespaces --wait --timeout=300s >&2
      kc delete -f "$root/manifests/" --ignore-not-found --wait --timeout=300s >&2
      ;;
    helm)
      kc -n "$NSP" delete dfc "$DFC" --wait --timeout=300s >&2
      helm uninstall dragonfly --namespace "$NSP" --wait --timeout 5m >&2
      kc delete namespace "$NSP" --wait --timeout=300s >&2
      ;;
  esac
}

# Seed peers keep their cache on a PersistentVolume; this cluster has no
# provisioner, so an admin's static volumes back the claims. Seed peers run
# as uid/gid 65532, and the kubelet applies fsGroup to no hostPath volume,
# so the directories are made theirs here (as a provisioner's would be).
seed_volumes() {
  local i
  for i in 0 1 2; do
    mkdir -p "$K8S_RUN/seed-volumes/$mode-$i"
    chown -R 65532:65532 "$K8S_RUN/seed-volumes/$mode-$i"
    kc apply -f - >/dev/null <<YAML
apiVersion: v1
kind: PersistentVolume
metadata: {name: e2e-seed-$i, labels: {e2e: seed}}
spec:
  capacity: {storage: 100Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
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
wait_for 600 "DragonflyCluster Ready (every replica)" fully_ready ||
  { kc -n "$NSP" get dfc,pods -o wide >&2; kc -n "$NSP" describe dfc "$DFC" | tail -30 >&2; die "cluster not Ready"; }
note "install ($mode): Ready in $(($(date +%s) - t)) s"
kc -n "$NSP" get dfc -o wide | tee -a "$REPORT" >&2
columns=$(kc -n "$NSP" get dfc "$DFC" --no-headers -o wide)
check "printer columns have real values" sh -c "echo '$columns' | awk '{exit !(\$2 == \"True\" && \$3 ~ /^[0-9]+\\/[0-9]+/ && \$5 ~ /^$NODES\\/$NODES/)}'"
configured=$(kc -n "$NSP" get dfc "$DFC" -o jsonpath='{.status.nodesConfigured}')
check "status: $configured of $NODES nodes configured" test "$configured" = "$NODES"
# Uninstalling the operator removes the cluster CA (helm: a Secret the
# previous chart's operator created, adopted after the upgrade).
ca_owner=$(kc -n "$NSP" get secret dragonfly-ca -o jsonpath='{range .metadata.ownerReferences[*]}{.kind}/{.name} {end}')
check "the cluster CA Secret is owned by the operator's Deployment ($ca_owner)" test "$ca_owner" = "Deployment/dragonfly-operator "

# The API server took the NetworkPolicies (this cluster's bridge CNI does
# not enforce them; a CNI with NetworkPolicy support does).
policies=$(kc -n "$NSP" get networkpolicies -l app.kubernetes.io/instance="$DFC" -o name | sort | tr '\n' ' ')
check "NetworkPolicies for the scheduler, seed peers and dfdaemons ($policies)" test "$policies" = \
  "networkpolicy.networking.k8s.io/$DFC-dfdaemon networkpolicy.networking.k8s.io/$DFC-scheduler networkpolicy.networking.k8s.io/$DFC-seed-peer "
mirror_from=$(kc -n "$NSP" get networkpolicy "$DFC-dfdaemon" -o jsonpath='{range .spec.ingress[?(@.ports[0].port==65001)]}{.from[*].podSelector.matchLabels.app\.kubernetes\.io/name}{end}')
check "the mirror port is open to the operator only ($mirror_from)" test "$mirror_from" = dragonfly-operator

# --- 2. every node's containerd points at its dfdaemon ----------------------
# containerd reaches the mirror at the node's own address. This cluster's
# portmap runs without `snat`, so 127.0.0.1:65001 leads nowhere (as with
# CNIs whose hostPort does not cover loopback, such as Cilium's): the
# mirror must not depend on it.
for ((n = 1; n <= NODES; n++)); do
  name=$(node_name "$n") ip=$(node_ip "$n")
  hosts=$(node_etc "$name")/certs.d/$REGISTRY/hosts.toml
  check "$name: containerd mirror config rewritten to the node's address" grep -q "http://$ip:65001" "$hosts"
  code=$(ip netns exec "$name" curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://$ip:65001/v2/" || true)
  check "$name: hostPort 65001 answers containerd's address ($code)" test "$code" != 000
  code=$(ip netns exec "$name" curl -s -o /dev/null -w '%{http_code}' --max-time 3 "http://127.0.0.1:65001/v2/" || true)
  check "$name: no loopback path to the hostPort in this cluster ($code)" test "$code" = 000
done

# --- 2b. cluster identity: members hold certificates from the issuer -------
# Each dfdaemon got a certificate naming its node (its host id), the peer
# port speaks mutual TLS with members only, and the issuer gives nothing
# to a token that is not a member pod's.
for pod in $(dfdaemon_pods); do
  node=$(kc -n "$NSP" get pod "$pod" -o jsonpath='{.spec.nodeName}')
  check "$pod: cluster identity node/$node" sh -c \
    "kubectl -n $NSP logs $pod -c dfdaemon 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g' | grep 'cluster identity' | grep -q 'identity=node/$node'"
done
first=$(node_name 1)
other_ip=$(node_ip 2)
code=$(ip netns exec "$first" curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://$other_ip:65002/api/v1/tasks" || true)
check "65002 refuses plain HTTP from another node ($code)" test "$code" = 000
code=$(ip netns exec "$first" curl -sk -o /dev/null -w '%{http_code}' --max-time 5 "https://$other_ip:65002/api/v1/tasks" || true)
check "65002 refuses TLS without a member certificate ($code)" test "$code" = 000
operator_ip=$(kc -n "$NSP" get pods -l app.kubernetes.io/name=dragonfly-operator -o jsonpath='{.items[0].status.podIP}')
csr=$(openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout /dev/null -subj /CN=probe 2>/dev/null | jq -Rs '{csr: .}')
ask_issuer() { # TOKEN: prints the HTTP status
  ip netns exec "$first" curl -sk -o /dev/null -w '%{http_code}' --max-time 10 \
    -H "Authorization: Bearer $1" -H 'Content-Type: application/json' -d "$csr" \
    "https://$operator_ip:8443/v1/certificates" || true
}
code=$(ask_issuer "$(kc -n e2e create token default --audience dragonfly)")
check "the issuer refuses a service account that is no member's ($code)" test "$code" = 403
code=$(ask_issuer "$(kc -n "$NSP" create token "$DFC-dfdaemon" --audience other)")
check "the issuer refuses a token for another audience ($code)" test "$code" = 401
code=$(ask_issuer "$(kc -n "$NSP" create token "$DFC-dfdaemon" --audience dragonfly)")
check "the issuer refuses a member's token not bound to a pod ($code)" test "$code" = 403

# --- the node agent's API rights: its own pod, nothing else ------------------
# RBAC grants it patch on pods; the install's admission policy narrows that
# to the pod its bound token names. Played as the API server sees the node
# agent: its service account with the token's pod-name.
as_node_agent() { # OWN-POD TARGET-POD MERGE-PATCH: prints "STATUS BODY"
  local body
  body=$(curl -s -w '\n%{http_code}' --cacert "$K8S_RUN/pki/ca.crt" \
    --cert "$K8S_RUN/pki/admin.crt" --key "$K8S_RUN/pki/admin.key" \
    -H "Impersonate-User: system:serviceaccount:$NSP:$DFC-dfdaemon" \
    -H "Impersonate-Group: system:serviceaccounts" \
    -H "Impersonate-Group: system:serviceaccounts:$NSP" \
    -H "Impersonate-Group: system:authenticated" \
    -H "Impersonate-Extra-authentication.kubernetes.io%2Fpod-name: $1" \
    -H 'Content-Type: application/merge-patch+json' -X PATCH -d "$3" \
    "https://$CP_IP:6443/api/v1/namespaces/$NSP/pods/$2")
  echo "$(echo "$body" | tail -n 1) $(echo "$body" | sed '$d' | jq -r '.message // empty' 2>/dev/null)"
}
# The policy holds only the agents the operator lists in its parameter
# ConfigMap: after an upgrade from a chart without it, the new operator's
# first reconcile writes it (until then the policy is open, threat model 31).
agents_listed() {
  kubectl -n "$NSP" get configmap dragonfly-node-agents -o json 2>/dev/null |
    jq -e --arg k "$NSP.$DFC" '.data[$k] // empty | length > 0' >/dev/null
}
wait_for 120 "the operator to list its node agents for the policy" agents_listed
agent=$(dfdaemon_pods | sed -n 1p)
operator_pod=$(kc -n "$NSP" get lease dragonfly-operator-leader -o jsonpath='{.spec.holderIdentity}')
annotate='{"metadata":{"annotations":{"e2e.dragonfly.dev/probe":"1"}}}'
# The API server loads a new policy, binding and parameter through its
# informers: a fresh install or upgrade takes effect within seconds.
policy_holds() { case "$(as_node_agent "$agent" "$operator_pod" "$annotate")" in 2*) return 1 ;; esac; }
wait_for 30 "the admission policy to hold the node agent" policy_holds || true
own=$(as_node_agent "$agent" "$agent" "$annotate")
check "the node agent may annotate its own pod ($own)" test "${own%% *}" = 200
other=$(as_node_agent "$agent" "$operator_pod" "$annotate")
note "  node agent patching the operator's pod: $other"
# kube-apiserver stops its ConfigMap parameter informer for good once no
# binding names that kind (kubernetes/kubernetes#130887): after the first
# mode's uninstall deleted the binding, this API server lets the policy
# allow until it restarts (threat model row 31). The first install on a
# fresh API server is held to the policy; a later one is reported.
if [ "$mode" = "$FIRST_MODE" ]; then
  check "the node agent may not touch the operator's pod" \
    sh -c 'case "$1" in 2*) exit 1;; esac; case "$1" in *"own pod only"*) exit 0;; esac; exit 1' _ "$other"
  relabel=$(as_node_agent "$agent" "$agent" '{"metadata":{"labels":{"app.kubernetes.io/component":"scheduler"}}}')
  note "  node agent relabelling its own pod: $relabel"
  check "the node agent may not relabel its own pod (Service hijack)" \
    sh -c 'case "$1" in 2*) exit 1;; esac; case "$1" in *"labels"*) exit 0;; esac; exit 1' _ "$relabel"
else
  case "$other" in
    2*) note "  known: a reinstall on the same kube-apiserver is not held to the policy until it restarts (kubernetes/kubernetes#130887)" ;;
    *) note "ok: the node agent may not touch the operator's pod (reinstall)" ;;
  esac
fi
# The policy holds the accounts the operator lists, not any `*-dfdaemon`:
# an unrelated app's account (here with every RBAC right) is left alone.
listed=$(kc -n "$NSP" get configmap dragonfly-node-agents -o json | jq -r --arg k "$NSP.$DFC" '.data[$k] // empty')
check "the operator lists its node agents for the policy ($listed)" test "$listed" = "system:serviceaccount:$NSP:$DFC-dfdaemon"
unrelated=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 --cacert "$K8S_RUN/pki/ca.crt" \
  --cert "$K8S_RUN/pki/admin.crt" --key "$K8S_RUN/pki/admin.key" \
  -H "Impersonate-User: system:serviceaccount:$NSP:unrelated-dfdaemon" -H "Impersonate-Group: system:masters" \
  -H 'Content-Type: application/merge-patch+json' -X PATCH -d '{"metadata":{"labels":{"e2e.dragonfly.dev/probe":"1"}}}' \
  "https://$CP_IP:6443/api/v1/namespaces/$NSP/pods/$agent" || true)
check "an unlisted *-dfdaemon account is not held by the policy ($unrelated)" test "$unrelated" = 200
kc -n "$NSP" label pod "$agent" e2e.dragonfly.dev/probe- >/dev/null

# --- 3. a Deployment on every node pulls through the mirror, once ----------
APP_SUMS=$("$here/images.sh" app "$REGISTRY" "e2e/app-$mode" v1 16)
from=$(log_lines registry)
deploy_app app "$REGISTRY/e2e/app-$mode:v1"
rollout deploy/app e2e
check "app pods read back the pushed bytes" check_app_content app "$APP_SUMS"
check "registry served each blob of e2e/app-$mode once" check_blobs_once registry "$from" "$REGISTRY" "e2e/app-$mode" v1
peers_total=0
for pod in $(dfdaemon_pods); do
  peer=$(pod_metric "$pod" dfdaemon_download_bytes_total 'source="peer"')
  origin=$(pod_metric "$pod" dfdaemon_download_bytes_total 'source="origin"')
  note "  $pod: from peers $peer B, from origin $origin B"
  peers_total=$((peers_total + peer))
done
check "nodes got bytes from peers" test "$peers_total" -gt 0
# Proof of use, not of files: each node's containerd came through its mirror.
wait_for 60 "every node to report a pull through its mirror" sh -c \
  "test \"\$(kubectl -n $NSP get dfc $DFC -o jsonpath='{.status.nodesPullingThroughMirror}')\" = $NODES"
check "status: every node pulled through its mirror ($(kc -n "$NSP" get dfc "$DFC" -o jsonpath='{.status.nodesPullingThroughMirror}')/$NODES)" \
  test "$(kc -n "$NSP" get dfc "$DFC" -o jsonpath='{.status.nodesPullingThroughMirror}')" = "$NODES"

# --- 3b. a private image with an imagePullSecret ----------------------------
PRIV_SUMS=$("$here/images.sh" app "$PRIVATE_REGISTRY" "e2e/private-$mode" v1 8 e2e:e2e-secret)
kc -n e2e create secret docker-registry regcred --docker-server="$PRIVATE_REGISTRY" \
  --docker-username=e2e --docker-password=e2e-secret --dry-run=client -o yaml | kc apply -f - >/dev/null
from=$(log_lines registry-private)
deploy_app private "$PRIVATE_REGISTRY/e2e/private-$mode:v1" regcred
rollout deploy/private e2e 300s
check "private pods read back the pushed bytes" check_app_content private "$PRIV_SUMS"
check "private registry served each blob of e2e/private-$mode once" \
  check_blobs_once registry-private "$from" "$PRIVATE_REGISTRY" "e2e/private-$mode" v1 e2e:e2e-secret
# Without the secret: kubelet's pull must fail (the node has the image, so
# ask for a pull with Always), and the mirror must not hand out the content.
kc -n e2e apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: no-secret, namespace: e2e}
spec:
  nodeName: $(node_name 1)
  terminationGracePeriodSeconds: 1
  containers: [{name: app, image: "$PRIVATE_REGISTRY/e2e/private-$mode:v1", imagePullPolicy: Always}]
YAML
wait_for 90 "no-secret pod to fail its pull" sh -c \
  "kubectl -n e2e get pod no-secret -o jsonpath='{.status.containerStatuses[0].state.waiting.reason}' | grep -Eq 'ErrImagePull|ImagePullBackOff'"
note "ok: a pod without the secret cannot pull the private image ($(kc -n e2e get pod no-secret -o jsonpath='{.status.containerStatuses[0].state.waiting.reason}'))"
kc -n e2e delete pod no-secret --wait=false >/dev/null
layer=$(image_blobs "$PRIVATE_REGISTRY" "e2e/private-$mode" v1 e2e:e2e-secret | sort -k2 -n | tail -1 | cut -d' ' -f1)
for ((n = 1; n <= NODES; n++)); do
  name=$(node_name "$n")
  code=$(ip netns exec "$name" curl -s -o /dev/null -w '%{http_code}' --max-time 10 \
    -H "X-Dragonfly-Registry: http://$PRIVATE_REGISTRY" "http://$(node_ip "$n"):65001/v2/e2e/private-$mode/blobs/$layer?ns=$PRIVATE_REGISTRY" || true)
  check "$name: the mirror refuses the private layer without credentials ($code)" test "$code" = 401 -o "$code" = 403
done

# --- 3c. a registry behind a private CA, mirrored with the CA the cluster names
TLS_SUMS=$("$here/images.sh" app "$TLS_REGISTRY" "e2e/tls-$mode" v1 8)
from=$(log_lines registry-tls)
deploy_app tls "$TLS_REGISTRY/e2e/tls-$mode:v1"
rollout deploy/tls e2e 300s
check "private-CA registry: pods read back the pushed bytes" check_app_content tls "$TLS_SUMS"
check "private-CA registry served each blob of e2e/tls-$mode once (the mirror verified it with the cluster's CA bundle)" \
  check_blobs_once registry-tls "$from" "$TLS_REGISTRY" "e2e/tls-$mode" v1

# --- 4. Preheat, then the registry stops, then every node starts it --------
PRE_SUMS=$("$here/images.sh" app "$REGISTRY" "e2e/preheat-$mode" v1 8)
kc -n "$NSP" apply -f - >/dev/null <<YAML
apiVersion: p2p.dragonfly.dev/v1alpha1
kind: Preheat
metadata: {name: warm, namespace: $NSP}
spec:
  cluster: $DFC
  images: ["$REGISTRY/e2e/preheat-$mode:v1"]
  scope: AllNodes
YAML
wait_for 300 "Preheat Succeeded" sh -c "kubectl -n $NSP get preheat warm -o jsonpath='{.status.phase}' | grep -qx Succeeded" ||
  { kc -n "$NSP" get preheat warm -o yaml | tail -30 >&2; die "preheat did not succeed"; }
kc -n "$NSP" get preheat warm | tee -a "$REPORT" >&2
registry_stop
note "registry stopped"
deploy_app preheated "$REGISTRY/e2e/preheat-$mode:v1"
if ! rollout deploy/preheated e2e 300s; then registry_start; die "preheated image did not start with the registry stopped"; fi
check "preheated pods started with the registry stopped and read back the bytes" check_app_content preheated "$PRE_SUMS"
registry_start
note "registry started"

# --- 5. faults in the middle of pulls ---------------------------------------
FAULT_SUMS=$("$here/images.sh" app "$REGISTRY" "e2e/fault-$mode" v1 48)
from=$(log_lines registry)
deploy_app fault "$REGISTRY/e2e/fault-$mode:v1"
sleep 1
# sed reads to the end: `head` closing the pipe early would kill kubectl
# with SIGPIPE, and pipefail would end the script without a word.
victim=$(dfdaemon_pods | sed -n 1p)
kc -n "$NSP" delete pod "$victim" --wait=false >/dev/null
note "deleted dfdaemon pod $victim mid-pull"
kc -n "$NSP" delete pod -l app.kubernetes.io/component=scheduler --wait=false >/dev/null
note "deleted the scheduler pods mid-pull"
leader=$(kc -n "$NSP" get lease dragonfly-operator-leader -o jsonpath='{.spec.holderIdentity}')
kc -n "$NSP" delete pod "$leader" --wait=false >/dev/null
note "deleted the leading operator pod $leader"
rollout deploy/fault e2e 400s
check "pulls survived the faults with the right bytes" check_app_content fault "$FAULT_SUMS"
# A figure, not a check: a node whose dfdaemon is gone pulls from the
# registry directly (containerd's fallback), as do downloads that lose
# every scheduler before they found a parent.
check_blobs_once registry "$from" "$REGISTRY" "e2e/fault-$mode" v1 || note "  (faults: the registry served more than once, as expected)"
drained=$(node_name "$NODES")
kc drain "$drained" --ignore-daemonsets --delete-emptydir-data --force --timeout=180s >/dev/null 2>&1 ||
  die "drain of $drained"
note "drained $drained"
DRAIN_SUMS=$("$here/images.sh" app "$REGISTRY" "e2e/drain-$mode" v1 16)
deploy_app drain "$REGISTRY/e2e/drain-$mode:v1" "" $((NODES - 1))
rollout deploy/drain e2e 300s
check "pulls complete on the other nodes with $drained drained" check_app_content drain "$DRAIN_SUMS"
kc uncordon "$drained" >/dev/null
wait_for 300 "DragonflyCluster Ready after the faults (every replica)" fully_ready
note "ok: Ready again after the faults"

# --- 5b. fail-open: a node whose dfdaemon is frozen or killed --------------
# A frozen dfdaemon (SIGSTOP: connections accepted, nothing answers) holds
# containerd's pulls until it is restarted; the liveness probe must do that
# within seconds, and containerd then goes to the registry (the next host
# in hosts.toml). A killed one refuses connections: containerd moves on at
# once. The figure is what a new pod pinned to that node waits to start.
node_dfdaemon_pid() { # NODE: the PID of that node's dfdaemon (not a seed)
  local pid
  for pid in $(pgrep -f 'dfdaemon run'); do
    if tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qx "DFDAEMON_HOSTNAME=$1" &&
      ! tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- '--seed'; then
      echo "$pid"
      return 0
    fi
  done
  return 1
}
fail_open() { # HOW(STOP|KILL) N
  local how=$1 n=$2 name pid start secs sums got
  name=$(node_name "$n")
  wait_for 120 "dfdaemon on $name ready" sh -c \
    "kubectl -n $NSP get pods -l app.kubernetes.io/component=dfdaemon --field-selector spec.nodeName=$name -o jsonpath='{.items[0].status.containerStatuses[0].ready}' | grep -qx true"
  # The previous round may have just restarted it: wait for its process.
  wait_for 60 "a dfdaemon process on $name" node_dfdaemon_pid "$name" || die "no dfdaemon process for $name"
  sleep 3
  pid=$(node_dfdaemon_pid "$name") || die "no dfdaemon process for $name"
  local pod=failopen-${how,,}-$n
  sums=$("$here/images.sh" app "$REGISTRY" "e2e/$pod-$mode" v1 4)
  kill -"$how" "$pid"
  start=$(date +%s)
  kc apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: $pod, namespace: e2e, labels: {app: failopen}}
spec:
  nodeName: $name
  terminationGracePeriodSeconds: 1
  containers: [{name: app, image: "$REGISTRY/e2e/$pod-$mode:v1", imagePullPolicy: IfNotPresent}]
YAML
  wait_for 180 "$pod running" sh -c \
    "kubectl -n e2e get pod $pod -o jsonpath='{.status.phase}' | grep -qx Running" ||
    { kill -CONT "$pid" 2>/dev/null; die "a new pod did not start on $name with its dfdaemon ${how}ped"; }
  secs=$(($(date +%s) - start))
  kill -CONT "$pid" 2>/dev/null || true
  got=$(kc -n e2e exec "$pod" -- sh -c 'sha256sum /data/*' | awk '{print $1}' | sort | tr '\n' ' ')
  check "fail-open: the new pod on $name reads back the pushed bytes" test "$got" = "$sums"
  check "fail-open: a new image started on $name (containerd $(node_containerd "$n")) ${secs}s after its dfdaemon got SIG$how (bound 60 s)" test "$secs" -le 60
  kc -n e2e delete pod "$pod" --wait=false >/dev/null
}
for ((n = 1; n <= NODES; n++)); do
  fail_open STOP "$n"
  fail_open KILL "$n"
done
wait_for 300 "DragonflyCluster Ready after fail-open (every replica)" fully_ready

# --- 6. two operator replicas, one leader ------------------------------------
holders=""
for i in $(seq 1 10); do
  holders="$holders $(kc -n "$NSP" get lease dragonfly-operator-leader -o jsonpath='{.spec.holderIdentity}')"
  sleep 1
done
pods=" $(kc -n "$NSP" get pods -l app.kubernetes.io/name=dragonfly-operator -o jsonpath='{.items[*].metadata.name}') "
leader=$(echo "$holders" | awk '{print $NF}')
distinct=$(echo "$holders" | tr ' ' '\n' | sed '/^$/d' | sort -u | wc -l)
check "one operator holds the Lease over 10 s ($leader)" test "$distinct" = 1 -a "${pods/ $leader /}" != "$pods"
kc -n "$NSP" delete pod "$leader" --grace-period=0 --force >/dev/null 2>&1
wait_for 90 "a new leader" sh -c "h=\$(kubectl -n $NSP get lease dragonfly-operator-leader -o jsonpath='{.spec.holderIdentity}'); [ -n \"\$h\" ] && [ \"\$h\" != $leader ] && kubectl -n $NSP get pod \"\$h\""
note "ok: leader $leader killed; $(kc -n "$NSP" get lease dragonfly-operator-leader -o jsonpath='{.spec.holderIdentity}') leads"
logs_leading=0
for pod in $(kc -n "$NSP" get pods -l app.kubernetes.io/name=dragonfly-operator -o jsonpath='{.items[*].metadata.name}'); do
  if [ "$(kc -n "$NSP" logs "$pod" 2>/dev/null | grep -ci leader || true)" != 0 ]; then logs_leading=$((logs_leading + 1)); fi
done
note "  operator pods whose logs mention leading: $logs_leading"

# --- 7. bad input: admission refuses what the schema can say; the rest gets
# a condition and a Warning event ------------------------------------------
bad_cluster_yaml() { # NAME CACHE-SIZE [PEER-PORT]
  cat <<YAML
apiVersion: p2p.dragonfly.dev/v1alpha1
kind: DragonflyCluster
metadata: {name: $1, namespace: $NSP}
spec:
  registries: ["http://$REGISTRY"]
  seedPeer: {enabled: false}
  scheduler: {replicas: 1}
  dfdaemon: {cacheSize: "$2", peerPort: ${3:-65002}, nodeSelector: {e2e-no-such-node: "true"}}
YAML
}
bad_cluster() { bad_cluster_yaml "$@" | kc -n "$NSP" apply -f - >/dev/null; }
refused_at_admission() { # WHAT NAME CACHE-SIZE PEER-PORT EXPECTED-TEXT: kubectl apply must fail, saying why
  local what=$1 out
  shift
  if out=$(bad_cluster_yaml "$@" | kc -n "$NSP" apply -f - 2>&1); then
    kc -n "$NSP" delete dfc "$1" --wait=false >/dev/null 2>&1 || true
    check "$what is refused at admission" false
  fi
  note "  $what: kubectl apply refused: $(echo "$out" | tail -1 | cut -c1-300)"
  check "$what is refused at admission, naming the field" sh -c "echo \"\$1\" | grep -q \"\$2\"" _ "$out" "$4"
}
expect_complaint() { # NAME
  wait_for 60 "a Ready=False condition on $1" sh -c \
    "kubectl -n $NSP get dfc $1 -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx False"
  local msg events
  msg=$(kc -n "$NSP" get dfc "$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].reason}: {.status.conditions[?(@.type=="Ready")].message}')
  wait_for 60 "a Warning event on $1" sh -c \
    "kubectl -n $NSP get events --field-selector involvedObject.name=$1,type=Warning -o name | grep -q ."
  events=$(kc -n "$NSP" get events --field-selector "involvedObject.name=$1,type=Warning" -o jsonpath='{range .items[*]}{.reason}: {.message}{"\n"}{end}' | sed -n 1,3p)
  note "  $1: condition '$msg'"
  note "  $1: events: $events"
}
refused_at_admission "a malformed cacheSize" bad-size lots 65002 cacheSize
long=e2e-a-name-that-is-fine-for-the-custom-resource-but-not-for-services
refused_at_admission "a name too long for its Services" "$long" 1GiB 65002 "at most 42 characters"
refused_at_admission "a peer port equal to the mirror's" bad-port 1GiB 65001 peerPort
# A zero size passes the schema's pattern; the operator's own check reports it.
bad_cluster zero-size 0GiB
expect_complaint zero-size
note "ok: a zero cacheSize is reported"
sleep 20
for n in zero-size; do
  count=$(kc -n "$NSP" get events --field-selector "involvedObject.name=$n,type=Warning" -o jsonpath='{range .items[*]}{.count}{"\n"}{end}' | awk '{s += ($1 == "" ? 1 : $1)} END {print s + 0}')
  note "  $n: $count Warning events after 20 s more (backoff, no hot loop)"
  check "$n: events back off ($count)" test "$count" -lt 30
done
kc -n "$NSP" delete dfc zero-size --wait --timeout=120s >/dev/null
note "ok: deleted without getting stuck"

# --- 7a. a not-ready component says why (manifests) ------------------------
if [ "$mode" = manifests ]; then
  # shellcheck source=causes.sh
  . "$here/causes.sh"
  causes_scenario
fi

# --- 7b. a pull that went around the mirror shows up on its node ----------
# kubelet reports a pull of a mirrored image (a Pulled event, made here as
# kubelet writes it) that started after node 1's dfdaemon was up and after
# its mirror last saw containerd: the operator must name node 1.
node1=$(node_name 1)
pod1=$(kc -n "$NSP" get pods -l app.kubernetes.io/component=dfdaemon --field-selector "spec.nodeName=$node1" -o jsonpath='{.items[0].metadata.name}')
started=$(date -d "$(kc -n "$NSP" get pod "$pod1" -o jsonpath='{.status.containerStatuses[?(@.name=="dfdaemon")].state.running.startedAt}')" +%s)
stamp=$(kc -n "$NSP" get pod "$pod1" -o jsonpath='{.metadata.annotations.p2p\.dragonfly\.dev/node-report}' | jq -r '.lastMirroredPull // empty')
stamp=$([ -n "$stamp" ] && date -d "$stamp" +%s || echo 0)
# The pull must start 30 s after the dfdaemon and 3 s after the stamp, and
# be 120 s old (the report's lag) when the operator looks.
earliest=$(( (started + 30 > stamp + 3 ? started + 30 : stamp + 3) + 1 + 122 ))
wait=$((earliest - $(date +%s)))
[ "$wait" -gt 0 ] && { note "  waiting ${wait} s so the injected pull is settled"; sleep "$wait"; }
finished=$(date -u -d "@$(($(date +%s) - 121))" +%Y-%m-%dT%H:%M:%SZ)
kc -n e2e apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Event
metadata: {name: e2e-bypass, namespace: e2e}
involvedObject: {kind: Pod, name: bypass-probe, namespace: e2e, apiVersion: v1}
reason: Pulled
type: Normal
message: 'Successfully pulled image "$REGISTRY/e2e/app-$mode:v1" in 1s (1s including waiting). Image size: 1 bytes.'
source: {component: kubelet, host: $node1}
firstTimestamp: "$finished"
lastTimestamp: "$finished"
count: 1
YAML
bypass_listed() {
  kubectl -n "$NSP" get dfc "$DFC" -o json | jq -e --arg n "$node1" \
    '[.status.nodeProblems[]? | select(.node == $n) | .problems[] | select(.code == "PullsBypassMirror")] | length > 0' >/dev/null
}
bypass_gone() { ! bypass_listed; }
# Events trigger no reconcile: a change to node 1's dfdaemon pod does. One
# poke per try (the controller debounces a burst of changes into one).
poke_until() { # WHAT CHECK: up to 6 tries of 30 s
  local try
  for ((try = 0; try < 6; try++)); do
    kc -n "$NSP" annotate pod "$pod1" e2e/poke="$try-$(date +%s)" --overwrite >/dev/null
    for ((i = 0; i < 30; i++)); do
      "$2" && return 0
      sleep 1
    done
  done
  log "timed out waiting for $1"
  return 1
}
poke_until "node 1's bypass in status.nodeProblems" bypass_listed
note "ok: a pull around the mirror is named: $(kc -n "$NSP" get dfc "$DFC" -o json | jq -r --arg n "$node1" '.status.nodeProblems[] | select(.node == $n) | .problems[0].message' | cut -c1-220)"
note "  Degraded: $(kc -n "$NSP" get dfc "$DFC" -o jsonpath='{.status.conditions[?(@.type=="Degraded")].status} {.status.conditions[?(@.type=="Degraded")].reason}')"
kc -n e2e delete event e2e-bypass >/dev/null
poke_until "node 1's bypass to clear" bypass_gone
kc -n "$NSP" annotate pod "$pod1" e2e/poke- >/dev/null
note "ok: it clears once kubelet's record of it is gone"

# --- 8. upgrade rolls the data plane while pods pull (helm) ----------------
# A new image is pulled on every node once the DaemonSet has begun to roll:
# no pull may fail, and the registry should serve the image about once.
if [ "$mode" = helm ]; then
  UPGRADE_SUMS=$("$here/images.sh" app "$REGISTRY" "e2e/upgrade-$mode" v1 24)
  from=$(log_lines registry)
  helm upgrade dragonfly "$root/charts/dragonfly" --namespace "$NSP" --reuse-values \
    --set image.tag="$TAG-next" --set dataPlane.image.tag="$TAG-next" --wait --timeout 5m >&2 &
  upgrade_pid=$!
  rolling() { [ "$(kubectl -n "$NSP" get pods -l app.kubernetes.io/component=dfdaemon -o jsonpath='{range .items[*]}{.spec.containers[0].image}{"\n"}{end}' | grep -c ":$TAG-next\$")" -ge 1 ]; }
  wait_for 120 "the first dfdaemon on $TAG-next" rolling || { kill "$upgrade_pid" 2>/dev/null; die "the upgrade did not start rolling"; }
  deploy_app upgrade "$REGISTRY/e2e/upgrade-$mode:v1"
  rollout deploy/upgrade e2e 400s
  wait "$upgrade_pid" || die "helm upgrade failed"
  wait_for 300 "dfdaemons on $TAG-next" sh -c \
    "[ \$(kubectl -n $NSP get pods -l app.kubernetes.io/component=dfdaemon -o jsonpath='{range .items[*]}{.spec.containers[0].image}{\"\\n\"}{end}' | grep -c ':$TAG-next\$') = $NODES ]"
  rollout ds/dragonfly-dfdaemon "$NSP" 300s
  note "ok: helm upgrade rolled the dfdaemons to $TAG-next"
  check "pulls during the rolling upgrade read back the pushed bytes" check_app_content upgrade "$UPGRADE_SUMS"
  failed=$(kc -n e2e get events --field-selector reason=Failed -o jsonpath='{range .items[*]}{.involvedObject.name}{"\n"}{end}' | grep -c '^upgrade-' || true)
  check "no pull failed during the upgrade (kubelet Failed events: $failed)" test "$failed" = 0
  check_blobs_once registry "$from" "$REGISTRY" "e2e/upgrade-$mode" v1 || true
  note "  rolling upgrade under load: registry served ${LAST_RATIO}x the image"
  wait_for 300 "DragonflyCluster Ready after the upgrade (every replica)" fully_ready
fi

# --- 9. uninstall restores every node --------------------------------------
kc delete namespace e2e --wait --timeout=120s >/dev/null
t=$(date +%s)
uninstall
if kc get namespace "$NSP" >/dev/null 2>&1; then
  kc delete namespace "$NSP" --wait --timeout=300s >&2 || die "namespace $NSP stuck: $(kc get namespace "$NSP" -o jsonpath='{.status}')"
fi
note "uninstall ($mode) took $(($(date +%s) - t)) s"
after=$(snapshot_nodes)
if [ "$before" != "$after" ]; then
  diff <(echo "$before") <(echo "$after") >&2 || true
  die "node containerd config differs from before the install"
fi
note "ok: every node's /etc/containerd byte-identical to before ($(echo "$after" | wc -l) files)"

# --- 10. GitOps: the rendered chart applied server-side twice (helm) -------
# As Argo CD or Flux apply it: the second apply, after the operator started
# (and checked its CRDs), must change nothing. Hooks and the cluster are
# left out (the cluster would need the whole data plane again).
gitops_apply_twice() {
  local out="$K8S_RUN/gitops.yaml" kv rv_before rv_after rc=0
  kv=$(timeout 30 kubectl version -o json | jq -r .serverVersion.gitVersion)
  helm template dragonfly "$root/charts/dragonfly" --namespace "$NSP" --kube-version "$kv" \
    --include-crds --no-hooks --set cluster.enabled=false,uninstallHook.enabled=false >"$out"
  kc create namespace "$NSP" >/dev/null
  apply_ssa() { timeout 120 kubectl apply --server-side --field-manager=e2e-gitops -f "$out" >/dev/null; }
  # Per object its generation (spec changes only) where it has one, else
  # its resourceVersion; quota usage is the controller's own write.
  versions() { timeout 60 kubectl get -f "$out" -o json | jq -r '.items[] | select(.kind != "ResourceQuota") | "\(.kind)/\(.metadata.name) \(.metadata.generation // .metadata.resourceVersion)"'; }
  apply_ssa
  rollout deploy/dragonfly-operator "$NSP" 180s
  wait_for 60 "the operator checked its CRDs" sh -c \
    "kubectl -n $NSP logs deploy/dragonfly-operator 2>/dev/null | grep -q 'CRD up to date\|CRD updated'"
  sleep 5
  rv_before=$(versions)
  apply_ssa
  rv_after=$(versions)
  if [ "$rv_before" != "$rv_after" ]; then
    diff <(echo "$rv_before") <(echo "$rv_after") >&2 || true
    die "the second server-side apply of the rendered chart changed objects"
  fi
  timeout 120 kubectl diff --server-side --field-manager=e2e-gitops -f "$out" >&2 || rc=$?
  check "kubectl diff --server-side after two applies is empty (exit $rc)" test "$rc" = 0
  note "ok: the rendered chart applied server-side twice; the second changed nothing ($(echo "$rv_after" | wc -l) objects)"
  kc delete -f "$out" --ignore-not-found --wait --timeout=120s >/dev/null
  kc delete namespace "$NSP" --wait --timeout=120s >/dev/null
}
if [ "$mode" = helm ]; then
  gitops_apply_twice
fi
left=$(kc get clusterroles,clusterrolebindings,priorityclasses -o name | grep -i dragonfly || true)
check "no cluster-scoped object left ($left)" test -z "$left"
stuck=$(kc get namespaces -o jsonpath='{range .items[?(@.status.phase=="Terminating")]}{.metadata.name} {end}')
check "nothing stuck Terminating ($stuck)" test -z "$stuck"
kc delete pv -l e2e=seed >/dev/null
note "scenario $mode: passed"
