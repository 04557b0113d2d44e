"""Eight threads make the process's first op calls at the same moment (the
op library loads lazily on the first call). Prints JSON: the errors seen,
how often tf.load_op_library ran, and whether all threads agreed."""

import json
import threading

import numpy as np
import tensorflow as tf

calls = []
real_load = tf.load_op_library


def counting_load(path):
    calls.append(path)
    return real_load(path)


tf.load_op_library = counting_load

import tf_fused_losses as tfl  # noqa: E402

THREADS = 8
barrier = threading.Barrier(THREADS)
errors, results = [], [None] * THREADS
y = np.array([[1.0, 0.0, 1.0, 0.0]], np.float32)
c = np.array([[0.5, -1.0, 2.0, 0.25]], np.float32)


def first_call(index):
    try:
        barrier.wait()
        fn = tfl.bpmll_loss if index % 2 == 0 else tfl.correlation_loss
        results[index] = fn(y, c).numpy().tolist()
    except Exception as e:  # reported, not raised: the thread would hide it
        errors.append(f"{type(e).__name__}: {e}")


threads = [threading.Thread(target=first_call, args=(i,)) for i in range(THREADS)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"errors": errors, "loads": len(calls), "agree": all(r == results[i % 2] for i, r in enumerate(results))}))
