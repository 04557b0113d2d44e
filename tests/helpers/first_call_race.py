"""Eight threads make the process's first op calls at the same moment (the
op library loads lazily on the first call). Prints JSON: the errors seen,
how often tf.load_op_library ran, and whether all threads agreed."""

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


def first_call(index):
    fn = tfl.bpmll_loss if index % 2 == 0 else tfl.correlation_loss
    results[index] = fn(y, c).numpy().tolist()


errors = run_in_threads(first_call, THREADS)
print(json.dumps({"errors": errors, "loads": len(calls), "agree": all(r == results[i % 2] for i, r in enumerate(results))}))
