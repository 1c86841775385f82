"""--help and --version of kbitd, kbitctl and kbitq, and where the version and revision come from
(cmake/KbitdVersion.cmake: project() version, `git rev-parse --short HEAD` at configure time, the
KBITD_VERSION / KBITD_REVISION cache variables the Dockerfile sets from its build args)."""

import re
import subprocess
import sys

import pytest

from conftest import BUILD, REPO

sys.path.insert(0, str(REPO / "tests"))
from required_tools import find  # noqa: E402

PROGRAMS = {
    "kbitd": BUILD / "server" / "kbitd",
    "kbitctl": BUILD / "tools" / "kbitctl" / "kbitctl",
    "kbitq": BUILD / "tools" / "kbitq" / "kbitq",
}
# What each usage text must show: what the program is, its main flags or commands, an example.
USAGE_MUST_SHOW = {
    "kbitd": ["kbitd: serves k-bit quantized LLMs", "usage: kbitd", "--config", "--listen_address",
              "--admin_token", "--set", "--version", "examples:\n  kbitd "],
    "kbitctl": ["kbitctl: command-line client of kbitd", "usage: kbitctl", "generate MODEL PROMPT",
                "--address", "--admin_token", "--version", "examples:\n  kbitctl "],
    "kbitq": ["kbitq: converts Hugging Face checkpoints", "kbitq quantize --in DIR",
              "kbitq inspect", "kbitq eval", "--version", "examples:\n  kbitq "],
}
PROJECT_VERSION = re.search(r"^project\(kbitd VERSION ([0-9.]+)",
                            (REPO / "CMakeLists.txt").read_text(), re.M).group(1)


def run(*args, cwd=None):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120,
                          cwd=cwd)


@pytest.fixture(params=sorted(PROGRAMS))
def program(request):
    path = PROGRAMS[request.param]
    if not path.exists():
        pytest.skip(f"{path} not built")
    return request.param, path


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_prints_usage_and_exits_0(program, flag):
    name, path = program
    result = run(path, flag)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    for text in USAGE_MUST_SHOW[name]:
        assert text in result.stdout, f"{name} --help lacks {text!r}:\n{result.stdout}"


def test_help_after_other_arguments(program):
    name, path = program
    args = {"kbitd": ["--listen_address=127.0.0.1:0"], "kbitctl": ["list"],
            "kbitq": ["quantize"]}[name]
    result = run(path, *args, "--help")
    assert result.returncode == 0 and USAGE_MUST_SHOW[name][0] in result.stdout, result


def revision_is_a_commit_here(revision):
    return run(find("git"), "cat-file", "-e", f"{revision}^{{commit}}", cwd=REPO).returncode == 0


def test_version_prints_version_and_revision(program):
    name, path = program
    result = run(path, "--version")
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.fullmatch(rf"{name} (\S+) \(revision (\S+)\)\n", result.stdout)
    assert match, result.stdout
    assert match.group(1) == PROJECT_VERSION
    revision = match.group(2)
    if (REPO / ".git").exists():
        # Built from this checkout: the short hash of a commit of it, not "unknown".
        assert re.fullmatch(r"[0-9a-f]{7,40}", revision), revision
        assert revision_is_a_commit_here(revision), revision


# ------------------------------------------------- cmake/KbitdVersion.cmake, in a tiny project


def configure(source, build, *defines):
    (source / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.25)\n"
        "project(kbitd VERSION 9.8.7 LANGUAGES NONE)\n"
        f'include("{REPO / "cmake" / "KbitdVersion.cmake"}")\n')
    result = run(find("cmake"), "-S", source, "-B", build, *defines)
    assert result.returncode == 0, result.stdout + result.stderr
    header = (build / "generated" / "kbitd_version_info.h").read_text()
    return (re.search(r'KBITD_VERSION_STRING "(.*)"', header).group(1),
            re.search(r'KBITD_REVISION_STRING "(.*)"', header).group(1))


def git(cwd, *args):
    subprocess.run([find("git"), "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd,
                   check=True, capture_output=True)


def test_version_outside_a_checkout_is_unknown_or_the_build_args(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    assert configure(source, tmp_path / "b1") == ("9.8.7", "unknown")
    assert configure(source, tmp_path / "b2", "-DKBITD_VERSION=1.2.3-rc1",
                     "-DKBITD_REVISION=0123abc") == ("1.2.3-rc1", "0123abc")
    # Empty build args (docker build without --build-arg) fall back again.
    assert configure(source, tmp_path / "b3", "-DKBITD_VERSION=",
                     "-DKBITD_REVISION=") == ("9.8.7", "unknown")


def test_version_in_a_checkout_follows_commits(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    git(source, "init", "-q")
    (source / "f").write_text("1")
    git(source, "add", ".")
    git(source, "commit", "-q", "-m", "one")
    build = tmp_path / "b"
    head = lambda: run(find("git"), "rev-parse", "--short", "HEAD", cwd=source).stdout.strip()  # noqa
    assert configure(source, build) == ("9.8.7", head())
    # A commit makes the next build re-run the configure step (HEAD's branch file is a
    # configure dependency), so the header follows without a manual cmake run.
    first = head()
    (source / "f").write_text("2")
    git(source, "commit", "-q", "-am", "two")
    assert head() != first
    result = run(find("cmake"), "--build", build)
    assert result.returncode == 0, result.stdout + result.stderr
    header = (build / "generated" / "kbitd_version_info.h").read_text()
    assert f'"{head()}"' in header


def test_a_tree_inside_another_checkout_is_not_given_its_revision(tmp_path):
    outer = tmp_path / "outer"
    source = outer / "unpacked-tarball"
    source.mkdir(parents=True)
    git(outer, "init", "-q")
    git(outer, "commit", "-q", "--allow-empty", "-m", "outer")
    assert configure(source, tmp_path / "b") == ("9.8.7", "unknown")
