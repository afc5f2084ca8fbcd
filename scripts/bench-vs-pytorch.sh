#!/usr/bin/env bash
# reasonrl against PyTorch eager and transformers `generate`, side by side in one run on the same
# model folder, both sides in f32 (reasonrl's bf16 sampling is measured apart): training step
# (fwd+bwd+AdamW), sampling at batch 16 and 64 with every row running to the end, and the
# realistic eval workload (K samples of real prompts, rows stopping at their answer) on the same
# prompts. Prints each pair with its ratio and the achieved GFLOP/s as a share of this machine's
# measured f32 matmul peak. A benchmark: not a test, not part of CI.
#   scripts/bench-vs-pytorch.sh [MODEL_DIR]     default: the small preset with random weights
# Environment: PROBLEMS (256), K (16), TASK (builtin:1), PROMPT (plain), THREADS (nproc).
# SmolLM2-135M: scripts/fetch-smollm2.sh --convert DIR, then
#   PROBLEMS=32 TASK=gsm8k:../shared/data/gsm8k PROMPT=chat scripts/bench-vs-pytorch.sh DIR
# The reference environment (PyTorch 2.11.0 + transformers from PyPI, ~3 GB) is made once in
# ~/.cache/reasonrl/bench-venv (REASONRL_BENCH_VENV moves it).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/reasonrl"
venv="${REASONRL_BENCH_VENV:-$cache/bench-venv}"
if ! "$venv/bin/python" -c 'import torch, transformers; assert torch.__version__.startswith("2.11.0")' 2>/dev/null; then
  echo "setting up the reference environment in $venv (one time)" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet torch==2.11.0 transformers==4.57.1
fi
"$root/scripts/setup-libtorch.sh"
(cd "$root" && cargo build --locked --release --quiet)
bin="$root/target/release/reasonrl"
threads="${THREADS:-$(nproc)}"
export OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
model="${1:-}"
if [ -z "$model" ]; then
  model="$work/small"
  "$bin" model init --preset small --task builtin --out "$model" >/dev/null
fi
problems="${PROBLEMS:-256}" k="${K:-16}" task="${TASK:-builtin:1}" prompt="${PROMPT:-plain}"
"$bin" bench --model "$model" --sampling-dtype f32 --sample-batches 16,64 --new-tokens 128 --json "$work/fixed.json"
"$bin" bench --model "$model" --sampling-dtype f32 --workload eval --task "$task" --prompt "$prompt" --problems "$problems" -k "$k" \
  --temperature 0.7 --max-new-tokens 160 --batch-size 64 --json "$work/workload.json" --prompts-out "$work/prompts.jsonl"
"$venv/bin/python" "$root/scripts/bench_pytorch.py" "$model" "$work/fixed.json" "$work/workload.json" \
  "$work/prompts.jsonl" -k "$k" --temperature 0.7 --max-new-tokens 160 --batch-size 64
