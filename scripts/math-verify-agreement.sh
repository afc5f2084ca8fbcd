#!/usr/bin/env bash
# Our answer checker against Math-Verify's own test cases: agreement per category and per scope,
# with false accepts (graded correct where Math-Verify says wrong) and false rejects.
#
#   scripts/math-verify-agreement.sh              # the committed cases (tests/fixtures/math-verify)
#   scripts/math-verify-agreement.sh CHECKOUT     # cases read afresh from a Math-Verify checkout
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cases=tests/fixtures/math-verify/cases.jsonl
if [[ $# -gt 0 ]]; then
    cases=$(mktemp --suffix=.jsonl)
    trap 'rm -f "$cases"' EXIT
    python3 scripts/math_verify_cases.py "$1" >"$cases"
fi
cargo build --release --quiet
for by in category scope; do
    echo "By $by:"
    target/release/reasonrl grade "$cases" --by "$by" --expect expected >/dev/null
    echo
done
