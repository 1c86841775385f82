#!/usr/bin/env bash
# The main job: set up a fresh Debian 12, build kbitd (with the CUDA backend when nvcc is found; the
# models then load onto the GPU if the machine has one, else they run on the CPU backend) and serve
# the bundled model (models/default) twice, from the same folder: as "default" unquantized, and as
# "default-nf4" quantized to NF4 on load,
# on 0.0.0.0:50051 with /metrics on :9400. Once both are ready it prints the kbitctl commands that
# show the memory NF4 saves and generate from each model; Ctrl-C (or SIGTERM) drains and stops.
# Extra arguments are kbitd flags, e.g. `bash scripts/run.sh --set limits.max_queue=64`.
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
  # float32 activations: the CPU backend computes in float32 anyway, and this is the
  # configuration whose greedy output equals transformers' (models/default/reference.json).
  - name: default
    path: default
    dtype: float32
  # The same checkpoint quantized on load the way transformers + bitsandbytes do it with
  # BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4"): its greedy output equals
  # theirs with compute dtype float32 (tests/data/quality/bnb_reference.json).
  - name: default-nf4
    path: default
    dtype: float32
    quantization:
      load_in_4bit: true
      bnb_4bit_quant_type: nf4
      bnb_4bit_compute_dtype: float32
YAML

kbitctl="$BUILD_DIR/tools/kbitctl/kbitctl"
# kbitd runs in the background so that this script can print the commands once it is ready; its
# output comes through a FIFO, which gives the port it bound (flags may ask for port 0).
fifo_dir=$(mktemp -d)
mkfifo "$fifo_dir/out"
"$BUILD_DIR/server/kbitd" --config "$config" "$@" >"$fifo_dir/out" 2>&1 &
kbitd_pid=$!
exec 3<"$fifo_dir/out"
rm -rf "$fifo_dir"
# kbitd drains and stops on SIGTERM or SIGINT; pass either on (a background job of a script
# ignores the terminal's Ctrl-C itself).
trap 'kill -TERM "$kbitd_pid" 2>/dev/null || true' INT TERM

print_commands() {  # ADDRESS: waits until both models serve, then prints what to try
  local address=$1 flag="" i
  [[ $address == 127.0.0.1:50051 ]] || flag=" --address=$address"
  for ((i = 0; i < 600; i++)); do
    if "$kbitctl" --address="$address" health kbitd.v1.InferenceService >/dev/null 2>&1; then
      cat <<EOF
run.sh: ready. "default" is models/default unquantized (float32); "default-nf4" is the same
checkpoint quantized to NF4 on load. From another shell:
  K="$kbitctl$flag"
  \$K list                    # both models: weight_bytes, saved_bytes (vs fp16), bits_per_parameter
  \$K get default-nf4         # the NF4 model alone: its quantization config and memory
  \$K generate default "def fibonacci(n):" --max_new_tokens 64 --temperature 0
  \$K generate default-nf4 "def fibonacci(n):" --max_new_tokens 64 --temperature 0
Ctrl-C stops kbitd (it drains running requests first).
EOF
      return 0
    fi
    kill -0 "$kbitd_pid" 2>/dev/null || return 0
    sleep 0.5
  done
  echo "run.sh: the models are not serving after 300 s; see the log above" >&2
}

helper_pid=""
while true; do
  if IFS= read -r line <&3; then
    printf '%s\n' "$line"
    if [[ -z $helper_pid && $line =~ ^kbitd:\ listening\ on\ (.*):([0-9]+)$ ]]; then
      host=${BASH_REMATCH[1]}
      [[ $host == 0.0.0.0 || $host == "[::]" || -z $host ]] && host=127.0.0.1
      print_commands "$host:${BASH_REMATCH[2]}" &
      helper_pid=$!
    fi
  elif (($? > 128)); then
    continue  # a signal interrupted the read; the trap passed it on, read the rest of the log
  else
    break  # kbitd closed its output: it exited
  fi
done
[[ -z $helper_pid ]] || kill "$helper_pid" 2>/dev/null || true
set +e
wait "$kbitd_pid"
status=$?
# A signal during `wait` returns early (status > 128) after the trap ran: wait for kbitd itself.
while ((status > 128)) && kill -0 "$kbitd_pid" 2>/dev/null; do
  wait "$kbitd_pid"
  status=$?
done
exit "$status"
