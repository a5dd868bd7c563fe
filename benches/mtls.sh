#!/usr/bin/env bash
# Two sidecars side by side: the same wrk load through two Sluice proxies and through two Envoy
# 1.40 proxies, first in plaintext, then with mutual TLS between them (static certificates made
# here with openssl), all on loopback, one worker each; and TLS handshakes per second on one
# proxy's TLS listener. See benches/README.md.
#
#   bash benches/mtls.sh                                  # all rows, 10 s each
#   ROWS="sluice-mtls envoy-mtls" DURATION=3s bash benches/mtls.sh
set -euo pipefail

# === knobs (environment) ===
DURATION=${DURATION:-10s}           # measured wrk run per row
WARMUP=${WARMUP:-2s}                # unmeasured wrk run before each measured one; 0 skips it
CONNECTIONS=${CONNECTIONS:-50}
THREADS=${THREADS:-1}
ROWS=${ROWS:-direct sluice-plain sluice-mtls envoy-plain envoy-mtls sluice-handshakes envoy-handshakes}
# SKIP_INSTALL, SLUICE_BIN, ENVOY_BIN, PYTHON: see common.sh.
# shellcheck source=benches/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

readonly ALL_ROWS="direct sluice-plain sluice-mtls envoy-plain envoy-mtls sluice-handshakes envoy-handshakes"
readonly NGINX_PORT=18080
readonly OUT_PORT=10000 IN_PORT=10100        # the client's sidecar, the server's sidecar
readonly OUT_ADMIN=19901 IN_ADMIN=19911
readonly SERVER_NAME=web.mesh.test
readonly CLIENT_ID=spiffe://mesh.test/ns/shop/sa/checkout
# What nginx answers; check_route compares with it.
readonly BODY="sluice load bench upstream: fixed 100-byte body for side-by-side proxy comparison.................."

PROXY_PIN=()
LOAD_PIN=()
PIN_NOTE=""
CERTS=""
ROW_PIDS=()
declare -A RPS=() P50=() P99=() ERRORS=() RSS=()

# === certificates ===

# Issues certificate $1 (PKCS#8 key $1.key, $1.pem) with SAN $2 from the CA in the current dir.
issue_certificate() {
  local name=$1 san=$2
  openssl ecparam -name prime256v1 -genkey -noout -out "$name.ec.key"
  openssl pkcs8 -topk8 -nocrypt -in "$name.ec.key" -out "$name.key"
  openssl req -new -key "$name.key" -subj "/CN=$name" -out "$name.csr"
  printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$san" >"$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
    -extfile "$name.ext" -out "$name.pem"
}

# A CA, the server sidecar's certificate (DNS SAN $SERVER_NAME) and the client sidecar's
# (URI SAN $CLIENT_ID), ECDSA P-256, in $CERTS.
make_certs() {
  CERTS="$WORK/certs"
  mkdir -p "$CERTS"
  (
    cd "$CERTS"
    openssl ecparam -name prime256v1 -genkey -noout -out ca.key
    openssl req -x509 -new -key ca.key -subj "/CN=bench mesh CA" -days 2 -out ca.pem
    issue_certificate server "DNS:$SERVER_NAME"
    issue_certificate client "URI:$CLIENT_ID"
  ) >"$WORK/openssl.log" 2>&1 || { cat "$WORK/openssl.log" >&2; die "making certificates failed"; }
}

# === configs ===

# Sluice's server sidecar in front of nginx: $1 mtls (client certificates required), tls, or
# plain.
sluice_inbound() {
  local tls=""
  case $1 in
    mtls) tls="    tls: { certificates: [{ cert: $CERTS/server.pem, key: $CERTS/server.key }], client_ca: $CERTS/ca.pem }"$'\n' ;;
    tls) tls="    tls: { certificates: [{ cert: $CERTS/server.pem, key: $CERTS/server.key }] }"$'\n' ;;
  esac
  printf '%s\n' \
    "admin: { address: $HOST:$IN_ADMIN }" \
    "workers: 1" \
    "listeners:" \
    "  - name: inbound" \
    "    address: $HOST:$IN_PORT"
  printf '%s' "$tls"
  printf '%s\n' \
    "    routes: [{ match: { prefix: / }, cluster: app }]" \
    "clusters:" \
    "  - { name: app, endpoints: [\"$HOST:$NGINX_PORT\"] }"
}

# Sluice's client sidecar: plaintext for the client; $1 mtls or plain to the server sidecar.
sluice_outbound() {
  printf '%s\n' \
    "admin: { address: $HOST:$OUT_ADMIN }" \
    "workers: 1" \
    "listeners:" \
    "  - name: outbound" \
    "    address: $HOST:$OUT_PORT" \
    "    routes: [{ match: { prefix: / }, cluster: web }]" \
    "clusters:" \
    "  - name: web" \
    "    endpoints: [\"$HOST:$IN_PORT\"]"
  [[ $1 != mtls ]] ||
    echo "    tls: { ca: $CERTS/ca.pem, server_name: $SERVER_NAME, cert: $CERTS/client.pem, key: $CERTS/client.key }"
}

# Envoy with one listener on port $2 routing to port $3; admin on $1. $4: the filter chain's
# transport_socket (from envoy_listener_tls, or empty); $5: the cluster's (from
# envoy_cluster_tls, or empty).
envoy_sidecar() {
  cat <<EOF
admin:
  address: { socket_address: { address: $HOST, port_value: $1 } }
static_resources:
  listeners:
    - name: main
      address: { socket_address: { address: $HOST, port_value: $2 } }
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: main
                codec_type: AUTO
                route_config:
                  virtual_hosts:
                    - name: all
                      domains: ["*"]
                      routes: [{ match: { prefix: "/" }, route: { cluster: next, timeout: 15s } }]
                http_filters:
                  - name: envoy.filters.http.router
                    typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
$4
  clusters:
    - name: next
      type: STATIC
      connect_timeout: 5s
      circuit_breakers: { thresholds: [{ max_connections: 100000, max_pending_requests: 100000, max_requests: 100000 }] }
      load_assignment:
        cluster_name: next
        endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: $HOST, port_value: $3 } } } }] }]
$5
EOF
}

# The server sidecar's TLS; $1: require a client certificate (true|false).
envoy_listener_tls() {
  cat <<EOF
          transport_socket:
            name: envoy.transport_sockets.tls
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
              require_client_certificate: $1
              common_tls_context:
                alpn_protocols: [h2, http/1.1]
                tls_certificates: [{ certificate_chain: { filename: $CERTS/server.pem }, private_key: { filename: $CERTS/server.key } }]
                validation_context: { trusted_ca: { filename: $CERTS/ca.pem } }
EOF
}

# The client sidecar's TLS to the server sidecar, verifying its name as Sluice does.
envoy_cluster_tls() {
  cat <<EOF
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
          sni: $SERVER_NAME
          common_tls_context:
            alpn_protocols: [http/1.1]
            tls_certificates: [{ certificate_chain: { filename: $CERTS/client.pem }, private_key: { filename: $CERTS/client.key } }]
            validation_context:
              trusted_ca: { filename: $CERTS/ca.pem }
              match_typed_subject_alt_names: [{ san_type: DNS, matcher: { exact: $SERVER_NAME } }]
EOF
}

# === servers ===

# Starts proxy $1 (sluice|envoy) with config file $2, pinned, in the background (log $2.log);
# waits until admin port $3 says ready.
start_proxy() {
  local kind=$1 conf=$2 admin=$3
  if [[ $kind == sluice ]]; then
    start_bg "$conf.log" "${PROXY_PIN[@]}" "$SLUICE_BIN" proxy --config "$conf"
  else
    start_bg "$conf.log" "${PROXY_PIN[@]}" "$ENVOY_BIN" -c "$conf" --concurrency 1 \
      --disable-hot-restart --log-level warn
  fi
  wait_http_200 "http://$HOST:$admin/ready" "$LAST_PID" "$conf.log"
}

# Starts row $1's proxies: the server sidecar, and the client sidecar unless it is a
# handshakes row. Sets ROW_PIDS.
start_row() {
  local row=$1 kind=${1%%-*} mode=${1#*-}
  require_free_port "$IN_PORT"
  require_free_port "$IN_ADMIN"
  ROW_PIDS=()
  if [[ $kind == sluice ]]; then
    local inbound_mode=$mode
    [[ $mode != handshakes ]] || inbound_mode=tls
    sluice_inbound "$inbound_mode" >"$WORK/$row-in.yaml"
    start_proxy sluice "$WORK/$row-in.yaml" "$IN_ADMIN"
    ROW_PIDS+=("$LAST_PID")
    [[ $mode != handshakes ]] || return 0
    sluice_outbound "$mode" >"$WORK/$row-out.yaml"
    start_proxy sluice "$WORK/$row-out.yaml" "$OUT_ADMIN"
    ROW_PIDS+=("$LAST_PID")
    return 0
  fi
  local listener_tls="" cluster_tls=""
  case $mode in
    mtls) listener_tls=$(envoy_listener_tls true) cluster_tls=$(envoy_cluster_tls) ;;
    handshakes) listener_tls=$(envoy_listener_tls false) ;;
  esac
  envoy_sidecar "$IN_ADMIN" "$IN_PORT" "$NGINX_PORT" "$listener_tls" "" >"$WORK/$row-in.yaml"
  start_proxy envoy "$WORK/$row-in.yaml" "$IN_ADMIN"
  ROW_PIDS+=("$LAST_PID")
  [[ $mode != handshakes ]] || return 0
  envoy_sidecar "$OUT_ADMIN" "$OUT_PORT" "$IN_PORT" "" "$cluster_tls" >"$WORK/$row-out.yaml"
  start_proxy envoy "$WORK/$row-out.yaml" "$OUT_ADMIN"
  ROW_PIDS+=("$LAST_PID")
}

# === measuring ===

# Starts the row's proxies, checks the path, warms up, measures, sums their RSS, stops them.
run_row() {
  local row=$1 out="$WORK/wrk-$row.txt" port url check_url rps p50 p99 non2xx sock pid rss=0
  local wrk_extra=() curl_extra=()
  ROW_PIDS=()
  case $row in
    direct) port=$NGINX_PORT ;;
    *-handshakes)
      start_row "$row"
      port=$IN_PORT
      # A new connection, so a new TLS handshake, for every request. wrk does not verify the
      # certificate; the check does.
      url="https://$HOST:$IN_PORT/"
      check_url="https://$SERVER_NAME:$IN_PORT/"
      wrk_extra=(-H "Connection: close")
      curl_extra=(--cacert "$CERTS/ca.pem" --resolve "$SERVER_NAME:$IN_PORT:$HOST")
      ;;
    *) start_row "$row"; port=$OUT_PORT ;;
  esac
  url=${url:-http://$HOST:$port/}
  check_route "$row" "$port" "${check_url:-$url}" "${curl_extra[@]}"
  if [[ $WARMUP != 0 ]]; then
    run_wrk "$port" "$WARMUP" "$WORK/warmup-$row.txt" "$url" "${wrk_extra[@]}" ||
      { cat "$WORK/warmup-$row.txt" >&2; die "$row: warm-up wrk failed"; }
  fi
  log "$row: measuring $DURATION"
  run_wrk "$port" "$DURATION" "$out" "$url" "${wrk_extra[@]}" || log "$row: wrk exited non-zero"
  RSS[$row]=-
  if ((${#ROW_PIDS[@]})); then
    for pid in "${ROW_PIDS[@]}"; do
      rss=$(awk -v a="$rss" -v b="$(rss_mb "$pid")" 'BEGIN { printf "%.1f", a + b }')
    done
    RSS[$row]=$rss
  fi
  read -r rps p50 p99 non2xx sock _ < <(parse_wrk <"$out")
  RPS[$row]=$rps P50[$row]=$p50 P99[$row]=$p99
  ERRORS[$row]=$((non2xx + sock))
  if ((${#ROW_PIDS[@]})); then
    for pid in "${ROW_PIDS[@]}"; do stop_pid "$pid"; done
  fi
}

table() {
  local row
  echo "| row | req/s | p50 ms | p99 ms | RSS MB (its proxies) | errors |"
  echo "|---|---:|---:|---:|---:|---|"
  for row in $ROWS; do
    echo "| $row | ${RPS[$row]} | ${P50[$row]} | ${P99[$row]} | ${RSS[$row]} | ${ERRORS[$row]} |"
  done
}

# === main ===

main() {
  local row tool results
  for row in $ROWS; do
    [[ " $ALL_ROWS " == *" $row "* ]] || { log "unknown row '$row' (use: $ALL_ROWS)"; exit 2; }
  done
  valid_duration "$DURATION" || { log "bad DURATION '$DURATION' (use e.g. 10s)"; exit 2; }
  valid_duration "$WARMUP" || { log "bad WARMUP '$WARMUP' (use e.g. 2s, or 0)"; exit 2; }
  if [[ $SKIP_INSTALL != 1 ]]; then
    install_debian_tools
    if [[ " $ROWS " == *" envoy"* ]] && [[ -z $ENVOY_BIN ]]; then install_envoy; fi
  fi
  for tool in wrk nginx curl openssl timeout; do command -v "$tool" >/dev/null || die "$tool not found"; done
  if [[ " $ROWS " == *" envoy"* ]]; then resolve_envoy; fi
  if [[ " $ROWS " == *" sluice"* ]]; then resolve_sluice; fi
  ulimit -n 65536 2>/dev/null || true
  choose_cpus
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/sluice-mtls.XXXXXX")
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  make_certs
  start_nginx
  for row in $ROWS; do run_row "$row"; done

  results="$ROOT/benches/results/mtls-$(date -u +%Y-%m-%dT%H%M%SZ).md"
  mkdir -p "$(dirname "$results")"
  {
    echo "# Sidecar mTLS bench $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo
    echo "- pinning: $PIN_NOTE (both sidecars of a row share the proxy CPU)"
    echo "- load: wrk -t $THREADS -c $CONNECTIONS -d $DURATION (warm-up $WARMUP); *-handshakes rows: Connection: close, so one TLS handshake per request, server-side TLS only"
    echo "- certificates: ECDSA P-256 (openssl), TLS 1.3 between the sidecars"
    echo
    table
  } >"$results"
  echo
  table
  log "results written to ${results#"$ROOT"/}"
}

main "$@"
