"""Operations: queue overflow, a real Prometheus scraping /metrics, promtool lint, SIGTERM drain."""

import concurrent.futures
import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import grpc
import numpy as np
import pytest

from conftest import REPO, Daemon, requires_kbitd
from test_generate import generate

sys.path.insert(0, str(REPO / "tests"))
from required_tools import find  # noqa: E402

pytestmark = requires_kbitd


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(d):
    return urllib.request.urlopen(f"http://127.0.0.1:{d.metrics_port}/metrics", timeout=5).read()


def test_queue_overflow_is_resource_exhausted(model_root, pb):
    d = Daemon(model_root, pb, yaml_extra=(
        "limits:\n  max_queue: 2\n  max_batch_size: 1\n  max_batch_tokens: 64\n"
        "  prefill_chunk_tokens: 64\n"))
    try:
        def one(_):
            try:
                return len(generate(d, "while True:", max_new_tokens=60)[0])
            except grpc.RpcError as e:
                return e.code()
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            results = list(pool.map(one, range(12)))
        rejected = [r for r in results if r == grpc.StatusCode.RESOURCE_EXHAUSTED]
        served = [r for r in results if isinstance(r, int)]
        assert rejected and served, results
        assert len(rejected) + len(served) == 12, results
        text = scrape(d).decode()
        assert 'kbitd_requests_total{model="tiny",outcome="rejected"} %d' % len(rejected) in text
        assert generate(d, "ok", max_new_tokens=2)[0]  # serving again once the queue drained
    finally:
        assert d.stop() == 0


def test_prometheus_scrapes_and_promtool_passes(daemon, tmp_path):
    for _ in range(3):
        generate(daemon, "def f():", max_new_tokens=4)
    exposition = scrape(daemon)
    lint = subprocess.run([find("promtool"), "check", "metrics"], input=exposition, capture_output=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr

    port = free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: kbitd\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{daemon.metrics_port}']\n")
    prometheus = subprocess.Popen(
        [find("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        query = "sum(kbitd_requests_total{model=\"tiny\",outcome=~\"length|stop\"})"
        url = f"http://127.0.0.1:{port}/api/v1/query?query=" + urllib.parse.quote(query)
        deadline = time.time() + 60
        value = None
        while time.time() < deadline:
            try:
                body = json.load(urllib.request.urlopen(url, timeout=2))
                if body["data"]["result"]:
                    value = float(body["data"]["result"][0]["value"][1])
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.5)
        assert value is not None and value >= 3
        ttft = "kbitd_time_to_first_token_seconds_count{model=\"tiny\"}"
        body = json.load(urllib.request.urlopen(
            f"http://127.0.0.1:{port}/api/v1/query?query=" + urllib.parse.quote(ttft), timeout=2))
        assert float(body["data"]["result"][0]["value"][1]) >= 3
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)


def kernel_counts(d, model):
    """kind -> kbitd_kernel_duration_seconds_count of `model`."""
    counts = {}
    for line in scrape(d).decode().splitlines():
        m = re.match(r'kbitd_kernel_duration_seconds_count\{(.*)\} (\S+)$', line)
        if m and f'model="{model}"' in m.group(1):
            counts[re.search(r'kind="([a-z_]+)"', m.group(1)).group(1)] = float(m.group(2))
    return counts


def test_kernel_latency_histograms_after_generation(model_root, pb):
    d = Daemon(model_root, pb, yaml_extra="kernel_timing_interval_steps: 1\n")
    try:
        kinds = {"quantized_matmul", "dense_matmul", "attention", "norm", "rope", "activation",
                 "embedding", "sampling"}
        before = kernel_counts(d, "tiny")
        assert set(before) == kinds and not any(before.values()), before
        ids = generate(d, "def f():", max_new_tokens=4)[0]
        after = kernel_counts(d, "tiny")
        # The float32 model runs no quantized matmul; everything else ran on every step.
        assert after["quantized_matmul"] == 0, after
        for kind in kinds - {"quantized_matmul"}:
            assert after[kind] > before[kind], (kind, after)
        assert after["sampling"] == len(ids), after  # one sampling step per generated token
        q = pb.quant.QuantizationConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")
        d.models.LoadModel(pb.model.LoadModelRequest(name="tiny-nf4", path="tiny", quantization=q),
                           metadata=d.admin(), timeout=120)
        generate(d, "x = 1", max_new_tokens=2, model="tiny-nf4")
        assert kernel_counts(d, "tiny-nf4")["quantized_matmul"] > 0
        text = scrape(d).decode()
        assert 'kbitd_kernel_duration_seconds_bucket{kind="attention",model="tiny",le="+Inf"}' in text
    finally:
        assert d.stop() == 0


def test_sigterm_drains_in_flight_streams_and_exits_zero(model_root, pb):
    d = Daemon(model_root, pb)
    pbi = pb.inference
    request = pbi.GenerateRequest(model="tiny", prompt=b"x", max_new_tokens=1000,
                                  sampling=pbi.SamplingParams(temperature=0))
    stream = d.inference.Generate(request, timeout=60)
    first = next(stream)
    d.proc.send_signal(signal.SIGTERM)
    rest = list(stream)  # the in-flight stream completes within the grace period
    assert len(first.token_ids) + sum(len(r.token_ids) for r in rest) == 1000
    assert rest[-1].finish_reason == pbi.FINISH_REASON_LENGTH
    assert d.proc.wait(timeout=30) == 0


def test_sigterm_ends_streams_outlasting_the_grace_with_unavailable(model_root, pb):
    """A stream still running when the drain ends gets UNAVAILABLE, gRPC's code for "retry, maybe
    elsewhere": the replica is going away, and a normal ending would pass the cut-off text off as a
    finished one."""
    d = Daemon(model_root, pb, yaml_extra="limits:\n  max_new_tokens: 8192\n",
               shutdown_grace_seconds=0.5)
    pbi = pb.inference
    request = pbi.GenerateRequest(model="tiny", prompt=b"x", max_new_tokens=4000,
                                  sampling=pbi.SamplingParams(temperature=0))
    stream = d.inference.Generate(request, timeout=60)
    received = len(next(stream).token_ids)
    d.proc.send_signal(signal.SIGTERM)
    with pytest.raises(grpc.RpcError) as error:
        for response in stream:
            received += len(response.token_ids)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in error.value.details()
    assert 0 < received < 4000
    assert d.proc.wait(timeout=30) == 0


def test_tls_serves_tls_clients_only(model_root, pb, tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run([find("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    d = Daemon(model_root, pb, models=(),
               yaml_extra=f"tls:\n  cert_file: {cert}\n  key_file: {key}\n")
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(f"localhost:{d.port}", credentials) as channel:
            stub = pb.model_grpc.ModelServiceStub(channel)
            assert list(stub.ListModels(pb.model.ListModelsRequest(), timeout=10).models) == []
        with grpc.insecure_channel(f"127.0.0.1:{d.port}") as channel:
            stub = pb.model_grpc.ModelServiceStub(channel)
            with pytest.raises(grpc.RpcError) as e:
                stub.ListModels(pb.model.ListModelsRequest(), timeout=5)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        assert d.stop() == 0


def memory_bytes(d, model):
    """Sum of kbitd_memory_bytes series labelled with `model` (0 when there are none)."""
    total = 0.0
    for line in scrape(d).decode().splitlines():
        if line.startswith("kbitd_memory_bytes{") and f'model="{model}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def series(d):
    """The series /metrics has now: each sample's name and labels, without its value."""
    return {line.rsplit(" ", 1)[0] for line in scrape(d).decode().splitlines()
            if line and not line.startswith("#")}


def model_series(d, model):
    return sorted(s for s in series(d) if f'model="{model}"' in s)


def test_unknown_model_names_add_no_series_and_unloaded_models_leave_none(model_root, pb):
    """Generate needs no credentials, so the names it carries must not create series: 5,000 unknown
    names once made /metrics 141 MB. Series exist for loaded models only and leave with them."""
    d = Daemon(model_root, pb)
    try:
        before = series(d)
        for i in range(500):
            request = pb.inference.GenerateRequest(model=f"ghost-{i}", prompt=b"x",
                                                   max_new_tokens=1)
            with pytest.raises(grpc.RpcError) as error:
                list(d.inference.Generate(request, timeout=10))
            assert error.value.code() == grpc.StatusCode.NOT_FOUND
        added = series(d) - before
        assert not added, f"{len(added)} series added, e.g. {sorted(added)[:3]}"

        load = pb.model.LoadModelRequest(name="victim", path="tiny2")
        d.models.LoadModel(load, metadata=d.admin(), timeout=60)
        assert generate(d, "x", max_new_tokens=2, model="victim")[0]
        assert 'kbitd_requests_total{model="victim",outcome="length"}' in series(d)
        d.models.UnloadModel(pb.model.UnloadModelRequest(name="victim"), metadata=d.admin(),
                             timeout=60)
        # The device worker and the finished call let go of the model moments after the unload.
        deadline = time.time() + 10
        while model_series(d, "victim") and time.time() < deadline:
            time.sleep(0.05)
        assert model_series(d, "victim") == []
        assert model_series(d, "tiny")  # the other model keeps its series

        # Loaded again under the same name, the model starts from fresh series.
        d.models.LoadModel(load, metadata=d.admin(), timeout=60)
        text = scrape(d).decode()
        assert 'kbitd_requests_total{model="victim",outcome="length"} 0' in text
    finally:
        assert d.stop() == 0


def gauge(d, name, model):
    m = re.search(rf'^{name}{{model="{model}"}} (\S+)$', scrape(d).decode(), re.MULTILINE)
    return float(m.group(1)) if m else None


def test_quantization_saved_bytes_count_the_quantized_linears_only(daemon, pb):
    """Against fp16: an unquantized model saved nothing (fp32 weights are not a loss), an NF4
    one saves 2 bytes per weight of each quantized linear minus its 4-bit codes and fp32 absmax
    per 64-weight block. lm_head stays unquantized, as in transformers."""
    from safetensors.numpy import load_file

    assert gauge(daemon, "kbitd_quantization_saved_bytes", "tiny") == 0
    tensors = load_file(str(daemon.root / "models" / "tiny" / "model.safetensors"))
    expected = 0
    for name, tensor in tensors.items():
        if name.startswith("model.layers.") and name.endswith("_proj.weight"):
            n = tensor.size
            expected += 2 * n - (n // 2 + 4 * -(-n // 64))
    q = pb.quant.QuantizationConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")
    daemon.models.LoadModel(pb.model.LoadModelRequest(name="saved-nf4", path="tiny", quantization=q),
                            metadata=daemon.admin(), timeout=120)
    try:
        assert gauge(daemon, "kbitd_quantization_saved_bytes", "saved-nf4") == expected > 0
        info = daemon.models.GetModel(pb.model.GetModelRequest(name="saved-nf4"))
        assert info.saved_bytes == expected  # ModelInfo and the metric agree
    finally:
        daemon.models.UnloadModel(pb.model.UnloadModelRequest(name="saved-nf4"),
                                  metadata=daemon.admin(), timeout=60)


def test_max_prompt_tokens_limit(model_root, pb):
    d = Daemon(model_root, pb, yaml_extra="limits:\n  max_prompt_tokens: 8\n")
    try:
        request = pb.inference.GenerateRequest(model="tiny", prompt_token_ids=list(range(1, 10)),
                                               max_new_tokens=2)
        with pytest.raises(grpc.RpcError) as error:
            list(d.inference.Generate(request, timeout=30))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "9 tokens; at most 8" in error.value.details()
        request = pb.inference.GenerateRequest(model="tiny", prompt_token_ids=list(range(1, 9)),
                                               max_new_tokens=2)
        assert sum(len(r.token_ids) for r in d.inference.Generate(request, timeout=30)) == 2
    finally:
        assert d.stop() == 0


def test_load_failing_half_way_frees_what_it_took(daemon, pb):
    """The last tensor the loader reads has the wrong shape: everything allocated before it is freed,
    the model is FAILED with the reason, and the pool's gauges for it are back at zero."""
    from safetensors.numpy import load_file, save_file

    from conftest import write_tiny_llama

    folder = daemon.root / "models" / "halfway"
    write_tiny_llama(folder, seed=4)
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["model.norm.weight"] = np.ones(63, np.float32)  # hidden is 64
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(grpc.RpcError) as error:
        daemon.models.LoadModel(pb.model.LoadModelRequest(name="halfway", path="halfway"),
                                metadata=daemon.admin(), timeout=60)
    assert "model.norm.weight" in error.value.details()
    info = daemon.models.GetModel(pb.model.GetModelRequest(name="halfway"), timeout=10)
    assert info.state == pb.model.MODEL_STATE_FAILED and "model.norm.weight" in info.error
    assert sum(m.weight_bytes + m.kv_cache_bytes + m.workspace_bytes for m in info.memory) == 0
    assert memory_bytes(daemon, "halfway") == 0
    assert memory_bytes(daemon, "tiny") > 0  # the gauges are real: the served model has bytes
    daemon.models.UnloadModel(pb.model.UnloadModelRequest(name="halfway"), metadata=daemon.admin())


def memory_series(d, but):
    """The kbitd_memory_bytes series of every model but `but`: {labels: value}."""
    series = {}
    for line in scrape(d).decode().splitlines():
        if line.startswith("kbitd_memory_bytes{") and f'model="{but}"' not in line:
            labels, value = line.rsplit(" ", 1)
            series[labels] = float(value)
    return series


@pytest.mark.parametrize("fields, wanted", [
    # An explicit size no host has free.
    (lambda pb: {"kv_cache_bytes": "1000TiB"}, "cpu: kv_cache_bytes 1099511627776000 needs"),
    # The default, when max_memory leaves less than one 4096-token sequence (2 MiB) after the
    # tiny model's ~4.5 MB of weights.
    (lambda pb: {"placement": pb.quant.PlacementConfig(max_memory={"cpu": "5MiB"})},
     "cpu: the smallest KV cache, one max_context sequence of 4096 tokens, needs 2097152 bytes"),
], ids=["explicit", "default"])
def test_kv_cache_that_does_not_fit_fails_the_load_and_frees_everything(daemon, pb, fields,
                                                                        wanted):
    before = memory_series(daemon, but="too-big")
    request = pb.model.LoadModelRequest(name="too-big", path="tiny2", **fields(pb))
    with pytest.raises(grpc.RpcError) as error:
        daemon.models.LoadModel(request, metadata=daemon.admin(), timeout=60)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert wanted in error.value.details() and "bytes are available" in error.value.details()
    info = daemon.models.GetModel(pb.model.GetModelRequest(name="too-big"), timeout=10)
    assert info.state == pb.model.MODEL_STATE_FAILED and "bytes are available" in info.error
    assert sum(m.weight_bytes + m.kv_cache_bytes + m.workspace_bytes for m in info.memory) == 0
    # The weights it loaded are freed and no other model's memory moved.
    assert memory_bytes(daemon, "too-big") == 0
    assert memory_series(daemon, but="too-big") == before
    daemon.models.UnloadModel(pb.model.UnloadModelRequest(name="too-big"), metadata=daemon.admin())
    with pytest.raises(grpc.RpcError) as error:
        daemon.models.GetModel(pb.model.GetModelRequest(name="too-big"), timeout=10)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert generate(daemon, "ok", max_new_tokens=2)[0]


def test_default_kv_cache_stops_at_max_batch_size_sequences(model_root, pb):
    d = Daemon(model_root, pb, yaml_extra="limits:\n  max_batch_size: 2\n")
    try:
        # Two 4096-token sequences (4 MiB), far below an eighth of any test host's free memory.
        assert d.wait_ready("tiny").kv_cache_tokens == 2 * 4096
    finally:
        assert d.stop() == 0


def test_deprecated_kv_cache_tokens_is_honoured_with_a_warning(model_root, pb):
    """kv_cache_tokens still sizes the models without kv_cache_bytes; kv_cache_bytes wins."""
    d = Daemon(model_root, pb, models=(), yaml_extra=(
        "kv_cache_tokens: 1000\nmodels:\n  - {name: tiny, path: tiny}\n"
        "  - {name: tiny2, path: tiny2, kv_cache_bytes: 4MiB}\n"))
    try:
        tiny, tiny2 = d.wait_ready("tiny"), d.wait_ready("tiny2")
        assert tiny.kv_cache_tokens == 1008  # whole blocks of 16
        assert tiny2.kv_cache_tokens == 8192 and tiny2.kv_cache_bytes == 4 << 20
        deadline = time.time() + 10  # stderr is read by a thread
        while not any("kv_cache_tokens is deprecated" in line for line in d.stderr_lines):
            assert time.time() < deadline, d.stderr_lines
            time.sleep(0.05)
    finally:
        assert d.stop() == 0


@pytest.mark.parametrize("flags,message", [
    (["--tls_cert_file=/nonexistent/cert.pem", "--tls_key_file=/nonexistent/key.pem"],
     "tls.cert_file: cannot open /nonexistent/cert.pem"),
    (["--tls_cert_file=/nonexistent/cert.pem"], "cert_file and key_file must be set together"),
    (["--model_root=/nonexistent/models"], "model root /nonexistent/models"),
    (["--listen_address=256.1.1.1:99"], "cannot listen on 256.1.1.1:99"),
], ids=["tls files missing", "tls half configured", "model root missing", "bad address"])
def test_startup_errors_exit_with_a_message_not_a_crash(flags, message):
    from conftest import BUILD

    args = [str(BUILD / "server" / "kbitd"), "--listen_address=127.0.0.1:0",
            "--metrics_address=off", *flags]
    if flags[0].startswith("--listen_address"):
        args.remove("--listen_address=127.0.0.1:0")
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert proc.returncode in (1, 2), (proc.returncode, proc.stderr)  # < 0 would be a signal
    assert message in proc.stderr
