"""What bench/worker.py (TensorFlow), bench/jax_worker.py (JAX) and
bench/torch_worker.py (torch) share: the inputs, the timing method, and the
result and progress lines; the JAX and torch workers also their self-check,
case runner and job loop.

Imports numpy only, so that the workers, in interpreters that have one of
TensorFlow, JAX and torch but maybe not the others, time their cases the
same way.
"""

import gc
import json
import math
import os
import statistics
import sys
import time
import traceback

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


# --------------------------------------------------------------------------
# What the JAX and torch workers share: the y_true gradient choice and the
# self-check of their implementations against the float64 numpy reference
# --------------------------------------------------------------------------

EPSILON = 1e-7  # the default of every implementation of Pearson and CCC
SELF_CHECK_SIZES = {"bpmll": (5, 37), "correlation": (5, 41), "ccc": (5, 41)}
SELF_CHECK_RTOL = 1e-4  # float32 against float64, relative to each array's largest element


def grad_both(op, config):
    """Whether fwd+bwd differentiates y_true too: as the TF columns, for
    correlation and CCC under --corr-grad both (the fused losses compute
    y_true's gradient only where it is differentiated)."""
    return op != "bpmll" and config.get("corr_grad", "both") == "both"


def _numpy_reference():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    helpers = os.path.join(root, "tests", "helpers")
    if not os.path.isfile(os.path.join(helpers, "numpy_reference.py")):
        return None
    if helpers not in sys.path:
        sys.path.insert(0, helpers)
    import numpy_reference

    return numpy_reference


def _expected(ref, op, y_true, y_pred):
    """(loss, grad_y_true or None, grad_y_pred) of the loss's mean, float64."""
    batch, length = y_pred.shape
    if op == "bpmll":
        rule = ref.bpmll_rule(y_true.astype(np.float64), y_pred.astype(np.float64))
        return rule.loss, None, rule.grad / batch
    upstream = np.full(y_pred.shape, 1.0 / (batch * length))
    out = ref.correlation(y_true, y_pred, None, EPSILON, upstream, concordance=op == "ccc")
    return out.loss, out.grad_y, out.grad_x


def self_check(impls, run_step, config):
    """Each implementation's fwd+bwd step on a small float32 case against
    numpy_reference (float64): {impl: {op: {"ok", "max_rel_err", "size"} or
    {"ok": None, "reason"}}}, errors relative to each array's largest
    element. run_step(impl, op, y_true, y_pred, both) returns the step's
    outputs (loss, [grad_y_true,] grad_y_pred) as arrays numpy converts, or
    raises ImportError or RuntimeError where the implementation cannot run."""
    ref = _numpy_reference()
    if ref is None:
        return {"reason": "tests/helpers/numpy_reference.py is not in this checkout"}
    out = {}
    for impl in impls:
        out[impl] = {}
        for op, (batch, length) in SELF_CHECK_SIZES.items():
            y_true, y_pred = make_arrays(op, batch, length, seed=1)
            y_true = y_true.astype(np.float32)
            both = grad_both(op, config)
            try:
                got = run_step(impl, op, y_true, y_pred, both)
            except (ImportError, RuntimeError) as e:
                out[impl][op] = {"ok": None, "reason": f"{type(e).__name__}: {str(e).splitlines()[0][:400]}"}
                continue
            loss, grad_true, grad_pred = _expected(ref, op, y_true, y_pred)
            pairs = [("loss", got[0], loss), ("grad_y_pred", got[-1], grad_pred)]
            if both:
                pairs.append(("grad_y_true", got[1], grad_true))
            errors = {}
            for name, value, expected in pairs:
                value = np.asarray(value, np.float64)
                scale = max(float(np.max(np.abs(expected))), 1e-30)
                errors[name] = float(np.max(np.abs(value - expected))) / scale
            worst = max(errors.values())
            out[impl][op] = {"ok": bool(np.isfinite(worst) and worst <= SELF_CHECK_RTOL), "max_rel_err": errors,
                             "size": f"{batch}x{length}"}
    return out


# --------------------------------------------------------------------------
# The JAX and torch workers' cases and job loop
# --------------------------------------------------------------------------


class Side:
    """What a worker of another framework plugs into run_side_job:
      framework      "JAX", "torch" (for messages)
      import_error   why the framework does not import, or None
      probe          probe(config) -> the meta payload
      loss_function  loss_function(op, impl) -> loss (y_true, y_pred); raises
                     ImportError or RuntimeError where impl cannot run
      make_step      make_step(loss, mode, both) -> step(y_true, y_pred)
      finish         finish(outputs) -> outputs, once the work is done
                     (jax.block_until_ready)
      to_inputs      to_inputs(y_true, y_pred) -> the framework's arrays
      nbytes         nbytes(arrays) -> their bytes
      memory         memory(step, y_true, y_pred) -> the case's
                     peak_extra_bytes, memory_method, memory_floor_bytes
    """

    def __init__(self, **fields):
        self.__dict__.update(fields)


def run_side_case(side, case, inputs, config):
    """One float32 case of a side's worker: its result record."""
    op, impl, mode = case["op"], case["impl"], case["mode"]
    result = dict(case)
    both = mode == "fwd+bwd" and grad_both(op, config)
    result["grad_wrt"] = None if mode == "fwd" else ("y_true, y_pred" if both else "y_pred")
    if (case["pred_dtype"], case["label_dtype"]) != ("float32", "float32"):
        result.update(status="skipped", reason=f"the {side.framework} columns run float32 y_pred and y_true only")
        return result
    try:
        loss_fn = side.loss_function(op, impl)
    except (ImportError, RuntimeError) as e:
        result.update(status="skipped", reason=f"{type(e).__name__}: {str(e).splitlines()[0][:400]}")
        return result
    step = side.make_step(loss_fn, mode, both)
    y_true, y_pred = inputs

    def call():
        return side.finish(step(y_true, y_pred))

    try:
        outputs = call()  # traces and compiles
        result["bytes"] = side.nbytes((y_true, y_pred)) + side.nbytes(outputs)
        result["y_pred_bytes"] = side.nbytes((y_pred,))
        del outputs
        result.update(side.memory(step, y_true, y_pred))
        gc.collect()
        estimate, _ = timed(call)
        result.update(time_case(call, config, estimate))
    except Exception as e:  # noqa: BLE001 - jaxlib raises its own XlaRuntimeError
        result.update(status="failed", reason=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
        return result
    result["status"] = "ok"
    return result


def run_side_job(side, job):
    """A side worker's job: the probe, or its cases in order, inputs made
    once per op and size."""
    config = job["config"]
    if job.get("probe"):
        try:
            emit("meta", side.probe(config))
        except Exception:  # noqa: BLE001 - the reason goes to run.py
            emit("meta", {"error": f"the {side.framework} probe failed: "
                                   + traceback.format_exc().strip().splitlines()[-1]})
        return
    if side.import_error is not None:
        raise SystemExit(f"{side.framework} does not import in {sys.executable}: {side.import_error}")
    inputs_key, inputs = None, None
    for index, case in zip(case_indices(job), job["cases"]):
        key = (case["op"], case["batch"], case["length"])
        if key != inputs_key:
            inputs = None
            gc.collect()
            y_true, y_pred = make_arrays(case["op"], case["batch"], case["length"])
            inputs = side.to_inputs(y_true.astype(np.float32), y_pred)
            inputs_key = key
        result = run_side_case(side, case, inputs, config)
        progress(index, job["total"], case, result)
        emit("case", result)
