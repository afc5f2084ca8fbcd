#!/usr/bin/env bash
# The main job: installs libtorch if needed, builds reasonrl and runs the compact study
# (configs/study.toml) into runs/study: pretraining, SFT, an ORM, EI, PPO, GRPO and RCRL on the
# built-in task, then runs/study/report.md with the table, plots and the paper's findings.
# Rerunning continues where a stopped run left off; delete runs/study to start over.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup-libtorch.sh
cargo build --locked --release
start=$(date +%s)
status=0
target/release/reasonrl study --config configs/study.toml "$@" || status=$?
echo "wall-clock: $(( $(date +%s) - start )) s"
exit $status
