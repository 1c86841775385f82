#!/usr/bin/env python3
"""Writes the GPTQ fixtures in tests/data/gptq/ with NumPy only (no torch, no GPU), packing the
layout GPTQModel, AutoGPTQ and optimum write (quant/gptq.h; learned from GPTQModel
gptqmodel/nn_modules/qlinear/__init__.py pack_block / dequantize_weight, gptqmodel/utils/
model_dequant.py convert_gptq_file and AutoGPTQ auto_gptq/nn_modules/qlinear/qlinear_cuda_old.py
pack; written from the layout, not copied):

  qweight int32 [in * bits / 32, out]  codes packed along the input dimension, a little-endian bit
                                       stream per column (3-bit codes straddle int32 words)
  qzeros  int32 [groups, out * bits / 32]  zero points packed along the output dimension;
                                       checkpoint_format "gptq" stores zero - 1, "gptq_v2" zero
  scales  fp16  [groups, out]
  g_idx   int32 [in]                   group of each input row (a permutation with act order)

Round-to-nearest quantization (not real GPTQ: the layout is what is under test). Every dequantized
value is float32(scale) * float32(q - zero), computed here from the unpacked codes and zeros,
never from the packed words, so the C++ unpacking is checked against an independent source.

Writes:
  layers.safetensors + layers.json  single linears: bits 2/3/4/8, sym/asym, both checkpoint
        formats, act order, partial last groups, a v1 zero of 0 (its field is all ones) and the
        dequantized float32 weight [out, in] of each ("<case>.dequant").
  llama_gptq4/, llama_gptq3/  tiny LlamaForCausalLM GPTQ checkpoints (config.json with
        quantization_config, model.safetensors), and llama_gptq4_dequant/, llama_gptq3_dequant/:
        the same models with every GPTQ linear replaced by its dequantized float32 weight, as plain
        float32 checkpoints.

Run: python3 tools/golden/make_gptq_fixtures.py   (numpy, safetensors)
"""
import json
import os

import numpy as np
from safetensors.numpy import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "data", "gptq")


def pack_stream(codes, bits, axis):
    """Packs `codes` (non-negative ints < 2**bits) along `axis` into int32 words: code i of a line
    occupies bits [i * bits, (i + 1) * bits) of the line's little-endian stream of words."""
    codes = np.moveaxis(np.asarray(codes, dtype=np.uint64), axis, 0)
    count = codes.shape[0]
    assert count * bits % 32 == 0
    words = np.zeros((count * bits // 32,) + codes.shape[1:], dtype=np.uint64)
    for i in range(count):
        bit = i * bits
        word, offset = divmod(bit, 32)
        words[word] |= (codes[i] << np.uint64(offset)) & np.uint64(0xFFFFFFFF)
        if offset + bits > 32:  # the high bits spill into the next word
            words[word + 1] |= codes[i] >> np.uint64(32 - offset)
    return np.ascontiguousarray(np.moveaxis(words.astype(np.uint32).view(np.int32), 0, axis))


def pack_rows_3bit_explicit(codes):
    """AutoGPTQ's 3-bit qweight rows written out: per 32 input rows three words holding
    10 codes | 2 low bits of code 10 || its high bit | 10 codes | low bit of code 21 || its 2 high
    bits | 10 codes. Used only to check pack_stream on the layout as the packers describe it."""
    codes = np.asarray(codes, dtype=np.uint64)
    rows = []
    for base in range(0, codes.shape[0], 32):
        c = codes[base:base + 32]
        w0 = sum(c[j] << np.uint64(3 * j) for j in range(10)) | (c[10] << np.uint64(30))
        w1 = ((c[10] >> np.uint64(2)) & np.uint64(1)) | sum(
            c[11 + j] << np.uint64(3 * j + 1) for j in range(10)) | (c[21] << np.uint64(31))
        w2 = ((c[21] >> np.uint64(1)) & np.uint64(3)) | sum(
            c[22 + j] << np.uint64(3 * j + 2) for j in range(10))
        rows += [w & np.uint64(0xFFFFFFFF) for w in (w0, w1, w2)]
    return np.stack(rows).astype(np.uint32).view(np.int32)


def make_g_idx(in_features, group_size, act_order, rng):
    """g_idx as GPTQ writes it: rows are quantized in an order (a permutation with act order) and
    grouped by position in that order, so row k belongs to group position(k) // group_size."""
    size = in_features if group_size == -1 else group_size
    order = rng.permutation(in_features) if act_order else np.arange(in_features)
    g_idx = np.empty(in_features, dtype=np.int32)
    g_idx[order] = np.arange(in_features) // size
    return g_idx


def quantize(weight, bits, group_size, sym, act_order, rng, force_zero=None):
    """Round-to-nearest GPTQ-layout quantization of weight [out, in] (float32). Returns the codes
    [in, out], zeros and fp16 scales [groups, out], g_idx, and the dequantized float32 [out, in]."""
    out_features, in_features = weight.shape
    maxq = 2 ** bits - 1
    g_idx = make_g_idx(in_features, group_size, act_order, rng)
    groups = int(g_idx.max()) + 1
    scales = np.zeros((groups, out_features), dtype=np.float16)
    zeros = np.zeros((groups, out_features), dtype=np.int64)
    codes = np.zeros((in_features, out_features), dtype=np.int64)
    for g in range(groups):
        rows = np.nonzero(g_idx == g)[0]
        w = weight[:, rows].astype(np.float64)  # [out, rows]
        lo = np.minimum(w.min(axis=1), 0)
        hi = np.maximum(w.max(axis=1), 0)
        if sym:
            hi = np.maximum(-lo, hi)
            lo = -hi
        span = np.where(hi - lo == 0, 1.0, hi - lo)
        scale = (span / maxq).astype(np.float16)
        zero = np.full(out_features, (maxq + 1) // 2) if sym else np.clip(
            np.round(-lo / scale.astype(np.float64)), 0, maxq).astype(np.int64)
        if force_zero is not None and g == 0:
            zero[: len(force_zero)] = force_zero
        q = np.clip(np.round(w / scale.astype(np.float64)[:, None] + zero[:, None]), 0, maxq)
        scales[g] = scale
        zeros[g] = zero
        codes[rows] = q.T.astype(np.int64)
    # w[n][k] = f32(scale[g][n]) * f32(q[k][n] - zero[g][n]), g = g_idx[k] (exact in float32).
    diff = (codes - zeros[g_idx]).astype(np.float32)  # [in, out]
    dequant = (scales[g_idx].astype(np.float32) * diff).T.copy()
    return codes, zeros, scales, g_idx, dequant


def gptq_tensors(prefix, weight, spec, rng):
    """The state-dict tensors of one GPTQ linear (checkpoint_format from spec) and its dequant."""
    bits = spec["bits"]
    codes, zeros, scales, g_idx, dequant = quantize(
        weight, bits, spec["group_size"], spec["sym"], spec["desc_act"], rng,
        spec.get("force_zero"))
    qweight = pack_stream(codes, bits, axis=0)
    if bits == 3:
        assert np.array_equal(qweight, pack_rows_3bit_explicit(codes))
    stored = zeros - 1 if spec["checkpoint_format"] == "gptq" else zeros
    qzeros = pack_stream(stored & (2 ** bits - 1), bits, axis=1)
    return {
        prefix + ".qweight": qweight,
        prefix + ".qzeros": qzeros,
        prefix + ".scales": scales,
        prefix + ".g_idx": g_idx,
    }, dequant


LAYER_CASES = [
    # name, in, out, bits, group_size, sym, desc_act, checkpoint_format, force_zero
    ("b2_sym_v1_g32", 64, 32, 2, 32, True, False, "gptq", None),
    ("b2_asym_v2_act", 96, 32, 2, 40, False, True, "gptq_v2", [0, 3]),
    ("b3_asym_v2_act_partial", 96, 32, 3, 64, False, True, "gptq_v2", [0, 7]),
    ("b3_sym_v1_one_group", 64, 64, 3, -1, True, False, "gptq", None),
    ("b3_asym_v1_zero0", 64, 32, 3, 32, False, False, "gptq", [0, 7, 0]),
    ("b4_asym_v1_act_partial", 96, 32, 4, 40, False, True, "gptq", [0, 15, 1]),
    ("b4_sym_v2_g32", 64, 40, 4, 32, True, False, "gptq_v2", None),
    ("b8_asym_v1_act_partial", 96, 32, 8, 64, False, True, "gptq", [0, 255]),
    ("b8_sym_v2_one_group", 32, 36, 8, -1, True, False, "gptq_v2", None),
]


def layers(rng):
    tensors, cases = {}, {}
    for name, in_f, out_f, bits, group, sym, act, fmt, force_zero in LAYER_CASES:
        weight = rng.normal(0, 0.05, (out_f, in_f)).astype(np.float32)
        weight[0, :8] *= 6  # an outlier row, as real layers have
        spec = {"bits": bits, "group_size": group, "sym": sym, "desc_act": act,
                "checkpoint_format": fmt, "force_zero": force_zero}
        t, dequant = gptq_tensors(name, weight, spec, rng)
        tensors.update(t)
        tensors[name + ".dequant"] = dequant
        cases[name] = {"in_features": in_f, "out_features": out_f, "bits": bits,
                       "group_size": group, "sym": sym, "desc_act": act, "checkpoint_format": fmt}
    save_file(tensors, os.path.join(OUT, "layers.safetensors"))
    os.chmod(os.path.join(OUT, "layers.safetensors"), 0o644)
    with open(os.path.join(OUT, "layers.json"), "w") as f:
        f.write(json.dumps(cases, indent=2, sort_keys=True) + "\n")


# A tiny LlamaForCausalLM: one layer, hidden 64, 4 heads of 16 (2 KV heads), intermediate 64,
# vocab 32. Group sizes 48 and 40 leave a partial last group on every linear.
BASE_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 32,
    "hidden_size": 64,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "hidden_act": "silu",
    "max_position_embeddings": 128,
    "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "mlp_bias": False,
    "bos_token_id": 0,
    "eos_token_id": 1,
}

MODELS = {
    # 4-bit, act order, asymmetric, v1 zeros; lm_head stays float16 (GPTQ's default).
    "llama_gptq4": {"bits": 4, "group_size": 48, "desc_act": True, "sym": False,
                    "checkpoint_format": "gptq", "lm_head": False, "attention_bias": False},
    # 3-bit, symmetric, v2 zeros, q/k/v/o biases, and a quantized lm_head (GPTQModel lm_head=True).
    "llama_gptq3": {"bits": 3, "group_size": 40, "desc_act": False, "sym": True,
                    "checkpoint_format": "gptq_v2", "lm_head": True, "attention_bias": True},
}


def model(name, spec, rng):
    c = BASE_CONFIG
    h, inter, vocab = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    kv = c["num_key_value_heads"] * c["head_dim"]
    plain = {  # float16 values, as a GPTQ checkpoint stores its unquantized tensors
        "model.embed_tokens.weight": rng.normal(0, 1, (vocab, h)),
        "model.norm.weight": 1 + rng.normal(0, 0.1, h),
        "model.layers.0.input_layernorm.weight": 1 + rng.normal(0, 0.1, h),
        "model.layers.0.post_attention_layernorm.weight": 1 + rng.normal(0, 0.1, h),
    }
    linears = {
        "model.layers.0.self_attn.q_proj": (h, h),
        "model.layers.0.self_attn.k_proj": (kv, h),
        "model.layers.0.self_attn.v_proj": (kv, h),
        "model.layers.0.self_attn.o_proj": (h, h),
        "model.layers.0.mlp.gate_proj": (inter, h),
        "model.layers.0.mlp.up_proj": (inter, h),
        "model.layers.0.mlp.down_proj": (h, inter),
        "lm_head": (vocab, h),
    }
    quantized, dequantized = {}, {}
    for prefix, shape in linears.items():
        weight = rng.normal(0, 0.15, shape).astype(np.float16).astype(np.float32)
        if spec["attention_bias"] and ".self_attn." in prefix:
            plain[prefix + ".bias"] = rng.normal(0, 0.1, shape[0])
        if prefix == "lm_head" and not spec["lm_head"]:
            plain[prefix + ".weight"] = weight
            continue
        t, dequant = gptq_tensors(prefix, weight, spec, rng)
        quantized.update(t)
        dequantized[prefix + ".weight"] = dequant
    plain = {k: np.asarray(v).astype(np.float16) for k, v in plain.items()}

    config = dict(BASE_CONFIG, attention_bias=spec["attention_bias"], torch_dtype="float16")
    config["quantization_config"] = {
        "quant_method": "gptq", "bits": spec["bits"], "group_size": spec["group_size"],
        "desc_act": spec["desc_act"], "sym": spec["sym"],
        "checkpoint_format": spec["checkpoint_format"], "lm_head": spec["lm_head"],
        "true_sequential": True, "damp_percent": 0.01, "static_groups": False,
        "pack_dtype": "int32", "meta": {"quantizer": ["kbitd make_gptq_fixtures.py"]},
    }
    write_model(os.path.join(OUT, name), config, {**plain, **quantized})
    # The twin: every tensor float32, the GPTQ linears as their dequantized weights.
    twin = {k: v.astype(np.float32) for k, v in plain.items()}
    twin.update(dequantized)
    twin_config = dict(BASE_CONFIG, attention_bias=spec["attention_bias"], torch_dtype="float32")
    write_model(os.path.join(OUT, name + "_dequant"), twin_config, twin)


def write_model(folder, config, tensors):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        f.write(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    os.chmod(os.path.join(folder, "model.safetensors"), 0o644)


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(15)
    layers(rng)
    for name, spec in MODELS.items():
        model(name, spec, rng)


if __name__ == "__main__":
    main()
