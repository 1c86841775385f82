#!/usr/bin/env python3
"""Golden data and round-trip proof for kbitq against transformers + bitsandbytes (GPU machine).

  make  OUT_DIR             tiny random LlamaForCausalLM (bf16) -> OUT_DIR/base; for each variant,
                            transformers quantizes it (BitsAndBytesConfig), save_pretrained ->
                            OUT_DIR/bnb_<v>; bnb's dequantized Linear weights ->
                            OUT_DIR/dequant_<v>.safetensors; logits on fixed ids -> logits.safetensors
  check BASE KBITQ_DIR OUT  loads every OUT folder KBITQ_DIR/<v> (written by `kbitq quantize`) with
                            from_pretrained and no quantization_config, compares logits with
                            transformers quantizing BASE itself, and compares tensors and
                            quantization_config with transformers' own save_pretrained output.

tests/data/kbitq/ holds the `make` output that CI checks `kbitq quantize/inspect/dequantize` against.
"""
import json
import os
import sys
import traceback

import torch

VARIANTS = {
    # name: (BitsAndBytesConfig kwargs, kbitq flags)
    "nf4": (dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype="bfloat16"),
            "--type nf4 --compute-dtype bf16"),
    "nf4_dq": (dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                    bnb_4bit_compute_dtype="bfloat16"),
               "--type nf4 --double-quant --compute-dtype bf16"),
    "fp4": (dict(load_in_4bit=True, bnb_4bit_quant_type="fp4"), "--type fp4"),
    "nf4_dq_bf16storage": (dict(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype="bfloat16",
                                bnb_4bit_quant_storage="bfloat16"),
                           "--type nf4 --double-quant --compute-dtype bf16 --quant-storage bf16"),
    "int8": (dict(load_in_8bit=True), "--type int8"),
}


def input_ids():
    g = torch.Generator().manual_seed(1234)
    return torch.randint(0, 128, (2, 16), generator=g)


def make_base(path):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=384, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    with torch.no_grad():  # a few outliers so LLM.int8 and absmax see more than a Gaussian
        for name, p in model.named_parameters():
            if p.dim() == 2 and "proj" in name:
                p[0, : min(3, p.shape[1])] *= 20
    model.save_pretrained(path)


def load_quantized(path, bnb_kwargs=None):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    kwargs = dict(dtype=torch.bfloat16, device_map={"": 0})
    if bnb_kwargs is not None:
        kwargs["quantization_config"] = BitsAndBytesConfig(**bnb_kwargs)
    return AutoModelForCausalLM.from_pretrained(path, **kwargs).eval()


@torch.no_grad()
def logits_of(model):
    return model(input_ids().to(model.device)).logits.float().cpu()


def bnb_dequantized(model):
    import bitsandbytes as bnb
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            w = module.weight
            out[name + ".weight"] = bnb.functional.dequantize_4bit(w.data, w.quant_state).cpu()
        elif isinstance(module, bnb.nn.Linear8bitLt):
            w = module.weight
            out[name + ".weight"] = bnb.functional.int8_vectorwise_dequant(w.data, w.SCB).float().cpu()
    return out


def make(out):
    from safetensors.torch import save_file
    os.makedirs(out, exist_ok=True)
    base = os.path.join(out, "base")
    make_base(base)
    logits = {"base": logits_of(load_quantized(base))}
    results = {"torch": torch.__version__}
    import bitsandbytes, transformers
    results["bitsandbytes"] = bitsandbytes.__version__
    results["transformers"] = transformers.__version__
    for v, (kwargs, _) in VARIANTS.items():
        try:
            model = load_quantized(base, kwargs)
            deq = bnb_dequantized(model)  # before any forward: Linear8bitLt moves SCB on forward
            logits[v] = logits_of(model)
            model.save_pretrained(os.path.join(out, "bnb_" + v))
            save_file({k: t.contiguous() for k, t in deq.items()},
                      os.path.join(out, "dequant_%s.safetensors" % v))
            results[v] = {"dequantized": len(deq),
                          "max_abs_logit_diff_vs_base": float((logits[v] - logits["base"]).abs().max())}
        except Exception:
            traceback.print_exc()
            results[v] = {"error": traceback.format_exc()}
    save_file(logits, os.path.join(out, "logits.safetensors"))
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
    print(json.dumps(results, indent=2, sort_keys=True))


def compare_folders(ours, theirs):
    """Tensor-by-tensor comparison of two quantized checkpoints (keys, dtypes, shapes, bytes)."""
    from safetensors import safe_open

    def load(d):
        tensors = {}
        for name in sorted(os.listdir(d)):
            if name.endswith(".safetensors"):
                with safe_open(os.path.join(d, name), "pt") as f:
                    for k in f.keys():
                        tensors[k] = f.get_tensor(k)
        return tensors

    a, b = load(ours), load(theirs)
    report = {"only_ours": sorted(set(a) - set(b)), "only_theirs": sorted(set(b) - set(a)),
              "differ": {}}
    for k in sorted(set(a) & set(b)):
        x, y = a[k], b[k]
        if x.dtype != y.dtype or x.shape != y.shape:
            report["differ"][k] = "dtype/shape %s%s vs %s%s" % (x.dtype, list(x.shape), y.dtype,
                                                                 list(y.shape))
            continue
        xb = x.contiguous().view(torch.uint8).flatten()
        yb = y.contiguous().view(torch.uint8).flatten()
        n = int((xb != yb).sum())
        if n:
            report["differ"][k] = "%d of %d bytes differ" % (n, xb.numel())
    with open(os.path.join(ours, "config.json")) as f:
        qa = json.load(f).get("quantization_config")
    with open(os.path.join(theirs, "config.json")) as f:
        qb = json.load(f).get("quantization_config")
    report["quantization_config_equal"] = qa == qb
    if qa != qb:
        report["quantization_config"] = {"ours": qa, "theirs": qb}
    return report


def check(base, kbitq_dir, out):
    from safetensors.torch import save_file
    os.makedirs(out, exist_ok=True)
    results, logits = {}, {}
    for v in sorted(os.listdir(kbitq_dir)):
        path = os.path.join(kbitq_dir, v)
        r = results[v] = {}
        try:
            model = load_quantized(path)  # no quantization_config: read from config.json
            # bnb's dequantization of the weights kbitq wrote, before any forward.
            save_file({k: t.contiguous() for k, t in bnb_dequantized(model).items()},
                      os.path.join(out, "bnbdeq_kbitq_%s.safetensors" % v))
            logits["kbitq_" + v] = ours = logits_of(model)
            del model
            if v in VARIANTS:
                ref_model = load_quantized(base, VARIANTS[v][0])
                logits["transformers_" + v] = ref = logits_of(ref_model)
                theirs = os.path.join("/tmp", "bnb_" + v)
                ref_model.save_pretrained(theirs)
                del ref_model
                r["max_abs_logit_diff_vs_transformers"] = float((ours - ref).abs().max())
                r["logits_identical"] = bool(torch.equal(ours, ref))
                r["tensors"] = compare_folders(path, theirs)
            else:
                base_logits = logits_of(load_quantized(base))
                r["max_abs_logit_diff_vs_unquantized"] = float((ours - base_logits).abs().max())
        except Exception:
            r["error"] = traceback.format_exc()
    save_file(logits, os.path.join(out, "check_logits.safetensors"))
    # bnb's own dequantization of the LLM.int8 checkpoint transformers saved (golden for CI).
    try:
        model = load_quantized(os.path.join(os.path.dirname(base), "bnb_int8"))
        save_file({k: t.contiguous() for k, t in bnb_dequantized(model).items()},
                  os.path.join(out, "dequant_int8.safetensors"))
    except Exception:
        results["int8_dequant_error"] = traceback.format_exc()
    with open(os.path.join(out, "check.json"), "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
    print(json.dumps(results, indent=2, sort_keys=True))


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2])
    elif sys.argv[1] == "check":
        check(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(__doc__)
