#!/usr/bin/env python3
"""Trains kbitd's bundled default model: a small Llama-architecture causal LM that completes Python.

Reproducible on any CUDA machine with PyTorch + transformers + tokenizers (seed and corpus fixed):

    python3 tools/train_default_model.py --out models/default --minutes 6

Corpus: the Python standard library's own source (PSF licence), i.e. every ``*.py`` file under the
running interpreter's ``sysconfig.get_paths()["stdlib"]``, sorted by relative path, excluding test
suites, site-packages and generated/legacy packages (see EXCLUDED_DIRS). By CRC-32 of the relative
path modulo 20: remainder 0 is held out for evaluation (heldout.txt), remainder 1 is the
validation set used for early stopping (the corpus is small, ~2.4M tokens, so the checkpoint with
the best validation loss is kept), the rest train.

Besides the model folder (config.json, model.safetensors in bf16, tokenizer.json), it writes:
- heldout.txt: the first HELDOUT_CHARS of held-out text (for perplexity evaluation);
- reference.json: transformers' greedy completions (fp32 on the CPU) of fixed prompts, the bf16
  held-out perplexity, and, when bitsandbytes is importable, transformers + bitsandbytes held-out
  perplexities for NF4, NF4 + double quant, FP4 and LLM.int8 (bnb's column of docs/quality.md).
"""
import argparse
import json
import math
import os
import platform
import sys
import sysconfig
import time
import zlib

import warnings

import torch

warnings.filterwarnings("ignore")

EXCLUDED_DIRS = ("test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3",
                 "__pycache__", "turtledemo", "ensurepip", "tkinter", "pydoc_data")
HELDOUT_MODULUS = 20
HELDOUT_CHARS = 120_000
SEED = 1234
PROMPTS = [
    "def fibonacci(n):\n",
    "import os\n\n\ndef list_files(path):\n",
    "class Stack:\n    def __init__(self):\n",
]


def collect_corpus():
    root = sysconfig.get_paths()["stdlib"]
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS)
        for name in sorted(filenames):
            if name.endswith(".py"):
                full = os.path.join(dirpath, name)
                files.append(os.path.relpath(full, root))
    files.sort()
    train, validation, heldout = [], [], []
    for rel in files:
        with open(os.path.join(root, rel), encoding="utf-8", errors="replace") as f:
            text = f.read()
        bucket = zlib.crc32(rel.encode()) % HELDOUT_MODULUS
        (heldout if bucket == 0 else validation if bucket == 1 else train).append(text)
    return root, files, train, validation, heldout


def train_tokenizer(texts, vocab_size):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


@torch.no_grad()
def perplexity(model, ids, device, dtype_ctx, window=512):
    model.eval()
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        chunk = ids[start:start + window + 1]
        if len(chunk) < 2:
            break
        x = torch.tensor(chunk[:-1], device=device)[None]
        y = torch.tensor(chunk[1:], device=device)[None]
        with dtype_ctx():
            logits = model(x).logits.float()
        nll = torch.nn.functional.cross_entropy(logits[0], y[0], reduction="sum")
        total_nll += nll.item()
        total_tokens += y.numel()
    return math.exp(total_nll / total_tokens), total_tokens


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--minutes", type=float, default=6.0)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()

    torch.manual_seed(SEED)
    from transformers import LlamaConfig, LlamaForCausalLM
    import transformers
    transformers.logging.set_verbosity_error()

    root, files, train_texts, validation_texts, heldout_texts = collect_corpus()
    print(f"corpus: {len(files)} files under {root}; train {len(train_texts)}, "
          f"validation {len(validation_texts)}, held out {len(heldout_texts)}", flush=True)
    tok = train_tokenizer(train_texts, args.vocab)
    eos = tok.token_to_id("<|endoftext|>")
    train_ids = []
    for encoding in tok.encode_batch(train_texts):
        train_ids.extend(encoding.ids)
        train_ids.append(eos)
    heldout_text = "".join(t + "\n" for t in heldout_texts)[:HELDOUT_CHARS]
    heldout_ids = tok.encode(heldout_text).ids
    validation_ids = tok.encode("".join(t + "\n" for t in validation_texts)[:HELDOUT_CHARS]).ids
    print(f"train tokens {len(train_ids)}, held-out tokens {len(heldout_ids)}", flush=True)

    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=args.hidden,
        intermediate_size=args.hidden * 8 // 3 // 64 * 64, num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64, num_key_value_heads=max(1, args.hidden // 64 // 3),
        max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=True, bos_token_id=eos, eos_token_id=eos, attention_dropout=0.1)
    device = "cuda"
    model = LlamaForCausalLM(config).to(device)
    params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {params}", flush=True)
    data = torch.tensor(train_ids, dtype=torch.long, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    generator = torch.Generator(device=device).manual_seed(SEED)
    budget = args.minutes * 60
    start = time.time()
    step, warmup = 0, 100
    autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    best_loss, best_state, best_step = float("inf"), None, 0
    model.train()
    while True:
        elapsed = time.time() - start
        if elapsed > budget:
            break
        progress = elapsed / budget
        lr = 1e-3 * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, data.numel() - args.seq - 1, (args.batch,), device=device,
                            generator=generator)
        offsets = torch.arange(args.seq + 1, device=device)
        batch = data[idx[:, None] + offsets[None, :]]
        with autocast():
            logits = model(batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)),
                                                 batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 0:
            val_ppl, _ = perplexity(model, validation_ids, device, autocast)
            model.train()
            val_loss = math.log(val_ppl)
            if val_loss < best_loss:
                best_loss, best_step = val_loss, step
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            print(f"step {step} t={elapsed:.0f}s loss {loss.item():.3f} val {val_loss:.3f} "
                  f"lr {lr:.2e}", flush=True)
            if step - best_step >= 600:
                print("validation loss stopped improving; stopping early", flush=True)
                break
        step += 1
    print(f"trained {step} steps, {step * args.batch * args.seq} tokens; best validation loss "
          f"{best_loss:.3f} at step {best_step}", flush=True)
    model.load_state_dict(best_state)

    os.makedirs(args.out, exist_ok=True)
    model = model.to(torch.bfloat16)
    model.config.torch_dtype = torch.bfloat16
    model.save_pretrained(args.out, safe_serialization=True)
    tok.save(os.path.join(args.out, "tokenizer.json"))
    with open(os.path.join(args.out, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|endoftext|>",
                   "eos_token": "<|endoftext|>", "model_max_length": 2048}, f, indent=2)
    with open(os.path.join(args.out, "heldout.txt"), "w", encoding="utf-8") as f:
        f.write(heldout_text)

    reference = {
        "seed": SEED, "train_steps": step, "best_step": best_step,
        "best_validation_loss": best_loss, "train_tokens_seen": step * args.batch * args.seq,
        "parameters": params, "python": platform.python_version(),
        "torch": torch.__version__, "stdlib_root": root, "files": len(files),
        "heldout_files": len(heldout_texts), "heldout_chars": len(heldout_text),
    }
    bf16_model = LlamaForCausalLM.from_pretrained(args.out, dtype=torch.bfloat16).to(device)
    ppl, n = perplexity(bf16_model, heldout_ids, device, lambda: torch.autocast("cuda", enabled=False))
    reference["heldout_tokens"] = n
    reference["perplexity"] = {"bf16": ppl}
    print(f"held-out perplexity bf16: {ppl:.3f} over {n} tokens", flush=True)

    # Greedy completions with transformers in fp32 on the CPU: what kbitd's CPU backend computes.
    cpu_model = LlamaForCausalLM.from_pretrained(args.out, dtype=torch.float32)
    completions = []
    for prompt in PROMPTS:
        ids = tok.encode(prompt).ids
        out = cpu_model.generate(torch.tensor([ids]), max_new_tokens=48, do_sample=False,
                                 pad_token_id=eos, eos_token_id=None)
        new_ids = out[0, len(ids):].tolist()
        completions.append({"prompt": prompt, "prompt_ids": ids, "greedy_ids": new_ids,
                            "greedy_text": tok.decode(new_ids)})
        print(repr(prompt + tok.decode(new_ids)), flush=True)
    reference["greedy_fp32_cpu"] = completions

    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
        reference["bitsandbytes"] = bitsandbytes.__version__
        variants = {
            "nf4": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                      bnb_4bit_compute_dtype=torch.bfloat16),
            "nf4-dq": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                         bnb_4bit_use_double_quant=True,
                                         bnb_4bit_compute_dtype=torch.bfloat16),
            "fp4": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="fp4",
                                      bnb_4bit_compute_dtype=torch.bfloat16),
            "int8": BitsAndBytesConfig(load_in_8bit=True),
        }
        footprints = {"bf16": bf16_model.get_memory_footprint()}
        for name, qconfig in variants.items():
            qmodel = LlamaForCausalLM.from_pretrained(args.out, quantization_config=qconfig,
                                                      dtype=torch.bfloat16,
                                                      device_map={"": 0})
            qppl, _ = perplexity(qmodel, heldout_ids, device,
                                 lambda: torch.autocast("cuda", enabled=False))
            reference["perplexity"][name] = qppl
            footprints[name] = qmodel.get_memory_footprint()
            print(f"held-out perplexity {name}: {qppl:.3f}", flush=True)
            del qmodel
        reference["memory_footprint_bytes"] = footprints
    except ImportError as error:
        print(f"bitsandbytes not importable ({error}); skipping quantized perplexities",
              file=sys.stderr)
    with open(os.path.join(args.out, "reference.json"), "w") as f:
        json.dump(reference, f, indent=2)


if __name__ == "__main__":
    main()
