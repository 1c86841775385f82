#!/usr/bin/env bash
# Sets up a fresh Debian 12, builds everything and runs all tests: ctest (unit, integration, GPU
# tests that skip without a GPU) and the Python end-to-end tests, then the unit tests again under
# ASan + UBSan and a bounded fuzz run, in a clang tree. Usage: bash scripts/test.sh
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

# One clang tree, $BUILD_DIR-clang: CUDA off, all of kbitd's code built with ASan + UBSan (-O1,
# asserts on) and clang's -Wall -Wextra -Werror. Two runs in it:
# - the unit tests (ctest, all but the fuzz label) again under the sanitizers; the whole tree is
#   built, so clang checks the programs and benchmarks too. KBITD_SKIP_SANITIZERS=1 leaves it out.
# - a bounded libFuzzer run of the safetensors header parser (libclang-rt-14-dev from setup.sh).
#   KBITD_FUZZ_SECONDS sets the length (default 60); KBITD_SKIP_FUZZ=1 leaves it out.
# A missing clang fails the CMake step rather than skipping.
SANITIZE=$([[ ${KBITD_SKIP_SANITIZERS:-0} == 1 ]] && echo 0 || echo 1)
FUZZ=$([[ ${KBITD_SKIP_FUZZ:-0} == 1 ]] && echo 0 || echo 1)
if ((SANITIZE || FUZZ)); then
  CC=clang CXX=clang++ cmake -S . -B "$BUILD_DIR-clang" -DCMAKE_BUILD_TYPE=Debug -DKBITD_CUDA=OFF \
    -DKBITD_SANITIZE=ON -DKBITD_FUZZ=ON -DKBITD_FUZZ_SECONDS="${KBITD_FUZZ_SECONDS:-60}" >/dev/null
  if ((SANITIZE)); then
    cmake --build "$BUILD_DIR-clang" -j "$JOBS"
    UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1} \
      ctest --test-dir "$BUILD_DIR-clang" -LE fuzz --output-on-failure -j "$JOBS" --timeout 600
  else
    cmake --build "$BUILD_DIR-clang" -j "$JOBS" --target safetensors_fuzz
  fi
  if ((FUZZ)); then
    ctest --test-dir "$BUILD_DIR-clang" -L fuzz --output-on-failure
  fi
fi
