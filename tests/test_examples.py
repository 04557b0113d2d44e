"""The examples run: each script's --quick mode (a few seconds, the same
code path as the full run whose output docs/examples.md shows) in a fresh
interpreter on the TensorFlow backend."""

import os
import subprocess
import sys

import pytest

from helpers import subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("script, last_line_holds", [
    ("multilabel.py", "ndcg@5"),
    ("sequence_ccc.py", "CCCLoss(corpus=True)"),
])
def test_example_runs(script, last_line_holds, tmp_path):
    pytest.importorskip("tensorflow")
    done = subprocess.run([sys.executable, os.path.join(ROOT, "examples", script), "--quick"], capture_output=True,
                          text=True, env=subprocess_env({"KERAS_BACKEND": "tensorflow"}), timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last_line_holds in last and "nan" not in last.lower(), done.stdout
