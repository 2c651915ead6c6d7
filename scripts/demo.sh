#!/usr/bin/env bash
# The main demo: switchyard serving examples/demo/manifests, two echo backends, a stock Envoy
# 1.40 as the client's proxy (delta ADS), and a proxyless gRPC client (grpcio) — requests
# flow through both and the control plane shows every proxy in sync.
#
# Usage: scripts/demo.sh [--keep]   (--keep leaves everything running until Ctrl-C)
# Everything listens on loopback only: switchyard 127.0.0.1:15010 (xDS), :15012 (xDS/CA over
# TLS) and :15014 (admin),
# Envoy on 127.0.0.2 (15001 outbound, admin 127.0.0.1:15000), backends on 127.0.0.11/12.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KEEP=0
[[ "${1:-}" == "--keep" ]] && KEEP=1
cd "$REPO"

step() { printf '\n== %s\n' "$*"; }

step "installing what is missing (scripts/setup.sh)"
scripts/setup.sh

step "building (cargo build --workspace --bins)"
cargo build --workspace --bins --quiet
BIN="$REPO/target/debug"

WORK="$(mktemp -d -t switchyard-demo.XXXXXX)"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

for port in 15010 15012 15014 15000; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "demo: port 127.0.0.1:$port is in use (another demo running?)" >&2
        exit 1
    fi
done

wait_http() { # url, what
    for _ in $(seq 1 100); do
        if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "demo: $2 did not come up ($1); logs in $WORK" >&2
    exit 1
}

step "starting switchyard (manifests: examples/demo/manifests)"
"$BIN/switchyard" serve --config-dir examples/demo/manifests \
    --xds-address 127.0.0.1:15010 --admin-address 127.0.0.1:15014 --set "ca_dir=$WORK/ca" --set xds_tls_address=127.0.0.1:15012 \
    >"$WORK/switchyard.log" 2>&1 &
PIDS+=($!)
wait_http http://127.0.0.1:15014/readyz "switchyard"
curl -fsS http://127.0.0.1:15014/readyz

step "starting two echo backends (pods demo/echo-1 and demo/echo-2)"
"$BIN/switchyard-echo" serve --name echo-1 --http 127.0.0.11:18080 --grpc 127.0.0.11:19090 >"$WORK/echo-1.log" 2>&1 &
PIDS+=($!)
"$BIN/switchyard-echo" serve --name echo-2 --http 127.0.0.12:18080 --grpc 127.0.0.12:19090 >"$WORK/echo-2.log" 2>&1 &
PIDS+=($!)

step "starting Envoy 1.40 as demo/client's proxy (delta ADS)"
cat >"$WORK/envoy.yaml" <<YAML
node:
  id: envoy~127.0.0.2~client.demo~demo.svc.cluster.local
  cluster: client
  metadata: {LISTEN_ADDRESS: 127.0.0.2}
dynamic_resources:
  ads_config:
    api_type: DELTA_GRPC
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services: [{envoy_grpc: {cluster_name: xds}}]
  cds_config: {ads: {}, resource_api_version: V3}
  lds_config: {ads: {}, resource_api_version: V3}
static_resources:
  clusters:
  - name: xds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
    load_assignment:
      cluster_name: xds
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 15010}}}}]}]
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 15000}}
YAML
"$REPO/.venv/bin/envoy" -c "$WORK/envoy.yaml" --disable-hot-restart -l warning \
    --log-path "$WORK/envoy.log" >"$WORK/envoy.out" 2>&1 &
PIDS+=($!)
wait_http http://127.0.0.1:15000/ready "envoy"

step "10 HTTP/1.1 requests through Envoy's outbound listener (Host: echo.demo.svc.cluster.local:8080)"
for i in $(seq 1 10); do
    body=$(curl -fsS -H 'Host: echo.demo.svc.cluster.local:8080' http://127.0.0.2:15001/hello)
    echo "$body" >>"$WORK/http.txt"
    echo "request $i: 200 from $(grep -o '"backend":"[^"]*"' <<<"$body" | cut -d'"' -f4)"
done
for b in echo-1 echo-2; do
    grep -q "\"backend\":\"$b\"" "$WORK/http.txt" || { echo "demo: no answer from $b" >&2; exit 1; }
done

step "10 proxyless gRPC calls: grpcio with xds:///echo.demo.svc.cluster.local:9090"
cat >"$WORK/grpc-bootstrap.json" <<JSON
{"xds_servers":[{"server_uri":"127.0.0.1:15010","channel_creds":[{"type":"insecure"}],"server_features":["xds_v3"]}],
 "node":{"id":"grpc~127.0.0.3~grpc-client.demo~demo.svc.cluster.local","metadata":{}}}
JSON
GRPC_XDS_BOOTSTRAP="$WORK/grpc-bootstrap.json" "$REPO/.venv/bin/python" tests/python/grpc_xds_client.py \
    --target xds:///echo.demo.svc.cluster.local:9090 --count 10 --interval-ms 50 2>/dev/null | tee "$WORK/grpc.txt"
grep -q '"ok": *true' "$WORK/grpc.txt" || { echo "demo: gRPC calls failed" >&2; exit 1; }

step "workload identity: a bootstrap token, a CSR over TLS (15012), the certificate inspected"
"$BIN/yardctl" token create --ca-dir "$WORK/ca" --namespace demo --service-account echo --ttl 10m >"$WORK/token"
"$BIN/yardctl" cert request --ca-address 127.0.0.1:15012 --ca-root-file "$WORK/ca/root-cert.pem" \
    --token-file "$WORK/token" --namespace demo --service-account echo --ttl 1h --out-dir "$WORK/echo-cert"
"$BIN/yardctl" cert inspect "$WORK/echo-cert/cert-chain.pem" --bundle "$WORK/ca/root-cert.pem"

step "control plane view: /debug/syncz"
curl -fsS 'http://127.0.0.1:15014/debug/syncz?format=text'

# ---------------------------------------------------------------------------------------------
# The local cluster: nodes and pods as network namespaces on this machine (needs root).
SUDO=()
if [[ $EUID -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "demo: the local cluster needs root (or sudo)" >&2; exit 1; }
    SUDO=(sudo)
fi
DEV=("${SUDO[@]}" "$BIN/yardctl" dev)
CLUSTER_UP=0
cleanup_cluster() {
    if [[ $CLUSTER_UP -eq 1 ]]; then "${DEV[@]}" down --name demo || true; fi
}
trap 'cleanup_cluster; cleanup' EXIT

step "local cluster: 2 nodes, the control plane, the demo app (examples/local/manifests)"
if [[ -e /run/switchyard/dev/demo/state.json ]]; then
    echo "demo: a local cluster 'demo' is up already; removing it first"
    "${DEV[@]}" down --name demo
fi
CLUSTER_UP=1
"${SUDO[@]}" "$BIN/yardctl" dev up --name demo --nodes 2 --manifests examples/local/manifests
"${DEV[@]}" status --name demo

pod_field() { # status json, filter -> value
    python3 -c "import json,sys; s=json.load(sys.stdin); $1" <<<"$STATUS"
}
STATUS="$("${DEV[@]}" status --name demo -o json)"
CLIENT_NODE=$(pod_field 'print(s["pods"]["demo/client"]["node"])')
mapfile -t FAR < <(pod_field "[print(p['name'], p['ip']) for p in s['pods'].values() if p['owner']=='echo' and p['node']!='$CLIENT_NODE']")
mapfile -t NEAR < <(pod_field "[print(p['name'], p['ip']) for p in s['pods'].values() if p['owner']=='echo' and p['node']=='$CLIENT_NODE']")

step "pod to pod by IP: demo/client ($CLIENT_NODE) -> every echo pod, one HTTP request each"
for entry in "${NEAR[@]}" "${FAR[@]}"; do
    read -r name ip <<<"$entry"
    # "Ready" means the processes run; give a server a moment to listen.
    for attempt in $(seq 1 50); do
        if body=$("${DEV[@]}" exec --name demo client -- switchyard-echo get "http://$ip:8080/hello" 2>>"$WORK/client.log"); then
            break
        fi
        if [[ $attempt -eq 50 ]]; then
            cat "$WORK/client.log" >&2
            echo "demo: no answer from $name at $ip" >&2
            exit 1
        fi
        sleep 0.1
    done
    python3 -c "import json,sys; b=json.load(sys.stdin); print(f\"  {b['backend']:<14} at $ip answered {b['protocol']}, saw the caller as {b['caller']}\")" <<<"$body"
done

read -r far_name far_ip <<<"${FAR[0]}"
step "across nodes: 2 s of HTTP/1.1, HTTP/2 and gRPC at 200 requests/s to $far_name ($far_ip)"
for proto in "--http http://$far_ip:8080/" "--http http://$far_ip:8080/ --http2" "--grpc $far_ip:9090"; do
    # shellcheck disable=SC2086
    if ! "${DEV[@]}" exec --name demo client -- switchyard-echo load $proto --rate 200 --duration 2s --connections 4 >"$WORK/load.json" 2>>"$WORK/client.log"; then
        cat "$WORK/client.log" >&2
        exit 1
    fi
    python3 - "$WORK/load.json" "$proto" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
l = r["latency_ms"]
print(f"  {sys.argv[2]:<44} {r['ok']:>4} ok {r['errors']:>2} errors  p50 {l['p50']:.2f} ms  p99 {l['p99']:.2f} ms")
if r["errors"] or not r["ok"]:
    sys.exit("demo: requests failed across nodes")
PY
done

step "demo ok: requests flowed through Envoy and through proxyless gRPC, both fed by switchyard; a workload certificate came from its CA; pods on two nodes of the local cluster talked across nodes"
if [[ $KEEP -eq 1 ]]; then
    echo "everything keeps running (admin: http://127.0.0.1:15014/debug/syncz; local cluster: yardctl dev status --name demo); Ctrl-C to stop"
    wait
fi
