"""Builds the libraries with CMake: the TF-free core (with the XLA FFI handlers
that JAX calls) and one TensorFlow frontend per TensorFlow found.

The wheel declares no TensorFlow: the loader checks the installed one at
import (extras: [cpu], [gpu], [jax]).

Environment knobs:
  TFL_TF_PYTHONS=a:b:…      Python interpreters, each with a TensorFlow: one frontend
                            per TF minor (`make wheel` passes one per supported
                            minor). Default: this Python, if it has TensorFlow.
  TFL_CUDA=auto|on|off      compile cuda/ (auto: when nvcc is found)
  TFL_CUDA_ARCHS="75;80;…"  CMAKE_CUDA_ARCHITECTURES (default: see cuda/CMakeLists.txt)
  TFL_BUILD_DIR=…           CMake build directory (default: build/cmake)
  TFL_JOBS=N                parallel compile jobs
"""

import email.policy
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from email.generator import Generator
from email.parser import Parser

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70.1 still takes it from the wheel package
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from wheel.bdist_wheel import bdist_wheel

ROOT = os.path.dirname(os.path.abspath(__file__))
PACKAGE = "tf_fused_losses"


def read_version():
    with open(os.path.join(ROOT, "python", PACKAGE, "__init__.py")) as f:
        return re.search(r'__version__ = "([^"]+)"', f.read()).group(1)


# Supported TensorFlow minors (python/tf_fused_losses/_loader.py SUPPORTED_TF).
TF_RANGE = ">=2.16,<2.22"
EXTRAS = {
    "cpu": [f"tensorflow-cpu{TF_RANGE}"],
    "gpu": [f"tensorflow[and-cuda]{TF_RANGE}"],
    # Bounded to the releases the fused paths were tested with (CI's JAX
    # and torch environments); the keras.ops forms need only Keras 3.
    "jax": ["jax>=0.10.2,<0.11", "keras>=3.8,<4"],
    "torch": ["torch>=2.14,<2.15", "keras>=3.8,<4"],
}
CLASSIFIERS = [
    "Development Status :: 4 - Beta",
    "Intended Audience :: Science/Research",
    "Intended Audience :: Developers",
    "License :: OSI Approved :: Apache Software License",
    "Operating System :: POSIX :: Linux",
    "Programming Language :: C++",
    "Programming Language :: Python :: 3",
    "Programming Language :: Python :: 3 :: Only",
    "Programming Language :: Python :: 3.9",
    "Programming Language :: Python :: 3.10",
    "Programming Language :: Python :: 3.11",
    "Programming Language :: Python :: 3.12",
    "Programming Language :: Python :: 3.13",
    "Environment :: GPU :: NVIDIA CUDA",
    "Topic :: Scientific/Engineering :: Artificial Intelligence",
    "Typing :: Typed",
]


class CMakeExtension(Extension):
    def __init__(self):
        super().__init__(PACKAGE + "._cmake_placeholder", sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        build_dir = os.environ.get("TFL_BUILD_DIR", os.path.join(ROOT, "build", "cmake"))
        os.makedirs(build_dir, exist_ok=True)
        config = [
            "cmake",
            ROOT,
            f"-DPython3_EXECUTABLE={sys.executable}",
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DTFL_CUDA={os.environ.get('TFL_CUDA', 'auto')}",
        ]
        # Always passed, so that a reused build directory forgets the last set.
        tf_pythons = [p for p in os.environ.get("TFL_TF_PYTHONS", "").split(os.pathsep) if p]
        config.append("-DTFL_TF_PYTHONS=" + ";".join(tf_pythons))
        if os.environ.get("TFL_CUDA_ARCHS"):
            config.append(f"-DCMAKE_CUDA_ARCHITECTURES={os.environ['TFL_CUDA_ARCHS']}")
        subprocess.check_call(config, cwd=build_dir)
        jobs = os.environ.get("TFL_JOBS", str(os.cpu_count() or 2))
        subprocess.check_call(["cmake", "--build", build_dir, "--target", "tf_fused_losses", "-j", jobs])
        # Only what this configuration built: a reused build directory may
        # still hold the frontend of a TF minor from an earlier set.
        lib_dir = os.path.join(build_dir, "lib")
        with open(os.path.join(lib_dir, "build_info.json")) as f:
            minors = json.load(f)["tensorflow_builds"]
        out_dir = os.path.join(os.path.abspath(self.build_lib), PACKAGE, "lib")
        shutil.rmtree(out_dir, ignore_errors=True)
        os.makedirs(out_dir)
        for name in ("libtfl_core.so", "build_info.json"):
            shutil.copy2(os.path.join(lib_dir, name), out_dir)
        for minor in minors:
            shutil.copytree(os.path.join(lib_dir, f"tf{minor}"), os.path.join(out_dir, f"tf{minor}"))

    def get_outputs(self):
        out_dir = os.path.join(self.build_lib, PACKAGE, "lib")
        return [os.path.join(d, f) for d, _, files in os.walk(out_dir) for f in files]


def describe_build(info):
    """One sentence naming what the libraries were built for, from build_info.json."""
    builds = info.get("tensorflow_builds") or {}
    tf_text = ", ".join(b["version"] for b in builds.values()) or "no TensorFlow (JAX only)"
    text = f"Op libraries for TensorFlow {tf_text}; XLA FFI handlers (API {info.get('xla_ffi_api')})"
    if info.get("cuda"):
        archs = ", ".join(str(arch) for arch in info.get("cuda_archs") or []) or "the toolkit's default archs"
        return f"{text}, with CUDA {info['cuda']} kernels for {archs}."
    return f"{text}, CPU kernels only (no CUDA)."


def build_keywords(info):
    words = [f"tensorflow-{b['version']}" for b in (info.get("tensorflow_builds") or {}).values()]
    if info.get("cuda"):
        words.append(f"cuda-{info['cuda']}")
        words.extend(str(arch) for arch in info.get("cuda_archs") or [])
    else:
        words.append("cpu-only")
    return words


class AnyCPythonWheel(bdist_wheel):
    """Tags the wheel py3-none-<platform>: the op library links
    libtensorflow_framework.so.2 and not libpython, so one wheel loads in every
    CPython that TensorFlow supports. After the build it writes what the library
    was built for (build_info.json) into the wheel's Keywords and the first line
    of its description, so that the index page and build_info() agree."""

    def finalize_options(self):
        super().finalize_options()
        self.root_is_pure = False

    def get_tag(self):
        return "py3", "none", super().get_tag()[2]

    def write_wheelfile(self, wheelfile_base, *args, **kwargs):
        # Called once the library is built and installed into bdist_dir, with the
        # wheel's .dist-info directory (pip's earlier metadata step never gets here).
        super().write_wheelfile(wheelfile_base, *args, **kwargs)
        with open(os.path.join(self.bdist_dir, PACKAGE, "lib", "build_info.json")) as f:
            info = json.load(f)
        metadata_path = os.path.join(wheelfile_base, "METADATA")
        policy = email.policy.EmailPolicy(utf8=True, mangle_from_=False, max_line_length=0)
        with open(metadata_path, encoding="utf-8") as f:
            message = Parser(policy=policy).parse(f)
        keywords = ",".join([w for w in (message.get("Keywords") or "").split(",") if w] + build_keywords(info))
        if "Keywords" in message:
            message.replace_header("Keywords", keywords)
        else:
            message["Keywords"] = keywords
        message.set_payload(describe_build(info) + "\n\n" + (message.get_payload() or ""))
        with open(metadata_path, "w", encoding="utf-8") as f:
            Generator(f, policy=policy).flatten(message)


def pypi_long_description():
    """The README as PyPI shows it. Its relative links (docs/*.md, #sections)
    would break on the PyPI page, and the project has no public home to make
    them absolute, so each becomes its text plus where the file is: the docs
    ship in the sdist (MANIFEST.in)."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()

    def plain(match):
        label, target = match.group(1), match.group(2)
        if target.startswith("#"):
            return label
        return label if label == f"`{target}`" or label == target else f"{label} (`{target}` in the source distribution)"

    return re.sub(r"\[([^\]]+)\]\((?!https?://)([^)]+)\)", plain, text)


setup(
    name="tf-fused-losses",
    version=read_version(),
    description="Fused CPU/CUDA kernels for the BP-MLL ranking loss and correlation/CCC losses: TensorFlow ops, XLA FFI handlers, Keras losses on TensorFlow, JAX and PyTorch",
    long_description=pypi_long_description(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    license_files=["LICENSE"],
    classifiers=CLASSIFIERS,
    # No project_urls yet: the project has no public home (repository, issue
    # tracker, documentation site) to point to. Add Homepage, Source, Issues
    # and Changelog when it has one; until then the sdist carries the docs and
    # the PyPI description has no relative links (pypi_long_description).
    keywords=["tensorflow", "jax", "keras", "custom-op", "xla-ffi", "loss", "bp-mll", "pearson-correlation", "ccc"],
    package_dir={"": "python"},
    packages=[PACKAGE],
    package_data={PACKAGE: ["py.typed"]},
    ext_modules=[CMakeExtension()],
    cmdclass={"build_ext": CMakeBuild, "bdist_wheel": AnyCPythonWheel},
    # TensorFlow 2.16-2.21 ship wheels for CPython 3.9-3.13 between them.
    python_requires=">=3.9",
    # No TensorFlow here: a second TF distribution beside the user's would
    # share one tensorflow/ directory. The loader checks the version at import.
    install_requires=["numpy"],
    extras_require=EXTRAS,
    zip_safe=False,
)
