"""Builds the op library with CMake against the TensorFlow in the build environment.

Environment knobs:
  TFL_CUDA=auto|on|off      compile cuda/ (auto: when nvcc is found)
  TFL_CUDA_ARCHS="75;80;…"  CMAKE_CUDA_ARCHITECTURES (default: see cuda/CMakeLists.txt)
  TFL_TF_REQUIREMENT=…      override the TensorFlow requirement written to the wheel
  TFL_BUILD_DIR=…           CMake build directory (default: build/cmake)
  TFL_JOBS=N                parallel compile jobs
"""

import os
import re
import shutil
import subprocess
import sys
from importlib import metadata

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
PACKAGE = "tf_fused_losses"
LIBRARY = "libtf_fused_losses.so"


def read_version():
    with open(os.path.join(ROOT, "python", PACKAGE, "__init__.py")) as f:
        return re.search(r'__version__ = "([^"]+)"', f.read()).group(1)


def tensorflow_requirement():
    """Pins the TensorFlow minor this build links against, under the
    distribution name found at build time (tensorflow or tensorflow-cpu)."""
    if os.environ.get("TFL_TF_REQUIREMENT"):
        return os.environ["TFL_TF_REQUIREMENT"]
    for dist in ("tensorflow", "tensorflow-cpu"):
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
        major, minor = (int(x) for x in version.split(".")[:2])
        return f"{dist}>={major}.{minor},<{major}.{minor + 1}"
    raise RuntimeError("Building tf-fused-losses needs tensorflow or tensorflow-cpu installed in the build environment.")


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
        if os.environ.get("TFL_CUDA_ARCHS"):
            config.append(f"-DCMAKE_CUDA_ARCHITECTURES={os.environ['TFL_CUDA_ARCHS']}")
        subprocess.check_call(config, cwd=build_dir)
        jobs = os.environ.get("TFL_JOBS", str(os.cpu_count() or 2))
        subprocess.check_call(["cmake", "--build", build_dir, "--target", "tf_fused_losses", "-j", jobs])
        out_dir = os.path.join(os.path.abspath(self.build_lib), PACKAGE)
        os.makedirs(out_dir, exist_ok=True)
        shutil.copy2(os.path.join(build_dir, LIBRARY), os.path.join(out_dir, LIBRARY))
        shutil.copy2(os.path.join(build_dir, "build_info.json"), os.path.join(out_dir, "build_info.json"))

    def get_outputs(self):
        return [os.path.join(self.build_lib, PACKAGE, LIBRARY)]


setup(
    name="tf-fused-losses",
    version=read_version(),
    description="Fused CPU/CUDA TensorFlow ops for the BP-MLL ranking loss and correlation/CCC losses",
    long_description=open(os.path.join(ROOT, "README.md")).read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    package_dir={"": "python"},
    packages=[PACKAGE],
    ext_modules=[CMakeExtension()],
    cmdclass={"build_ext": CMakeBuild},
    python_requires=">=3.9",
    install_requires=[tensorflow_requirement()],
    zip_safe=False,
)
