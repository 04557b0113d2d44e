"""Which backend module runs a call, told from its arrays without importing a
framework to find out.

The backends, one module each, all with the same functions
(`bpmll_loss(y_true, y_pred, name=None)` and
`correlation_loss(y_true, y_pred, *, epsilon, mask, concordance, name=None)`,
each converting and checking its arguments with `_validation`):

* `_tf_ops`: TensorFlow tensors and variables (the fused ops and their
  registered gradients; the pure-TF forms with TF_FUSED_LOSSES_PY_OPS=1 or
  inside XLA where the frontend has no lowerings).
* `_jax_ops`: JAX arrays and tracers, through the fused XLA custom calls,
  where the handler library loads and has handlers for the arrays'
  platform; otherwise, and with TF_FUSED_LOSSES_PY_OPS=1, `_keras_ops`
  (one warning says why).
* `_torch_ops`: torch tensors, through the fused torch.library ops over
  the core's C entry points, where the core loads and has kernels for the
  tensors' device type; otherwise, and with TF_FUSED_LOSSES_PY_OPS=1,
  `_keras_ops` (one warning says why).
* `_keras_ops`: anything else array-like (the keras.ops forms, on the
  Keras backend of that framework).

numpy arrays and Python values go to the current Keras backend's framework.
Arrays of two frameworks in one call are refused: one framework would
convert the other's array, which works eagerly and fails when traced, or
silently cuts the other framework's autodiff.

This module sits between the public functions (`bpmll`, `correlation`,
`losses`) and the backends, and imports no public module.
"""

import importlib
import sys
import threading
import warnings

from ._loader import pure_path_requested
from ._validation import not_converted

TENSORFLOW = "tensorflow"
JAX = "jax"
TORCH = "torch"
OTHER = "other"

_NEUTRAL_ROOTS = ("builtins", "numpy", "ml_dtypes")
_ROOTS = {"tensorflow": TENSORFLOW, "jax": JAX, "jaxlib": JAX, "torch": TORCH}
_ARGUMENT_NAMES = ("y_pred", "y_true", "mask")


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
def choose(*arrays, names=_ARGUMENT_NAMES):
    """The framework that runs a call on these arrays (y_pred, y_true,
    mask): the one their framework-owned arrays share; numpy and Python
    values alone go to the Keras backend's framework. Raises ValueError
    naming both where two frameworks meet."""
    found = None
    for name, x in zip(names, arrays):
        framework = framework_of(x)
        if framework is None:
            continue
        if found is None:
            found = (name, framework)
        elif framework != found[1]:
            raise ValueError(
                f"tf_fused_losses got a {found[1]} {found[0]} and a {framework} {name}: arrays of one call must "
                f"belong to one framework (numpy arrays go with either). Convert {name} to a {found[1]} array."
            )
    return found[1] if found else backend_framework(keras_backend())


@not_converted
def backend(*arrays, names=_ARGUMENT_NAMES):
    """The backend module that computes a call on these arrays (y_pred,
    y_true, mask, or as `names` says)."""
    return backend_for(choose(*arrays, names=names), arrays)


@not_converted
def backend_for(framework, arrays=()):
    """The backend module for arrays of `framework` (`arrays`: the call's,
    whose platform decides between the fused JAX calls and the keras.ops
    forms)."""
    if framework == TENSORFLOW:
        return importlib.import_module("tf_fused_losses._tf_ops")
    if framework in (JAX, TORCH) and not pure_path_requested():
        fused = (jax_fused if framework == JAX else torch_fused)(arrays)
        if fused is not None:
            return fused
    return keras_forms_for(framework)


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


# --------------------------------------------------------------------------
# The fused modules (JAX, torch), where they load for the arrays' platform
# --------------------------------------------------------------------------


class _FusedModule:
    """A fused backend module, imported and loaded on first use, and asked
    per call whether it has kernels for the platform the arrays compute on.
    A failed load, and each platform it lacks, warns once, saying why; then
    the call takes the keras.ops forms."""

    def __init__(self, framework, module_name, platform_of, has_platform, lacking):
        self._framework = framework
        self._module_name = module_name
        self._platform_of = platform_of  # (module, arrays) -> platform
        self._has_platform = has_platform  # (module, platform) -> bool
        self._lacking = lacking  # (module, platform) -> why it has no kernels there
        self._lock = threading.Lock()
        self._state = {}  # "module": the loaded module, or "error": why it did not load
        self._warned = set()

    def for_arrays(self, arrays):
        if not self._state:
            with self._lock:
                if not self._state:
                    try:
                        module = importlib.import_module(self._module_name)
                        module.load()
                    except (ImportError, RuntimeError) as e:
                        self._state["error"] = f"{type(e).__name__}: {e}"
                        self._warn(f"Why: {self._state['error']}")
                    else:
                        self._state["module"] = module
        module = self._state.get("module")
        if module is None:
            return None
        platform = self._platform_of(module, arrays)
        if self._has_platform(module, platform):
            return module
        with self._lock:
            if platform not in self._warned:
                self._warned.add(platform)
                self._warn(f"Why: {self._lacking(module, platform)}")
        return None

    def _warn(self, why):
        # stacklevel: the public function that called backend() / backend_for().
        warnings.warn(
            f"tf_fused_losses: the fused {self._framework} ops are unavailable, so {self._framework} arrays use the "
            f"keras.ops forms of the losses (same conventions, slower). {why}",
            RuntimeWarning,
            stacklevel=6,
        )

    def reset(self):
        """Forgets whether the module loaded, and the warnings given (tests)."""
        with self._lock:
            self._state.clear()
            self._warned.clear()


_JAX = _FusedModule(
    "JAX",
    "tf_fused_losses._jax_ops",
    lambda module, arrays: module.platform_of(*arrays),
    lambda module, platform: module.has_handlers(platform),
    lambda module, platform: (
        f"{module.library_path()} has no handlers registered for the {platform} platform these arrays compute on "
        f"(registered: {', '.join(module.load()['platforms'])}); build it with CUDA and install a CUDA jaxlib "
        f"plugin for the fused GPU calls."
    ),
)
_TORCH = _FusedModule(
    "torch",
    "tf_fused_losses._torch_ops",
    lambda module, arrays: module.device_type_of(*arrays),
    lambda module, device_type: module.has_kernels(device_type),
    lambda module, device_type: (
        f"the core library has no kernels for {device_type} tensors (it has: {', '.join(module.load())}); "
        f"build it with CUDA for the fused GPU ops."
    ),
)


@not_converted
def jax_fused(arrays=()):
    """`_jax_ops`, loaded, where it has handlers for the platform the
    arrays compute on; None otherwise (the first such call per reason warns
    once, saying why)."""
    return _JAX.for_arrays(arrays)


@not_converted
def torch_fused(arrays=()):
    """`_torch_ops`, where the core's C entry points load and have kernels
    for the device type the arrays are on; None otherwise (the first such
    call per reason warns once, saying why)."""
    return _TORCH.for_arrays(arrays)


def reset_jax_state():
    """Forgets whether `_jax_ops` loaded, and the warnings given (tests)."""
    _JAX.reset()


def reset_torch_state():
    """Forgets whether `_torch_ops` loaded, and the warnings given (tests)."""
    _TORCH.reset()
