#!/usr/bin/env bash
# One GPU check in two halves.
#   scripts/gpu-check.sh prepare   (here, no GPU needed) builds reasonrl, the `logits` example and
#                                  the library's tests with --features cuda into .gpu/bin (the
#                                  CUDA and NCCL headers first), and saves small models with
#                                  their CPU logits into .gpu/models.
#                                  It also fetches SmolLM2-135M-Instruct's GGUF and splits it in two
#                                  parts (.gpu/smollm2/part-1, part-2) and writes a GSM8K subset.
#   scripts/gpu-check.sh run       (on an NVIDIA machine with PyTorch 2.11.0 + transformers; carry
#                                  .gpu) checks our folders load in transformers with the same
#                                  logits, transformers' folders load here with the same logits
#                                  on CPU and GPU, runs the NCCL checks (a world of one), then
#                                  benchmarks and samples on the GPU.
#   scripts/gpu-check.sh smollm2   (on the NVIDIA machine, at most ~8 minutes) joins and converts
#                                  the GGUF, checks forward and backward on the GPU against the CPU
#                                  (f32 and bf16), measures training and sampling tokens/s, then
#                                  evaluates GSM8K (greedy, chat), runs SFT and one EI round on a
#                                  GSM8K subset and evaluates again.
# Payloads of at most 64 MiB: carry .gpu/bin, .gpu/models and .gpu/data first, then
# .gpu/smollm2/part-1, then .gpu/smollm2/part-2 with the command (a warm machine keeps them).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ids=1,5,9,23,42,7,3,88,13,2,60,31
case "${1:-}" in
prepare)
  set -e
  scripts/setup-libtorch.sh
  scripts/setup-cuda-headers.sh
  cargo build --locked --release --features cuda --target-dir target/cuda --bin reasonrl --example logits \
    --example device_check
  mkdir -p .gpu/bin .gpu/models .gpu/smollm2 .gpu/data
  cp target/cuda/release/reasonrl target/cuda/release/examples/{logits,device_check} .gpu/bin/
  # The library's tests, for the NCCL checks (`--ignored dist::`).
  tests=$(cargo test --locked --release --features cuda --target-dir target/cuda --lib --no-run \
    --message-format=json | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
  cp "$tests" .gpu/bin/lib-tests
  gguf=$(scripts/fetch-smollm2.sh)
  split -n 2 -a 1 --numeric-suffixes=1 "$gguf" .gpu/smollm2/part-
  sha256sum "$gguf" | cut -d' ' -f1 >.gpu/smollm2/sha256
  target/release/reasonrl task make --task gsm8k:../shared/data/gsm8k --out .gpu/data/gsm8k --force
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
  for dtype in f32 bf16; do
    $bin/reasonrl bench --workload eval --presets small --device cuda --dtype "$dtype" --batch-size 256 || status=1
  done
  echo "== NCCL: a world of one moves CUDA tensors (and, without NCCL, stages them through the host)"
  $bin/lib-tests --ignored dist:: || status=1
  echo "== LoRA SFT on CUDA: bf16 base, f32 adapters"
  $bin/reasonrl sft --set model=.gpu/models/small --set task=builtin:1 --set run.device=cuda --set lora.rank=16 \
    --set lora.base_dtype=bf16 --set "run.out_dir=$work" --set train.max_steps=20 --set train.log_every=5 \
    --set eval.problems=20 --set eval.samples_per_prompt=0 --set eval.max_new_tokens=64 && cat "$work/sft/metrics.jsonl" || status=1
  echo "== sampling on CUDA"
  $bin/reasonrl sample --model .gpu/models/small --device cuda --limit 16 -k 4 --temperature 1 \
    --out "$work/samples.jsonl" || status=1
  echo "gpu-check status: $status"
  exit $status
  ;;
smollm2)
  # A dry run on a CPU: DEVICE=cpu TORCH_LIB=.libtorch/torch/lib BIN=target/release STOP_AFTER=check
  # (or PROBLEMS=3 SFT_PROBLEMS=20 EI_QUESTIONS=4 for every step, slowly).
  set -e
  py=${PYTHON:-/opt/torch/.venv/bin/python3}
  torch_lib=${TORCH_LIB:-$($py -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')}
  export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  bin=${BIN:-.gpu/bin}
  work=${WORK:-$(mktemp -d)}
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
  cat .gpu/smollm2/part-1 .gpu/smollm2/part-2 >"$work/smollm2.gguf"
  echo "$(cat .gpu/smollm2/sha256)  $work/smollm2.gguf" | sha256sum -c --quiet -
  $bin/reasonrl model convert-gguf "$work/smollm2.gguf" "$work/smollm2" --force
  device=${DEVICE:-cuda}
  echo "== forward and backward on $device vs CPU"
  $bin/device_check "$work/smollm2" "$device"
  [ "${STOP_AFTER:-}" = check ] && exit 0 # a quick dry run of the plumbing
  echo "== throughput"
  $bin/reasonrl bench --model "$work/smollm2" --device "$device" --dtype f32 --train-steps 5 --sample-batches 64,256
  task="gsm8k:.gpu/data/gsm8k"
  prompt=(--set prompt.format=chat --set prompt.shots=0 --set "task=$task")
  chat=("${prompt[@]}" --set run.device=$device)
  gsm8k_eval() { # model out
    $bin/reasonrl eval --config configs/eval-gsm8k.toml --set "model=$1" --set "out=$2" "${prompt[@]}" \
      --set "problems=${PROBLEMS:-300}" --set samples_per_prompt=0 \
      --set max_new_tokens=256 --set batch_size=300 --set "device=$device" --force | grep -E "maj@1|Problems"
  }
  echo "== GSM8K test, before"
  gsm8k_eval "$work/smollm2" "$work/eval-before"
  echo "== SFT on GSM8K train (chat format)"
  $bin/reasonrl sft --config configs/sft-gsm8k.toml --set "model=$work/smollm2" "${chat[@]}" \
    --set "run.out_dir=$work" --set "train_problems=${SFT_PROBLEMS:-3000}" --set train.eval_every=0 \
    --set eval.problems=100 --set eval.batch_size=100 --force | tail -1
  echo "== one EI round from the SFT model"
  $bin/reasonrl ei --config configs/ei.toml --set "model=$work/sft-gsm8k/final" "${chat[@]}" \
    --set "run.out_dir=$work" --set rounds=1 --set "questions=${EI_QUESTIONS:-1000}" \
    --set sampling.max_new_tokens=256 --set sampling.batch_size=512 --set train.lr=2e-5 \
    --set train.max_seq_len=768 --set eval.problems=100 --set eval.samples_per_prompt=0 --set eval.batch_size=100 --force | tail -1
  echo "== GSM8K test, after SFT and after EI"
  gsm8k_eval "$work/sft-gsm8k/final" "$work/eval-sft"
  gsm8k_eval "$work/ei/final" "$work/eval-ei"
  ;;
*)
  echo "usage: scripts/gpu-check.sh prepare|run|smollm2" >&2
  exit 2
  ;;
esac
