"""Fused ops for the BP-MLL ranking loss and correlation losses, for
TensorFlow and JAX, with Keras losses for every Keras backend.

`import tf_fused_losses` imports no framework (neither TensorFlow, JAX nor
Keras): each name imports what it needs on first use (PEP 562), and each
loss runs on the framework of the arrays it is given (see `_dispatch`).
The Keras loss classes are registered with Keras as soon as Keras is
imported (at once where it already is), so that `keras.models.load_model`
finds them after `import tf_fused_losses`.
"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__version__ = "0.1.0"

# name -> (submodule, attribute)
_EXPORTS = {
    "BPMLLLoss": ("losses", "BPMLLLoss"),
    "CCCLoss": ("losses", "CCCLoss"),
    "CorrelationLoss": ("losses", "CorrelationLoss"),
    "PURE_TF_ENV": ("_loader", "PURE_TF_ENV"),
    "bpmll_loss": ("bpmll", "bpmll_loss"),
    "bpmll_loss_from_ids": ("bpmll", "bpmll_loss_from_ids"),
    "bpmll_head_loss": ("head", "bpmll_head_loss"),
    "bpmll_head_top_k": ("head", "bpmll_head_top_k"),
    # The fused head's Keras layer (not in __all__: it imports Keras)
    "BPMLLHead": ("head_layers", "BPMLLHead"),
    "ccc_loss": ("correlation", "ccc_loss"),
    "correlation_loss": ("correlation", "correlation_loss"),
    "build_info": ("_loader", "build_info"),
    "load_ops": ("_tf_ops", "load_ops"),
    "use_pure_tf": ("_loader", "use_pure_tf"),
    # Keras metrics (not in __all__: they import Keras); functions: `metrics`
    "AveragePrecision": ("keras_metrics", "AveragePrecision"),
    "CorpusCCC": ("keras_metrics", "CorpusCCC"),
    "Coverage": ("keras_metrics", "Coverage"),
    "HammingLoss": ("keras_metrics", "HammingLoss"),
    "NDCGAtK": ("keras_metrics", "NDCGAtK"),
    "OneError": ("keras_metrics", "OneError"),
    "PSPrecisionAtK": ("keras_metrics", "PSPrecisionAtK"),
    "PrecisionAtK": ("keras_metrics", "PrecisionAtK"),
    "RankingLoss": ("keras_metrics", "RankingLoss"),
}
_SUBMODULES = (
    "bpmll",
    "correlation",
    "head",
    "head_layers",
    "losses",
    "metrics",
    "keras_metrics",
    "reference",
    "_dispatch",
    "_jax_ops",
    "_keras_ops",
    "_loader",
    "_tf_ops",
    "_tf_pure",
    "_validation",
)

__all__ = [
    "PURE_TF_ENV",
    "bpmll_loss",
    "bpmll_loss_from_ids",
    "bpmll_head_loss",
    "bpmll_head_top_k",
    "ccc_loss",
    "correlation_loss",
    "build_info",
    "use_pure_tf",
]
# Not in __all__, so that `from tf_fused_losses import *` imports no
# framework: the Keras classes (they import Keras, and its backend) and
# `load_ops` and `reference` (TensorFlow). Import them by name.


def __getattr__(name):
    if name in _EXPORTS:
        module, attribute = _EXPORTS[name]
        value = getattr(importlib.import_module(f"{__name__}.{module}"), attribute)
        globals()[name] = value  # later look-ups skip this function
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))


# --------------------------------------------------------------------------
# Registering the Keras classes once Keras is imported
# --------------------------------------------------------------------------


# The modules whose Keras classes saved models name.
_KERAS_MODULES = ("losses", "keras_metrics", "head_layers")


def _register_keras_classes():
    for module in _KERAS_MODULES:
        try:
            importlib.import_module(f"{__name__}.{module}")
        except Exception as e:  # a failure here must not break the user's `import keras`
            warnings.warn(
                f"tf_fused_losses could not register its Keras classes in {module} ({type(e).__name__}: {e}); "
                f"`keras.models.load_model` will not find them until `tf_fused_losses.{module}` imports.",
                RuntimeWarning,
                stacklevel=2,
            )


class _KerasLoader(importlib.abc.Loader):
    """Keras' own loader, then the registration of the loss classes."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _remove_keras_hook()
        _register_keras_classes()

    def __getattr__(self, name):  # resource readers and the like: Keras' loader's
        return getattr(self._loader, name)


class _KerasImportHook(importlib.abc.MetaPathFinder):
    """Finds `keras` as the other finders do, and wraps its loader so that
    the loss classes are registered right after Keras is imported."""

    _busy = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "keras" or self._busy:
            return None
        self._busy = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._busy = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        spec.loader = _KerasLoader(spec.loader)
        return spec


def _remove_keras_hook():
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _KerasImportHook)]


if "keras" in sys.modules:
    _register_keras_classes()
else:
    sys.meta_path.insert(0, _KerasImportHook())
