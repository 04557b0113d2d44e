"""The README's quick starts run as written: each ```python block after a
`<!-- quickstart: ... -->` marker runs in a fresh interpreter (TensorFlow
backend) and must exit 0 and print its evaluation."""

import os
import re
import subprocess
import sys

import pytest

from helpers import subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quickstarts():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    return re.findall(r"<!-- quickstart: (.+?) -->\n```python\n(.*?)```", text, re.S)


def test_the_readme_has_its_three_quick_starts():
    assert [name for name, _ in quickstarts()] == ["dense labels", "label ids", "masked sequences"]


@pytest.mark.parametrize("name, code", quickstarts(), ids=[name for name, _ in quickstarts()])
def test_quick_start_runs_as_written(name, code, tmp_path):
    pytest.importorskip("tensorflow")
    env = subprocess_env({"KERAS_BACKEND": "tensorflow"})
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600,
                          cwd=tmp_path)
    assert done.returncode == 0, f"{name}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    assert "loss" in done.stdout.strip().splitlines()[-1]
