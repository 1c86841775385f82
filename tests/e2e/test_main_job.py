"""The README's main-job command, `bash scripts/run.sh`, end to end: it builds (a no-op on top of the
test build), serves the bundled default model unquantized and as NF4, prints the kbitctl commands
to try once both serve, and those commands work: `list` shows the NF4 model saving memory, and
`generate` prints transformers' greedy completion (models/default/reference.json) from "default".
Ports are moved to free ones with kbitd flags, which run.sh passes on."""

import json
import os
import queue
import re
import shlex
import signal
import subprocess
import threading
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


class RunSh:
    """`bash scripts/run.sh` on free ports; a thread collects its output lines."""

    def __init__(self):
        env = dict(os.environ, KBITD_SKIP_SETUP="1", BUILD_DIR=str(BUILD))
        self.proc = subprocess.Popen(["bash", str(REPO / "scripts/run.sh"),
                                      "--listen_address=127.0.0.1:0",
                                      "--metrics_address=127.0.0.1:0"],
                                     cwd=REPO, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True,
                                     # As from a terminal: SIGINT not ignored, even when these
                                     # tests run in a background job (a shell cannot trap a
                                     # signal that was ignored when it started).
                                     preexec_fn=lambda: signal.signal(signal.SIGINT,
                                                                      signal.SIG_DFL))
        self.lines, self.queue = [], queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            self.queue.put(line)
        self.queue.put(None)

    def next_line(self, deadline):
        try:
            line = self.queue.get(timeout=max(0.0, deadline - time.time()))
        except queue.Empty:
            raise AssertionError("run.sh printed nothing more in time:\n" + self.log()) from None
        assert line is not None, "run.sh exited:\n" + self.log()
        self.lines.append(line)
        return line

    def read_until(self, pattern, timeout):
        """Reads output up to the first line that matches `pattern`; returns the match."""
        deadline = time.time() + timeout
        while not (m := re.match(pattern, self.next_line(deadline))):
            pass
        return m

    def printed_commands(self):
        """The kbitctl commands run.sh prints once both models serve, as argument lists."""
        self.read_until(r"run\.sh: ready\.", 300)
        k = shlex.split(self.read_until(r'  K="(.*)"$', 10).group(1))
        commands = []
        while (line := self.next_line(time.time() + 10)).startswith("  $K "):
            commands.append(k + shlex.split(line.strip()[len("$K "):], comments=True))
        return commands

    def log(self):
        return "".join(self.lines[-40:])

    def stop(self, sig):
        """Sends `sig` to run.sh alone; returns its exit status."""
        self.proc.send_signal(sig)
        deadline = time.time() + 60
        while (line := self.queue.get(timeout=max(0.0, deadline - time.time()))) is not None:
            self.lines.append(line)
        return self.proc.wait(timeout=10)

    def kill(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def test_run_sh_serves_default_and_nf4_and_the_printed_commands_work():
    run = RunSh()
    try:
        # May have to configure cmake first.
        port = int(run.read_until(r"kbitd: listening on .*:(\d+)", 600).group(1))
        address = f"--address=127.0.0.1:{port}"
        commands = run.printed_commands()
        assert all(address in c for c in commands), commands
        results = {}
        for command in commands:
            out = subprocess.run(command, capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, (command, out.stdout, out.stderr)
            results[" ".join(command[command.index(address) + 1:][:2])] = out
        assert {"list", "generate default", "generate default-nf4"} <= set(results), results
        models = {m["name"]: m for m in json.loads(results["list"].stdout)["models"]}
        assert set(models) == {"default", "default-nf4"}
        for m in models.values():
            assert m["state"] == "MODEL_STATE_READY", m
        nf4 = models["default-nf4"]
        assert nf4["quantization"]["load_in_4bit"]
        assert nf4["quantization"]["bnb_4bit_quant_type"] == "nf4"
        assert int(nf4["saved_bytes"]) > 0, nf4
        assert int(nf4["weight_bytes"]) < int(models["default"]["weight_bytes"])
        for name in ("default", "default-nf4"):
            out = results[f"generate {name}"]
            assert out.stdout.strip() and "FINISH_REASON" in out.stderr, (name, out)
        assert run.stop(signal.SIGTERM) == 0, run.log()
    finally:
        run.kill()


def test_run_sh_greedy_text_equals_transformers_and_sigint_stops_kbitd():
    run = RunSh()
    try:
        port = int(run.read_until(r"kbitd: listening on .*:(\d+)", 600).group(1))
        case = REFERENCE["greedy_fp32_cpu"][0]
        out = kbitctl_greedy(port, case)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(case["greedy_text"]), (out.stdout, case["greedy_text"])
        assert out.stdout[len(case["greedy_text"]):] in ("", "\n")
        assert "FINISH_REASON_LENGTH" in out.stderr
        # SIGINT to the script alone (not its process group, unlike a terminal's Ctrl-C): it
        # passes the signal on, kbitd drains and exits 0, and so does run.sh.
        assert run.stop(signal.SIGINT) == 0, run.log()
        assert any("received signal" in line for line in run.lines), run.log()
    finally:
        run.kill()


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
