#!/usr/bin/env bash
# What a request costs Sluice in instructions, counted by valgrind's callgrind: the steady
# measure for a change of a microsecond or less, which load.sh's req/s and CPU columns cannot
# resolve on a shared VM. Each row runs the release binary under callgrind in front of nginx,
# warms up, then counts the userland instructions of every thread over one wrk run of 4
# connections and divides by the requests completed.
#
#   bash benches/instructions.sh                    # rows sluice and sluice-wasm
#   ROWS="sluice-wasm" RUNS=3 bash benches/instructions.sh
#
# Runs of the same binary differ by a few dozen instructions per request (the proxy has one
# worker); RUNS gives the median of several. Kernel time is not counted: load.sh measures the
# whole. The sluice-wasm row also shows where the filter's own (guest) instructions go, by
# function: the proxy runs with SLUICE_WASM_PERFMAP=1, whose perf map names the code wasmtime
# compiled (guest_functions.py). The report also goes to benches/results/instructions-<time>.md.
set -euo pipefail

# === knobs (environment) ===
ROWS=${ROWS:-sluice sluice-wasm}   # sluice (no filter), sluice-wasm (the load bench's filter)
RUNS=${RUNS:-1}                    # runs per row; the table shows each and their median
MEASURE=${MEASURE:-12s}            # the counted wrk run (under valgrind: about 20k requests)
GUEST_TOP=${GUEST_TOP:-12}         # guest functions listed for sluice-wasm (its last run); 0: none
# SKIP_INSTALL, SLUICE_BIN: see common.sh.
# shellcheck source=benches/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

readonly NGINX_PORT=18080 SLUICE_PORT=10000 SLUICE_ADMIN_PORT=19901
# What nginx answers and check_route expects (common.sh reads both).
# shellcheck disable=SC2034
readonly BODY="sluice load bench upstream: fixed 100-byte body for side-by-side proxy comparison.................."
readonly WASM_FILTER=bench
LOAD_PIN=()                        # start_nginx's command prefix: none, nothing is pinned
# What a row runs under valgrind: slower by 50x, so readiness gets longer.
readonly VALGRIND_READY_SECONDS=120

declare -A COUNTS=()
GUEST_TABLE=""                     # the last sluice-wasm run's guest functions (markdown)

# Instructions per request for one run of row $1; appends to COUNTS[$1].
count_row() {
  local row=$1 conf="$WORK/$1.yaml" out="$WORK/callgrind.$1" filters="" pid total done i
  [[ $row != sluice-wasm ]] || filters="[$(sluice_wasm_filter bench "$(wasm_fixture_path "$WASM_FILTER")")]"
  sluice_config "$SLUICE_ADMIN_PORT" "$SLUICE_PORT" "$NGINX_PORT" "$filters" >"$conf"
  require_free_port "$SLUICE_PORT"
  rm -f "$out"*
  # env execs valgrind, and valgrind runs the proxy inside its own process (no fork), so
  # $LAST_PID is the pid in the perf map's name.
  start_bg "$WORK/$row.log" env SLUICE_WASM_PERFMAP=1 \
    valgrind --tool=callgrind --callgrind-out-file="$out" "$SLUICE_BIN" proxy --config "$conf"
  pid=$LAST_PID
  for ((i = 0; i < VALGRIND_READY_SECONDS * 2; i++)); do
    curl -fsS -o /dev/null "http://$HOST:$SLUICE_ADMIN_PORT/ready" 2>/dev/null && break
    is_alive "$pid" || { cat "$WORK/$row.log" >&2; die "$row: the proxy exited under valgrind"; }
    sleep 0.5
  done
  check_route "$row" "$SLUICE_PORT"
  wrk -t1 -c4 -d3s "http://$HOST:$SLUICE_PORT/" >/dev/null
  callgrind_control --zero "$pid" >/dev/null 2>&1
  wrk -t1 -c4 -d"$MEASURE" "http://$HOST:$SLUICE_PORT/" >"$WORK/wrk-$row.txt"
  callgrind_control --dump "$pid" >/dev/null 2>&1
  stop_pid "$pid"
  done=$(awk '$2 == "requests" && $3 == "in" { print $1 }' "$WORK/wrk-$row.txt")
  total=$(callgrind_annotate "$out.1" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
  [[ $done =~ ^[0-9]+$ && $total =~ ^[0-9]+$ ]] || die "$row: no count (requests '$done', instructions '$total')"
  COUNTS[$row]+="$((total / done)) "
  log "$row: $((total / done)) instructions per request over $done requests"
  # wasmtime writes the map to /tmp whatever TMPDIR says; keep it with the rest of the run.
  if [[ -f /tmp/perf-$pid.map ]]; then mv "/tmp/perf-$pid.map" "$WORK/perf-$row.map"; fi
  # The guest table is a side result: without it the counts still stand.
  if [[ $row == sluice-wasm ]] && ((GUEST_TOP > 0)); then
    if [[ ! -f $WORK/perf-$row.map ]]; then
      log "$row: no guest table: the proxy wrote no perf map (/tmp/perf-$pid.map)"
    elif ! GUEST_TABLE=$("$PYTHON" "$ROOT/benches/guest_functions.py" "$out.1" \
        "$WORK/perf-$row.map" "$done" "$GUEST_TOP"); then
      GUEST_TABLE=""
      log "$row: no guest table: guest_functions.py failed"
    fi
  fi
}

main() {
  [[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer"
  [[ $GUEST_TOP =~ ^[0-9]+$ ]] || die "GUEST_TOP must be a number"
  valid_duration "$MEASURE" || die "bad MEASURE '$MEASURE' (use e.g. 12s)"
  if [[ $SKIP_INSTALL != 1 ]]; then
    install_debian_tools
    command -v valgrind >/dev/null || apt_install valgrind
  fi
  local tool row i
  for tool in valgrind callgrind_control callgrind_annotate wrk nginx curl; do
    command -v "$tool" >/dev/null || die "$tool not found"
  done
  if ((GUEST_TOP > 0)) && [[ " $ROWS " == *" sluice-wasm "* ]]; then
    command -v "$PYTHON" >/dev/null || die "$PYTHON not found (it lists the guest functions; GUEST_TOP=0 skips them)"
  fi
  resolve_sluice
  [[ " $ROWS " != *" sluice-wasm "* ]] || ensure_wasm_fixtures "$WASM_FILTER"
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/sluice-instructions.XXXXXX")
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  start_nginx
  for ((i = 0; i < RUNS; i++)); do
    for row in $ROWS; do count_row "$row"; done
  done
  local results
  results="$ROOT/benches/results/instructions-$(date -u +%Y-%m-%dT%H%M%SZ).md"
  mkdir -p "$(dirname "$results")"
  echo
  report | tee "$results"
  echo
  log "results written to ${results#"$ROOT"/}"
}

# The table of counts, the filter's share and its guest functions, with what produced them.
report() {
  local row v
  echo "# Instructions per request $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "- sluice: $(sluice_build), one worker, under $(valgrind --version)"
  echo "- load: wrk -t1 -c4 -d$MEASURE after a 3 s warm-up, GET / with a 100-byte body from nginx; $RUNS run(s) per row"
  if [[ " $ROWS " == *" sluice-wasm "* ]]; then
    v=$(sha256sum "$(wasm_fixture_path "$WASM_FILTER")" | cut -c1-16) || v=""
    echo "- wasm filter: fixture $WASM_FILTER (sha256 ${v:-unknown}...)"
  fi
  echo
  echo "| row | instructions per request (median) | runs |"
  echo "|---|---:|---|"
  for row in $ROWS; do
    echo "| $row | $(median "${COUNTS[$row]}") | ${COUNTS[$row]% } |"
  done
  if [[ -n ${COUNTS[sluice]:-} && -n ${COUNTS[sluice-wasm]:-} ]]; then
    echo
    echo "- the bench filter costs $(($(median "${COUNTS[sluice-wasm]}") - $(median "${COUNTS[sluice]}"))) instructions per request (medians)"
  fi
  if [[ -n $GUEST_TABLE ]]; then
    echo
    echo "Where the filter's guest code spends them (sluice-wasm, last run):"
    echo
    echo "$GUEST_TABLE"
  fi
}

main "$@"
