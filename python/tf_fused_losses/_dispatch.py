"""Which implementation a call runs, told from its arrays without importing
a framework to find out.

* TensorFlow tensors and variables: the TF path (`_tf_ops`: the fused ops
  and their registered gradients; `reference.*_pure_tf` with
  TF_FUSED_LOSSES_PY_OPS=1).
* JAX arrays and tracers: the fused XLA custom calls of `_jax_ops`; where
  its handler library cannot load, the keras.ops forms (`_keras_ops`), with
  one warning; the keras.ops forms too with TF_FUSED_LOSSES_PY_OPS=1.
* torch tensors and anything else array-like: the keras.ops forms.
* numpy arrays and Python values alone: the current Keras backend's path
  (`keras.backend.backend()`).

The arguments are looked at in the order y_pred, y_true, mask; the first
that belongs to a framework decides. Nothing here imports TensorFlow, JAX,
torch or Keras unless the call needs it.
"""

import importlib
import sys
import threading
import warnings

TENSORFLOW = "tensorflow"
JAX = "jax"
TORCH = "torch"
OTHER = "other"

_NEUTRAL_ROOTS = ("builtins", "numpy", "ml_dtypes")
_ROOTS = {"tensorflow": TENSORFLOW, "jax": JAX, "jaxlib": JAX, "torch": TORCH}


def not_converted(fn):
    """Marks fn as one of AutoGraph's own artifacts, so that a tf.function
    that calls it runs it as plain Python, unconverted (what
    tf.autograph.experimental.do_not_convert does, without importing TF).
    Nothing in the losses branches on a tensor's value in Python, so this
    changes no graph; it spares AutoGraph a conversion of code that imports
    modules inside functions."""
    fn.autograph_info__ = None
    return fn


@not_converted
def framework_of(x):
    """TENSORFLOW, JAX, TORCH, OTHER, or None for numpy arrays, Python
    values and None (which any backend takes)."""
    if x is None:
        return None
    module = type(x).__module__ or ""
    root = module.partition(".")[0]
    if root in _ROOTS:
        return _ROOTS[root]
    if root in _NEUTRAL_ROOTS:
        return None
    if root == "keras":
        # A Keras Variable or KerasTensor: its backend's array.
        return backend_framework(keras_backend())
    # Subclasses defined elsewhere; each check only where its framework is
    # already imported (an instance of its class cannot exist otherwise).
    tf = sys.modules.get("tensorflow")
    if tf is not None and hasattr(tf, "is_tensor") and tf.is_tensor(x):
        return TENSORFLOW
    jax = sys.modules.get("jax")
    if jax is not None and isinstance(x, getattr(jax, "Array", ())):
        return JAX
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, getattr(torch, "Tensor", ())):
        return TORCH
    return OTHER


def backend_framework(backend):
    return {"tensorflow": TENSORFLOW, "jax": JAX, "torch": TORCH}.get(backend, OTHER)


@not_converted
def keras_backend():
    """The Keras backend's name ("tensorflow", "jax", "torch", ...);
    imports Keras (and with it the backend's framework) if needed."""
    keras = sys.modules.get("keras")
    if keras is None or not hasattr(keras, "backend"):
        keras = importlib.import_module("keras")
    return keras.backend.backend()


@not_converted
def choose(*arrays):
    """The framework that runs a call on these arrays (y_pred first): the
    first array that belongs to one decides; numpy and Python values alone
    go to the Keras backend's framework."""
    for x in arrays:
        framework = framework_of(x)
        if framework is not None:
            return framework
    return backend_framework(keras_backend())


@not_converted
def keras_forms_for(framework):
    """The keras.ops forms (`_keras_ops`), checked to run on arrays of this
    framework: keras.ops computes on its backend's arrays, and would convert
    others (a torch tensor into a JAX array, say), cutting the caller's
    autodiff."""
    backend = keras_backend()
    if framework not in (OTHER, backend_framework(backend)):
        raise ValueError(
            f"tf_fused_losses computes {framework} arrays with keras.ops here, which needs the Keras backend "
            f"{framework!r}; the Keras backend is {backend!r}. Set KERAS_BACKEND={framework} before Keras is imported."
        )
    return importlib.import_module("tf_fused_losses._keras_ops")


@not_converted
def as_arrays(framework, *arrays):
    """numpy arrays and Python values as the framework's arrays (JAX arrays
    for JAX, the Keras backend's otherwise); others as they are."""
    if all(framework_of(x) is not None for x in arrays):
        return arrays
    if framework == JAX:
        import jax.numpy as jnp

        convert = jnp.asarray
    else:
        from keras import ops

        convert = ops.convert_to_tensor
    return tuple(x if framework_of(x) is not None else convert(x) for x in arrays)


def tf_module():
    """The TF path (`_tf_ops`; importing it registers the fused ops' gradients)."""
    return importlib.import_module("tf_fused_losses._tf_ops")


# --------------------------------------------------------------------------
# JAX: the fused custom calls where their handler library loads
# --------------------------------------------------------------------------

_jax_lock = threading.Lock()
_jax_state = {}  # "module": the loaded _jax_ops, or "error": why it did not load


@not_converted
def jax_fused():
    """`_jax_ops`, loaded, or None where its handler library cannot load
    (the first such call warns once, saying why)."""
    if "module" in _jax_state:
        return _jax_state["module"]
    if "error" in _jax_state:
        return None
    with _jax_lock:
        if not _jax_state:
            try:
                module = importlib.import_module("tf_fused_losses._jax_ops")
                module.load()
            except (ImportError, RuntimeError) as e:
                _jax_state["error"] = f"{type(e).__name__}: {e}"
                warnings.warn(
                    "tf_fused_losses: the fused JAX ops are unavailable, so JAX arrays use the keras.ops forms of the "
                    f"losses (same conventions, slower). Why: {_jax_state['error']}",
                    RuntimeWarning,
                    stacklevel=4,
                )
            else:
                _jax_state["module"] = module
    return _jax_state.get("module")


def reset_jax_state():
    """Forgets whether `_jax_ops` loaded (tests)."""
    with _jax_lock:
        _jax_state.clear()
