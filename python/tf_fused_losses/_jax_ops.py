"""The losses on JAX arrays: the typed-FFI handlers of cc/xla/ffi_handlers.h,
the ones TensorFlow's XLA lowering calls, registered with jaxlib's XLA and
called through `jax.ffi.ffi_call`.

Imports neither TensorFlow nor Keras. The handlers live in libtfl_core.so
(the TF-free core: CPU row drivers, Host handlers, and CUDA handlers in CUDA
builds), loaded with ctypes and registered once by `load()`.

Each loss is a `jax.custom_vjp` whose forward and backward are the fused
custom calls, as the TF ops' registered gradients are:

  * BP-MLL: forward `tfl_bpmll_loss` -> (loss, cached_grad); backward
    `tfl_bpmll_loss_grad` scales cached_grad's rows by the loss cotangent
    (in place: the output aliases cached_grad, as in the TF lowering). The
    labels get no gradient (zeros; float0 for integer and bool labels).
  * Pearson / CCC: forward `tfl_correlation_loss` -> (loss, row_stats);
    backward `tfl_correlation_loss_grad`, with compute_grad_y_true = whether
    y_true takes part in differentiation (the custom_vjp's symbolic zeros
    say so at trace time), so that a training step, where y_true is a
    constant, neither computes nor allocates its gradient.

The handlers take rank-2 rows (BP-MLL) or (batch, steps[, 1]) rows
(correlation), and rows are independent. Under `jax.vmap` each custom call
is batched by a `jax.custom_batching.custom_vmap` rule that folds the mapped
axis into the batch: (V, B, L) -> (V*B, L), one call, and back; unmapped
operands are broadcast first. The rule sits inside the custom_vjp's forward
and backward, so jit, grad, vmap and their compositions (vmap of grad, grad
of vmap, nested vmap) all end in one custom call per op.
"""

import ctypes
import dataclasses
import functools
import importlib.util
import math
import os
import re
import threading

import numpy as np

import jax
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import mlir
from jaxlib.mlir import ir
from jax._src import core as _core  # the abstract-eval helpers ffi_call's own primitive uses
from jax._src import dispatch as _dispatch

try:  # how jax's own batch-partitionable FFI calls build theirs (jax/_src/lax/linalg.py)
    from jax._src.custom_partitioning_sharding_rule import sdy_sharding_rule_to_mlir, str_to_sdy_sharding_rule
except ImportError:  # pragma: no cover - another jax: the calls run replicated under Shardy, as ffi_call's
    str_to_sdy_sharding_rule = None

from ._loader import check_cpu_isa
from ._sequence_rows import ArrayFunctions, to_rows
from ._validation import check_bpmll_arguments, check_sequence_arguments

LIBRARY_NAME = "libtfl_core.so"
LIBRARY_ENV = "TFL_CORE_LIBRARY"

# The jaxlib releases the JAX path was tested with, and the XLA FFI C API
# version their headers (jax.ffi.include_dir()/xla/ffi/api/c_api.h) declare.
TESTED_JAXLIB = {"0.10.2": (0, 3)}

# XLA's handler registry (xla/ffi/ffi_registry.cc, IsSupportedApiVersion)
# accepts a handler whose API version (the XLA_FFI_API_MAJOR/MINOR it was
# compiled with, reported through its metadata) lies between 0.1 and the
# framework's own version: the C API is backward compatible within a major
# version (xla/ffi/api/c_api.h: minor versions only add fields, which
# implementations detect through struct_size). Older XLA releases required
# an exact match; there registration itself fails, and load() reports both
# versions.
OLDEST_FFI_API_ACCEPTED = (0, 1)

TARGET_BPMLL_LOSS = "tfl_bpmll_loss"
TARGET_BPMLL_LOSS_GRAD = "tfl_bpmll_loss_grad"
TARGET_CORRELATION_LOSS = "tfl_correlation_loss"
TARGET_CORRELATION_LOSS_GRAD = "tfl_correlation_loss_grad"

# Target name -> handler symbol without its platform suffix (Host / Cuda).
_TARGETS = (
    (TARGET_BPMLL_LOSS, "TflBpmllLoss"),
    (TARGET_BPMLL_LOSS_GRAD, "TflBpmllLossGrad"),
    (TARGET_CORRELATION_LOSS, "TflCorrelationLoss"),
    (TARGET_CORRELATION_LOSS_GRAD, "TflCorrelationLossGrad"),
)
_ROW_STATS = 5  # kCorrelationRowStats (cc/core/correlation/correlation_math.h)

_lock = threading.Lock()
_state = None  # what load() registered, once it succeeded
_library = None  # the ctypes handle, kept for the life of the process


def library_path():
    """Where the handler library is looked for: $TFL_CORE_LIBRARY if set,
    else lib/libtfl_core.so beside this module."""
    override = os.environ.get(LIBRARY_ENV)
    if override:
        return override
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib", LIBRARY_NAME)


# --------------------------------------------------------------------------
# Loading and registration
# --------------------------------------------------------------------------


def _version_text(version):
    return "unknown" if version is None else f"{version[0]}.{version[1]}"


def _tested_text():
    return ", ".join(f"jaxlib {v} (XLA FFI API {_version_text(api)})" for v, api in TESTED_JAXLIB.items())


def _jaxlib_version():
    try:
        import jaxlib

        return getattr(jaxlib, "__version__", None) or getattr(jaxlib.version, "__version__", "unknown")
    except ImportError:  # pragma: no cover - jax without jaxlib cannot import
        return "unknown"


def jaxlib_ffi_api_version():
    """(major, minor) of the XLA FFI C API the installed jaxlib implements,
    read from the c_api.h it ships (jax.ffi.include_dir()), or None when the
    headers are absent."""
    try:
        header = os.path.join(jax.ffi.include_dir(), "xla", "ffi", "api", "c_api.h")
        with open(header) as f:
            text = f.read()
    except (AttributeError, OSError, RuntimeError):
        return None
    major = re.search(r"^#define\s+XLA_FFI_API_MAJOR\s+(\d+)", text, re.M)
    minor = re.search(r"^#define\s+XLA_FFI_API_MINOR\s+(\d+)", text, re.M)
    if not (major and minor):
        return None
    return int(major.group(1)), int(minor.group(1))


def check_ffi_api_version(library_version, jaxlib_version, jaxlib_release="unknown", path="libtfl_core.so"):
    """Raises RuntimeError when jaxlib's XLA (FFI API jaxlib_version) will not
    accept handlers compiled against library_version: a different major
    version, a newer minor version, or one older than 0.1. jaxlib_version
    None (no headers to read) checks nothing: registration then decides."""
    if jaxlib_version is None:
        return
    lib, jax_api = tuple(library_version), tuple(jaxlib_version)
    hint = (
        f"Versions known to work: {_tested_text()}; jaxlib accepts handlers compiled against its own FFI API "
        f"version or an older one of the same major version (down to {_version_text(OLDEST_FFI_API_ACCEPTED)}). "
        f"Install a jax/jaxlib whose FFI API is at least {_version_text(lib)} with major version {lib[0]}, or "
        f"rebuild libtfl_core.so against this jaxlib's headers (cmake -DTFL_XLA_FFI_INCLUDE_DIR=\"$(python -c "
        f"'import jax.ffi; print(jax.ffi.include_dir())')\")."
    )
    if lib[0] != jax_api[0]:
        problem = "a different major version: the FFI C ABI differs"
    elif lib > jax_api:
        problem = "newer than jaxlib's XLA implements"
    elif lib < OLDEST_FFI_API_ACCEPTED:
        problem = f"older than {_version_text(OLDEST_FFI_API_ACCEPTED)}, the oldest XLA accepts"
    else:
        return
    raise RuntimeError(
        f"tf_fused_losses' JAX losses cannot use {path}: its handlers were compiled against XLA FFI API "
        f"{_version_text(lib)}, and jaxlib {jaxlib_release} implements FFI API {_version_text(jax_api)} "
        f"({problem}). {hint}"
    )


def _library_ffi_api_version(library, path):
    try:
        query = library.TflXlaFfiApiVersion
    except AttributeError:
        raise RuntimeError(
            f"{path} has no TflXlaFfiApiVersion symbol: it is not a libtfl_core.so built from this version of "
            f"tf_fused_losses (cc/xla/ffi_api_version.cc). Rebuild it, or point {LIBRARY_ENV} at a current build."
        ) from None
    query.restype = None
    query.argtypes = (ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.c_int32))
    major, minor = ctypes.c_int32(-1), ctypes.c_int32(-1)
    query(ctypes.byref(major), ctypes.byref(minor))
    return major.value, minor.value


def _jaxlib_has_cuda():
    """Whether a CUDA PJRT plugin for jaxlib is installed (not imported here)."""
    for name in ("jax_cuda13_plugin", "jax_cuda12_plugin", "jax_plugins.xla_cuda13", "jax_plugins.xla_cuda12"):
        try:
            if importlib.util.find_spec(name) is not None:
                return True
        except (ImportError, ValueError):
            continue
    return False


def _load():
    global _library
    ffi = getattr(jax, "ffi", None)
    missing = [n for n in ("ffi_call", "register_ffi_target", "pycapsule", "include_dir") if not hasattr(ffi, n)]
    if missing:
        raise RuntimeError(
            f"tf_fused_losses' JAX losses need jax.ffi ({', '.join(missing)} missing in jax {jax.__version__}). "
            f"Versions known to work: {_tested_text()}."
        )
    path = library_path()
    if not os.path.isfile(path):
        where = f"{LIBRARY_ENV}={path}" if os.environ.get(LIBRARY_ENV) else path
        raise RuntimeError(
            f"tf_fused_losses' JAX losses need the core library libtfl_core.so, which is not at {where}. "
            f"Build it (CMake target tfl_core; make install copies it into the package's lib/) or set "
            f"{LIBRARY_ENV} to its path."
        )
    try:
        library = ctypes.CDLL(path)
    except OSError as e:
        raise RuntimeError(f"tf_fused_losses' JAX losses could not load {path}: {e}") from e
    library_version = _library_ffi_api_version(library, path)
    jaxlib_release = _jaxlib_version()
    jaxlib_version = jaxlib_ffi_api_version()
    check_ffi_api_version(library_version, jaxlib_version, jaxlib_release, path)
    check_cpu_isa(library)

    platforms = [("cpu", "Host")]
    has_cuda_handlers = all(hasattr(library, symbol + "Cuda") for _, symbol in _TARGETS)
    if has_cuda_handlers and _jaxlib_has_cuda():
        platforms.append(("CUDA", "Cuda"))
    for platform, suffix in platforms:
        for target, symbol in _TARGETS:
            try:
                handler = getattr(library, symbol + suffix)
            except AttributeError:
                raise RuntimeError(
                    f"{path} has no {symbol + suffix} symbol: it is not a complete libtfl_core.so "
                    f"(cc/xla/ffi_handlers.h). Rebuild it, or point {LIBRARY_ENV} at a current build."
                ) from None
            try:
                jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(handler), platform=platform)
            except Exception as e:  # noqa: BLE001 - jaxlib raises its own XlaRuntimeError
                raise RuntimeError(
                    f"jaxlib {jaxlib_release} refused {symbol + suffix} of {path} as the {platform} FFI target "
                    f"{target!r}: {e}. The handlers were compiled against XLA FFI API "
                    f"{_version_text(library_version)}; jaxlib's headers declare "
                    f"{_version_text(jaxlib_version)}. Versions known to work: {_tested_text()}."
                ) from e
    # The handlers are row-independent along dim 0 of every operand and
    # result: XLA may give each device its rows (see _batch_call).
    for target, _ in _TARGETS:
        jax.ffi.register_ffi_target_as_batch_partitionable(target)
    _library = library
    return {
        "library": path,
        "library_ffi_api": _version_text(library_version),
        "jaxlib": jaxlib_release,
        "jaxlib_ffi_api": _version_text(jaxlib_version),
        "platforms": [p for p, _ in platforms],
        "cuda_handlers_in_library": has_cuda_handlers,
    }


def load():
    """Loads libtfl_core.so and registers its handlers as XLA FFI targets
    with jaxlib (cpu; CUDA too where the library has CUDA handlers and a CUDA
    jaxlib plugin is installed). Once per process and thread-safe; the losses
    call it. Returns what was registered (a dict). Raises RuntimeError saying
    why when the library is missing or does not load, or when its FFI API
    version does not fit the installed jaxlib's; a failed load is retried on
    the next call."""
    global _state
    if _state is None:
        with _lock:
            if _state is None:
                _state = _load()
    return dict(_state)


def _as_array(name, x):
    try:
        return jnp.asarray(x)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be an array; got {type(x).__name__}: {e}") from e


def has_handlers(platform):
    """Whether load() registered handlers for this jax platform ("cpu",
    "gpu", "cuda", ...; JAX calls a CUDA device's platform "gpu")."""
    platform = {"gpu": "cuda"}.get(platform.lower(), platform.lower())
    return platform in (p.lower() for p in load()["platforms"])


def platform_of(*arrays):
    """The jax platform the arrays compute on: that of the devices of the
    first committed concrete array, else (tracers, numpy, uncommitted
    arrays) the default backend's, where jit places the computation."""
    for x in arrays:
        if not isinstance(x, jax.Array) or isinstance(x, jax.core.Tracer):
            continue  # a tracer's attributes raise rather than tell
        try:
            if x.committed:
                return next(iter(x.devices())).platform
        except Exception:  # an array whose buffers were deleted
            continue
    return jax.default_backend()


# --------------------------------------------------------------------------
# The custom calls, batched by folding vmapped axes into the rows
# --------------------------------------------------------------------------


def _rows_call(rows_fun, first_core_rank):
    """rows_fun(*arrays) -> tuple of arrays, each of shape (rows,) + core, as
    the handlers take them, made to accept any number of extra leading
    (vmapped) dimensions, the same on every argument, by folding them into the
    rows; and wrapped in a custom_vmap whose rule adds the mapped axis as one
    more leading dimension (broadcasting unmapped arguments). first_core_rank:
    the rank of the first argument's row."""

    def folded(*args):
        lead = tuple(args[0].shape[: args[0].ndim - 1 - first_core_rank])
        if not lead:
            return tuple(rows_fun(*args))
        count = math.prod(lead) * args[0].shape[len(lead)]
        outs = rows_fun(*(a.reshape((count,) + tuple(a.shape[len(lead) + 1 :])) for a in args))
        rows = args[0].shape[len(lead)]
        return tuple(o.reshape(lead + (rows,) + tuple(o.shape[1:])) for o in outs)

    call = jax.custom_batching.custom_vmap(folded)

    @call.def_vmap
    def _fold_rule(axis_size, in_batched, *args):
        args = [
            a if batched else jnp.broadcast_to(a, (axis_size,) + tuple(a.shape)) for a, batched in zip(args, in_batched)
        ]
        outs = call(*args)
        return outs, tuple(True for _ in outs)

    return call


def _result(shape, dtype):
    return jax.ShapeDtypeStruct(tuple(shape), dtype)


# jax.ffi.ffi_call emits a custom call without a sharding rule, which XLA
# runs replicated: under jax.jit with batch-sharded inputs it would
# all-gather the operands, run the whole batch on every device and slice the
# results. Every handler here is row-independent along dim 0 of each operand
# and result, which is XLA's batch-partitionable custom call
# (xla/python/custom_call_batch_partitioner.cc, registered in _load() by
# jax.ffi.register_ffi_target_as_batch_partitionable): the SPMD partitioner
# gives each device its rows of every operand, dims past 0 gathered, and
# calls the handler on them. It needs two attributes ffi_call cannot set:
# the frontend attribute num_batch_dims (the partitioner reads it), and, for
# Shardy (JAX's default partitioner), an sdy.sharding_rule, without which
# Shardy propagates nothing through the call. Hence a primitive of our own
# whose lowering is jax.ffi.ffi_lowering plus those two attributes.
_batch_call_p = Primitive("tfl_batch_ffi_call")
_batch_call_p.multiple_results = True
_batch_call_p.def_impl(functools.partial(_dispatch.apply_primitive, _batch_call_p))


def _batch_spec(avals_in, rows):
    """The mesh axis (or axes) dim 0 of the row operands is typed with under
    explicit mesh axes, else None."""
    for a in avals_in:
        spec = getattr(getattr(a, "sharding", None), "spec", ())
        if a.ndim and a.shape[0] == rows and len(spec) and spec[0] is not None:
            return spec[0]
    return None


def _batch_call_abstract_eval(*avals_in, target, results, aliases, attributes):
    del target, aliases, attributes
    _core.standard_vma_rule("tfl_batch_ffi_call", *avals_in)  # as ffi_call's
    rows = avals_in[0].shape[0]  # every handler's first operand is a row array
    batch = _batch_spec(avals_in, rows)
    outs = []
    for shape, dtype in results:
        sharding = _core.get_cur_mesh_sharding()
        if batch is not None and len(shape) and shape[0] == rows and avals_in[0].sharding is not None:
            # The partitioner's result sharding: rows as the operands', the rest whole.
            sharding = avals_in[0].sharding.update(spec=jax.sharding.PartitionSpec(batch, *([None] * (len(shape) - 1))))
        outs.append(_core.ShapedArray(shape, dtype, sharding=sharding))
    return outs


def _sharding_rule(ctx, rows):
    """b (the rows) on dim 0 of every row array; every other dim a factor of
    its own that must be replicated (the partitioner gathers it); the
    placeholders ((0,): no mask, gradient not computed) only factors of
    their own."""
    names = (f"d{i}" for i in range(1000))

    def mapping(aval):
        dims = [next(names) for _ in aval.shape]
        if dims and aval.shape[0] == rows:
            dims[0] = "b"
        return " ".join(dims)

    lhs = ", ".join(mapping(a) for a in ctx.avals_in)
    rhs = ", ".join(mapping(a) for a in ctx.avals_out)
    # In the order of their first use: the rule's special factors must be sorted.
    replicated = tuple(dict.fromkeys(re.findall(r"d\d+", f"{lhs} {rhs}")))
    rule = str_to_sdy_sharding_rule(f"{lhs} -> {rhs}", need_replication_factors=replicated)
    types = lambda avals: [t for a in avals for t in mlir.aval_to_ir_types(ctx.module_context, a)]  # noqa: E731
    return sdy_sharding_rule_to_mlir(rule, types(ctx.avals_in), types(ctx.avals_out))


def _batch_call_lowering(ctx, *operands, target, results, aliases, attributes):
    extra = {"mhlo.frontend_attributes": ir.DictAttr.get({"num_batch_dims": ir.StringAttr.get("1")})}
    if str_to_sdy_sharding_rule is not None and jax.config.jax_use_shardy_partitioner:
        extra["sdy.sharding_rule"] = _sharding_rule(ctx, ctx.avals_in[0].shape[0])
    rule = jax.ffi.ffi_lowering(target, operand_output_aliases=dict(aliases), extra_attributes=extra)
    return rule(ctx, *operands, **dict(attributes))


_batch_call_p.def_abstract_eval(_batch_call_abstract_eval)
mlir.register_lowering(_batch_call_p, _batch_call_lowering)


def _batch_call(target, result_shape_dtypes, input_output_aliases=None):
    """As jax.ffi.ffi_call(target, result_shape_dtypes, input_output_aliases=...),
    for handlers whose operands and results all have the rows on dim 0 (the
    first operand's dim 0) but for (0,) placeholders; a call XLA partitions
    along those rows."""
    results = tuple((tuple(r.shape), np.dtype(r.dtype)) for r in result_shape_dtypes)
    aliases = tuple(sorted((input_output_aliases or {}).items()))

    def call(*args, **attributes):
        return _batch_call_p.bind(
            *args, target=target, results=results, aliases=aliases, attributes=tuple(sorted(attributes.items()))
        )

    return call


def _bpmll_forward_rows(y_true, y_pred):
    rows, labels = y_pred.shape
    call = _batch_call(
        TARGET_BPMLL_LOSS, (_result((rows,), y_pred.dtype), _result((rows, labels), y_pred.dtype))
    )
    return tuple(call(y_true, y_pred))


def _bpmll_backward_rows(grad_loss, cached_grad):
    # The scaled gradient overwrites the cached one (XLA copies cached_grad
    # first where it is still needed), as in the TF lowering.
    call = _batch_call(
        TARGET_BPMLL_LOSS_GRAD, (_result(cached_grad.shape, cached_grad.dtype),), input_output_aliases={1: 0}
    )
    return tuple(call(grad_loss, cached_grad))


_bpmll_forward = _rows_call(_bpmll_forward_rows, 1)  # (y_true, y_pred) -> (loss, cached_grad)
_bpmll_backward = _rows_call(_bpmll_backward_rows, 0)  # (grad_loss, cached_grad) -> (grad_y_pred,)


def _no_mask():
    return jnp.zeros((0,), jnp.bool_)  # the handlers' "every step is valid"


@functools.lru_cache(maxsize=None)
def _correlation_forward(concordance, epsilon, has_mask):
    """(y_true, y_pred[, mask]) -> (loss, row_stats)."""

    def rows_fun(y_true, y_pred, *mask):
        rows, steps = y_pred.shape
        call = _batch_call(
            TARGET_CORRELATION_LOSS,
            (_result((rows, steps), y_pred.dtype), _result((rows, _ROW_STATS), np.float64)),
        )
        return tuple(
            call(y_true, y_pred, mask[0] if has_mask else _no_mask(), concordance=concordance,
                 epsilon=np.float32(epsilon))
        )

    return _rows_call(rows_fun, 1)


@functools.lru_cache(maxsize=None)
def _correlation_backward(concordance, epsilon, has_mask, want_grad_y_true):
    """(grad_loss, y_true, y_pred[, mask], row_stats) -> ([grad_y_true,] grad_y_pred)."""

    def rows_fun(grad_loss, y_true, y_pred, *mask_and_stats):
        mask = mask_and_stats[0] if has_mask else _no_mask()
        row_stats = mask_and_stats[-1]
        # grad_y_true is (0,) when not computed, as in the TF op.
        true_shape = y_true.shape if want_grad_y_true else (0,)
        call = _batch_call(
            TARGET_CORRELATION_LOSS_GRAD,
            (_result(true_shape, y_pred.dtype), _result(y_pred.shape, y_pred.dtype)),
            # grad_y_pred into grad_loss's buffer, as in the TF lowering.
            input_output_aliases={0: 1},
        )
        grad_y_true, grad_y_pred = call(
            grad_loss, y_true, y_pred, mask, row_stats, concordance=concordance, epsilon=np.float32(epsilon),
            compute_grad_y_true=want_grad_y_true,
        )
        return (grad_y_true, grad_y_pred) if want_grad_y_true else (grad_y_pred,)

    return _rows_call(rows_fun, 1)


# --------------------------------------------------------------------------
# The differentiable losses
# --------------------------------------------------------------------------


@jax.custom_vjp
def _bpmll(y_true, y_pred):
    return _bpmll_forward(y_true, y_pred)[0]


def _bpmll_fwd(y_true, y_pred):
    loss, cached_grad = _bpmll_forward(y_true, y_pred)
    return loss, cached_grad


def _bpmll_bwd(cached_grad, grad_loss):
    # Labels are constants: no gradient (zeros, float0 for integer labels).
    return None, _bpmll_backward(grad_loss, cached_grad)[0]


_bpmll.defvjp(_bpmll_fwd, _bpmll_bwd)


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class _WantGradYTrue:
    """Static residual: whether y_true takes part in differentiation."""

    value: bool


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _correlation(concordance, epsilon, y_true, y_pred, mask):
    args = (y_true, y_pred) if mask is None else (y_true, y_pred, mask)
    return _correlation_forward(concordance, epsilon, mask is not None)(*args)[0]


def _correlation_fwd(concordance, epsilon, y_true, y_pred, mask):
    # symbolic_zeros: the primals come as CustomVJPPrimal(value, perturbed).
    mask = None if mask is None else mask.value
    args = (y_true.value, y_pred.value) if mask is None else (y_true.value, y_pred.value, mask)
    loss, row_stats = _correlation_forward(concordance, epsilon, mask is not None)(*args)
    return loss, (_WantGradYTrue(bool(y_true.perturbed)), y_true.value, y_pred.value, mask, row_stats)


def _correlation_bwd(concordance, epsilon, residuals, grad_loss):
    want, y_true, y_pred, mask, row_stats = residuals
    if isinstance(grad_loss, jax.custom_derivatives.SymbolicZero):
        return None, None, None
    backward = _correlation_backward(concordance, epsilon, mask is not None, want.value)
    args = (grad_loss, y_true, y_pred) + (() if mask is None else (mask,)) + (row_stats,)
    outs = backward(*args)
    grad_y_true = outs[0] if want.value else None
    return grad_y_true, outs[-1], None


_correlation.defvjp(_correlation_fwd, _correlation_bwd, symbolic_zeros=True)


def bpmll_loss(y_true, y_pred, name=None):
    """Per-sample BP-MLL loss of JAX arrays, shape (batch,), in y_pred's dtype.

    As tf_fused_losses.bpmll_loss: y_true (batch, labels) labels in [0, 1],
    float16/bfloat16/float32/float64, int32, int64, uint8 or bool, read as-is;
    y_pred (batch, labels) logits, float16/bfloat16/float32/float64. Rows
    without pairs give loss 0 and gradient 0. Labels get no gradient. Labels
    outside [0, 1] raise an error naming the first bad element when the CPU
    handler runs (the CUDA handler gives those rows NaN instead). `name` is
    for the backends' common signature (TF's name scope); unused here.
    """
    load()
    y_pred = _as_array("y_pred", y_pred)
    y_true = _as_array("y_true", y_true)
    check_bpmll_arguments(y_true, y_pred)
    return _bpmll(y_true, y_pred)


def bpmll_loss_from_ids(label_ids, y_pred, name=None):
    """BP-MLL from padded label ids (batch, K) of JAX arrays (-1 =
    padding): the fused ids custom call (`_ids_jax`), the dense loss's bits
    without a dense label matrix."""
    from . import _ids_jax  # it builds on this module's calls

    return _ids_jax.bpmll_loss_from_padded_ids(label_ids, y_pred)


def correlation_loss(y_true, y_pred, *, epsilon=1e-7, mask=None, concordance=False, corpus=False, name=None):
    """Per-step Pearson (concordance=False) or CCC (concordance=True) loss of
    JAX arrays, shape (batch, steps) or (batch, steps, targets), in y_pred's
    dtype.

    As tf_fused_losses.correlation_loss / ccc_loss: y_pred (batch, steps) or
    (batch, steps, targets), float16/bfloat16/float32/float64; y_true the
    same, any numeric dtype, cast to y_pred's; epsilon a real scalar >= 0 (at
    most the float32 maximum); mask optional (batch, steps), bool or numeric,
    nonzero on valid steps; corpus=True correlates each target over all
    valid steps of all rows. Gradients flow to y_pred and y_true (y_true's
    computed only when it is differentiated); none to mask.
    """
    if not isinstance(concordance, (bool, np.bool_)):
        raise ValueError(f"concordance must be a bool; got {concordance!r}")
    concordance = bool(concordance)
    load()
    y_pred = _as_array("y_pred", y_pred)
    y_true = _as_array("y_true", y_true)
    if mask is not None:
        mask = _as_array("mask", mask)
    epsilon, _ = check_sequence_arguments(y_true, y_pred, epsilon, mask, corpus)
    if y_true.dtype != y_pred.dtype:
        y_true = y_true.astype(y_pred.dtype)
    if mask is not None and mask.dtype != jnp.bool_:
        mask = mask != 0  # nonzero = valid
    (y_true, y_pred, mask), back = to_rows(_ARRAY_FUNCTIONS, y_true, y_pred, mask, corpus)
    return back(_correlation(concordance, epsilon, y_true, y_pred, mask))


_ARRAY_FUNCTIONS = ArrayFunctions(jnp.transpose, jnp.reshape, jnp.broadcast_to, lambda x: list(x.shape))
