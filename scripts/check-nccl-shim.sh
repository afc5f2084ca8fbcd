#!/usr/bin/env bash
# Compiles csrc/dist.cpp's NCCL branch (types and syntax, no object code, no GPU) with the flags
# build.rs gives it under `--features cuda`, so CI catches a broken NCCL path in a minute rather
# than a full cuda build's several.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup-cuda-headers.sh
t=.libtorch/torch
g++ -std=c++17 -fsyntax-only -w -D_GLIBCXX_USE_CXX11_ABI=1 -DUSE_C10D_GLOO -DGLOG_USE_GLOG_EXPORT \
  -DUSE_C10D_NCCL -DUSE_CUDA -DREASONRL_NCCL \
  -I"$t/include" -I"$t/include/torch/csrc/api/include" -I.libtorch/gloo/include -I.libtorch/cuda/include \
  csrc/dist.cpp
