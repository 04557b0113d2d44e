"""The losses on torch tensors: `torch.library` custom ops (namespace "tfl")
over the core's plain C entry points (cc/core/c_api/tfl_c_api.h), called
through ctypes (`_core_c_api`), so that nothing here is built against torch
and one libtfl_core.so serves every torch version.

The ops, registered when this module is imported, are those of the TF
frontend:

  * tfl::bpmll_loss(y_true, y_pred) -> (loss, cached_grad); its backward
    tfl::bpmll_loss_grad(grad_loss, cached_grad) scales cached_grad's rows.
    The labels get no gradient.
  * tfl::bpmll_ids_loss(label_ids, y_pred) -> (loss, cached_grad): the same
    from padded label ids (batch, K), never a (batch, labels) label matrix;
    the same backward.
  * tfl::correlation_loss(y_true, y_pred, mask, epsilon, concordance) ->
    (loss, row_stats); its backward tfl::correlation_loss_grad(...,
    compute_grad_y_true) computes y_true's gradient only where autograd
    asks for it (ctx.needs_input_grad), so that a training step, where the
    targets are constants, neither computes nor allocates it.

Each op has a CPU kernel (torch.get_num_threads() threads; the bits do not
depend on the count) and, where the core was built with CUDA, a CUDA kernel
on the current stream with scratch from torch's caching allocator; a fake
(meta) implementation, so that torch.compile traces through it without a
graph break; and an autograd formula. Inputs are made contiguous; outputs
come from the torch allocator.

`bpmll_loss` and `correlation_loss` are this backend's functions (the
same as `_tf_ops`', `_jax_ops`' and `_keras_ops`'): they convert and check
their arguments (`_validation`) and call the ops.
"""

from typing import Optional

import numpy as np
import torch

from . import _core_c_api as core
from ._sequence_rows import ArrayFunctions, to_rows
from ._validation import check_bpmll_arguments, check_padded_ids_arguments, check_sequence_arguments, dtype_name

ROW_STATS = 5  # kCorrelationRowStats (cc/core/correlation/correlation_math.h)


def load():
    """Loads the core's C entry points (RuntimeError saying why where they
    do not load); returns the platforms with kernels, ("cpu", ["cuda"])."""
    core.library()
    return tuple(p for p in ("cpu", "cuda") if core.has_platform(p))


def device_type_of(*arrays):
    """The device type ("cpu", "cuda", ...) of the first torch tensor among
    the arrays; "cpu" where there is none (numpy arrays are converted there)."""
    for x in arrays:
        if isinstance(x, torch.Tensor):
            return x.device.type
    return "cpu"


def has_kernels(device_type):
    """Whether the core has entry points for tensors on this device type."""
    return device_type in load()


# --------------------------------------------------------------------------
# Calling the C entry points
# --------------------------------------------------------------------------


def _code(tensor):
    name = dtype_name(tensor.dtype)
    if name not in core.DTYPE_CODES:
        raise ValueError(f"the fused ops take {', '.join(core.DTYPE_CODES)} tensors; got dtype {name}")
    return core.DTYPE_CODES[name]


def _ptr(tensor):
    """The address of a contiguous tensor's data; 0 (NULL) for None."""
    return 0 if tensor is None else tensor.data_ptr()


def _run(kernel, device, *arguments):
    """Calls the core's entry point for `device` with its platform's tail:
    the thread count on the CPU; on CUDA the current stream of `device`
    and an allocator that takes scratch from torch's caching allocator,
    kept alive until the call has enqueued its kernels (stream order makes
    the memory safe to reuse after that)."""
    if device.type == "cpu":
        core.call(kernel, "cpu", *arguments, torch.get_num_threads())
        return
    scratch = []

    def allocate(_context, size):
        try:
            buffer = torch.empty(size, dtype=torch.uint8, device=device)
        except RuntimeError:  # torch's OutOfMemoryError among others; the core reports the size
            return None
        scratch.append(buffer)
        return buffer.data_ptr()

    with torch.cuda.device(device):
        stream = torch.cuda.current_stream(device).cuda_stream
        core.call(kernel, "cuda", *arguments, stream, core.ALLOCATE_FN(allocate), None)


def _contiguous(*tensors):
    return tuple(None if t is None else t.contiguous() for t in tensors)


def _expect(name, tensor, shape, dtype, device):
    """The op's own check of an input it takes extents from elsewhere: the
    kernels would read out of bounds otherwise."""
    if tuple(tensor.shape) != tuple(shape) or tensor.dtype != dtype or tensor.device != device:
        raise ValueError(
            f"{name} must be {dtype} of shape {tuple(shape)} on {device}; got {tensor.dtype} of shape "
            f"{tuple(tensor.shape)} on {tensor.device}"
        )


# --------------------------------------------------------------------------
# The ops
# --------------------------------------------------------------------------


@torch.library.custom_op("tfl::bpmll_loss", mutates_args=(), device_types=("cpu", "cuda"))
def _bpmll_loss(y_true: torch.Tensor, y_pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if y_pred.dim() != 2:
        raise ValueError(f"y_pred must be rank 2 (batch, labels); got shape {tuple(y_pred.shape)}")
    _expect("y_true", y_true, y_pred.shape, y_true.dtype, y_pred.device)
    y_true, y_pred = _contiguous(y_true, y_pred)
    rows, labels = y_pred.shape
    loss = torch.empty(rows, dtype=y_pred.dtype, device=y_pred.device)
    grad = torch.empty_like(y_pred)
    _run("bpmll_loss", y_pred.device, _ptr(y_true), _code(y_true), _ptr(y_pred), _code(y_pred), rows, labels,
         _ptr(loss), _ptr(grad))
    return loss, grad


@_bpmll_loss.register_fake
def _(y_true, y_pred):
    return y_pred.new_empty(y_pred.shape[:1]), torch.empty_like(y_pred)


@torch.library.custom_op("tfl::bpmll_ids_loss", mutates_args=(), device_types=("cpu", "cuda"))
def _bpmll_ids_loss(label_ids: torch.Tensor, y_pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if y_pred.dim() != 2 or label_ids.dim() != 2 or label_ids.shape[0] != y_pred.shape[0]:
        raise ValueError(f"label_ids must be (batch, K) and y_pred (batch, labels) with one batch; got label_ids "
                         f"{tuple(label_ids.shape)} and y_pred {tuple(y_pred.shape)}")
    if label_ids.dtype not in (torch.int32, torch.int64) or label_ids.device != y_pred.device:
        raise ValueError(f"label_ids must be int32 or int64 on {y_pred.device}; got {label_ids.dtype} on "
                         f"{label_ids.device}")
    label_ids, y_pred = _contiguous(label_ids, y_pred)
    rows, labels = y_pred.shape
    loss = torch.empty(rows, dtype=y_pred.dtype, device=y_pred.device)
    grad = torch.empty_like(y_pred)
    _run("bpmll_ids_loss", y_pred.device, _ptr(label_ids), _code(label_ids), label_ids.shape[1], _ptr(y_pred),
         _code(y_pred), rows, labels, _ptr(loss), _ptr(grad))
    return loss, grad


@_bpmll_ids_loss.register_fake
def _(label_ids, y_pred):
    return y_pred.new_empty(y_pred.shape[:1]), torch.empty_like(y_pred)


@torch.library.custom_op("tfl::bpmll_loss_grad", mutates_args=(), device_types=("cpu", "cuda"))
def _bpmll_loss_grad(grad_loss: torch.Tensor, cached_grad: torch.Tensor) -> torch.Tensor:
    _expect("grad_loss", grad_loss, cached_grad.shape[:1], cached_grad.dtype, cached_grad.device)
    grad_loss, cached_grad = _contiguous(grad_loss, cached_grad)
    out = torch.empty_like(cached_grad)
    rows, labels = cached_grad.shape
    _run("bpmll_loss_grad", cached_grad.device, _ptr(grad_loss), _ptr(cached_grad), _code(cached_grad), rows, labels,
         _ptr(out))
    return out


@_bpmll_loss_grad.register_fake
def _(grad_loss, cached_grad):
    return torch.empty_like(cached_grad)


def _bpmll_setup_context(ctx, inputs, output):
    ctx.save_for_backward(output[1])
    _no_residual_gradient(ctx, output[1])


def _no_residual_gradient(ctx, residual):
    """The second output (cached_grad, row_stats) is a residual for the
    backward op, not a result anyone differentiates. Without this, autograd
    would hand the backward a tensor of zeros of its shape each step
    (materialized gradients): a (batch, labels) fill that cost more than the
    fused op itself."""
    ctx.mark_non_differentiable(residual)
    ctx.set_materialize_grads(False)


def _bpmll_backward(ctx, grad_loss, _grad_cached):
    # Labels are constants: no gradient.
    if grad_loss is None:
        return None, None
    (cached_grad,) = ctx.saved_tensors
    return None, torch.ops.tfl.bpmll_loss_grad(grad_loss, cached_grad)


_bpmll_loss.register_autograd(_bpmll_backward, setup_context=_bpmll_setup_context)
# The ids op's backward is the dense op's: the labels (ids) get no gradient.
_bpmll_ids_loss.register_autograd(_bpmll_backward, setup_context=_bpmll_setup_context)


@torch.library.custom_op("tfl::correlation_loss", mutates_args=(), device_types=("cpu", "cuda"))
def _correlation_loss(
    y_true: torch.Tensor, y_pred: torch.Tensor, mask: Optional[torch.Tensor], epsilon: float, concordance: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_sequences(y_true, y_pred, mask)
    y_true, y_pred, mask = _contiguous(y_true, y_pred, mask)
    rows, steps = y_pred.shape
    loss = torch.empty_like(y_pred)
    row_stats = torch.empty((rows, ROW_STATS), dtype=torch.float64, device=y_pred.device)
    _run("correlation_loss", y_pred.device, _ptr(y_true), _ptr(y_pred), _ptr(mask), _code(y_pred), rows, steps,
         epsilon, int(concordance), _ptr(loss), _ptr(row_stats))
    return loss, row_stats


@_correlation_loss.register_fake
def _(y_true, y_pred, mask, epsilon, concordance):
    return torch.empty_like(y_pred), y_pred.new_empty((y_pred.shape[0], ROW_STATS), dtype=torch.float64)


def _check_sequences(y_true, y_pred, mask):
    if y_pred.dim() != 2:
        raise ValueError(f"y_pred must be rank 2 (batch, steps); got shape {tuple(y_pred.shape)}")
    _expect("y_true", y_true, y_pred.shape, y_pred.dtype, y_pred.device)
    if mask is not None:
        _expect("mask", mask, y_pred.shape, torch.bool, y_pred.device)


@torch.library.custom_op("tfl::correlation_loss_grad", mutates_args=(), device_types=("cpu", "cuda"))
def _correlation_loss_grad(
    grad_loss: torch.Tensor,
    y_true: torch.Tensor,
    y_pred: torch.Tensor,
    mask: Optional[torch.Tensor],
    row_stats: torch.Tensor,
    epsilon: float,
    concordance: bool,
    compute_grad_y_true: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_sequences(y_true, y_pred, mask)
    _expect("grad_loss", grad_loss, y_pred.shape, y_pred.dtype, y_pred.device)
    _expect("row_stats", row_stats, (y_pred.shape[0], ROW_STATS), torch.float64, y_pred.device)
    grad_loss, y_true, y_pred, mask, row_stats = _contiguous(grad_loss, y_true, y_pred, mask, row_stats)
    rows, steps = y_pred.shape
    grad_y_true = torch.empty_like(y_pred) if compute_grad_y_true else y_pred.new_empty((0,))
    grad_y_pred = torch.empty_like(y_pred)
    _run("correlation_loss_grad", y_pred.device, _ptr(grad_loss), _ptr(y_true), _ptr(y_pred), _ptr(mask),
         _ptr(row_stats), _code(y_pred), rows, steps, epsilon, int(concordance),
         _ptr(grad_y_true) if compute_grad_y_true else 0, _ptr(grad_y_pred))
    return grad_y_true, grad_y_pred


@_correlation_loss_grad.register_fake
def _(grad_loss, y_true, y_pred, mask, row_stats, epsilon, concordance, compute_grad_y_true):
    grad_y_true = torch.empty_like(y_pred) if compute_grad_y_true else y_pred.new_empty((0,))
    return grad_y_true, torch.empty_like(y_pred)


def _correlation_setup_context(ctx, inputs, output):
    y_true, y_pred, mask, epsilon, concordance = inputs
    ctx.save_for_backward(y_true, y_pred, mask, output[1])
    ctx.epsilon = epsilon
    ctx.concordance = concordance
    _no_residual_gradient(ctx, output[1])


def _correlation_backward(ctx, grad_loss, _grad_row_stats):
    if grad_loss is None:
        return None, None, None, None, None
    y_true, y_pred, mask, row_stats = ctx.saved_tensors
    want_grad_y_true = ctx.needs_input_grad[0]
    grad_y_true, grad_y_pred = torch.ops.tfl.correlation_loss_grad(
        grad_loss, y_true, y_pred, mask, row_stats, ctx.epsilon, ctx.concordance, want_grad_y_true
    )
    return (grad_y_true if want_grad_y_true else None), grad_y_pred, None, None, None


_correlation_loss.register_autograd(_correlation_backward, setup_context=_correlation_setup_context)


# --------------------------------------------------------------------------
# The backend's functions
# --------------------------------------------------------------------------


def _as_tensor(name, x, like=None):
    """x as a torch tensor (on `like`'s device); numpy arrays and Python
    values are converted, tensors kept."""
    if isinstance(x, torch.Tensor):
        return x
    try:
        if isinstance(x, np.ndarray) and x.dtype.name == "bfloat16":  # ml_dtypes: no torch conversion
            return torch.as_tensor(x.astype(np.float32), device=None if like is None else like.device).bfloat16()
        return torch.as_tensor(x, device=None if like is None else like.device)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{name} must be an array; got {type(x).__name__}: {e}") from e


def bpmll_loss(y_true, y_pred, name=None):
    """Per-sample BP-MLL loss of torch tensors, shape (batch,), in y_pred's
    dtype: the fused op tfl::bpmll_loss, differentiable in y_pred.

    As tf_fused_losses.bpmll_loss: y_true (batch, labels) labels in [0, 1],
    float16/bfloat16/float32/float64, int32, int64, uint8 or bool, read as
    they are; y_pred (batch, labels) logits, float16/bfloat16/float32/
    float64. Rows without pairs give loss 0 and gradient 0. Labels outside
    [0, 1] raise ValueError naming the first bad element on the CPU (the
    CUDA kernels give those rows NaN instead). `name` is for the backends'
    common signature (TF's name scope); unused here.
    """
    y_pred = _as_tensor("y_pred", y_pred)
    y_true = _as_tensor("y_true", y_true, like=y_pred)
    check_bpmll_arguments(y_true, y_pred)
    return torch.ops.tfl.bpmll_loss(y_true, y_pred)[0]


def bpmll_loss_from_ids(label_ids, y_pred, name=None):
    """BP-MLL from padded label ids (batch, K) of torch tensors (-1 =
    padding; a repeated id counts once): the fused op tfl::bpmll_ids_loss,
    the same loss and gradient as bpmll_loss on the equivalent 0/1 matrix,
    bit for bit, without that matrix. On the CPU an id outside [0, labels)
    other than the padding raises ValueError naming it (on CUDA its row
    reads NaN)."""
    y_pred = _as_tensor("y_pred", y_pred)
    label_ids = _as_tensor("label_ids", label_ids, like=y_pred)
    check_padded_ids_arguments(label_ids, y_pred)
    return torch.ops.tfl.bpmll_ids_loss(label_ids, y_pred)[0]


def correlation_loss(y_true, y_pred, *, epsilon=1e-7, mask=None, concordance=False, corpus=False, name=None):
    """Per-step Pearson (concordance=False) or CCC (concordance=True) loss of
    torch tensors, shape (batch, steps), in y_pred's dtype: the fused op
    tfl::correlation_loss.

    As tf_fused_losses.correlation_loss / ccc_loss: y_pred (batch, steps) or
    (batch, steps, 1), float16/bfloat16/float32/float64; y_true the same
    (batch, steps), any numeric dtype, cast to y_pred's; epsilon a real
    scalar >= 0 (at most the float32 maximum); mask optional (batch, steps),
    bool or numeric, nonzero on valid steps. Gradients flow to y_pred and
    y_true (y_true's computed only when it requires grad); none to mask.
    """
    if not isinstance(concordance, (bool, np.bool_)):
        raise ValueError(f"concordance must be a bool; got {concordance!r}")
    y_pred = _as_tensor("y_pred", y_pred)
    y_true = _as_tensor("y_true", y_true, like=y_pred)
    if mask is not None:
        mask = _as_tensor("mask", mask, like=y_pred)
    epsilon, _ = check_sequence_arguments(y_true, y_pred, epsilon, mask, corpus)
    if y_true.dtype != y_pred.dtype:
        y_true = y_true.to(y_pred.dtype)
    if mask is not None and mask.dtype != torch.bool:
        mask = mask != 0  # nonzero = valid
    (y_true, y_pred, mask), back = to_rows(_ARRAY_FUNCTIONS, y_true, y_pred, mask, corpus)
    return back(torch.ops.tfl.correlation_loss(y_true, y_pred, mask, epsilon, bool(concordance))[0])


_ARRAY_FUNCTIONS = ArrayFunctions(torch.permute, torch.reshape, torch.broadcast_to, lambda x: list(x.shape))
