"""Driver for an instruction-count profile of the fused BP-MLL op.

Runs the fused forward+backward step (as bench/run.py times it) a few times
after warm-up, with callgrind's instrumentation on only around the measured
calls. Use through bench/profile_bpmll.sh, which builds the toggle library,
runs valgrind and summarises the counts; run alone, it is a plain driver.
"""

import argparse
import ctypes
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

import tf_fused_losses


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--labels", type=int, default=30000)
    parser.add_argument("--calls", type=int, default=3, help="measured calls")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--toggle-lib", help="shared library built from bench/callgrind_toggle.c")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    rng = np.random.default_rng(0)
    y_pred = tf.constant(rng.standard_normal((args.batch, args.labels), dtype=np.float32))
    y_true = tf.constant((rng.random((args.batch, args.labels)) < 0.1).astype(np.float32))

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
    print(f"ran {args.calls} measured calls of fused BP-MLL fwd+bwd at B={args.batch} L={args.labels}", file=sys.stderr)


if __name__ == "__main__":
    main()
