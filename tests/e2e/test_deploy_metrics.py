"""deploy/ against the real daemon: kbitd started with the configs that deploy/ ships (the Helm
chart's ConfigMap, the image's baked kbitd.yaml, the KServe runtime's start script) must accept them
and become ready on the health service names the probes ask about; the Dockerfile's HEALTHCHECK
command must pass; and every kbitd metric name used by the Grafana dashboard, the Prometheus rules,
the prometheus-adapter rules and the chart's HPA must exist in the live /metrics, with the label
values the queries match on.

kbitd is looked up at $KBITD_BUILD_DIR/server/kbitd (default build/); the tests skip, saying so,
only while that binary does not exist yet.
"""

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import json
import socket
import urllib.parse

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "deploy"))
import deploy_lib as d  # noqa: E402

sys.path.insert(0, str(REPO / "tests"))
from required_tools import find  # noqa: E402

BUILD = d.env_path("KBITD_BUILD_DIR", REPO / "build")
if not BUILD.is_absolute():
    BUILD = REPO / BUILD
KBITD = BUILD / "server" / "kbitd"
KBITCTL = BUILD / "tools" / "kbitctl" / "kbitctl"
MODELS = REPO / "models"

pytestmark = pytest.mark.skipif(
    not KBITD.exists(),
    reason=f"kbitd is not built yet ({KBITD} missing; server/CMakeLists.txt builds it once the "
           "runtime engine, tokenizer and loader are in the tree)")

READY_TIMEOUT_S = 120


class Daemon:
    """A kbitd process on free loopback ports; stops it with SIGTERM and expects exit code 0."""

    def __init__(self, args, env=None, cwd=None):
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env, cwd=cwd)
        self.lines = []
        self.port = None
        self.metrics_port = None
        self._seen = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + 30
        with self._seen:
            while self.port is None or self.metrics_port is None:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError("kbitd did not start:\n" + self.output())
                self._seen.wait(0.2)
        self.address = f"127.0.0.1:{self.port}"

    def _read(self):
        for line in self.proc.stdout:
            with self._seen:
                self.lines.append(line)
                if m := re.search(r"listening on \S+:(\d+)", line):
                    self.port = int(m.group(1))
                if m := re.search(r"metrics on port (\d+)", line):
                    self.metrics_port = int(m.group(1))
                self._seen.notify_all()

    def output(self):
        return "".join(self.lines[-60:])

    def health(self, service):
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            except grpc.RpcError as e:
                return e.code()

    def wait_serving(self, service):
        deadline = time.monotonic() + READY_TIMEOUT_S
        status = None
        while time.monotonic() < deadline:
            status = self.health(service)
            if status == health_pb2.HealthCheckResponse.SERVING:
                return
            assert self.proc.poll() is None, "kbitd exited:\n" + self.output()
            # A configured model that failed to load never becomes ready: say why at once.
            assert not any("preloading:" in line for line in self.lines), self.output()
            time.sleep(0.2)
        raise AssertionError(f"health service {service!r} not SERVING after {READY_TIMEOUT_S} s "
                             f"(last: {status}):\n{self.output()}")

    def scrape(self):
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read().decode()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_with_config(tmp_path, config_text, *flags):
    """kbitd reading `config_text` unchanged as its file; flags put it on loopback ports."""
    config = tmp_path / "kbitd.yaml"
    config.write_text(config_text)
    return Daemon([str(KBITD), f"--config={config}", "--listen_address=127.0.0.1:0",
                   "--metrics_address=127.0.0.1:0", *flags])


def run_kbitctl(*args):
    assert KBITCTL.exists(), f"{KBITCTL} missing (CMake target kbitctl)"
    return subprocess.run([str(KBITCTL), *args], capture_output=True, text=True, timeout=120)


def exposition_index(text):
    """{sample or family name: [label dicts]} of a Prometheus text exposition."""
    index = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            index.setdefault(line.split()[2], [])
            continue
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s", line)
        if m:
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
            index.setdefault(m.group(1), []).append(labels)
    return index


@pytest.fixture(scope="module")
def chart_daemon(tmp_path_factory):
    """kbitd with the Helm chart's default kbitd.yaml (its model root is the repository's models/,
    which holds the bundled default model the chart seeds into the volume)."""
    rendered = d.render_chart({})
    daemon = start_with_config(tmp_path_factory.mktemp("chart"), d.config_map_yaml(rendered),
                               f"--model_root={MODELS}")
    yield daemon, rendered
    assert daemon.stop() == 0, "kbitd did not drain and exit 0 on SIGTERM:\n" + daemon.output()


def test_chart_config_starts_and_becomes_ready(chart_daemon):
    daemon, rendered = chart_daemon
    c = d.container(rendered)
    # The three probes ask exactly these services.
    daemon.wait_serving(c["startupProbe"]["grpc"]["service"])
    daemon.wait_serving(c["livenessProbe"]["grpc"]["service"])
    daemon.wait_serving(c["readinessProbe"]["grpc"]["service"])
    # The same answer through `kbitctl health`, the command the chart runs in the pod under TLS
    # (here in plaintext: --tls_ca left out).
    probe = d.container(d.render_chart(
        {"tls": {"enabled": True, "existingSecret": "x"}}))["readinessProbe"]["exec"]["command"]
    args = [a for a in probe[1:] if not a.startswith("--tls_ca")]
    args = [f"--address={daemon.address}" if a.startswith("--address=") else a for a in args]
    result = run_kbitctl(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    # A name nobody serves is not ready.
    result = run_kbitctl(f"--address={daemon.address}", "health", "no-such-model")
    assert result.returncode != 0


def test_every_metric_used_by_deploy_exists(chart_daemon):
    daemon, _ = chart_daemon
    daemon.wait_serving("default")
    # One generation, so every per-request series has been touched at least once.
    result = run_kbitctl(f"--address={daemon.address}", "generate", "default", "def add(a, b):",
                         "--max_new_tokens=4", "--temperature=0")
    assert result.returncode == 0, result.stdout + result.stderr + daemon.output()
    index = exposition_index(daemon.scrape())
    used = d.metric_names_used()
    assert len(used) >= 15, used
    missing = {name: where for name, where in used.items() if name not in index}
    assert not missing, (
        "metric names used by deploy/ but not exported by kbitd (rename them in deploy/ or "
        f"export them in server/metrics.cc): {missing}")
    # Equality matchers (outcome="rejected", state="failed", ...) match labels kbitd really uses.
    bad = []
    for name, label, value in sorted(d.label_matchers_used()):
        if not any(sample.get(label) == value for sample in index.get(name, [])):
            bad.append(f'{name}{{{label}="{value}"}}')
    assert not bad, f"no such series in kbitd's /metrics: {bad}"


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _prom_query(port, expr):
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_real_prometheus_evaluates_rules_and_dashboard(chart_daemon, tmp_path):
    """Debian's Prometheus scrapes the live daemon with deploy/'s rules loaded: the recording rules
    produce series, no alert fires on a healthy daemon, and every dashboard panel query returns
    data."""
    prometheus = find("prometheus")
    daemon, _ = chart_daemon
    daemon.wait_serving("default")
    shutil.copy(d.RULES, tmp_path / d.RULES.name)
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [d.RULES.name],
        "scrape_configs": [{"job_name": "kbitd", "static_configs": [
            {"targets": [f"127.0.0.1:{daemon.metrics_port}"]}]}],
    }))
    port = _free_port()
    proc = subprocess.Popen(
        [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if _prom_query(port, 'up{job="kbitd"} == 1'):
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.5)
        # Traffic while Prometheus scrapes, so rates and histogram quantiles have data.
        for i in range(4):
            result = run_kbitctl(f"--address={daemon.address}", "generate", "default",
                                 f"def f{i}(x):", "--max_new_tokens=8", "--temperature=0")
            assert result.returncode == 0, result.stderr
            time.sleep(1)
        time.sleep(3)
        for record in ["model:kbitd_generated_tokens:rate5m",
                       "model:kbitd_time_to_first_token_seconds:p99_5m"]:
            assert _prom_query(port, record), f"recording rule {record} produced no series"
        assert _prom_query(port, 'ALERTS{alertstate="firing"}') == []
        empty = []
        dash = json.loads(d.DASHBOARD.read_text())
        for panel in dash["panels"]:
            for target in panel.get("targets", []):
                expr = d.grafana_to_promql(target["expr"]).replace("[5m]", "[30s]")
                if not _prom_query(port, expr):
                    empty.append(f"{panel['title']}: {target['expr']}")
        assert not empty, f"dashboard queries with no data from a live kbitd: {empty}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_chart_tls_config_and_exec_probes(tmp_path):
    """With tls.enabled the chart's kbitd.yaml turns TLS on and the probes become `kbitctl health`
    commands in the pod: run exactly those against kbitd serving a certificate for localhost."""
    openssl = find("openssl")
    tls = tmp_path / "tls"
    tls.mkdir()
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(tls / "tls.key"), "-out", str(tls / "tls.crt")],
                   check=True, capture_output=True, timeout=60)
    rendered = d.render_chart({"tls": {"enabled": True, "existingSecret": "kbitd-tls"}})
    config = yaml.safe_load(d.config_map_yaml(rendered))
    assert config["tls"] == {"cert_file": "/etc/kbitd/tls/tls.crt",
                             "key_file": "/etc/kbitd/tls/tls.key"}
    daemon = start_with_config(
        tmp_path, d.config_map_yaml(rendered), f"--model_root={MODELS}",
        f"--set=tls.cert_file={tls / 'tls.crt'},tls.key_file={tls / 'tls.key'}")
    try:
        c = d.container(rendered)
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            command = c[probe]["exec"]["command"]
            assert command[0] == "/usr/local/bin/kbitctl"
            args = [f"--address=localhost:{daemon.port}" if a.startswith("--address=") else
                    f"--tls_ca={tls / 'tls.crt'}" if a.startswith("--tls_ca=") else a
                    for a in command[1:]]
            deadline = time.monotonic() + READY_TIMEOUT_S
            while (result := run_kbitctl(*args)).returncode != 0:
                assert time.monotonic() < deadline, f"{probe}: {result.stderr}{daemon.output()}"
                time.sleep(0.5)
        # Plaintext clients are refused: the kubelet's own gRPC probe would fail here.
        assert daemon.health("") != health_pb2.HealthCheckResponse.SERVING
    finally:
        assert daemon.stop() == 0, daemon.output()


def test_image_config_and_healthcheck(tmp_path):
    """The image's baked /etc/kbitd/kbitd.yaml, and its HEALTHCHECK command."""
    baked = (d.DEPLOY / "docker" / "kbitd.yaml").read_text()
    daemon = start_with_config(tmp_path, baked, f"--model_root={MODELS}")
    try:
        for model in yaml.safe_load(baked)["models"]:
            daemon.wait_serving(model["name"])
        m = re.search(r'^\s*CMD \[(.*)\]\s*$', d.DOCKERFILE.read_text().split("HEALTHCHECK", 1)[1],
                      re.M)
        command = yaml.safe_load(f"[{m.group(1)}]")
        assert command[0] == "/usr/local/bin/kbitctl"
        args = [f"--address={daemon.address}" if a.startswith("--address=") else a
                for a in command[1:]]
        result = run_kbitctl(*args)
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        assert daemon.stop() == 0, daemon.output()


def test_kserve_runtime_start_script(tmp_path):
    """The ServingRuntime's shell script writes a kbitd.yaml that kbitd accepts, serving the model
    KServe downloaded to /mnt/models under the InferenceService's name, with the runtime's default
    quantization (NF4 on load)."""
    runtime = yaml.safe_load((d.KSERVE / "servingruntime.yaml").read_text())
    c = runtime["spec"]["containers"][0]
    script = c["args"][0]
    mnt = tmp_path / "mnt"
    shutil.copytree(MODELS / "default", mnt / "models")
    script = (script.replace("/tmp/kbitd.yaml", str(tmp_path / "kbitd.yaml"))
              .replace("model_root: /mnt", f"model_root: {mnt}")
              .replace('listen_address: "0.0.0.0:50051"', 'listen_address: "127.0.0.1:0"')
              .replace('metrics_address: "0.0.0.0:9400"', 'metrics_address: "127.0.0.1:0"')
              .replace("/usr/local/bin/kbitd", shlex.quote(str(KBITD))))
    env = dict(os.environ)
    for var in c["env"]:
        env[var["name"]] = var["value"].replace("{{.Name}}", "llama-nf4")
    daemon = Daemon([*c["command"], script], env=env)
    try:
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            daemon.wait_serving(c[probe]["grpc"]["service"])
        daemon.wait_serving("llama-nf4")
    finally:
        assert daemon.stop() == 0, daemon.output()
