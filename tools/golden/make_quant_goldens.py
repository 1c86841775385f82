#!/usr/bin/env python3
"""Golden data for kbitd's quant/ tests, produced by bitsandbytes itself (the truth).

Runs on a CUDA machine with torch and bitsandbytes (kbitd used 0.50.2 on an H100):
    PYTHONPATH=$PWD/.bnb python3 tools/golden/make_quant_goldens.py OUT_DIR
Writes OUT_DIR/manifest.json plus one raw little-endian .bin file per tensor, so that the C++ tests
read them with common/json.h and no safetensors library. Each tensor entry in the manifest is
{"file", "dtype" (safetensors name), "shape"}. Every section is independent: a failing section is
recorded under "errors" and the others are still written. Inputs come from a fixed seed.
"""

import json
import os
import sys
import traceback

import torch

import bitsandbytes as bnb
import bitsandbytes.functional as F

OUT = sys.argv[1] if len(sys.argv) > 1 else "quant_goldens"
os.makedirs(OUT, exist_ok=True)
DEV = "cuda"
ST_NAME = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.uint8: "U8",
           torch.int8: "I8", torch.int32: "I32", torch.int64: "I64"}
DT_NAME = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}

manifest = {"bitsandbytes": bnb.__version__, "torch": torch.__version__,
            "device": torch.cuda.get_device_name(0), "cases": [], "errors": []}


def tensor_entry(case_name, field, t):
    t = t.detach().to("cpu").contiguous()
    fname = f"{case_name}.{field}.bin"
    data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    with open(os.path.join(OUT, fname), "wb") as f:
        f.write(data)
    return {"file": fname, "dtype": ST_NAME[t.dtype], "shape": list(t.shape)}


def add_case(name, kind, params, tensors):
    entry = {"name": name, "kind": kind}
    entry.update(params)
    entry["tensors"] = {k: tensor_entry(name, k, v) for k, v in tensors.items() if v is not None}
    manifest["cases"].append(entry)


def section(fn):
    try:
        fn()
    except Exception:  # noqa: BLE001 - record and keep going
        manifest["errors"].append({"section": fn.__name__, "trace": traceback.format_exc()})
        print(traceback.format_exc(), file=sys.stderr)


def gen(n, seed):
    """Normal values with a per-64-chunk scale spread over 1e-3..1e3 (varied absmax)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g)
    scale = 10.0 ** (torch.rand((n + 63) // 64, generator=g) * 6 - 3)
    return x * scale.repeat_interleave(64)[:n]


def edge_input():
    """Blocks of 32 (so both blocksize 32 and 64 see them): zero, NaN, Inf, all-NaN, tiny, -Inf."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(32 * 14 + 19, generator=g)
    x[0:64] = 0.0                       # all-zero block (bs 32 and 64)
    x[64 + 5] = float("nan")            # one NaN
    x[96 + 3] = float("inf")            # one +Inf
    x[128:192] = float("nan")           # all-NaN block (bs 32 and 64)
    x[192:224] *= 1e-6                  # tiny values
    x[224 + 9] = float("-inf")          # one -Inf
    x[256:288] = -0.0                   # negative zeros
    x[288 + 1] = 1e-30                  # one tiny among zeros (fp16: 0)
    x[32 * 14:] = float("nan")          # partial last block, all NaN
    return x


def optional(fn):
    """Extra tensors that may fail (bnb CPU paths): errors are recorded, not fatal."""
    try:
        return fn()
    except Exception:  # noqa: BLE001
        manifest["errors"].append({"section": "optional", "trace": traceback.format_exc()})
        return {}


def cpu_4bit(x, packed, st, bs, qt):
    """bnb CPU backend: quantization (PyTorch default ops) and dequantization of the CUDA codes."""
    p_cpu, st_cpu = F.quantize_4bit(x.clone(), blocksize=bs, quant_type=qt)
    st_c = F.QuantState(absmax=st.absmax.cpu(), shape=st.shape, dtype=st.dtype, blocksize=bs,
                        code=st.code.cpu(), quant_type=qt)
    return {"packed_cpu": p_cpu, "absmax_cpu": st_cpu.absmax,
            "dequant_cpu": F.dequantize_4bit(packed.cpu(), st_c)}


def four_bit_case(x, dtype, qt, bs):
    xd = x.to(DEV)
    packed, st = F.quantize_4bit(xd, blocksize=bs, quant_type=qt)
    deq = F.dequantize_4bit(packed, st)
    t = {"input": x, "packed": packed, "absmax": st.absmax, "dequant_cuda": deq}
    if dtype == torch.float32 and bs == 64:
        t.update(optional(lambda: cpu_4bit(x, packed, st, bs, qt)))
    add_case(f"q4_{qt}_{DT_NAME[dtype]}_bs{bs}", "4bit",
             {"quant_type": qt, "dtype": DT_NAME[dtype], "blocksize": bs, "n": x.numel()}, t)


def four_bit():
    base = gen(5099, 1)  # odd; partial last block for every blocksize
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        x = base.to(dtype)
        for qt in ("nf4", "fp4"):
            for bs in (32, 64, 128, 4096):
                section(lambda: four_bit_case(x, dtype, qt, bs))


def four_bit_edges():
    base = edge_input()
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        x = base.to(dtype)
        for qt in ("nf4", "fp4"):
            for bs in (32, 64):
                packed, st = F.quantize_4bit(x.to(DEV), blocksize=bs, quant_type=qt)
                deq = F.dequantize_4bit(packed, st)
                add_case(f"edge4_{qt}_{DT_NAME[dtype]}_bs{bs}", "4bit",
                         {"quant_type": qt, "dtype": DT_NAME[dtype], "blocksize": bs,
                          "n": x.numel(), "edge": True},
                         {"input": x, "packed": packed, "absmax": st.absmax,
                          "dequant_cuda": deq})


def double_quant():
    for qt, dtype, bs, n in (("nf4", torch.bfloat16, 64, 64 * 600 + 22),
                             ("fp4", torch.float16, 128, 128 * 300 + 64),
                             ("nf4", torch.float32, 64, 64 * 40 + 2)):
        x = gen(n, 3 + n % 17).to(dtype)
        xd = x.to(DEV)
        _, plain = F.quantize_4bit(xd, blocksize=bs, quant_type=qt)
        packed, st = F.quantize_4bit(xd, blocksize=bs, quant_type=qt, compress_statistics=True)
        recon = F.dequantize_blockwise(st.absmax, st.state2) + st.offset
        deq = F.dequantize_4bit(packed, st)
        add_case(f"dq_{qt}_{DT_NAME[dtype]}_bs{bs}", "double_quant",
                 {"quant_type": qt, "dtype": DT_NAME[dtype], "blocksize": bs, "n": n,
                  "offset": st.offset.item(), "nested_blocksize": st.state2.blocksize},
                 {"input": x, "packed": packed, "absmax_plain": plain.absmax,
                  "absmax_codes": st.absmax, "nested_absmax": st.state2.absmax,
                  "nested_code": st.state2.code, "offset": st.offset.reshape(1),
                  "absmax_reconstructed": recon, "dequant_cuda": deq})


def eight_bit():
    base = gen(5099, 5)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        x = base.to(dtype)
        for bs in (64, 256, 4096):
            codes, st = F.quantize_blockwise(x.to(DEV), blocksize=bs)
            deq = F.dequantize_blockwise(codes, st)
            add_case(f"q8_{DT_NAME[dtype]}_bs{bs}", "8bit",
                     {"dtype": DT_NAME[dtype], "blocksize": bs, "n": x.numel()},
                     {"input": x, "codes": codes, "absmax": st.absmax, "code": st.code,
                      "dequant_cuda": deq})
    x = edge_input()
    codes, st = F.quantize_blockwise(x.to(DEV), blocksize=64)
    add_case("edge8_float32_bs64", "8bit",
             {"dtype": "float32", "blocksize": 64, "n": x.numel(), "edge": True},
             {"input": x, "codes": codes, "absmax": st.absmax, "code": st.code,
              "dequant_cuda": F.dequantize_blockwise(codes, st)})


def int8_weights_and_activations():
    g = torch.Generator().manual_seed(11)
    w = torch.randn(48, 200, generator=g) * 0.05
    w[3] = 0.0                      # zero row
    w[5, 7] = 2.0                   # one large weight
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        wd = w.to(dtype)
        cb, scb, _ = F.int8_vectorwise_quant(wd.to(DEV).to(torch.float16))
        add_case(f"int8w_{DT_NAME[dtype]}", "int8_weight",
                 {"dtype": DT_NAME[dtype], "rows": 48, "cols": 200},
                 {"input": wd, "cb": cb, "scb": scb,
                  "dequant_cuda": F.int8_vectorwise_dequant(cb, scb)})
    for m in (7, 1):
        x = torch.randn(m, 256, generator=g) * 1.5
        x[0, 3] = 9.0
        x[m - 1, 50] = -6.0         # exactly the threshold: an outlier (>=)
        x[m - 1, 51] = 5.99
        x16 = x.to(torch.float16)
        for thr in (6.0, 0.0):
            ca, sca, cols = F.int8_vectorwise_quant(x16.to(DEV), threshold=thr)
            add_case(f"int8a_m{m}_t{int(thr)}", "int8_act",
                     {"m": m, "k": 256, "threshold": thr},
                     {"input": x16, "ca": ca, "sca": sca,
                      "outlier_cols": cols if cols is not None else torch.empty(0, dtype=torch.int64)})


def cpu_mm_dequant(x, cb, scb, bias):
    """bnb CPU/default int8_mm_dequant (constant 6.200124e-05) on bnb's CUDA codes."""
    ca, sca, _ = F.int8_vectorwise_quant(x.to(DEV).to(torch.float16))
    c32 = F.int8_linear_matmul(ca, cb)
    y = torch.ops.bitsandbytes.int8_mm_dequant.default(
        c32.cpu(), sca.cpu(), scb.cpu(), dtype=torch.float16, bias=bias)
    return {"c_int32": c32, "y_cpu_mm_dequant": y}


def linear8bit():
    g = torch.Generator().manual_seed(13)
    k, n_out = 256, 48
    w = torch.randn(n_out, k, generator=g) * 0.05
    b = torch.randn(n_out, generator=g) * 0.1
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        for thr in (6.0, 0.0):
            for m in (7, 1):
                section(lambda: linear8bit_case(w, b, k, n_out, dtype, thr, m, g))


def linear8bit_case(w, b, k, n_out, dtype, thr, m, g):
    lin = bnb.nn.Linear8bitLt(k, n_out, bias=True, has_fp16_weights=False,
                              threshold=thr)
    lin.weight = bnb.nn.Int8Params(w.to(dtype).clone(), requires_grad=False,
                                   has_fp16_weights=False)
    lin.bias = torch.nn.Parameter(b.to(dtype).clone(), requires_grad=False)
    lin = lin.to(DEV)
    x = torch.randn(m, k, generator=g) * 1.5
    x[0, 10] = 8.0
    x[m - 1, 100] = -7.0
    x = x.to(dtype)
    with torch.no_grad():
        y = lin(x.to(DEV))
    # After the first forward bnb keeps CB/SCB in the layer's MatmulLtState.
    cb = lin.state.CB if lin.state.CB is not None else lin.weight.data
    scb = lin.state.SCB if lin.state.SCB is not None else lin.weight.SCB
    ca, sca, _ = F.int8_vectorwise_quant(x.to(DEV).to(torch.float16), threshold=thr)
    t = {"input": x, "bias": b.to(dtype), "cb": cb, "scb": scb, "ca": ca, "sca": sca,
         "y_cuda": y}
    if m == 7 and thr == 6.0:
        t["weight"] = w.to(dtype)
    name = f"lin8_{DT_NAME[dtype]}_t{int(thr)}_m{m}"
    if dtype == torch.float16 and thr == 0.0:
        t.update(optional(lambda: cpu_mm_dequant(x, cb, scb, b.to(dtype))))
    if dtype == torch.float16 and thr == 0.0 and m == 7:
        sd = {k2: v.detach().cpu().contiguous() for k2, v in lin.state_dict().items()}
        save_state_dict("sd_linear8bitlt_fp16", sd)
    add_case(name, "linear8bit",
             {"dtype": DT_NAME[dtype], "m": m, "k": k, "n": n_out, "threshold": thr},
             t)


def save_state_dict(name, sd):
    from safetensors.torch import save_file
    path = os.path.join(OUT, name + ".safetensors")
    save_file(sd, path)
    entry = {"name": name, "kind": "state_dict", "safetensors": name + ".safetensors",
             "keys": list(sd.keys()), "tensors": {}}
    for i, (key, v) in enumerate(sd.items()):
        e = tensor_entry(name, f"t{i}", v)
        e["key"] = key
        entry["tensors"][key] = e
    manifest["cases"].append(entry)


def linear4bit_state_dicts():
    g = torch.Generator().manual_seed(17)
    out_f, in_f = 48, 136   # 6528 elements, rows not multiples of 64: blocks straddle rows
    w = torch.randn(out_f, in_f, generator=g) * 0.05
    b = torch.randn(out_f, generator=g) * 0.1
    configs = (("sd_linear4bit_nf4_dq_bf16", "nf4", True, torch.uint8, torch.bfloat16),
               ("sd_linear4bit_fp4_bf16storage", "fp4", False, torch.bfloat16, torch.bfloat16),
               ("sd_linear4bit_nf4_fp16", "nf4", False, torch.uint8, torch.float16))
    for name, qt, dq, storage, dtype in configs:
        lin = bnb.nn.Linear4bit(in_f, out_f, bias=True, compute_dtype=dtype,
                                compress_statistics=dq, quant_type=qt, quant_storage=storage)
        lin.weight = bnb.nn.Params4bit(w.to(dtype).clone(), requires_grad=False,
                                       compress_statistics=dq, quant_type=qt,
                                       quant_storage=storage, module=lin)
        lin.bias = torch.nn.Parameter(b.to(dtype).clone(), requires_grad=False)
        lin = lin.to(DEV)
        sd = {k: v.detach().cpu().contiguous() for k, v in lin.state_dict().items()}
        save_state_dict(name, sd)
        t = {"weight": w.to(dtype)}
        t.update(optional(lambda: {"dequant_cuda": F.dequantize_4bit(lin.weight.data,
                                                                      lin.weight.quant_state)}))
        add_case(name + "_weights", "linear4bit",
                 {"quant_type": qt, "dtype": DT_NAME[dtype], "double_quant": dq,
                  "quant_storage": str(storage).split(".")[1], "shape": [out_f, in_f]}, t)


def quant_storage_bytes():
    x = gen(4096 + 256, 19).to(torch.bfloat16).to(DEV)
    p8, _ = F.quantize_4bit(x, blocksize=64, quant_type="nf4")
    for storage in (torch.bfloat16, torch.float16, torch.float32):
        p, st = F.quantize_4bit(x, blocksize=64, quant_type="nf4", quant_storage=storage)
        add_case(f"storage_{DT_NAME[storage]}", "quant_storage",
                 {"storage": DT_NAME[storage], "n": x.numel(),
                  "same_bytes_as_uint8": bool(torch.equal(p.view(torch.uint8).reshape(-1),
                                                          p8.reshape(-1)))},
                 {"packed": p, "packed_uint8": p8})


for fn in (four_bit, four_bit_edges, double_quant, eight_bit, int8_weights_and_activations,
           linear8bit, linear4bit_state_dicts, quant_storage_bytes):
    section(fn)

with open(os.path.join(OUT, "manifest.json"), "w") as f:
    json.dump(manifest, f, indent=1)
total = sum(os.path.getsize(os.path.join(OUT, p)) for p in os.listdir(OUT))
print(f"{len(manifest['cases'])} cases, {len(manifest['errors'])} errors, {total} bytes")
