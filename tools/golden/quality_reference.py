#!/usr/bin/env python3
"""bitsandbytes' column of docs/quality.md, measured on the GPU machine (transformers + bnb).

  quality_reference.py MODEL_DIR OUT_JSON

For each format (bf16/fp32 unquantized, NF4, NF4 + double quant, FP4, LLM.int8) and each compute
dtype (bfloat16 as the model was trained, float32 as kbitd's CPU backend computes) it records the
held-out perplexity of MODEL_DIR/heldout.txt with the protocol of tools/train_default_model.py
(tokenizers encoding of the whole text, non-overlapping windows of 512 predicted tokens, mean NLL
over all predicted tokens), the memory footprint, and greedy completions of the model's reference
prompts. kbitd's `kbitq eval` uses the same protocol, so the two columns compare like for like.
"""
import contextlib
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from train_default_model import perplexity  # noqa: E402  (the protocol the model was scored with)

WINDOW = 512
MAX_NEW_TOKENS = 48


def main():
    model_dir, out_json = sys.argv[1], sys.argv[2]
    import bitsandbytes
    import transformers
    from tokenizers import Tokenizer
    from transformers import BitsAndBytesConfig, LlamaForCausalLM
    transformers.logging.set_verbosity_error()

    tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    text = open(f"{model_dir}/heldout.txt", encoding="utf-8").read()
    ids = tok.encode(text).ids
    reference = json.load(open(f"{model_dir}/reference.json"))
    prompts = [g["prompt"] for g in reference["greedy_fp32_cpu"]]

    result = {"bitsandbytes": bitsandbytes.__version__, "transformers": transformers.__version__,
              "torch": torch.__version__, "device": torch.cuda.get_device_name(0),
              "window": WINDOW, "heldout_tokens": len(ids) - 1, "runs": []}
    for compute in ("bfloat16", "float32"):
        dtype = getattr(torch, compute)
        variants = {
            "none": None,
            "nf4": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                      bnb_4bit_compute_dtype=dtype),
            "nf4-dq": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                         bnb_4bit_use_double_quant=True,
                                         bnb_4bit_compute_dtype=dtype),
            "fp4": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="fp4",
                                      bnb_4bit_compute_dtype=dtype),
            "int8": BitsAndBytesConfig(load_in_8bit=True),
        }
        for name, qconfig in variants.items():
            kwargs = {"dtype": dtype, "device_map": {"": 0}}
            if qconfig is not None:
                kwargs["quantization_config"] = qconfig
            model = LlamaForCausalLM.from_pretrained(model_dir, **kwargs).eval()
            started = time.time()
            ppl, n = perplexity(model, ids, "cuda", contextlib.nullcontext, window=WINDOW)
            completions = []
            for prompt in prompts:
                prompt_ids = tok.encode(prompt).ids
                out = model.generate(torch.tensor([prompt_ids], device="cuda"),
                                     max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                                     pad_token_id=0, eos_token_id=None)
                completions.append(out[0, len(prompt_ids):].tolist())
            run = {"format": name, "compute_dtype": compute, "perplexity": ppl, "tokens": n,
                   "memory_footprint_bytes": model.get_memory_footprint(),
                   "greedy_ids": completions, "seconds": time.time() - started}
            print(f"{compute:9s} {name:7s} ppl {ppl:.4f} footprint "
                  f"{run['memory_footprint_bytes']}", flush=True)
            result["runs"].append(run)
            del model
            torch.cuda.empty_cache()
    with open(out_json, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
