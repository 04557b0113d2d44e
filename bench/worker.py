"""The TensorFlow side of bench/run.py: runs a job of benchmark cases.

Started by run.py as `python bench/worker.py`, with the job as JSON on stdin.
Writes one line `RESULT <json>` per finished case on stdout (so that a crash
keeps what was done), and one progress line per case on stderr.
"""

import gc
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

import tf_fused_losses
from tf_fused_losses import reference

# bench/harness.py, found through the script's directory (sys.path[0]).
from harness import case_indices, emit, make_arrays, progress, time_case
from harness import timed as _timed

# Seed formulas that have no counterpart in reference.py yet.


def seed_correlation_loss(y_true, y_pred):
    """The final `my_loss` of the correlation seed, per step, on (batch, steps).

    Written as in the seed (Keras backend calls replaced by their tf
    equivalents, K.epsilon() = 1e-7); used while reference.correlation_loss
    does not exist.
    """
    seq1_mean = tf.reduce_mean(y_true, axis=-1, keepdims=True)
    seq2_mean = tf.reduce_mean(y_pred, axis=-1, keepdims=True)
    nominator = (y_true - seq1_mean) * (y_pred - seq2_mean)
    denominator = tf.sqrt(
        tf.reduce_mean(tf.square(y_true - seq1_mean), axis=-1, keepdims=True)
        * tf.reduce_mean(tf.square(y_pred - seq2_mean), axis=-1, keepdims=True)
    )
    corr = nominator / (denominator + 1e-7)
    return 1.0 - corr


# --------------------------------------------------------------------------
# Implementations: name -> how to get the loss function, or why it is absent
# --------------------------------------------------------------------------


class Unavailable(Exception):
    """An implementation that cannot run here; the message says why."""


def _fused(name):
    fn = getattr(tf_fused_losses, name, None)
    if fn is None:
        raise Unavailable(f"tf_fused_losses.{name} does not exist in this build yet")
    return fn


def _reference(op):
    if op == "bpmll":
        return reference.bpmll_loss_factored
    if op == "correlation":
        return getattr(reference, "correlation_loss", None) or seed_correlation_loss
    if op == "ccc":
        fn = getattr(reference, "ccc_loss", None)
        if fn is None:
            raise Unavailable("reference.ccc_loss does not exist yet (the CCC seed formula lives there)")
        return fn
    raise ValueError(op)


def _peer_bpmll():
    try:
        from bpmll import bp_mll_loss
    except ImportError as e:
        raise Unavailable(f"the PyPI package bpmll is not importable ({e})") from e
    return bp_mll_loss


FUSED_NAMES = {"bpmll": "bpmll_loss", "correlation": "correlation_loss", "ccc": "ccc_loss"}


def loss_function(op, impl):
    """The per-call loss function of an implementation and whether to XLA-compile it."""
    if impl == "fused":
        return _fused(FUSED_NAMES[op]), False
    if impl == "fused_xla":  # the fused ops as XLA custom calls
        return _fused(FUSED_NAMES[op]), True
    if impl == "graph":
        return _reference(op), False
    if impl == "xla":
        return _reference(op), True
    if impl == "pairwise" and op == "bpmll":
        return reference.bpmll_loss_pairwise, False
    if impl == "peer" and op == "bpmll":
        return _peer_bpmll(), False
    raise Unavailable(f"no implementation {impl!r} for {op}")


def reference_name(op):
    """Which pure-TF formula the graph and XLA rows run."""
    if op == "bpmll":
        return "reference.bpmll_loss_factored"
    if op == "correlation":
        if getattr(reference, "correlation_loss", None) is None:
            return "the seed's my_loss, written in bench/worker.py"
        return "reference.correlation_loss"
    return "reference.ccc_loss"


# --------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------


def make_inputs(op, batch, length, pred_dtype, label_dtype, seed=0):
    """harness.make_arrays as TF tensors in the case's dtypes."""
    y_true, y_pred = make_arrays(op, batch, length, seed)
    return tf.cast(tf.constant(y_true), label_dtype), tf.cast(tf.constant(y_pred), pred_dtype)


def pairwise_bytes(batch, length):
    """The estimate used to skip the O(B L^2) forms: one float64 (B, L, L) tensor."""
    return batch * length * length * 8


# --------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------


def fused_grads_both_inputs(op):
    """Whether the fused op differentiates y_true too (correlation and CCC do)."""
    if op == "bpmll":
        return False
    try:
        fn = _fused(FUSED_NAMES[op])
    except Unavailable:
        return False
    y_true, y_pred = make_inputs(op, 2, 8, tf.float32, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch([y_true, y_pred])
        loss = fn(y_true, y_pred)
    grad_true, _ = tape.gradient(loss, [y_true, y_pred])
    return grad_true is not None


def make_step(loss_fn, mode, grad_wrt_true, jit):
    """A tf.function computing the loss, or the loss and its gradients.

    The gradients are those of the loss's mean, as in a Keras training step.
    (Differentiating the unreduced loss would feed ones upstream, and grappler
    folds the multiplication by ones away, which no training step gets.)
    """
    if mode == "fwd":

        def step(y_true, y_pred):
            return loss_fn(y_true, y_pred)

    elif grad_wrt_true:

        def step(y_true, y_pred):
            with tf.GradientTape() as tape:
                tape.watch([y_true, y_pred])
                loss = loss_fn(y_true, y_pred)
                objective = tf.reduce_mean(loss)
            return (loss,) + tuple(tape.gradient(objective, [y_true, y_pred]))

    else:

        def step(y_true, y_pred):
            with tf.GradientTape() as tape:
                tape.watch(y_pred)
                loss = loss_fn(y_true, y_pred)
                objective = tf.reduce_mean(loss)
            return loss, tape.gradient(objective, y_pred)

    return tf.function(step, jit_compile=jit, autograph=False)


def _nbytes(tensors):
    return sum(t.shape.num_elements() * t.dtype.size for t in tf.nest.flatten(tensors))


# --------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------


def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class PeakMemory:
    """Peak memory of one call beyond what was in use before it.

    "tf-allocator": TF's CPU allocator statistics
    (tf.config.experimental.get_memory_info("CPU:0"), reset before the call);
    they exist with oneDNN's allocator, TF's default on x86-64 Linux, and count
    every tensor, XLA's buffers included, but not allocations under 256 KiB
    (oneDNN's small-size pool): `floor_bytes`. Otherwise "vmhwm": the process's
    peak resident size (VmHWM, reset through /proc/self/clear_refs) minus its
    resident size before the call; right only where freed tensors go back to
    the system (TF_ENABLE_ONEDNN_OPTS=0). Otherwise "none".
    """

    SMALL_ALLOCATION_BYTES = 256 << 10

    def __init__(self):
        self.method = "none"
        self.floor_bytes = 0
        probe = tf.ones((1 << 21,), tf.float32)  # 8 MiB
        try:
            if tf.config.experimental.get_memory_info("CPU:0")["current"] >= probe.shape.num_elements() * 4:
                self.method = "tf-allocator"
                self.floor_bytes = self.SMALL_ALLOCATION_BYTES
        except (ValueError, RuntimeError):
            pass
        if self.method == "none":
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
                self.method = "vmhwm"
            except OSError:
                pass
        del probe

    def measure(self, call):
        """(peak extra bytes or None, seconds) of one call."""
        gc.collect()
        if self.method == "tf-allocator":
            tf.config.experimental.reset_memory_stats("CPU:0")
            before = tf.config.experimental.get_memory_info("CPU:0")["current"]
            seconds, _ = _timed(call)
            peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]
            return max(0, peak - before), seconds
        if self.method == "vmhwm":
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            before = _status_kib("VmRSS")
            seconds, _ = _timed(call)
            peak = _status_kib("VmHWM")
            return max(0, peak - before) * 1024, seconds
        seconds, _ = _timed(call)
        return None, seconds


# --------------------------------------------------------------------------
# Copy bandwidth and the job's metadata
# --------------------------------------------------------------------------


def copy_bandwidth(megabytes, trials=5):
    """Best-of-trials bandwidth of copying a large array, read + write bytes.

    numpy's copy runs on one thread; TF's negation of a float32 tensor reads
    and writes the same bytes on all intra-op threads. The larger is the
    reference for the bandwidth fractions.
    """
    n = megabytes * (1 << 20) // 4
    src = np.ones(n, np.float32)
    dst = np.empty_like(src)
    best_numpy = min(_timed(lambda: np.copyto(dst, src))[0] for _ in range(trials))
    del src, dst
    x = tf.ones((n,), tf.float32)
    negate = tf.function(lambda t: -t, autograph=False)
    negate(x)
    best_tf = min(_timed(lambda: negate(x))[0] for _ in range(trials))
    del x
    moved = 2 * n * 4
    numpy_gbps = moved / best_numpy / 1e9
    tf_gbps = moved / best_tf / 1e9
    return {
        "megabytes": megabytes,
        "numpy_copy_gbps": numpy_gbps,
        "tf_negate_gbps": tf_gbps,
        "reference_gbps": max(numpy_gbps, tf_gbps),
    }


def metadata():
    threads = tf.config.threading.get_intra_op_parallelism_threads()
    return {
        "tensorflow": tf.__version__,
        "numpy": np.__version__,
        "tf_fused_losses": tf_fused_losses.__version__,
        "build_info": tf_fused_losses.build_info(),
        "intra_op_threads": threads or os.cpu_count(),
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on)"),
        "fused_ops": {op: hasattr(tf_fused_losses, name) for op, name in FUSED_NAMES.items()},
        "reference": {op: reference_name(op) for op in FUSED_NAMES},
    }


# --------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------


def run_case(case, inputs, memory, config, grad_both):
    op, impl, mode = case["op"], case["impl"], case["mode"]
    result = dict(case)
    batch, length = case["batch"], case["length"]
    grad_wrt_true = mode == "fwd+bwd" and grad_both.get(op, False)
    result["grad_wrt"] = None if mode == "fwd" else ("y_true, y_pred" if grad_wrt_true else "y_pred")
    if impl in ("pairwise", "peer"):
        estimate = pairwise_bytes(batch, length)
        limit = config["pairwise_limit_gb"] * 1e9
        if estimate > limit:
            result.update(
                status="skipped",
                reason=f"B*L*L*8 = {estimate / 1e9:.3g} GB exceeds --pairwise-limit-gb {config['pairwise_limit_gb']:g}",
            )
            return result
    try:
        loss_fn, jit = loss_function(op, impl)
    except Unavailable as e:
        result.update(status="skipped", reason=str(e))
        return result
    step = make_step(loss_fn, mode, grad_wrt_true, jit)
    y_true, y_pred = inputs
    call = lambda: step(y_true, y_pred)  # noqa: E731
    try:
        outputs = call()  # traces (and compiles under XLA)
        result["bytes"] = _nbytes((y_true, y_pred)) + _nbytes(outputs)
        result["y_pred_bytes"] = _nbytes(y_pred)
        del outputs
        result["peak_extra_bytes"], estimate = memory.measure(call)
        result["memory_method"] = memory.method
        result["memory_floor_bytes"] = memory.floor_bytes
        result.update(time_case(call, config, estimate))
    except (tf.errors.OpError, ValueError, TypeError, MemoryError) as e:
        result.update(status="failed", reason=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
        return result
    result["status"] = "ok"
    return result


def run_job(job):
    config = job["config"]
    if config.get("deps_dir"):
        sys.path.append(config["deps_dir"])
    if job.get("meta"):
        meta = metadata()
        meta["copy_bandwidth"] = copy_bandwidth(config["copy_mb"])
        emit("meta", meta)
    if not job["cases"]:
        return
    memory = PeakMemory()
    grad_both = {
        op: config["corr_grad"] == "both" and fused_grads_both_inputs(op) for op in {c["op"] for c in job["cases"]}
    }
    inputs_key, inputs = None, None
    for index, case in zip(case_indices(job), job["cases"]):
        key = (case["op"], case["batch"], case["length"], case["pred_dtype"], case["label_dtype"])
        if key != inputs_key:
            inputs = None
            gc.collect()
            inputs = make_inputs(
                case["op"], case["batch"], case["length"], tf.as_dtype(case["pred_dtype"]), tf.as_dtype(case["label_dtype"])
            )
            inputs_key = key
        result = run_case(case, inputs, memory, config, grad_both)
        progress(index, job["total"], case, result)
        emit("case", result)


def main():
    run_job(json.load(sys.stdin))


if __name__ == "__main__":
    main()
