"""Times the ranking and XMC metrics (`tf_fused_losses.metrics`) at XMC
scale, by default 256 x 670,091 labels (Amazon-670K) with 1 to 10 (mean
5.5) positives per row and N(0, 1) float32 scores, on the Keras backend of
KERAS_BACKEND, and shows that none of them sorts whole rows: their times
against a full sort of the rows (`argsort`, what a P@k or rank computation
by sorting costs at least), and, on TensorFlow, the widths of every sort
and top-k in their traced graphs.

    KERAS_BACKEND=tensorflow PYTHONPATH=python .venv/bin/python bench/metrics_bench.py
    ... --batch 64 --labels 100000 --repeats 5 --json out.json

Each time is the median of --repeats calls after one warm-up call, eager
(op by op, as a Keras metric's update_state runs outside a compiled step),
including the conversion of the result to numpy.
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))


def make_inputs(batch, labels, max_positives, seed=0):
    """(label ids (batch, max_positives) int32 padded with -1, dense 0/1
    labels (batch, labels) float32, scores (batch, labels) float32)."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 11, batch)  # mean 5.5
    ids = np.full((batch, max_positives), -1, dtype=np.int32)
    dense = np.zeros((batch, labels), dtype=np.float32)
    for row, count in enumerate(counts):  # one draw per row, not per label
        chosen = rng.choice(labels, size=count, replace=False)
        ids[row, :count] = chosen
        dense[row, chosen] = 1.0
    scores = rng.standard_normal((batch, labels), dtype=np.float32)
    return ids, dense, scores


def median_seconds(call, repeats):
    call()  # warm-up: tracing, allocator growth
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def traced_sort_widths(function, *arrays):
    """TensorFlow only: the output widths of every sort and top-k in the
    graph of `function` (tf.sort and tf.argsort are TopKV2 ops as wide as
    their rows)."""
    import tensorflow as tf

    specs = [tf.TensorSpec(a.shape, a.dtype) for a in arrays]
    graph = tf.function(function).get_concrete_function(*specs).graph
    return sorted(
        {op.outputs[0].shape[-1] for op in graph.get_operations() if op.type in ("TopKV2", "TopK") or "Sort" in op.type}
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--labels", type=int, default=670_091)
    parser.add_argument("--max-positives", type=int, default=16, help="label-id width K, and max_positives for dense labels")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--no-argsort", action="store_true", help="skip the argsort baseline (minutes at full size)")
    args = parser.parse_args(argv)

    import keras
    from keras import ops

    from tf_fused_losses import metrics

    backend = keras.backend.backend()
    ids_np, dense_np, scores_np = make_inputs(args.batch, args.labels, args.max_positives)
    ids, dense, scores = (ops.convert_to_tensor(a) for a in (ids_np, dense_np, scores_np))
    propensities = metrics.jain_propensities(np.random.default_rng(1).integers(0, 1000, args.labels), 500_000)
    k_max = args.max_positives

    def run(function):
        def call():
            out = function()
            for value in out.values() if isinstance(out, dict) else (out,):
                ops.convert_to_numpy(value)

        return call

    cases = {
        "ids: ranking_statistics (all four)": lambda: metrics.ranking_statistics(ids, scores, label_ids=True),
        "ids: precision_at_k k=1": lambda: metrics.precision_at_k(ids, scores, 1, label_ids=True),
        "ids: precision_at_k k=5": lambda: metrics.precision_at_k(ids, scores, 5, label_ids=True),
        "ids: ndcg_at_k k=5": lambda: metrics.ndcg_at_k(ids, scores, 5, label_ids=True),
        "ids: ps_precision_at_k k=5": lambda: metrics.ps_precision_at_k(ids, scores, propensities, 5, label_ids=True),
        "ids: hamming_loss": lambda: metrics.hamming_loss(ids, scores, label_ids=True),
        f"dense: ranking_statistics max_positives={k_max}": lambda: metrics.ranking_statistics(
            dense, scores, max_positives=k_max
        ),
        "dense: precision_at_k k=5": lambda: metrics.precision_at_k(dense, scores, 5),
        "dense: hamming_loss": lambda: metrics.hamming_loss(dense, scores),
        "baseline: top_k k=5 alone": lambda: ops.top_k(scores, 5)[0],
        "baseline: argsort of the rows": lambda: ops.argsort(scores, axis=-1),
    }
    if args.no_argsort:
        del cases["baseline: argsort of the rows"]
    print(
        f"backend {backend}; batch {args.batch} x {args.labels:,} labels, {dense_np.sum() / args.batch:.2f} "
        f"positives per row, ids width {k_max}; median of {args.repeats} eager calls",
        flush=True,
    )
    results = {}
    for name, function in cases.items():
        seconds = median_seconds(run(function), args.repeats)
        results[name] = seconds
        print(f"  {name:<48s} {seconds * 1000:10.1f} ms", flush=True)
    argsort_seconds = results.get("baseline: argsort of the rows")
    if argsort_seconds:
        print("  each metric's time / argsort's:")
        for name, seconds in results.items():
            if not name.startswith("baseline"):
                print(f"    {name:<46s} {seconds / argsort_seconds:6.2f}")

    widths = {}
    if backend == "tensorflow":
        traced = {
            "ids: ranking_statistics": (lambda t, p: metrics.ranking_statistics(t, p, label_ids=True), ids_np),
            "ids: precision_at_k k=5": (lambda t, p: metrics.precision_at_k(t, p, 5, label_ids=True), ids_np),
            "dense: ranking_statistics": (lambda t, p: metrics.ranking_statistics(t, p, max_positives=k_max), dense_np),
            "dense: precision_at_k k=5": (lambda t, p: metrics.precision_at_k(t, p, 5), dense_np),
        }
        print("  widths of the sorts and top-k ops in the traced graphs (a whole-row sort would be", args.labels, "):")
        for name, (function, labels_in) in traced.items():
            widths[name] = traced_sort_widths(function, labels_in, scores_np)
            print(f"    {name:<46s} {widths[name]}")
            assert all(w is not None and w < args.labels for w in widths[name]), f"{name} sorts whole rows"
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"backend": backend, "batch": args.batch, "labels": args.labels, "seconds": results, "sort_widths": widths},
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
