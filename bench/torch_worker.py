"""The PyTorch side of bench/run.py: runs a job of torch benchmark cases.

Started by run.py as `<torch python> bench/torch_worker.py`, with the job as
JSON on stdin, in an interpreter that has torch (TensorFlow is not needed,
and not imported) and with PYTHONPATH=<repo>/python, so that it times this
checkout's `tf_fused_losses._torch_ops`. Writes `RESULT <json>` lines on
stdout and one progress line per case on stderr, as bench/worker.py does,
and times the same way (bench/harness.py). KERAS_BACKEND is torch here.

Implementations (float32 only, like the other alternatives), all on the CPU
with torch's intra-op threads (torch.get_num_threads()):

  torch_fused    `_torch_ops.bpmll_loss` / `_torch_ops.correlation_loss(...,
                 concordance=False|True)`: the torch.library ops over the
                 core's C entry points, eager.
  torch_keras    `_keras_ops`' forms (keras.ops on the torch backend), eager:
                 what torch tensors ran before the fused ops.
  torch_seed     the seed formulas of reference.py (`bpmll_loss_factored`,
                 `correlation_loss`, `ccc_loss`) written in torch, eager.
  torch_compile  the stable pure forms (BP-MLL factored with max shifts, as
                 bench/jax_worker.py's) under torch.compile, whose backward
                 AOTAutograd compiles too.

A probe job ({"probe": true}) reports the versions, whether the C entry
points load, and a self-check of the implementations against
tests/helpers/numpy_reference.py on a small case.
"""

import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402

from harness import EPSILON, SELF_CHECK_RTOL, Side, run_side_job  # noqa: E402
from harness import self_check as harness_self_check  # noqa: E402

try:
    import torch

    TORCH_IMPORT_ERROR = None
except Exception as e:  # noqa: BLE001 - reported to run.py, which skips the torch columns
    torch = None
    TORCH_IMPORT_ERROR = f"{type(e).__name__}: {e}"

IMPLS = ("torch_fused", "torch_keras", "torch_seed", "torch_compile")


# --------------------------------------------------------------------------
# The seed formulas and the stable pure forms in torch
# --------------------------------------------------------------------------


def bpmll_seed(y_true, y_pred):
    """reference.bpmll_loss_factored: O(B L), not stabilised."""
    y = y_true.to(y_pred.dtype)
    positive = torch.sum(y * torch.exp(-y_pred), dim=1)
    negative = torch.sum((1 - y) * torch.exp(y_pred), dim=1)
    pairs = torch.sum(y, dim=1) * torch.sum(1 - y, dim=1)
    return positive * negative / pairs


def correlation_seed(y_true, y_pred, concordance):
    """reference.correlation_loss / ccc_loss without a mask: population
    moments per row, the loss per step."""
    y = y_true.to(y_pred.dtype)
    mean_y = torch.mean(y, dim=-1, keepdim=True)
    mean_x = torch.mean(y_pred, dim=-1, keepdim=True)
    centred_y, centred_x = y - mean_y, y_pred - mean_x
    var_y = torch.mean(centred_y * centred_y, dim=-1, keepdim=True)
    var_x = torch.mean(centred_x * centred_x, dim=-1, keepdim=True)
    nominator = centred_y * centred_x
    if concordance:
        return 1.0 - 2.0 * nominator / (var_y + var_x + torch.square(mean_y - mean_x) + EPSILON)
    return 1.0 - nominator / (torch.sqrt(var_y * var_x) + EPSILON)


def bpmll_stable(y_true, y_pred):
    """bench/jax_worker.py's bpmll_pure in torch: each side's sum shifted by
    its maximum (no gradient through the shifts: they cancel), combined in
    the log domain. Assumes every row has a positive and a negative, as the
    benchmark's inputs do."""
    y = y_true.to(y_pred.dtype)
    c = y_pred
    neg_inf = torch.tensor(-float("inf"), dtype=c.dtype)
    m_p = torch.amax(torch.where(y > 0, -c, neg_inf), dim=1, keepdim=True).detach()
    m_n = torch.amax(torch.where(y < 1, c, neg_inf), dim=1, keepdim=True).detach()
    p = torch.sum(y * torch.exp(-c - m_p), dim=1)
    n = torch.sum((1 - y) * torch.exp(c - m_n), dim=1)
    pairs = torch.sum(y, dim=1) * torch.sum(1 - y, dim=1)
    return torch.exp(m_p[:, 0] + m_n[:, 0] + torch.log(p) + torch.log(n) - torch.log(pairs))


def loss_function(op, impl):
    """The loss (y_true, y_pred) -> per-sample or per-step loss of an implementation."""
    concordance = op == "ccc"
    if impl == "torch_fused":
        from tf_fused_losses import _torch_ops

        _torch_ops.load()  # raises, saying why, where the C entry points cannot be used
        if op == "bpmll":
            return _torch_ops.bpmll_loss
        return lambda t, p: _torch_ops.correlation_loss(t, p, epsilon=EPSILON, concordance=concordance)
    if impl == "torch_keras":
        from tf_fused_losses import _keras_ops

        if op == "bpmll":
            return _keras_ops.bpmll_loss
        return lambda t, p: _keras_ops.correlation_loss(t, p, epsilon=EPSILON, mask=None, concordance=concordance)
    if impl == "torch_seed":
        return bpmll_seed if op == "bpmll" else lambda t, p: correlation_seed(t, p, concordance)
    if impl == "torch_compile":
        # The seed's correlation formula is already the stable form (centred
        # moments); BP-MLL's needs the shifts.
        pure = bpmll_stable if op == "bpmll" else lambda t, p: correlation_seed(t, p, concordance)
        return torch.compile(pure, fullgraph=True, dynamic=False)
    raise ValueError(f"no torch implementation {impl!r}")


def make_step(loss_fn, mode, both):
    """The loss, or the loss and the gradient of its mean with respect to
    y_pred (and y_true where `both`), the outputs of the other columns'
    steps."""
    if mode == "fwd":

        def forward(y_true, y_pred):
            with torch.no_grad():
                return (loss_fn(y_true, y_pred),)

        return forward

    def step(y_true, y_pred):
        y_pred = y_pred.detach().requires_grad_(True)
        inputs = (y_pred,)
        if both:
            y_true = y_true.detach().requires_grad_(True)
            inputs = (y_true, y_pred)
        loss = loss_fn(y_true, y_pred)
        grads = torch.autograd.grad(loss.mean(), inputs)
        return (loss.detach(),) + tuple(grads)

    return step


def _nbytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


# --------------------------------------------------------------------------
# Probe: versions, the C entry points, and the self-check
# --------------------------------------------------------------------------


def self_check(config):
    """harness.self_check of every torch implementation."""

    def run_step(impl, op, y_true, y_pred, both):
        out = make_step(loss_function(op, impl), "fwd+bwd", both)(torch.from_numpy(y_true), torch.from_numpy(y_pred))
        return [t.numpy() for t in out]

    return harness_self_check(IMPLS, run_step, config)


def probe(config):
    if TORCH_IMPORT_ERROR is not None:
        return {"error": f"torch does not import in {sys.executable}: {TORCH_IMPORT_ERROR}"}
    info = {
        "python": sys.executable,
        "python_version": ".".join(map(str, sys.version_info[:3])),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "threads": torch.get_num_threads(),
        "tensorflow_imported": "tensorflow" in sys.modules,
    }
    try:
        from tf_fused_losses import _core_c_api, _torch_ops

        info["package"] = os.path.dirname(os.path.abspath(_torch_ops.__file__))
        info["load"] = {"library": _core_c_api.library()["path"], "platforms": list(_torch_ops.load())}
    except Exception as e:  # noqa: BLE001 - reported; the fused torch column is then skipped
        info["load_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:600]}"
    info["self_check"] = self_check(config)
    info["self_check_rtol"] = SELF_CHECK_RTOL
    return info


SIDE = Side(
    framework="torch",
    import_error=TORCH_IMPORT_ERROR,
    probe=probe,
    loss_function=loss_function,
    make_step=make_step,
    finish=lambda outputs: outputs,  # eager CPU: done on return
    to_inputs=lambda y_true, y_pred: (torch.from_numpy(y_true), torch.from_numpy(y_pred)),
    nbytes=_nbytes,
    # torch keeps no statistics of its CPU allocator.
    memory=lambda step, y_true, y_pred: {"peak_extra_bytes": None, "memory_method": "torch-none",
                                         "memory_floor_bytes": 0},
)


def main():
    run_side_job(SIDE, json.load(sys.stdin))


if __name__ == "__main__":
    main()
