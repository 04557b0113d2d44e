"""The fused linear BP-MLL head, functional form: the loss of a Dense layer's
logits, hidden @ kernel + bias, computed without the logits (the Keras layer
is `head_layers.BPMLLHead`).

Importing this module imports no framework: `_dispatch` picks the framework
from the arrays; TensorFlow runs `_head_tf`, JAX `_head_jax`.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import _dispatch

__all__ = ["bpmll_head_loss", "bpmll_head_loss_and_rows", "bpmll_head_top_k"]

_ARGUMENT_NAMES = ("hidden", "labels", "kernel", "bias", "sample_weight")
_MODULES = {_dispatch.TENSORFLOW: "tf_fused_losses._head_tf", _dispatch.JAX: "tf_fused_losses._head_jax"}
_LABEL_SHARDED_MODULE = "tf_fused_losses._head_sharded_jax"


def _backend(*arrays):
    """The head's module for the framework of the arrays, given in the order
    of `_ARGUMENT_NAMES` (the names the message of a mixed call uses)."""
    framework = _dispatch.choose(*arrays, names=_ARGUMENT_NAMES[: len(arrays)])
    if framework not in _MODULES:
        raise ValueError(f"the fused BP-MLL head runs on TensorFlow and JAX arrays; got {framework} arrays")
    return importlib.import_module(_MODULES[framework])


def _loss_and_rows(labels, hidden, kernel, bias, sharding, options):
    """(loss, per-row loss) from the head for the arrays' framework: the
    label-sharded JAX head where `sharding` (mesh, label_axis, batch_axis,
    label_count) names a label axis, else the framework's own."""
    arrays = (hidden, labels, kernel, bias, options.get("sample_weight"))
    if sharding["label_axis"] is None:
        given = sorted(name for name, value in sharding.items() if value is not None)
        if given:
            raise ValueError(f"the label-sharded head's keywords ({', '.join(given)}) need label_axis too")
        return _backend(*arrays).bpmll_head_loss_and_rows(labels, hidden, kernel, bias, **options)
    framework = _dispatch.choose(*arrays, names=_ARGUMENT_NAMES)
    # numpy arrays alone go to JAX here whatever the Keras backend: a mesh is JAX's.
    framework_free = all(_dispatch.framework_of(x) is None for x in arrays)
    if framework != _dispatch.JAX and not framework_free:
        raise ValueError(
            f"label_axis: the label-sharded head runs on JAX arrays only (a jax.sharding.Mesh); got {framework} "
            "arrays. TensorFlow's head has no label sharding: use JAX for it, or leave label_axis None "
            "(data-parallel under tf.distribute)"
        )
    return importlib.import_module(_LABEL_SHARDED_MODULE).bpmll_head_loss_and_rows_label_sharded(
        labels, hidden, kernel, bias, **sharding, **options)


@_dispatch.not_converted
def bpmll_head_loss(
    labels: Any,
    hidden: Any,
    kernel: Any,
    bias: Any = None,
    *,
    label_ids: bool = False,
    chunk_size: int | None = None,
    reduction: str | None = None,
    sample_weight: Any = None,
    mesh: Any = None,
    label_axis: str | None = None,
    batch_axis: str | None = None,
    label_count: int | None = None,
    name: str | None = None,
) -> Any:
    """BP-MLL loss of the logits hidden @ kernel + bias, equal to
    `bpmll_loss(labels, hidden @ kernel + bias)` reduced as Keras reduces a
    loss, with gradients for hidden, kernel and bias, never holding the
    (batch, labels) logits or their gradient.

    Args:
      labels: (batch, labels) labels in [0, 1] (float, soft labels allowed,
        int, uint8 or bool), or with `label_ids=True` each row's positive
        label ids, (batch, K) int32/int64 padded with -1 (on TensorFlow also
        a tf.RaggedTensor of ids); a repeated id counts once. No gradient.
      hidden: (batch, d) floating.
      kernel: (d, labels) floating, as a Dense kernel; its label count must
        be known when traced.
      bias: (labels,) floating, or None.
      chunk_size: label columns per chunk; by default what 64 MiB of float32
        scratch allows at this batch (64 MiB / (4 bytes x batch x 3), at
        least 128; batch 1024 gives 5461).
      reduction: Keras' names (keras.losses.Loss). None or "none" (the
        default): the per-row loss (batch,), times sample_weight if given.
        "sum": sum_i w_i loss_i; "sum_over_batch_size" or "mean": that over
        the batch size; "mean_with_sample_weight": that over sum_i w_i (the
        batch size without weights); a division by 0 gives 0. A scalar.
      sample_weight: None, a scalar or (batch,) row weights w_i. No gradient.
      label_axis: JAX only: the name of the axis of `mesh` the kernel's
        labels (its columns, the bias and dense labels) are split over. Each
        device computes its label slice's logits chunk by chunk and the
        devices all-reduce O(batch) numbers per row, never the logits
        (`_head_sharded_jax`, docs/distributed.md); the kernel's and bias's
        gradients stay label-sharded, the hidden gradient is all-reduced.
        Always the two-pass form; a reduction is applied to its per-row
        loss. None (the default): one device's head, as without sharding.
      mesh: the `jax.sharding.Mesh` of label_axis (Keras: the distribution's
        `device_mesh.backend_mesh`); None: the mesh of kernel's
        NamedSharding (a placed kernel, not a traced one).
      batch_axis: the mesh axis the rows are split over, or None (rows
        replicated over the mesh).
      label_count: the real label count where the kernel's columns from it
        on are padding (masked out: no loss, gradient 0), as a kernel that
        lives label-sharded must divide evenly over label_axis. Default: all
        of kernel's columns are labels.

    Computes in kernel's dtype (hidden and bias are cast to it) and
    accumulates the row statistics in float32 (float64 for float64); the
    loss comes in kernel's dtype. Two forms, over label chunks, with
    O(batch x chunk) scratch:

    * one pass (label ids with a reduction): the upstream gradient of a
      reduced loss is one scalar times known row weights, so the forward
      computes all three gradients (Liger-Kernel's fused linear
      cross-entropy, here with BP-MLL's factored form): each row's positive
      sum from the positives' gathered kernel columns first, then one pass
      of chunk GEMMs that yields the negatives' gradient and sum at once,
      then the positives' gradient through the gathered columns. The
      unfused step's three GEMMs; the backward scales the saved gradients
      by the upstream (the weight gradients are held from forward to
      backward, as the unfused step holds the logits' gradient).
    * two passes (no reduction, any upstream; or dense labels): the forward
      folds each chunk's logits (one GEMM) into per-row log-sum-exps; the
      backward recomputes them (Cut Cross-Entropy's recompute) and forms the
      three gradients (two GEMMs): four GEMMs per step. Dense labels take
      it with a reduction too: their positives are not static-shaped (soft
      labels, any number per row), so the positives' sum cannot come first
      from gathered columns. Binary dense labels outside XLA train faster
      as ids (label_ids=True; measured in `_head_tf`'s docstring).

    Rows with no positive or no negative label give 0 and gradient 0; a NaN
    logit makes its row NaN (and, as in the unfused path, every column of
    the kernel's and bias's gradient); a label outside [0, 1] makes its row
    NaN. An id neither in [0, labels) nor -1 raises, naming it in the ids
    op's words (`label_ids[3, 2] = 670091 is outside [0, 670091)`: ValueError
    eagerly, InvalidArgumentError from a tf.function's step); inside XLA
    (jit_compile, jax.jit), where nothing can raise, it makes its row NaN.
    TensorFlow (eager, tf.function, jit_compile) and JAX (eager, jit).
    """
    options = dict(label_ids=label_ids, chunk_size=chunk_size, reduction=reduction, sample_weight=sample_weight,
                   name=name)
    sharding = dict(mesh=mesh, label_axis=label_axis, batch_axis=batch_axis, label_count=label_count)
    return _loss_and_rows(labels, hidden, kernel, bias, sharding, options)[0]


@_dispatch.not_converted
def bpmll_head_loss_and_rows(labels: Any, hidden: Any, kernel: Any, bias: Any = None, **options: Any) -> tuple[Any, Any]:
    """(loss, per-row loss): `bpmll_head_loss` with these arguments and
    keyword options (label_ids, chunk_size, reduction, sample_weight, name,
    and the label-sharded head's mesh, label_axis, batch_axis, label_count),
    and the unweighted per-row loss (batch,) it reduced, from the same pass
    (what a Keras layer adds as its loss and returns). On the one-pass form
    (label ids with a reduction) the per-row loss carries no gradient: the
    loss's gradients were computed for the reduction."""
    sharding = {key: options.pop(key, None) for key in ("mesh", "label_axis", "batch_axis", "label_count")}
    return _loss_and_rows(labels, hidden, kernel, bias, sharding, options)


@_dispatch.not_converted
def bpmll_head_top_k(hidden: Any, kernel: Any, bias: Any = None, *, k: int, chunk_size: int | None = None) -> Any:
    """(scores, ids): the k largest logits of hidden @ kernel + bias per row,
    (batch, k) each, best first, ids int32; over label chunks (a top-k per
    chunk merged into the running one), never the whole logits or a full
    sort. `chunk_size` as for `bpmll_head_loss`."""
    return _backend(hidden, None, kernel, bias).bpmll_head_top_k(hidden, kernel, bias, k=k, chunk_size=chunk_size)
