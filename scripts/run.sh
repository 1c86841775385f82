#!/usr/bin/env bash
# The main job: set up a fresh Debian 12, build kbitd (with the CUDA quantization kernels when nvcc
# is found; inference runs on the CPU backend)
# and serve the bundled default model (models/default) on 0.0.0.0:50051, /metrics on :9400.
# Extra arguments are kbitd flags, e.g. `bash scripts/run.sh --set limits.max_queue=64`.
# Then, from another shell:
#   ./build/tools/kbitctl/kbitctl generate default "def fibonacci(n):" --max_new_tokens 64
set -euo pipefail
cd "$(dirname "$0")/.."
[[ ${KBITD_SKIP_SETUP:-0} == 1 ]] || bash scripts/setup.sh

BUILD_DIR=${BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo ${CMAKE_ARGS:-}
cmake --build "$BUILD_DIR" -j "$(nproc)" --target kbitd kbitctl
if [[ ! -x "$BUILD_DIR/server/kbitd" ]]; then
  echo "run.sh: $BUILD_DIR/server/kbitd was not built (server/CMakeLists.txt builds it once the" \
       "runtime engine and loader are in the tree)" >&2
  exit 1
fi

config="$BUILD_DIR/kbitd.yaml"
cat > "$config" <<YAML
listen_address: "0.0.0.0:50051"
metrics_address: "0.0.0.0:9400"
model_root: "$PWD/models"
models:
  - name: default
    path: default
    # float32 activations: the CPU backend computes in float32 anyway, and this is the
    # configuration whose greedy output equals transformers' (models/default/reference.json).
    dtype: float32
YAML
echo "run.sh: serving models/default; try:"
echo "  $BUILD_DIR/tools/kbitctl/kbitctl generate default \"def fibonacci(n):\" --max_new_tokens 64"
exec "$BUILD_DIR/server/kbitd" --config "$config" "$@"
