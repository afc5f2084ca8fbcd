#!/bin/sh
# Math-Verify (Hugging Face's LaTeX-aware answer checker) as a reasonrl reward verifier:
#   [reward]
#   kind = "command"
#   command = "scripts/verifiers/math-verify.sh"
# On first use it makes its own venv under the user cache from the hash-pinned math-verify.txt
# (pip's output goes to stderr, which reasonrl keeps in RUN/reward-RANK.log).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
pins=$(sha256sum "$here/math-verify.txt" | cut -c1-12)
venv="${XDG_CACHE_HOME:-$HOME/.cache}/reasonrl/venvs/math-verify-$pins"
if [ ! -x "$venv/bin/python" ]; then
  mkdir -p "$(dirname "$venv")"
  tmp="$venv.tmp.$$"
  python3 -m venv "$tmp" >&2
  "$tmp/bin/python" -m pip install --quiet --require-hashes --no-deps -r "$here/math-verify.txt" >&2
  mv "$tmp" "$venv" 2>/dev/null || rm -rf "$tmp" # another process made it first
fi
exec "$venv/bin/python" "$here/math_verify.py" "$@"
