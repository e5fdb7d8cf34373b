"""The README's Python examples run as written, in a fresh interpreter like a user's."""

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_block_runs(i):
    out = subprocess.run([sys.executable, "-c", BLOCKS[i]], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout


def test_readme_test_command_is_what_ci_runs():
    test_command = ".venv/bin/python -m pytest -q -n auto"
    assert test_command in README
    assert (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1] == test_command
