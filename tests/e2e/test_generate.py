"""Generate end to end through Python grpcio: streaming, greedy determinism under 64 concurrent
streams, seeds, stop strings, cancellation, deadlines, unload during generation."""

import concurrent.futures
import re
import threading
import time
import urllib.request

import grpc
import pytest

from conftest import requires_kbitd

pytestmark = requires_kbitd


def generate(d, prompt, max_new_tokens=12, timeout=60, **kwargs):
    pb = d.pb
    sampling = kwargs.pop("sampling", pb.inference.SamplingParams(temperature=0))
    request = pb.inference.GenerateRequest(model=kwargs.pop("model", "tiny"), prompt=prompt.encode(),
                                           max_new_tokens=max_new_tokens, sampling=sampling,
                                           **kwargs)
    ids, text, last = [], "", None
    for response in d.inference.Generate(request, timeout=timeout):
        ids.extend(response.token_ids)
        text += response.text
        last = response
    return ids, text, last


def outcomes(d, model="tiny"):
    """kbitd_requests_total of `model` by outcome."""
    url = f"http://127.0.0.1:{d.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    found = re.findall(rf'kbitd_requests_total{{model="{model}",outcome="(\w+)"}} (\S+)', text)
    return {outcome: float(value) for outcome, value in found}


def outcomes_after(d, before, outcome, model="tiny", timeout=10):
    """The counts once `outcome` has gone up from `before`: the daemon counts an ending at its next
    step, which may come after the client has seen the call end."""
    deadline = time.time() + timeout
    while True:
        now = outcomes(d, model)
        if now[outcome] > before[outcome] or time.time() > deadline:
            return now
        time.sleep(0.02)


PROMPTS = ["def fibonacci(n):", "import os\n", "class Foo:", "# comment", "x = [1, 2, 3]",
           "for i in range(10):", "return None", "while True:"]


def test_greedy_stream_has_tokens_text_and_usage(daemon):
    ids, text, last = generate(daemon, PROMPTS[0], max_new_tokens=10)
    pb = daemon.pb
    assert 1 <= len(ids) <= 10
    assert last.finish_reason in (pb.inference.FINISH_REASON_LENGTH, pb.inference.FINISH_REASON_STOP)
    assert last.usage.completion_tokens == len(ids)
    assert last.usage.prompt_tokens > 0
    assert last.usage.total_seconds >= last.usage.time_to_first_token_seconds > 0
    detok = daemon.inference.Detokenize(pb.inference.DetokenizeRequest(
        model="tiny", token_ids=ids, skip_special_tokens=True))
    assert detok.text == text


def test_64_concurrent_greedy_streams_equal_their_single_results(daemon):
    single = {p: generate(daemon, p, max_new_tokens=16)[0] for p in PROMPTS}
    jobs = [PROMPTS[i % len(PROMPTS)] for i in range(64)]
    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        results = list(pool.map(lambda p: generate(daemon, p, max_new_tokens=16)[0], jobs))
    for prompt, ids in zip(jobs, results):
        assert ids == single[prompt], prompt


def test_same_seed_same_tokens(daemon):
    pb = daemon.pb
    s = pb.inference.SamplingParams(temperature=1.0, top_k=50, seed=1234)
    a = generate(daemon, PROMPTS[1], max_new_tokens=16, sampling=s)[0]
    b = generate(daemon, PROMPTS[1], max_new_tokens=16, sampling=s)[0]
    assert a == b


def test_logprobs(daemon):
    pb = daemon.pb
    ids, _, _ = generate(daemon, PROMPTS[2], max_new_tokens=4, logprobs=True, top_logprobs=3)
    request = pb.inference.GenerateRequest(model="tiny", prompt=PROMPTS[2].encode(),
                                           max_new_tokens=4, logprobs=True, top_logprobs=3,
                                           sampling=pb.inference.SamplingParams(temperature=0))
    logprobs = [lp for r in daemon.inference.Generate(request, timeout=30) for lp in r.logprobs]
    assert [lp.token_id for lp in logprobs] == ids
    for lp in logprobs:
        assert len(lp.top) == 3
        assert lp.top[0].token_id == lp.token_id  # greedy picks the best
        assert lp.logprob <= 0


def test_stop_string_ends_generation_before_it(daemon):
    pb = daemon.pb
    _, text, _ = generate(daemon, PROMPTS[3], max_new_tokens=24)
    if len(text) < 4:
        pytest.skip("the random model produced too little text for a stop string")
    stop = text[len(text) // 2:len(text) // 2 + 2]
    _, stopped, last = generate(daemon, PROMPTS[3], max_new_tokens=24, stop=[stop])
    assert stop not in stopped
    assert text.startswith(stopped)
    assert last.finish_reason == pb.inference.FINISH_REASON_STOP


def test_stop_token_id(daemon):
    pb = daemon.pb
    ids, _, _ = generate(daemon, PROMPTS[4], max_new_tokens=12)
    stop_id = ids[3]
    got, _, last = generate(daemon, PROMPTS[4], max_new_tokens=12, stop_token_ids=[stop_id])
    assert got == ids[:ids.index(stop_id) + 1]
    assert last.finish_reason == pb.inference.FINISH_REASON_STOP


def test_cancel_mid_stream_frees_the_slot(daemon):
    pb = daemon.pb
    request = pb.inference.GenerateRequest(model="tiny", prompt=b"while True:", max_new_tokens=4000,
                                           sampling=pb.inference.SamplingParams(temperature=0))
    before = outcomes(daemon)
    call = daemon.inference.Generate(request, timeout=60)
    next(call)
    call.cancel()
    with pytest.raises(grpc.RpcError) as e:
        for _ in call:
            pass
    assert e.value.code() == grpc.StatusCode.CANCELLED
    after = outcomes_after(daemon, before, "cancelled")
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["deadline_exceeded"] == before["deadline_exceeded"]
    # The daemon keeps serving.
    assert generate(daemon, PROMPTS[0], max_new_tokens=2)[0]


def test_deadline_ends_a_long_generation(daemon):
    pb = daemon.pb
    request = pb.inference.GenerateRequest(model="tiny", prompt=b"x", max_new_tokens=4000,
                                           sampling=pb.inference.SamplingParams(temperature=0))
    before = outcomes(daemon)
    start = time.time()
    received = []
    with pytest.raises(grpc.RpcError) as e:
        for response in daemon.inference.Generate(request, timeout=0.05):
            received.extend(response.token_ids)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(received) < 4000
    assert time.time() - start < 5
    # gRPC cancels the call when its deadline passes; that is counted as the deadline, once.
    after = outcomes_after(daemon, before, "deadline_exceeded")
    assert after["deadline_exceeded"] == before["deadline_exceeded"] + 1
    assert after["cancelled"] == before["cancelled"]
    assert generate(daemon, PROMPTS[0], max_new_tokens=2)[0]


def test_unload_during_generation_cancels_after_grace(daemon):
    pb = daemon.pb
    daemon.models.LoadModel(pb.model.LoadModelRequest(name="victim", path="tiny2"),
                            metadata=daemon.admin(), timeout=60)
    request = pb.inference.GenerateRequest(model="victim", prompt=b"x", max_new_tokens=4000,
                                           sampling=pb.inference.SamplingParams(temperature=0))
    stream = daemon.inference.Generate(request, timeout=60)
    first = next(stream)
    assert first.token_ids
    result = {}
    t = threading.Thread(target=lambda: result.update(r=daemon.models.UnloadModel(
        pb.model.UnloadModelRequest(name="victim"), metadata=daemon.admin(), timeout=60)))
    t.start()
    rest = list(stream)
    t.join()
    # 4000 tokens take far longer than the 50 ms grace period, so the stream is cancelled by the daemon
    # and ends normally with FINISH_REASON_CANCELLED and its usage.
    assert rest[-1].finish_reason == pb.inference.FINISH_REASON_CANCELLED
    assert rest[-1].usage.completion_tokens == len(first.token_ids) + sum(
        len(r.token_ids) for r in rest) < 4000
    assert result["r"].cancelled_requests == 1
    assert result["r"].freed_bytes > 0
    with pytest.raises(grpc.RpcError) as e:
        daemon.models.GetModel(pb.model.GetModelRequest(name="victim"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert generate(daemon, PROMPTS[0], max_new_tokens=2)[0]
