#!/usr/bin/env python3
"""Side-by-side quantization benchmark on one GPU: kbitd's CUDA kernels (quant_cuda_bench) vs
bitsandbytes on the same tensors, next to the device's measured copy bandwidth.

For each shape and dtype this script draws one random tensor with torch, writes its raw bytes,
times bitsandbytes on it (CUDA events around every call, warm-up, a sleep kernel ahead of each
batch so that Python launch overhead is not timed, median over trials x reps, buffer rotation over
4x the L2), runs quant_cuda_bench on the same bytes with the same method, checks our packed codes,
absmax and dequantized values against bitsandbytes', and prints a markdown table.

usage: run_bench.py --bench build/bench/quant_cuda/quant_cuda_bench
           [--shapes 4096x4096,8192x8192] [--dtypes bf16,fp16] [--blocksize 64] [--quant nf4]
           [--json results.json]
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "f32": torch.float32}


def time_us(fn, sets, reps=20, trials=7):
    """Median microseconds of fn(set_index) over trials x reps calls, each between two events."""
    for w in range(3):
        fn(w % sets)
    start = [torch.cuda.Event(enable_timing=True) for _ in range(reps + 1)]
    samples = []
    k = 0
    for _ in range(trials):
        torch.cuda._sleep(int(3e6))  # keeps the GPU busy while the batch is queued
        for r in range(reps):
            start[r].record()
            fn(k % sets)
            k += 1
        start[reps].record()
        start[reps].synchronize()
        samples += [1000.0 * start[r].elapsed_time(start[r + 1]) for r in range(reps)]
    samples.sort()
    return samples[len(samples) // 2]


def bnb_measurements(A, blocksize, quant):
    import bitsandbytes.functional as F

    ops = torch.ops.bitsandbytes
    n = A.numel()
    in_bytes = n * A.element_size()
    nblocks = -(n // -blocksize)
    footprint = in_bytes + (n + 1) // 2 + 4 * nblocks
    l2 = torch.cuda.get_device_properties(A.device).L2_cache_size
    sets = max(2, math.ceil(4 * l2 / footprint))
    As = [A.clone() for _ in range(sets)]
    outs = [torch.empty_like(A) for _ in range(sets)]
    q = [ops.quantize_4bit.default(a, blocksize, quant, torch.uint8) for a in As]
    nested = [F.quantize_4bit(a, blocksize=blocksize, compress_statistics=True, quant_type=quant)
              for a in As]
    q8 = [F.quantize_blockwise(a, blocksize=4096) for a in As]
    halves = [a.half() for a in As]
    moved4 = in_bytes + (n + 1) // 2 + 4 * nblocks
    moved_nested = moved4 + 5 * nblocks
    moved8 = in_bytes + n + 4 * (-(n // -4096))
    moved_int8 = n * 2 + n + 4 * A.shape[0]
    res = []

    def add(op, moved, fn, variant="torch op"):
        res.append({"op": op, "impl": "bnb", "variant": variant, "us": time_us(fn, sets),
                    "n": n, "bytes_moved": moved})

    add("copy", 2 * in_bytes, lambda i: outs[i].copy_(As[i]), "torch copy_")
    add("quantize", moved4, lambda i: ops.quantize_4bit.default(As[i], blocksize, quant, torch.uint8))
    add("dequantize", moved4, lambda i: ops.dequantize_4bit.out(
        q[i][0], q[i][1], blocksize, quant, list(A.shape), A.dtype, out=outs[i]))
    add("quantize_nested", moved_nested, lambda i: F.quantize_4bit(
        As[i], blocksize=blocksize, compress_statistics=True, quant_type=quant), "functional")
    add("dequantize_nested", moved_nested, lambda i: F.dequantize_4bit(
        nested[i][0], nested[i][1], out=outs[i]), "functional")
    add("quantize_8bit", moved8, lambda i: F.quantize_blockwise(As[i], blocksize=4096), "functional")
    add("dequantize_8bit", moved8, lambda i: F.dequantize_blockwise(q8[i][0], q8[i][1],
                                                                    out=outs[i]), "functional")
    add("quantize_int8", moved_int8, lambda i: F.int8_vectorwise_quant(halves[i]),
        "fp16 input (conversion not timed)")
    torch.cuda.synchronize()
    packed, absmax = q[0]
    ref_out = torch.empty_like(A)
    ops.dequantize_4bit.out(packed, absmax, blocksize, quant, list(A.shape), A.dtype, out=ref_out)
    torch.cuda.synchronize()
    return res, packed.cpu().flatten().numpy(), absmax.cpu().numpy(), ref_out


def compare_with_bnb(dump, bnb_packed, bnb_absmax, bnb_dequant, A):
    import numpy as np

    ours_packed = np.fromfile(os.path.join(dump, "packed.bin"), dtype=np.uint8)
    ours_absmax = np.fromfile(os.path.join(dump, "absmax.bin"), dtype=np.float32)
    ours_out = np.fromfile(os.path.join(dump, "dequant.bin"), dtype=np.uint8)
    hi = (ours_packed >> 4) != (bnb_packed >> 4)
    lo = (ours_packed & 15) != (bnb_packed & 15)
    bnb_out = bnb_dequant.contiguous().view(torch.uint8).cpu().numpy().reshape(-1)
    width = A.element_size()
    differ = (ours_out.reshape(-1, width) != bnb_out.reshape(-1, width)).any(axis=1)
    return {
        "absmax_identical": bool(np.array_equal(ours_absmax.view(np.uint32),
                                                bnb_absmax.view(np.uint32))),
        "code_mismatches": int(hi.sum() + lo.sum()),
        "codes": int(A.numel()),
        "dequant_mismatches": int(differ.sum()),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", required=True)
    ap.add_argument("--shapes", default="4096x4096,8192x8192")
    ap.add_argument("--dtypes", default="bf16,fp16")
    ap.add_argument("--blocksize", type=int, default=64)
    ap.add_argument("--quant", default="nf4")
    ap.add_argument("--json", default="")
    args = ap.parse_args()

    import bitsandbytes

    rows_out = []
    checks = []
    device = torch.cuda.get_device_name(0)
    for shape in args.shapes.split(","):
        r, c = (int(v) for v in shape.split("x"))
        for dname in args.dtypes.split(","):
            dtype = DTYPES[dname]
            g = torch.Generator(device="cuda").manual_seed(r * 31 + c)
            A = torch.randn(r, c, dtype=dtype, device="cuda", generator=g)
            bnb_res, bnb_packed, bnb_absmax, bnb_out = bnb_measurements(A, args.blocksize, args.quant)
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "input.bin")
                A.contiguous().view(torch.uint8).cpu().numpy().tofile(path)
                out = subprocess.run(
                    [args.bench, f"--rows={r}", f"--cols={c}", f"--dtype={dname}",
                     f"--blocksize={args.blocksize}", f"--quant={args.quant}", f"--input={path}",
                     f"--dump={tmp}"], capture_output=True, text=True)
                if out.returncode != 0:
                    sys.exit(f"quant_cuda_bench failed: {out.stderr}")
                ours = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
                check = compare_with_bnb(tmp, bnb_packed, bnb_absmax, bnb_out, A)
            check.update(shape=shape, dtype=dname)
            checks.append(check)
            for m in ours + bnb_res:
                if "op" in m:
                    m.update(shape=shape, dtype=dname)
                    rows_out.append(m)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, "bitsandbytes": bitsandbytes.__version__,
                       "torch": torch.__version__, "blocksize": args.blocksize,
                       "quant": args.quant, "measurements": rows_out, "checks": checks}, f,
                      indent=1)
    print_table(rows_out, checks, device, args)


def print_table(rows, checks, device, args):
    def find(shape, dtype, op, impl, variant=None):
        for m in rows:
            if (m["shape"], m["dtype"], m["op"], m["impl"]) == (shape, dtype, op, impl) and (
                    variant is None or m["variant"] == variant):
                return m
        return None

    print(f"\n{device}; {args.quant}, blocksize {args.blocksize}; bitsandbytes "
          f"{__import__('bitsandbytes').__version__}; GB = 1e9 bytes; median of 7x20 calls\n")
    print("| shape | dtype | op | kbitd us | bnb us | kbitd / bnb speed | kbitd GB/s of 16-bit data"
          " | kbitd GB/s moved | % of copy |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for check in checks:
        shape, dtype = check["shape"], check["dtype"]
        copy = find(shape, dtype, "copy", "kbitd")
        copy_bw = copy["bytes_moved"] / copy["us"] / 1e3
        print(f"| {shape} | {dtype} | copy (cudaMemcpy, read+write) | {copy['us']:.1f} | | | | "
              f"{copy_bw:.0f} | 100 |")
        for op in ("quantize", "dequantize", "quantize_nested", "dequantize_nested",
                   "quantize_8bit", "dequantize_8bit", "quantize_int8", "dequantize_int8"):
            ours = find(shape, dtype, op, "kbitd", "api")
            bnb = find(shape, dtype, op, "bnb")
            if ours is None:
                continue
            n16 = ours["n"] * 2 / ours["us"] / 1e3
            moved = ours["bytes_moved"] / ours["us"] / 1e3
            b = f"{bnb['us']:.1f}" if bnb else "-"
            ratio = f"{bnb['us'] / ours['us']:.2f}x" if bnb else "-"
            print(f"| {shape} | {dtype} | {op} | {ours['us']:.1f} | {b} | {ratio} | {n16:.0f} | "
                  f"{moved:.0f} | {100 * moved / copy_bw:.0f} |")
    print("\nvariants (kbitd):")
    for m in rows:
        if m["impl"] == "kbitd" and m["variant"] not in ("api", "cudaMemcpyAsync"):
            print(f"  {m['shape']} {m['dtype']} {m['op']} {m['variant']}: {m['us']:.1f} us")
    for m in rows:
        if m["impl"] == "bnb" and m["op"] == "copy":
            print(f"  {m['shape']} {m['dtype']} torch copy_: {m['us']:.1f} us = "
                  f"{m['bytes_moved'] / m['us'] / 1e3:.0f} GB/s")
    print("\nbyte comparison with bitsandbytes (its --use_fast_math reciprocal vs our IEEE one):")
    for c in checks:
        print(f"  {c['shape']} {c['dtype']}: absmax identical {c['absmax_identical']}; "
              f"{c['code_mismatches']} of {c['codes']} codes differ; "
              f"{c['dequant_mismatches']} dequantized values differ")


if __name__ == "__main__":
    main()
