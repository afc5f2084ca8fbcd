#!/usr/bin/env bash
# The whole test suite: installs libtorch and llama.cpp's server if needed, then builds and runs
# every test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup-libtorch.sh
# The NCCL branch of csrc/dist.cpp only builds under --features cuda: compile it here (types and
# syntax) so it cannot rot unseen on a machine without a GPU.
scripts/check-nccl-shim.sh
# llama.cpp's server for the rollout-engine tests, built once into the user cache, while cargo
# compiles; tests/engine.rs calls the same script, which waits for this build to finish.
scripts/setup-llama-server.sh >/dev/null 2>"${TMPDIR:-/tmp}/reasonrl-llama-server-build.log" &
cargo test --locked "$@"
wait
