"""Fixtures for kbitd end-to-end tests: Python stubs generated from proto/ with grpc_tools, a tiny
random Llama checkpoint written with numpy + safetensors next to the bundled tokenizer, and kbitd
daemons started on port 0."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("KBITD_BUILD_DIR", REPO / "build"))
ADMIN_TOKEN = "e2e-admin-token"


@pytest.fixture(scope="session")
def pb(tmp_path_factory):
    """The generated kbitd.v1 modules (messages and stubs)."""
    from grpc_tools import protoc
    import grpc_tools

    out = tmp_path_factory.mktemp("stubs")
    include = Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(str(p.relative_to(REPO / "proto")) for p in (REPO / "proto").rglob("*.proto"))
    rc = protoc.main(["protoc", f"-I{REPO / 'proto'}", f"-I{include}", f"--python_out={out}",
                      f"--grpc_python_out={out}", *protos])
    assert rc == 0, "protoc failed"
    sys.path.insert(0, str(out))
    from kbitd.v1 import (config_pb2, inference_service_pb2, inference_service_pb2_grpc,
                          model_service_pb2, model_service_pb2_grpc, quantization_pb2)

    class Modules:
        pass

    m = Modules()
    for name, mod in dict(config=config_pb2, inference=inference_service_pb2,
                          inference_grpc=inference_service_pb2_grpc, model=model_service_pb2,
                          model_grpc=model_service_pb2_grpc, quant=quantization_pb2).items():
        setattr(m, name, mod)
    return m


def write_tiny_llama(folder: Path, seed: int = 0, layers: int = 2):
    """A random LlamaForCausalLM (hidden 64, GQA 4/2 heads) with the bundled tokenizer."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(REPO / "models" / "default" / name, folder / name)
    vocab = json.loads((REPO / "models/default/config.json").read_text())["vocab_size"]
    hidden, inter, heads, kv_heads, head_dim = 64, 128, 4, 2, 16
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
        "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": head_dim,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "hidden_act": "silu", "tie_word_embeddings": False, "bos_token_id": 0,
        "eos_token_id": 0, "torch_dtype": "float32",
    }
    (folder / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(seed)

    def w(*shape, std=0.1):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    tensors = {"model.embed_tokens.weight": w(vocab, hidden, std=1.0),
               "model.norm.weight": np.ones(hidden, np.float32),
               "lm_head.weight": w(vocab, hidden, std=0.2)}
    for i in range(layers):
        p = f"model.layers.{i}."
        tensors.update({
            p + "input_layernorm.weight": np.ones(hidden, np.float32),
            p + "post_attention_layernorm.weight": np.ones(hidden, np.float32),
            p + "self_attn.q_proj.weight": w(heads * head_dim, hidden),
            p + "self_attn.k_proj.weight": w(kv_heads * head_dim, hidden),
            p + "self_attn.v_proj.weight": w(kv_heads * head_dim, hidden),
            p + "self_attn.o_proj.weight": w(hidden, heads * head_dim),
            p + "mlp.gate_proj.weight": w(inter, hidden),
            p + "mlp.up_proj.weight": w(inter, hidden),
            p + "mlp.down_proj.weight": w(hidden, inter),
        })
    save_file(tensors, str(folder / "model.safetensors"))


class Daemon:
    """A running kbitd: its ports, channel and stubs."""

    def __init__(self, root: Path, pb, yaml_extra: str = "", models=("tiny",),
                 shutdown_grace_seconds: float = 20):
        import grpc

        self.root = root
        self.config = root / "kbitd.yaml"
        models_yaml = "".join(f"  - name: {m}\n    path: {m}\n" for m in models)
        self.config.write_text(
            f"listen_address: 127.0.0.1:0\nmetrics_address: 127.0.0.1:0\n"
            f"model_root: {root / 'models'}\nadmin_token: {ADMIN_TOKEN}\n"
            f"unload_grace_seconds: 0.05\nshutdown_grace_seconds: {shutdown_grace_seconds}\n"
            f"num_threads: 1\n"
            + (f"models:\n{models_yaml}" if models else "") + yaml_extra)
        self.proc = subprocess.Popen([str(BUILD / "server" / "kbitd"), "--config", str(self.config)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.port = self.metrics_port = None
        deadline = time.time() + 30
        while self.port is None or self.metrics_port is None:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("kbitd exited: " + self.proc.stderr.read())
            if m := re.match(r"kbitd: listening on .*:(\d+)", line):
                self.port = int(m.group(1))
            if m := re.match(r"kbitd: metrics on port (\d+)", line):
                self.metrics_port = int(m.group(1))
            assert time.time() < deadline
        self.stderr_lines = []
        threading.Thread(target=self._drain, daemon=True).start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.models = pb.model_grpc.ModelServiceStub(self.channel)
        self.inference = pb.inference_grpc.InferenceServiceStub(self.channel)
        self.pb = pb
        for m in models:
            self.wait_ready(m)

    def _drain(self):
        for line in self.proc.stderr:
            self.stderr_lines.append(line)

    def wait_ready(self, name, timeout=60):
        import grpc

        deadline = time.time() + timeout
        while True:
            try:
                info = self.models.GetModel(self.pb.model.GetModelRequest(name=name), timeout=5)
                if info.state == self.pb.model.MODEL_STATE_READY:
                    return info
                assert info.state != self.pb.model.MODEL_STATE_FAILED, info.error
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.NOT_FOUND, e
            assert time.time() < deadline, f"{name} not ready"
            time.sleep(0.05)

    def admin(self):
        return [("authorization", f"Bearer {ADMIN_TOKEN}")]

    def alive(self):
        return self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=30):
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            return self.proc.wait(timeout=timeout)
        return self.proc.returncode


@pytest.fixture(scope="session")
def model_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("kbitd")
    write_tiny_llama(root / "models" / "tiny", seed=1)
    write_tiny_llama(root / "models" / "tiny2", seed=2)
    (root / "outside").mkdir()
    write_tiny_llama(root / "outside" / "secret", seed=3)
    os.symlink(root / "outside" / "secret", root / "models" / "escape")
    return root


@pytest.fixture(scope="session")
def daemon(model_root, pb):
    d = Daemon(model_root, pb, yaml_extra="limits:\n  max_queue: 512\n  max_new_tokens: 8192\n")
    yield d
    assert d.stop() == 0


# The daemon is built once the runtime's engine, tokenizer and loader are in the tree
# (server/CMakeLists.txt); until then these tests skip, saying so.
requires_kbitd = pytest.mark.skipif(
    not (BUILD / "server" / "kbitd").exists(),
    reason=f"kbitd is not built ({BUILD / 'server' / 'kbitd'} missing)")
