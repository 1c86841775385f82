"""End-to-end tests of the kbitq CLI on small generated checkpoints (numpy + safetensors).

The binary comes from $KBITD_BUILD_DIR (default build/) as tools/kbitq/kbitq. Files kbitq writes
are read back with the Python safetensors library; values are checked against the quantization
error bounds of bitsandbytes' formats (bnb-spec §1, §2, §6).
"""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("KBITD_BUILD_DIR", os.path.join(ROOT, "build"))
KBITQ = os.path.join(BUILD, "tools", "kbitq", "kbitq")

pytestmark = pytest.mark.skipif(not os.path.exists(KBITQ), reason="kbitq not built at " + KBITQ)

CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
          "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_key_value_heads": 4, "vocab_size": 96, "rms_norm_eps": 1e-05,
          "torch_dtype": "float16", "tie_word_embeddings": False}


def kbitq(*args, check=True):
    proc = subprocess.run([KBITQ, *map(str, args)], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError("kbitq %s failed (%d): %s" % (args, proc.returncode, proc.stderr))
    return proc


def make_checkpoint(path, dtype=np.float16, shards=2, seed=0):
    """A 2-layer Llama-shaped checkpoint split over `shards` files with an index."""
    rng = np.random.default_rng(seed)
    h, f, v = CONFIG["hidden_size"], CONFIG["intermediate_size"], CONFIG["vocab_size"]
    tensors = {"model.embed_tokens.weight": rng.normal(0, 0.02, (v, h)),
               "model.norm.weight": np.ones(h), "lm_head.weight": rng.normal(0, 0.02, (v, h))}
    for i in range(CONFIG["num_hidden_layers"]):
        p = "model.layers.%d." % i
        for name, shape in [("self_attn.q_proj", (h, h)), ("self_attn.k_proj", (h, h)),
                            ("self_attn.v_proj", (h, h)), ("self_attn.o_proj", (h, h)),
                            ("mlp.gate_proj", (f, h)), ("mlp.up_proj", (f, h)),
                            ("mlp.down_proj", (h, f))]:
            tensors[p + name + ".weight"] = rng.normal(0, 0.05, shape)
        tensors[p + "input_layernorm.weight"] = np.ones(h)
        tensors[p + "post_attention_layernorm.weight"] = np.ones(h)
    tensors = {k: t.astype(dtype) for k, t in tensors.items()}
    os.makedirs(path)
    names = sorted(tensors)
    weight_map = {}
    for s in range(shards):
        file = "model-%05d-of-%05d.safetensors" % (s + 1, shards)
        part = {n: tensors[n] for n in names[s::shards]}
        save_file(part, os.path.join(path, file), metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as fh:
        json.dump({"metadata": {"total_size": sum(t.nbytes for t in tensors.values())},
                   "weight_map": weight_map}, fh)
    with open(os.path.join(path, "config.json"), "w") as fh:
        json.dump(CONFIG, fh)
    with open(os.path.join(path, "tokenizer.json"), "w") as fh:
        fh.write('{"version": "1.0"}')
    return tensors


def read_folder(path):
    out = {}
    for name in os.listdir(path):
        if name.endswith(".safetensors"):
            out.update(load_file(os.path.join(path, name)))
    return out


def read_headers(path):
    """name -> safetensors header entry, for every file in `path` (numpy cannot hold bf16)."""
    out = {}
    for name in os.listdir(path):
        if name.endswith(".safetensors"):
            with open(os.path.join(path, name), "rb") as fh:
                header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
            header.pop("__metadata__", None)
            out.update({k: dict(v, file=name) for k, v in header.items()})
    return out


def quant_state_json(tensors, prefix, kind):
    return json.loads(bytes(tensors[prefix + ".weight.quant_state.bitsandbytes__" + kind]))


@pytest.mark.parametrize("kind,double_quant", [("nf4", False), ("nf4", True), ("fp4", False)])
def test_quantize_4bit_layout_and_round_trip(tmp_path, kind, double_quant):
    src = make_checkpoint(str(tmp_path / "in"))
    out, back = tmp_path / "q", tmp_path / "back"
    args = ["quantize", "--in", tmp_path / "in", "--out", out, "--type", kind]
    if double_quant:
        args.append("--double-quant")
    proc = kbitq(*args)
    assert "[21/21]" in proc.stderr  # progress: one line per module or copied tensor

    config = json.load(open(out / "config.json"))
    q = config["quantization_config"]
    assert len(q) == 13 and q["quant_method"] == "bitsandbytes" and q["load_in_4bit"] is True
    assert q["bnb_4bit_quant_type"] == kind and q["bnb_4bit_use_double_quant"] == double_quant
    assert q["bnb_4bit_compute_dtype"] == "float32" and q["llm_int8_skip_modules"] is None
    assert config["hidden_size"] == 64
    assert open(out / "config.json").read().startswith('{\n  "architectures": [\n')
    assert (out / "tokenizer.json").read_text() == '{"version": "1.0"}'

    t = read_folder(str(out))  # Python safetensors reads every file kbitq wrote
    p = "model.layers.1.mlp.up_proj"
    n = 128 * 64
    assert t[p + ".weight"].dtype == np.uint8 and t[p + ".weight"].shape == (n // 2, 1)
    assert t[p + ".weight.quant_map"].shape == (16,)
    state = quant_state_json(t, p, kind)
    assert state["quant_type"] == kind and state["blocksize"] == 64
    assert state["dtype"] == "float16" and state["shape"] == [128, 64]
    if double_quant:
        assert t[p + ".weight.absmax"].dtype == np.uint8
        assert t[p + ".weight.nested_quant_map"].shape == (256,)
        assert state["nested_blocksize"] == 256 and isinstance(state["nested_offset"], float)
    else:
        assert t[p + ".weight.absmax"].dtype == np.float32
        absmax = np.abs(src[p + ".weight"].astype(np.float32)).reshape(-1, 64).max(axis=1)
        np.testing.assert_array_equal(t[p + ".weight.absmax"], absmax)
    np.testing.assert_array_equal(t["lm_head.weight"], src["lm_head.weight"])  # skipped
    np.testing.assert_array_equal(t["model.embed_tokens.weight"], src["model.embed_tokens.weight"])

    kbitq("dequantize", "--in", out, "--out", back, "--dtype", "fp32")
    d = read_folder(str(back))
    assert sorted(d) == sorted(src)
    assert "quantization_config" not in json.load(open(back / "config.json"))
    for name, w in src.items():
        if name.endswith("proj.weight") and not name.startswith("lm_head"):
            w = w.astype(np.float32)
            blocks = np.abs(w).reshape(-1, 64).max(axis=1, keepdims=True)
            err = np.abs(d[name] - w).reshape(-1, 64)
            # Largest half-gap of the NF4 / FP4 code books, relative to the block absmax.
            bound = 0.16 if kind == "nf4" else 0.17
            if double_quant:
                bound += 0.02  # the absmax itself is 8-bit quantized
            assert (err <= bound * blocks + 1e-6).all(), name


def test_quantize_int8_round_trip_and_inspect(tmp_path):
    src = make_checkpoint(str(tmp_path / "in"), dtype=np.float32, shards=1)
    out = tmp_path / "q"
    kbitq("quantize", "--in", tmp_path / "in", "--out", out, "--type", "int8")
    t = read_folder(str(out))
    p = "model.layers.0.self_attn.o_proj"
    assert t[p + ".weight"].dtype == np.int8 and t[p + ".SCB"].dtype == np.float32
    assert t[p + ".weight_format"].shape == () and int(t[p + ".weight_format"]) == 0
    w16 = src[p + ".weight"].astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(t[p + ".SCB"], np.abs(w16).max(axis=1))

    report = json.loads(kbitq("inspect", out, "--json").stdout)
    assert report["quantization"] == "int8"
    entry = {e["name"]: e for e in report["tensors"]}[p + ".weight"]
    assert entry["format"] == "int8" and entry["params"] == 64 * 64
    assert entry["bytes"] == 64 * 64 + 64 * 4 + 1
    assert report["total_bytes"] == sum(x.nbytes for x in t.values())
    assert 0 < report["saving_vs_fp16"] < 0.5
    text = kbitq("inspect", out).stdout
    assert "bits/param" in text and "saved" in text

    back = tmp_path / "back"
    kbitq("dequantize", "--in", out, "--out", back)
    d = read_folder(str(back))
    assert d[p + ".weight"].dtype == np.float16  # LLM.int8 quantizes from fp16
    err = np.abs(d[p + ".weight"].astype(np.float32) - w16)
    assert (err <= np.abs(w16).max(axis=1, keepdims=True) / 127 * 0.5 + 1e-3).all()


def test_gptq_inspect_and_dequantize(tmp_path):
    """kbitq reads GPTQ checkpoints (tests/data/gptq, tools/golden/make_gptq_fixtures.py):
    inspect reports the stored bytes, dequantize --dtype fp32 writes the generator's float32 twin
    exactly, and without --dtype the weights in float16 (one rounding of those values)."""
    gptq = os.path.join(ROOT, "tests", "data", "gptq")
    src = os.path.join(gptq, "llama_gptq3")
    report = json.loads(kbitq("inspect", src, "--json").stdout)
    assert report["quantization"] == "gptq3"
    entries = {e["name"]: e for e in report["tensors"]}
    down = entries["model.layers.0.mlp.down_proj.weight"]
    # 3-bit, group 40 over 64 inputs (2 groups): qweight 6 x 64, qzeros 2 x 6, scales 2 x 64,
    # g_idx 64.
    assert down["format"] == "gptq3" and down["shape"] == [64, 64]
    assert down["bytes"] == 6 * 64 * 4 + 2 * 6 * 4 + 2 * 64 * 2 + 64 * 4
    assert not any(name.endswith((".qweight", ".qzeros", ".scales", ".g_idx")) for name in entries)
    assert report["total_bytes"] == os.path.getsize(os.path.join(src, "model.safetensors")) - \
        8 - int.from_bytes(open(os.path.join(src, "model.safetensors"), "rb").read(8), "little")

    back = tmp_path / "back"
    kbitq("dequantize", "--in", src, "--out", back, "--dtype", "fp32")
    got = read_folder(str(back))
    want = read_folder(os.path.join(gptq, "llama_gptq3_dequant"))
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    with open(back / "config.json") as fh:
        assert "quantization_config" not in json.load(fh)

    half = tmp_path / "half"
    kbitq("dequantize", "--in", src, "--out", half)
    h = read_folder(str(half))
    assert h["lm_head.weight"].dtype == np.float16
    np.testing.assert_array_equal(h["lm_head.weight"], want["lm_head.weight"].astype(np.float16))


def rtn_reference(weight, bits, group_size, sym):
    """GPTQ round-to-nearest of weight [out, in] as kbitq documents it, dequantized in float32:
    per (group, output row) range including 0, fp16 scale, zero against that scale."""
    maxq = 2 ** bits - 1
    w = weight.astype(np.float64).reshape(weight.shape[0], -1, group_size)  # [out, groups, g]
    lo, hi = np.minimum(w.min(axis=2), 0), np.maximum(w.max(axis=2), 0)
    if sym:
        hi = np.maximum(-lo, hi)
        lo = -hi
    span = np.where(hi - lo == 0, 1.0, hi - lo)
    scale = (span / maxq).astype(np.float32).astype(np.float16).astype(np.float64)
    zero = np.full(scale.shape, (maxq + 1) // 2) if sym else np.clip(np.round(-lo / scale), 0, maxq)
    q = np.clip(np.round(w / scale[..., None] + zero[..., None]), 0, maxq)
    deq = scale[..., None].astype(np.float32) * (q - zero[..., None]).astype(np.float32)
    return deq.reshape(weight.shape).astype(np.float32)


@pytest.mark.parametrize("bits,sym", [(4, False), (3, True), (2, False), (8, True)])
def test_quantize_gptq_round_to_nearest(tmp_path, bits, sym):
    """--type gptq writes GPTQModel's tensors and config; dequantized, the weights equal a NumPy
    round-to-nearest reference exactly."""
    src = tmp_path / "src"
    tensors = make_checkpoint(str(src))
    out = tmp_path / "gptq"
    kbitq("quantize", "--in", src, "--out", out, "--type", "gptq", "--bits", bits,
          "--group-size", 32, "--sym" if sym else "--asym", "--quiet")
    with open(out / "config.json") as fh:
        qc = json.load(fh)["quantization_config"]
    assert qc["quant_method"] == "gptq" and qc["checkpoint_format"] == "gptq"
    assert (qc["bits"], qc["group_size"], qc["sym"], qc["desc_act"]) == (bits, 32, sym, False)
    assert os.path.exists(out / "tokenizer.json")
    got = read_folder(str(out))
    down = "model.layers.1.mlp.down_proj"  # in 128, out 64
    assert got[down + ".qweight"].dtype == np.int32
    assert got[down + ".qweight"].shape == (128 * bits // 32, 64)
    assert got[down + ".qzeros"].shape == (4, 64 * bits // 32)
    assert got[down + ".scales"].dtype == np.float16 and got[down + ".scales"].shape == (4, 64)
    np.testing.assert_array_equal(got[down + ".g_idx"], np.arange(128) // 32)
    assert got["lm_head.weight"].dtype == np.float16  # copied, as GPTQModel leaves lm_head
    back = tmp_path / "back"
    kbitq("dequantize", "--in", out, "--out", back, "--dtype", "fp32")
    deq = read_folder(str(back))
    for name, weight in tensors.items():
        if name.endswith("_proj.weight"):
            want = rtn_reference(weight.astype(np.float32), bits, 32, sym)
            np.testing.assert_array_equal(deq[name], want, err_msg=name)


def test_quantize_gptq_calibrated_act_order(tmp_path):
    """--calibration runs GPTQ on the tiny float32 Llama; --act-order records desc_act and a g_idx
    that assigns each group exactly group-size rows, not in row order."""
    model = os.path.join(ROOT, "tests", "data", "models", "llama", "fp32")
    with open(os.path.join(ROOT, "models", "default", "heldout.txt")) as fh:
        (tmp_path / "calib.txt").write_text(fh.read()[:4000])
    out = tmp_path / "gptq"
    proc = kbitq("quantize", "--in", model, "--out", out, "--type", "gptq", "--bits", 4,
                 "--group-size", 32, "--asym", "--calibration", tmp_path / "calib.txt",
                 "--act-order")
    assert "calibrating on" in proc.stderr
    with open(out / "config.json") as fh:
        qc = json.load(fh)["quantization_config"]
    assert qc["desc_act"] is True and qc["sym"] is False and qc["bits"] == 4
    got = read_folder(str(out))
    g_idx = got["model.layers.0.mlp.down_proj.g_idx"]
    assert sorted(np.bincount(g_idx)) == [32] * 4
    assert not np.array_equal(g_idx, np.arange(128) // 32)


def test_quantize_gptq_rejects_bad_options(tmp_path):
    src = tmp_path / "src"
    make_checkpoint(str(src))
    for args, message in [(["--bits", 5], "bits 5 is not supported"),
                          (["--group-size", 48], "group size 48 does not divide"),
                          (["--sym", "--asym"], "exclude each other"),
                          (["--double-quant"], "applies to nf4/fp4/int8 only"),
                          (["--act-order"], "--act-order needs --calibration"),
                          (["--calibration", tmp_path / "none.txt"], "cannot be read")]:
        proc = kbitq("quantize", "--in", src, "--out", tmp_path / "out", "--type", "gptq", *args,
                     check=False)
        assert proc.returncode == 1 and message in proc.stderr, (args, proc.stderr)
        assert not os.path.exists(tmp_path / "out")


def test_sharded_output_and_options(tmp_path):
    make_checkpoint(str(tmp_path / "in"), dtype=np.float32)
    out = tmp_path / "q"
    kbitq("quantize", "--in", tmp_path / "in", "--out", out, "--type", "nf4", "--blocksize", "128",
          "--quant-storage", "bf16", "--compute-dtype", "bf16", "--skip-modules",
          "lm_head,down_proj", "--max-shard-size", "30000", "--quiet")
    index = json.load(open(out / "model.safetensors.index.json"))
    files = set(index["weight_map"].values())
    assert len(files) > 1 and all((out / f).exists() for f in files)
    assert set(os.listdir(out)) == files | {"config.json", "tokenizer.json",
                                            "model.safetensors.index.json"}
    headers = read_headers(str(out))
    assert {k: v["file"] for k, v in headers.items()} == index["weight_map"]
    assert "model.layers.0.mlp.down_proj.weight.absmax" not in headers
    p = "model.layers.0.mlp.gate_proj"
    assert headers[p + ".weight.absmax"]["shape"] == [128 * 64 // 128]
    with safe_open(str(out / headers[p + ".weight"]["file"]), "np") as f:
        assert json.loads(bytes(f.get_tensor(p + ".weight.quant_state.bitsandbytes__nf4")))[
            "blocksize"] == 128
    # bf16 storage: the same packed bytes declared as ((n + 1) // 4, 1) bf16 elements.
    assert headers[p + ".weight"]["dtype"] == "BF16"
    assert headers[p + ".weight"]["shape"] == [128 * 64 // 4, 1]
    q = json.load(open(out / "config.json"))["quantization_config"]
    assert q["bnb_4bit_quant_storage"] == "bfloat16" and q["bnb_4bit_compute_dtype"] == "bfloat16"
    assert q["llm_int8_skip_modules"] == ["lm_head", "down_proj"]


def bad(tmp_path, *args):
    out = tmp_path / "out"
    proc = kbitq(*args, check=False)
    assert proc.returncode != 0
    assert not out.exists()
    assert not [p for p in os.listdir(tmp_path) if ".partial" in p]
    return proc.stderr


def test_bad_inputs_fail_cleanly(tmp_path):
    src = tmp_path / "in"
    make_checkpoint(str(src), shards=1)
    shard = src / "model-00001-of-00001.safetensors"
    common = ["quantize", "--in", src, "--out", tmp_path / "out"]
    assert 'unknown type "nf3"' in bad(tmp_path, *common, "--type", "nf3")
    assert "blocksize" in bad(tmp_path, *common, "--type", "nf4", "--blocksize", "48")
    assert "unknown option --bogus" in bad(tmp_path, *common, "--type", "nf4", "--bogus")
    assert "needs --out" in bad(tmp_path, "quantize", "--in", src, "--type", "nf4")

    data = shard.read_bytes()
    shard.write_bytes(data[:-5])
    assert "model-00001-of-00001.safetensors: tensors need" in bad(tmp_path, *common, "--type",
                                                                   "nf4")
    shard.write_bytes(data)
    t = load_file(str(shard))
    t["model.layers.1.self_attn.k_proj.weight"][3, 5] = np.nan
    save_file(t, str(shard))
    err = bad(tmp_path, *common, "--type", "fp4")
    assert 'tensor "model.layers.1.self_attn.k_proj.weight": element 197 is NaN' in err

    t["model.layers.1.self_attn.k_proj.weight"][3, 5] = 0
    t["model.layers.0.mlp.up_proj.weight"] = t["model.layers.0.mlp.up_proj.weight"].view(np.uint16)
    save_file(t, str(shard))
    assert "dtype U16 cannot be quantized" in bad(tmp_path, *common, "--type", "nf4")

    (tmp_path / "out").mkdir()
    proc = kbitq(*common, "--type", "nf4", check=False)
    assert proc.returncode == 1 and "already exists" in proc.stderr
    (tmp_path / "out").rmdir()
    assert "no quantized tensors" in bad(tmp_path, "dequantize", "--in", src,
                                         "--out", tmp_path / "out")


PEAK_PROBE = """
import resource, subprocess, sys
rc = subprocess.run(sys.argv[1:], capture_output=True).returncode
print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def peak_rss_mib(*args):
    probe = subprocess.run([sys.executable, "-c", PEAK_PROBE, KBITQ, *map(str, args)],
                           capture_output=True, text=True, check=True)
    rc, peak_kib = map(int, probe.stdout.split())
    assert rc == 0, args
    return peak_kib / 1024


def test_peak_memory_stays_near_one_tensor(tmp_path):
    # 12 tensors of 4 MiB (48 MiB in all): a tool that held the checkpoint would exceed the bound.
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(1)
    tensors = {"model.layers.%d.mlp.up_proj.weight" % i:
               rng.normal(0, 1, (1024, 1024)).astype(np.float32) for i in range(12)}
    save_file(tensors, str(src / "model.safetensors"))
    (src / "config.json").write_text(json.dumps(CONFIG))
    bound = 3 * 4 + 24  # MiB: a few copies of the largest tensor plus the process itself
    peak = peak_rss_mib("quantize", "--in", src, "--out", tmp_path / "q", "--type", "nf4", "--quiet")
    assert peak < bound, "quantize peak RSS %.1f MiB" % peak
    peak = peak_rss_mib("dequantize", "--in", tmp_path / "q", "--out", tmp_path / "d", "--quiet")
    assert peak < bound, "dequantize peak RSS %.1f MiB" % peak


def test_interrupt_leaves_nothing(tmp_path):
    # 64 tensors of 1024 x 1024 fp16 (128 MiB): enough work left after the first progress line
    # that the interrupt always lands mid-run (a small checkpoint could finish first).
    src = tmp_path / "in"
    src.mkdir()
    base = np.random.default_rng(2).normal(0, 1, (1024, 1024)).astype(np.float16)
    save_file({"model.layers.%d.mlp.up_proj.weight" % i: base for i in range(64)},
              str(src / "model.safetensors"))
    (src / "config.json").write_text(json.dumps(CONFIG))
    out = tmp_path / "out"
    proc = subprocess.Popen([KBITQ, "quantize", "--in", str(src), "--out", str(out), "--type",
                             "nf4"], stderr=subprocess.PIPE, text=True)
    first = proc.stderr.readline()  # the first tensor is done: interrupt the run
    assert first.startswith("[ 1/64]")
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 1
    assert "cancelled" in rest
    assert not out.exists()
    assert not [p for p in os.listdir(tmp_path) if ".partial" in p]
