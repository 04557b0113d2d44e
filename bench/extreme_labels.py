"""The extreme-label section (issue 21): BP-MLL from label ids against the
dense op on uint8 and float32 labels, at the Amazon-670K shape (670,091
labels, 5.5 positives a row on average), in one run: time per call
(forward, and forward + backward of the mean) and the bytes of label input
each form reads. Timing as bench/harness.py times every other case.

    python bench/extreme_labels.py [--batch 256] [--labels 670091] [--json out.json]
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

CONFIG = {"warmup": 3, "min_repeats": 5, "max_repeats": 30, "case_seconds": 4.0, "case_max_seconds": 30.0}


def label_ids(rng, batch, labels, mean_positives):
    """Each row's positives: a Poisson count (at least 1) of distinct ids;
    padded to the longest row with -1, int32."""
    counts = np.maximum(1, rng.poisson(mean_positives, size=batch))
    padded = np.full((batch, counts.max()), -1, np.int32)
    for i, count in enumerate(counts):
        padded[i, :count] = rng.choice(labels, size=count, replace=False)
    return padded


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--labels", type=int, default=670091)
    parser.add_argument("--positives", type=float, default=5.5)
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()

    import tensorflow as tf

    import tf_fused_losses as tfl

    rng = np.random.default_rng(0)
    ids = label_ids(rng, args.batch, args.labels, args.positives)
    dense = np.zeros((args.batch, args.labels), np.uint8)
    for i, row in enumerate(ids):
        dense[i, row[row >= 0]] = 1
    logits = tf.constant(rng.standard_normal((args.batch, args.labels), dtype=np.float32))
    forms = {
        "ids (int32, padded)": (tf.constant(ids), tfl.bpmll_loss_from_ids),
        "dense uint8": (tf.constant(dense), tfl.bpmll_loss),
        "dense float32": (tf.constant(dense.astype(np.float32)), tfl.bpmll_loss),
    }
    rows = []
    for name, (labels, loss) in forms.items():
        forward = tf.function(lambda labels=labels, loss=loss: loss(labels, logits))

        @tf.function
        def forward_backward(labels=labels, loss=loss):
            with tf.GradientTape() as tape:
                tape.watch(logits)
                mean = tf.reduce_mean(loss(labels, logits))
            return tape.gradient(mean, logits)

        for mode, fn in (("fwd", forward), ("fwd+bwd", forward_backward)):
            call = lambda fn=fn: fn().numpy()  # noqa: E731 - .numpy() waits for the result
            first, _ = harness.timed(call)
            warm, _ = harness.timed(call)
            others = harness.OtherCpu()
            times = harness.time_calls(call, CONFIG, warm)
            row = {"form": name, "pass": mode, "label_bytes": int(labels.numpy().nbytes),
                   "median_ms": 1e3 * float(np.median(times)), "min_ms": 1e3 * min(times), "calls": len(times),
                   "others_cpus": others.stop()}
            rows.append(row)
            print(json.dumps(row), flush=True)
    shape = f"{args.batch} x {args.labels:,}, {float(np.mean((ids >= 0).sum(1))):.2f} positives/row"
    print(f"\nBP-MLL at {shape}, float32 logits, TF {tf.__version__}, {os.cpu_count()} CPUs")
    print("| labels as | label input | fwd ms | fwd+bwd ms |\n|---|---|---|---|")
    for name in forms:
        fwd, both = (next(r for r in rows if r["form"] == name and r["pass"] == p) for p in ("fwd", "fwd+bwd"))
        print(f"| {name} | {fwd['label_bytes']:,} B | {fwd['median_ms']:.1f} | {both['median_ms']:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"shape": shape, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
