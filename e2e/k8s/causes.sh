# shellcheck shell=bash
# Sourced by scenario.sh (not called yet): each cause a not-ready
# component's condition must name, injected on a throwaway DragonflyCluster
# `why` in a namespace of its own, and the condition checked. Uses
# scenario.sh's kc, check, note, wait_for and $REGISTRY; every wait is at
# most 120 s. Run it after step 1 (the main cluster holds two of the three
# static seed volumes by then; case 3 asks for more than any of them has).
#   1. a missing image tag     -> DaemonsReady ImagePullBackOff, REASON column
#   2. Pod Security `baseline` -> DaemonsReady FailedCreate (violates PodSecurity)
#   3. no StorageClass         -> seed peers on an emptyDir, said in SeedPeersReady
#   4. a ResourceQuota of 0    -> SchedulerReady FailedCreate (exceeded quota)
# The throwaway dfdaemons use their own host ports and no priority class (no
# quota needed for it); none of them ever runs, so no node's containerd
# config is touched, and restoreOnDelete: false lets them go at once.

WHY_NS=(e2e-why-image e2e-why-psa e2e-why-nosc e2e-why-quota)
WHY_DAEMON='proxyPort: 65101, peerPort: 65102, adminPort: 40911, priorityClassName: ""'

why_cluster() { # NAMESPACE SPEC-LINES (two-space indented)
  kc -n "$1" apply -f - >/dev/null <<YAML
apiVersion: p2p.dragonfly.dev/v1alpha1
kind: DragonflyCluster
metadata: {name: why, namespace: $1}
spec:
  registries: ["http://$REGISTRY"]
  scheduler: {replicas: 1}
  containerd: {restoreOnDelete: false}
$2
YAML
}
why_cond() { # NAMESPACE TYPE: "reason: message"
  kubectl -n "$1" get dfc why -o jsonpath="{.status.conditions[?(@.type==\"$2\")].reason}: {.status.conditions[?(@.type==\"$2\")].message}"
}
why_says() { # NAMESPACE TYPE REASON(a glob: '*' for any) TEXT
  local c
  # shellcheck disable=SC2053 # REASON is a pattern on purpose
  c=$(why_cond "$1" "$2") && [[ $c == $3": "* && $c == *"$4"* ]]
}
why_expect() { # WHAT NAMESPACE TYPE REASON TEXT
  local what=$1
  shift
  wait_for 120 "$what" why_says "$@" || true
  note "  $what: $2 = $(why_cond "$1" "$2" | cut -c1-320)"
  check "$what: $2 reason $3, naming '$4'" why_says "$@"
}

causes_scenario() {
  local ns
  for ns in "${WHY_NS[@]}"; do
    kc create namespace "$ns" --dry-run=client -o yaml | kc apply -f - >/dev/null
  done
  kc label namespace e2e-why-psa pod-security.kubernetes.io/enforce=baseline --overwrite >/dev/null
  kc -n e2e-why-quota apply -f - >/dev/null <<'YAML'
apiVersion: v1
kind: ResourceQuota
metadata: {name: e2e-tiny}
spec: {hard: {pods: "0"}}
YAML
  why_cluster e2e-why-image "  image: {tag: e2e-no-such-tag}
  seedPeer: {enabled: false}
  dfdaemon: {$WHY_DAEMON}"
  why_cluster e2e-why-psa "  seedPeer: {enabled: false}
  dfdaemon: {$WHY_DAEMON}"
  why_cluster e2e-why-nosc "  seedPeer: {replicas: 1, storage: {size: 200Gi}}
  dfdaemon: {$WHY_DAEMON, nodeSelector: {e2e-no-such-node: \"true\"}}"
  why_cluster e2e-why-quota "  seedPeer: {enabled: false}
  dfdaemon: {$WHY_DAEMON}"

  why_expect "a missing image tag" e2e-why-image DaemonsReady ImagePullBackOff ":e2e-no-such-tag\""
  check "REASON (Ready's reason) shows ImagePullBackOff" \
    sh -c 'kubectl -n e2e-why-image get dfc why -o wide | grep -q ImagePullBackOff'
  why_expect "Pod Security baseline" e2e-why-psa DaemonsReady FailedCreate 'violates PodSecurity "baseline'
  why_expect "a ResourceQuota of 0 pods" e2e-why-quota SchedulerReady FailedCreate "exceeded quota: e2e-tiny"
  # No StorageClass and no static volume that fits: an emptyDir, said at once.
  why_expect "no StorageClass" e2e-why-nosc SeedPeersReady '*' "spec.seedPeer.storage.storageClassName"
  check "no StorageClass: the seed StatefulSet has no claim template and a 200Gi emptyDir" test \
    "$(kc -n e2e-why-nosc get statefulset why-seed-peer -o jsonpath='{.spec.volumeClaimTemplates}|{.spec.template.spec.volumes[?(@.name=="data")].emptyDir.sizeLimit}')" = "|200Gi"
  check "no StorageClass: a Warning event EphemeralSeedCache" sh -c \
    'kubectl -n e2e-why-nosc get events --field-selector reason=EphemeralSeedCache,type=Warning -o name | grep -q .'
  why_expect "seed peers on an emptyDir get ready" e2e-why-nosc SeedPeersReady EphemeralCache "emptyDir"

  for ns in "${WHY_NS[@]}"; do
    kc -n "$ns" delete dfc why --wait --timeout=120s >/dev/null
  done
  kc delete namespace "${WHY_NS[@]}" --wait --timeout=120s >/dev/null
  note "ok: each injected cause was named"
}
