"""Builds the CUDA emulation harness with the host C++ compiler.

`load()` compiles emu_module.cc (the kernels in cuda/*.cuh under
cuda_emulation.h) into a pybind11 extension and imports it; `build_tsan()`
compiles tsan_driver.cc or tsan_control.cc with -fsanitize=thread. Outputs are cached in a temp
directory under a hash of every source, flag and the Python version, so only
the first run after a change pays for the compile.
"""

import fcntl
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
MODULE_NAME = "tfl_cuda_emu"
COMMON_FLAGS = ["-std=c++17", "-pthread", "-fno-strict-aliasing", "-Wall", "-Wextra", "-Werror",
                "-Wno-unknown-pragmas"]  # #pragma unroll is for nvcc


def compiler():
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise FileNotFoundError("no C++ compiler (set CXX)")
    return cxx


def _is_kernel_header(name):
    """The CUDA kernels (*.cuh) and the TensorFlow-free headers they share with the CPU ops."""
    return name.endswith((".cuh", ".h"))


def _kernel_header_dirs():
    """Every folder under cuda/ and cc/ holding a *.cuh or TensorFlow-free
    header (cc/tf/ and cc/ops/ hold the TensorFlow side), found by walking
    the tree so that the harness follows the sources when they move."""
    found = set()
    for top in (os.path.join(ROOT, "cuda"), os.path.join(ROOT, "cc")):
        for folder, subfolders, names in os.walk(top):
            subfolders[:] = [d for d in subfolders if d not in ("tf", "ops")]
            if any(_is_kernel_header(name) for name in names):
                found.add(folder)
    if not any(name.endswith(".cuh") for folder in found for name in os.listdir(folder)):
        raise FileNotFoundError(f"no *.cuh header under {ROOT}/cuda or {ROOT}/cc")
    return sorted(found)


def include_dirs():
    # The harness first; the repository root and cc/ too, for includes
    # written relative to them.
    return [HERE, *_kernel_header_dirs(), ROOT, os.path.join(ROOT, "cc")]


def _sources():
    """What the harness compiles: its own files, the kernel headers and the math headers."""
    out = [os.path.join(HERE, name) for name in sorted(os.listdir(HERE)) if name.endswith((".h", ".cc"))]
    for folder in _kernel_header_dirs():
        out += [os.path.join(folder, name) for name in sorted(os.listdir(folder)) if _is_kernel_header(name)]
    return out


def _digest(*parts):
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
    for path in _sources():
        with open(path, "rb") as f:
            h.update(path.encode())
            h.update(f.read())
    return h.hexdigest()[:16]


def _cache_dir():
    d = os.environ.get("TFL_CUDA_EMU_CACHE") or os.path.join(tempfile.gettempdir(), f"tfl_cuda_emu-{os.getuid()}")
    os.makedirs(d, exist_ok=True)
    return d


def _compile(command, output):
    """Runs command (which writes output + '.tmp'), once per output, under a lock."""
    with open(output + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(output):
            return output
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"compiling the CUDA emulation failed:\n{' '.join(command)}\n{result.stderr}")
        os.replace(output + ".tmp", output)
    return output


def build_module():
    import pybind11

    cxx = compiler()
    flags = COMMON_FLAGS + ["-O1", "-fPIC", "-shared"]
    includes = [f"-I{d}" for d in include_dirs()]
    includes += [f"-isystem{pybind11.get_include()}", f"-isystem{sysconfig.get_paths()['include']}"]
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    key = _digest(cxx, " ".join(flags), sys.version)
    output = os.path.join(_cache_dir(), key, MODULE_NAME + suffix)
    os.makedirs(os.path.dirname(output), exist_ok=True)
    command = [cxx, *flags, *includes, os.path.join(HERE, "emu_module.cc"), "-o", output + ".tmp"]
    return _compile(command, output)


def load():
    """The compiled harness module (compiled on first use)."""
    path = build_module()
    spec = importlib.util.spec_from_file_location(MODULE_NAME, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TSAN_FLAGS = ["-O1", "-g", "-fsanitize=thread"]


def tsan_command(program, output):
    return [compiler(), *COMMON_FLAGS, *TSAN_FLAGS, *[f"-I{d}" for d in include_dirs()],
            os.path.join(HERE, program + ".cc"), "-o", output]


def build_tsan(program="tsan_driver"):
    """tsan_driver (every kernel, every launch shape) or tsan_control (a
    deliberate race), built with ThreadSanitizer."""
    cxx = compiler()
    key = _digest(cxx, " ".join(COMMON_FLAGS + TSAN_FLAGS))
    output = os.path.join(_cache_dir(), key, program)
    os.makedirs(os.path.dirname(output), exist_ok=True)
    return _compile(tsan_command(program, output + ".tmp"), output)


if __name__ == "__main__":
    # python tests/cuda_emu/build.py [module|tsan_driver|tsan_control]: builds, prints the path.
    what = sys.argv[1] if len(sys.argv) > 1 else "module"
    print(build_module() if what == "module" else build_tsan(what))
