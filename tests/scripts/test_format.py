"""Every C++/CUDA source follows .clang-format (Google style, 100 columns).

One reformatting commit brought the tree in line; this keeps it there. Generated files are left
out (they are rewritten by their generator, not by hand). To fix a failure:
  git ls-files '*.h' '*.cc' '*.cu' '*.cuh' | xargs clang-format -i
"""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
import required_tools  # noqa: E402

GENERATED = {
    "runtime/tokenizer/unicode/unicode_tables.cc",  # runtime/tokenizer/unicode/make_unicode_tables.py
}


def sources():
    out = subprocess.run([required_tools.find("git"), "ls-files", "*.h", "*.cc", "*.cu", "*.cuh"], cwd=REPO,
                         capture_output=True, text=True, check=True)
    return [f for f in out.stdout.split() if f not in GENERATED]


def test_sources_are_clang_formatted():
    clang_format = required_tools.find("clang-format")
    files = sources()
    assert len(files) > 100, "git ls-files found too few sources"
    result = subprocess.run([clang_format, "--dry-run", "--Werror", *files], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, "not clang-formatted (run clang-format -i on them):\n" + \
        "\n".join(sorted({line.split(":")[0] for line in result.stderr.splitlines()
                          if ": error:" in line}))
