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

__all__ = ["bpmll_head_loss", "bpmll_head_top_k"]

_MODULES = {_dispatch.TENSORFLOW: "tf_fused_losses._head_tf", _dispatch.JAX: "tf_fused_losses._head_jax"}


def _backend(*arrays):
    framework = _dispatch.choose(*arrays)
    if framework not in _MODULES:
        raise ValueError(f"the fused BP-MLL head runs on TensorFlow and JAX arrays; got {framework} arrays")
    return importlib.import_module(_MODULES[framework])


@_dispatch.not_converted
def bpmll_head_loss(
    labels: Any,
    hidden: Any,
    kernel: Any,
    bias: Any = None,
    *,
    label_ids: bool = False,
    chunk_size: int | None = None,
    name: str | None = None,
) -> Any:
    """Per-row BP-MLL loss, shape (batch,), of the logits hidden @ kernel +
    bias, equal to `bpmll_loss(labels, hidden @ kernel + bias)`, with
    gradients for hidden, kernel and bias, never holding the (batch, labels)
    logits or their gradient.

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

    Computes in kernel's dtype (hidden and bias are cast to it) and
    accumulates the row statistics in float32 (float64 for float64). Two
    passes over label chunks: the forward folds each chunk's logits (one
    GEMM) into per-row log-sum-exps; the backward recomputes them (Cut
    Cross-Entropy's recompute) and forms the three gradients (two GEMMs):
    four GEMMs per step where the unfused step has three, and O(batch x
    chunk) scratch. Rows with no positive or no negative label give 0 and
    gradient 0; a NaN logit makes its row NaN; a label outside [0, 1], or an
    id neither in [0, labels) nor -1, makes its row NaN rather than raising.
    TensorFlow (eager, tf.function, jit_compile) and JAX (eager, jit).
    """
    return _backend(hidden, labels, kernel, bias).bpmll_head_loss(
        labels, hidden, kernel, bias, label_ids=label_ids, chunk_size=chunk_size, name=name
    )


@_dispatch.not_converted
def bpmll_head_top_k(hidden: Any, kernel: Any, bias: Any = None, *, k: int, chunk_size: int | None = None) -> Any:
    """(scores, ids): the k largest logits of hidden @ kernel + bias per row,
    (batch, k) each, best first, ids int32; over label chunks (a top-k per
    chunk merged into the running one), never the whole logits or a full
    sort. `chunk_size` as for `bpmll_head_loss`."""
    return _backend(hidden, kernel, bias).bpmll_head_top_k(hidden, kernel, bias, k=k, chunk_size=chunk_size)
