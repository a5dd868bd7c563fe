#!/usr/bin/env bash
# Runs the fuzz targets with libFuzzer, on the stable toolchain: the coverage instrumentation
# is the set of -C flags cargo-fuzz passes, so no nightly is needed (only without a sanitizer).
#
#   bash proxy/fuzz/run.sh                       # every target, 60 s each
#   FUZZ_SECONDS=600 bash proxy/fuzz/run.sh headers
#
# Targets: pairs (the pairs wire format guests hand the host), headers (header maps to the
# pairs a filter edits and back), hostcalls (every host call, made by a real guest in a real
# VM with arbitrary pointers, lengths, types and tokens). Corpora grow in
# proxy/fuzz/corpus/<target>, and a crashing input is saved in proxy/fuzz/artifacts/<target>/
# with the command that replays it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
targets=("$@")
((${#targets[@]})) || targets=(pairs headers hostcalls)

host=$(rustc -vV | sed -n 's/^host: //p')
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/../../target/fuzz}
# Instrument only what runs in the fuzzer: with --target, RUSTFLAGS skip build scripts and
# proc macros, which could not link against the coverage callbacks.
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
cargo build --release --target "$host" --bins
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target" "artifacts/$target"
  echo "== $target: ${FUZZ_SECONDS}s"
  "$CARGO_TARGET_DIR/$host/release/$target" -max_total_time="$FUZZ_SECONDS" \
    -artifact_prefix="artifacts/$target/" "corpus/$target"
done
