"""What bench/worker.py (TensorFlow) and bench/jax_worker.py (JAX) share:
the inputs, the timing method, and the result and progress lines.

Imports numpy only, so that both workers, in interpreters that have one of
TensorFlow and JAX but maybe not the other, time their cases the same way.
"""

import gc
import json
import math
import os
import statistics
import sys
import time

import numpy as np

RESULT_PREFIX = "RESULT "

# Calls longer than this get no warm-up beyond the tracing call and the
# memory call: their per-call overheads are small against their run time.
LONG_CALL_SECONDS = 0.25


# --------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------


def make_arrays(op, batch, length, seed=0):
    """(y_true, y_pred) as float32 numpy arrays (BP-MLL labels as bool), the
    same bits for every implementation of a case.

    BP-MLL: logits ~ N(0, 1), labels 1 with probability 0.1, and every row
    has a positive (label 0) and a negative (label 1), so that the seed forms
    stay finite. Correlation: targets ~ N(0, 1), predictions
    0.5 * target + N(0, 1).
    """
    rng = np.random.default_rng(seed)
    if op == "bpmll":
        logits = rng.standard_normal((batch, length), dtype=np.float32)
        labels = rng.random((batch, length), dtype=np.float32) < 0.1
        labels[:, 0] = True
        labels[:, min(1, length - 1)] = False
        return labels, logits
    target = rng.standard_normal((batch, length), dtype=np.float32)
    noise = rng.standard_normal((batch, length), dtype=np.float32)
    return target, 0.5 * target + noise


# --------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------


def timed(fn):
    """(seconds, result) of one call; the result is dropped by the caller."""
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def time_calls(call, config, estimate):
    """Timed calls after the warm-up, as many as fit the case's budget.

    `call` must return only once the work is done (block_until_ready under
    JAX). `estimate` is the duration of one warm call. The repeats fill
    case_seconds within [min_repeats, max_repeats], but a slow case stops at
    case_max_seconds (with at least 3 calls, or min_repeats if fewer).
    """
    if estimate < LONG_CALL_SECONDS:
        for _ in range(config["warmup"] - 2):
            call()
    estimate = max(estimate, 1e-6)
    repeats = max(config["min_repeats"], min(config["max_repeats"], math.ceil(config["case_seconds"] / estimate)))
    cap = max(min(3, config["min_repeats"]), int(config["case_max_seconds"] / estimate))
    repeats = min(repeats, cap)
    times = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


class OtherCpu:
    """CPUs used by everything but this process while a case was timed, from
    /proc/stat (busy and steal ticks of the whole machine) minus
    /proc/self/stat (this process's ticks): a case timed while the machine
    was busy with other work shows it here. None where /proc is missing or
    the window is under MIN_SECONDS."""

    def __init__(self):
        self._start = self._sample()

    @staticmethod
    def _sample():
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
            with open("/proc/self/stat") as f:
                own = f.read().rsplit(")", 1)[1].split()
        except (OSError, ValueError, IndexError):
            return None
        # user nice system idle iowait irq softirq steal ...
        busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + (fields[7] if len(fields) > 7 else 0)
        return time.perf_counter(), busy, int(own[11]) + int(own[12])

    # The kernel counts CPU time in ticks (usually 10 ms): shorter windows
    # give no usable figure.
    MIN_SECONDS = 0.25

    def stop(self):
        end = self._sample()
        if self._start is None or end is None:
            return None
        seconds = end[0] - self._start[0]
        if seconds < self.MIN_SECONDS:
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        others = (end[1] - self._start[1]) - (end[2] - self._start[2])
        return max(0.0, others / ticks / seconds)


def summarize(times):
    ordered = sorted(times)
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    return {
        "median_s": statistics.median(ordered),
        "q1_s": q1,
        "q3_s": q3,
        "min_s": ordered[0],
        "max_s": ordered[-1],
        "repeats": len(ordered),
    }


def time_case(call, config, estimate):
    """time_calls summarized, with `others_cpus`: the CPUs other processes
    used meanwhile (OtherCpu)."""
    others = OtherCpu()
    times = time_calls(call, config, estimate)
    return dict(summarize(times), others_cpus=others.stop())


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------


def emit(kind, payload):
    """One `RESULT <json>` line on stdout, which run.py collects."""
    print(RESULT_PREFIX + json.dumps({"kind": kind, "payload": payload}), flush=True)


def progress(index, total, case, result):
    """One `[index/total] ...` line on stderr, which run.py forwards."""
    where = (
        f"[{index:>3}/{total}] {case['op']} B={case['batch']} L={case['length']} "
        f"{case['pred_dtype']}/{case['label_dtype']} {case['mode']} {case['impl']}"
    )
    if result["status"] == "ok":
        what = f"median {result['median_s'] * 1e3:.3f} ms over {result['repeats']}"
        if result.get("others_cpus") is not None:
            what += f", others {result['others_cpus']:.2f} CPUs"
    else:
        what = f"{result['status']}: {result['reason']}"
    print(f"{where}: {what}", file=sys.stderr, flush=True)


def case_indices(job):
    """The 1-based plan index of each case of a job: the case's own "index"
    where run.py set it, else counted from the job's first_index."""
    first = job.get("first_index", 0)
    return [case.get("index", first + number + 1) for number, case in enumerate(job["cases"])]
