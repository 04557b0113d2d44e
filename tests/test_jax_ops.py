"""The JAX path (python/tf_fused_losses/_jax_ops.py): the typed-FFI handlers
of cc/xla/ffi_handlers.h registered with jaxlib and called through
jax.ffi.ffi_call, against the float64 numpy references
(tests/helpers/numpy_reference.py), under jit, grad, vmap and their
compositions, with the error bounds, edge cases and drawn examples of
tests/helpers/reference_checks.py (as tests/test_properties.py). Needs jax
and libtfl_core.so (TFL_CORE_LIBRARY, or lib/ beside the module); no
TensorFlow.

Runs in float64-enabled JAX (jax_enable_x64 on for this module, restored
after); test_x64_disabled runs the float32 path without it.
"""

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="the JAX path needs jax (pip install jax)")
import jax.numpy as jnp  # noqa: E402
from helpers import numpy_reference as npref  # noqa: E402
from helpers import reference_checks as rc  # noqa: E402
from helpers.reference_checks import DTYPES, INF, NAN  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

jo = importlib.import_module("tf_fused_losses._jax_ops")
if not os.path.isfile(jo.library_path()):
    pytest.skip(
        f"libtfl_core.so is not at {jo.library_path()} (build it, or set {jo.LIBRARY_ENV})", allow_module_level=True
    )


@pytest.fixture(scope="module", autouse=True)
def x64():
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", before)


@pytest.fixture
def rng(request):
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


PROFILE = settings(
    max_examples=int(os.environ.get("TFL_JAX_EXAMPLES", "30")),
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)

PATHS = ["eager", "jit"]


def on_path(path, fn):
    return jax.jit(fn) if path == "jit" else fn


def as_input(values, dtype):
    """The array a call gets, and its exact values in float64."""
    a = jnp.asarray(np.asarray(values, np.float64)).astype(dtype)
    return a, to64(a)


def to64(a):
    return np.asarray(jnp.asarray(a).astype(jnp.float64))


def bits(a):
    a = np.asarray(a)
    return a.view(np.uint16) if a.dtype.itemsize == 2 else a


def assert_bit_equal(a, b, what=""):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype, (what, a.shape, b.shape, a.dtype, b.dtype)
    assert np.array_equal(bits(a), bits(b)), what


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------


def test_load_registers_the_cpu_targets():
    info = jo.load()
    assert info == jo.load()
    assert "cpu" in info["platforms"]
    assert info["library"] == jo.library_path()
    import jaxlib

    assert info["jaxlib"] == jaxlib.__version__
    header = jo.jaxlib_ffi_api_version()
    assert header is not None, "jaxlib ships no xla/ffi/api/c_api.h"
    assert info["jaxlib_ffi_api"] == f"{header[0]}.{header[1]}"
    major, minor = (int(v) for v in info["library_ffi_api"].split("."))
    assert major == header[0] and (major, minor) <= header


def test_library_path(monkeypatch):
    monkeypatch.setenv(jo.LIBRARY_ENV, "/somewhere/libtfl_core.so")
    assert jo.library_path() == "/somewhere/libtfl_core.so"
    monkeypatch.delenv(jo.LIBRARY_ENV)
    assert jo.library_path() == os.path.join(os.path.dirname(os.path.abspath(jo.__file__)), "lib", "libtfl_core.so")


def test_tested_jaxlib_ffi_version_is_recorded():
    """TESTED_JAXLIB states the FFI API of the jaxlib releases it lists."""
    import jaxlib

    if jaxlib.__version__ not in jo.TESTED_JAXLIB:
        # Nothing recorded to compare with: say so rather than pass.
        pytest.skip(f"jaxlib {jaxlib.__version__} is not one of the tested releases {sorted(jo.TESTED_JAXLIB)}")
    assert jo.jaxlib_ffi_api_version() == jo.TESTED_JAXLIB[jaxlib.__version__]


@pytest.mark.parametrize(
    "library, jaxlib_api, problem",
    [
        ((0, 3), (0, 3), None),
        ((0, 1), (0, 3), None),
        ((0, 2), (0, 3), None),
        ((0, 3), None, None),
        ((0, 4), (0, 3), "newer than jaxlib's XLA implements"),
        ((1, 0), (0, 3), "different major version"),
        ((0, 3), (1, 0), "different major version"),
        ((0, 0), (0, 3), "older than 0.1"),
    ],
)
def test_ffi_api_version_check(library, jaxlib_api, problem):
    if problem is None:
        jo.check_ffi_api_version(library, jaxlib_api, "9.9.9", "/x/libtfl_core.so")
        return
    with pytest.raises(RuntimeError) as raised:
        jo.check_ffi_api_version(library, jaxlib_api, "9.9.9", "/x/libtfl_core.so")
    message = str(raised.value)
    assert problem in message
    assert f"XLA FFI API {library[0]}.{library[1]}" in message
    assert f"jaxlib 9.9.9 implements FFI API {jaxlib_api[0]}.{jaxlib_api[1]}" in message
    assert "/x/libtfl_core.so" in message
    for release in jo.TESTED_JAXLIB:
        assert f"jaxlib {release}" in message


LOAD_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, threading
    import tf_fused_losses._jax_ops as jo
    out = {}
    good = os.environ["TFL_CORE_LIBRARY"]
    for name, path in json.loads(sys.argv[1]).items():
        os.environ["TFL_CORE_LIBRARY"] = path
        try:
            jo.load()
            out[name] = "loaded"
        except RuntimeError as e:
            out[name] = str(e)
    os.environ["TFL_CORE_LIBRARY"] = good
    infos, errors = [], []
    barrier = threading.Barrier(8)
    def work():
        try:
            barrier.wait()
            infos.append(jo.load())
        except Exception as e:
            errors.append(repr(e))
    threads = [threading.Thread(target=work) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    out["errors"] = errors
    out["same"] = all(i == infos[0] for i in infos) and len(infos) == 8
    import numpy as np
    out["loss"] = float(jo.bpmll_loss(np.array([[1.0, 0.0]]), np.array([[0.0, 0.0]], np.float32))[0])
    out["tensorflow"] = "tensorflow" in sys.modules
    out["keras"] = "keras" in sys.modules
    print(json.dumps(out))
    """
)

# A library that reports an FFI API newer than any jaxlib's, with stand-ins
# for the handler symbols (never called: load() must refuse it first).
NEWER_API_LIBRARY = """
#include <stdint.h>
void TflXlaFfiApiVersion(int32_t* major, int32_t* minor) { *major = 0; *minor = 999; }
void* TflBpmllLossHost(void* f) { return f; }
void* TflBpmllLossGradHost(void* f) { return f; }
void* TflCorrelationLossHost(void* f) { return f; }
void* TflCorrelationLossGradHost(void* f) { return f; }
"""


@pytest.mark.slow
def test_load_errors_and_threads_in_a_fresh_process(tmp_path):
    """A missing library, one without the handlers and one compiled against
    a newer FFI API raise RuntimeError saying so (and a failed load is
    retried); then 8 threads load at once; TensorFlow and Keras are never
    imported."""
    script = tmp_path / "load.py"
    script.write_text(LOAD_SCRIPT)
    cases = {"missing": "/nonexistent/libtfl_core.so"}
    cases["not_ours"] = next(
        p for p in ("/lib/x86_64-linux-gnu/libm.so.6", "/usr/lib/x86_64-linux-gnu/libm.so.6", "/lib64/libm.so.6")
        if os.path.exists(p)
    )
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler:
        (tmp_path / "newer.c").write_text(NEWER_API_LIBRARY)
        subprocess.run([compiler, "-shared", "-fPIC", str(tmp_path / "newer.c"), "-o", str(tmp_path / "newer.so")],
                       check=True, timeout=120)
        cases["newer_api"] = str(tmp_path / "newer.so")
    env = dict(os.environ, TFL_CORE_LIBRARY=jo.library_path())
    proc = subprocess.run([sys.executable, str(script), json.dumps(cases)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "/nonexistent/libtfl_core.so" in out["missing"] and "TFL_CORE_LIBRARY" in out["missing"]
    assert "TflXlaFfiApiVersion" in out["not_ours"] and cases["not_ours"] in out["not_ours"]
    if compiler:
        header = jo.jaxlib_ffi_api_version()
        assert "compiled against XLA FFI API 0.999" in out["newer_api"], out["newer_api"]
        assert f"implements FFI API {header[0]}.{header[1]}" in out["newer_api"]
        assert "newer than jaxlib's XLA implements" in out["newer_api"]
    assert out["errors"] == [] and out["same"]
    assert out["loss"] == 1.0
    assert not out["tensorflow"] and not out["keras"]


# --------------------------------------------------------------------------
# BP-MLL against the numpy reference
# --------------------------------------------------------------------------


def bpmll_loss_and_grad(y, c, upstream):
    loss, vjp = jax.vjp(lambda c: jo.bpmll_loss(y, c), c)
    return loss, vjp(upstream)[0]


def check_bpmll(path, y, c, upstream):
    """Loss and gradient of sum(upstream * loss) against the references,
    element by element (tolerances of tests/test_properties.py)."""
    dtype = np.dtype(c.dtype).name
    rows, labels = c.shape
    g, g_seen = as_input(upstream, dtype)
    c_seen, y_seen = to64(c), to64(y)
    loss, grad = on_path(path, bpmll_loss_and_grad)(y, c, g)
    assert loss.dtype == c.dtype and loss.shape == (rows,)
    assert grad.dtype == c.dtype and grad.shape == (rows, labels)

    # The fused core caches the row's gradient in y_pred's dtype before the
    # scaling by g, and may flush elements whose factor underflows
    # (rc.factor_underflow).
    rc.check_bpmll(
        to64(loss), to64(grad), y_seen, c_seen, g_seen, dtype, pairwise=True, cached_grad=True, factor_flush=True
    )


@pytest.mark.parametrize("path", PATHS)
@PROFILE
@given(data=st.data())
def test_bpmll_matches_the_numpy_reference(path, data):
    y, c, upstream, dtype, label_dtype = rc.draw_bpmll_example(data)
    check_bpmll(path, jnp.asarray(y).astype(label_dtype), jnp.asarray(c).astype(dtype), upstream)


BPMLL_EDGE_CASES = {
    **rc.BPMLL_EDGE_CASES,
    "one_label": ([[1], [0]], [[3.0], [-2.0]], "float32"),
    "no_labels": ([[], []], [[], []], "float32"),
    "no_rows": (np.zeros((0, 5)), np.zeros((0, 5)), "float64"),
}


@pytest.mark.parametrize("case", list(BPMLL_EDGE_CASES))
@pytest.mark.parametrize("path", PATHS)
def test_bpmll_edge_cases(path, case):
    y, c, upstream, dtype = rc.bpmll_edge_case(BPMLL_EDGE_CASES[case])
    check_bpmll(path, jnp.asarray(y, jnp.float32), jnp.asarray(c).astype(dtype), upstream)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_bpmll_soft_label_side_overflowing_against_an_infinite_side(dtype):
    y = np.array([[0.5, 1.0, 0.0]])
    c = np.array([[0.0, -800.0, INF]])
    rule = npref.bpmll_rule(y, c)
    assert rule.grad[0, 0] == -INF
    loss, grad = bpmll_loss_and_grad(jnp.asarray(y), jnp.asarray(c).astype(dtype), jnp.ones(1, dtype))
    assert np.asarray(grad)[0, 0] == -INF, np.asarray(grad)


@pytest.mark.parametrize("dtype, logits", [("float32", [-40.0, 40.0, -49.0]), ("float64", [-300.0, 300.0, -460.0])])
def test_bpmll_gradient_stays_representable_under_a_huge_loss(dtype, logits):
    y = np.array([[1.0, 0.0, 0.0]])
    c = np.array([logits])
    rule = npref.bpmll_rule(y, c)
    assert np.isfinite(rule.loss[0]) and 0 < rule.grad[0, 2] < 1e-4
    loss, grad = bpmll_loss_and_grad(jnp.asarray(y), jnp.asarray(c).astype(dtype), jnp.ones(1, dtype))
    np.testing.assert_allclose(np.asarray(grad)[0, 2], rule.grad[0, 2], rtol=1e-4)


@pytest.mark.parametrize("label_dtype", ["float16", "bfloat16", "float32", "float64", "int32", "int64", "uint8", "bool"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_bpmll_label_dtypes_read_as_is(label_dtype, dtype, rng):
    """Every label dtype gives the float32 labels' bits (the handler reads
    them as they are: no cast in the graph)."""
    y = (rng.random((6, 37)) < 0.3).astype(np.float64)
    c = jnp.asarray(rng.standard_normal((6, 37)) * 3).astype(dtype)
    g = jnp.asarray(rng.uniform(0.5, 1.5, 6)).astype(dtype)
    loss, grad = jax.jit(bpmll_loss_and_grad)(jnp.asarray(y).astype(label_dtype), c, g)
    want_loss, want_grad = jax.jit(bpmll_loss_and_grad)(jnp.asarray(y, jnp.float32), c, g)
    assert_bit_equal(loss, want_loss, "loss")
    assert_bit_equal(grad, want_grad, "grad")
    text = jax.jit(lambda y, c: jo.bpmll_loss(y, c)).lower(jnp.asarray(y).astype(label_dtype), c).as_text()
    assert "convert" not in text


@pytest.mark.parametrize("label_dtype", ["float32", "int32", "bool"])
def test_bpmll_gives_labels_no_gradient(label_dtype, rng):
    y = jnp.asarray(rng.random((3, 8)) < 0.5).astype(label_dtype)
    c = jnp.asarray(rng.standard_normal((3, 8)), jnp.float32)
    grad_y, grad_c = jax.grad(lambda y, c: jo.bpmll_loss(y, c).sum(), argnums=(0, 1), allow_int=True)(y, c)
    if label_dtype == "float32":
        assert grad_y.dtype == jnp.float32 and not np.any(np.asarray(grad_y))
    else:
        assert grad_y.dtype == jax.dtypes.float0 and grad_y.shape == y.shape
    assert_bit_equal(grad_c, jax.grad(lambda c: jo.bpmll_loss(y, c).sum())(c))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "label_dtype, bad", [("float32", 2.0), ("float32", NAN), ("float64", -INF), ("int32", -1), ("uint8", 7)]
)
def test_bpmll_names_the_first_bad_label(path, label_dtype, bad):
    """The CPU handler's convention: an error naming the first bad element."""
    y = np.zeros((3, 6))
    y[:, 0] = 1
    y[1, 4] = bad
    y[2, 1] = bad
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"labels in \[0, 1\]; y_true\[1, 4\] = "):
        jax.block_until_ready(on_path(path, jo.bpmll_loss)(jnp.asarray(y).astype(label_dtype), jnp.zeros((3, 6))))


def test_bpmll_large(rng):
    """64 x 3000 (the pieces of a row), float32 and float64."""
    y = (rng.random((64, 3000)) < 0.05).astype(np.float64)
    for dtype in ("float32", "float64"):
        c = jnp.asarray(rng.standard_normal((64, 3000)) * 4).astype(dtype)
        check_bpmll("jit", jnp.asarray(y, jnp.float32), c, rng.uniform(0.5, 1.5, 64))


# --------------------------------------------------------------------------
# Pearson and CCC against the numpy reference
# --------------------------------------------------------------------------


def correlation_loss_and_grads(y, x, g, mask, epsilon, concordance):
    def loss_of(y, x):
        return jo.correlation_loss(y, x, epsilon=epsilon, mask=mask, concordance=concordance)

    loss, vjp = jax.vjp(loss_of, y, x)
    return (loss, *vjp(g))


def check_correlation(path, concordance, y, x, upstream, mask, epsilon, dtype, rank_3=False, mask_dtype="bool"):
    """Loss and both gradients of sum(upstream * loss) against the numpy
    reference, element by element (tolerances of tests/test_properties.py)."""
    shape = x.shape
    y_j, y_seen = as_input(y, dtype)
    x_j, x_seen = as_input(x, dtype)
    g_j, g_seen = as_input(upstream, dtype)
    if rank_3:
        y_j, x_j = y_j[..., None], x_j[..., None]
    mask_j = None if mask is None else jnp.asarray(mask).astype(mask_dtype)
    fn = on_path(path, lambda y, x, g, m: correlation_loss_and_grads(y, x, g, m, epsilon, concordance))
    loss_j, grad_y_j, grad_x_j = fn(y_j, x_j, g_j, mask_j)
    assert loss_j.dtype == dtype and loss_j.shape == shape
    assert grad_y_j.dtype == dtype and grad_x_j.dtype == dtype
    assert grad_y_j.shape == y_j.shape and grad_x_j.shape == x_j.shape
    loss, grad_y, grad_x = (to64(t).reshape(shape) for t in (loss_j, grad_y_j, grad_x_j))

    rc.check_correlation(loss, grad_y, grad_x, y_seen, x_seen, mask, epsilon, g_seen, concordance, dtype)


@pytest.mark.parametrize("path", PATHS)
@PROFILE
@given(data=st.data())
def test_correlation_and_ccc_match_the_numpy_reference(path, data):
    e = rc.draw_correlation_example(data, mask_dtypes=["bool", "bool", "float32", "int32", "uint8"])
    check_correlation(path, e.concordance, e.y, e.x, e.upstream, e.mask, e.epsilon, e.dtype, e.rank_3, e.mask_dtype)


CORRELATION_EDGE_CASES = {
    **rc.CORRELATION_EDGE_CASES,
    "one_step": ([[0.5], [2.0]], [[0.1], [-1.0]], None, 1e-7, "float32"),
    "no_rows": (np.zeros((0, 4)), np.zeros((0, 4)), None, 1e-7, "float64"),
}


@pytest.mark.parametrize("concordance", [False, True], ids=["pearson", "ccc"])
@pytest.mark.parametrize("case", list(CORRELATION_EDGE_CASES))
@pytest.mark.parametrize("path", PATHS)
def test_correlation_edge_cases(path, case, concordance):
    y, x, upstream, mask, epsilon, dtype = rc.correlation_edge_case(CORRELATION_EDGE_CASES[case])
    check_correlation(path, concordance, y, x, upstream, mask, epsilon, dtype)


@pytest.mark.parametrize("mask_dtype", ["float32", "float64", "int32", "int64", "uint8", "bfloat16"])
def test_numeric_masks_equal_bool_masks(mask_dtype, rng):
    y = jnp.asarray(rng.standard_normal((4, 33)), jnp.float32)
    x = jnp.asarray(rng.standard_normal((4, 33)), jnp.float32)
    numeric = (rng.random((4, 33)) < 0.6) * rng.choice([1.0, 2.0, 3.0 if mask_dtype == "uint8" else -3.0], size=(4, 33))
    g = jnp.asarray(rng.uniform(0.5, 1.5, (4, 33)), jnp.float32)
    fn = jax.jit(lambda m: correlation_loss_and_grads(y, x, g, m, 1e-7, True))
    for got, want in zip(fn(jnp.asarray(numeric).astype(mask_dtype)), fn(jnp.asarray(numeric != 0))):
        assert_bit_equal(got, want)


def test_correlation_casts_y_true_to_y_preds_dtype(rng):
    y = rng.integers(-5, 5, (3, 20))
    x = jnp.asarray(rng.standard_normal((3, 20)), jnp.bfloat16)
    for y_in in (jnp.asarray(y, jnp.int32), jnp.asarray(y, jnp.float64), jnp.asarray(y > 0)):
        got = jo.correlation_loss(y_in, x)
        assert got.dtype == jnp.bfloat16
        assert_bit_equal(got, jo.correlation_loss(y_in.astype(jnp.bfloat16), x))


def test_correlation_large(rng):
    """64 x 3000, Pearson and CCC, with a padding mask."""
    shape = (64, 3000)
    y = rng.standard_normal(shape)
    x = 0.5 * y + rng.standard_normal(shape)
    mask = np.arange(shape[1])[None, :] < rng.integers(0, shape[1] + 1, size=(shape[0], 1))
    for concordance in (False, True):
        check_correlation("jit", concordance, y, x, rng.uniform(0.5, 1.5, shape), mask, 1e-7, "float32")


# --------------------------------------------------------------------------
# The compiled graph: custom calls, no O(L^2) op, y_true's gradient on demand
# --------------------------------------------------------------------------


def custom_call_count(text, target):
    return len(re.findall(rf"custom_call @{target}\(", text))


def assert_two_custom_calls(lowered, targets, length):
    """One custom call to each target (the loss, its gradient) in the
    lowered module, and no (length, length) array in it or in the compiled
    HLO; returns both texts."""
    text = lowered.as_text()
    for target in targets:
        assert custom_call_count(text, target) == 1, target
    compiled = lowered.compile().as_text()
    for t in (text, compiled):
        assert f"{length}x{length}" not in t and f"{length},{length}" not in t
    return text, compiled


@pytest.mark.parametrize("dtype", DTYPES)
def test_bpmll_jit_is_two_custom_calls(dtype):
    rows, labels = 4, 3001
    y = jnp.zeros((rows, labels), jnp.float32)
    c = jnp.zeros((rows, labels), dtype)
    lowered = jax.jit(jax.value_and_grad(lambda c: jo.bpmll_loss(y, c).sum())).lower(c)
    _, compiled = assert_two_custom_calls(lowered, [jo.TARGET_BPMLL_LOSS, jo.TARGET_BPMLL_LOSS_GRAD], labels)
    assert f'custom_call_target="{jo.TARGET_BPMLL_LOSS}"' in compiled
    assert f'custom_call_target="{jo.TARGET_BPMLL_LOSS_GRAD}"' in compiled


@pytest.mark.parametrize("with_mask", [False, True])
def test_correlation_jit_is_two_custom_calls(with_mask):
    rows, steps = 4, 3001
    x = jnp.zeros((rows, steps), jnp.float32)
    mask = jnp.ones((rows, steps), bool) if with_mask else None
    lowered = jax.jit(jax.value_and_grad(lambda x: jo.correlation_loss(x, x, mask=mask).sum())).lower(x)
    text, _ = assert_two_custom_calls(lowered, [jo.TARGET_CORRELATION_LOSS, jo.TARGET_CORRELATION_LOSS_GRAD], steps)
    if not with_mask:
        assert "tensor<0xi1>" in text  # the handlers' "no mask"


def grad_y_true_attribute(fn, *args):
    """The compute_grad_y_true attribute of fn's one backward custom call,
    the same in the lowered module and in the compiled HLO."""
    lowered = jax.jit(fn).lower(*args)
    texts = (lowered.as_text(), lowered.compile().as_text())
    found = [re.findall(r"compute_grad_y_true = (true|false)", text) for text in texts]
    assert len(found[0]) == 1 and found[0] == found[1], found
    return found[0][0] == "true"


@pytest.mark.parametrize("concordance", [False, True])
def test_y_true_gradient_only_when_asked(concordance, rng):
    y = jnp.asarray(rng.standard_normal((3, 17)))
    x = jnp.asarray(rng.standard_normal((3, 17)))
    g = jnp.asarray(rng.uniform(0.5, 1.5, (3, 17)))

    def total(y, x):
        return (jo.correlation_loss(y, x, concordance=concordance) * g).sum()

    assert not grad_y_true_attribute(jax.grad(total, argnums=1), y, x)
    assert not grad_y_true_attribute(jax.grad(lambda x: total(y, x)), x)
    assert not grad_y_true_attribute(jax.vmap(jax.grad(total, argnums=1)), y[None], x[None])
    assert grad_y_true_attribute(jax.grad(total, argnums=(0, 1)), y, x)
    assert grad_y_true_attribute(jax.grad(total, argnums=0), y, x)
    assert grad_y_true_attribute(jax.grad(lambda x: total(2 * x, x)), x)  # y_true computed from x
    text = jax.jit(jax.grad(total, argnums=1)).lower(y, x).as_text()
    assert re.search(r"-> \(tensor<0xf64>, tensor<3x17xf64>\)", text), "grad_y_true is allocated"

    only_x = jax.jit(jax.grad(total, argnums=1))(y, x)
    grad_y, grad_x = jax.jit(jax.grad(total, argnums=(0, 1)))(y, x)
    assert_bit_equal(only_x, grad_x)
    ref = npref.correlation(np.asarray(y), np.asarray(x), None, float(np.float32(1e-7)), np.asarray(g), concordance)
    np.testing.assert_allclose(grad_x, ref.grad_x, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(grad_y, ref.grad_y, rtol=1e-9, atol=1e-12)
    only_y = jax.jit(jax.grad(total, argnums=0))(y, x)
    assert_bit_equal(only_y, grad_y)


# --------------------------------------------------------------------------
# jit, grad, vmap
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_jit_equals_eager_bit_for_bit(dtype, rng):
    y = jnp.asarray(rng.random((5, 2100)) < 0.2, jnp.float32)
    c = jnp.asarray(rng.standard_normal((5, 2100)) * 3).astype(dtype)
    g = jnp.asarray(rng.uniform(0.5, 1.5, 5)).astype(dtype)
    for got, want in zip(jax.jit(bpmll_loss_and_grad)(y, c, g), bpmll_loss_and_grad(y, c, g)):
        assert_bit_equal(got, want, "bpmll")
    t = jnp.asarray(rng.standard_normal((5, 2100))).astype(dtype)
    mask = jnp.asarray(rng.random((5, 2100)) < 0.7)
    g = jnp.asarray(rng.uniform(0.5, 1.5, (5, 2100))).astype(dtype)
    for concordance in (False, True):
        args = (t, c, g, mask, 1e-7, concordance)
        eager = correlation_loss_and_grads(*args)
        jitted = jax.jit(correlation_loss_and_grads, static_argnums=(4, 5))(*args)
        for got, want in zip(jitted, eager):
            assert_bit_equal(got, want, "correlation")


def test_value_and_grad(rng):
    y = jnp.asarray(rng.random((3, 9)) < 0.5, jnp.float32)
    c = jnp.asarray(rng.standard_normal((3, 9)), jnp.float32)
    value, grad = jax.value_and_grad(lambda c: jo.bpmll_loss(y, c).sum())(c)
    assert_bit_equal(value, jo.bpmll_loss(y, c).sum())
    assert_bit_equal(grad, jax.grad(lambda c: jo.bpmll_loss(y, c).sum())(c))
    value, (gy, gx) = jax.value_and_grad(lambda y, x: jo.correlation_loss(y, x).mean(), argnums=(0, 1))(c, c[::-1])
    assert_bit_equal(value, jo.correlation_loss(c, c[::-1]).mean())
    assert gy.shape == gx.shape == c.shape


def folded(fn, v, *args):
    """fn on the (V*B, ...) reshape of (V, B, ...) arguments, reshaped back."""
    flat = [None if a is None else a.reshape((-1,) + a.shape[2:]) for a in args]
    out = fn(*flat)
    return jax.tree_util.tree_map(lambda o: o.reshape((v, -1) + o.shape[1:]), out)


def bpmll_total(c, y, g):
    return (jo.bpmll_loss(y, c) * g).sum()


def assert_single_calls(fn, args, targets):
    text = jax.jit(fn).lower(*args).as_text()
    for target in targets:
        assert custom_call_count(text, target) == 1, (target, text)
    assert "stablehlo.while" not in text, "vmap must not loop"


@pytest.mark.parametrize("dtype", ["bfloat16", "float32", "float64"])
def test_bpmll_vmap(dtype, rng):
    v, b, l_ = 3, 4, 50
    y = jnp.asarray(rng.random((v, b, l_)) < 0.3, jnp.float32)
    c = jnp.asarray(rng.standard_normal((v, b, l_)) * 2).astype(dtype)
    g = jnp.asarray(rng.uniform(0.5, 1.5, (v, b))).astype(dtype)
    want_loss = folded(jo.bpmll_loss, v, y, c)
    want_grad = folded(lambda c, y, g: jax.grad(bpmll_total)(c, y, g), v, c, y, g)
    for wrap in (lambda f: f, jax.jit):
        assert_bit_equal(wrap(jax.vmap(jo.bpmll_loss))(y, c), want_loss, "vmap")
        assert_bit_equal(wrap(jax.vmap(jax.grad(bpmll_total)))(c, y, g), want_grad, "vmap of grad")
        grad_of_vmap = jax.grad(lambda c: (jax.vmap(jo.bpmll_loss)(y, c) * g).sum())
        assert_bit_equal(wrap(grad_of_vmap)(c), want_grad, "grad of vmap")
        vmap_of_jit = jax.vmap(jax.jit(jax.grad(bpmll_total)))
        assert_bit_equal(wrap(vmap_of_jit)(c, y, g), want_grad, "vmap of jit of grad")
        value, grad = wrap(jax.vmap(jax.value_and_grad(bpmll_total)))(c, y, g)
        assert_bit_equal(grad, want_grad, "vmap of value_and_grad")
    # Unmapped labels, a mapped axis other than 0, nested vmap.
    unmapped = jax.vmap(jo.bpmll_loss, in_axes=(None, 0))(y[0], c)
    assert_bit_equal(unmapped, folded(jo.bpmll_loss, v, jnp.broadcast_to(y[0], y.shape), c), "unmapped labels")
    swapped = jax.vmap(jo.bpmll_loss, in_axes=(1, 1), out_axes=1)(y, c)
    want = jax.vmap(jo.bpmll_loss)(jnp.swapaxes(y, 0, 1), jnp.swapaxes(c, 0, 1))
    assert_bit_equal(swapped, jnp.swapaxes(want, 0, 1), "axis 1")
    nested_args = (c.reshape(v, 2, 2, l_), y.reshape(v, 2, 2, l_), g.reshape(v, 2, 2))
    nested = jax.vmap(jax.vmap(jax.grad(bpmll_total)))
    assert_bit_equal(nested(*nested_args).reshape(c.shape), want_grad, "nested")  # the same 12 rows
    targets = [jo.TARGET_BPMLL_LOSS, jo.TARGET_BPMLL_LOSS_GRAD]
    assert_single_calls(jax.vmap(jax.value_and_grad(bpmll_total)), (c, y, g), targets)
    assert_single_calls(nested, nested_args, targets)


@pytest.mark.parametrize("mask_kind", ["none", "mapped", "unmapped"])
@pytest.mark.parametrize("concordance", [False, True])
def test_correlation_vmap(concordance, mask_kind, rng):
    v, b, t = 3, 4, 40
    y = jnp.asarray(rng.standard_normal((v, b, t)), jnp.float32)
    x = jnp.asarray(rng.standard_normal((v, b, t)), jnp.float32)
    g = jnp.asarray(rng.uniform(0.5, 1.5, (v, b, t)), jnp.float32)
    masks = jnp.asarray(rng.random((v, b, t)) < 0.7)
    mask = {"none": None, "mapped": masks, "unmapped": masks[0]}[mask_kind]
    full_mask = None if mask is None else jnp.broadcast_to(mask, (v, b, t))

    def total(y, x, g, m):
        return (jo.correlation_loss(y, x, mask=m, concordance=concordance) * g).sum()

    def loss(y, x, m):
        return jo.correlation_loss(y, x, mask=m, concordance=concordance)

    mask_axis = None if mask_kind != "mapped" else 0
    want_loss = folded(loss, v, y, x, full_mask)
    want_grads = folded(lambda y, x, g, m: jax.grad(total, argnums=(0, 1))(y, x, g, m), v, y, x, g, full_mask)
    want_grad_x = folded(lambda y, x, g, m: jax.grad(total, argnums=1)(y, x, g, m), v, y, x, g, full_mask)
    for wrap in (lambda f: f, jax.jit):
        assert_bit_equal(wrap(jax.vmap(loss, in_axes=(0, 0, mask_axis)))(y, x, mask), want_loss, "vmap")
        got = wrap(jax.vmap(jax.grad(total, argnums=(0, 1)), in_axes=(0, 0, 0, mask_axis)))(y, x, g, mask)
        for a, w in zip(got, want_grads):
            assert_bit_equal(a, w, "vmap of grad")
        got = wrap(jax.vmap(jax.grad(total, argnums=1), in_axes=(0, 0, 0, mask_axis)))(y, x, g, mask)
        assert_bit_equal(got, want_grad_x, "vmap of grad, y_pred only")
        grad_of_vmap = jax.grad(lambda y, x: (jax.vmap(loss, in_axes=(0, 0, mask_axis))(y, x, mask) * g).sum(), (0, 1))
        got = wrap(grad_of_vmap)(y, x)
        for a, w in zip(got, want_grads):
            assert_bit_equal(a, w, "grad of vmap")
    # (batch, steps, 1) under vmap, and an unmapped y_true.
    got = jax.vmap(jax.grad(total, argnums=1), in_axes=(0, 0, 0, mask_axis))(y[..., None], x[..., None], g, mask)
    assert_bit_equal(got[..., 0], want_grad_x, "rank 3")
    got = jax.vmap(loss, in_axes=(None, 0, mask_axis))(y[0], x, mask)
    assert_bit_equal(got, folded(loss, v, jnp.broadcast_to(y[0], y.shape), x, full_mask), "unmapped y_true")
    assert_single_calls(
        jax.vmap(jax.grad(total, argnums=(0, 1)), in_axes=(0, 0, 0, mask_axis)), (y, x, g, mask),
        [jo.TARGET_CORRELATION_LOSS, jo.TARGET_CORRELATION_LOSS_GRAD],
    )


def test_vmap_of_nothing(rng):
    """A mapped axis of size 0 folds into 0 rows."""
    c = jnp.zeros((0, 3, 5), jnp.float32)
    assert jax.vmap(jo.bpmll_loss)(c, c).shape == (0, 3)
    assert jax.vmap(jax.grad(lambda x: jo.correlation_loss(x, x).sum()))(c).shape == (0, 3, 5)


def test_x64_disabled(rng):
    """Default JAX (no float64): the float32 path, whose row_stats are
    float64 all the same, gives the bits it gives with x64 on."""
    y = rng.standard_normal((3, 2, 30)).astype(np.float32)
    x = rng.standard_normal((3, 2, 30)).astype(np.float32)
    labels = (rng.random((3, 2, 30)) < 0.3).astype(np.float32)

    def run():
        ccc_total = lambda y, x: jo.correlation_loss(y, x, concordance=True).sum()  # noqa: E731
        out = jax.jit(jax.vmap(jax.value_and_grad(ccc_total, argnums=(0, 1))))(y, x)
        out += (jax.jit(jax.vmap(jax.grad(lambda c, l: jo.bpmll_loss(l, c).sum())))(x, labels),)
        return [np.asarray(o) for o in jax.tree_util.tree_leaves(out)]

    with_x64 = run()
    jax.config.update("jax_enable_x64", False)
    try:
        without = run()
    finally:
        jax.config.update("jax_enable_x64", True)
    for a, b in zip(without, with_x64):
        assert_bit_equal(a, b)


# --------------------------------------------------------------------------
# Bad arguments
# --------------------------------------------------------------------------

F32 = np.zeros((2, 3), np.float32)


@pytest.mark.parametrize(
    "y_true, y_pred, match",
    [
        (F32, F32.astype(np.int32), r"y_pred must be one of float16, bfloat16, float32, float64; got dtype int32"),
        (F32.astype(np.complex64), F32, r"y_true must be one of .*int32, int64, uint8, bool; got dtype complex64"),
        (F32.astype(np.int16), F32, r"y_true must be one of .*; got dtype int16"),
        (F32, np.zeros((2, 3, 1), np.float32), r"y_pred must be rank 2 \(batch, labels\); got shape \(2, 3, 1\)"),
        (np.zeros(3, np.float32), np.zeros(3, np.float32), r"y_pred must be rank 2 \(batch, labels\); got shape \(3,\)"),
        (np.zeros((2, 4), np.float32), F32, r"y_true and y_pred must have the same shape; got y_true \(2, 4\) and y_pred \(2, 3\)"),
        ("labels", F32, r"y_true must be an array"),
    ],
)
def test_bpmll_bad_arguments(y_true, y_pred, match):
    with pytest.raises(ValueError, match=match):
        jo.bpmll_loss(y_true, y_pred)


@pytest.mark.parametrize(
    "y_true, y_pred, kwargs, match",
    [
        (F32, F32.astype(np.int32), {}, r"y_pred must be one of float16, bfloat16, float32, float64; got dtype int32"),
        (F32.astype(np.complex64), F32, {}, r"y_true must be numeric; got dtype complex64"),
        (F32, np.zeros((2, 3, 2), np.float32), {}, r"y_true and y_pred must have the same \(batch, steps\) and targets; got y_true \(2, 3\) and y_pred \(2, 3, 2\)"),
        (np.zeros(6, np.float32), F32, {}, r"y_true must be \(batch, steps\) or \(batch, steps, targets\); got shape \(6,\)"),
        (np.zeros((2, 4), np.float32), F32, {}, r"y_true and y_pred must have the same \(batch, steps\) and targets; got y_true \(2, 4\) and y_pred \(2, 3\)"),
        (F32, F32, {"epsilon": -1.0}, r"epsilon must be finite and >= 0; got -1.0"),
        (F32, F32, {"epsilon": float("nan")}, r"epsilon must be finite and >= 0; got nan"),
        (F32, F32, {"epsilon": float("inf")}, r"epsilon must be finite and >= 0; got inf"),
        (F32, F32, {"epsilon": 1e39}, r"epsilon must be at most 3.402823e\+38 \(the float32 maximum\); got 1e\+39"),
        (F32, F32, {"epsilon": True}, r"epsilon must be a real scalar >= 0; got True"),
        (F32, F32, {"epsilon": np.ones(2, np.float32)}, r"epsilon must be a scalar, not an array; got shape \(2,\)"),
        (F32, F32, {"epsilon": jnp.ones((1, 1), jnp.float32)}, r"epsilon must be a scalar, not an array; got shape \(1, 1\)"),
        (F32, F32, {"mask": np.ones((2, 4), bool)}, r"mask must have shape \(batch, steps\) = \(2, 3\); got shape \(2, 4\)"),
        (F32, F32, {"mask": np.ones((2, 3, 1), bool)}, r"mask must have shape \(batch, steps\) = \(2, 3\); got shape \(2, 3, 1\)"),
        (F32, F32, {"mask": np.ones((2, 3), np.complex64)}, r"mask must be bool or numeric \(nonzero = valid step\); got dtype complex64"),
        (F32, F32, {"concordance": 1}, r"concordance must be a bool; got 1"),
    ],
)
def test_correlation_bad_arguments(y_true, y_pred, kwargs, match):
    with pytest.raises(ValueError, match=match):
        jo.correlation_loss(y_true, y_pred, **kwargs)


def test_integer_epsilon_is_accepted():
    a = jnp.asarray(np.arange(6.0).reshape(2, 3))
    assert_bit_equal(jo.correlation_loss(a, a, epsilon=0), jo.correlation_loss(a, a, epsilon=0.0))


def test_jit_traced_arguments_are_checked_at_trace_time():
    with pytest.raises(ValueError, match=r"y_true and y_pred must have the same shape"):
        jax.jit(jo.bpmll_loss)(np.zeros((2, 4), np.float32), F32)
