import os
import zlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

# Nothing here imports TensorFlow (or any framework) at collection: the suite's
# Keras-level and keras.ops tests also run where only JAX is installed.


def pytest_addoption(parser):
    parser.addoption("--run-large", action="store_true", help="run tests marked large (tens of GB, minutes)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-large"):
        return
    skip = pytest.mark.skip(reason="large: opt in with --run-large")
    for item in items:
        if "large" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng(request):
    # A seed per test, stable across runs, so that failures reproduce.
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def pure_tf(monkeypatch):
    """Switches the public functions to the pure-TF path for one test."""
    from tf_fused_losses import PURE_TF_ENV

    monkeypatch.setenv(PURE_TF_ENV, "1")
    yield
    monkeypatch.delenv(PURE_TF_ENV, raising=False)


def to_numpy(x):
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


def tf_dtype(name):
    import tensorflow as tf

    return tf.as_dtype(name)
