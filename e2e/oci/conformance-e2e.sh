#!/usr/bin/env bash
# End-to-end: the mirror as an OCI registry for every client, judged by the
# OCI distribution-spec conformance suite and by real clients.
#
# A real distribution registry (Debian docker-registry), a scheduler and one
# dfdaemon on loopback. The mirror is a pull-only registry, so the suite
# meets it through a front (nginx) that sends every GET and HEAD to the
# mirror and every write (push, delete) to the registry: what CI pushes
# goes to the registry, what nodes pull comes from the mirror, and the
# suite checks every byte and header the mirror answers.
#
#  1. the suite against the bare registry, and against the front in the
#     same run (same configuration, own repositories): both summaries are
#     printed; the mirror run must have no failure the bare run has not;
#  2. writes sent to the mirror itself answer 405 UNSUPPORTED;
#  3. real clients through the mirror: skopeo inspect and copy; crane ls,
#     manifest, digest and pull; oras attach (to the registry) then oras
#     discover and pull through the mirror (the registry has no referrers
#     API: the mirror answers from the tag-schema fallback);
#  4. a private repository: the tag list and referrers need the
#     registry's credentials through the mirror too.
#
# Usage: e2e/oci/conformance-e2e.sh   (KEEP=1 keeps the work dir; results
# are copied to RESULTS, default target/oci-conformance)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORK=$(mktemp -d /tmp/dragonfly-oci-e2e.XXXXXX)
RESULTS=${RESULTS:-$ROOT/target/oci-conformance}
REGISTRY=127.0.0.1:5075
PRIVATE=127.0.0.1:5076
CREDS=alice:s3cret
NODE_IP=127.0.0.75
MIRROR=$NODE_IP:65001
FRONT=127.0.0.1:5077
SCHEDULER_IP=127.0.0.74
# shellcheck disable=SC2034
PIDS=()
BIN=$ROOT/target/${PROFILE:-debug}
# shellcheck source=e2e/lib/rig.sh
. "$ROOT/e2e/lib/rig.sh"
trap rig_cleanup EXIT
rig_install_packages
if ! need nginx || ! need jq; then
  log "installing nginx and jq"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light jq >/dev/null
fi

log "building the OCI tools (cached outside the repository)"
TOOLS=$("$ROOT/e2e/oci/tools.sh")
[ "${PROFILE:-debug}" = release ] && profile_flag=--release || profile_flag=
(cd "$ROOT" && cargo build -q $profile_flag -p dragonfly-node-agent -p dragonfly-scheduler --bins)
mkdir -p "$WORK/logs"

log "registries: $REGISTRY (open) and $PRIVATE (htpasswd)"
start_registry registry "$REGISTRY"
python3 -W ignore -c 'import crypt; print("alice:" + crypt.crypt("s3cret", crypt.mksalt(crypt.METHOD_BLOWFISH)))' >"$WORK/htpasswd"
EXTRA=1 start_registry private "$PRIVATE" <<YML
auth:
  htpasswd:
    realm: private
    path: $WORK/htpasswd
YML
wait_http "http://$REGISTRY/v2/"

log "scheduler and one dfdaemon (mirror on $MIRROR)"
start_scheduler "$SCHEDULER_IP"
start_dfdaemon node "$NODE_IP" --default-registry "http://$REGISTRY" \
  --registry "$REGISTRY" --registry "$PRIVATE"

log "front on $FRONT: GET and HEAD to the mirror, writes to the registry"
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<NGINX
daemon off;
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/logs/front.log warn;
events { worker_connections 256; }
http {
  access_log $WORK/logs/front-access.log;
  client_body_temp_path $WORK/nginx/body;
  proxy_temp_path $WORK/nginx/proxy;
  fastcgi_temp_path $WORK/nginx/fastcgi;
  uwsgi_temp_path $WORK/nginx/uwsgi;
  scgi_temp_path $WORK/nginx/scgi;
  upstream mirror { server $MIRROR; }
  upstream registry { server $REGISTRY; }
  map \$request_method \$backend { GET mirror; HEAD mirror; default registry; }
  server {
    listen $FRONT;
    client_max_body_size 0;
    proxy_request_buffering off;
    proxy_buffering off;
    proxy_http_version 1.1;
    location / {
      proxy_set_header Host \$http_host;
      proxy_set_header X-Dragonfly-Registry http://$REGISTRY;
      proxy_pass http://\$backend;
    }
  }
}
NGINX
nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" &
PIDS+=($!)
wait_http "http://$FRONT/v2/"

# One suite run: NAME ADDR REPO-PREFIX; prints the summary line.
conformance() {
  local name=$1 addr=$2 prefix=$3 out=$WORK/results-$1
  mkdir -p "$out"
  # Deletes are left out: the mirror keeps content-addressed data it has
  # served (a blob deleted upstream stays cached until evicted), which is
  # what a pull-through cache is for.
  OCI_REGISTRY=$addr OCI_TLS=disabled OCI_REPO1=$prefix/repo1 OCI_REPO2=$prefix/repo2 \
    OCI_API_BLOBS_DELETE=false OCI_API_MANIFESTS_DELETE=false OCI_API_TAGS_DELETE=false \
    OCI_RESULTS_DIR=$out OCI_LOG=error \
    "$TOOLS/conformance" >"$WORK/logs/conformance-$name.log" 2>&1 || true
  [ -s "$out/junit.xml" ] || fail "the conformance suite wrote no results for $name"
  mkdir -p "$RESULTS/$name"
  cp "$out"/* "$RESULTS/$name/"
}

# passed, failed, skipped (disabled included) test cases of a junit.xml.
junit_totals() { # FILE
  python3 - "$1" <<'PY'
import sys, collections, xml.etree.ElementTree as ET
c = collections.Counter(t.get("status") for t in ET.parse(sys.argv[1]).getroot().iter("testcase"))
print(c["passed"], c["failure"] + c["error"], sum(c.values()) - c["passed"] - c["failure"] - c["error"])
PY
}

# Failed test cases of a junit.xml, one per line: name and the suite's reason.
junit_failed() { # FILE
  python3 - "$1" <<'PY'
import sys, xml.etree.ElementTree as ET
for case in ET.parse(sys.argv[1]).getroot().iter("testcase"):
    if case.get("status") in ("failure", "error"):
        name = case.get("name", "").removeprefix("OCI Conformance Test/")
        print(name + "\t" + (case.findtext("system-out") or "").strip().split("\n")[0][:160])
PY
}

log "conformance suite: bare registry"
conformance registry "$REGISTRY" bare
log "conformance suite: mirror (through the front)"
conformance mirror "$FRONT" mirror
read -r rp rf rs < <(junit_totals "$WORK/results-registry/junit.xml")
read -r mp mf ms < <(junit_totals "$WORK/results-mirror/junit.xml")
printf '\nconformance summary (passed / failed / skipped)\n'
printf '  %-16s %4s %4s %4s\n' "bare registry" "$rp" "$rf" "$rs" "mirror" "$mp" "$mf" "$ms"
junit_failed "$WORK/results-registry/junit.xml" | sort >"$WORK/failed-registry.tsv"
junit_failed "$WORK/results-mirror/junit.xml" | sort >"$WORK/failed-mirror.tsv"
cut -f1 "$WORK/failed-registry.tsv" | sort -u >"$WORK/failed-registry"
cut -f1 "$WORK/failed-mirror.tsv" | sort -u >"$WORK/failed-mirror"
cp "$WORK"/failed-*.tsv "$RESULTS/"
echo "failed against the bare registry, by test (the registry's own gaps: OCI-Subject, sha512, ...):"
cut -f1 "$WORK/failed-registry.tsv" | sed 's|.*/||' | sort | uniq -c | sort -rn | sed 's/^/   /'
only_registry=$(comm -23 "$WORK/failed-registry" "$WORK/failed-mirror")
if [ -n "$only_registry" ]; then
  echo "failed against the bare registry only (the mirror passes them):"; echo "$only_registry" | sed 's/^/    /'
fi
only_mirror=$(comm -13 "$WORK/failed-registry" "$WORK/failed-mirror")
if [ -n "$only_mirror" ]; then
  echo "failed through the mirror only:"; grep -F -f <(echo "$only_mirror") "$WORK/failed-mirror.tsv" | sed 's/^/    /'
  fail "the mirror fails conformance tests the registry passes"
fi
[ "$mp" -gt 0 ] || fail "no conformance test passed through the mirror"

log "writes to the mirror itself are refused with UNSUPPORTED"
code=$(curl -s -o "$WORK/post.json" -w '%{http_code}' -X POST "http://$MIRROR/v2/mirror/repo1/blobs/uploads/")
[ "$code" = 405 ] || fail "POST upload answered $code, expected 405"
jq -e '.errors[0].code == "UNSUPPORTED"' "$WORK/post.json" >/dev/null || fail "POST upload body: $(cat "$WORK/post.json")"
code=$(curl -s -o /dev/null -w '%{http_code}' -X DELETE "http://$MIRROR/v2/mirror/repo1/manifests/latest")
[ "$code" = 405 ] || fail "DELETE answered $code, expected 405"

log "real clients through the mirror"
# An image of our own in the registry: a random layer under umoci.
img=$WORK/img
umoci init --layout "$img" >/dev/null
umoci new --image "$img:v1" >/dev/null
umoci unpack --rootless --image "$img:v1" "$WORK/bundle" >/dev/null
head -c $((3 * 1024 * 1024)) /dev/urandom >"$WORK/bundle/rootfs/payload"
umoci repack --image "$img:v1" "$WORK/bundle" >/dev/null
skopeo copy -q --dest-tls-verify=false "oci:$img:v1" "docker://$REGISTRY/clients/app:v1"
skopeo copy -q --dest-tls-verify=false "oci:$img:v1" "docker://$REGISTRY/clients/app:v2"

skopeo inspect --tls-verify=false "docker://$MIRROR/clients/app:v1" >"$WORK/inspect.json"
jq -e '.RepoTags | index("v1") and index("v2")' "$WORK/inspect.json" >/dev/null ||
  fail "skopeo inspect through the mirror: $(cat "$WORK/inspect.json")"
echo "skopeo inspect: RepoTags $(jq -c .RepoTags "$WORK/inspect.json"), digest $(jq -r .Digest "$WORK/inspect.json")"
skopeo copy -q --src-tls-verify=false "docker://$MIRROR/clients/app:v1" "oci:$WORK/copied:v1"
want=$(skopeo inspect --raw --tls-verify=false "docker://$REGISTRY/clients/app:v1" | sha256sum | cut -d' ' -f1)
got=$(skopeo inspect --raw "oci:$WORK/copied:v1" | sha256sum | cut -d' ' -f1)
[ "$want" = "$got" ] || fail "skopeo copy through the mirror: manifest $got, registry has $want"
echo "skopeo copy: manifest sha256:$got, as in the registry"

crane() { "$TOOLS/crane" --insecure "$@"; }
[ "$(crane ls "$MIRROR/clients/app" | sort | tr '\n' ' ')" = "v1 v2 " ] || fail "crane ls through the mirror"
[ "$(crane digest "$MIRROR/clients/app:v1")" = "$(crane digest "$REGISTRY/clients/app:v1")" ] ||
  fail "crane digest through the mirror differs from the registry's"
crane pull --format oci "$MIRROR/clients/app:v1" "$WORK/crane-oci"
crane pull --format oci "$REGISTRY/clients/app:v1" "$WORK/crane-oci-direct"
diff -r "$WORK/crane-oci/blobs" "$WORK/crane-oci-direct/blobs" >/dev/null || fail "crane pull through the mirror: other blobs than the registry's"
echo "crane: ls, digest $(crane digest "$MIRROR/clients/app:v1") and pull ($(du -sb "$WORK/crane-oci/blobs" | cut -f1) blob bytes) as from the registry"

oras() { "$TOOLS/oras" "$@" --plain-http; }
printf 'signed by us\n' >"$WORK/signature.txt"
(cd "$WORK" && oras attach --artifact-type application/vnd.example.signature "$REGISTRY/clients/app:v1" signature.txt >/dev/null)
oras discover --format json "$MIRROR/clients/app:v1" >"$WORK/discover.json"
ref=$(jq -r '(.referrers // .manifests)[0].digest' "$WORK/discover.json")
[ -n "$ref" ] && [ "$ref" != null ] || fail "oras discover through the mirror found no referrer: $(cat "$WORK/discover.json")"
oras discover --format json --artifact-type application/vnd.example.none "$MIRROR/clients/app:v1" >"$WORK/discover-none.json"
[ "$(jq '(.referrers // .manifests) | length' "$WORK/discover-none.json")" = 0 ] || fail "artifactType filter not applied"
mkdir -p "$WORK/oras-pull"
(cd "$WORK/oras-pull" && oras pull "$MIRROR/clients/app@$ref" >/dev/null)
cmp "$WORK/signature.txt" "$WORK/oras-pull/signature.txt" || fail "oras pull through the mirror: other bytes"
echo "oras: attach to the registry, discover ($ref) and pull through the mirror"

log "a private repository's tags and referrers need credentials through the mirror too"
skopeo copy -q --dest-tls-verify=false --dest-creds "$CREDS" "oci:$img:v1" "docker://$PRIVATE/team/secret:v1"
code=$(curl -s -o /dev/null -w '%{http_code}' -H "X-Dragonfly-Registry: http://$PRIVATE" "http://$MIRROR/v2/team/secret/tags/list")
[ "$code" = 401 ] || fail "anonymous tag list of a private repository answered $code"
digest=$(skopeo inspect --tls-verify=false --creds "$CREDS" "docker://$PRIVATE/team/secret:v1" | jq -r .Digest)
code=$(curl -s -o /dev/null -w '%{http_code}' -H "X-Dragonfly-Registry: http://$PRIVATE" "http://$MIRROR/v2/team/secret/referrers/$digest")
[ "$code" = 401 ] || fail "anonymous referrers of a private repository answered $code"
tags=$(curl -s -u "$CREDS" -H "X-Dragonfly-Registry: http://$PRIVATE" "http://$MIRROR/v2/team/secret/tags/list" | jq -c .tags)
[ "$tags" = '["v1"]' ] || fail "tag list with credentials: $tags"
echo "private: 401 without credentials (tags, referrers), tags $tags with them"

log "PASS: conformance (mirror $mp/$mf/$ms vs registry $rp/$rf/$rs), skopeo, crane, oras"
