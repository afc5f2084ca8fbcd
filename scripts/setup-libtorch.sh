#!/usr/bin/env bash
# Installs libtorch 2.11.0 (CPU + CUDA 13 libraries) from the PyPI torch wheel into .libtorch/,
# the folder .cargo/config.toml points LIBTORCH at. Idempotent: returns at once when done.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.libtorch"

# The gloo headers c10d's ProcessGroupGloo.hpp includes (the wheel ships its library, not them),
# for csrc/dist.cpp: Debian's libgloo-dev, fetched with apt and unpacked here, not installed.
# Only pointers to gloo types appear in the c10d classes we use, so these headers' age does not
# change their layout.
install_gloo_headers() {
  [ -f "$dest/gloo/include/gloo/context.h" ] && return 0
  local deb=libgloo-dev_0.0~git20220518.5b14351-3_amd64.deb
  local sum=80529c9fd8af452faf489e686b94bf87075965c40673803810c4f41634b1e299
  local tmp
  tmp="$(mktemp -d)"
  (cd "$tmp" && { apt-get download -q=2 libgloo-dev=0.0~git20220518.5b14351-3 2>/dev/null ||
    { apt-get update -q=2 && apt-get download -q=2 libgloo-dev=0.0~git20220518.5b14351-3; }; })
  echo "$sum  $tmp/$deb" | sha256sum --check --quiet
  dpkg-deb -x "$tmp/$deb" "$tmp/x"
  mkdir -p "$dest/gloo"
  rm -rf "$dest/gloo/include"
  mv "$tmp/x/usr/include" "$dest/gloo/include"
  rm -rf "$tmp"
}
if [ -f "$dest/torch/build-version" ] && grep -q '^2\.11\.0' "$dest/torch/build-version"; then
  install_gloo_headers
  exit 0
fi
echo "setting up libtorch 2.11.0 in $dest (one time, ~600 MB download)" >&2
wheels="${REASONRL_WHEEL_CACHE:-$HOME/.cache/reasonrl/wheels}"
mkdir -p "$wheels"
cat >"$wheels/requirements.txt" <<'REQ'
torch==2.11.0 --hash=sha256:0f68f4ac6d95d12e896c3b7a912b5871619542ec54d3649cf48cc1edd4dd2756
nvidia-cuda-runtime==13.0.96 --hash=sha256:7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548
nvidia-cuda-cupti==13.0.85 --hash=sha256:4eb01c08e859bf924d222250d2e8f8b8ff6d3db4721288cf35d14252a4d933c8
REQ
python3 -m pip download --quiet --no-deps --only-binary=:all: --implementation cp \
  --python-version 3.12 --abi cp312 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_25_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --require-hashes -r "$wheels/requirements.txt" -d "$wheels"
tmp="$(mktemp -d "$root/.libtorch-tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
python3 - "$wheels" "$tmp" <<'PY'
import glob, os, sys, zipfile
wheels, out = sys.argv[1], sys.argv[2]
def extract(pattern, keep):
    [path] = glob.glob(os.path.join(wheels, pattern))
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            if keep(name) and not name.endswith("/"):
                z.extract(name, out)
                os.chmod(os.path.join(out, name), 0o755 if ".so" in name else 0o644)
extract("torch-2.11.0-*.whl", lambda n: n.startswith(("torch/lib/", "torch/include/")) or n == "torch/version.py")
extract("nvidia_cuda_runtime-*.whl", lambda n: "/lib/libcudart.so" in n)
extract("nvidia_cuda_cupti-*.whl", lambda n: "/lib/libcupti.so" in n)
ns = {}
exec(open(os.path.join(out, "torch/version.py")).read(), ns)
open(os.path.join(out, "torch/build-version"), "w").write(ns["__version__"] + "\n")
PY
ls "$tmp/nvidia/cu13/lib/libcudart.so.13" "$tmp/nvidia/cu13/lib/libcupti.so.13" >/dev/null
rm -rf "$dest"
mv "$tmp" "$dest"
trap - EXIT
echo "libtorch $(cat "$dest/torch/build-version") ready" >&2
install_gloo_headers
