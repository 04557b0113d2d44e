"""Lazy loading of the op library, in the manner of tensorflow-addons.

The shared library is loaded on the first call of an op, not at import, so
that `import tf_fused_losses` stays cheap and the pure-TF path works even
where the library cannot load.
"""

import functools
import json
import os
import threading

import tensorflow as tf

LIBRARY_NAME = "libtf_fused_losses.so"
BUILD_INFO_NAME = "build_info.json"
PURE_TF_ENV = "TF_FUSED_LOSSES_PY_OPS"

_HERE = os.path.dirname(os.path.abspath(__file__))
_lock = threading.Lock()
_library = None


@tf.autograph.experimental.do_not_convert
def use_pure_tf():
    """True when TF_FUSED_LOSSES_PY_OPS asks for the pure-TF reference path."""
    return os.environ.get(PURE_TF_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def build_info():
    """What the op library was built against: TF, CUDA, archs, compiler."""
    return dict(_read_build_info(os.path.join(_HERE, BUILD_INFO_NAME)))


@functools.lru_cache(maxsize=None)
def _read_build_info(path):
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _minor(version):
    return ".".join(version.split(".")[:2])


def _fallback_hint():
    return f"Set {PURE_TF_ENV}=1 to use the pure-TF implementations instead (slower, same results)."


def load_ops():
    """Loads the op library now and registers its ops with TensorFlow.

    The losses do this on their first call. Call it yourself before
    `tf.saved_model.load` of a SavedModel whose graphs hold the fused ops:
    TensorFlow needs the ops registered to load them. Raises RuntimeError,
    saying why, where the library cannot load (see PURE_TF_ENV)."""
    ops()


@tf.autograph.experimental.do_not_convert
def ops():
    """The loaded op library (a module of generated op wrappers)."""
    global _library
    if _library is not None:
        return _library
    with _lock:
        if _library is not None:
            return _library
        built_for = build_info().get("tensorflow")
        if built_for and _minor(built_for) != _minor(tf.__version__):
            raise RuntimeError(
                f"tf_fused_losses was built for TensorFlow {built_for}, but TensorFlow "
                f"{tf.__version__} is installed. Install TensorFlow {_minor(built_for)}.x, or rebuild "
                f"tf_fused_losses against {tf.__version__} (pip install --force-reinstall --no-binary "
                f"tf-fused-losses tf-fused-losses). {_fallback_hint()}"
            )
        path = os.path.join(_HERE, LIBRARY_NAME)
        if not os.path.exists(path):
            raise RuntimeError(
                f"The tf_fused_losses op library is missing ({path}); the package was installed without "
                f"its compiled part. It must be built for TensorFlow {tf.__version__}. {_fallback_hint()}"
            )
        try:
            _library = tf.load_op_library(path)
        except (tf.errors.NotFoundError, OSError) as e:
            raise RuntimeError(
                f"Could not load {path}, built for TensorFlow {built_for or 'unknown'}, into TensorFlow "
                f"{tf.__version__}: {e}. {_fallback_hint()}"
            ) from e
        return _library
