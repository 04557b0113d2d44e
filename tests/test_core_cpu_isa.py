"""TFL_CPU_ISA checked once, in the core (cc/core/common/cpu_isa.cc):
tfl_cpu_isa_error() of libtfl_core.so says why a setting is refused, in the
words the Python loader has always used, and the TF CPU kernels refuse to run
with that message whatever loaded the library. (The Host FFI handlers'
refusal is in test_core_ffi_checks.py, which needs jax.)

The choice itself (ChooseCpuIsa) is compiled here with a small driver, so
that every CPU level meets every setting, a build above this CPU's
included, whatever CPU runs the suite.
"""

import ctypes
import json
import os
import shutil
import subprocess
import sys

import pytest

from tf_fused_losses import _loader

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ISAS = ("baseline", "avx2", "avx512")  # lowest first


def core_library():
    path = _loader.core_library_path()
    if not os.path.exists(path):
        pytest.skip(f"no core library at {path} (build it: make install)")
    return path


def not_a_build(value):
    return (f"TFL_CPU_ISA={value!r} is not an ISA build of tf_fused_losses; allowed values: baseline, avx2, avx512 "
            f"(or unset it to use the best this CPU runs).")


def above_this_cpu(value, supported):
    allowed = ", ".join(ISAS[: ISAS.index(supported) + 1])
    return (f"TFL_CPU_ISA={value} asks for a build this CPU cannot run: it supports up to {supported}. "
            f"Allowed values here: {allowed}.")


def expected(value, supported):
    """(the build in use, the error or None) for a CPU that runs up to `supported`."""
    if not value:
        return supported, None
    if value not in ISAS:
        return "baseline", not_a_build(value)
    if ISAS.index(value) > ISAS.index(supported):
        return supported, above_this_cpu(value, supported)
    return value, None


QUERY = """
import ctypes, json, sys
lib = ctypes.CDLL(sys.argv[1])
out = {}
for name in ("tfl_cpu_isa_error", "tfl_cpu_isa_in_use", "tfl_cpu_isa_supported"):
    f = getattr(lib, name)
    f.restype = ctypes.c_char_p
    value = f()
    out[name] = None if value is None else value.decode()
print(json.dumps(out))
"""


def query(value):
    env = dict(os.environ)
    env.pop("TFL_CPU_ISA", None)
    if value is not None:
        env["TFL_CPU_ISA"] = value
    proc = subprocess.run([sys.executable, "-c", QUERY, core_library()], capture_output=True, text=True, env=env,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_the_library_refuses_a_name_that_is_no_build():
    for value in ("avx9000", "AVX2", " avx2", "it's"):
        out = query(value)
        assert out["tfl_cpu_isa_error"] == not_a_build(value), value
        assert out["tfl_cpu_isa_in_use"] == "baseline"


def test_the_library_accepts_unset_empty_and_every_build_this_cpu_runs():
    supported = query(None)["tfl_cpu_isa_supported"]
    assert supported in ISAS
    for value in (None, "", *ISAS):
        out = query(value)
        in_use, error = expected(value, supported)
        assert out["tfl_cpu_isa_error"] == error, value
        assert out["tfl_cpu_isa_in_use"] == in_use, value
        assert out["tfl_cpu_isa_supported"] == supported


DRIVER = r"""
#include <cstdio>
#include <cstring>
#include "cpu_isa.h"
using namespace tf_fused_losses;
int main(int argc, char** argv) {  // argv[1]: the CPU's level; argv[2], if any: TFL_CPU_ISA
  CpuIsa supported = CpuIsa::kBaseline;
  for (CpuIsa isa : {CpuIsa::kAvx2, CpuIsa::kAvx512}) {
    if (std::strcmp(argv[1], CpuIsaName(isa)) == 0) supported = isa;
  }
  const CpuIsaChoice choice = ChooseCpuIsa(supported, argc > 2 ? argv[2] : nullptr);
  std::printf("%s\n%s", CpuIsaName(choice.isa), choice.error.c_str());
  return 0;
}
"""


@pytest.fixture(scope="module")
def choose(tmp_path_factory):
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not compiler:
        pytest.skip("no C++ compiler to build the ChooseCpuIsa driver")
    folder = tmp_path_factory.mktemp("cpu_isa")
    (folder / "driver.cc").write_text(DRIVER)
    program = str(folder / "choose")
    common = os.path.join(ROOT, "cc", "core", "common")
    subprocess.run([compiler, "-std=c++17", "-Wall", "-Werror", f"-I{common}", str(folder / "driver.cc"),
                    os.path.join(common, "cpu_isa.cc"), "-o", program], check=True, timeout=300)

    def run(supported, value):
        args = [program, supported] + ([] if value is None else [value])
        in_use, error = subprocess.run(args, capture_output=True, text=True, check=True).stdout.split("\n", 1)
        return in_use, error or None

    return run


@pytest.mark.parametrize("supported", ISAS)
def test_every_setting_on_every_cpu_level(choose, supported):
    for value in (None, "", *ISAS, "avx9000", "x86-64-v3", 'say "hi"', "it's"):
        assert choose(supported, value) == expected(value, supported), (supported, value)


OP_SCRIPT = """
import sys
import numpy as np
import tensorflow as tf
ops = tf.load_op_library(sys.argv[1])
y = np.zeros((2, 3), np.float32)
calls = {
    "FusedBpmllLoss": lambda: ops.fused_bpmll_loss(y_true=y, y_pred=y),
    "FusedBpmllLossGrad": lambda: ops.fused_bpmll_loss_grad(grad_loss=y[:, 0], cached_grad=y),
    "FusedCorrelationLoss": lambda: ops.fused_correlation_loss(y_true=y, y_pred=y, mask=np.zeros([0], bool),
                                                               concordance=False, epsilon=1e-7),
    "FusedCorrelationLossGrad": lambda: ops.fused_correlation_loss_grad(
        grad_loss=y, y_true=y, y_pred=y, mask=np.zeros([0], bool), row_stats=np.zeros((2, 5)),
        concordance=True, epsilon=1e-7),
}
for name, call in calls.items():
    with tf.device("/CPU:0"):
        try:
            call()
            print(name, "ran")
        except tf.errors.InvalidArgumentError as e:
            print(name, "refused:", e.message.splitlines()[0])
"""


def test_tf_cpu_kernels_refuse_to_run_with_the_core_message():
    # The op library loaded by tf.load_op_library itself, past the Python
    # loader's own check: the kernels refuse on their own.
    tf = pytest.importorskip("tensorflow")
    minor = ".".join(tf.__version__.split(".")[:2])
    library = _loader.tf_library_path(minor)
    if not os.path.exists(library):
        pytest.skip(f"no TF {minor} frontend at {library}")
    env = dict(os.environ, TFL_CPU_ISA="avx9000", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", OP_SCRIPT, library], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 4, proc.stdout
    for line in lines:
        name, outcome = line.split(" ", 1)
        assert outcome.startswith("refused: ") and not_a_build("avx9000") in outcome, line


def test_core_entry_points_are_exported():
    lib = ctypes.CDLL(core_library())
    for name in ("tfl_cpu_isa_error", "tfl_cpu_isa_in_use", "tfl_cpu_isa_supported"):
        assert hasattr(lib, name), name
