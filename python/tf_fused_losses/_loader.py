"""Lazy loading of the op library, in the manner of tensorflow-addons.

The shared library is loaded on the first call of an op, not at import, so
that `import tf_fused_losses` stays cheap and the pure-TF path works even
where the library cannot load.
"""

import ctypes
import functools
import json
import os
import threading

import tensorflow as tf

LIBRARY_NAME = "libtf_fused_losses.so"
BUILD_INFO_NAME = "build_info.json"
PURE_TF_ENV = "TF_FUSED_LOSSES_PY_OPS"
CPU_ISA_ENV = "TFL_CPU_ISA"
CPU_ISAS = ("baseline", "avx2", "avx512")  # x86-64 levels, lowest first

_HERE = os.path.dirname(os.path.abspath(__file__))
_lock = threading.Lock()
_library = None


@tf.autograph.experimental.do_not_convert
def use_pure_tf():
    """True when TF_FUSED_LOSSES_PY_OPS asks for the pure-TF reference path."""
    return os.environ.get(PURE_TF_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def build_info():
    """What the op library was built against (TF, CUDA, archs, compiler, the
    CPU ISA builds it holds) and, once it is loaded, `cpu_isa`: the ISA build
    its CPU kernels use."""
    info = dict(_read_build_info(os.path.join(_HERE, BUILD_INFO_NAME)))
    if _library is not None:
        info["cpu_isa"] = _cpu_isa_query("tfl_cpu_isa_in_use")
    return info


def _cpu_isa_query(function):
    # The op library is already loaded by TensorFlow: this only looks it up.
    library = ctypes.CDLL(os.path.join(_HERE, LIBRARY_NAME))
    query = getattr(library, function)
    query.restype = ctypes.c_char_p
    return query().decode()


def _check_cpu_isa_name():
    """Refuses a TFL_CPU_ISA that names no ISA build (before anything loads)."""
    cap = os.environ.get(CPU_ISA_ENV, "")
    if cap and cap not in CPU_ISAS:
        raise RuntimeError(
            f"{CPU_ISA_ENV}={cap!r} is not an ISA build of tf_fused_losses; allowed values: {', '.join(CPU_ISAS)} "
            f"(or unset it to use the best this CPU runs)."
        )


def _check_cpu_isa_supported():
    """Refuses a TFL_CPU_ISA above what this CPU runs (the library must be loaded)."""
    cap = os.environ.get(CPU_ISA_ENV, "")
    if not cap:
        return
    supported = _cpu_isa_query("tfl_cpu_isa_supported")
    if CPU_ISAS.index(cap) > CPU_ISAS.index(supported):
        raise RuntimeError(
            f"{CPU_ISA_ENV}={cap} asks for a build this CPU cannot run: it supports up to {supported}. "
            f"Allowed values here: {', '.join(CPU_ISAS[: CPU_ISAS.index(supported) + 1])}."
        )


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
        _check_cpu_isa_name()
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
            library = tf.load_op_library(path)
        except (tf.errors.NotFoundError, OSError) as e:
            raise RuntimeError(
                f"Could not load {path}, built for TensorFlow {built_for or 'unknown'}, into TensorFlow "
                f"{tf.__version__}: {e}. {_fallback_hint()}"
            ) from e
        _check_cpu_isa_supported()
        _library = library
        return _library
