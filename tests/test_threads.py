"""The CPU ops give the same bits whatever the number of intra-op threads.

Each thread count runs in a fresh interpreter (TensorFlow fixes its thread
pools at the first op), on the same fixed inputs: rows done whole (64 x 1000),
rows cut into pieces (3 x 200000, 1 x 70001), and rows at the boundary between
the two (2 x 65536, 2 x 65537, 4 x 30000), in float32 and float16. Every output of the
forward and backward ops of BP-MLL, Pearson and CCC is compared byte for byte.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import subprocess_env

THREAD_COUNTS = (1, 2, 4)
# Whole rows, pieces, and shapes whose path a thread-count rule would change:
# rows of at most 65536 labels were done whole with enough rows per thread
# (2 x 65536 with 1 thread, 4 x 30000 with 1 or 2) and in pieces otherwise.
SHAPES = [(64, 1000), (3, 200_000), (1, 70_001), (2, 65_536), (2, 65_537), (4, 30_000)]
DTYPES = ["float32", "float16"]
# (op, variant): BP-MLL with hard and soft labels; Pearson and CCC with and
# without a mask.
KINDS = [("bpmll", "hard"), ("bpmll", "soft"), ("pearson", "no_mask"), ("pearson", "mask"), ("ccc", "no_mask"),
         ("ccc", "mask")]
CASES = [(op, variant, dtype, rows, length) for op, variant in KINDS for dtype in DTYPES for rows, length in SHAPES]

SCRIPT = r"""
import json, sys
import numpy as np
import tensorflow as tf

threads, cases, out = int(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
tf.config.threading.set_intra_op_parallelism_threads(threads)
from tf_fused_losses import _loader

ops = _loader.ops()
assert tf.config.threading.get_intra_op_parallelism_threads() == threads
results = {}
for op, variant, dtype, rows, length in cases:
    key = f"{op}|{variant}|{dtype}|{rows}x{length}"
    rng = np.random.default_rng([rows, length, len(op), len(variant)])  # the same inputs in every process
    shape = (rows, length)
    with tf.device("/CPU:0"):
        if op == "bpmll":
            labels = rng.random(shape) if variant == "soft" else (rng.random(shape) < 0.1)
            y = tf.constant(labels.astype(dtype))
            c = tf.constant((2 * rng.normal(size=shape)).astype(dtype))
            loss, grad = ops.fused_bpmll_loss(y_true=y, y_pred=c)
            upstream = tf.constant(rng.uniform(0.5, 2.0, size=rows).astype(dtype))
            scaled = ops.fused_bpmll_loss_grad(grad_loss=upstream, cached_grad=grad)
            outputs = {"loss": loss, "grad": grad, "grad_op": scaled}
        else:
            y = rng.normal(loc=0.3, scale=1.5, size=shape)
            x = 0.6 * y + rng.normal(loc=-0.2, scale=0.8, size=shape)
            mask = tf.constant(rng.random(shape) < 0.8) if variant == "mask" else tf.zeros([0], tf.bool)
            y, x = tf.constant(y.astype(dtype)), tf.constant(x.astype(dtype))
            concordance = op == "ccc"
            loss, row_stats = ops.fused_correlation_loss(y_true=y, y_pred=x, mask=mask, concordance=concordance)
            upstream = tf.constant(rng.uniform(0.5, 2.0, size=shape).astype(dtype))
            grad_y, grad_x = ops.fused_correlation_loss_grad(grad_loss=upstream, y_true=y, y_pred=x, mask=mask,
                                                             row_stats=row_stats, concordance=concordance)
            outputs = {"loss": loss, "row_stats": row_stats, "grad_y_true": grad_y, "grad_y_pred": grad_x}
    for name, tensor in outputs.items():
        results[f"{key}|{name}"] = tensor.numpy()
np.savez(out, **results)
print(json.dumps({"threads": threads, "outputs": len(results)}))
"""


@pytest.fixture(scope="module")
def by_threads(tmp_path_factory):
    """{thread count: {output key: array}}, each from its own process."""
    folder = tmp_path_factory.mktemp("threads")
    out = {}
    for threads in THREAD_COUNTS:
        path = folder / f"{threads}.npz"
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT, str(threads), json.dumps(CASES), str(path)],
            capture_output=True,
            text=True,
            env=subprocess_env(pure_tf=False),
            timeout=600,
        )
        assert done.returncode == 0, f"{threads} threads:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
        with np.load(path) as data:
            out[threads] = {key: data[key] for key in data.files}
    return out


def describe_difference(a, b):
    if a.dtype != b.dtype or a.shape != b.shape:
        return f"{a.dtype}{a.shape} vs {b.dtype}{b.shape}"
    differ = a.view(np.uint8).reshape(a.size, -1) != b.view(np.uint8).reshape(b.size, -1)
    count = int(differ.any(axis=1).sum())
    worst = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return f"{count} of {a.size} elements differ, at most by {np.nanmax(worst):.3g}"


@pytest.mark.parametrize("op, variant, dtype, rows, length", CASES)
def test_same_bits_for_every_thread_count(by_threads, op, variant, dtype, rows, length):
    prefix = f"{op}|{variant}|{dtype}|{rows}x{length}|"
    keys = sorted(k for k in by_threads[THREAD_COUNTS[0]] if k.startswith(prefix))
    assert len(keys) == (3 if op == "bpmll" else 4), keys
    differences = []
    for key in keys:
        one = by_threads[THREAD_COUNTS[0]][key]
        for threads in THREAD_COUNTS[1:]:
            other = by_threads[threads][key]
            if one.dtype != other.dtype or one.shape != other.shape or one.tobytes() != other.tobytes():
                differences.append(f"{key.split('|')[-1]}: {threads} vs 1 threads: {describe_difference(other, one)}")
    assert not differences, "\n".join(differences)


def test_every_output_is_compared(by_threads):
    """The same outputs from every process, none of them empty or all NaN."""
    keys = set(by_threads[THREAD_COUNTS[0]])
    assert len(keys) == sum(3 if op == "bpmll" else 4 for op, *_ in CASES)
    for threads in THREAD_COUNTS[1:]:
        assert set(by_threads[threads]) == keys
    for key, value in by_threads[THREAD_COUNTS[0]].items():
        assert value.size and np.isfinite(value.astype(np.float64)).any(), key
