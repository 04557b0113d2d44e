"""The JAX side of bench/run.py: runs a job of JAX benchmark cases.

Started by run.py as `<jax python> bench/jax_worker.py`, with the job as JSON
on stdin, in an interpreter that has jax (TensorFlow is not needed, and not
imported) and with PYTHONPATH=<repo>/python, so that it times this
checkout's `tf_fused_losses._jax_ops`. Writes `RESULT <json>` lines on stdout
and one progress line per case on stderr, as bench/worker.py does, and times
the same way (bench/harness.py).

Implementations (float32 only, like the other alternatives):

  jax_fused  `_jax_ops.bpmll_loss` / `_jax_ops.correlation_loss(...,
             concordance=False|True)`: the fused handlers of libtfl_core.so
             as XLA FFI custom calls, under jax.jit.
  jax_pure   the same losses in jax.numpy (below), under jax.jit:
             BP-MLL factored to O(B L) with max shifts, Pearson and CCC per
             step with population moments.

A probe job ({"probe": true}) reports the versions, whether the handler
library loads, and a self-check of both implementations against
tests/helpers/numpy_reference.py on a small case.
"""

import json
import os
import sys

import numpy as np
from harness import EPSILON, SELF_CHECK_RTOL, Side, run_side_job
from harness import self_check as harness_self_check

try:
    import jax
    import jax.numpy as jnp

    JAX_IMPORT_ERROR = None
except Exception as e:  # noqa: BLE001 - reported to run.py, which skips the JAX columns
    jax = jnp = None
    JAX_IMPORT_ERROR = f"{type(e).__name__}: {e}"


# --------------------------------------------------------------------------
# The pure forms in jax.numpy
# --------------------------------------------------------------------------


def bpmll_pure(y_true, y_pred):
    """Per-row BP-MLL, factored to O(B L) and shifted by each side's maximum:

        loss = P N / (|Y| |Ybar|),  P = sum_j y_j e^{-c_j},  N = sum_j (1 - y_j) e^{c_j}

    with P = e^{m_p} sum_j y_j e^{-c_j - m_p}, m_p = max over positives of -c_j,
    and N = e^{m_n} sum_j (1 - y_j) e^{c_j - m_n}, m_n = max over negatives of
    c_j, combined in the log domain; the shifts carry no gradient (they
    cancel). Assumes every row has a positive and a negative, as the
    benchmark's inputs do."""
    y = y_true.astype(y_pred.dtype)
    c = y_pred
    m_p = jax.lax.stop_gradient(jnp.max(jnp.where(y > 0, -c, -jnp.inf), axis=1, keepdims=True))
    m_n = jax.lax.stop_gradient(jnp.max(jnp.where(y < 1, c, -jnp.inf), axis=1, keepdims=True))
    p = jnp.sum(y * jnp.exp(-c - m_p), axis=1)
    n = jnp.sum((1 - y) * jnp.exp(c - m_n), axis=1)
    pairs = jnp.sum(y, axis=1) * jnp.sum(1 - y, axis=1)
    return jnp.exp(m_p[:, 0] + m_n[:, 0] + jnp.log(p) + jnp.log(n) - jnp.log(pairs))


def correlation_pure(y_true, y_pred, concordance):
    """Per-step Pearson or CCC loss, (batch, steps), population moments:

        Pearson: 1 - (y_t - my)(x_t - mx) / (sqrt(vy vx) + eps)
        CCC:     1 - 2 (y_t - my)(x_t - mx) / (vy + vx + (my - mx)^2 + eps)
    """
    y = y_true.astype(y_pred.dtype)
    x = y_pred
    my = jnp.mean(y, axis=-1, keepdims=True)
    mx = jnp.mean(x, axis=-1, keepdims=True)
    cy, cx = y - my, x - mx
    vy = jnp.mean(cy * cy, axis=-1, keepdims=True)
    vx = jnp.mean(cx * cx, axis=-1, keepdims=True)
    if concordance:
        return 1.0 - 2.0 * cy * cx / (vy + vx + jnp.square(my - mx) + EPSILON)
    return 1.0 - cy * cx / (jnp.sqrt(vy * vx) + EPSILON)


def loss_function(op, impl):
    """The loss (y_true, y_pred) -> per-sample or per-step loss of an implementation."""
    if impl == "jax_pure":
        if op == "bpmll":
            return bpmll_pure
        return lambda t, p: correlation_pure(t, p, concordance=op == "ccc")
    if impl == "jax_fused":
        from tf_fused_losses import _jax_ops

        _jax_ops.load()  # raises, saying why, where the handler library cannot be used
        if op == "bpmll":
            return _jax_ops.bpmll_loss
        return lambda t, p: _jax_ops.correlation_loss(t, p, epsilon=EPSILON, concordance=op == "ccc")
    raise ValueError(f"no JAX implementation {impl!r}")


def make_step(loss_fn, mode, both):
    """jax.jit of the loss, or of the loss and the gradient of its mean
    (value_and_grad with the per-element loss as auxiliary output), the
    outputs of the TF columns' steps."""
    if mode == "fwd":
        return jax.jit(loss_fn)

    def objective(y_true, y_pred):
        loss = loss_fn(y_true, y_pred)
        return jnp.mean(loss), loss

    grad = jax.value_and_grad(objective, argnums=(0, 1) if both else 1, has_aux=True)

    def step(y_true, y_pred):
        (_, loss), grads = grad(y_true, y_pred)
        return (loss,) + (tuple(grads) if both else (grads,))

    return jax.jit(step)


def _nbytes(arrays):
    return sum(int(a.size) * a.dtype.itemsize for a in jax.tree_util.tree_leaves(arrays))


def peak_extra_bytes(step, y_true, y_pred):
    """XLA's buffer assignment of the compiled step: its temporaries plus its
    outputs (compiled.memory_analysis()), the memory one call adds to its
    inputs. jaxlib's CPU client keeps no allocator statistics
    (device.memory_stats() is None), so this is what the compiler planned,
    not a measured peak: allocations inside the custom calls' handlers are not
    in it."""
    analysis = step.lower(y_true, y_pred).compile().memory_analysis()
    if analysis is None:
        return None
    return int(analysis.temp_size_in_bytes + analysis.output_size_in_bytes - analysis.alias_size_in_bytes)


# --------------------------------------------------------------------------
# Probe: versions, the handler library, and the self-check
# --------------------------------------------------------------------------

def self_check(config):
    """harness.self_check of both JAX implementations."""

    def run_step(impl, op, y_true, y_pred, both):
        return make_step(loss_function(op, impl), "fwd+bwd", both)(jnp.asarray(y_true), jnp.asarray(y_pred))

    return harness_self_check(("jax_pure", "jax_fused"), run_step, config)


def probe(config):
    if JAX_IMPORT_ERROR is not None:
        return {"error": f"jax does not import in {sys.executable}: {JAX_IMPORT_ERROR}"}
    import jaxlib

    info = {
        "python": sys.executable,
        "python_version": ".".join(map(str, sys.version_info[:3])),
        "jax": jax.__version__,
        "jaxlib": getattr(jaxlib, "__version__", "unknown"),
        "numpy": np.__version__,
        "devices": [str(d) for d in jax.devices()],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "tensorflow_imported": "tensorflow" in sys.modules,
    }
    try:
        from tf_fused_losses import _jax_ops

        info["package"] = os.path.dirname(os.path.abspath(_jax_ops.__file__))
        info["library"] = _jax_ops.library_path()
        info["load"] = _jax_ops.load()
    except Exception as e:  # noqa: BLE001 - reported; the fused JAX column is then skipped
        info["load_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:600]}"
    info["self_check"] = self_check(config)
    info["self_check_rtol"] = SELF_CHECK_RTOL
    return info


# --------------------------------------------------------------------------
# Job
# --------------------------------------------------------------------------


def memory(step, y_true, y_pred):
    return {"peak_extra_bytes": peak_extra_bytes(step, y_true, y_pred), "memory_method": "xla-buffer-assignment",
            "memory_floor_bytes": 0}


SIDE = Side(
    framework="JAX",
    import_error=JAX_IMPORT_ERROR,
    probe=probe,
    loss_function=loss_function,
    make_step=make_step,
    finish=lambda outputs: jax.block_until_ready(outputs),
    to_inputs=lambda y_true, y_pred: (jnp.asarray(y_true), jnp.asarray(y_pred)),
    nbytes=_nbytes,
    memory=memory,
)


def main():
    run_side_job(SIDE, json.load(sys.stdin))


if __name__ == "__main__":
    main()
