#!/usr/bin/env bash
# The main job: installs libtorch if needed, builds reasonrl, and runs the pipeline into runs/main:
# write the built-in task, initialise a small model with a trained tokenizer, sample from it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup-libtorch.sh
cargo build --locked --release
bin=target/release/reasonrl
run=runs/main
mkdir -p "$run"
$bin task make --task builtin:2 --out "$run/task" --force
$bin model init --preset "${PRESET:-small}" --task builtin:2 --out "$run/model" --force
$bin model info "$run/model"
$bin sample --model "$run/model" --task builtin:2 --split test --limit 8 -k 4 --temperature 1.0 \
  --out "$run/samples.jsonl" --force
