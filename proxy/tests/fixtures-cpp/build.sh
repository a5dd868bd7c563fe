#!/usr/bin/env bash
# Rebuilds cpp_tag.wasm from cpp_tag.cc with the C++ Proxy-Wasm SDK and Emscripten. The built
# module is committed, so the tests need neither; run this after changing the source.
#
#   PROXY_WASM_CPP_SDK=/path/to/proxy-wasm-cpp-sdk bash build.sh
#
# Needs em++ (Debian: apt-get install emscripten) and a checkout of
# https://github.com/proxy-wasm/proxy-wasm-cpp-sdk; cpp_tag.wasm was built from its commit
# e5256b0 (no protobuf) with Debian's emscripten 3.1.6. The link options are the SDK
# Makefile's.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
sdk=${PROXY_WASM_CPP_SDK:?set PROXY_WASM_CPP_SDK to a proxy-wasm-cpp-sdk checkout}
em++ -O3 -std=c++17 -I "$sdk" \
  cpp_tag.cc "$sdk/proxy_wasm_intrinsics.cc" \
  --no-entry --js-library "$sdk/proxy_wasm_intrinsics.js" \
  -sSTANDALONE_WASM -sEXPORTED_FUNCTIONS=_malloc -sALLOW_MEMORY_GROWTH=1 \
  -o cpp_tag.wasm
echo "built $(pwd)/cpp_tag.wasm ($(wc -c <cpp_tag.wasm) bytes, sha256 $(sha256sum cpp_tag.wasm | cut -c1-16)...)"
