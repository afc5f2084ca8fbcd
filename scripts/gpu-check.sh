#!/usr/bin/env bash
# One GPU check in two halves.
#   scripts/gpu-check.sh prepare   (here, no GPU needed) builds reasonrl and the `logits` example
#                                  with --features cuda into .gpu/bin, and saves small models with
#                                  their CPU logits into .gpu/models.
#   scripts/gpu-check.sh run       (on an NVIDIA machine with PyTorch 2.11.0 + transformers; carry
#                                  .gpu) checks our folders load in transformers with the same
#                                  logits, transformers' folders load here with the same logits
#                                  on CPU and GPU, then benchmarks and samples on the GPU.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ids=1,5,9,23,42,7,3,88,13,2,60,31
case "${1:-}" in
prepare)
  set -e
  scripts/setup-libtorch.sh
  cargo build --locked --release --features cuda --target-dir target/cuda --bin reasonrl --example logits
  mkdir -p .gpu/bin .gpu/models
  cp target/cuda/release/reasonrl target/cuda/release/examples/logits .gpu/bin/
  cargo build --locked --release --example logits
  for preset in tiny small; do
    target/release/reasonrl model init --preset "$preset" --out ".gpu/models/$preset" --force
    target/release/examples/logits ".gpu/models/$preset" cpu "$ids" >".gpu/models/$preset.logits.json"
  done
  du -sh .gpu
  ;;
run)
  py=${PYTHON:-/opt/torch/.venv/bin/python3}
  torch_lib=$($py -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
  export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  bin=.gpu/bin
  work=$(mktemp -d)
  status=0
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  echo "== our folders in transformers"
  for preset in tiny small; do
    $py scripts/hf_compat.py ours ".gpu/models/$preset" ".gpu/models/$preset.logits.json" || status=1
  done
  echo "== transformers' folders here (CPU and CUDA)"
  for arch in llama qwen2; do
    $py scripts/hf_compat.py make "$work/$arch" "$arch" || status=1
    for device in cpu cuda; do
      $bin/logits "$work/$arch" "$device" "$ids" >"$work/$arch.$device.json" &&
        $py scripts/hf_compat.py theirs "$work/$arch" "$work/$arch.$device.json" || status=1
    done
  done
  echo "== bf16 on CUDA vs f32 on CPU"
  $bin/logits .gpu/models/small cuda "$ids" bf16 >"$work/bf16.json" &&
    $py - "$work/bf16.json" .gpu/models/small.logits.json <<'PY' || status=1
import json, sys
a, b = (json.load(open(p))["logits"] for p in sys.argv[1:3])
diff = max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))
scale = max(abs(y) for rb in b for y in rb)
print(f"bf16 cuda vs f32 cpu: max abs logit difference {diff:.3e} (logit scale {scale:.2f}) -> {'OK' if diff < 0.05 * max(scale, 1) else 'MISMATCH'}")
sys.exit(0 if diff < 0.05 * max(scale, 1) else 1)
PY
  echo "== bench"
  $bin/reasonrl bench --device cuda --dtype f32 --sample-batches 16,64,256 || status=1
  $bin/reasonrl bench --device cuda --dtype bf16 --sample-batches 16,64,256 || status=1
  echo "== sampling on CUDA"
  $bin/reasonrl sample --model .gpu/models/small --device cuda --limit 16 -k 4 --temperature 1 \
    --out "$work/samples.jsonl" || status=1
  echo "gpu-check status: $status"
  exit $status
  ;;
*)
  echo "usage: scripts/gpu-check.sh prepare|run" >&2
  exit 2
  ;;
esac
