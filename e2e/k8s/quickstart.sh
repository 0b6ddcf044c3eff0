#!/usr/bin/env bash
# The README's local-cluster quick start, run as written: its commands are
# read from the README itself (the first sh block under "On a real local
# cluster"), so the two cannot drift. run.sh has brought the cluster up with
# the block's first line and takes it down with its last; everything in
# between runs here verbatim, then the cluster must reach Ready. The
# install is removed again afterwards, as the README's kind section says.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
. "$here/lib.sh"
PATH="$(cat "$K8S_RUN/bin"):$PATH"
REPORT="$K8S_RUN/report-quickstart.txt"
: >"$REPORT"
note() { log "$*"; echo "$*" >>"$REPORT"; }

block=$(awk '
  /^### On a real local cluster/ {section = 1; next}
  section && /^### / {exit}
  section && /^```sh$/ {inside = 1; next}
  inside && /^```$/ {exit}
  inside {print}
' "$root/README.md")
[ -n "$block" ] || die "no sh block under \"### On a real local cluster\" in README.md"
first=$(echo "$block" | head -1)
last=$(echo "$block" | tail -1)
case "$first" in *e2e/k8s/up.sh*) ;; *) die "the quick start no longer starts with e2e/k8s/up.sh: $first" ;; esac
case "$last" in *e2e/k8s/down.sh*) ;; *) die "the quick start no longer ends with e2e/k8s/down.sh: $last" ;; esac
middle=$(echo "$block" | sed '1d;$d')
note "quick start commands, from README.md:"
echo "$middle" | sed 's/^/  | /' | tee -a "$REPORT" >&2

t=$(date +%s)
(cd "$root" && bash -euo pipefail -c "$middle") >&2 || die "a quick start command failed"
ready() { [ "$(kubectl -n dragonfly-system get dfc dragonfly -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]; }
if ! wait_for 300 "the quick start's DragonflyCluster Ready" ready; then
  kubectl -n dragonfly-system get dfc -o wide >&2 || true
  kubectl -n dragonfly-system get pods,pvc -o wide >&2 || true
  die "the quick start's cluster did not reach Ready within 300 s"
fi
note "ok: the quick start reached Ready in $(($(date +%s) - t)) s"
kubectl -n dragonfly-system get dfc -o wide | tee -a "$REPORT" >&2

kubectl delete dfc --all -A --wait --timeout=180s >/dev/null
kubectl delete -f "$root/manifests/03-operator.yaml" -f "$root/manifests/02-rbac.yaml" \
  -f "$root/manifests/01-crds.yaml" -f "$root/manifests/00-namespace.yaml" --wait --timeout=180s >/dev/null
note "quick start: passed"
