"""The bundled default model (models/default) served by kbitd gives transformers' greedy
completions: models/default/reference.json holds transformers' fp32 CPU greedy tokens for three
prompts (tools/train_default_model.py), tests/data/quality/bnb_reference.json transformers +
bitsandbytes' greedy tokens per format (tools/golden/quality_reference.py, on an H200)."""

import json
import shutil

import pytest

from conftest import REPO, Daemon, requires_kbitd

pytestmark = requires_kbitd

REFERENCE = json.loads((REPO / "models/default/reference.json").read_text())
BNB = json.loads((REPO / "tests/data/quality/bnb_reference.json").read_text())


@pytest.fixture(scope="module")
def default_daemon(tmp_path_factory, pb):
    root = tmp_path_factory.mktemp("default")
    shutil.copytree(REPO / "models/default", root / "models/default")
    # The same checkpoint twice more, quantized on load as transformers + bitsandbytes did it in
    # bnb_reference.json's float32 runs (compute dtype float32 everywhere).
    models = ("  - {name: default, path: default, dtype: float32}\n"
              "  - {name: default-nf4, path: default, dtype: float32, quantization:"
              " {load_in_4bit: true, bnb_4bit_quant_type: nf4, bnb_4bit_compute_dtype: float32}}\n")
    d = Daemon(root, pb, models=(), yaml_extra="models:\n" + models)
    d.wait_ready("default")
    d.wait_ready("default-nf4")
    yield d
    assert d.stop() == 0


def greedy(d, model, prompt, max_new_tokens):
    pb = d.pb
    request = pb.inference.GenerateRequest(model=model, prompt=prompt.encode(),
                                           max_new_tokens=max_new_tokens,
                                           sampling=pb.inference.SamplingParams(temperature=0))
    ids, text, last = [], "", None
    for response in d.inference.Generate(request, timeout=120):
        ids.extend(response.token_ids)
        text += response.text
        last = response
    return ids, text, last


@pytest.mark.parametrize("case", REFERENCE["greedy_fp32_cpu"], ids=lambda c: c["prompt"][:16])
def test_greedy_completion_equals_transformers(default_daemon, case):
    pb = default_daemon.pb
    tokenized = default_daemon.inference.Tokenize(
        pb.inference.TokenizeRequest(model="default", text=case["prompt"].encode()), timeout=30)
    assert list(tokenized.token_ids) == case["prompt_ids"]
    ids, text, last = greedy(default_daemon, "default", case["prompt"], len(case["greedy_ids"]))
    assert ids == case["greedy_ids"]
    assert text == case["greedy_text"]
    assert last.usage.prompt_tokens == len(case["prompt_ids"])
    assert last.usage.completion_tokens == len(case["greedy_ids"])


def test_served_in_float32(default_daemon):
    info = default_daemon.models.GetModel(
        default_daemon.pb.model.GetModelRequest(name="default"), timeout=10)
    assert info.dtype == "float32"


@pytest.mark.parametrize("index", range(len(REFERENCE["greedy_fp32_cpu"])))
def test_nf4_greedy_completion_equals_bitsandbytes(default_daemon, index):
    bnb = next(r for r in BNB["runs"] if r["format"] == "nf4" and r["compute_dtype"] == "float32")
    case = REFERENCE["greedy_fp32_cpu"][index]
    ids, _, _ = greedy(default_daemon, "default-nf4", case["prompt"], len(bnb["greedy_ids"][index]))
    assert ids == bnb["greedy_ids"][index]
