"""Model lifecycle RPCs, tokenizer RPCs, health, reflection and bad input through Python grpcio:
each bad request gets the right status code and the daemon keeps serving."""

import json

import grpc
import pytest

from conftest import requires_kbitd, write_tiny_llama
from test_generate import generate

pytestmark = requires_kbitd

# KV cache bytes per token of conftest's tiny llama: keys and values x 2 layers x 2 kv heads x 16.
TINY_KV_TOKEN_BYTES = 2 * 2 * 2 * 16 * 4


def code_of(fn):
    with pytest.raises(grpc.RpcError) as e:
        fn()
    return e.value.code(), e.value.details()


def test_list_and_get_model(daemon):
    pb = daemon.pb
    listed = daemon.models.ListModels(pb.model.ListModelsRequest())
    assert "tiny" in [m.name for m in listed.models]
    info = daemon.models.GetModel(pb.model.GetModelRequest(name="tiny"))
    assert info.state == pb.model.MODEL_STATE_READY
    assert info.architecture == "LlamaForCausalLM"
    assert info.parameter_count > 0
    assert info.weight_bytes > 0 and info.fp16_weight_bytes > 0
    assert info.max_context_tokens == 4096
    assert info.load_seconds > 0
    assert any(m.device == "cpu" and m.weight_bytes > 0 for m in info.memory)
    # The placement plan the loader followed: every module on the host, its bytes the weights'.
    plan = info.placement_plan
    assert plan[0].module == "model.embed_tokens" and plan[-1].module in ("lm_head", "model.norm")
    assert all(p.device == "cpu" and not p.offloaded for p in plan)
    assert sum(p.bytes for p in plan) == info.weight_bytes
    # The default KV cache: whole blocks of 16, from one to limits.max_batch_size (64) sequences
    # of the 4096-token context, and what the cpu pool holds for it.
    assert 4096 <= info.kv_cache_tokens <= 64 * 4096 and info.kv_cache_tokens % 16 == 0
    assert info.kv_cache_bytes == info.kv_cache_tokens * TINY_KV_TOKEN_BYTES
    assert sum(m.kv_cache_bytes for m in info.memory if m.device == "cpu") == info.kv_cache_bytes


def test_load_with_kv_cache_bytes_reports_the_cache(daemon):
    pb = daemon.pb
    info = daemon.models.LoadModel(pb.model.LoadModelRequest(name="tiny-kv", path="tiny",
                                                             kv_cache_bytes="4MiB"),
                                   metadata=daemon.admin(), timeout=60)
    assert info.state == pb.model.MODEL_STATE_READY
    assert info.kv_cache_bytes == 4 << 20
    assert info.kv_cache_tokens == (4 << 20) // TINY_KV_TOKEN_BYTES == 8192
    assert [m.kv_cache_bytes for m in info.memory if m.device == "cpu"] == [4 << 20]
    got = daemon.models.GetModel(pb.model.GetModelRequest(name="tiny-kv"))
    assert (got.kv_cache_bytes, got.kv_cache_tokens) == (4 << 20, 8192)
    listed = {m.name: m for m in daemon.models.ListModels(pb.model.ListModelsRequest()).models}
    assert listed["tiny-kv"].kv_cache_tokens == 8192
    assert generate(daemon, "def f():", max_new_tokens=3, model="tiny-kv")[0]
    daemon.models.UnloadModel(pb.model.UnloadModelRequest(name="tiny-kv"), metadata=daemon.admin())


@pytest.mark.parametrize("size, message", [
    ("2 GiB", 'kv_cache_bytes: memory size "2 GiB" is not a byte count'),
    # 1 MiB holds 2048 tokens, less than the 4096-token context.
    ("1MiB", "holds 2048 tokens, less than one max_context sequence of 4096 tokens"),
])
def test_bad_kv_cache_bytes_are_invalid_argument(daemon, size, message):
    pb = daemon.pb
    got, details = code_of(lambda: daemon.models.LoadModel(
        pb.model.LoadModelRequest(name="tiny-badkv", path="tiny", kv_cache_bytes=size),
        metadata=daemon.admin(), timeout=60))
    assert got == grpc.StatusCode.INVALID_ARGUMENT and message in details, details
    daemon.models.UnloadModel(pb.model.UnloadModelRequest(name="tiny-badkv"),
                              metadata=daemon.admin())


def test_load_4bit_and_dequantize(daemon):
    pb = daemon.pb
    q = pb.quant.QuantizationConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                    bnb_4bit_use_double_quant=True)
    info = daemon.models.LoadModel(pb.model.LoadModelRequest(name="tiny-nf4", path="tiny",
                                                             quantization=q),
                                   metadata=daemon.admin(), timeout=120)
    assert info.state == pb.model.MODEL_STATE_READY
    # The float32 embedding and lm_head stay unquantized (transformers' default skip list), so
    # compare with the float32 load rather than with fp16.
    dense = daemon.models.GetModel(pb.model.GetModelRequest(name="tiny"))
    assert info.weight_bytes < dense.weight_bytes
    # Quantization saved bytes on the quantized linears only: the unquantized load saved nothing.
    assert dense.saved_bytes == 0
    assert info.saved_bytes > 0
    assert info.bits_per_parameter < dense.bits_per_parameter
    chunks = list(daemon.models.Dequantize(pb.model.DequantizeRequest(
        model="tiny-nf4", tensor="model.layers.0.mlp.up_proj.weight",
        dtype=pb.model.TENSOR_DTYPE_FLOAT16)))
    assert list(chunks[0].shape) == [128, 64]
    assert chunks[0].stats.quant_type == "nf4" and chunks[0].stats.double_quant
    assert sum(len(c.data) for c in chunks) == 128 * 64 * 2
    assert generate(daemon, "def f():", max_new_tokens=3, model="tiny-nf4")[0]
    daemon.models.UnloadModel(pb.model.UnloadModelRequest(name="tiny-nf4"),
                              metadata=daemon.admin())


def test_tokenize_detokenize_round_trip(daemon):
    pb = daemon.pb
    text = "def fibonacci(n):\n    return n"
    ids = daemon.inference.Tokenize(pb.inference.TokenizeRequest(
        model="tiny", text=text.encode(), add_special_tokens=False)).token_ids
    assert len(ids) > 3
    back = daemon.inference.Detokenize(pb.inference.DetokenizeRequest(model="tiny", token_ids=ids))
    assert back.text == text


def test_health_overall_service_and_model(daemon):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health = health_pb2_grpc.HealthStub(daemon.channel)
    serving = health_pb2.HealthCheckResponse.SERVING
    for name in ("", "kbitd.v1.InferenceService", "kbitd.v1.ModelService", "tiny"):
        assert health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status == serving
    code, _ = code_of(lambda: health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5))
    assert code == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_kbitd_services(daemon):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(daemon.channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
        list_services="")]), timeout=5)
    names = [s.name for r in responses for s in r.list_services_response.service]
    assert "kbitd.v1.ModelService" in names and "kbitd.v1.InferenceService" in names


BAD_GENERATE = [
    ("unknown model", dict(model="nope"), grpc.StatusCode.NOT_FOUND),
    ("empty prompt", dict(prompt=b""), grpc.StatusCode.INVALID_ARGUMENT),
    ("invalid UTF-8", dict(prompt=b"ab\xff\xfe"), grpc.StatusCode.INVALID_ARGUMENT),
    ("prompt and ids", dict(prompt_token_ids=[1, 2]), grpc.StatusCode.INVALID_ARGUMENT),
    ("token id out of vocab", dict(prompt=b"", prompt_token_ids=[10**9]),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("negative max_new_tokens", dict(max_new_tokens=-1), grpc.StatusCode.INVALID_ARGUMENT),
    ("max_new_tokens over limit", dict(max_new_tokens=2**31 - 1), grpc.StatusCode.INVALID_ARGUMENT),
    ("prompt + max_new_tokens over context", dict(max_new_tokens=4096),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("prompt over context", dict(prompt=b"x = 1\n" * 3000), grpc.StatusCode.INVALID_ARGUMENT),
    ("negative temperature", dict(sampling=dict(temperature=-1)), grpc.StatusCode.INVALID_ARGUMENT),
    ("NaN top_p", dict(sampling=dict(top_p=float("nan"))), grpc.StatusCode.INVALID_ARGUMENT),
    ("top_p above 1", dict(sampling=dict(top_p=1.5)), grpc.StatusCode.INVALID_ARGUMENT),
    ("negative top_k", dict(sampling=dict(top_k=-3)), grpc.StatusCode.INVALID_ARGUMENT),
    ("absurd temperature", dict(sampling=dict(temperature=1e30)), grpc.StatusCode.INVALID_ARGUMENT),
    ("zero repetition penalty", dict(sampling=dict(repetition_penalty=0)),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("too many top_logprobs", dict(logprobs=True, top_logprobs=1000),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("empty stop string", dict(stop=[""]), grpc.StatusCode.INVALID_ARGUMENT),
    ("too many stop strings", dict(stop=["a"] * 100), grpc.StatusCode.INVALID_ARGUMENT),
]


@pytest.mark.parametrize("what,fields,code", BAD_GENERATE, ids=[b[0] for b in BAD_GENERATE])
def test_bad_generate_requests(daemon, what, fields, code):
    pb = daemon.pb
    fields = dict(fields)
    sampling = pb.inference.SamplingParams(**fields.pop("sampling", {}))
    request = pb.inference.GenerateRequest(model=fields.pop("model", "tiny"),
                                           prompt=fields.pop("prompt", b"hello"),
                                           max_new_tokens=fields.pop("max_new_tokens", 4),
                                           sampling=sampling, **fields)
    got, details = code_of(lambda: list(daemon.inference.Generate(request, timeout=30)))
    assert got == code, (what, details)
    assert details
    assert generate(daemon, "ok", max_new_tokens=2)[0]  # still serving


def test_bad_model_requests(daemon):
    pb = daemon.pb
    load = lambda name, path, metadata=daemon.admin(): daemon.models.LoadModel(  # noqa: E731
        pb.model.LoadModelRequest(name=name, path=path), metadata=metadata, timeout=60)
    cases = [
        (lambda: load("x", "../outside/secret"), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: load("x", "/etc"), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: load("x", "escape"), grpc.StatusCode.PERMISSION_DENIED),
        (lambda: load("x", "missing"), grpc.StatusCode.NOT_FOUND),
        (lambda: load("../x", "tiny"), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: load("tiny", "tiny"), grpc.StatusCode.ALREADY_EXISTS),
        (lambda: load("x", "tiny", metadata=[]), grpc.StatusCode.UNAUTHENTICATED),
        (lambda: load("x", "tiny", metadata=[("authorization", "Bearer wrong")]),
         grpc.StatusCode.UNAUTHENTICATED),
        (lambda: daemon.models.UnloadModel(pb.model.UnloadModelRequest(name="tiny")),
         grpc.StatusCode.UNAUTHENTICATED),
        (lambda: daemon.models.UnloadModel(pb.model.UnloadModelRequest(name="nope"),
                                           metadata=daemon.admin()), grpc.StatusCode.NOT_FOUND),
        (lambda: daemon.models.GetModel(pb.model.GetModelRequest(name="nope")),
         grpc.StatusCode.NOT_FOUND),
        (lambda: list(daemon.models.Dequantize(pb.model.DequantizeRequest(
            model="tiny", tensor="no.such.weight"))), grpc.StatusCode.NOT_FOUND),
        (lambda: daemon.inference.Tokenize(pb.inference.TokenizeRequest(model="tiny",
                                                                        text=b"\xc3(")),
         grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: daemon.models.LoadModel(pb.model.LoadModelRequest(name="x", path="tiny",
                                                                   dtype="float8"),
                                         metadata=daemon.admin(), timeout=60),
         grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for call, code in cases:
        got, details = code_of(call)
        assert got == code, details
    # A model whose load fails is FAILED with the reason, and can be unloaded.
    (daemon.root / "models" / "broken").mkdir(exist_ok=True)
    (daemon.root / "models" / "broken" / "config.json").write_text("{not json")
    got, details = code_of(lambda: load("broken", "broken"))
    assert got != grpc.StatusCode.OK and "broken" in details
    info = daemon.models.GetModel(pb.model.GetModelRequest(name="broken"))
    assert info.state == pb.model.MODEL_STATE_FAILED and info.error
    daemon.models.UnloadModel(pb.model.UnloadModelRequest(name="broken"), metadata=daemon.admin())
    assert generate(daemon, "ok", max_new_tokens=2)[0]


def test_load_of_a_file_says_it_is_not_a_folder(daemon):
    pb = daemon.pb
    code, details = code_of(lambda: daemon.models.LoadModel(
        pb.model.LoadModelRequest(name="a-file", path="tiny/config.json"),
        metadata=daemon.admin(), timeout=60))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert "tiny/config.json is a file, not a folder" in details, details
    info = daemon.models.GetModel(pb.model.GetModelRequest(name="a-file"))
    assert info.state == pb.model.MODEL_STATE_FAILED and "not a folder" in info.error
    daemon.models.UnloadModel(pb.model.UnloadModelRequest(name="a-file"), metadata=daemon.admin())


def test_load_of_declared_but_missing_quantization_fails(daemon):
    """config.json says bitsandbytes 4-bit, the weights are plain float32: FAILED, naming the first
    tensor without its quantization state (transformers refuses it as well)."""
    pb = daemon.pb
    folder = daemon.root / "models" / "declared-4bit"
    write_tiny_llama(folder, seed=4)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True,
                                     "bnb_4bit_quant_type": "nf4"}
    (folder / "config.json").write_text(json.dumps(config))
    code, details = code_of(lambda: daemon.models.LoadModel(
        pb.model.LoadModelRequest(name="declared-4bit", path="declared-4bit"),
        metadata=daemon.admin(), timeout=60))
    expected = ("tensor model.layers.0.self_attn.q_proj.weight has no bitsandbytes quantization "
                "state")
    assert code == grpc.StatusCode.INVALID_ARGUMENT and expected in details, details
    info = daemon.models.GetModel(pb.model.GetModelRequest(name="declared-4bit"))
    assert info.state == pb.model.MODEL_STATE_FAILED and expected in info.error, info
    daemon.models.UnloadModel(pb.model.UnloadModelRequest(name="declared-4bit"),
                              metadata=daemon.admin())


def test_unknown_tensor_dtype_is_refused_by_dequantize_and_export(daemon):
    """Both RPCs map TensorDtype the same way: a value this daemon does not know is refused, not
    served as float32."""
    pb = daemon.pb
    calls = [
        lambda: list(daemon.models.Dequantize(pb.model.DequantizeRequest(
            model="tiny", tensor="model.layers.0.mlp.up_proj.weight", dtype=7), timeout=30)),
        lambda: daemon.models.ExportDequantized(pb.model.ExportDequantizedRequest(
            model="tiny", output_path="never-written", dtype=7), metadata=daemon.admin(),
            timeout=30),
    ]
    for call in calls:
        code, details = code_of(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert "dtype: unknown TensorDtype 7" in details, details
    assert not (daemon.root / "models" / "never-written").exists()


def test_concurrent_load_unload_of_one_name_stays_consistent(daemon):
    """Loads, unloads and generations of the same name race (Triton's
    test_concurrent_same_model_load_unload_stress): every call ends with an expected code, the
    final state is consistent and the daemon keeps serving."""
    import concurrent.futures

    pb = daemon.pb
    allowed = {grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.NOT_FOUND,
               grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAVAILABLE}

    def action(i):
        try:
            if i % 3 == 0:
                daemon.models.LoadModel(pb.model.LoadModelRequest(name="race", path="tiny2"),
                                        metadata=daemon.admin(), timeout=60)
            elif i % 3 == 1:
                daemon.models.UnloadModel(pb.model.UnloadModelRequest(name="race"),
                                          metadata=daemon.admin(), timeout=60)
            else:
                generate(daemon, "x", max_new_tokens=4, model="race")
            return "ok"
        except grpc.RpcError as e:
            assert e.code() in allowed, (e.code(), e.details())
            return e.code()

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        results = list(pool.map(action, range(120)))
    assert "ok" in results
    # Settle: unload whatever is left; then the name is gone and the daemon serves others.
    for _ in range(100):
        try:
            daemon.models.UnloadModel(pb.model.UnloadModelRequest(name="race"),
                                      metadata=daemon.admin(), timeout=60)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                break
            assert e.code() == grpc.StatusCode.FAILED_PRECONDITION  # still loading
            import time
            time.sleep(0.05)
    code, _ = code_of(lambda: daemon.models.GetModel(pb.model.GetModelRequest(name="race")))
    assert code == grpc.StatusCode.NOT_FOUND
    assert generate(daemon, "ok", max_new_tokens=2)[0]
