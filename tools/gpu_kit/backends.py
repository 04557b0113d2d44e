"""The kit's builds, all without TensorFlow:

  * the emulated harness module: tests/cuda_emu/build.py (g++ against
    cuda_emulation.h), the same build tests/test_cuda_emulation.py uses;
  * the GPU harness module tfl_cuda_gpu: the same wrappers and pybind11
    module (tests/cuda_emu/emu_ops*.h, emu_module.cc), the kernels compiled
    by nvcc for the local GPU's arch in 8 parallel parts
    (tools/gpu_kit/kit_part.cu);
  * libtfl_ffi_cuda.so: cc/xla/ffi_cuda_handlers.cu.cc (nvcc) against XLA's
    header-only FFI API from jax.ffi.include_dir();
  * libtfl_ffi_host.so: cc/xla/ffi_host_handlers.cc and cc/core's CPU
    sources (g++), the per-ISA chunk files once per ISA as CMakeLists.txt
    compiles them.

Compile jobs of every build run in one pool (`jobs` at a time); outputs are
kept under build/gpu_kit/ with a digest of their command and inputs, so a
rerun compiles only what changed.
"""

import concurrent.futures
import glob
import hashlib
import importlib.util
import os
import platform
import shlex
import shutil
import subprocess
import sys
import sysconfig
import time

from . import ROOT, log

BUILD_DIR = os.environ.get("TFL_KIT_BUILD_DIR") or os.path.join(ROOT, "build", "gpu_kit")
CORE_DIRS = [os.path.join(ROOT, "cc", "core", d) for d in ("common", "bpmll", "correlation")]
XLA_DIR = os.path.join(ROOT, "cc", "xla")
CUDA_DIR = os.path.join(ROOT, "cuda")
EMU_DIR = os.path.join(ROOT, "tests", "cuda_emu")
KIT_PART = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kit_part.cu")
LOGIT_TYPES = ("kHalf", "kBfloat16", "kFloat", "kDouble")
NVCC_FLAGS = ["-std=c++17", "-O3", "--expt-relaxed-constexpr", "-lineinfo", "-Xcompiler", "-fPIC"]
# The per-ISA builds of the chunk files, as CMakeLists.txt (TFL_ISAS).
ISA_FLAGS = {"isa_baseline": [], "isa_avx2": ["-march=x86-64-v3"],
             "isa_avx512": ["-march=x86-64-v4", "-mprefer-vector-width=512"]}
CHUNK_FLAGS = ["-O3", "-fno-trapping-math", "-fopenmp-simd", "-Wno-maybe-uninitialized"]


class BuildError(RuntimeError):
    pass


def default_jobs():
    return int(os.environ.get("TFL_KIT_JOBS") or os.cpu_count() or 2)


def cxx():
    found = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not found:
        raise BuildError("no C++ compiler (set CXX)")
    return found


def find_nvcc():
    candidates = [os.environ.get("NVCC"), os.environ.get("CUDACXX")]
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home:
            candidates.append(os.path.join(home, "bin", "nvcc"))
    candidates.append(shutil.which("nvcc"))
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def cuda_home(nvcc):
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


def compiler_version():
    try:
        out = subprocess.run([cxx(), "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError, BuildError):
        return None
    return out.splitlines()[0] if out else None


def tool_version(command):
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[-1] if out else None


def nvidia_smi():
    """The GPUs nvidia-smi sees: [{name, compute_cap, driver_version, memory_total}], or []."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run([smi, "--query-gpu=name,compute_cap,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.stdout.strip().splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 4:
            gpus.append(dict(zip(("name", "compute_cap", "driver_version", "memory_total"), fields)))
    return gpus


def local_arch(override=None):
    """The local GPU's arch as "90" (override, TFL_KIT_ARCH, or nvidia-smi's
    compute_cap); None when unknown (nvcc then compiles for -arch=native)."""
    value = override or os.environ.get("TFL_KIT_ARCH")
    if value:
        return value.lower().replace("sm_", "").replace(".", "")
    gpus = nvidia_smi()
    if gpus and gpus[0]["compute_cap"]:
        return gpus[0]["compute_cap"].replace(".", "")
    return None


def gencode(arch):
    return ["-gencode", f"arch=compute_{arch},code=sm_{arch}"] if arch else ["-arch=native"]


# --------------------------------------------------------------------------
# Jobs
# --------------------------------------------------------------------------


def _headers():
    files = []
    for folder in [CUDA_DIR, EMU_DIR, XLA_DIR] + CORE_DIRS:
        files += sorted(glob.glob(os.path.join(folder, "*.h")) + glob.glob(os.path.join(folder, "*.cuh")))
    return files


_HEADER_DIGEST = None


def _header_digest():
    global _HEADER_DIGEST
    if _HEADER_DIGEST is None:
        h = hashlib.sha256()
        for path in _headers():
            with open(path, "rb") as f:
                h.update(path.encode() + f.read())
        _HEADER_DIGEST = h.hexdigest()
    return _HEADER_DIGEST


class Job:
    """One command writing `output`, skipped when its stamp (a digest of the
    command, its inputs and every header of the tree) is unchanged."""

    def __init__(self, name, command, output, inputs):
        self.name, self.command, self.output, self.inputs = name, command, output, inputs

    def digest(self):
        h = hashlib.sha256(" ".join(self.command).encode())
        h.update(_header_digest().encode())
        for path in self.inputs:
            with open(path, "rb") as f:
                h.update(f.read())
        return h.hexdigest()

    def run(self):
        stamp = self.output + ".stamp"
        digest = self.digest()
        if os.path.exists(self.output) and os.path.exists(stamp) and open(stamp).read() == digest:
            return 0.0, True
        os.makedirs(os.path.dirname(self.output), exist_ok=True)
        started = time.monotonic()
        result = subprocess.run(self.command, capture_output=True, text=True)
        if result.returncode != 0:
            raise BuildError(f"{self.name} failed:\n$ {shlex.join(self.command)}\n{result.stdout[-4000:]}"
                             f"{result.stderr[-8000:]}")
        with open(stamp, "w") as f:
            f.write(digest)
        return time.monotonic() - started, False


# --------------------------------------------------------------------------
# The emulated module
# --------------------------------------------------------------------------


def build_emulated_module():
    """Compiles tests/cuda_emu/build.py's module (cached by its digest); its path."""
    from cuda_emu import build as emu_build

    return emu_build.build_module()


def emulated_module():
    """tests/cuda_emu/build.py's module, the one tests/test_cuda_emulation.py runs."""
    from cuda_emu import build as emu_build

    return emu_build.load()


def load_module(path, name=None):
    """Imports the extension module at path (its name: the file name's first part)."""
    name = name or os.path.basename(path).split(".")[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------
# The GPU module
# --------------------------------------------------------------------------


class Build:
    def __init__(self, name, output, compile_jobs, link_job):
        self.name, self.output, self.compile_jobs, self.link_job = name, output, compile_jobs, link_job


def gpu_module_build(nvcc, arch):
    """tfl_cuda_gpu: 8 nvcc parts + emu_module.cc (g++), linked with the static CUDA runtime."""
    import pybind11

    from cuda_emu import build as emu_build

    out_dir = os.path.join(BUILD_DIR, f"gpu_module_sm{arch or 'native'}")
    includes = [f"-I{d}" for d in emu_build.include_dirs()]
    objects, jobs = [], []
    for i, logit in enumerate(LOGIT_TYPES):
        for group in (1, 2):
            obj = os.path.join(out_dir, f"part_{logit}_{group}.o")
            defines = [f"-DTFL_KIT_TYPE={logit}", f"-DTFL_KIT_GROUP={group}",
                       f"-DTFL_KIT_PLAN={1 if (i, group) == (0, 2) else 0}"]
            jobs.append(Job(f"nvcc {os.path.basename(obj)}",
                            [nvcc, "-x", "cu", *NVCC_FLAGS, *gencode(arch), *defines, *includes, "-c", KIT_PART,
                             "-o", obj], obj, [KIT_PART]))
            objects.append(obj)
    module_source = os.path.join(EMU_DIR, "emu_module.cc")
    module_obj = os.path.join(out_dir, "emu_module.o")
    jobs.append(Job("g++ emu_module.o",
                    [cxx(), "-std=c++17", "-O2", "-fPIC", "-Wall", "-Wextra", "-DTFL_EMU_DEVICE_MEMORY",
                     "-DTFL_EMU_SEPARATE_PARTS", "-DTFL_EMU_MODULE_NAME=tfl_cuda_gpu", *includes,
                     f"-isystem{pybind11.get_include()}", f"-isystem{sysconfig.get_paths()['include']}",
                     f"-isystem{os.path.join(cuda_home(nvcc), 'include')}", "-c", module_source, "-o", module_obj],
                    module_obj, [module_source]))
    objects.append(module_obj)
    output = os.path.join(out_dir, "tfl_cuda_gpu" + sysconfig.get_config_var("EXT_SUFFIX"))
    link = Job("link tfl_cuda_gpu", [nvcc, "-shared", "-cudart", "static", *objects, "-o", output], output, objects)
    return Build("gpu module", output, jobs, link)


def cuda_ffi_build(nvcc, arch, jax_include):
    """libtfl_ffi_cuda.so: the CUDA FFI handlers, TensorFlow-free."""
    source = os.path.join(XLA_DIR, "ffi_cuda_handlers.cu.cc")
    out_dir = os.path.join(BUILD_DIR, f"ffi_cuda_sm{arch or 'native'}")
    obj = os.path.join(out_dir, "ffi_cuda_handlers.o")
    includes = [f"-I{d}" for d in [CUDA_DIR, XLA_DIR] + CORE_DIRS] + ["-isystem", jax_include]
    compile_job = Job("nvcc ffi_cuda_handlers.o",
                      [nvcc, "-x", "cu", *NVCC_FLAGS, *gencode(arch), *includes, "-c", source, "-o", obj], obj,
                      [source])
    output = os.path.join(out_dir, "libtfl_ffi_cuda.so")
    link = Job("link libtfl_ffi_cuda.so", [nvcc, "-shared", "-cudart", "static", obj, "-o", output], output, [obj])
    return Build("CUDA FFI handlers", output, [compile_job], link)


def host_ffi_build(jax_include, isas=None):
    """libtfl_ffi_host.so: the Host FFI handlers and cc/core's CPU code, TensorFlow-free."""
    out_dir = os.path.join(BUILD_DIR, "ffi_host")
    compiler = cxx()
    includes = [f"-I{d}" for d in CORE_DIRS + [XLA_DIR]] + ["-isystem", jax_include]
    common = ["-std=c++17", "-fPIC", "-pthread", "-Wall", "-Wno-sign-compare", "-Wno-unused-function"]
    if isas is None:
        isas = list(ISA_FLAGS) if platform.machine() in ("x86_64", "AMD64") else ["isa_baseline"]
    # The core's CPU sources: its .cu.cc files (the CUDA C entry points) need the CUDA toolkit.
    sources = sorted(s for s in glob.glob(os.path.join(ROOT, "cc", "core", "*", "*.cc")) if not s.endswith(".cu.cc"))
    chunks = [s for s in sources if s.endswith("_cpu_chunks.cc")]
    others = [s for s in sources if not s.endswith("_cpu_chunks.cc")] + [os.path.join(XLA_DIR, "ffi_host_handlers.cc")]
    jobs, objects = [], []
    for source in others:
        obj = os.path.join(out_dir, os.path.basename(source) + ".o")
        jobs.append(Job(f"g++ {os.path.basename(obj)}",
                        [compiler, *common, "-O2", "-fno-trapping-math", *includes, "-c", source, "-o", obj], obj,
                        [source]))
        objects.append(obj)
    for isa in isas:
        for source in chunks:
            obj = os.path.join(out_dir, f"{os.path.basename(source)}.{isa}.o")
            jobs.append(Job(f"g++ {os.path.basename(obj)}",
                            [compiler, *common, *CHUNK_FLAGS, *ISA_FLAGS[isa], f"-DTFL_CPU_ISA={isa}", *includes, "-c",
                             source, "-o", obj], obj, [source]))
            objects.append(obj)
    output = os.path.join(out_dir, "libtfl_ffi_host.so")
    link = Job("link libtfl_ffi_host.so",
               [compiler, "-shared", "-pthread", "-Wl,--no-undefined", *objects, "-o", output], output, objects)
    return Build("Host FFI handlers", output, jobs, link)


def run_builds(builds, workers, extra_jobs=()):
    """Compiles every build's jobs in one pool, then links. Returns {name: error or None}."""
    status = {}
    compile_jobs = [job for b in builds for job in b.compile_jobs]
    by_job = {id(job): b for b in builds for job in b.compile_jobs}
    failed = set()
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(job.run): job for job in compile_jobs}
        extra = {pool.submit(fn): name for name, fn in extra_jobs}
        cached = 0
        durations = []
        for future in concurrent.futures.as_completed(list(futures) + list(extra)):
            if future in extra:
                try:
                    future.result()
                    status[extra[future]] = None
                    durations.append((time.monotonic() - started, extra[future]))
                except Exception as e:  # noqa: BLE001
                    status[extra[future]] = f"{type(e).__name__}: {e}"
                continue
            job = futures[future]
            try:
                seconds, was_cached = future.result()
                cached += was_cached
                durations.append((seconds, job.name))
            except Exception as e:  # noqa: BLE001
                build = by_job[id(job)]
                failed.add(build.name)
                status[build.name] = str(e)
    slowest = ", ".join(f"{name} {seconds:.0f} s" for seconds, name in sorted(durations, reverse=True)[:3] if seconds)
    log(f"compiled {len(compile_jobs) + len(extra)} job(s) ({cached} cached) in {time.monotonic() - started:.1f} s"
        + (f"; slowest: {slowest}" if slowest else ""))
    for b in builds:
        if b.name in failed:
            log(f"build FAILED: {b.name}")
            continue
        try:
            b.link_job.run()
            status[b.name] = None
            log(f"built {b.name}: {os.path.relpath(b.output, ROOT)}")
        except BuildError as e:
            status[b.name] = str(e)
            log(f"build FAILED: {b.name}")
    return status


def jax_info(python=None, env=None, timeout=120):
    """{version, include_dir, backends} of the jax importable by `python`, or None."""
    code = ("import json, jax, jax.ffi; "
            "print(json.dumps({'version': jax.__version__, 'include_dir': jax.ffi.include_dir()}))")
    try:
        out = subprocess.run([python or sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                             env=env)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    import json

    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
