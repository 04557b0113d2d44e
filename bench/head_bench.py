"""A training step of Dense + BPMLLLoss against the fused BP-MLL head
(issue 21 part 3, the head rows), on TensorFlow.

Each variant runs in a subprocess of its own, so that its peak memory is the
process's resident high-water mark (resource.getrusage), untouched by the
others. One step: hidden = relu(x Wd + bd), the loss of hidden @ kernel +
bias (mean over the batch), the gradients of Wd, bd, kernel and bias, and an
SGD update of all four.

Variants:
  unfused-dense  logits = hidden @ kernel + bias, tfl.bpmll_loss on dense float32 labels
  unfused-ids    the same logits, the fused label-id loss on padded ids
  head-ids       head.bpmll_head_loss on padded ids (no logits), per row then
                 reduce_mean: the two-pass (recompute) form, 4 GEMMs
  head-ids-onepass  head.bpmll_head_loss(..., reduction="sum_over_batch_size")
                 on padded ids: the one-pass form, 3 GEMMs (BPMLLHead's)
  head-dense     head.bpmll_head_loss on dense float32 labels (two passes)
  head-dense-onepass  the dense labels' nonzeros turned into padded ids in
                 the step (tf.where, outside XLA only: not static-shaped),
                 then the one-pass form: what a one-pass form on dense
                 labels would cost, against head-dense
  gemms          no loss: the step's three GEMMs alone (logits = hidden @
                 kernel + bias, then logits @ kernel^T and hidden^T @ logits
                 as if the logits were their own gradient), unchunked: the
                 floor under any head, so what the head's per-chunk
                 arithmetic costs above it, and what a fused per-chunk
                 kernel could at most save
each with tf.function(jit_compile=True) ("xla") and without ("graph").

Memory: "extra" = peak RSS (VmHWM, reset once the weights and the batch
exist, and again after the first step) - RSS once the weights and the batch
exist - the weight gradients' bytes; SGD keeps no optimizer state. Reported
for the steady steps and for the first (tracing and compiling included).
Compilation's own memory (XLA, graph building) falls inside the peak for
every variant alike.

  python bench/head_bench.py --labels 32768            # all variants
  python bench/head_bench.py --labels 670091 --variants head-ids:xla --steps 1
  build/venv-jax/bin/python bench/head_bench.py --jax-memory   # JAX: XLA's temporaries
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

LOSSES = ("unfused-dense", "unfused-ids", "head-ids", "head-ids-onepass", "head-dense", "head-dense-onepass", "gemms")
# The dense labels' nonzeros have no static shape: that variant runs outside XLA only.
VARIANTS = [f"{loss}:{mode}" for loss in LOSSES for mode in ("xla", "graph") if (loss, mode) != ("head-dense-onepass", "xla")]


def _status_bytes(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
    return None


def reset_peak():
    """Resets the process's resident high-water mark (Linux: 5 to
    /proc/self/clear_refs), so that the setup's transients (the weights'
    float64 initial values) do not count; returns the resident bytes now, the
    baseline. Where the reset is refused, the baseline is the high-water mark
    so far, which then overstates the baseline (and understates "extra")."""
    import gc

    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return _status_bytes("VmRSS")


def rss_peak_bytes():
    peak = _status_bytes("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker(args):
    import numpy as np
    import tensorflow as tf

    import tf_fused_losses as tfl
    from tf_fused_losses import _ids_tf, head

    loss_name, mode = args.worker.split(":")
    rng = np.random.default_rng(0)
    batch, d, labels, width = args.batch, args.d, args.labels, args.ids_width
    x = tf.constant(rng.normal(size=(batch, d)).astype(np.float32))
    # Positives per row: Poisson around the data set's mean, at least 1, at most `width`.
    counts = np.clip(rng.poisson(args.positives, size=batch), 1, width)
    ids = np.full((batch, width), -1, np.int32)
    for i, n in enumerate(counts):
        ids[i, :n] = rng.choice(labels, n, replace=False)
    ids = tf.constant(ids)
    dense = None
    if "dense" in loss_name:
        dense = tf.scatter_nd(
            tf.constant([[i, j] for i, row in enumerate(ids.numpy()) for j in row if j >= 0]),
            tf.ones([int(counts.sum())]),
            [batch, labels],
        )
    dense_kernel = tf.Variable((rng.normal(size=(d, d)) / np.sqrt(d)).astype(np.float32))
    dense_bias = tf.Variable(np.zeros(d, np.float32))
    kernel = tf.Variable((rng.normal(size=(d, labels)) / np.sqrt(d)).astype(np.float32))
    bias = tf.Variable(np.zeros(labels, np.float32))
    weights = [dense_kernel, dense_bias, kernel, bias]
    grad_bytes = sum(int(np.prod(w.shape)) * 4 for w in weights)

    def mean_loss_of(hidden):
        """The batch mean of the loss."""
        if loss_name == "unfused-dense":
            return tf.reduce_mean(tfl.bpmll_loss(dense, tf.matmul(hidden, kernel) + bias))
        if loss_name == "unfused-ids":
            return tf.reduce_mean(_ids_tf.bpmll_loss_from_padded_ids(ids, tf.matmul(hidden, kernel) + bias))
        if loss_name == "head-ids":
            return tf.reduce_mean(head.bpmll_head_loss(ids, hidden, kernel, bias, label_ids=True, chunk_size=args.chunk_size))
        if loss_name == "head-ids-onepass":
            return head.bpmll_head_loss(
                ids, hidden, kernel, bias, label_ids=True, chunk_size=args.chunk_size, reduction="sum_over_batch_size"
            )
        if loss_name == "head-dense-onepass":
            nonzero = tf.where(dense > 0)
            dense_ids = tf.RaggedTensor.from_value_rowids(tf.cast(nonzero[:, 1], tf.int32), nonzero[:, 0], nrows=batch)
            return head.bpmll_head_loss(
                dense_ids, hidden, kernel, bias, label_ids=True, chunk_size=args.chunk_size, reduction="sum_over_batch_size"
            )
        if loss_name == "gemms":
            return gemms_only(hidden, kernel, bias)
        return tf.reduce_mean(head.bpmll_head_loss(dense, hidden, kernel, bias, chunk_size=args.chunk_size))

    @tf.custom_gradient
    def gemms_only(hidden, kernel, bias):
        logits = tf.matmul(hidden, kernel) + bias

        def grad(upstream):
            return tf.matmul(logits, kernel, transpose_b=True), tf.matmul(hidden, logits, transpose_a=True), tf.reduce_sum(logits, 0)

        return tf.reduce_sum(logits[:, :1]), grad

    @tf.function(jit_compile=mode == "xla")
    def step():
        with tf.GradientTape() as tape:
            hidden = tf.nn.relu(tf.matmul(x, dense_kernel) + dense_bias)
            loss = mean_loss_of(hidden)
        for w, g in zip(weights, tape.gradient(loss, weights)):
            w.assign_sub(0.01 * g)
        return loss

    base = reset_peak()
    start = time.perf_counter()
    first_loss = float(step())
    first = time.perf_counter() - start
    first_peak = rss_peak_bytes()
    # The steady steps' high-water mark, without tracing and compiling,
    # against the same baseline: what the first step left resident (freed
    # buffers the allocator keeps) would otherwise hide in it.
    reset_peak()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        float(step())
        times.append(time.perf_counter() - start)
    peak = rss_peak_bytes()
    print(
        json.dumps(
            {
                "variant": args.worker,
                "labels": labels,
                "batch": batch,
                "d": d,
                "first_step_s": first,
                "step_s": min(times) if times else None,
                "steps": len(times),
                "loss": first_loss,
                "base_rss_mb": base / 2**20,
                "first_peak_rss_mb": first_peak / 2**20,
                "first_extra_mb": (first_peak - base - grad_bytes) / 2**20,
                "peak_rss_mb": peak / 2**20,
                "extra_mb": (peak - base - grad_bytes) / 2**20,
                "label_input_mb": (dense if dense is not None else ids).numpy().nbytes / 2**20,
            }
        ),
        flush=True,
    )


def jax_compiled_memory(args):
    """JAX (run with a JAX environment): XLA's temporary bytes of the
    compiled gradient step, head against unfused, on padded ids; compiled
    only, nothing runs (XLA's own accounting, not a measured peak)."""
    import jax
    import jax.numpy as jnp

    import tf_fused_losses as tfl
    from tf_fused_losses import head

    shapes = [
        jax.ShapeDtypeStruct(shape, dtype)
        for shape, dtype in (
            ((args.batch, args.ids_width), jnp.int32),
            ((args.batch, args.d), jnp.float32),
            ((args.d, args.labels), jnp.float32),
            ((args.labels,), jnp.float32),
        )
    ]
    losses = {
        "unfused-ids": lambda ids, h, w, b: tfl.bpmll_loss_from_ids(ids, h @ w + b),
        "head-ids": lambda ids, h, w, b: head.bpmll_head_loss(ids, h, w, b, label_ids=True, chunk_size=args.chunk_size),
        "head-ids-onepass": lambda ids, h, w, b: head.bpmll_head_loss(
            ids, h, w, b, label_ids=True, chunk_size=args.chunk_size, reduction="sum_over_batch_size"
        ),
    }
    print(f"JAX, batch {args.batch}, d {args.d}, labels {args.labels}: XLA temporaries of the gradient step")
    for name, loss in losses.items():
        step = jax.jit(jax.grad(lambda ids, h, w, b: jnp.mean(loss(ids, h, w, b)), argnums=(1, 2, 3)))
        memory = step.lower(*shapes).compile().memory_analysis()
        print(f"{name:<18} temp {memory.temp_size_in_bytes / 2**20:9.0f} MB   output {memory.output_size_in_bytes / 2**20:7.0f} MB")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=int, default=670_091)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--positives", type=float, default=5.5)
    parser.add_argument("--ids-width", type=int, default=16)
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after the first (compiling) one")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--jax-memory", action="store_true", help="JAX: XLA's temporaries of head and unfused steps")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.jax_memory:
        return jax_compiled_memory(args)
    if args.worker:
        return worker(args)
    rows = []
    for variant in args.variants.split(","):
        command = [sys.executable, __file__, "--worker", variant] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("worker", "variants", "jax_memory") and v is not None
        ]
        done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode or not lines:
            print(f"{variant}: failed (exit {done.returncode}): {done.stderr[-1500:]}", flush=True)
            continue
        row = json.loads(lines[-1])
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\nbatch {args.batch}, d {args.d}, labels {args.labels}, {args.positives} positives per row")
    print("extra: peak resident memory beyond the weights and their gradients, of a steady step and of the first")
    print("(tracing and compiling included); labels: the label input's bytes")
    print(f"{'variant':<26} {'step s':>8} {'first s':>8} {'extra MB':>9} {'1st extra':>9} {'labels MB':>9}")
    for r in rows:
        step = f"{r['step_s']:.3f}" if r["step_s"] is not None else "-"
        print(
            f"{r['variant']:<26} {step:>8} {r['first_step_s']:>8.2f} {r['extra_mb']:>9.0f} {r['first_extra_mb']:>9.0f} "
            f"{r['label_input_mb']:>9.2f}"
        )


if __name__ == "__main__":
    main()
