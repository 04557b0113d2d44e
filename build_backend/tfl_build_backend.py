"""setuptools' build backend, with build requirements that follow the
environment pip installs into.

An isolated build (plain `pip install .` or an sdist) cannot see the user's
packages, yet the TensorFlow frontend must be compiled against the user's
TensorFlow minor. pip runs this hook with the user's interpreter, so a child
interpreter started with -I (which ignores the PYTHONPATH that hides the
user's site-packages) reads the installed versions from package metadata,
and the build environment gets:

  * the same TensorFlow minor (tensorflow-cpu: the same headers and framework
    library as tensorflow), when TensorFlow is installed;
  * else the same jaxlib, whose headers carry XLA's FFI API, when JAX is;
  * else the newest supported tensorflow-cpu.

`pip install --no-build-isolation .` skips all this and builds against
whatever the environment holds.
"""

import json
import subprocess
import sys

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403  (the PEP 517 hooks)

SUPPORTED_TF = ("2.16", "2.17", "2.18", "2.19", "2.20", "2.21")
_PROBE = """
import json
from importlib import metadata
found = {}
for dist in ("tensorflow", "tensorflow-cpu", "jaxlib"):
    try:
        found[dist] = metadata.version(dist)
    except metadata.PackageNotFoundError:
        pass
print(json.dumps(found))
"""


def _installed():
    try:
        out = subprocess.run([sys.executable, "-I", "-c", _PROBE], capture_output=True, text=True, check=True)
        return json.loads(out.stdout)
    except (OSError, subprocess.CalledProcessError, ValueError):
        return {}


def _frontend_requirements():
    found = _installed()
    tf_version = found.get("tensorflow") or found.get("tensorflow-cpu")
    if tf_version:
        minor = ".".join(tf_version.split(".")[:2])
        if minor not in SUPPORTED_TF:
            sys.stderr.write(
                f"tf-fused-losses: TensorFlow {tf_version} is installed; supported are "
                f"{SUPPORTED_TF[0]}-{SUPPORTED_TF[-1]}. Building against tensorflow-cpu {minor} anyway.\n"
            )
        return [f"tensorflow-cpu=={minor}.*"]
    if found.get("jaxlib"):
        return [f"jaxlib=={found['jaxlib']}"]
    return [f"tensorflow-cpu=={SUPPORTED_TF[-1]}.*"]


def get_requires_for_build_wheel(config_settings=None):
    return _setuptools.get_requires_for_build_wheel(config_settings) + _frontend_requirements()


def get_requires_for_build_editable(config_settings=None):
    return _setuptools.get_requires_for_build_editable(config_settings) + _frontend_requirements()
