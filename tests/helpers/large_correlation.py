"""Pearson and CCC on float16 y_true and y_pred of more than 2^31 elements,
for tests/test_large.py. Usage: large_correlation.py ROWS STEPS OUT.npz;
prints the phases' times as JSON.

The per-step loss and both ops' outputs are as large as the inputs, so the
steps are ordered to keep at most three such tensors alive (12 GB at
2^31 elements): the public function's loss is summarised (per-row sums in
float64, values at the probes) and dropped before the forward op runs; the
op's loss likewise before the gradient op, which gets y_true itself as the
upstream gradient (a non-uniform one, no tensor more) and is asked for no
y_true gradient. Probes at random steps and at each row's last steps (past
flat index 2^31) are checked against a chunked float64 computation of the
rule of numpy_reference.correlation: every step's values differ, so an
entry read or written at the wrong place shows.

Run with TF_ENABLE_ONEDNN_OPTS=0 (see large_bpmll.py).
"""

import json
import sys
import time

import numpy as np
import tensorflow as tf
from large_bpmll import CHUNK, frozen, write

import tf_fused_losses as tfl
from tf_fused_losses._loader import ops

PROBES_PER_ROW = 64
LAST_STEPS = 8


def fill(rng, shape):
    """Targets y ~ N(1, 1) and predictions x = 0.6 y + N(0, 0.8^2) - 0.5 in
    float16, chunk by chunk into variables (see large_bpmll.fill)."""
    y = tf.Variable(tf.zeros(shape, tf.float16), trainable=False)
    x = tf.Variable(tf.zeros(shape, tf.float16), trainable=False)
    for row in range(shape[0]):
        for start in range(0, shape[1], CHUNK):
            end = min(start + CHUNK, shape[1])
            targets = 1 + rng.standard_normal(end - start, dtype=np.float32)
            noise = rng.standard_normal(end - start, dtype=np.float32)
            write(y, row, start, targets.astype(np.float16))
            write(x, row, start, (0.6 * targets + 0.8 * noise - 0.5).astype(np.float16))
    return y, x


def row_chunks(t, row):
    """t[row] in float64, CHUNK steps at a time."""
    steps = t.shape[1]
    for start in range(0, steps, CHUNK):
        yield start, t[row, start : min(start + CHUNK, steps)].numpy().astype(np.float64)


def summary(loss, probes):
    """Per-row float64 sums of a per-step loss, and its values at the probes."""
    sums = [sum(chunk.sum() for _, chunk in row_chunks(loss, row)) for row in range(loss.shape[0])]
    return np.array(sums), np.array([float(loss[row, step]) for row, step in probes])


def reference(y, x, probes):
    """The rule of numpy_reference.correlation (no mask, epsilon 1e-7 as
    float32, upstream w = y) over whole rows in float64, chunk by chunk:
    for Pearson and CCC, per row the loss's sum, and the loss and
    dL/dy_pred at the probes."""
    epsilon = float(np.float32(1e-7))
    want = {kind: ([], [], []) for kind in ("pearson", "ccc")}
    for row in range(y.shape[0]):
        n = y.shape[1]
        mx = sum(chunk.sum() for _, chunk in row_chunks(x, row)) / n
        my = sum(chunk.sum() for _, chunk in row_chunks(y, row)) / n
        vx = vy = f = wy = cov = 0.0
        for (_, xs), (_, ys) in zip(row_chunks(x, row), row_chunks(y, row)):
            cx, cy = xs - mx, ys - my
            vx += (cx * cx).sum()
            vy += (cy * cy).sum()
            cov += (cx * cy).sum()
            f += (ys * cx * cy).sum()
            wy += (ys * cy).sum()
        sx, sy = np.sqrt(vx / n), np.sqrt(vy / n)
        for kind, (sums, losses, grads) in want.items():
            k = 2.0 if kind == "ccc" else 1.0
            d = sx**2 + sy**2 + (mx - my) ** 2 + epsilon if kind == "ccc" else sx * sy + epsilon
            sums.append(n - k * cov / d)
            for step in [step for r, step in probes if r == row]:
                xs, ys = float(x[row, step]), float(y[row, step])
                cx, cy = xs - mx, ys - my
                dd_dx = (2 * cx + 2 * (mx - my)) / n if kind == "ccc" else sy * cx / (n * sx)
                losses.append(1 - k * cx * cy / d)
                grads.append(-k * (ys * cy - wy / n) / d + k * f * dd_dx / d**2)
    return {kind: tuple(np.array(v) for v in values) for kind, values in want.items()}


def main(rows, steps, out_path):
    shape = (rows, steps)
    times = {}
    rng = np.random.default_rng(37)
    start = time.perf_counter()
    y, x = fill(rng, shape)
    # Plain tensors from here on, one at a time (see large_bpmll.main).
    y = frozen(y)
    x = frozen(x)
    probes = []
    for row in range(rows):
        probes += [(row, int(step)) for step in rng.integers(0, steps, size=PROBES_PER_ROW)]
        probes += [(row, steps - 1 - back) for back in range(LAST_STEPS)]
    times["inputs_s"] = time.perf_counter() - start

    out = {"probes": np.array(probes, np.int64)}
    for name, concordance, public in [("pearson", False, tfl.correlation_loss), ("ccc", True, tfl.ccc_loss)]:
        start = time.perf_counter()
        loss = public(y, x)
        out[f"{name}_public_sums"], out[f"{name}_public_probes"] = summary(loss, probes)
        del loss
        times[f"{name}_public_s"] = time.perf_counter() - start

        start = time.perf_counter()
        loss, row_stats = ops().fused_correlation_loss(
            y_true=y, y_pred=x, mask=tf.zeros([0], tf.bool), concordance=concordance)
        out[f"{name}_sums"], out[f"{name}_probes"] = summary(loss, probes)
        del loss
        grad_y_true, grad_y_pred = ops().fused_correlation_loss_grad(
            grad_loss=y, y_true=y, y_pred=x, mask=tf.zeros([0], tf.bool), row_stats=row_stats,
            concordance=concordance, compute_grad_y_true=False)
        assert grad_y_true.shape == (0,), grad_y_true.shape
        out[f"{name}_grads"] = np.array([float(grad_y_pred[row, step]) for row, step in probes])
        del grad_y_pred
        times[f"{name}_ops_s"] = time.perf_counter() - start

    start = time.perf_counter()
    for name, (sums, losses, grads) in reference(y, x, probes).items():
        out[f"{name}_want_sums"], out[f"{name}_want_probes"], out[f"{name}_want_grads"] = sums, losses, grads
    times["numpy_reference_s"] = time.perf_counter() - start
    np.savez(out_path, **out)
    print(json.dumps(times))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
