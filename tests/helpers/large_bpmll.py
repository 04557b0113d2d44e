"""BP-MLL on a bool y_true and a float16 y_pred of more than 2^31 elements,
for tests/test_large.py. Usage: large_bpmll.py ROWS LABELS OUT.npz; prints
the phases' times as JSON.

Most logits are ordinary (about +2 on positives, -2 on negatives); a few
"hot" elements, at the start of each row and at its end (past flat index
2^31), dominate both sums, so that their gradient entries are of order 1 in
float16 while every other entry is nearly 0: an entry written to the wrong
place shows.

Run with TF_ENABLE_ONEDNN_OPTS=0: oneDNN's CPU allocator pools freed memory
and runs out at this size. The forward op and the gradient op are called
directly, because a tape would keep the forward op's gradient buffer alive
next to the backward op's (4 GB more); the public function is called too
and must give the same loss.
"""

import json
import sys
import time

import numpy as np
import tensorflow as tf

import tf_fused_losses as tfl
from tf_fused_losses._loader import ops

CHUNK = 1 << 24
HOT_LOGIT = 20.0  # e^20 ~ 4.9e8: with ~1e9 labels on each side, loss ~ O(1)
PROBES_PER_ROW = 64


def write(variable, row, start, values):
    """variable[row, start:start + len(values)] = values, in place (slicing
    the variable first would read it, and the assignment would then copy the
    whole buffer to keep that read intact)."""
    tf.raw_ops.ResourceStridedSliceAssign(
        ref=variable.handle, begin=[row, start], end=[row + 1, start + len(values)], strides=[1, 1], value=values[None]
    )


def fill(rng, shape):
    """Labels (density 0.3) and logits, written chunk by chunk into
    variables: a whole numpy array converted to a tensor costs two copies."""
    y = tf.Variable(tf.zeros(shape, tf.bool), trainable=False)
    c = tf.Variable(tf.zeros(shape, tf.float16), trainable=False)
    for row in range(shape[0]):
        for start in range(0, shape[1], CHUNK):
            end = min(start + CHUNK, shape[1])
            labels = rng.random(end - start, dtype=np.float32) < 0.3
            noise = rng.standard_normal(end - start, dtype=np.float32) * 0.5
            write(y, row, start, labels)
            write(c, row, start, (np.where(labels, 2.0, -2.0) + noise).astype(np.float16))
    return y, c


def frozen(variable):
    """The variable's value as a tensor of its own (one copy)."""
    return tf.identity(variable)


def hot_positions(shape):
    """(row, column, is_positive) of the hot elements."""
    labels = shape[1]
    return [hot for row in range(shape[0]) for hot in ((row, 1, True), (row, 2, False), (row, labels - 3, True), (row, labels - 1, False))]


def reference(y, c, probes):
    """Per row, in float64 over chunks: the loss; and the gradient entries at
    the probes, in their order (hard labels: dE/dc_j = E e^{c_j} / N for a
    negative, -E e^{-c_j} / P for a positive)."""
    losses, positives, negatives = [], [], []
    for row in range(y.shape[0]):
        positive = negative = pos_count = neg_count = 0.0
        for start in range(0, y.shape[1], CHUNK):
            yc = y[row, start : start + CHUNK].numpy()
            cc = c[row, start : start + CHUNK].numpy().astype(np.float64)
            positive += np.exp(-cc[yc]).sum()
            negative += np.exp(cc[~yc]).sum()
            pos_count += yc.sum()
            neg_count += yc.size - yc.sum()
        losses.append(positive * negative / (pos_count * neg_count))
        positives.append(positive)
        negatives.append(negative)
    grads = []
    for row, column in probes:
        value = float(c[row, column])
        if bool(y[row, column]):
            grads.append(-losses[row] * np.exp(-value) / positives[row])
        else:
            grads.append(losses[row] * np.exp(value) / negatives[row])
    return np.array(losses), np.array(grads)


def main(rows, labels, out_path):
    shape = (rows, labels)
    times = {}
    rng = np.random.default_rng(31)
    start = time.perf_counter()
    y, c = fill(rng, shape)
    hot = hot_positions(shape)
    for row, column, positive in hot:
        write(y, row, column, np.array([positive]))
        write(c, row, column, np.array([-HOT_LOGIT if positive else HOT_LOGIT], np.float16))
    # Plain tensors from here on: the in-place writes put the variables in
    # copy-on-read mode, where every read copies the whole buffer.
    # One at a time, so that each variable is freed before the next copy.
    y = frozen(y)
    c = frozen(c)
    probes = [(row, column) for row, column, _ in hot]
    for row in range(rows):
        probes += [(row, int(column)) for column in rng.integers(0, labels, size=PROBES_PER_ROW)] + [(row, labels - 2)]
    times["inputs_s"] = time.perf_counter() - start

    start = time.perf_counter()
    public_loss = tfl.bpmll_loss(y, c).numpy()
    times["public_loss_s"] = time.perf_counter() - start
    start = time.perf_counter()
    loss, cached_grad = ops().fused_bpmll_loss(y_true=y, y_pred=c)
    upstream = tf.constant(np.arange(1, rows + 1) * 0.5, tf.float16)
    grad = ops().fused_bpmll_loss_grad(grad_loss=upstream, cached_grad=cached_grad)
    times["forward_and_gradient_ops_s"] = time.perf_counter() - start

    start = time.perf_counter()
    want_loss, want_grads = reference(y, c, probes)
    times["numpy_reference_s"] = time.perf_counter() - start
    np.savez(
        out_path,
        public_loss=public_loss,
        loss=loss.numpy(),
        want_loss=want_loss,
        probes=np.array(probes, np.int64),
        hot=np.array([(r, col) for r, col, _ in hot], np.int64),
        cached=np.array([float(cached_grad[r, col]) for r, col in probes]),
        scaled=np.array([float(grad[r, col]) for r, col in probes]),
        upstream=upstream.numpy(),
        want_grads=want_grads,
    )
    print(json.dumps(times))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
