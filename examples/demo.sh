#!/usr/bin/env bash
# The README's demo command: installs what building needs (if missing), then runs
# `sluice demo`, a mesh on loopback. Arguments are passed to `sluice demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/install-build-deps
exec cargo run --release -p sluice -- demo "$@"
