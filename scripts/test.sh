#!/usr/bin/env bash
# The whole test suite: installs libtorch if needed, then builds and runs every test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup-libtorch.sh
cargo test --locked "$@"
