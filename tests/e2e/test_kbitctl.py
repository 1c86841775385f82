"""kbitctl, the CLI client, drives every RPC of a live daemon; its results agree with what Python
grpcio gets for the same requests."""

import json
import subprocess

import pytest

from conftest import ADMIN_TOKEN, BUILD, requires_kbitd
from test_generate import generate

KBITCTL = BUILD / "tools" / "kbitctl" / "kbitctl"
pytestmark = [requires_kbitd,
              pytest.mark.skipif(not KBITCTL.exists(), reason=f"{KBITCTL} not built")]


def kbitctl(daemon, *args, admin=False, check=True):
    flags = [f"--address=127.0.0.1:{daemon.port}", "--timeout=60"]
    if admin:
        flags.append(f"--admin_token={ADMIN_TOKEN}")
    proc = subprocess.run([str(KBITCTL), *flags, *map(str, args)], capture_output=True, text=True,
                          timeout=120)
    if check:
        assert proc.returncode == 0, (args, proc.stderr)
    return proc


def test_list_get_and_health(daemon):
    models = json.loads(kbitctl(daemon, "list").stdout)["models"]
    assert "tiny" in {m["name"] for m in models}
    info = json.loads(kbitctl(daemon, "get", "tiny").stdout)
    assert info["state"] == "MODEL_STATE_READY" and int(info["parameter_count"]) > 0
    assert int(info["kv_cache_bytes"]) > 0 and int(info["kv_cache_tokens"]) >= 4096
    assert "SERVING" in kbitctl(daemon, "health", "tiny").stdout
    missing = kbitctl(daemon, "get", "nope", check=False)
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr


def test_tokenize_detokenize_round_trip(daemon):
    ids = [int(i) for i in kbitctl(daemon, "tokenize", "tiny", "import os\nx = 1").stdout.split()]
    pb = daemon.pb
    want = daemon.inference.Tokenize(pb.inference.TokenizeRequest(model="tiny",
                                                                  text=b"import os\nx = 1"))
    assert ids == list(want.token_ids) and ids
    assert kbitctl(daemon, "detokenize", "tiny", *ids).stdout == "import os\nx = 1\n"


def test_generate_text_token_ids_stops_and_logprobs(daemon):
    want_ids, want_text, _ = generate(daemon, "def f(x):", max_new_tokens=8)
    out = kbitctl(daemon, "generate", "tiny", "def f(x):", "--temperature=0", "--max_new_tokens=8")
    assert out.stdout == want_text + "\n" and "FINISH_REASON_LENGTH" in out.stderr

    prompt_ids = kbitctl(daemon, "tokenize", "tiny", "def f(x):").stdout.split()
    lines = kbitctl(daemon, "generate", "tiny", ",".join(prompt_ids), "--token_ids",
                    "--temperature=0", "--max_new_tokens=8", "--logprobs=2").stdout.splitlines()
    responses = [json.loads(line) for line in lines]
    got_ids = [int(t) for r in responses for t in r.get("token_ids", [])]
    assert got_ids == want_ids
    logprobs = [lp for r in responses for lp in r.get("logprobs", [])]
    assert len(logprobs) == 8 and all(len(lp["top"]) == 2 for lp in logprobs)

    stopped = kbitctl(daemon, "generate", "tiny", "def f(x):", "--temperature=0",
                      "--max_new_tokens=8", f"--stop_token_ids={want_ids[2]}")
    assert "FINISH_REASON_STOP" in stopped.stderr
    assert len(stopped.stdout) < len(want_text) + 1
    with_comma = kbitctl(daemon, "generate", "tiny", "def f(x):", "--temperature=0",
                         "--max_new_tokens=8", '--stop_json=["a,b", "' + want_text[3:6] + '"]')
    assert "FINISH_REASON_STOP" in with_comma.stderr
    assert kbitctl(daemon, "generate", "tiny", "x", "--stop_json=[1", check=False).returncode != 0


def test_load_with_quantization_flags_dequantize_and_unload(daemon, tmp_path):
    info = json.loads(kbitctl(daemon, "load", "cli-nf4", "tiny", "--load_in_4bit",
                              "--bnb_4bit_quant_type=nf4", "--bnb_4bit_use_double_quant",
                              "--bnb_4bit_quant_storage=bfloat16", admin=True).stdout)
    q = info["quantization"]
    assert q["load_in_4bit"] and q["bnb_4bit_quant_storage"] == "bfloat16"
    out = tmp_path / "w.bin"
    kbitctl(daemon, "dequantize", "cli-nf4", "model.layers.0.mlp.up_proj.weight", f"--out={out}")
    assert out.stat().st_size == 128 * 64 * 4  # [intermediate, hidden] float32
    kbitctl(daemon, "unload", "cli-nf4", admin=True)

    info = json.loads(kbitctl(daemon, "load", "cli-int8", "tiny", "--load_in_8bit",
                              "--llm_int8_threshold=4.5", "--llm_int8_skip_modules=lm_head,q_proj",
                              admin=True).stdout)
    text = json.dumps(info)
    assert "4.5" in text and "q_proj" in text
    kbitctl(daemon, "unload", "cli-int8", admin=True)

    info = json.loads(kbitctl(daemon, "load", "cli-kv", "tiny", "--kv_cache_bytes=4MiB",
                              admin=True).stdout)
    assert (info["kv_cache_bytes"], info["kv_cache_tokens"]) == (str(4 << 20), "8192")
    kbitctl(daemon, "unload", "cli-kv", admin=True)
    denied = kbitctl(daemon, "load", "x", "tiny", check=False)
    assert denied.returncode == 1 and "UNAUTHENTICATED" in denied.stderr
