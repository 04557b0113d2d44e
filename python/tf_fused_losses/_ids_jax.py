"""The fused label-id BP-MLL loss on JAX arrays: the typed-FFI handlers
tfl_bpmll_ids_loss of libtfl_core.so (cc/xla/ffi_handlers.h) in a
`jax.custom_vjp`, as `_jax_ops.bpmll_loss` calls tfl_bpmll_loss.

The forward gives (loss, cached_grad) exactly as the dense handler does on
the equivalent 0/1 matrix, so the backward is the dense one
(tfl_bpmll_loss_grad scales cached_grad's rows). Batched under `jax.vmap` by
folding mapped axes into the rows, as the dense loss.
"""

import ctypes
import threading

import jax

from . import _jax_ops
from ._validation import check_padded_ids_arguments

TARGET_BPMLL_IDS_LOSS = "tfl_bpmll_ids_loss"

_lock = threading.Lock()
_registered = False


def load():
    """Loads libtfl_core.so through `_jax_ops.load()` and registers the
    label-id handler with jaxlib's XLA on the platforms that registered the
    dense ones (cpu; CUDA where the library has CUDA handlers and jaxlib a
    CUDA plugin). Once per process; raises RuntimeError as `_jax_ops.load()`
    does."""
    global _registered
    state = _jax_ops.load()
    if _registered:
        return
    with _lock:
        if _registered:
            return
        path = state["library"]
        library = ctypes.CDLL(path)  # the handle _jax_ops.load() opened: dlopen counts references
        for platform in state["platforms"]:
            symbol = "TflBpmllIdsLoss" + {"cpu": "Host", "CUDA": "Cuda"}[platform]
            try:
                handler = getattr(library, symbol)
            except AttributeError:
                raise RuntimeError(
                    f"{path} has no {symbol} symbol: it predates the label-id loss. Rebuild it, or point "
                    f"{_jax_ops.LIBRARY_ENV} at a current build."
                ) from None
            jax.ffi.register_ffi_target(TARGET_BPMLL_IDS_LOSS, jax.ffi.pycapsule(handler), platform=platform)
        # Row-independent as the dense handlers (_jax_ops._batch_call).
        jax.ffi.register_ffi_target_as_batch_partitionable(TARGET_BPMLL_IDS_LOSS)
        _registered = True


def _forward_rows(label_ids, y_pred):
    rows, labels = y_pred.shape
    call = _jax_ops._batch_call(
        TARGET_BPMLL_IDS_LOSS,
        (_jax_ops._result((rows,), y_pred.dtype), _jax_ops._result((rows, labels), y_pred.dtype)),
    )
    return tuple(call(label_ids, y_pred))


_forward = _jax_ops._rows_call(_forward_rows, 1)  # (label_ids, y_pred) -> (loss, cached_grad)


_bpmll_ids = jax.custom_vjp(lambda label_ids, y_pred: _forward(label_ids, y_pred)[0])
# The forward's residual is the cached gradient, the dense op's: the backward
# is the dense one, and ids get no gradient.
_bpmll_ids.defvjp(_forward, _jax_ops._bpmll_bwd)


def bpmll_loss_from_padded_ids(label_ids, y_pred):
    """Per-row BP-MLL loss of JAX arrays, shape (batch,), in y_pred's dtype,
    from label ids.

    label_ids: (batch, K) int32 or int64 (int64 needs jax_enable_x64), each
    row's positive labels in any order, -1 as padding anywhere in the row; a
    repeated id counts once. y_pred: (batch, labels) logits,
    float16/bfloat16/float32/float64. Equals `_jax_ops.bpmll_loss` on the 0/1
    matrix with ones at the ids, bit for bit; differentiable in y_pred. An id
    outside [0, labels) other than -1 raises when the CPU handler runs,
    naming it (label_ids[i, k]).
    """
    load()
    y_pred = _jax_ops._as_array("y_pred", y_pred)
    label_ids = _jax_ops._as_array("label_ids", label_ids)
    check_padded_ids_arguments(label_ids, y_pred)
    return _bpmll_ids(label_ids, y_pred)
