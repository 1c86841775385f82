"""The README's main-job command, `bash scripts/run.sh`, end to end: it builds (a no-op on top of the
test build), serves the bundled default model, and `kbitctl generate` through it prints
transformers' greedy completion (models/default/reference.json). Ports are moved to free ones with
kbitd flags, which run.sh passes on."""

import json
import os
import re
import signal
import subprocess
import time

import pytest

from conftest import BUILD, REPO

KBITD = BUILD / "server" / "kbitd"
KBITCTL = BUILD / "tools" / "kbitctl" / "kbitctl"
pytestmark = pytest.mark.skipif(not (KBITD.exists() and KBITCTL.exists()),
                                reason=f"kbitd/kbitctl not built in {BUILD}")

REFERENCE = json.loads((REPO / "models/default/reference.json").read_text())


def kbitctl_greedy(port, case):
    """`kbitctl generate` of a reference prompt, retried while the model is still loading."""
    deadline = time.time() + 60
    while True:
        out = subprocess.run([str(KBITCTL), f"--address=127.0.0.1:{port}", "generate", "default",
                              case["prompt"], f"--max_new_tokens={len(case['greedy_ids'])}",
                              "--temperature=0"], capture_output=True, text=True, timeout=120)
        if out.returncode == 0 or time.time() > deadline:
            return out
        time.sleep(0.1)


def test_run_sh_serves_the_default_model_and_kbitctl_generates_transformers_greedy_text():
    env = dict(os.environ, KBITD_SKIP_SETUP="1", BUILD_DIR=str(BUILD))
    proc = subprocess.Popen(["bash", str(REPO / "scripts/run.sh"),
                             "--listen_address=127.0.0.1:0", "--metrics_address=127.0.0.1:0"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        port, lines, deadline = None, [], time.time() + 600  # may have to configure cmake first
        while port is None:
            line = proc.stdout.readline()
            assert line, "run.sh exited:\n" + "".join(lines[-40:])
            lines.append(line)
            if m := re.match(r"kbitd: listening on .*:(\d+)", line):
                port = int(m.group(1))
            assert time.time() < deadline, "".join(lines[-40:])
        case = REFERENCE["greedy_fp32_cpu"][0]
        out = kbitctl_greedy(port, case)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(case["greedy_text"]), (out.stdout, case["greedy_text"])
        assert out.stdout[len(case["greedy_text"]):] in ("", "\n")
        assert "FINISH_REASON_LENGTH" in out.stderr
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


def test_bare_kbitd_serves_the_bundled_default_model():
    """No config file, no model_root, no models: kbitd serves models/default as "default"."""
    proc = subprocess.Popen([str(KBITD), "--listen_address=127.0.0.1:0", "--metrics_address=off"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        port = None
        while port is None:
            line = proc.stdout.readline()
            assert line, "kbitd exited"
            if m := re.match(r"kbitd: listening on .*:(\d+)", line):
                port = int(m.group(1))
        case = REFERENCE["greedy_fp32_cpu"][1]
        out = kbitctl_greedy(port, case)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(case["greedy_text"]), (out.stdout, case["greedy_text"])
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
