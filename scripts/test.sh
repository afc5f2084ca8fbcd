#!/usr/bin/env bash
# The whole test suite: installs libtorch and llama.cpp's server if needed, then builds and runs
# every test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup-libtorch.sh
# llama.cpp's server for the rollout-engine tests (tests/engine.rs), built once into the user cache.
REASONRL_LLAMA_SERVER="$(scripts/setup-llama-server.sh)"
export REASONRL_LLAMA_SERVER
cargo test --locked "$@"
