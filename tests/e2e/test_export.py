"""ExportDequantized end to end: a served 4-bit model written back as a plain checkpoint inside the
model root loads again and generates the same greedy tokens; admin token, path rules, existing
folders and unknown models get their status codes; an unload racing an export leaves either a
complete folder or nothing."""

import json
import struct

import grpc
import pytest

from conftest import requires_kbitd
from test_api import code_of
from test_generate import PROMPTS, generate

pytestmark = requires_kbitd


def safetensors_header(path):
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return header


def load_nf4(daemon, name):
    pb = daemon.pb
    q = pb.quant.QuantizationConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                    bnb_4bit_use_double_quant=True)
    return daemon.models.LoadModel(pb.model.LoadModelRequest(name=name, path="tiny", quantization=q),
                                   metadata=daemon.admin(), timeout=120)


def export(daemon, model, path, dtype=0, metadata=None):
    pb = daemon.pb
    return daemon.models.ExportDequantized(
        pb.model.ExportDequantizedRequest(model=model, output_path=path, dtype=dtype),
        metadata=daemon.admin() if metadata is None else metadata, timeout=120)


def unload(daemon, name):
    daemon.models.UnloadModel(daemon.pb.model.UnloadModelRequest(name=name),
                              metadata=daemon.admin(), timeout=60)


def no_partial_folders(daemon):
    return not [p for p in (daemon.root / "models").iterdir() if ".partial-" in p.name]


def test_export_loads_again_and_generates_the_same_tokens(daemon):
    pb = daemon.pb
    load_nf4(daemon, "export-nf4")
    try:
        reply = export(daemon, "export-nf4", "tiny-nf4-plain", pb.model.TENSOR_DTYPE_FLOAT32)
        folder = daemon.root / "models" / "tiny-nf4-plain"
        # 2 layers x (7 linears + 2 norms) + embedding + final norm + lm_head.
        assert reply.output_path == "tiny-nf4-plain" and reply.tensors == 21
        header = safetensors_header(folder / "model.safetensors")
        assert len(header) == 21 and {t["dtype"] for t in header.values()} == {"F32"}
        assert reply.bytes == sum(t["data_offsets"][1] - t["data_offsets"][0]
                                  for t in header.values())
        config = json.loads((folder / "config.json").read_text())
        assert "quantization_config" not in config and config["torch_dtype"] == "float32"
        assert (folder / "tokenizer.json").exists() and (folder / "tokenizer_config.json").exists()
        assert no_partial_folders(daemon)

        info = daemon.models.LoadModel(pb.model.LoadModelRequest(name="export-plain",
                                                                 path="tiny-nf4-plain"),
                                       metadata=daemon.admin(), timeout=120)
        assert info.state == pb.model.MODEL_STATE_READY and not info.quantization.load_in_4bit
        try:
            # The plain weights are the 4-bit model's dequantized ones, value for value.
            tensor = "model.layers.1.self_attn.o_proj.weight"
            want = b"".join(c.data for c in daemon.models.Dequantize(
                pb.model.DequantizeRequest(model="export-nf4", tensor=tensor)))
            got = b"".join(c.data for c in daemon.models.Dequantize(
                pb.model.DequantizeRequest(model="export-plain", tensor=tensor)))
            assert want == got
            for prompt in PROMPTS[:4]:
                quantized = generate(daemon, prompt, max_new_tokens=12, model="export-nf4")[0]
                plain = generate(daemon, prompt, max_new_tokens=12, model="export-plain")[0]
                assert quantized == plain and len(plain) == 12, prompt
        finally:
            unload(daemon, "export-plain")
    finally:
        unload(daemon, "export-nf4")


def test_export_default_and_bfloat16_dtypes(daemon):
    pb = daemon.pb
    # Unspecified: the model's original dtype (the tiny checkpoint is float32).
    export(daemon, "tiny", "tiny-default-export")
    folder = daemon.root / "models" / "tiny-default-export"
    assert {t["dtype"] for t in safetensors_header(folder / "model.safetensors").values()} == {"F32"}
    export(daemon, "tiny", "tiny-bf16-export", pb.model.TENSOR_DTYPE_BFLOAT16)
    folder = daemon.root / "models" / "tiny-bf16-export"
    assert {t["dtype"] for t in safetensors_header(folder / "model.safetensors").values()} == {
        "BF16"}
    assert json.loads((folder / "config.json").read_text())["torch_dtype"] == "bfloat16"
    daemon.models.LoadModel(pb.model.LoadModelRequest(name="tiny-bf16", path="tiny-bf16-export"),
                            metadata=daemon.admin(), timeout=120)
    assert generate(daemon, "def f():", max_new_tokens=3, model="tiny-bf16")[0]
    unload(daemon, "tiny-bf16")


def test_export_errors(daemon):
    (daemon.root / "models" / "already-there").mkdir(exist_ok=True)
    cases = [
        (lambda: export(daemon, "tiny", "x1", metadata=[]), grpc.StatusCode.UNAUTHENTICATED),
        (lambda: export(daemon, "tiny", "x1", metadata=[("authorization", "Bearer wrong")]),
         grpc.StatusCode.UNAUTHENTICATED),
        (lambda: export(daemon, "tiny", "../outside/x1"), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: export(daemon, "tiny", str(daemon.root / "outside" / "x1")),
         grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: export(daemon, "tiny", "escape/x1"), grpc.StatusCode.PERMISSION_DENIED),
        (lambda: export(daemon, "tiny", "already-there"), grpc.StatusCode.ALREADY_EXISTS),
        (lambda: export(daemon, "tiny", "tiny2"), grpc.StatusCode.ALREADY_EXISTS),
        (lambda: export(daemon, "tiny", "no-such-parent/x1"), grpc.StatusCode.NOT_FOUND),
        (lambda: export(daemon, "nope", "x1"), grpc.StatusCode.NOT_FOUND),
        (lambda: export(daemon, "tiny", "x1", dtype=7), grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for call, code in cases:
        got, details = code_of(call)
        assert got == code, details
    assert not (daemon.root / "models" / "x1").exists()
    assert sorted(p.name for p in (daemon.root / "outside").iterdir()) == ["secret"]
    assert not any((daemon.root / "models" / "already-there").iterdir())
    assert no_partial_folders(daemon)
    assert generate(daemon, "ok", max_new_tokens=2)[0]  # still serving


def test_unload_racing_an_export_leaves_a_complete_folder_or_nothing(daemon):
    pb = daemon.pb
    load_nf4(daemon, "export-race")
    future = daemon.models.ExportDequantized.future(
        pb.model.ExportDequantizedRequest(model="export-race", output_path="race-export"),
        metadata=daemon.admin(), timeout=120)
    unload(daemon, "export-race")  # waits for the export (grace period, then cancels it)
    folder = daemon.root / "models" / "race-export"
    try:
        reply = future.result()
        assert reply.tensors == 21 and (folder / "config.json").exists()
        daemon.models.LoadModel(pb.model.LoadModelRequest(name="race-plain", path="race-export"),
                                metadata=daemon.admin(), timeout=120)
        unload(daemon, "race-plain")
    except grpc.RpcError as e:
        # Cancelled by the unload past its grace, or refused because it already began.
        assert e.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.FAILED_PRECONDITION,
                            grpc.StatusCode.NOT_FOUND), e.details()
        assert not folder.exists()
    assert no_partial_folders(daemon)
    code, _ = code_of(lambda: daemon.models.GetModel(pb.model.GetModelRequest(name="export-race")))
    assert code == grpc.StatusCode.NOT_FOUND


def test_kbitctl_export(daemon):
    import subprocess

    from conftest import ADMIN_TOKEN, BUILD

    kbitctl = BUILD / "tools" / "kbitctl" / "kbitctl"
    if not kbitctl.exists():
        pytest.skip(f"{kbitctl} is not built")
    base = [str(kbitctl), f"--address=127.0.0.1:{daemon.port}", "--timeout=120"]
    done = subprocess.run(base + [f"--admin_token={ADMIN_TOKEN}", "--dtype=float16", "export",
                                  "tiny", "kbitctl-export"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout)
    assert reply["output_path"] == "kbitctl-export" and int(reply["tensors"]) == 21
    header = safetensors_header(daemon.root / "models" / "kbitctl-export" / "model.safetensors")
    assert {t["dtype"] for t in header.values()} == {"F16"}
    # Without the token the daemon refuses, and kbitctl says why.
    done = subprocess.run(base + ["export", "tiny", "kbitctl-export-2"], capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 1 and "UNAUTHENTICATED" in done.stderr
    assert not (daemon.root / "models" / "kbitctl-export-2").exists()
