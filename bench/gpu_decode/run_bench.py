#!/usr/bin/env python3
"""Decode tokens/s on one GPU, in one run: kbitd's engine (gpu_decode_bench) against transformers
+ bitsandbytes on the same checkpoint, and both against the roofline (bytes a step must read over
the measured read bandwidth).

The checkpoint is a random-weight Llama-3-8B-shaped model (hidden 4096, 32 layers, intermediate
14336, 32 heads, 8 KV heads, vocab 128256, untied lm_head) written in bf16 by transformers when
--dir does not hold one yet. transformers + bitsandbytes: from_pretrained with BitsAndBytesConfig
(NF4, bf16 compute, lm_head kept in bf16 as transformers does), greedy generate; the per-token
time is (t(N tokens) - t(1 token)) / (N - 1), median of 3, as in ../shared/reference/
h200-anchors.md §C. bitsandbytes comes from its wheel's files on PYTHONPATH.

usage: run_bench.py --bench PATH/gpu_decode_bench --read_gbps N [--dir D] [--tokens 64]
                    [--formats bf16,nf4,nf4-dq] [--batch 1,8] [--no-hf] [--hf_formats nf4]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                 rope_theta=500000.0, max_position_embeddings=8192, tie_word_embeddings=False)


def write_checkpoint(path, layers):
    if os.path.exists(os.path.join(path, 'config.json')):
        return
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(**dict(LLAMA3_8B, num_hidden_layers=layers))
    with torch.device('cuda'):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    started = time.time()
    model.save_pretrained(path)
    print(f'checkpoint written in {time.time() - started:.1f} s', file=sys.stderr, flush=True)
    del model
    torch.cuda.empty_cache()


def hf_decode(path, quant, tokens, prompt):
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    kwargs = dict(dtype=torch.bfloat16, device_map={'': 0})
    if quant:
        kwargs['quantization_config'] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type='nf4', bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=quant == 'nf4-dq')
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    ids = torch.tensor([[1 + (i * 17) % 1000 for i in range(prompt)]], device='cuda')

    def generate(n):
        torch.cuda.synchronize()
        started = time.time()
        model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        torch.cuda.synchronize()
        return time.time() - started

    generate(tokens)  # warm-up
    full = statistics.median(generate(tokens) for _ in range(3))
    one = statistics.median(generate(1) for _ in range(3))
    del model
    torch.cuda.empty_cache()
    return (full - one) / (tokens - 1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--bench', required=True)
    parser.add_argument('--read_gbps', type=float, required=True)
    parser.add_argument('--dir', default='/tmp/kbitd_llama3_8b_shape')
    parser.add_argument('--layers', type=int, default=32)
    parser.add_argument('--tokens', type=int, default=64)
    parser.add_argument('--prompt', type=int, default=16)
    parser.add_argument('--formats', default='bf16,nf4,nf4-dq')
    parser.add_argument('--batch', default='1,8')
    parser.add_argument('--no-hf', action='store_true')
    parser.add_argument('--hf_formats', help='formats to run in transformers (default: --formats)')
    parser.add_argument('--json')
    args = parser.parse_args()
    write_checkpoint(args.dir, args.layers)
    out = subprocess.run([args.bench, '--dir', args.dir, '--formats', args.formats, '--batch',
                          args.batch, '--tokens', str(args.tokens), '--prompt', str(args.prompt),
                          '--read_gbps', str(args.read_gbps)], capture_output=True, text=True)
    sys.stderr.write(out.stderr[-3000:])
    ours = [json.loads(line) for line in out.stdout.splitlines() if line.startswith('{')]
    for r in ours:
        print(json.dumps(r), flush=True)
    hf = {}
    if not args.no_hf:
        for fmt in (args.hf_formats or args.formats).split(','):
            try:
                hf[fmt] = hf_decode(args.dir, None if fmt == 'bf16' else fmt, args.tokens, args.prompt)
                print(json.dumps({'hf_format': fmt, 'ms_per_token': hf[fmt] * 1e3,
                                  'tokens_per_s': 1 / hf[fmt]}), flush=True)
            except Exception as e:  # noqa: BLE001 - report and go on with the other formats
                print(f'transformers {fmt}: {e}', file=sys.stderr, flush=True)
    print('\n| format | batch | kbitd tok/s | ms/step | % of roofline | transformers+bnb tok/s | kbitd vs HF |')
    print('|---|---:|---:|---:|---:|---:|---:|')
    for r in ours:
        h = hf.get(r['format']) if r['batch'] == 1 else None
        print(f"| {r['format']} | {r['batch']} | {r['tokens_per_s']:.1f} | {r['ms_per_step']:.2f} | "
              f"{r['pct_roofline']:.0f} % | " + (f'{1 / h:.1f} | {r["tokens_per_s"] * h:.1f}x |' if h else ' | |'))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'kbitd': ours, 'hf_seconds_per_token': hf}, f, indent=1)
    return out.returncode


if __name__ == '__main__':
    sys.exit(main())
