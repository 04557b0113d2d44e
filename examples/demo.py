"""What the fused BP-MLL loss buys over the loss users copy today.

The baseline is the seed's pairwise BP-MLL loss (the Stack Overflow answer's
"Update 3", `reference.bpmll_loss(..., form="pairwise")`), which builds a
(batch, labels, labels) float64 pair tensor every step. The demo

1. trains the same Keras multi-label model (Dense 256 relu + Dense(labels)
   logits, Adam, synthetic data with ~2% positive labels) with
   `tfl.BPMLLLoss()` and with the seed's loss at 1000 labels, and prints the
   median ms per training step of each and their ratio;
2. trains it with `tfl.BPMLLLoss()` at 30000 labels, where the seed's pair
   tensor cannot be allocated (its size is computed, not allocated);
3. evaluates both losses on a batch holding rows without a positive label:
   the seed's loss is NaN there, the fused loss is finite;
4. prints the held-out ranking accuracy of the fused-trained model against an
   untrained one and chance;
5. at Amazon-670K's 670,091 labels with label ids, times one training step
   of Dense + BPMLLLoss(label_ids=True) against the fused BPMLLHead and
   prints the peak extra memory of each (bench/head_bench.py, a process
   each).

Timings are of `model.fit` as Keras runs it by default (graph mode; no XLA on
a CPU-only machine), medians over the steps after the first few.

    python examples/demo.py [--labels 1000] [--big-labels 30000] [--batch 256]
                            [--steps 300] [--seed-steps 10]
                            [--extreme-labels 670091] [--extreme-batch 256]
"""

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

import tf_fused_losses as tfl
from tf_fused_losses import reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FEATURES = 64
HIDDEN = 256


def seed_pairwise_loss(y_true, y_pred):
    return reference.bpmll_loss(y_true, y_pred, form="pairwise")


def progress(message):
    print(message, flush=True)


def synthetic_multilabel(samples, labels, rng):
    """Labels are the top 2% of a noisy linear score per row, so every row
    has positives and negatives and the labels are learnable from x."""
    x = rng.normal(size=(samples, FEATURES)).astype(np.float32)
    w = rng.normal(size=(FEATURES, labels)).astype(np.float32) / np.sqrt(FEATURES)
    scores = x @ w + 0.3 * rng.normal(size=(samples, labels)).astype(np.float32)
    y = (scores > np.quantile(scores, 0.98, axis=1, keepdims=True)).astype(np.float32)
    return x, y


def make_model(labels):
    # Same seed, same initial weights: the losses train identical models.
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((FEATURES,)), keras.layers.Dense(HIDDEN, activation="relu"), keras.layers.Dense(labels)]
    )


class StepTimer(keras.callbacks.Callback):
    """Times each step; stops training once `budget_s` seconds have passed
    after the warm-up steps (a slow machine gets fewer steps, not a longer
    demo), keeping at least one timed step."""

    def __init__(self, warmup, budget_s=None):
        super().__init__()
        self.seconds = []
        self.warmup = warmup
        self.budget_s = budget_s

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)
        timed = self.seconds[self.warmup:]
        if self.budget_s is not None and timed and sum(timed) > self.budget_s:
            self.model.stop_training = True


def train(loss, x, y, batch, steps, warmup, budget_s=None):
    """Trains a fresh model for warmup + steps steps, or fewer once the
    timed steps pass budget_s seconds; returns it, the median ms per step
    after warm-up (the first steps trace and allocate) and the timed steps."""
    model = make_model(y.shape[1])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
    data = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(batch, drop_remainder=True).prefetch(2)
    timer = StepTimer(warmup, budget_s)
    model.fit(data, steps_per_epoch=warmup + steps, epochs=1, verbose=0, callbacks=[timer], shuffle=False)
    timed = timer.seconds[warmup:]
    return model, 1e3 * float(np.median(timed)), len(timed)


def pair_tensor_gib(batch, labels):
    return batch * labels * labels * 8 / 2**30  # float64, as the seed casts


def nan_fraction(tensors):
    return sum(int(tf.reduce_sum(tf.cast(tf.math.is_nan(t), tf.int32))) for t in tensors) / sum(
        int(tf.size(t)) for t in tensors)


def ranking_accuracy(y, scores):
    """Fraction of (positive, negative) label pairs a row's scores order
    correctly (ties count half), averaged over rows that have both."""
    accs = []
    for t, s in zip(y, scores):
        pos, neg = s[t == 1], s[t == 0]
        if len(pos) and len(neg):
            diff = pos[:, None] - neg[None, :]
            accs.append(np.mean(diff > 0) + 0.5 * np.mean(diff == 0))
    return float(np.mean(accs))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=int, default=1000, help="labels for the fused vs seed comparison")
    parser.add_argument("--big-labels", type=int, default=30000, help="labels for the fused-only run")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=300, help="timed fused steps (they also train phase 4's model)")
    parser.add_argument("--seed-steps", type=int, default=10, help="timed steps of the seed's loss and at --big-labels")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps of each run")
    parser.add_argument("--seed-seconds", type=float, default=20.0,
                        help="time budget of the seed loss's timed steps (fewer steps on a slow machine)")
    parser.add_argument("--extreme-labels", type=int, default=670_091, help="labels of part 5 (Amazon-670K's count)")
    parser.add_argument("--extreme-batch", type=int, default=256, help="batch of part 5")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    held_out = 512
    x, y = synthetic_multilabel(args.batch * 16 + held_out, args.labels, rng)
    x_test, y_test, x, y = x[-held_out:], y[-held_out:], x[:-held_out], y[:-held_out]
    progress(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPUs; batch {args.batch}, "
             f"{FEATURES} features, Dense {HIDDEN} + Dense(labels); {y.mean():.1%} positive labels")

    progress(f"\n[1/5] {args.labels} labels: fused BPMLLLoss vs the seed's pairwise loss (same model, data, Adam)")
    fused_model, fused_ms, _ = train(tfl.BPMLLLoss(), x, y, args.batch, args.steps, args.warmup)
    progress(f"  fused BPMLLLoss          {fused_ms:8.1f} ms/step  (median of {args.steps} steps, "
             f"XLA {'on' if fused_model.jit_compile else 'off'})")
    _, seed_ms, seed_steps = train(seed_pairwise_loss, x, y, args.batch, args.seed_steps, args.warmup,
                                   budget_s=args.seed_seconds)
    progress(f"  seed pairwise loss       {seed_ms:8.1f} ms/step  (median of {seed_steps} steps; "
             f"{pair_tensor_gib(args.batch, args.labels):.1f} GiB float64 pair tensor per step)")
    progress(f"  fused is {seed_ms / fused_ms:.0f}x faster per training step")

    progress(f"\n[2/5] {args.big_labels} labels: fused BPMLLLoss only")
    # Fewer samples than phase 1: here the label matrix alone is samples x 30000 floats.
    x_big, y_big = synthetic_multilabel(args.batch * 4, args.big_labels, rng)
    _, big_ms, _ = train(tfl.BPMLLLoss(), x_big, y_big, args.batch, args.seed_steps, args.warmup)
    progress(f"  fused BPMLLLoss          {big_ms:8.1f} ms/step  (median of {args.seed_steps} steps)")
    try:
        memory = f" (this machine has {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB)"
    except (ValueError, OSError, AttributeError):
        memory = ""
    progress(f"  seed pairwise loss       would need a {pair_tensor_gib(args.batch, args.big_labels):,.0f} GiB "
             f"pair tensor per step{memory}")

    progress("\n[3/5] 4 held-out rows, the last 2 with their labels cleared (no positive), the trained model's logits")
    y_small = y_test[:4].copy()
    y_small[2:] = 0
    weights = fused_model.trainable_weights
    with tf.GradientTape(persistent=True) as tape:
        logits = fused_model(x_test[:4])
        seed_rows = seed_pairwise_loss(y_small, logits)
        fused_rows = tfl.bpmll_loss(y_small, logits)
        seed_mean, fused_mean = tf.reduce_mean(seed_rows), tf.reduce_mean(fused_rows)
    seed_grads, fused_grads = tape.gradient(seed_mean, weights), tape.gradient(fused_mean, weights)
    seed_rows, fused_rows = seed_rows.numpy(), fused_rows.numpy()
    progress(f"  positives per row        {y_small.sum(axis=1).astype(int)}")
    for name, rows in (("seed pairwise loss", seed_rows), ("fused bpmll_loss", fused_rows)):
        progress(f"  {name:<24} {np.array2string(rows, precision=4)}  batch mean {rows.mean():.4f}")
    progress(f"  weight gradients of the batch mean with NaN entries: seed {nan_fraction(seed_grads):.0%}, "
             f"fused {nan_fraction(fused_grads):.0%}")
    progress("  The seed divides by |Y| |Ybar| = 0 on those rows (0/0); through the batch mean the NaN reaches\n"
             "  every weight's gradient, and one optimizer step ruins the model. The fused loss gives them loss 0\n"
             "  and gradient 0.")

    progress(f"\n[4/5] held-out ranking accuracy at {args.labels} labels ({held_out} rows): fraction of "
             "(positive, negative) pairs ranked correctly")
    untrained = ranking_accuracy(y_test, make_model(args.labels).predict(x_test, verbose=0))
    trained = ranking_accuracy(y_test, fused_model.predict(x_test, verbose=0))
    progress(f"  chance 0.500   untrained model {untrained:.3f}   "
             f"after {args.warmup + args.steps} fused steps {trained:.3f}")

    extreme_labels(args.extreme_labels, args.extreme_batch)


def extreme_labels(labels, batch, d=256):
    """Part 5: one training step of Dense + BPMLLLoss on label ids against the
    fused head, each in a process of its own (bench/head_bench.py) so that
    each peak memory is its own."""
    progress(f"\n[5/5] {labels:,} labels (Amazon-670K's count), 5.5 label ids a row, batch {batch}, hidden {d}: "
             "one training step")
    variants = {"unfused-ids:graph": "Dense + BPMLLLoss(label_ids=True)", "head-ids-onepass:graph": "BPMLLHead's loss (fused head)"}
    command = [sys.executable, os.path.join(ROOT, "bench", "head_bench.py"), "--labels", str(labels), "--batch",
               str(batch), "--d", str(d), "--steps", "1", "--variants", ",".join(variants)]
    done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    rows = {row["variant"]: row for row in map(json.loads, (l for l in done.stdout.splitlines() if l.startswith("{")))}
    if done.returncode or set(rows) != set(variants):
        progress(f"  failed (exit {done.returncode}): {done.stdout[-800:]}{done.stderr[-1500:]}")
        return
    for variant, name in variants.items():
        row = rows[variant]
        progress(f"  {name:<36} {row['step_s']:6.2f} s/step   extra memory {row['extra_mb']:7,.0f} MB")
    logits_mb = batch * labels * 4 / 2**20
    progress(f"  extra memory: peak resident memory beyond the weights and their gradients. Dense + loss holds the\n"
             f"  (batch, labels) logits and their gradient, {logits_mb:,.0f} MB each in float32; the head never makes\n"
             f"  them, and writes the kernel's gradient in place, chunk by chunk.")


if __name__ == "__main__":
    main()
