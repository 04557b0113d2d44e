"""Finding and loading the compiled libraries, in the manner of tensorflow-addons.

Nothing is loaded, and neither TensorFlow nor JAX is imported, at import time.
The package ships (docs/architecture.md):

    lib/libtfl_core.so                   the TF-free core and its XLA FFI handlers
    lib/tf<major.minor>/libtf_fused_losses.so   one TensorFlow frontend per TF minor
    lib/build_info.json                  what each was built against

The TensorFlow frontend that matches the installed TensorFlow's minor is
loaded on the first call of a fused op.
"""

import ctypes
import functools
import json
import os
import sys
import threading
from importlib import metadata

LIBRARY_NAME = "libtf_fused_losses.so"
CORE_LIBRARY_NAME = "libtfl_core.so"
BUILD_INFO_NAME = "build_info.json"
PURE_TF_ENV = "TF_FUSED_LOSSES_PY_OPS"
CPU_ISA_ENV = "TFL_CPU_ISA"
# The TensorFlow minors this release supports: a wheel holds a frontend for each.
SUPPORTED_TF = ("2.16", "2.17", "2.18", "2.19", "2.20", "2.21")
# Distributions that install the `tensorflow` package.
TF_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu", "tensorflow-intel", "tf-nightly", "tf-nightly-cpu")

_HERE = os.path.dirname(os.path.abspath(__file__))
_lock = threading.Lock()
_library = None


def _lib_dir():
    return os.path.join(_HERE, "lib")


def core_library_path():
    """The TF-free core library (CPU drivers and XLA FFI handlers)."""
    return os.path.join(_lib_dir(), CORE_LIBRARY_NAME)


def tf_library_path(minor):
    """The TensorFlow frontend built for TensorFlow `minor` ("2.21")."""
    return os.path.join(_lib_dir(), f"tf{minor}", LIBRARY_NAME)


def pure_path_requested() -> bool:
    """True when TF_FUSED_LOSSES_PY_OPS asks for the pure implementations
    (the pure-TF forms on TensorFlow, the keras.ops forms on JAX)."""
    return os.environ.get(PURE_TF_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def use_pure_tf() -> bool:
    """True when TF_FUSED_LOSSES_PY_OPS asks for the pure implementations, or
    when TensorFlow is tracing for XLA and the frontend for its minor has no
    XLA lowerings (TensorFlow 2.16 ships no XLA FFI headers; 2.17-2.20 speak
    another FFI API version). Told from build_info.json, so that it holds
    for the first call of a process too, before the library is loaded: a
    fused op without lowerings inside an XLA cluster fails to compile."""
    if pure_path_requested():
        return True
    tf = sys.modules.get("tensorflow")
    if tf is None or not hasattr(tf, "__version__"):
        return False
    build = _builds().get(_minor(tf.__version__))
    if build is None or build.get("xla", True):
        return False
    return in_xla_context()


def in_xla_context():
    import tensorflow as tf
    from tensorflow.python.framework import ops as tf_ops
    from tensorflow.python.ops import control_flow_util

    if tf.executing_eagerly():
        return False
    return bool(control_flow_util.GraphOrParentsInXlaContext(tf_ops.get_default_graph()))


def installed_tf_version():
    """The installed TensorFlow's version, without importing it; None if absent."""
    module = sys.modules.get("tensorflow")
    if module is not None and hasattr(module, "__version__"):
        return module.__version__
    for dist in TF_DISTRIBUTIONS:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def build_info() -> dict:
    """What the libraries were built against: `tensorflow_builds` (TF minor ->
    the version built against, and whether XLA lowerings are in), the XLA FFI
    API of the core's handlers, CUDA and its archs, the compiler and the CPU
    ISA builds. With TensorFlow installed, `tensorflow`, `tensorflow_library`
    and `xla` describe the frontend for its minor; once a library is loaded,
    `cpu_isa` is the ISA build its CPU code uses."""
    info = dict(_read_build_info(os.path.join(_lib_dir(), BUILD_INFO_NAME)))
    installed = installed_tf_version()
    build = info.get("tensorflow_builds", {}).get(_minor(installed)) if installed else None
    if build:
        info["tensorflow"] = build["version"]
        info["tensorflow_library"] = tf_library_path(_minor(installed))
        info["xla"] = build["xla"]
    if _core_loaded():
        info["cpu_isa"] = _core_text("tfl_cpu_isa_in_use")
    return info


def _builds():
    return _read_build_info(os.path.join(_lib_dir(), BUILD_INFO_NAME)).get("tensorflow_builds", {})


def _core_loaded():
    # Loaded by a TensorFlow frontend, or by the JAX frontend without one.
    try:
        ctypes.CDLL(core_library_path(), mode=os.RTLD_NOLOAD)
    except OSError:
        return False
    return True


def _core_text(function, library=None):
    """What one of the core's `const char* f(void)` queries returns (None
    for NULL). The core is already loaded (by TensorFlow or JAX): this only
    looks it up, unless `library` (a ctypes handle) names the one to ask."""
    library = library or ctypes.CDLL(core_library_path())
    query = getattr(library, function)
    query.restype = ctypes.c_char_p
    text = query()
    return None if text is None else text.decode()


def check_cpu_isa(library=None):
    """Refuses a TFL_CPU_ISA that names no ISA build, or one above what this
    CPU runs, with the core's message (the core decides, for every
    frontend: cc/core/common/cpu_isa.cc). The core must be loaded, or given
    as a ctypes handle."""
    message = _core_text("tfl_cpu_isa_error", library)
    if message is not None:
        raise RuntimeError(message)


@functools.lru_cache(maxsize=None)
def _read_build_info(path):
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _minor(version):
    return ".".join(version.split(".")[:2])


def _fallback_hint():
    return f"Set {PURE_TF_ENV}=1 to use the pure implementations instead (slower, same results)."


def _source_build_hint(version):
    return (
        f"To build the ops for TensorFlow {version}, install from source into this environment: "
        f"pip install --no-build-isolation --no-binary tf-fused-losses tf-fused-losses "
        f"(or pip install --no-build-isolation . in a checkout)."
    )


def _unsupported_tf_message(version, built):
    built_list = ", ".join(sorted(built, key=lambda m: tuple(int(x) for x in m.split(".")))) or "none"
    return (
        f"TensorFlow {version} is installed, but this tf_fused_losses holds op libraries for TensorFlow "
        f"{built_list} only (releases support {SUPPORTED_TF[0]}-{SUPPORTED_TF[-1]}). Install one of those, "
        f"e.g. pip install 'tf-fused-losses[cpu]'. {_source_build_hint(version)} {_fallback_hint()}"
    )


def ops():
    """The loaded TensorFlow op library (a module of generated op wrappers).
    Their gradients are registered by `_tf_ops`, the TF backend, which is
    what calls this."""
    global _library
    if _library is not None:
        return _library
    import tensorflow as tf

    with _lock:
        if _library is not None:
            return _library
        minor = _minor(tf.__version__)
        builds = _builds()
        path = tf_library_path(minor)
        if builds and minor not in builds:
            raise RuntimeError(_unsupported_tf_message(tf.__version__, builds))
        if not os.path.exists(path):
            raise RuntimeError(
                f"The tf_fused_losses op library is missing ({path}); the package was installed without "
                f"its compiled part for TensorFlow {tf.__version__}. {_source_build_hint(tf.__version__)} "
                f"{_fallback_hint()}"
            )
        built_for = builds.get(minor, {}).get("version", "unknown")
        try:
            library = tf.load_op_library(path)
        except (tf.errors.NotFoundError, OSError) as e:
            raise RuntimeError(
                f"Could not load {path}, built for TensorFlow {built_for}, into TensorFlow "
                f"{tf.__version__}: {e}. {_fallback_hint()}"
            ) from e
        check_cpu_isa()
        _library = library
        return _library
