#!/usr/bin/env bash
# Installs the CUDA 13 and NCCL headers that c10d's ProcessGroupNCCL.hpp includes into
# .libtorch/cuda/include, for `--features cuda` builds of csrc/dist.cpp (build.rs looks there, or
# in REASONRL_CUDA_INCLUDE). They come from the PyPI wheels torch 2.11.0 itself depends on, at the
# versions it was built with (cuda-toolkit 13.0.2, nvidia-nccl-cu13 2.28.9): a different NCCL
# could change the layout of ProcessGroupNCCL's options. Only headers are kept; the libraries are
# the GPU machine's own. One-time ~1 GB download (cached); returns at once when done.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.libtorch/cuda/include"
[ -f "$dest/nccl.h" ] && [ -f "$dest/nv/target" ] && exit 0
"$root/scripts/setup-libtorch.sh"
echo "setting up CUDA and NCCL headers in $dest (one time, ~1 GB download)" >&2
wheels="${REASONRL_WHEEL_CACHE:-$HOME/.cache/reasonrl/wheels}"
mkdir -p "$wheels"
cat >"$wheels/cuda-headers.txt" <<'REQ'
nvidia-cuda-runtime==13.0.96 --hash=sha256:7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548
nvidia-cuda-cccl==13.0.85 --hash=sha256:e0da7ad981f3a8aff08241b5bfc1af868742a63e2762f53a5171c492ef242649
nvidia-cuda-crt==13.0.88 --hash=sha256:2c8043c7c9e02492716426e9919fc78d2c5b3b2a7a768a88e952676b08aa55a4
nvidia-cublas==13.1.0.3 --hash=sha256:ee8722c1f0145ab246bccb9e452153b5e0515fd094c3678df50b2a0888b8b171
nvidia-cusparse==12.6.3.3 --hash=sha256:2b3c89c88d01ee0e477cb7f82ef60a11a4bcd57b6b87c33f789350b59759360b
nvidia-cusolver==12.0.4.66 --hash=sha256:0a759da5dea5c0ea10fd307de75cdeb59e7ea4fcb8add0924859b944babf1112
nvidia-nccl-cu13==2.28.9 --hash=sha256:e4553a30f34195f3fa1da02a6da3d6337d28f2003943aa0a3d247bbc25fefc42
REQ
python3 -m pip download --quiet --no-deps --only-binary=:all: --implementation cp \
  --python-version 3.12 --abi cp312 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_25_x86_64 --platform manylinux_2_18_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --require-hashes -r "$wheels/cuda-headers.txt" -d "$wheels"
tmp="$(mktemp -d "$root/.libtorch/cuda-tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
python3 - "$wheels" "$tmp" <<'PY'
import glob, os, sys, zipfile
wheels, out = sys.argv[1], sys.argv[2]
for pattern in ["nvidia_cuda_runtime-13.0.96-*", "nvidia_cuda_cccl-13.0.85-*",
                "nvidia_cuda_crt-13.0.88-*", "nvidia_cublas-13.1.0.3-*",
                "nvidia_cusparse-12.6.3.3-*", "nvidia_cusolver-12.0.4.66-*", "nvidia_nccl_cu13-2.28.9-*"]:
    [path] = glob.glob(os.path.join(wheels, pattern + ".whl"))
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            # nvidia/cu13/include/... and nvidia/nccl/include/...: one flat include folder.
            parts = name.split("/")
            if len(parts) > 3 and parts[2] == "include" and not name.endswith("/"):
                target = os.path.join(out, *parts[3:])
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with z.open(name) as src, open(target, "wb") as dst:
                    dst.write(src.read())
PY
ls "$tmp/nccl.h" "$tmp/nv/target" "$tmp/cuda_runtime_api.h" "$tmp/cublas_v2.h" "$tmp/cusparse.h" "$tmp/cusolverDn.h" >/dev/null
rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
mv "$tmp" "$dest"
trap - EXIT
echo "CUDA and NCCL headers ready" >&2
