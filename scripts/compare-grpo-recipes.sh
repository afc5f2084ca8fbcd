#!/usr/bin/env bash
# GRPO, DAPO, Dr. GRPO and GSPO from the main job's SFT start (runs/study: run scripts/main.sh
# first), each with the main job's GRPO settings (16 updates x 32 prompts x 8, seed 0) and its
# preset's recipe, then greedy maj@1 on the 2,000 test problems paired against the start. DAPO's
# dynamic sampling draws more samples per update; dapo-8 runs half the updates to match.
#   scripts/compare-grpo-recipes.sh [OUT]      (default runs/grpo-recipes; prints the table)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${1:-runs/grpo-recipes}"
bin=target/release/reasonrl
base=runs/study/tiny/sft-grpo-sparse-s0/config.toml
start=runs/study/tiny/sft-eval
[ -f "$base" ] && [ -f "$start/records.jsonl" ] || { echo "run scripts/main.sh first ($base, $start)" >&2; exit 1; }
# What each preset changes (configs/dapo.toml, dr-grpo.toml, gspo.toml), on the study's GRPO run.
declare -A recipe=(
  [grpo]=""
  [dapo]="clip_high=0.28 aggregation=token-mean kl_coef=0 overlong_buffer=24 dynamic_sampling=true max_extra_batches=4"
  [dapo-8]="updates=8 clip_high=0.28 aggregation=token-mean kl_coef=0 overlong_buffer=24 dynamic_sampling=true max_extra_batches=4"
  [dr-grpo]="scale_by_std=false aggregation=seq-mean-token-sum-norm kl_coef=0"
  [gspo]="ratio=sequence clip=3e-4 clip_high=4e-4 aggregation=seq-mean-token-mean kl_coef=0"
)
echo "| recipe | samples | greedy maj@1 | vs start (paired) | wall-clock |"
echo "|---|---:|---:|---:|---:|"
for name in grpo dapo dapo-8 dr-grpo gspo; do
  sets=(--set "run.out_dir=$out" --set "run.name=$name" --set eval_every=0 --set save_every=0)
  for kv in ${recipe[$name]}; do sets+=(--set "$kv"); done
  t0=$(date +%s)
  [ -f "$out/$name/final/model.safetensors" ] || "$bin" grpo --config "$base" "${sets[@]}" --force >/dev/null 2>&1
  secs=$(( $(date +%s) - t0 ))
  [ -f "$out/$name-eval/summary.json" ] || "$bin" eval --set "model=$out/$name/final" --set task=builtin:1 \
    --set problems=2000 --set samples_per_prompt=0 --set max_new_tokens=120 --set batch_size=128 \
    --set "baseline=$start" --set "out=$out/$name-eval" --force >/dev/null 2>&1
  python3 - "$out" "$name" "$secs" <<'PY'
import json, sys
out, name, secs = sys.argv[1:]
s = json.load(open(f"{out}/{name}-eval/summary.json"))["maj1"]
m = [json.loads(l) for l in open(f"{out}/{name}/metrics.jsonl")][-1]
row = next(l for l in open(f"{out}/{name}-eval/comparison.md") if l.startswith("| maj@1 (greedy) |"))
diff, ci = [c.strip() for c in row.strip().strip("|").split("|")][1:3]
maj = f"{100 * s['value']:.1f} [{100 * s['lo']:.1f}, {100 * s['hi']:.1f}]"
print(f"| {name} | {int(m['samples_seen'])} | {maj} | {diff.replace(' pts', '')} {ci} | {secs} s |")
PY
done
