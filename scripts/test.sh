#!/usr/bin/env bash
# Sets up a fresh Debian 12, builds everything and runs all tests: ctest (unit, integration, GPU
# tests that skip without a GPU) and the Python end-to-end tests. Usage: bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[[ ${KBITD_SKIP_SETUP:-0} == 1 ]] || bash scripts/setup.sh

# The tests' Python: the virtual environment scripts/setup.sh fills (python3 if there is none).
# Its bin folder goes first on PATH too, so the programs pip installed there (hadolint) are found
# by anything the tests start, not only by tests/required_tools.py, which looks there first.
PYTHON=${KBITD_VENV:-.venv}/bin/python
if [[ -x $PYTHON ]]; then
  PATH="$(cd "$(dirname "$PYTHON")" && pwd):$PATH"
  export PATH
else
  PYTHON=python3
fi

# Every program the tests run resolves from what scripts/setup.sh installed (fails, never skips).
"$PYTHON" -m pytest -q tests/scripts

# deploy/ (Helm chart, KServe, Prometheus rules, Grafana dashboard, Dockerfile) checked with the
# real tools: Helm (embedded), kubernetes-validate, promtool, hadolint. Needs no build; ~20 s.
"$PYTHON" -m pytest -q tests/deploy

BUILD_DIR=${BUILD_DIR:-build}
JOBS=${JOBS:-$(nproc)}
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo ${CMAKE_ARGS:-}
cmake --build "$BUILD_DIR" -j "$JOBS"
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$JOBS" --timeout 600

if compgen -G "tests/e2e/test_*.py" >/dev/null; then
  KBITD_BUILD_DIR="$PWD/$BUILD_DIR" "$PYTHON" -m pytest -q tests/e2e
fi

# Bounded libFuzzer run of the safetensors header parser (clang + libclang-rt-14-dev from
# setup.sh), in its own clang build tree. KBITD_FUZZ_SECONDS sets the length (default 60);
# KBITD_SKIP_FUZZ=1 leaves it out. A missing clang fails the CMake step rather than skipping.
if [[ ${KBITD_SKIP_FUZZ:-0} != 1 ]]; then
  CC=clang CXX=clang++ cmake -S . -B "$BUILD_DIR-fuzz" -DKBITD_FUZZ=ON -DKBITD_CUDA=OFF \
    -DKBITD_FUZZ_SECONDS="${KBITD_FUZZ_SECONDS:-60}" >/dev/null
  cmake --build "$BUILD_DIR-fuzz" -j "$JOBS" --target safetensors_fuzz
  ctest --test-dir "$BUILD_DIR-fuzz" -L fuzz --output-on-failure
fi
