#!/usr/bin/env bash
# A real local Kubernetes from real components, as processes on this machine:
# etcd, kube-apiserver, kube-controller-manager and kube-scheduler in one
# network namespace; NODES (3) workers, each in its own network namespace
# with its own node IP, containerd, kubelet and kube-proxy; a bridge between
# them in a namespace of its own, with routes between the nodes' pod CIDRs;
# a distribution registry (anonymous on :5000, htpasswd on :5001) holding
# images built here; CoreDNS as a Deployment. Leaves the cluster running;
# the last line printed is `export KUBECONFIG=<admin kubeconfig>`.
# Needs root. down.sh removes everything it made. PROFILE=debug builds the
# images from the debug binaries (quicker on a fresh machine; default release).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
# shellcheck source=lib.sh
. "$here/lib.sh"
[ "$(id -u)" = 0 ] || die "run as root (network namespaces, containerd, kubelet)"
t0=$(date +%s)

log "packages"
need=(containerd containernetworking-plugins iptables conntrack docker-registry skopeo umoci busybox-static openssl apache2-utils jq gcc libc6-dev)
missing=()
for p in "${need[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Debian's docker-registry and containerd packages start system services;
# the cluster runs its own.
systemctl disable --now containerd docker-registry >/dev/null 2>&1 || true

if [ -e "$K8S_RUN/pids" ]; then
  log "a cluster is already up in $K8S_RUN; tearing it down first"
  "$here/down.sh"
fi

log "Kubernetes binaries (built once per version, cached outside the repository)"
BIN=$("$here/build.sh")
export PATH="$BIN:$PATH"
log "containerd releases of the nodes (built once per version, cached outside the repository)"
declare -A CONTAINERD_BIN=()
for ((n = 1; n <= NODES; n++)); do
  v=$(node_containerd "$n")
  if [ "$v" != debian ] && [ -z "${CONTAINERD_BIN[$v]:-}" ]; then
    CONTAINERD_BIN[$v]=$("$root/e2e/containerd/build.sh" "$v")
  fi
done
log "project binaries"
profile_flag=--release
[ "${PROFILE:-release}" = debug ] && profile_flag=
(cd "$root" && cargo build $profile_flag --locked -q -p dragonfly-scheduler -p dragonfly-node-agent -p dragonfly-operator --bins)
t_build=$(date +%s)

mkdir -p "$K8S_RUN"/{pki,logs,pids,etcd}
echo "$BIN" >"$K8S_RUN/bin"

log "certificates"
pki=$K8S_RUN/pki
openssl req -x509 -newkey rsa:2048 -nodes -days 7 -subj /CN=dragonfly-e2e-ca \
  -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
# cert NAME CN O [SAN]: a key and a certificate signed by the cluster CA.
cert() {
  local name=$1 cn=$2 o=$3 san=${4:-}
  local subj="/CN=$cn"
  [ -n "$o" ] && subj="/O=$o/CN=$cn"
  openssl req -newkey rsa:2048 -nodes -subj "$subj" -keyout "$pki/$name.key" -out "$pki/$name.csr" 2>/dev/null
  local ext="$pki/$name.ext"
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=serverAuth,clientAuth"
    [ -n "$san" ] && echo "subjectAltName=$san"
  } >"$ext"
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 7 -extfile "$ext" -out "$pki/$name.crt" 2>/dev/null
}
cert apiserver kube-apiserver "" "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:$CP_IP,IP:$KUBERNETES_SVC_IP,IP:127.0.0.1"
cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
cert admin admin system:masters
cert controller-manager system:kube-controller-manager ""
cert scheduler system:kube-scheduler ""
cert kube-proxy system:kube-proxy ""
openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null

# kubeconfig NAME USER-CERT: a kubeconfig for the API server at CP_IP.
kubeconfig() {
  local f=$K8S_RUN/$1.kubeconfig
  kubectl config --kubeconfig "$f" set-cluster local --server "https://$CP_IP:6443" \
    --certificate-authority "$pki/ca.crt" --embed-certs >/dev/null
  kubectl config --kubeconfig "$f" set-credentials "$1" --client-certificate "$pki/$2.crt" \
    --client-key "$pki/$2.key" --embed-certs >/dev/null
  kubectl config --kubeconfig "$f" set-context local --cluster local --user "$1" >/dev/null
  kubectl config --kubeconfig "$f" use-context local >/dev/null
}
kubeconfig admin admin
kubeconfig controller-manager controller-manager
kubeconfig scheduler scheduler
kubeconfig kube-proxy kube-proxy

log "network: a bridge namespace, the control plane, the registry and $NODES nodes"
ip netns add "$FABRIC"
ip -n "$FABRIC" link add br0 type bridge
ip -n "$FABRIC" link set br0 up
ip -n "$FABRIC" link set lo up
# attach NETNS IFACE IP: a veth from NETNS into the bridge.
attach() {
  local netns=$1 peer=$2 ip=$3
  ip link add "$peer" type veth peer name "$peer-b"
  ip link set "$peer-b" netns "$FABRIC"
  ip -n "$FABRIC" link set "$peer-b" master br0 up
  if [ "$netns" = host ]; then
    ip addr add "$ip/24" dev "$peer"
    ip link set "$peer" up
  else
    ip link set "$peer" netns "$netns"
    ip -n "$netns" link set "$peer" name eth0
    ip -n "$netns" addr add "$ip/24" dev eth0
    ip -n "$netns" link set eth0 up
    ip -n "$netns" link set lo up
  fi
}
attach host "$NS_PREFIX-host" "$HOST_IP"
for netns in "$CP" "$REG"; do ip netns add "$netns"; done
attach "$CP" "$NS_PREFIX-cp0" "$CP_IP"
attach "$REG" "$NS_PREFIX-reg0" "$REG_IP"
for ((n = 1; n <= NODES; n++)); do
  name=$(node_name "$n")
  ip netns add "$name"
  attach "$name" "$NS_PREFIX-n$n" "$(node_ip "$n")"
  ip netns exec "$name" sysctl -qw net.ipv4.ip_forward=1
done
# Pod CIDRs: each node routes the others' through their node IPs; the
# control plane reaches pods (webhooks, logs) the same way.
for ((n = 1; n <= NODES; n++)); do
  for netns in "$CP" "$REG" $(for ((m = 1; m <= NODES; m++)); do [ "$m" != "$n" ] && node_name "$m"; done); do
    ip -n "$netns" route add "$(node_cidr "$n")" via "$(node_ip "$n")"
  done
done

log "registry: anonymous on $REGISTRY, htpasswd on $PRIVATE_REGISTRY"
reg_config() { # PORT DIR [AUTH]
  cat <<YAML
version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: $2
  delete:
    enabled: true
http:
  addr: $REG_IP:$1
YAML
  if [ -n "${3:-}" ]; then
    printf 'auth:\n  htpasswd:\n    realm: dragonfly-e2e\n    path: %s\n' "$3"
  fi
}
mkdir -p "$K8S_RUN/registry/public" "$K8S_RUN/registry/private"
htpasswd -Bbc "$K8S_RUN/registry/htpasswd" e2e e2e-secret 2>/dev/null
reg_config 5000 "$K8S_RUN/registry/public" >"$K8S_RUN/registry/public.yaml"
reg_config 5001 "$K8S_RUN/registry/private" "$K8S_RUN/registry/htpasswd" >"$K8S_RUN/registry/private.yaml"
registry_start
start registry-private "$REG" docker-registry serve "$K8S_RUN/registry/private.yaml"

log "registry: TLS on $TLS_REGISTRY, its certificate from a private CA"
tls=$K8S_RUN/registry/tls
mkdir -p "$tls" "$K8S_RUN/registry/tls-data"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3 \
  -subj "/CN=dragonfly-e2e private registry CA" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -keyout "$tls/ca.key" -out "$tls/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$REG_IP" \
  -keyout "$tls/server.key" -out "$tls/server.csr" 2>/dev/null
openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" -CAcreateserial -days 3 \
  -extfile <(printf 'subjectAltName=IP:%s\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n' "$REG_IP") \
  -out "$tls/server.crt" 2>/dev/null
{
  reg_config 5443 "$K8S_RUN/registry/tls-data"
  printf '  tls:\n    certificate: %s\n    key: %s\n' "$tls/server.crt" "$tls/server.key"
} >"$K8S_RUN/registry/tls.yaml"
start registry-tls "$REG" docker-registry serve "$K8S_RUN/registry/tls.yaml"
wait_for 30 "TLS registry" curl -sf --cacert "$TLS_REGISTRY_CA" "https://$TLS_REGISTRY/v2/"

log "images (pause, coredns, dragonfly, test app) into $REGISTRY"
TAG=${TAG:-$(sed -n 's/^appVersion: "\(.*\)"/\1/p' "$root/charts/dragonfly/Chart.yaml")}
"$here/images.sh" system "$REGISTRY" "$BIN" "$TAG" "$TAG-next"
t_images=$(date +%s)

log "etcd and the control plane"
start etcd "$CP" "$BIN/etcd" --name e2e --data-dir "$K8S_RUN/etcd" \
  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster e2e=http://127.0.0.1:2380 --log-level warn
wait_for 30 etcd ip netns exec "$CP" curl -sf http://127.0.0.1:2379/health
start kube-apiserver "$CP" "$BIN/kube-apiserver" \
  --etcd-servers http://127.0.0.1:2379 \
  --advertise-address "$CP_IP" --bind-address 0.0.0.0 --secure-port 6443 \
  --service-cluster-ip-range "$SERVICE_CIDR" \
  --client-ca-file "$pki/ca.crt" \
  --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" \
  --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
  --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction,ResourceQuota,Priority \
  --kubelet-preferred-address-types InternalIP \
  --allow-privileged=true --profiling=false
kc() { kubectl --kubeconfig "$K8S_RUN/admin.kubeconfig" "$@"; }
wait_for 90 "kube-apiserver" kc get --raw /readyz
start kube-controller-manager "$CP" "$BIN/kube-controller-manager" \
  --kubeconfig "$K8S_RUN/controller-manager.kubeconfig" \
  --authentication-kubeconfig "$K8S_RUN/controller-manager.kubeconfig" \
  --authorization-kubeconfig "$K8S_RUN/controller-manager.kubeconfig" \
  --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
  --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
  --use-service-account-credentials --leader-elect=false \
  --service-cluster-ip-range "$SERVICE_CIDR" --cluster-cidr "$CLUSTER_CIDR" --allocate-node-cidrs=false \
  --controllers '*,-cloud-node-lifecycle,-service-lb-controller,-node-route-controller'
start kube-scheduler "$CP" "$BIN/kube-scheduler" \
  --kubeconfig "$K8S_RUN/scheduler.kubeconfig" \
  --authentication-kubeconfig "$K8S_RUN/scheduler.kubeconfig" \
  --authorization-kubeconfig "$K8S_RUN/scheduler.kubeconfig" --leader-elect=false

log "nodes"
cat >"$K8S_RUN/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $K8S_RUN/kube-proxy.kubeconfig
mode: iptables
clusterCIDR: $CLUSTER_CIDR
iptables:
  # Pods on one node share a bridge: a Service answer from a backend on the
  # same bridge must come back through the node to be un-NATed.
  masqueradeAll: true
oomScoreAdj: 0
conntrack:
  maxPerCore: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
YAML
# containerd_config_2x BIN: what that containerd's own `config default`
# writes (version 3 on 2.2, version 4 on 2.4), with only what this cluster
# needs changed: the registry config_path, the local pause image, Debian's
# CNI plugin directory and restrict_oom_score_adj (see the 1.6 config).
containerd_config_2x() {
  "$1/containerd" config default | awk -v reg="$REGISTRY" '
    /^ *\[/ { table = $0 }
    table ~ /io\.containerd\.cri\.v1\.images.\.registry\]/ && /^ *config_path = / { sub(/=.*/, "= '"'"'/etc/containerd/certs.d'"'"'") }
    /^ *sandbox = / { sub(/=.*/, "= '"'"'" reg "/pause:3.10'"'"'") }
    /^ *bin_dirs = / { sub(/=.*/, "= ['"'"'/usr/lib/cni'"'"']") }
    /^ *restrict_oom_score_adj = / { sub(/=.*/, "= true") }
    { print }'
}
for ((n = 1; n <= NODES; n++)); do
  name=$(node_name "$n")
  dir=$K8S_RUN/nodes/$name
  mkdir -p "$dir/root/etc/containerd/certs.d/$REGISTRY" "$dir/root/etc/containerd/certs.d/$PRIVATE_REGISTRY" \
    "$dir/root/etc/containerd/certs.d/$TLS_REGISTRY" \
    "$dir/root/etc/containerd/certs.d/docker.io" "$dir/root/etc/cni/net.d"
  cert "kubelet-$name" "system:node:$name" system:nodes "DNS:$name,IP:$(node_ip "$n")"
  kubeconfig "kubelet-$name" "kubelet-$name"
  mv "$K8S_RUN/kubelet-$name.kubeconfig" "$dir/kubelet.kubeconfig"
  # The node's containerd with registry config_path: the node's mirror
  # config lives in certs.d, which is what dfdaemon rewrites and restores.
  version=$(node_containerd "$n")
  rm -f "$dir/containerd-bin"
  if [ "$version" != debian ]; then
    echo "${CONTAINERD_BIN[$version]}" >"$dir/containerd-bin"
    containerd_config_2x "${CONTAINERD_BIN[$version]}" >"$dir/root/etc/containerd/config.toml"
  else
  cat >"$dir/root/etc/containerd/config.toml" <<TOML
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$REGISTRY/pause:3.10"
  # This machine withholds CAP_SYS_RESOURCE, so no process may lower an
  # oom_score_adj below its own (runc would fail on -998 for the sandbox).
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "/etc/containerd/certs.d"
TOML
  fi
  # The local registries speak plain HTTP; docker.io names (the project's
  # default image names) resolve to the local registry too.
  # (containerd 1.6 refuses a hosts.toml without a host table.)
  for r in "$REGISTRY=$REGISTRY" "$PRIVATE_REGISTRY=$PRIVATE_REGISTRY" "docker.io=$REGISTRY"; do
    printf 'server = "http://%s"\n\n[host."http://%s"]\n  capabilities = ["pull", "resolve"]\n' \
      "${r#*=}" "${r#*=}" >"$dir/root/etc/containerd/certs.d/${r%%=*}/hosts.toml"
  done
  # The TLS registry: the node trusts its CA (so a pull that bypasses the
  # mirror still works); the mirror is given the CA by the DragonflyCluster.
  cp "$TLS_REGISTRY_CA" "$dir/root/etc/containerd/certs.d/$TLS_REGISTRY/ca.crt"
  printf 'server = "https://%s"\n\n[host."https://%s"]\n  capabilities = ["pull", "resolve"]\n  ca = "/etc/containerd/certs.d/%s/ca.crt"\n' \
    "$TLS_REGISTRY" "$TLS_REGISTRY" "$TLS_REGISTRY" >"$dir/root/etc/containerd/certs.d/$TLS_REGISTRY/hosts.toml"
  cat >"$dir/root/etc/cni/net.d/10-bridge.conflist" <<JSON
{
  "cniVersion": "0.4.0",
  "name": "e2e",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
     "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$(node_cidr "$n")"}]],
              "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}, "snat": false},
    {"type": "loopback"}
  ]
}
JSON
  echo "nameserver $DNS_IP" >"$dir/resolv.conf"
  # Pod DNS goes to CoreDNS; the node's own lookups never leave the machine.
  echo "# no upstream resolver in the local cluster" >"$dir/host-resolv.conf"
  cat >"$dir/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
cgroupDriver: cgroupfs
# Every node's pods in a cgroup tree of its own on the shared host.
cgroupRoot: /$name
cgroupsPerQOS: true
clusterDomain: cluster.local
clusterDNS: [$DNS_IP]
resolvConf: $dir/host-resolv.conf
failSwapOn: false
port: 10250
address: $(node_ip "$n")
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
staticPodPath: ""
serializeImagePulls: false
imageGCHighThresholdPercent: 100
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
registerNode: true
YAML
  start "$name-kubelet" "$name" "$here/node.sh" "$n" "$BIN"
  start "$name-kube-proxy" "$name" "$BIN/kube-proxy" --config "$K8S_RUN/kube-proxy.yaml" \
    --hostname-override "$name"
done
for ((n = 1; n <= NODES; n++)); do
  kill -0 "$(cat "$K8S_RUN/pids/$(node_name "$n")-kubelet")" 2>/dev/null ||
    { tail -5 "$K8S_RUN/logs/$(node_name "$n")-kubelet.log" >&2; die "kubelet of $(node_name "$n") exited"; }
  wait_for 180 "node $(node_name "$n") Ready" sh -c \
    "kubectl --kubeconfig $K8S_RUN/admin.kubeconfig get node $(node_name "$n") -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
done

log "CoreDNS"
kc apply -f - >/dev/null <<YAML
apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: system:coredns}
rules:
  - apiGroups: [""]
    resources: [endpoints, services, pods, namespaces]
    verbs: [list, watch]
  - apiGroups: [discovery.k8s.io]
    resources: [endpointslices]
    verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: system:coredns}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:coredns}
subjects: [{kind: ServiceAccount, name: coredns, namespace: kube-system}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  Corefile: |
    .:53 {
        errors
        health :8080
        ready :8181
        kubernetes cluster.local in-addr.arpa ip6.arpa {
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
        }
        cache 30
        loop
        reload
    }
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  replicas: 1
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      priorityClassName: system-cluster-critical
      dnsPolicy: Default
      containers:
        - name: coredns
          image: $REGISTRY/coredns:v1
          args: [-conf, /etc/coredns/Corefile]
          ports:
            - {name: dns, containerPort: 53, protocol: UDP}
            - {name: dns-tcp, containerPort: 53, protocol: TCP}
          readinessProbe:
            httpGet: {path: /ready, port: 8181}
          volumeMounts: [{name: config, mountPath: /etc/coredns}]
      volumes: [{name: config, configMap: {name: coredns}}]
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  clusterIP: $DNS_IP
  selector: {k8s-app: kube-dns}
  ports:
    - {name: dns, port: 53, protocol: UDP}
    - {name: dns-tcp, port: 53, protocol: TCP}
YAML
kc -n kube-system rollout status deploy/coredns --timeout=180s >&2

t_end=$(date +%s)
echo "nodes=$NODES build_s=$((t_build - t0)) images_s=$((t_images - t_build)) total_s=$((t_end - t0))" >"$K8S_RUN/up-times"
log "cluster up in $((t_end - t0)) s (binaries $((t_build - t0)) s, images $((t_images - t_build)) s): $NODES nodes"
kc get nodes -o wide >&2
echo "export KUBECONFIG=$K8S_RUN/admin.kubeconfig"
