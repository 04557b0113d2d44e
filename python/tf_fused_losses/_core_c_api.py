"""ctypes bindings of the core's plain C entry points (cc/core/c_api/tfl_c_api.h)
in libtfl_core.so: the kernels for frameworks that call the library without
building against it (PyTorch: `_torch_ops`).

Framework-free: arguments are addresses (ints), extents and dtype names
("float32", "bool", ...). ctypes.CDLL releases the GIL for the length of
each foreign call, so a long kernel does not stop other Python threads.
Nothing is loaded at import; `library()` loads the core on first use.
"""

import ctypes
import os
import threading

from ._loader import check_cpu_isa, core_library_path

# As for the JAX frontend (_jax_ops.LIBRARY_ENV): another libtfl_core.so
# than the package's own (a developer build, the benchmarks).
LIBRARY_ENV = "TFL_CORE_LIBRARY"

# TFL_C_API_VERSION of the header these bindings follow.
C_API_VERSION = 2

# TflDtype (tfl_c_api.h), by dtype name.
DTYPE_CODES = {
    "float16": 0,
    "bfloat16": 1,
    "float32": 2,
    "float64": 3,
    "int32": 4,
    "int64": 5,
    "uint8": 6,
    "bool": 7,
}

# TflStatus (tfl_c_api.h) -> the Python exception it raises: what the
# caller passed is wrong (ValueError), or the library or machine is.
_ERRORS = {
    1: ValueError,  # TFL_ERROR_INVALID_ARGUMENT
    2: ValueError,  # TFL_ERROR_BAD_LABEL
    3: RuntimeError,  # TFL_ERROR_CPU_ISA
    4: MemoryError,  # TFL_ERROR_RESOURCE_EXHAUSTED
    5: RuntimeError,  # TFL_ERROR_CUDA
    6: RuntimeError,  # TFL_ERROR_INTERNAL
}

# void* allocate(void* context, int64_t bytes): CUDA scratch from the caller.
ALLOCATE_FN = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)

_p, _i, _i64, _f = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_float
# Each kernel's arguments before the platform's tail: `threads` on the CPU;
# the stream and the scratch allocator on CUDA.
_SIGNATURES = {
    "bpmll_loss": (_p, _i, _p, _i, _i64, _i64, _p, _p),
    "bpmll_ids_loss": (_p, _i, _i64, _p, _i, _i64, _i64, _p, _p),
    "bpmll_loss_grad": (_p, _p, _i, _i64, _i64, _p),
    "correlation_loss": (_p, _p, _p, _i, _i64, _i64, _f, _i, _p, _p),
    "correlation_loss_grad": (_p, _p, _p, _p, _p, _i, _i64, _i64, _f, _i, _p, _p),
}
_TAILS = {"cpu": (_i,), "cuda": (_p, ALLOCATE_FN, _p)}

_lock = threading.Lock()
_state = {}  # "library": the ctypes handle, "functions": {(kernel, platform): function}


def library_path():
    """$TFL_CORE_LIBRARY if set, else the package's lib/libtfl_core.so."""
    return os.environ.get(LIBRARY_ENV) or core_library_path()


def _load():
    path = library_path()
    try:
        library = ctypes.CDLL(path)
    except OSError as e:
        raise RuntimeError(f"tf_fused_losses could not load its core library {path}: {e}") from e
    version = getattr(library, "tfl_c_api_version", None)
    if version is None:
        raise RuntimeError(f"{path} has no C entry points (tfl_c_api_version): it predates them; rebuild it.")
    version.restype = ctypes.c_int
    if version() != C_API_VERSION:
        raise RuntimeError(
            f"{path} has C API version {version()}, these bindings need {C_API_VERSION}: the library and the "
            f"Python package come from different builds; reinstall or rebuild them together."
        )
    check_cpu_isa(library)
    library.tfl_last_error.restype = ctypes.c_char_p
    functions = {}
    for kernel, arguments in _SIGNATURES.items():
        for platform, tail in _TAILS.items():
            function = getattr(library, f"tfl_{kernel}_{platform}", None)
            if function is None:
                continue  # the CUDA entry points exist in CUDA builds only
            function.argtypes = arguments + tail
            function.restype = ctypes.c_int
            functions[(kernel, platform)] = function
    return {"library": library, "path": path, "functions": functions}


def library():
    """Loads libtfl_core.so once (thread-safe) and returns what was found:
    {"library", "path", "functions"}. Raises RuntimeError saying why where
    it is missing, predates the C entry points, comes from another build,
    or TFL_CPU_ISA is refused; a failed load is retried on the next call."""
    if not _state:
        with _lock:
            if not _state:
                _state.update(_load())
    return _state


def has_platform(platform):
    """Whether the loaded core has every entry point for "cpu" or "cuda"."""
    functions = library()["functions"]
    return all((kernel, platform) in functions for kernel in _SIGNATURES)


def call(kernel, platform, *arguments):
    """Runs tfl_<kernel>_<platform>(*arguments); raises the exception of
    its status (ValueError for arguments and labels, MemoryError for CUDA
    scratch, RuntimeError otherwise) with the core's message."""
    state = library()
    function = state["functions"].get((kernel, platform))
    if function is None:
        raise RuntimeError(f"{state['path']} has no {platform} entry point for {kernel} (a build without CUDA?)")
    status = function(*arguments)
    if status != 0:
        message = state["library"].tfl_last_error().decode()
        raise _ERRORS.get(status, RuntimeError)(message)
