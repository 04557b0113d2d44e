"""Driver for an instruction-count profile of the fused BP-MLL op.

Runs the fused forward+backward step (as bench/run.py times it) a few times
after warm-up, with callgrind's instrumentation on only around the measured
calls. Use through bench/profile_bpmll.sh, which builds the toggle library,
runs valgrind and summarises the counts; run alone, it is a plain driver.
"""

import argparse
import collections
import ctypes
import os
import re
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Where instructions go, first match wins: (label, pattern on the function
# and object names that callgrind_annotate prints).
CATEGORIES = (
    ("fused op: forward chunk loops (statistics)", r"tf_fused_losses::.*(ChunkStats|ShiftedSums)"),
    ("fused op: gradient chunk loop", r"tf_fused_losses::.*ChunkGradient"),
    ("fused op: forward kernel around the loops (dtype conversion, rows)", r"CpuBpmll|FusedBpmllLossOp<|BpmllLossFunctor"),
    ("fused op: backward op (upstream scaling)", r"FusedBpmllLossGradOp"),
    ("fused op: rest of the library", r"tf_fused_losses::|libtf_fused_losses"),
    ("Eigen expressions (broadcasts, mean, multiplies)", r"Eigen::(Tensor|internal::)"),
    ("TF thread pool (scheduling, stealing, waiting)", r"Eigen::(ThreadPool|RunQueue|EventCount)|tsl::thread"),
    ("TF runtime (executor, eager, allocator)", r"tensorflow::|tsl::|absl::|libtensorflow|_pywrap"),
    ("libc, libm, libstdc++", r"libc\.so|libm\.so|libstdc\+\+|/libc[-.]|sysdeps"),
    ("Python interpreter", r"python|Py[A-Z_]"),
    ("other", r""),
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--labels", type=int, default=30000)
    parser.add_argument("--pred-dtype", default="float32", help="y_pred's dtype (default %(default)s)")
    parser.add_argument("--label-dtype", default="float32", help="y_true's dtype (default %(default)s)")
    parser.add_argument("--calls", type=int, default=3, help="measured calls")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--toggle-lib", help="shared library built from bench/callgrind_toggle.c")
    parser.add_argument("--summarize", metavar="CALLGRIND_OUT",
                        help="instead of running: sort the counts of a callgrind output into CATEGORIES")
    return parser.parse_args(argv)


def self_costs(callgrind_out):
    """(instructions, function and object) per function, from callgrind_annotate."""
    text = subprocess.run(
        ["callgrind_annotate", "--inclusive=no", "--threshold=100", callgrind_out],
        capture_output=True, text=True, check=True,
    ).stdout
    rows = []
    for line in text.splitlines():
        match = re.match(r"^\s*([\d,]+) \([\s\d.]+%\)\s+(.*)$", line)
        if match and "PROGRAM TOTALS" not in line:
            rows.append((int(match.group(1).replace(",", "")), match.group(2)))
    return rows


def summarize(args):
    elements = args.batch * args.labels * args.calls
    totals = collections.Counter()
    top = collections.defaultdict(list)
    for count, name in self_costs(args.summarize):
        label = next(label for label, pattern in CATEGORIES if re.search(pattern, name))
        totals[label] += count
        top[label].append((count, name))
    everything = sum(totals.values())
    print(f"{everything:,} instructions over {args.calls} calls of {args.batch}x{args.labels} "
          f"{args.pred_dtype}/{args.label_dtype}: "
          f"{everything / elements:.2f} per element")
    print("| where | instructions | share | per element |")
    print("|---|---|---|---|")
    for label, _ in CATEGORIES:
        if totals[label]:
            print(f"| {label} | {totals[label]:,} | {100 * totals[label] / everything:.1f}% | "
                  f"{totals[label] / elements:.3f} |")
    print()
    for label, _ in CATEGORIES:
        for count, name in sorted(top[label], reverse=True)[:3]:
            if count >= everything / 200:
                short = re.sub(r"\(.*", "", name.split(":", 1)[-1])[:110]
                print(f"  {100 * count / everything:5.1f}%  {label}: {short}")


def drive(args):
    import numpy as np
    import tensorflow as tf

    import tf_fused_losses

    rng = np.random.default_rng(0)
    logits = rng.standard_normal((args.batch, args.labels), dtype=np.float32)
    labels = rng.random((args.batch, args.labels)) < 0.1
    y_pred = tf.cast(tf.constant(logits), args.pred_dtype)
    y_true = tf.cast(tf.constant(labels), args.label_dtype)

    @tf.function
    def step(y_true, y_pred):
        with tf.GradientTape() as tape:
            tape.watch(y_pred)
            loss = tf_fused_losses.bpmll_loss(y_true, y_pred)
            objective = tf.reduce_mean(loss)
        return loss, tape.gradient(objective, y_pred)

    for _ in range(args.warmup):
        step(y_true, y_pred)
    toggle = ctypes.CDLL(args.toggle_lib) if args.toggle_lib else None
    if toggle:
        toggle.tfl_callgrind_start()
    for _ in range(args.calls):
        step(y_true, y_pred)
    if toggle:
        toggle.tfl_callgrind_stop()
    print(f"ran {args.calls} measured calls of fused BP-MLL fwd+bwd at B={args.batch} L={args.labels}, "
          f"{args.pred_dtype}/{args.label_dtype}", file=sys.stderr)


def main(argv=None):
    args = parse_args(argv)
    if args.summarize:
        summarize(args)
    else:
        drive(args)


if __name__ == "__main__":
    main()
