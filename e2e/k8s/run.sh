#!/usr/bin/env bash
# The Kubernetes end-to-end suite on the local cluster: up.sh, the scenario
# installed with `kubectl apply -f manifests/` and then with `helm install`,
# then the README's quick start as written (quickstart.sh), down.sh
# (always). Exits non-zero on any failure; the last line is a one-line
# summary. Needs root.
#   MODES="manifests helm quickstart" (default) picks what to run.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
. "$here/lib.sh"
MODES=${MODES:-manifests helm quickstart}
t0=$(date +%s)
result="FAILED (cluster did not come up)"
summary() { echo "k8s e2e: $result; nodes=$NODES; ${times:-}; $(($(date +%s) - t0)) s in all"; }
finish() {
  local rc=$?
  if [ "$rc" != 0 ] && [ -n "${KUBECONFIG:-}" ] && [ -e "$K8S_RUN/bin" ]; then
    log "failure diagnostics"
    PATH="$(cat "$K8S_RUN/bin"):$PATH"
    kubectl get nodes -o wide >&2 || true
    kubectl get pods -A -o wide >&2 || true
    kubectl -n dragonfly-system describe dfc >&2 2>/dev/null | tail -40 || true
    kubectl -n dragonfly-system get events --sort-by=.lastTimestamp 2>/dev/null | tail -30 >&2 || true
    kubectl -n dragonfly-system logs deploy/dragonfly-operator --tail=60 >&2 2>/dev/null || true
    mkdir -p "${K8S_LOGS:-/tmp/dragonfly-k8s-logs}" && cp -r "$K8S_RUN/logs" "$K8S_RUN"/report-*.txt "${K8S_LOGS:-/tmp/dragonfly-k8s-logs}/" 2>/dev/null
  fi
  "$here/down.sh" >&2
  summary
  exit "$rc"
}
trap finish EXIT
export_line=$("$here/up.sh" | tail -1) || exit 1
eval "$export_line"
times=$(cat "$K8S_RUN/up-times")
FIRST_MODE=${MODES%% *}
export FIRST_MODE
for mode in $MODES; do
  script="$here/scenario.sh"
  [ "$mode" = quickstart ] && script="$here/quickstart.sh"
  if ! "$script" "$mode"; then
    result="FAILED in the $mode scenario (see above)"
    exit 1
  fi
done
result="passed ($MODES)"
