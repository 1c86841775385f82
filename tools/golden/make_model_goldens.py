"""Records golden logits/greedy tokens of tiny random llama/mistral/qwen2 models with transformers
(fp32) and transformers + bitsandbytes (NF4, NF4 + double quant, FP4, LLM.int8), on CUDA and, where
bitsandbytes runs there, on the CPU, to learn bitsandbytes' own CUDA-vs-CPU tolerance.

Usage (GPU machine, bitsandbytes on PYTHONPATH):
  python3 make_model_goldens.py --tokenizer tokenizer.json --out OUT_DIR
Writes OUT_DIR/<model>/<variant>/ (save_pretrained + tokenizer.json), OUT_DIR/<model>/goldens.safetensors
and OUT_DIR/summary.json. kbitd's tests (tests/runtime/model_golden_test.cc) read them.
"""
import argparse
import inspect
import json
import pathlib
import shutil
import time
import traceback

import numpy as np
import torch
import transformers
from safetensors.numpy import save_file
from tokenizers import Tokenizer
from transformers import (AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM,
                          MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM)

PROMPTS = [
    "kbitd serves models",
    "The daemon loads Hugging Face checkpoints and quantizes them on load.",
    "Set up and run all tests (what CI runs): both call scripts/setup.sh, which installs the "
    "Debian packages and Python packages they need, then the CUDA backend is built.",
]
NEW_TOKENS = 6
VARIANTS = {
    "nf4": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=False),
    "nf4-dq": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True),
    "fp4": dict(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_use_double_quant=False),
    "int8": dict(load_in_8bit=True),
}


def rope_kwargs(config_cls, theta, scaling):
    """transformers 5 takes rope_parameters; 4.x rope_theta + rope_scaling."""
    if "rope_parameters" in inspect.signature(config_cls.__init__).parameters:
        params = {"rope_type": "default", "rope_theta": theta}
        if scaling:
            params.update(scaling)
        return {"rope_parameters": params}
    return {"rope_theta": theta, "rope_scaling": scaling}


def make_models(vocab):
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  rms_norm_eps=1e-5, initializer_range=0.1, bos_token_id=0, eos_token_id=1)
    llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 64}
    return {
        # GQA, untied, llama3 rope scaling.
        "llama": (LlamaForCausalLM, LlamaConfig(**common, tie_word_embeddings=False,
                                                 **rope_kwargs(LlamaConfig, 10000.0, llama3)), 1),
        # GQA, tied embeddings, sliding window beyond the prompts.
        "mistral": (MistralForCausalLM, MistralConfig(**common, tie_word_embeddings=True,
                                                       sliding_window=128,
                                                       **rope_kwargs(MistralConfig, 1e6, None)), 2),
        # GQA, tied embeddings, q/k/v bias.
        "qwen2": (Qwen2ForCausalLM, Qwen2Config(**common, tie_word_embeddings=True,
                                                 **rope_kwargs(Qwen2Config, 1e6, None)), 3),
    }


def randomize(model, seed):
    """Non-trivial norms and biases, and a few large norm weights so LLM.int8 sees outliers."""
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        layer0 = model.model.layers[0]
        layer0.input_layernorm.weight[[3, 17]] = 40.0
        layer0.post_attention_layernorm.weight[[5]] = 30.0


@torch.no_grad()
def evaluate(model, device, prompts, all_positions=False):
    out = {}
    for i, ids in enumerate(prompts):
        seq = list(ids)
        logits_steps = []
        for step in range(NEW_TOKENS):
            x = torch.tensor([seq], dtype=torch.long, device=device)
            logits = model(input_ids=x).logits[0].float().cpu()
            if step == 0 and all_positions:
                out[f"prompt{i}.all_logits"] = logits.numpy().copy()
            last = logits[-1]
            logits_steps.append(last.numpy().copy())
            seq.append(int(torch.argmax(last)))
        out[f"prompt{i}.logits"] = np.stack(logits_steps).astype(np.float32)
        out[f"prompt{i}.greedy"] = np.array(seq[len(ids):], dtype=np.int32)
    return out


def save_dir(model, path, tokenizer_path):
    model.save_pretrained(path)
    shutil.copy(tokenizer_path, path / "tokenizer.json")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    tok = Tokenizer.from_file(args.tokenizer)
    prompts = [tok.encode(p).ids for p in PROMPTS]
    import bitsandbytes as bnb
    summary = {"torch": torch.__version__, "transformers": transformers.__version__,
               "bitsandbytes": bnb.__version__, "cuda": torch.cuda.get_device_name(0),
               "prompts": PROMPTS, "models": {}}
    for name, (cls, config, seed) in make_models(tok.get_vocab_size()).items():
        t0 = time.time()
        torch.manual_seed(seed)
        model = cls(config).float().eval()
        randomize(model, seed)
        fp32_dir = out / name / "fp32"
        save_dir(model, fp32_dir, args.tokenizer)
        goldens = {f"prompt{i}.tokens": np.array(p, dtype=np.int32) for i, p in enumerate(prompts)}
        # Reload what was saved, so the goldens describe the committed checkpoint exactly.
        model = AutoModelForCausalLM.from_pretrained(fp32_dir, dtype=torch.float32).eval()
        for k, v in evaluate(model, "cpu", prompts, all_positions=True).items():
            goldens[f"fp32.cpu.{k}"] = v
        model_cuda = model.to("cuda")
        for k, v in evaluate(model_cuda, "cuda", prompts).items():
            goldens[f"fp32.cuda.{k}"] = v
        info = {"variants": {}}
        for variant, kwargs in VARIANTS.items():
            vinfo = {}
            qc = BitsAndBytesConfig(**kwargs, bnb_4bit_compute_dtype=torch.float32)
            qm = AutoModelForCausalLM.from_pretrained(fp32_dir, quantization_config=qc,
                                                      dtype=torch.float32, device_map="cuda:0")
            qm.eval()
            for k, v in evaluate(qm, "cuda", prompts).items():
                goldens[f"{variant}.cuda.{k}"] = v
            qdir = out / name / variant
            save_dir(qm, qdir, args.tokenizer)
            del qm
            # Pre-quantized load of the saved checkpoint, on CUDA and on the CPU (loaded there
            # directly, or else loaded on CUDA and moved).
            attempts = [("cuda", "cuda:0", False), ("cpu", "cpu", False), ("cpu", "cuda:0", True)]
            for device, device_map, move in attempts:
                if vinfo.get(f"saved_{device}") == "ok":
                    continue
                try:
                    lm = AutoModelForCausalLM.from_pretrained(qdir, dtype=torch.float32,
                                                              device_map=device_map)
                    if move:
                        lm = lm.to("cpu")
                    for k, v in evaluate(lm, device, prompts).items():
                        goldens[f"{variant}.saved_{device}.{k}"] = v
                    vinfo[f"saved_{device}"] = "ok"
                    vinfo[f"saved_{device}_how"] = "moved from cuda" if move else device_map
                    del lm
                except Exception as e:  # bnb may not run on the CPU for every format
                    vinfo[f"saved_{device}"] = f"failed: {type(e).__name__}: {e}"[:500]
                    traceback.print_exc()
            info["variants"][variant] = vinfo
        save_file(goldens, str(out / name / "goldens.safetensors"))
        info["seconds"] = time.time() - t0
        summary["models"][name] = info
        print(name, json.dumps(info), flush=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
