#!/usr/bin/env bash
# Rebuilds as_tag.wasm from assembly/index.ts with the AssemblyScript Proxy-Wasm SDK
# (@solo-io/proxy-runtime) from npm. The built module is committed, so the tests need no
# Node.js; run this after changing the source (needs node and npm).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
npm install --no-audit --no-fund --silent
npm run --silent build
echo "built $(pwd)/as_tag.wasm ($(wc -c <as_tag.wasm) bytes, sha256 $(sha256sum as_tag.wasm | cut -c1-16)...)"
