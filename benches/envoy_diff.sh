#!/usr/bin/env bash
# Differential test against Envoy 1.40: runs the same fixture Proxy-Wasm filters
# (proxy/tests/fixtures) in Envoy (V8) and in Sluice, sends both the same requests, normalizes what
# the client got and what the upstream received, and prints `| fixture | case | same? |` plus a
# unified diff for every difference. Exit 0 if every case is the same (or differs exactly where
# EXPECTED says it must), 1 otherwise, 2 if it could not compare (a tool missing, a proxy that
# does not start). See benches/README.md, "envoy_diff.sh".
#
#   bash benches/envoy_diff.sh
#   RUNS="headers body" KEEP_WORK=1 bash benches/envoy_diff.sh
set -euo pipefail

# shellcheck source=benches/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# Exit 1 means "a case differs"; anything that stops the comparison itself exits 2.
die() { log "error: $*"; exit 2; }

# === knobs (environment; SKIP_INSTALL, SLUICE_BIN, ENVOY_BIN, PYTHON: see common.sh) ===
RUNS=${RUNS:-}                      # a subset of the runs below, by name; empty: all

readonly ECHO_PORT=18090
readonly GRPC_PORT=18091            # benches/grpc_upstream.py, for the grpc run
# The clusters filters call besides `upstream`, in both proxies (HTTP/2): the gRPC upstream, and
# a port nothing listens on.
readonly EXTRA_CLUSTERS="grpc:$GRPC_PORT dead:1"
readonly SLUICE_PORT=10010 SLUICE_ADMIN_PORT=19911
readonly ENVOY_PORT=10011 ENVOY_ADMIN_PORT=19912
readonly REQUEST_HOST=diff.test     # the Host of every request, so the upstream sees one name
readonly CURL_TIMEOUT=10            # seconds, every request
readonly BENCHES="$ROOT/benches"

# One proxy process per run and proxy: a run is a fixture filter with its settings, and the
# requests of its cases_<run> function (dashes as underscores), sent in order. Columns: run,
# fixture (its module is fixture_<fixture>.wasm, and the filter is named after it, which the
# filter sees as plugin_name), plugin config string (- for none), fail policy:
#   closed       Sluice fail_open: false; Envoy failure_policy: FAIL_CLOSED (its default)
#   open         Sluice fail_open: true;  Envoy failure_policy: FAIL_OPEN
#   open-legacy  Sluice fail_open: true;  Envoy's deprecated fail_open: true, which differs from
#                FAIL_OPEN on the request that traps (see the README)
readonly ALL_RUNS=(
  "headers             headers tag-a closed"
  "body                body    -     closed"
  "hostile             hostile -     closed"
  "hostile-open        hostile -     open"
  "hostile-open-legacy hostile -     open-legacy"
  "hostile-memory      hostile -     closed"
  "pauser              pauser  -     closed"
  "signer              signer  -     closed"
  "gate                gate    -     closed"
  "cookies             cookies session,theme closed"
  "callout             callout -     closed"
  "bench               bench   -     closed"
  "ratelimit           filter:ratelimit {\"key\":\"header:x-user\",\"rate\":2,\"per\":\"1m\"} closed"
  "metrics             filter:metrics   -     closed"
  "authz               filter:authz     @authz_diff/config.json closed"
  "grpc                grpc    -     closed"
  "cpp                 sdk:cpp_tag v1 closed"
  "assemblyscript      sdk:as_tag  v1 closed"
  "go                  sdk:go_tag  v1 closed"
)

# Cases that must differ, and why. A case listed here that comes out the same fails the run too,
# so this list stays true.
declare -A EXPECTED=(
  [headers/upstream-headers]="Sluice's header maps (the http crate's, which hyper writes) keep all values of a name together, so the filter's second x-wasm-order lands next to the upstream's instead of after x-wasm-tag. Envoy keeps the order of every entry. The same headers with the same values, in the same order per name, arrive in both; only the position of different names relative to each other differs, which HTTP gives no meaning (RFC 9110, 5.3)."
  [hostile/after-panic]="A trap does not poison the plugin forever in Sluice: the request that trapped gets the fail policy, then the VM is rebuilt, so this request is served normally. Envoy's default keeps the failed VM and answers 503 to every later request (../shared/design/architecture.md, \"Where Sluice deliberately differs from Envoy 1.40\")."
  [hostile-open/bad-pointers-after-panic]="The same deliberate difference with fail_open: after the trap Sluice rebuilds the VM, so the filter runs again and sets x-log-status/x-map-status; Envoy's failed VM stays failed and fail-open skips the filter for every later request."
  [hostile-open-legacy/bad-pointers-after-panic]="As hostile-open/bad-pointers-after-panic: Sluice rebuilds the trapped VM, Envoy skips the failed filter from then on."
  [hostile-open/panic]="Sluice's fail_open: true is Envoy's legacy fail_open field (the config contract's field), which lets the trapping request through; the hostile-open-legacy run shows Sluice matches it. Envoy's newer failure_policy: FAIL_OPEN, used in this run, still answers 503 to the request that trapped."
  [headers/deny-with-body]="Sluice answers a request its filter refused without reading the body it will not forward (over HTTP/1.1 with connection: close, as Envoy does), so request.size, the body bytes received, is 0. Envoy's codec had read the 22 bytes that came with the headers before the filter ran."
  [headers/deny-unread-body]="As headers/deny-with-body: Sluice did not read the refused request's body, Envoy's codec had."
  [hostile-memory/hog]="Sluice caps each VM's linear memory (limits.memory, 256MiB by default; README, \"Wasm filters\"), so the 512MiB allocation traps and the request gets the fail-closed 503. Envoy sets no such cap on V8, so the allocation succeeds."
)

CUR_PORT=""                         # the port of the proxy taking requests
CUR_DIR=""                          # where req writes this run's cases
CASE_NO=0

# === the cases ===
# req CASE METHOD PATH [curl args...]: one request through the proxy under test; see req.
# KEEP=a,b req ...: keeps those framing headers (content-length, connection) in the comparison.

# headers: on request it counts the request headers it sees (x-wasm-header-count), adds
# x-wasm-order: <config>, removes x-wasm-remove-me, sets x-wasm-plugin/-source/-method from
# properties, rewrites /rewrite* to /rewritten, copies `host` to x-wasm-host on /host*, sets
# `host` on /set-host*, copies `cookie` to x-wasm-cookie on /cookie* and answers /deny* itself
# (403, x-denied-by: <config>); on response it sets x-wasm-tag, adds x-wasm-order and copies
# :status to x-wasm-saw-status.
cases_headers() {
  req plain GET /plain
  # The proxy's own headers: Envoy adds x-forwarded-proto and x-request-id before the filters
  # run (so they count in x-wasm-header-count); sent by the client, both proxies keep them.
  req client-request-id GET /plain -H 'x-request-id: client-id-1' -H 'x-forwarded-proto: http'
  req remove-header GET /remove -H 'x-wasm-remove-me: one' -H 'x-wasm-remove-me: two' -H 'x-keep-me: yes'
  req deny GET /deny
  req deny-with-body POST /deny/upload --data-binary @"$WORK/small.txt"
  req rewrite GET '/rewrite/deep?q=1'
  req upstream-404 GET /missing -H 'x-echo-status: 404'
  req upstream-headers GET /upstream-headers -H 'x-echo-add: x-wasm-tag=from-upstream' \
    -H 'x-echo-add: x-wasm-order=upstream'
  req post-body POST /post --data-binary @"$WORK/small.txt"
  # `host` is `:authority` to filters: /host* copies what reading it gives to x-wasm-host, over
  # HTTP/1.1 and HTTP/2; /set-host sets it, and the upstream must get that one Host.
  req host-read GET /host
  req host-read-h2 GET /host --http2-prior-knowledge
  req set-host GET /set-host
  req set-host-h2 GET /set-host --http2-prior-knowledge
  # Two cookie fields from an HTTP/2 client: one header, joined with "; ", for the filter
  # (x-wasm-cookie on /cookie*) and for the HTTP/1.1 upstream.
  req cookies-h2 GET /cookie --http2-prior-knowledge -H 'cookie: session=abc' -H 'cookie: theme=dark'
  # A header HTTP cannot carry, set by the filter: the request fails with 503, naming it.
  req invalid-name GET /invalid-name
  req invalid-value GET /invalid-value
  # Properties: request.size (content-length, or the body received), response.code_details and
  # response.flags, xds.route_name / xds.cluster_name and the bare names Envoy dropped, and the
  # clock's precision. Every reply other than a 200 shows them too (deny, upstream-404 above).
  req props GET /props
  req props-post POST /props --data-binary @"$WORK/small.txt"
  req props-chunked POST /props -H 'Transfer-Encoding: chunked' --data-binary @"$WORK/small.txt"
  # The filter's local reply: its length (not chunks), HEAD with the length and no body over
  # HTTP/1.1 and HTTP/2, and connection: close when the request body was not read.
  KEEP=content-length,transfer-encoding req deny-framing GET /deny
  KEEP=content-length,transfer-encoding req deny-head HEAD /deny
  KEEP=content-length,transfer-encoding req deny-head-h2 HEAD /deny --http2-prior-knowledge
  KEEP=connection req deny-unread-body POST /deny/upload --data-binary @"$WORK/small.txt"
}

# signer: holds the request headers until the body ended, then sets x-signature over method,
# host, path and body, x-signed-host, x-signed-bytes and x-body-calls (data,end(n) or end(n)).
cases_signer() {
  req no-body GET /sign
  req content-length POST /sign --data-binary @"$WORK/small.txt"
  req chunked POST /sign -H 'Transfer-Encoding: chunked' --data-binary @"$WORK/small.txt"
  req large POST /sign --data-binary @"$WORK/large.txt"
  req h2 POST /sign --http2-prior-knowledge --data-binary @"$WORK/small.txt"
}

# gate: /gate* pauses in the headers callbacks and decides in the body callbacks (403 for a
# body with "forbidden", an error page for a 5xx); elsewhere it watches the body callbacks'
# shape (x-request-body-calls, and a last line response-body-calls on the response body).
cases_gate() {
  req watch-get GET /watch -H 'x-echo-reply: body'
  req watch-content-length POST /watch -H 'x-echo-reply: body' --data-binary @"$WORK/small.txt"
  req watch-chunked POST /watch -H 'x-echo-reply: body' -H 'Transfer-Encoding: chunked' --data-binary @"$WORK/small.txt"
  req watch-h2 POST /watch -H 'x-echo-reply: body' --http2-prior-knowledge --data-binary @"$WORK/small.txt"
  req watch-response-chunks GET /watch -H 'x-echo-size: 600' -H 'x-echo-chunks: 3'
  req gate-get GET /gate -H 'x-echo-reply: body'
  req gate-pass POST /gate -H 'x-echo-reply: body' --data-binary @"$WORK/small.txt"
  req gate-forbidden POST /gate -H 'x-echo-reply: body' --data-binary 'this is forbidden'
  req gate-large POST /gate -H 'x-echo-reply: body' --data-binary @"$WORK/large.txt"
  req gate-chunked POST /gate -H 'x-echo-reply: body' -H 'Transfer-Encoding: chunked' --data-binary @"$WORK/small.txt"
  req gate-h2 POST /gate -H 'x-echo-reply: body' --http2-prior-knowledge --data-binary @"$WORK/small.txt"
  req gate-first POST /gate-first -H 'x-echo-reply: body' --data-binary @"$WORK/small.txt"
  req gate-first-large POST /gate-first -H 'x-echo-reply: body' -H 'Transfer-Encoding: chunked' --data-binary @"$WORK/large.txt"
  req gate-5xx GET /gate -H 'x-echo-reply: body' -H 'x-echo-status: 503'
  req gate-response-chunks GET /gate -H 'x-echo-size: 600' -H 'x-echo-chunks: 3'
}

# cookies (configured with session,theme): x-cookie-session/-theme from the cookie header,
# x-cookie-count, and x-set-cookie-count on the response.
cases_cookies() {
  req h1 GET /c -H 'cookie: session=abc; theme=dark; other=1'
  req h2-two-fields GET /c --http2-prior-knowledge -H 'cookie: session=abc' -H 'cookie: theme=dark'
  req set-cookies GET /c -H 'x-echo-add: set-cookie=a=1' -H 'x-echo-add: set-cookie=b=2'
}

# callout: asks the upstream (x-check-cluster) at x-check-path before letting the request go;
# x-auth-saw-path is the request target the upstream got for the callout.
cases_callout() {
  req absolute-form GET /c -H 'x-check-cluster: upstream' -H 'x-check-path: http://idp.example/jwks'
  req origin-form GET /c -H 'x-check-cluster: upstream' -H 'x-check-path: /jwks?kid=1'
}

# body: drops content-length both ways, upper-cases the whole request body (buffering it until
# end of stream) and appends "-- seen by wasm: <n> bytes" to the whole response body. The upstream
# answers with the request body alone (x-echo-reply: body): its usual listing shows the headers
# each proxy adds, which would make the note count different bytes behind each proxy.
cases_body() {
  req chunked POST /upper -H 'x-echo-reply: body' -H 'Transfer-Encoding: chunked' --data-binary @"$WORK/small.txt"
  req content-length POST /upper -H 'x-echo-reply: body' --data-binary @"$WORK/small.txt"
  req large-chunked POST /upper -H 'x-echo-reply: body' -H 'Transfer-Encoding: chunked' --data-binary @"$WORK/large.txt"
  req empty-response GET /empty -H 'x-echo-reply: body'
  req chunked-response GET /pieces -H 'x-echo-size: 600' -H 'x-echo-chunks: 3'
  # Past the 1 MiB a filter may buffer (Envoy's per_connection_buffer_limit_bytes, Sluice's
  # max_body_buffer): a request gets a 413; a response whose headers already left is reset.
  req too-large-request POST /upper -H 'x-echo-reply: body' -H 'Transfer-Encoding: chunked' --data-binary @"$WORK/2mib.txt"
  req too-large-response GET /big -H 'x-echo-size: 2097152'
}

# hostile, fail closed: /panic traps (Rust panic), /bad-pointers hands the host pointers outside
# its memory and sets x-log-status / x-map-status to the statuses it got back (6,
# INVALID_MEMORY_ACCESS, in Envoy). /bad-pointers goes before /panic: after a trap Envoy fails
# every request of that VM.
cases_hostile() {
  req plain GET /plain
  req bad-pointers GET /bad-pointers
  req panic GET /panic
  req after-panic GET /after-panic
}

# hostile, fail open: the filter is skipped for the trapping request and, in Envoy, from then on.
cases_hostile_open() {
  req panic GET /panic
  req bad-pointers-after-panic GET /bad-pointers
}

cases_hostile_open_legacy() { cases_hostile_open; }

# hostile, fail closed: /hog allocates 512MiB. (/loop, which spins forever, is not sent: Envoy has
# no per-callback CPU limit, so it would spin its only worker until killed.)
cases_hostile_memory() {
  req hog GET /hog
  req after-hog GET /after-hog
}

# pauser: every request bumps a shared-data counter (x-hits) and enqueues an event whose
# dequeue bumps another (x-dequeued, on the response); /pause is held until the next 20 ms tick
# resumes it.
cases_pauser() {
  req first GET /first
  req pause GET /pause
  req pause-with-body POST /pause --data-binary @"$WORK/small.txt"
  req after-pause GET /after
}

# bench: adds x-bench-request: 1 to the request and x-bench-headers: <request headers it saw>
# to the response.
cases_bench() {
  req get GET /bench
}

# The standard ratelimit filter (filters/ratelimit), 2 a minute per x-user: the third request
# of one user gets 429 with Retry-After: 30; another user and a request without the header
# pass.
cases_ratelimit() {
  req ann-1 GET / -H 'x-user: ann'
  req ann-2 GET / -H 'x-user: ann'
  req ann-3 GET / -H 'x-user: ann'
  req bob GET / -H 'x-user: bob'
  req no-key GET /
}

# The standard authz filter (filters/authz) with benches/authz_diff/config.json: a deny rule,
# an open path, an admin path that needs a JWT with role=admin, and an API path that takes a
# JWT or an API key. Tokens from benches/authz_diff/tokens.txt.
cases_authz() {
  local rs_good es_good rs_expired tampered
  rs_good=$(authz_token RS_GOOD)
  es_good=$(authz_token ES_GOOD)
  rs_expired=$(authz_token RS_EXPIRED)
  tampered=$(authz_token TAMPERED)
  req health GET /health
  req deny-rule GET /admin/internal -H "authorization: Bearer $rs_good"
  req admin-rs256 GET /admin/users -H "authorization: Bearer $rs_good"
  req admin-not-admin GET /admin/users -H "authorization: Bearer $es_good"
  req admin-no-token GET /admin/users
  req admin-expired GET /admin/users -H "authorization: Bearer $rs_expired"
  req admin-tampered GET /admin/users -H "authorization: Bearer $tampered"
  req api-key GET /api/x -H 'x-api-key: k-123'
  req api-es256 GET /api/x -H "authorization: Bearer $es_good"
  req api-nothing GET /api/x
  req no-rule GET /elsewhere
  req spoofed-principal GET /health -H 'x-authz-principal: root'
}

# grpc: gRPC calls and streams to benches/grpc_upstream.py from the request path; the filter
# writes what it heard into request headers the echo upstream shows (x-grpc-reply,
# x-grpc-stream-log: every stream callback in order, with its metadata names and the close's
# status and message). See the fixture's doc comment for the x-grpc-* headers.
cases_grpc() {
  req probe GET /grpc -H 'x-grpc-probe: 1'
  req unary GET /grpc
  req unary-unimplemented GET /grpc -H 'x-grpc-method: Nope'
  req unary-unreachable GET /grpc -H 'x-grpc-cluster: dead'
  req unary-unknown-cluster GET /grpc -H 'x-grpc-cluster: nope'
  req unary-cancelled GET /grpc -H 'x-grpc-cancel: 1'
  req stream GET /grpc -H 'x-grpc-stream: a,b,c'
  req stream-refused GET /grpc -H 'x-grpc-stream: a' -H 'x-grpc-method: Refuse'
  req stream-unimplemented GET /grpc -H 'x-grpc-stream: a' -H 'x-grpc-method: Nope'
  req stream-unreachable GET /grpc -H 'x-grpc-stream: a' -H 'x-grpc-cluster: dead'
  req stream-unknown-cluster GET /grpc -H 'x-grpc-stream: a' -H 'x-grpc-cluster: nope'
  req stream-cancelled GET /grpc -H 'x-grpc-stream: a,b' -H 'x-grpc-cancel: 1'
  req stream-after-cancel GET /grpc -H 'x-grpc-stream: z'
}

# cpp: the C++ SDK module proxy/tests/fixtures-cpp/cpp_tag.wasm (see its source): headers both
# ways, the plugin_name property, a shared-data counter, a note on response bodies under /note
# (whose size must not depend on the headers each proxy adds), and /deny answered with 403 and
# gRPC status 7.
cases_cpp() {
  req plain GET /hello
  req second GET /again
  req note-post POST /note -H 'x-echo-reply: body' --data-binary @"$WORK/small.txt"
  req note-chunked-response GET /note/chunks -H 'x-echo-size: 3000' -H 'x-echo-chunks: 3'
  req deny GET /deny
  req deny-grpc POST /deny -H 'content-type: application/grpc' --data-binary @"$WORK/small.txt"
}

# assemblyscript: the AssemblyScript SDK module proxy/tests/fixtures-assemblyscript/as_tag.wasm:
# headers both ways and /deny answered with 403 and gRPC status 2.
cases_assemblyscript() {
  req plain GET /hello
  req deny GET /deny
  req deny-grpc POST /deny -H 'content-type: application/grpc' --data-binary @"$WORK/small.txt"
}

# go: the Go SDK module proxy/tests/fixtures-go/go_tag.wasm (upstream Go's wasip1 reactor; see
# main.go there): the filter does what cpp_tag does, so it gets the cpp cases (its note goes
# through the SDK's append).
cases_go() { cases_cpp; }

authz_token() { awk -v name="$1" '$1 == name { print $2 }' "$BENCHES/authz_diff/tokens.txt"; }

# The standard metrics filter (filters/metrics) counts and passes everything through as it is.
cases_metrics() {
  req ok GET /ok
  req not-found GET /missing -H 'x-echo-status: 404'
}

# === requests ===

# The echo upstream's request count, asked directly.
upstream_count() {
  curl -fsS --max-time "$CURL_TIMEOUT" "http://$HOST:$ECHO_PORT/__echo/count" ||
    die "the echo upstream did not answer"
}

# One case: sends METHOD PATH with the extra curl args to the proxy under test over HTTP/1.1,
# and writes the normalized answer (with how many requests reached the upstream) to CUR_DIR.
# A curl failure (reset, timeout) is part of the result, not an error of this script.
req() {
  local name=$1 method=$2 path=$3
  shift 3
  local raw before after status=0 file
  CASE_NO=$((CASE_NO + 1))
  file=$(printf '%s/%02d-%s' "$CUR_DIR" "$CASE_NO" "$name")
  raw="$file.raw"
  before=$(upstream_count)
  # HEAD: -I, or curl waits for the body the length announces.
  local how=(-X "$method")
  [[ $method != HEAD ]] || how=(-I)
  # Expect: off, so no 100-continue round (each proxy answers it itself, not the filter).
  curl -s -i --http1.1 --max-time "$CURL_TIMEOUT" -H "Host: $REQUEST_HOST" -H 'Expect:' \
    "${how[@]}" "$@" -o "$raw" "http://$HOST:$CUR_PORT$path" || status=$?
  [[ -f $raw ]] || : >"$raw"
  after=$(upstream_count)
  local arg shown="$method $path"
  for arg; do
    arg=${arg//"$WORK"\//}
    if [[ $arg == *' '* ]]; then shown+=" '$arg'"; else shown+=" $arg"; fi
  done
  "$PYTHON" "$BENCHES/envoy_diff_normalize.py" "$raw" "$status" "$((after - before))" "$shown" \
    "${KEEP:-}" >"$file.txt"
}

# Request bodies: a small one, one of 260 KiB that arrives in many reads, and one of 2 MiB, past
# what a filter may buffer.
make_bodies() {
  printf 'hello, wasm body! 123\n' >"$WORK/small.txt"
  lines 4096 >"$WORK/large.txt"
  lines 32768 >"$WORK/2mib.txt"
}

# $1 lines of 65 bytes.
lines() {
  awk -v n="$1" 'BEGIN { for (i = 0; i < n; i++) printf "line %05d of the large request body, lower case for the filter.\n", i }'
}

# === servers ===

start_echo() {
  require_free_port "$ECHO_PORT"
  start_bg "$WORK/echo.log" "$PYTHON" "$BENCHES/echo_upstream.py" "$ECHO_PORT"
  wait_port "$ECHO_PORT" "$LAST_PID" "$WORK/echo.log"
}

# The gRPC upstream, needed by the grpc run only; grpcio comes from PyPI unless SKIP_INSTALL=1.
start_grpc_upstream() {
  if ! "$PYTHON" -c 'import grpc' 2>/dev/null; then
    [[ $SKIP_INSTALL != 1 ]] || die "the grpc run needs grpcio (run without SKIP_INSTALL=1)"
    log "installing grpcio (pip), for the gRPC upstream"
    PIP_ROOT_USER_ACTION=ignore "$PYTHON" -m pip install -q --disable-pip-version-check grpcio >&2 ||
      die "pip install grpcio failed"
  fi
  require_free_port "$GRPC_PORT"
  start_bg "$WORK/grpc.log" "$PYTHON" "$BENCHES/grpc_upstream.py" "$GRPC_PORT"
  wait_port "$GRPC_PORT" "$LAST_PID" "$WORK/grpc.log"
}

# The module of a run's fixture: `filter:<name>` is a standard filter (filters/<name>), built
# for wasm32-wasip1 where its tests build it; anything else is a fixture of the e2e tests.
module_path() {
  case $1 in
    filter:*) standard_filter_path "${1#filter:}" ;;
    sdk:cpp_tag) printf '%s\n' "$ROOT/proxy/tests/fixtures-cpp/cpp_tag.wasm" ;;
    sdk:as_tag) printf '%s\n' "$ROOT/proxy/tests/fixtures-assemblyscript/as_tag.wasm" ;;
    sdk:go_tag) printf '%s\n' "$ROOT/proxy/tests/fixtures-go/go_tag.wasm" ;;
    *) wasm_fixture_path "$1" ;;
  esac
}

# Builds the standard filters if a selected run needs one that is missing.
ensure_standard_filters_for() {
  local fixture missing=0
  for fixture; do
    [[ $fixture != filter:* || -f $(module_path "$fixture") ]] || missing=1
  done
  ((missing == 0)) || ensure_standard_filters
}

# Starts proxy $1 (envoy|sluice) for a run: $2 run name, $3 fixture, $4 config (- none),
# $5 fail policy (see ALL_RUNS). Leaves its pid in LAST_PID.
start_proxy() {
  local proxy=$1 run=$2 fixture=$3 config=$4 policy=$5 module conf log root_id=""
  module=$(module_path "$fixture")
  # A module of another SDK registers its root context under its own name.
  [[ $fixture != sdk:* ]] || root_id=${fixture#sdk:}
  fixture=${fixture#filter:}
  fixture=${fixture#sdk:}
  [[ $config != - ]] || config=""
  # @file: the config is that file's text (under benches/).
  [[ $config != @* ]] || config=$(<"$BENCHES/${config#@}")
  conf="$WORK/$proxy-$run.yaml"
  log="$WORK/$proxy-$run.log"
  case $proxy in
    sluice)
      local fail_open=false
      [[ $policy == closed ]] || fail_open=true
      sluice_config "$SLUICE_ADMIN_PORT" "$SLUICE_PORT" "$ECHO_PORT" \
        "[$(sluice_wasm_filter "$fixture" "$module" "$config" "$fail_open" "$root_id")]" \
        "$EXTRA_CLUSTERS" >"$conf"
      require_free_port "$SLUICE_PORT"
      require_free_port "$SLUICE_ADMIN_PORT"
      start_bg "$log" "$SLUICE_BIN" proxy --config "$conf"
      wait_http_200 "http://$HOST:$SLUICE_ADMIN_PORT/ready" "$LAST_PID" "$log"
      CUR_PORT=$SLUICE_PORT
      ;;
    envoy)
      local failure_policy
      case $policy in
        closed) failure_policy=FAIL_CLOSED ;;
        open) failure_policy=FAIL_OPEN ;;
        open-legacy) failure_policy=fail_open ;;
        *) die "unknown fail policy '$policy'" ;;
      esac
      envoy_config "$ENVOY_ADMIN_PORT" "$ENVOY_PORT" "$ECHO_PORT" \
        "$(envoy_wasm_filter "$fixture" "$module" "" "$config" "$failure_policy" "$root_id")" \
        "$EXTRA_CLUSTERS" >"$conf"
      require_free_port "$ENVOY_PORT"
      require_free_port "$ENVOY_ADMIN_PORT"
      # --disable-hot-restart: no shared-memory segment in /dev/shm, so no clash with another
      # envoy and nothing left behind.
      start_bg "$log" "$ENVOY_BIN" -c "$conf" --concurrency 1 --disable-hot-restart --log-level warn
      local pid=$LAST_PID
      wait_http_200 "http://$HOST:$ENVOY_ADMIN_PORT/ready" "$pid" "$log"
      wait_port "$ENVOY_PORT" "$pid" "$log"
      CUR_PORT=$ENVOY_PORT
      ;;
  esac
}

# Runs every case of run $2 through proxy $1, in a fresh proxy process.
run_cases() {
  local proxy=$1 run=$2 fixture config policy pid
  read -r _ fixture config policy <<<"$(run_spec "$run")"
  CUR_DIR="$WORK/out/$proxy/$run"
  mkdir -p "$CUR_DIR"
  start_proxy "$proxy" "$run" "$fixture" "$config" "$policy"
  pid=$LAST_PID
  CASE_NO=0
  "cases_${run//-/_}"
  is_alive "$pid" || log "$proxy exited during run $run (log: $WORK/$proxy-$run.log)"
  stop_pid "$pid"
}

# Prints the ALL_RUNS line of run $1; fails if there is none.
run_spec() {
  local spec name
  for spec in "${ALL_RUNS[@]}"; do
    read -r name _ <<<"$spec"
    [[ $name != "$1" ]] || { printf '%s\n' "$spec"; return 0; }
  done
  return 1
}

# === report ===

# Prints the table, then the diff of every case that differs, and returns 1 if any difference
# was not expected or an expected one did not happen.
report() {
  local run file name key envoy sluice verdict diffs="" same=0 expected=0 unexpected=0
  echo "Normalized away in both (benches/README.md, \"envoy_diff.sh\"): date, server, connection,"
  echo "keep-alive, content-length, transfer-encoding, x-forwarded-for, x-forwarded-proto, x-envoy-*,"
  echo "x-sluice-*, UUIDs in x-request-id, the client port in x-wasm-source, the reason phrase;"
  echo "header names lowercased."
  echo
  echo "| fixture | case | same? |"
  echo "|---|---|---|"
  for run in "${SELECTED[@]}"; do
    for file in "$WORK/out/envoy/$run"/*.txt; do
      name=$(basename "$file" .txt)
      name=${name#*-}
      key="$run/$name"
      envoy=$file
      sluice="$WORK/out/sluice/$run/$(basename "$file")"
      if cmp -s "$envoy" "$sluice"; then
        if [[ -n ${EXPECTED[$key]:-} ]]; then
          verdict="**no: the same, but a difference is expected**"
          unexpected=$((unexpected + 1))
        else
          verdict="yes"
          same=$((same + 1))
        fi
      else
        if [[ -n ${EXPECTED[$key]:-} ]]; then
          verdict="no, as expected"
          expected=$((expected + 1))
          diffs+=$'\n'"### $key: differs as expected"$'\n\n'"${EXPECTED[$key]}"$'\n'
        else
          verdict="**NO**"
          unexpected=$((unexpected + 1))
          diffs+=$'\n'"### $key: UNEXPECTED difference"$'\n'
        fi
        diffs+=$'\n```diff\n'"$(diff -u --label "envoy $ENVOY_VERSION: $key" --label "sluice: $key" \
          "$envoy" "$sluice" || true)"$'\n```\n'
      fi
      echo "| $run | $name | $verdict |"
    done
  done
  echo
  echo "$((same + expected + unexpected)) cases: $same the same, $expected differ as expected, $unexpected unexpected"
  [[ -z $diffs ]] || printf '\n## Differences\n%s' "$diffs"
  ((unexpected == 0))
}

versions() {
  log "envoy: $(envoy_version_of "$ENVOY_BIN" || true) ($ENVOY_BIN)"
  log "sluice: $(sluice_build)"
}

# === main ===

SELECTED=()

select_runs() {
  local spec name
  for spec in "${ALL_RUNS[@]}"; do
    read -r name _ <<<"$spec"
    if [[ -z $RUNS || " $RUNS " == *" $name "* ]]; then SELECTED+=("$name"); fi
  done
  for name in $RUNS; do
    run_spec "$name" >/dev/null || { log "unknown run '$name'"; exit 2; }
  done
}

# Sluice is never built here: it takes minutes and both cores. Build it with
# `cargo build --release -p sluice` or point SLUICE_BIN at a binary.
resolve_sluice_bin() {
  [[ -n $SLUICE_BIN ]] || SLUICE_BIN="$(cargo_target_dir)/release/sluice"
  [[ -x $SLUICE_BIN ]] || die "no sluice binary at $SLUICE_BIN: run cargo build --release -p sluice, or set SLUICE_BIN"
}

main() {
  select_runs
  if [[ $SKIP_INSTALL != 1 ]]; then
    command -v curl >/dev/null || apt_install curl
    install_envoy
  fi
  local tool
  for tool in curl diff cmp "$PYTHON"; do command -v "$tool" >/dev/null || die "$tool not found"; done
  resolve_envoy
  resolve_sluice_bin
  local run fixture fixtures=()
  for run in "${SELECTED[@]}"; do
    read -r _ fixture _ <<<"$(run_spec "$run")"
    fixtures+=("$fixture")
  done
  local plain=() fixture_name
  for fixture_name in "${fixtures[@]}"; do
    [[ $fixture_name == filter:* || $fixture_name == sdk:* ]] || plain+=("$fixture_name")
  done
  ((${#plain[@]} == 0)) || ensure_wasm_fixtures "${plain[@]}"
  ensure_standard_filters_for "${fixtures[@]}"
  versions

  WORK=$(mktemp -d "${TMPDIR:-/tmp}/sluice-envoy-diff.XXXXXX")
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  make_bodies
  start_echo
  [[ " ${SELECTED[*]} " != *" grpc "* ]] || start_grpc_upstream
  local proxy
  for proxy in envoy sluice; do
    for run in "${SELECTED[@]}"; do
      log "$proxy: $run"
      run_cases "$proxy" "$run"
    done
  done
  echo
  report
}

main "$@"
