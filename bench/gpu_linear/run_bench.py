#!/usr/bin/env python3
"""Side by side on one GPU, in one run: kbitd's fused 4-bit linear (gpu_linear_bench), cuBLASLt
bf16, and bitsandbytes' matmul_4bit (the call Linear4bit makes) on Llama-3-8B's linear shapes.

Same method for both: 32 layers of distinct weights per shape, one CUDA graph per measurement
(a shape's 32 calls, or the whole step's 224), median of 20 replays timed with CUDA events; the
bandwidth limit is gpu_linear_bench's measured 4 GiB read. bitsandbytes comes from its PyPI
wheel's files on PYTHONPATH (it is not installed on the GPU machine); without it the table has
kbitd and cuBLAS only.

usage: run_bench.py --bench PATH/gpu_linear_bench [--rows 1,4,16] [--json OUT.json]
                    [--variants 8/4/32,4/8/16] [--no-bnb]
"""
import argparse
import json
import statistics
import subprocess
import sys

SHAPES = [('q', 4096, 4096), ('k', 1024, 4096), ('v', 1024, 4096), ('o', 4096, 4096),
          ('gate', 14336, 4096), ('up', 14336, 4096), ('down', 4096, 14336)]
LAYERS = 32


def run_kbitd(bench, rows, variants):
    command = [bench, f'--rows={rows}'] + ([f'--variants={variants}'] if variants else [])
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    results = [json.loads(line) for line in out.stdout.splitlines() if line.startswith('{')]
    for r in results:
        if 'check' in r or 'variant' in r or 'device' in r:
            print(json.dumps(r), flush=True)
    return results


def graph_ms(torch, step, reps=20):
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # warm-up outside the graph (lazy init, autotuning)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    times = []
    for r in range(reps + 3):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        stop.record()
        stop.synchronize()
        if r >= 3:
            times.append(start.elapsed_time(stop))
    return statistics.median(times)


def run_bnb(rows):
    try:
        import torch
        import bitsandbytes as bnb
        import bitsandbytes.functional as F
    except ImportError as e:
        print(f'bitsandbytes not measured: {e}', file=sys.stderr)
        return []
    gen = torch.Generator(device='cuda').manual_seed(1)
    results = []
    for quant, nested in (('nf4', False), ('nf4', True), ('fp4', False)):
        path = 'bnb_' + quant + ('_dq' if nested else '')
        layers = []
        for _ in range(LAYERS):
            row = []
            for _, n, k in SHAPES:
                w = torch.empty(n, k, dtype=torch.bfloat16, device='cuda').normal_(0, 0.02, generator=gen)
                packed, state = F.quantize_4bit(w, blocksize=64, compress_statistics=nested,
                                                quant_type=quant)
                del w
                row.append((packed, state))
            layers.append(row)
        for m in rows:
            x4 = torch.randn(m, 4096, dtype=torch.bfloat16, device='cuda', generator=gen)
            x14 = torch.randn(m, 14336, dtype=torch.bfloat16, device='cuda', generator=gen)
            for s, (name, n, k) in enumerate(SHAPES):
                if name in ('v', 'up'):
                    continue
                x = x14 if k == 14336 else x4

                def shape_step(s=s, x=x):
                    for layer in layers:
                        packed, state = layer[s]
                        bnb.matmul_4bit(x, packed.t(), state)
                ms = graph_ms(torch, shape_step)
                results.append({'path': path, 'm': m, 'shape': name, 'us_per_call': ms * 1e3 / LAYERS})

            def step():
                for layer in layers:
                    for s, (_, n, k) in enumerate(SHAPES):
                        packed, state = layer[s]
                        bnb.matmul_4bit(x14 if k == 14336 else x4, packed.t(), state)
            results.append({'path': path, 'm': m, 'shape': 'step', 'ms': graph_ms(torch, step)})
        del layers
        torch.cuda.empty_cache()
    return results


def table(results, read_gbps):
    def time_of(path, m, shape):
        for r in results:
            if r.get('path') == path and r.get('m') == m and r.get('shape') == shape:
                return r.get('ms', r.get('us_per_call'))
        return None

    rows = sorted({r['m'] for r in results if 'shape' in r})
    lines = []
    for m in rows:
        lines.append(f'\nM = {m}: step of {LAYERS * len(SHAPES)} linears (ms), and µs per call by shape')
        lines.append('| path | step ms | % of read BW | vs cuBLAS bf16 | vs bnb | ' +
                     ' | '.join(n for n, _, _ in SHAPES if n not in ('v', 'up')) + ' |')
        lines.append('|---' * (5 + 5) + '|')
        bf16 = time_of('bf16', m, 'step')
        for path in ('bf16', 'nf4', 'nf4_dq', 'fp4', 'nf4_dequant_cublas', 'bnb_nf4', 'bnb_nf4_dq',
                     'bnb_fp4'):
            ms = time_of(path, m, 'step')
            if ms is None:
                continue
            ours = next((r for r in results if r.get('path') == path and r.get('m') == m
                         and r.get('shape') == 'step'), {})
            if path.startswith('bnb_'):  # the same bytes as kbitd's copy of the format
                mine = next((r for r in results if r.get('path') == path[4:] and r.get('m') == m
                             and r.get('shape') == 'step'), {})
                if 'GB' in mine:
                    ours = {'pct_read': 100 * mine['GB'] / (ms * 1e-3) / read_gbps}
            pct = f"{ours['pct_read']:.0f} %" if 'pct_read' in ours else ''
            peer = {'nf4': 'bnb_nf4', 'nf4_dq': 'bnb_nf4_dq', 'fp4': 'bnb_fp4'}.get(path)
            vs_bnb = time_of(peer, m, 'step') if peer else None
            shapes = ' | '.join(
                f"{time_of(path, m, n):.1f}" if time_of(path, m, n) else '' for n, _, _ in SHAPES
                if n not in ('v', 'up'))
            lines.append(f'| {path} | {ms:.3f} | {pct} | {bf16 / ms:.2f}x | ' +
                         (f'{vs_bnb / ms:.2f}x' if vs_bnb else '') + f' | {shapes} |')
    return '\n'.join(lines)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--bench', required=True)
    parser.add_argument('--rows', default='1,4,16')
    parser.add_argument('--json')
    parser.add_argument('--no-bnb', action='store_true')
    parser.add_argument('--variants', default='', help='fused-kernel launch shapes to compare')
    args = parser.parse_args()
    rows = [int(r) for r in args.rows.split(',')]
    results = run_kbitd(args.bench, args.rows, args.variants)
    header = next(r for r in results if 'device' in r)
    if not args.no_bnb:
        results += run_bnb(rows)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=1)
    print(table(results, header['read_GBps']))


if __name__ == '__main__':
    main()
