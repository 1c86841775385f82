#!/usr/bin/env python3
"""Encoding speed of kbitd's tokenizer (kbitd_tokenize --bench) against Hugging Face `tokenizers`
on the same text, one thread each, printed side by side.

Usage: python3 tools/kbitd_tokenize/bench.py [--build build] [--lines 20000] [--repeat 3]
The text is the deterministic training corpus of tools/golden/make_tokenizers.py (English, code,
multilingual and mixed lines). `tokenizers` runs encode_batch with RAYON_NUM_THREADS=1 (its Rust
core with one Python call), and also one encode() call per line (what a Python server pays).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools", "golden"))
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

from make_tokenizers import training_lines  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--build", default=os.environ.get("KBITD_BUILD_DIR", "build"))
    parser.add_argument("--lines", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    cli = os.path.join(args.build, "tools", "kbitd_tokenize", "kbitd_tokenize")
    lines = (training_lines(seed=99) * (args.lines // 4000 + 1))[:args.lines]
    text = "\n".join(lines) + "\n"
    nbytes = len(text.encode("utf-8")) - len(lines)  # the CLI does not count newlines
    print(f"corpus: {len(lines)} lines, {nbytes / 1e6:.2f} MB, repeat {args.repeat}")
    print(f"{'tokenizer':18} {'kbitd MB/s':>11} {'tokenizers batch':>17} {'tokenizers loop':>16}"
          f" {'kbitd/batch':>12} {'kbitd/loop':>11}")
    with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf-8", delete=False) as f:
        f.write(text)
        path = f.name
    try:
        for name in ["gpt2_bytelevel", "llama3_regex", "llama2_metaspace"]:
            tok_path = os.path.join(ROOT, "tests", "data", "tokenizers", name + ".json")
            out = subprocess.run([cli, "--tokenizer", tok_path, "--bench", path, "--repeat",
                                  str(args.repeat)], capture_output=True, text=True, check=True)
            ours = json.loads(out.stdout)
            ref = Tokenizer.from_file(tok_path)
            start = time.perf_counter()
            tokens = 0
            for _ in range(args.repeat):
                tokens += sum(len(e.ids) for e in ref.encode_batch(lines, add_special_tokens=False))
            batch = nbytes * args.repeat / 1e6 / (time.perf_counter() - start)
            start = time.perf_counter()
            for _ in range(args.repeat):
                for line in lines:
                    ref.encode(line, add_special_tokens=False)
            loop = nbytes * args.repeat / 1e6 / (time.perf_counter() - start)
            if tokens != ours["tokens"]:
                sys.exit(f"{name}: token counts differ ({ours['tokens']} vs {tokens})")
            mbs = ours["mb_per_s"]
            print(f"{name:18} {mbs:11.2f} {batch:17.2f} {loop:16.2f} {mbs / batch:12.2f}"
                  f" {mbs / loop:11.2f}")
    finally:
        os.unlink(path)


if __name__ == "__main__":
    main()
