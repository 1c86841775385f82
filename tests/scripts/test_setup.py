"""scripts/setup.sh installs every program the tests run, where the tests look for it.

A tool that a machine has from an earlier manual install (hadolint in /usr/local/bin, say) passes
the tests there and fails on a fresh machine; so each program must resolve through
required_tools.find, to a file of a Debian package that setup.sh installs or of a pip package of
tests/requirements.txt in the tests' virtual environment, and no test may look programs up another
way. scripts/test.sh runs this first; scripts/fresh-check.sh runs the whole test command in a fresh
Debian 12 chroot.
"""

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
import required_tools  # noqa: E402


def setup_packages():
    out = subprocess.run(["bash", str(REPO / "scripts/setup.sh"), "--print-packages"],
                         capture_output=True, text=True, check=True, timeout=30)
    return set(out.stdout.split())


def requirement_names():
    names = set()
    for line in (REPO / "tests/requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            names.add(re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower())
    return names


def dpkg_owner(path):
    """The Debian package that installed `path` (also tried under /usr: merged-/usr aliases)."""
    candidates = [path]
    if not path.startswith("/usr/"):
        candidates.append("/usr" + path)
    for candidate in candidates:
        out = subprocess.run(["dpkg-query", "-S", candidate], capture_output=True, text=True)
        if out.returncode == 0:
            return out.stdout.split(":")[0].split(",")[0].strip()
    return None


@pytest.mark.parametrize("name", sorted(required_tools.TOOLS))
def test_tool_comes_from_setup(name):
    path = required_tools.find(name)
    kind, package = required_tools.TOOLS[name]
    if kind == "venv":
        assert package in requirement_names(), f"{package} is not in tests/requirements.txt"
        dist = importlib.metadata.distribution(package)
        files = {str(Path(dist.locate_file(f)).resolve()) for f in dist.files or ()}
        assert str(Path(path).resolve()) in files, (
            f"{name} resolves to {path}, which pip package {package} did not install")
    else:
        assert package in setup_packages(), f"scripts/setup.sh does not install {package}"
        owner = dpkg_owner(path)
        assert owner == package, (
            f"{name} resolves to {path}, owned by {owner or 'no Debian package'}, not {package} "
            "(installed by hand?)")


def test_venv_tools_resolve_without_venv_on_path(monkeypatch):
    """Console scripts of the tests' environment are found even when the environment's bin folder
    is not on PATH (the fresh-machine failure: hadolint was looked up on PATH only)."""
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    for name, (kind, _) in required_tools.TOOLS.items():
        if kind == "venv":
            assert required_tools.lookup(name) == str(required_tools.venv_bin() / name)


def test_missing_tool_fails_naming_the_setup_step(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(required_tools, "venv_bin", lambda: Path("/nonexistent"))
    with pytest.raises(AssertionError, match="scripts/setup.sh installs it .Debian package prometheus"):
        required_tools.find("promtool")


# Ways of starting a program by name that bypass required_tools.find.
BYPASSES = [
    (re.compile(r"shutil\.which\("), "shutil.which"),
    (re.compile(r"""subprocess\.\w+\(\s*\[\s*["']([\w+.-]+)["']"""), "a bare program name"),
    (re.compile(r"""\btool\(\s*["']"""), "a local tool() helper"),
]
# Programs of essential Debian packages, always present.
ESSENTIAL = {"bash", "sh", "dpkg-query"}


def test_tests_find_programs_only_through_required_tools():
    offenders = []
    for path in sorted((REPO / "tests").rglob("*.py")):
        if path.name == "required_tools.py" or "data" in path.relative_to(REPO / "tests").parts:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for pattern, what in BYPASSES:
                match = pattern.search(line)
                if match and not (match.groups() and match.group(1) in ESSENTIAL):
                    offenders.append(f"{path.relative_to(REPO)}:{number}: {what}: {line.strip()}")
    assert not offenders, "use required_tools.find(name):\n" + "\n".join(offenders)

