"""The Host FFI handlers (cc/xla/ffi_host_handlers.cc) called directly through
jax.ffi.ffi_call, as a user of libtfl_core.so may: they check the buffers
they are handed, cotangents included (a grad_loss of the wrong shape or
dtype is an error naming it, never a read out of bounds), and refuse to run
while TFL_CPU_ISA is set wrong. Runs where jax is importable (CI: the JAX
env of tools/check_jax_env.sh).
"""

import ctypes
import os
import subprocess
import sys

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="direct jax.ffi calls need jax (CI: tools/check_jax_env.sh)")

from test_core_cpu_isa import core_library, not_a_build  # noqa: E402

HANDLERS = {  # target registered here -> the library's Host handler
    "tfl_check_bpmll_loss": "TflBpmllLossHost",
    "tfl_check_bpmll_loss_grad": "TflBpmllLossGradHost",
    "tfl_check_correlation_loss": "TflCorrelationLossHost",
    "tfl_check_correlation_loss_grad": "TflCorrelationLossGradHost",
}

def register(path, handlers):
    lib = ctypes.CDLL(path)
    for target, symbol in handlers.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")


@pytest.fixture(scope="module")
def targets():
    jax.config.update("jax_enable_x64", True)
    register(core_library(), HANDLERS)


def run(target, results, *args, **attrs):
    return jax.jit(lambda *xs: jax.ffi.ffi_call(target, results)(*xs, **attrs))(*args)


def bpmll_grad(grad_loss, cached_grad):
    return run("tfl_check_bpmll_loss_grad", jax.ShapeDtypeStruct(cached_grad.shape, cached_grad.dtype), grad_loss,
               cached_grad)


def correlation_grad(grad_loss, y, x, row_stats):
    result = jax.ShapeDtypeStruct(x.shape, x.dtype)
    return run("tfl_check_correlation_loss_grad", (result, result), grad_loss, y, x, np.zeros((0,), bool), row_stats,
               concordance=True, epsilon=np.float32(1e-7), compute_grad_y_true=True)


def raises(call, *fragments):
    with pytest.raises(Exception) as info:  # jax's runtime error type moves between versions
        jax.block_until_ready(call())
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def test_bpmll_grad_checks_grad_loss(targets):
    cached = np.ones((3, 4), np.float32)
    out = bpmll_grad(np.array([1, 2, 3], np.float32), cached)
    np.testing.assert_array_equal(np.asarray(out), np.array([1, 2, 3], np.float32)[:, None] * cached)
    raises(lambda: bpmll_grad(np.ones(3, np.float64), cached),
           "FusedBpmllLossGrad: grad_loss must be float32 of shape [3]", "got float64 of shape [3]")
    raises(lambda: bpmll_grad(np.ones(2, np.float32), cached), "FusedBpmllLossGrad: grad_loss must be (batch,)",
           "[2] and [3,4]")


def test_correlation_grad_checks_grad_loss_and_row_stats(targets):
    rng = np.random.default_rng(0)
    y, x = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(3, 4)).astype(np.float32)
    _, row_stats = run("tfl_check_correlation_loss",
                       (jax.ShapeDtypeStruct((3, 4), np.float32), jax.ShapeDtypeStruct((3, 5), np.float64)),
                       y, x, np.zeros((0,), bool), concordance=True, epsilon=np.float32(1e-7))
    grads = correlation_grad(np.ones((3, 4), np.float32), y, x, row_stats)
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)
    raises(lambda: correlation_grad(np.ones(3, np.float32), y, x, row_stats),
           "FusedCorrelationLossGrad: grad_loss must be float32 of shape [3,4]", "got float32 of shape [3]")
    raises(lambda: correlation_grad(np.ones((3, 3), np.float32), y, x, row_stats),
           "grad_loss must be float32 of shape [3,4]", "got float32 of shape [3,3]")
    raises(lambda: correlation_grad(np.ones((3, 4), np.float64), y, x, row_stats),
           "grad_loss must be float32 of shape [3,4]", "got float64 of shape [3,4]")
    raises(lambda: correlation_grad(np.ones((3, 4), np.float32), y, x, np.asarray(row_stats, np.float32)),
           "FusedCorrelationLossGrad: row_stats must be float64 of shape [3,5]", "got float32 of shape [3,5]")


REFUSAL = """
import sys
import jax
import numpy as np
sys.path.insert(0, sys.argv[2])
from test_core_ffi_checks import register
register(sys.argv[1], {"tfl_check_bpmll_loss": "TflBpmllLossHost"})
y = np.zeros((2, 3), np.float32)
results = (jax.ShapeDtypeStruct((2,), np.float32), jax.ShapeDtypeStruct((2, 3), np.float32))
try:
    jax.block_until_ready(jax.jit(lambda a, b: jax.ffi.ffi_call("tfl_check_bpmll_loss", results)(a, b))(y, y))
    print("ran")
except Exception as e:
    print("refused:", e)
"""


def test_host_handlers_refuse_a_wrong_cpu_isa():
    env = dict(os.environ, TFL_CPU_ISA="avx9000", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", REFUSAL, core_library(), os.path.dirname(__file__)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("refused:") and not_a_build("avx9000") in proc.stdout, proc.stdout
