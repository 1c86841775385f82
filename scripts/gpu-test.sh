#!/usr/bin/env bash
# Runs every GPU test on a machine with a CUDA GPU: the test binaries whose names contain "cuda_"
# (tests/**/cuda_*_test.cc; they skip, not fail, where there is no GPU, which is how CI runs them).
# It fails if there is no GPU, so a GPU run that silently skipped everything cannot pass.
#
# usage: bash scripts/gpu-test.sh [DIR]
#   DIR: a build tree (default: build) or a folder of test binaries copied to the GPU machine
#        with the shared libraries they need (set LD_LIBRARY_PATH to find them).
set -euo pipefail
dir=${1:-build}
if ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu-test: no GPU visible (nvidia-smi -L failed); GPU tests need one" >&2
  exit 1
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
mapfile -t tests < <(find "$dir" -type f -perm -u+x -name '*cuda_*_test' | sort)
if ((${#tests[@]} == 0)); then
  echo "gpu-test: no *cuda_*_test binaries under $dir (build with nvcc on PATH)" >&2
  exit 1
fi
failed=()
for t in "${tests[@]}"; do
  echo "== $(basename "$t")"
  # A skip would mean the binary saw no GPU although nvidia-smi did: count it as a failure.
  if ! out=$("$t" --gtest_brief=1 2>&1); then failed+=("$(basename "$t")"); fi
  echo "$out" | tail -n 3
  if grep -q "SKIPPED" <<<"$out"; then failed+=("$(basename "$t") (skipped)"); fi
done
echo "gpu-test: ${#tests[@]} binaries, ${#failed[@]} failed${failed:+: ${failed[*]}}"
((${#failed[@]} == 0))
