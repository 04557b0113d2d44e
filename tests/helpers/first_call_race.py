"""Eight threads make the process's first op calls at the same moment (the
op library loads lazily on the first call). Prints JSON: the errors seen,
how often tf.load_op_library ran, and which threads' results differ from the
values computed here in float64 numpy (from the definitions, not the ops)."""

import json

import numpy as np
import tensorflow as tf

calls = []
real_load = tf.load_op_library


def counting_load(path):
    calls.append(path)
    return real_load(path)


tf.load_op_library = counting_load

import tf_fused_losses as tfl  # noqa: E402

from helpers import run_in_threads  # noqa: E402

THREADS = 8
results = [None] * THREADS
y = np.array([[1.0, 0.0, 1.0, 0.0]], np.float32)
c = np.array([[0.5, -1.0, 2.0, 0.25]], np.float32)


def expected_bpmll():
    """Mean over (positive k, negative l) pairs of e^{c_l - c_k}."""
    y64, c64 = y[0].astype(np.float64), c[0].astype(np.float64)
    positives, negatives = c64[y64 == 1], c64[y64 == 0]
    return [float(np.mean(np.exp(negatives[None, :] - positives[:, None])))]


def expected_correlation(epsilon=1e-7):
    """Per step: 1 - (y_t - mean y)(x_t - mean x) / (std y std x + epsilon), population moments."""
    y64, x64 = y[0].astype(np.float64), c[0].astype(np.float64)
    cy, cx = y64 - y64.mean(), x64 - x64.mean()
    return (1.0 - cy * cx / (y64.std() * x64.std() + epsilon)).tolist()


EXPECTED = {0: expected_bpmll(), 1: expected_correlation()}


def first_call(index):
    fn = tfl.bpmll_loss if index % 2 == 0 else tfl.correlation_loss
    results[index] = fn(y, c).numpy().tolist()


errors = run_in_threads(first_call, THREADS)
wrong = [
    f"thread {i}: {r} != {EXPECTED[i % 2]}"
    for i, r in enumerate(results)
    if r is None
    or np.shape(np.ravel(r)) != np.shape(EXPECTED[i % 2])
    or not np.allclose(np.ravel(r), EXPECTED[i % 2], rtol=1e-5, atol=1e-6)
]
print(json.dumps({"errors": errors, "loads": len(calls), "wrong": wrong}))
