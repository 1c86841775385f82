#!/usr/bin/env bash
# Installs everything kbitd needs to build and test on a fresh Debian 12 (run as root, or with sudo
# available). Idempotent. The CUDA toolkit is optional: with nvcc on PATH the CUDA backend is built.
# `bash scripts/setup.sh --print-packages` prints the Debian packages it installs and exits
# (tests/scripts/test_setup.py checks that every program the tests run comes from one of them or
# from the virtual environment).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi

# What building kbitd needs. The container image's build stage (Dockerfile) runs this script with
# KBITD_SETUP_PROFILE=build, so the image is built from the same packages as CI.
BUILD_PACKAGES=(
  build-essential cmake pkg-config git
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  libabsl-dev libyaml-cpp-dev prometheus-cpp-dev libgtest-dev libgmock-dev googletest
)
# What the tests add: clang and its libFuzzer runtime (the fuzz run), clang-format (the format
# check), Prometheus and promtool,
# openssl (test certificates for the TLS tests), Python for pytest.
APT_PACKAGES=(
  "${BUILD_PACKAGES[@]}"
  clang libclang-rt-14-dev clang-format
  prometheus openssl
  python3 python3-pip python3-venv
)
PROFILE=${KBITD_SETUP_PROFILE:-all}
if [[ $PROFILE == build ]]; then APT_PACKAGES=("${BUILD_PACKAGES[@]}"); fi
if [[ ${1:-} == --print-packages ]]; then
  printf '%s\n' "${APT_PACKAGES[@]}"
  exit 0
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Python packages used by the tests (peers we check against: tokenizers, grpcio, safetensors), in
# a virtual environment: Debian 12's python3 is "externally managed" (PEP 668) and refuses
# `pip install` outside one. scripts/test.sh runs pytest with this environment's python.
if [[ $PROFILE != build ]]; then
  VENV=${KBITD_VENV:-.venv}
  [[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r tests/requirements.txt
fi
