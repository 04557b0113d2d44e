"""The lazy loader: version checks, a missing library, the pure-TF switch, build info."""

import os
import subprocess
import sys

import pytest
import tensorflow as tf

import tf_fused_losses as tfl
from tf_fused_losses import _loader


@pytest.fixture
def unloaded(monkeypatch):
    """The loader as if nothing were loaded yet; restored afterwards."""
    monkeypatch.setattr(_loader, "_library", None)


def test_version_mismatch_names_both_versions(unloaded, monkeypatch):
    monkeypatch.setattr(_loader, "build_info", lambda: {"tensorflow": "2.99.1"})
    with pytest.raises(RuntimeError) as err:
        _loader.ops()
    message = str(err.value)
    assert "built for TensorFlow 2.99.1" in message
    assert f"TensorFlow {tf.__version__} is installed" in message
    assert _loader.PURE_TF_ENV in message


def test_missing_library_says_what_is_missing(unloaded, monkeypatch, tmp_path):
    monkeypatch.setattr(_loader, "_HERE", str(tmp_path))
    with pytest.raises(RuntimeError, match=r"op library is missing .*libtf_fused_losses\.so.*TensorFlow " + tf.__version__):
        _loader.ops()


def test_build_info_describes_this_build():
    info = tfl.build_info()
    assert info["tensorflow"].split(".")[:2] == tf.__version__.split(".")[:2]
    assert "cuda" in info and "cuda_archs" in info and "cpu_isas" in info


def test_import_does_not_load_the_library():
    code = "import tf_fused_losses, tf_fused_losses._loader as l; print(l._library is None)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ), check=True)
    assert out.stdout.strip().splitlines()[-1] == "True"


@pytest.mark.parametrize("value, expected", [("1", True), ("true", True), ("0", False), ("", False)])
def test_pure_tf_switch(monkeypatch, value, expected):
    monkeypatch.setenv(_loader.PURE_TF_ENV, value)
    assert tfl.use_pure_tf() is expected


def test_pure_tf_path_works_without_the_library(unloaded, monkeypatch, tmp_path):
    monkeypatch.setattr(_loader, "_HERE", str(tmp_path))
    monkeypatch.setenv(_loader.PURE_TF_ENV, "1")
    loss = tfl.bpmll_loss([[1.0, 0.0]], [[0.0, 0.0]])
    assert float(loss[0]) == pytest.approx(1.0)
