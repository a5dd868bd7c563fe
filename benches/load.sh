#!/usr/bin/env bash
# Side-by-side HTTP load bench: the same wrk load against nginx directly, through Sluice and
# through Envoy 1.40, each proxy bare and with one Proxy-Wasm filter (the same module in both), all
# on loopback. See benches/README.md for what each row means.
#
#   bash benches/load.sh                          # all rows, 10 s each
#   ROWS="direct envoy envoy-wasm" DURATION=3s bash benches/load.sh
#   LOADGEN=h2load bash benches/load.sh           # the same rows over cleartext HTTP/2
#   ROWS="sluice sluice-wasm" ROUNDS=5 bash benches/load.sh   # medians of 5 interleaved rounds
set -euo pipefail

# === knobs (environment) ===
LOADGEN=${LOADGEN:-wrk}             # wrk (HTTP/1.1) or h2load (HTTP/2, prior knowledge)
DURATION=${DURATION:-10s}           # measured run per row
WARMUP=${WARMUP:-2s}                # unmeasured run before each measured one; 0 skips it
if [[ $LOADGEN == h2load ]]; then
  CONNECTIONS=${CONNECTIONS:-10}
  STREAMS=${STREAMS:-10}            # concurrent streams per connection (h2load -m)
else
  CONNECTIONS=${CONNECTIONS:-50}
  STREAMS=1
fi
THREADS=${THREADS:-1}
# Rounds of all ROWS, one after the other (row A, row B, A, B, ...), so a slow spell of a shared
# machine falls on every row alike; the table shows each column's median over the rounds.
ROUNDS=${ROUNDS:-1}
RESULTS_TSV=${RESULTS_TSV:-}        # set: also append each row there, tab-separated (report.sh)
ROWS=${ROWS:-direct sluice sluice-wasm sluice-std envoy envoy-wasm envoy-std}
# SKIP_INSTALL, SLUICE_BIN (set: use this binary instead of `cargo build`), ENVOY_BIN, PYTHON:
# see common.sh, which also holds the helpers this script shares with envoy_diff.sh.
# shellcheck source=benches/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

readonly NGINX_PORT=18080
# nginx's cleartext HTTP/2 port, for the direct row of an h2load run (the proxies' upstream
# stays HTTP/1.1 on NGINX_PORT, as in the wrk run).
if [[ $LOADGEN == h2load ]]; then readonly NGINX_H2_PORT=18081; fi
readonly SLUICE_PORT=10000 SLUICE_ADMIN_PORT=19901
readonly ENVOY_PORT=10001 ENVOY_ADMIN_PORT=19902
readonly ALL_ROWS="direct sluice sluice-wasm sluice-std envoy envoy-wasm envoy-std sluice-metrics sluice-ratelimit sluice-authz sluice-circuit_breaker sluice-retry sluice-all envoy-metrics envoy-ratelimit envoy-authz envoy-circuit_breaker"
# The -std rows chain the three standard-ABI filters, configured so every request passes:
# metrics, ratelimit (far above the load), authz (one rule that allows every request). A
# `<proxy>-<filter>` row runs one standard filter alone (not in the default ROWS).
# sluice-all chains all five (retry and circuit_breaker need Sluice's host extensions).
readonly STD_FILTERS="metrics ratelimit authz"
readonly ALL_FILTERS="metrics ratelimit authz circuit_breaker retry"
declare -A STD_CONFIG=(
  [metrics]=""
  [ratelimit]='{"key":"source","rate":100000000,"per":"1s"}'
  [authz]='{"rules":[{"action":"allow","paths":["/*"]}]}'
  [circuit_breaker]='{"consecutive_failures":5}'
  [retry]=''
)
# The wasm rows' filter: proxy/tests/fixtures/bench, built as the e2e tests build the fixtures.
readonly WASM_FILTER=bench          # filter name in Sluice, plugin and vm_id in Envoy
readonly WASM_HEADER=x-bench-headers # response header the filter adds (number of request headers)
# 99 visible bytes + newline: a small fixed body, so the bench measures proxying, not payload.
readonly BODY="sluice load bench upstream: fixed 100-byte body for side-by-side proxy comparison.................."

PROXY_PIN=()                        # command prefix pinning the proxy under test
LOAD_PIN=()                         # command prefix pinning wrk and nginx
PIN_NOTE=""
WASM_MODULE=""                      # absolute path of the filter module, set by resolve_wasm_module
declare -A RPS=() P50=() P99=() ERRORS=() RSS=() CPU=()
# Each round's values of a row, space-separated, before reduce_rounds takes their medians.
declare -A ROUND_RPS=() ROUND_P50=() ROUND_P99=() ROUND_RSS=() ROUND_CPU=() ROUND_ERRORS=()
if [[ $LOADGEN == h2load ]]; then
  CURL_PROTOCOL=(--http2-prior-knowledge)  # checks that the row speaks cleartext HTTP/2
  LATENCY_COLUMNS="mean ms | max ms"
  TAIL_NAME="max latency"
  FAILURE_KIND="failed"
else
  CURL_PROTOCOL=(--http1.1)
  LATENCY_COLUMNS="p50 ms | p99 ms"
  TAIL_NAME="p99"
  FAILURE_KIND="socket"
fi

# === install ===

# Sets WASM_MODULE to the bench filter, building the fixtures only if it is missing.
resolve_wasm_module() {
  WASM_MODULE=$(wasm_fixture_path "$WASM_FILTER")
  ensure_wasm_fixtures "$WASM_FILTER"
}

# === checks ===

# A wasm row must show that its filter ran: a proxy that skipped it (not loaded, or failing open)
# would still pass check_route and post a flattering number. The bench filter answers with
# $WASM_HEADER set to the number of request headers it read, so it must be a positive integer.
check_wasm_filter() {
  local row=$1 port=$2 headers value
  headers=$(curl -fsS --max-time 5 "${CURL_PROTOCOL[@]}" -o /dev/null -D - "http://$HOST:$port/") ||
    die "$row: GET http://$HOST:$port/ failed"
  value=$(printf '%s\n' "$headers" | tr -d '\r' |
    awk -v want="$WASM_HEADER" 'index($0, ":") { name = tolower(substr($0, 1, index($0, ":") - 1))
      if (name == want) { v = substr($0, index($0, ":") + 1); gsub(/^[ \t]+|[ \t]+$/, "", v); print v; exit } }')
  [[ $value =~ ^[1-9][0-9]*$ ]] || {
    printf '%s\n' "$headers" >&2
    die "$row: response lacks '$WASM_HEADER: <n>' (got '${value}'), so the wasm filter did not run"
  }
}

# === servers ===

# The standard filters a row runs: `std` the three chained, `all` all five chained,
# `filter:<name>` one alone.
std_names() {
  case $1 in
    std) echo "$STD_FILTERS" ;;
    all) echo "$ALL_FILTERS" ;;
    *) echo "${1#filter:}" ;;
  esac
}

# The fixed config contract (shared/design/config-contract.md); unknown fields are errors there.
# $1, if set, is a wasm module to put on the listener as its only filter (the wasm row).
sluice_conf() {
  local filters="" name entries=()
  case ${1:-} in
    "") ;;
    std | all | filter:*)
      for name in $(std_names "$1"); do
        entries+=("$(sluice_wasm_filter "$name" "$(standard_filter_path "$name")" "${STD_CONFIG[$name]}")")
      done
      filters="[$(IFS=,; echo "${entries[*]}")]"
      ;;
    *) filters="[$(sluice_wasm_filter "$WASM_FILTER" "$1")]" ;;
  esac
  sluice_config "$SLUICE_ADMIN_PORT" "$SLUICE_PORT" "$NGINX_PORT" "$filters"
}

# $1 names the config and log files (the row); $2, if set, is the wasm module to load.
start_sluice() {
  local conf="$WORK/$1.yaml" logfile="$WORK/$1.log"
  sluice_conf "${2:-}" >"$conf"
  require_free_port "$SLUICE_PORT"
  require_free_port "$SLUICE_ADMIN_PORT"
  start_bg "$logfile" "${PROXY_PIN[@]}" "$SLUICE_BIN" proxy --config "$conf"
  wait_http_200 "http://$HOST:$SLUICE_ADMIN_PORT/ready" "$LAST_PID" "$logfile"
}

# Envoy with the bench filter (vm_id bench, no plugin config, fail closed) before the router when
# $1, a wasm module, is set (the wasm row); see envoy_config for how it matches the Sluice config.
envoy_conf() {
  local filters="" name
  case ${1:-} in
    "") ;;
    std | filter:*)
      for name in $(std_names "$1"); do
        filters+="$(envoy_wasm_filter "$name" "$(standard_filter_path "$name")" "" "${STD_CONFIG[$name]}")"$'\n'
      done
      filters=${filters%$'\n'}
      ;;
    *) filters=$(envoy_wasm_filter "$WASM_FILTER" "$1" "$WASM_FILTER") ;;
  esac
  envoy_config "$ENVOY_ADMIN_PORT" "$ENVOY_PORT" "$NGINX_PORT" "$filters"
}

# $1 names the config and log files (the row); $2, if set, is the wasm module to load.
start_envoy() {
  local conf="$WORK/$1.yaml" logfile="$WORK/$1.log"
  envoy_conf "${2:-}" >"$conf"
  require_free_port "$ENVOY_PORT"
  require_free_port "$ENVOY_ADMIN_PORT"
  # --disable-hot-restart: no shared-memory segment in /dev/shm, so no clash with another envoy
  # and nothing left behind.
  start_bg "$logfile" "${PROXY_PIN[@]}" "$ENVOY_BIN" -c "$conf" --concurrency 1 \
    --disable-hot-restart --log-level warn
  wait_http_200 "http://$HOST:$ENVOY_ADMIN_PORT/ready" "$LAST_PID" "$logfile"
  wait_port "$ENVOY_PORT" "$LAST_PID" "$logfile"
}

# === measuring ===

# Runs row $1 once (round $2): starts the row's proxy (if any), checks the path, warms up,
# measures, samples RSS, stops it, and appends its numbers to the ROUND_* lists.
run_row() {
  local row=$1 round=$2
  local port pid="" out rps p50 p99 non2xx sock done ticks="" after rss=-
  out=$(raw_output "$row" "$round")
  local t0=$EPOCHREALTIME
  case $row in
    direct) port=${NGINX_H2_PORT:-$NGINX_PORT} ;;
    sluice) start_sluice "$row"; pid=$LAST_PID; port=$SLUICE_PORT ;;
    sluice-wasm) start_sluice "$row" "$WASM_MODULE"; pid=$LAST_PID; port=$SLUICE_PORT ;;
    sluice-std) start_sluice "$row" std; pid=$LAST_PID; port=$SLUICE_PORT ;;
    sluice-all) start_sluice "$row" all; pid=$LAST_PID; port=$SLUICE_PORT ;;
    sluice-*) start_sluice "$row" "filter:${row#sluice-}"; pid=$LAST_PID; port=$SLUICE_PORT ;;
    envoy) start_envoy "$row"; pid=$LAST_PID; port=$ENVOY_PORT ;;
    envoy-wasm) start_envoy "$row" "$WASM_MODULE"; pid=$LAST_PID; port=$ENVOY_PORT ;;
    envoy-std) start_envoy "$row" std; pid=$LAST_PID; port=$ENVOY_PORT ;;
    envoy-*) start_envoy "$row" "filter:${row#envoy-}"; pid=$LAST_PID; port=$ENVOY_PORT ;;
  esac
  # Start-up cost (a wasm VM compiles the module before the proxy is ready); logged, not measured.
  [[ -z $pid ]] || log "$row: ready after $(elapsed_since "$t0") s"
  check_route "$row" "$port" "http://$HOST:$port/" "${CURL_PROTOCOL[@]}"
  [[ $row != *-wasm ]] || check_wasm_filter "$row" "$port"
  if [[ $WARMUP != 0 ]]; then
    log "$row: warm-up $WARMUP"
    "run_$LOADGEN" "$port" "$WARMUP" "$WORK/warmup-$row.txt" ||
      { cat "$WORK/warmup-$row.txt" >&2; die "$row: warm-up $LOADGEN failed"; }
  fi
  log "$row: measuring $DURATION, $CONNECTIONS connections x $STREAMS streams, $THREADS thread(s)"
  [[ -z $pid ]] || ticks=$(cpu_ticks "$pid")
  "run_$LOADGEN" "$port" "$DURATION" "$out" || log "$row: $LOADGEN exited non-zero (output kept below)"
  # The proxy's own CPU time per request: unlike 1e6/rps, it leaves out the load tool's and
  # nginx's time; how they share the cores still moves it (fewer requests per wake-up).
  if [[ -n $pid ]]; then
    after=$(cpu_ticks "$pid")
    if [[ $ticks =~ ^[0-9]+$ && $after =~ ^[0-9]+$ ]]; then ticks=$((after - ticks)); else ticks=""; fi
  fi
  [[ -z $pid ]] || rss=$(rss_mb "$pid")
  # wrk: p50 and p99; h2load reports no percentiles: mean and max (see LATENCY_COLUMNS).
  read -r rps p50 p99 non2xx sock done < <("parse_$LOADGEN" <"$out")
  ROUND_RPS[$row]+="$rps " ROUND_P50[$row]+="$p50 " ROUND_P99[$row]+="$p99 " ROUND_RSS[$row]+="$rss "
  ROUND_CPU[$row]+="$(cpu_us_per_request "$ticks" "$done") "
  ROUND_ERRORS[$row]+="$non2xx,$sock "
  if [[ -n $pid ]]; then
    is_alive "$pid" || log "$row: the proxy exited during the run"
    stop_pid "$pid"
  fi
}

# Where round $2 of row $1 keeps its raw load-tool output.
raw_output() { printf '%s\n' "$WORK/wrk-$1-round$2.txt"; }

# Each column of each row becomes the median of its rounds (errors: the sum), and goes to
# RESULTS_TSV if set.
reduce_rounds() {
  local row non2xx sock
  for row in $ROWS; do
    RPS[$row]=$(median "${ROUND_RPS[$row]}") CPU[$row]=$(median "${ROUND_CPU[$row]}")
    P50[$row]=$(median "${ROUND_P50[$row]}") P99[$row]=$(median "${ROUND_P99[$row]}")
    RSS[$row]=$(median "${ROUND_RSS[$row]}")
    read -r non2xx sock < <(tr ' ,' '\n ' <<<"${ROUND_ERRORS[$row]}" |
      awk '{ n += $1; s += $2 } END { print n + 0, s + 0 }')
    ERRORS[$row]=$((non2xx + sock))
    ((non2xx + sock == 0)) || ERRORS[$row]+=" (non-2xx $non2xx, $FAILURE_KIND $sock)"
    if [[ -n $RESULTS_TSV ]]; then
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$LOADGEN" "$row" "${RPS[$row]}" "${P50[$row]}" \
        "${P99[$row]}" "${RSS[$row]}" "$((non2xx + sock))" >>"$RESULTS_TSV"
    fi
  done
}

# === report ===

tool_versions() {
  local v
  if [[ $LOADGEN == h2load ]]; then
    v=$(h2load --version 2>&1 | awk 'NR == 1 { print $2 }') || true
    echo "- h2load: ${v:-unknown}"
  else
    v=$(wrk -v 2>&1 | awk 'NR == 1 { print $2 }') || true
    echo "- wrk: ${v:-unknown}"
  fi
  v=$(nginx -v 2>&1 | sed -n 's|.*nginx/||p') || true
  echo "- nginx: ${v:-unknown}"
  if [[ -n $ENVOY_BIN ]]; then
    echo "- envoy: $(envoy_version_of "$ENVOY_BIN" || true) ($ENVOY_BIN)"
  fi
  if [[ -n $SLUICE_BIN ]]; then
    echo "- sluice: $(sluice_build)"
  fi
  if [[ -n $WASM_MODULE ]]; then
    v=$(sha256sum "$WASM_MODULE" | cut -c1-16) || v=""
    echo "- wasm filter: ${WASM_MODULE#"$ROOT"/} (sha256 ${v:-unknown}...)"
  fi
}

machine_facts() {
  local model load
  model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo) || model=""
  echo "- nproc: $(nproc); CPU: ${model:-unknown}; kernel $(uname -r)"
  echo "- load average at start: $LOADAVG_AT_START (another busy process skews every row)"
  echo "- pinning: $PIN_NOTE"
  if [[ $LOADGEN == h2load ]]; then
    load="h2load -t $THREADS -c $CONNECTIONS -m $STREAMS -D $DURATION, cleartext HTTP/2 (prior knowledge)"
  else
    load="wrk -t $THREADS -c $CONNECTIONS -d $DURATION, HTTP/1.1"
  fi
  echo "- load: $load (warm-up $WARMUP) per row and round, $ROUNDS round(s), GET / with a 100-byte body; the proxies' upstream is nginx over HTTP/1.1"
}

table() {
  local row
  echo "| row | req/s | $LATENCY_COLUMNS | proxy CPU µs/req | RSS MB | errors |"
  echo "|---|---:|---:|---:|---:|---:|---|"
  for row in $ROWS; do
    echo "| $row | ${RPS[$row]} | ${P50[$row]} | ${P99[$row]} | ${CPU[$row]} | ${RSS[$row]} | ${ERRORS[$row]} |"
  done
  ((ROUNDS > 1)) || return 0
  echo
  echo "Medians of $ROUNDS rounds. Each round, in order:"
  echo
  for row in $ROWS; do
    echo "- $row: req/s ${ROUND_RPS[$row]% }; proxy CPU µs/req ${ROUND_CPU[$row]% }"
  done
}

# "$1/$2" as e.g. 1.25x, or n/a if either is not a positive number (a row that produced none).
ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN {
    if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) printf "%.2fx", a / b; else printf "n/a" }'
}

# What the filters of row $1-$2 (wasm: the bench filter; std: the three standard filters) cost
# proxy $1: req/s lost from row $1 as a %, the time per request they add (1e6/rps, since the
# proxy saturates its one core), the proxy CPU time per request they add, and the RSS they add.
wasm_cost() {
  local plain=$1 wasm=$1-${2:-wasm}
  [[ -n ${RPS[$plain]:-} && -n ${RPS[$wasm]:-} ]] || return 0
  local what="wasm filter"
  case ${2:-wasm} in
    wasm) ;;
    std) what="standard filters (metrics, ratelimit, authz)" ;;
    all) what="all five standard filters" ;;
    *) what="standard filter $2" ;;
  esac
  awk -v name="$plain" -v what="$what" -v p="${RPS[$plain]}" -v w="${RPS[$wasm]}" \
      -v rp="${RSS[$plain]}" -v rw="${RSS[$wasm]}" -v cp="${CPU[$plain]}" -v cw="${CPU[$wasm]}" 'BEGIN {
    num = "^[0-9]+([.][0-9]+)?$"
    if (p ~ num && w ~ num && p > 0 && w > 0)
      cost = sprintf("%.1f%% fewer req/s (%+.2f µs per request)", (1 - w / p) * 100, 1e6 / w - 1e6 / p)
    else
      cost = "n/a"
    cpu = (cp ~ num && cw ~ num) ? sprintf("%+.1f µs (%s -> %s)", cw - cp, cp, cw) : "n/a"
    rss = (rp ~ num && rw ~ num) ? sprintf("%+.1f MB (%s -> %s MB)", rw - rp, rp, rw) : "n/a"
    printf "- %s %s cost: %s; proxy CPU per request %s; RSS %s\n", name, what, cost, cpu, rss
  }'
}

# Sluice against Envoy, both bare and both with the filter, for the rows that ran.
proxy_comparison() {
  if [[ -n ${RPS[sluice]:-} && -n ${RPS[envoy]:-} ]]; then
    echo "- sluice/envoy req/s: $(ratio "${RPS[sluice]}" "${RPS[envoy]}") (higher is better)"
    echo "- sluice vs envoy $TAIL_NAME: ${P99[sluice]} ms vs ${P99[envoy]} ms ($(ratio "${P99[sluice]}" "${P99[envoy]}"); lower is better)"
    echo "- sluice/envoy RSS: $(ratio "${RSS[sluice]}" "${RSS[envoy]}") (${RSS[sluice]} MB vs ${RSS[envoy]} MB)"
  fi
  if [[ -n ${RPS[sluice-wasm]:-} && -n ${RPS[envoy-wasm]:-} ]]; then
    echo "- sluice-wasm/envoy-wasm req/s: $(ratio "${RPS[sluice-wasm]}" "${RPS[envoy-wasm]}") (higher is better)"
  fi
  if [[ -n ${RPS[sluice-std]:-} && -n ${RPS[envoy-std]:-} ]]; then
    echo "- sluice-std/envoy-std req/s: $(ratio "${RPS[sluice-std]}" "${RPS[envoy-std]}") (higher is better)"
  fi
}

# The lines under the table, if any pair of rows they compare ran.
ratios() {
  local lines
  lines=$(
    proxy_comparison
    local filter
    for filter in wasm std all metrics ratelimit authz circuit_breaker retry; do
      wasm_cost sluice "$filter"
      wasm_cost envoy "$filter"
    done
  )
  [[ -z $lines ]] || printf '\n%s\n' "$lines"
}

write_results() {
  local file=$1 row round
  mkdir -p "$(dirname "$file")"
  {
    echo "# Load bench $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo
    machine_facts
    tool_versions
    echo
    table
    ratios
    echo
    echo "## Raw $LOADGEN output"
    for row in $ROWS; do
      for ((round = 1; round <= ROUNDS; round++)); do
        printf '\n### %s%s\n\n```\n' "$row" "$( ((ROUNDS == 1)) || echo ", round $round")"
        cat "$(raw_output "$row" "$round")"
        printf '```\n'
      done
    done
  } >"$file"
}

# === main ===

validate_knobs() {
  local row
  for row in $ROWS; do
    [[ " $ALL_ROWS " == *" $row "* ]] || { log "unknown row '$row' (use: $ALL_ROWS)"; exit 2; }
  done
  [[ -n ${ROWS// /} ]] || { log "ROWS is empty"; exit 2; }
  [[ $CONNECTIONS =~ ^[0-9]+$ && $THREADS =~ ^[0-9]+$ ]] || { log "CONNECTIONS and THREADS must be integers"; exit 2; }
  [[ $LOADGEN == wrk || $LOADGEN == h2load ]] || { log "LOADGEN must be wrk or h2load, not '$LOADGEN'"; exit 2; }
  [[ $STREAMS =~ ^[1-9][0-9]*$ ]] || { log "STREAMS must be a positive integer"; exit 2; }
  [[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { log "ROUNDS must be a positive integer"; exit 2; }
  valid_duration "$DURATION" || { log "bad DURATION '$DURATION' (use e.g. 10s, 2m)"; exit 2; }
  valid_duration "$WARMUP" || { log "bad WARMUP '$WARMUP' (use e.g. 2s, or 0 to skip)"; exit 2; }
}

wants() { [[ " $ROWS " == *" $1 "* ]]; }

# True if ROWS has any of the given rows.
wants_any() {
  local row
  for row; do wants "$row" && return 0; done
  return 1
}

main() {
  validate_knobs
  LOADAVG_AT_START=$(cut -d' ' -f1-3 /proc/loadavg)
  if [[ $SKIP_INSTALL != 1 ]]; then
    install_debian_tools
    if [[ " $ROWS " == *" envoy"* ]] && [[ -z $ENVOY_BIN ]]; then install_envoy; fi
  fi
  local tool
  for tool in "$LOADGEN" nginx curl timeout; do command -v "$tool" >/dev/null || die "$tool not found"; done
  if [[ " $ROWS " == *" envoy"* ]]; then resolve_envoy; fi
  if [[ " $ROWS " == *" sluice"* ]]; then resolve_sluice; fi
  if wants_any sluice-wasm envoy-wasm; then resolve_wasm_module; fi
  if [[ $ROWS =~ (sluice|envoy)-(std|all|metrics|ratelimit|authz|circuit_breaker|retry) ]]; then ensure_standard_filters; fi

  # wrk and the proxies hold one fd per connection; the default soft limit can be 1024.
  ulimit -n 65536 2>/dev/null || true
  choose_cpus
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/sluice-load.XXXXXX")
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM

  start_nginx
  local row round
  for ((round = 1; round <= ROUNDS; round++)); do
    ((ROUNDS == 1)) || log "round $round of $ROUNDS"
    for row in $ROWS; do run_row "$row" "$round"; done
  done
  reduce_rounds

  local results
  results="$ROOT/benches/results/load-$([[ $LOADGEN == wrk ]] || echo h2-)$(date -u +%Y-%m-%dT%H%M%SZ).md"
  write_results "$results"
  echo
  table
  ratios
  echo
  log "results written to ${results#"$ROOT"/}"
}

main "$@"
