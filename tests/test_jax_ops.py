"""The JAX path (python/tf_fused_losses/_jax_ops.py): the typed-FFI handlers
of cc/xla/ffi_handlers.h registered with jaxlib and called through
jax.ffi.ffi_call, against the float64 numpy references
(tests/helpers/numpy_reference.py), under jit, grad, vmap and their
compositions. Needs jax and libtfl_core.so (TFL_CORE_LIBRARY, or lib/ beside
the module); no TensorFlow.

Runs in float64-enabled JAX (jax_enable_x64 on for this module, restored
after); test_x64_disabled runs the float32 path without it.
"""

import importlib
import importlib.util
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
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE_FILE = os.path.join(ROOT, "python", "tf_fused_losses", "_jax_ops.py")


def _import_jax_ops():
    """tf_fused_losses._jax_ops; straight from its file where the package's
    __init__ cannot be imported here (it needs TensorFlow)."""
    try:
        return importlib.import_module("tf_fused_losses._jax_ops")
    except ImportError:
        spec = importlib.util.spec_from_file_location("_tfl_jax_ops_under_test", MODULE_FILE)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


jo = _import_jax_ops()
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
DTYPES = ["float16", "bfloat16", "float32", "float64"]
ACC_EPS = {"float16": 2.0**-24, "bfloat16": 2.0**-24, "float32": 2.0**-24, "float64": 2.0**-53}
OUT_EPS = {"float16": 2.0**-11, "bfloat16": 2.0**-8, "float32": 2.0**-24, "float64": 2.0**-53}
TINY = {"float16": 2.0**-14, "bfloat16": 2.0**-126, "float32": 2.0**-126, "float64": 2.0**-1022}
LARGEST = {name: float(jnp.finfo(name).max) for name in DTYPES}
INF, NAN = np.inf, np.nan


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


def assert_elements(got, want, tol, exact, dtype, what, largest=None):
    """Each element in the class its reference value states (as
    tests/test_properties.py): NaN -> NaN; +-inf -> the same infinity;
    exact -> equal bit for bit; otherwise finite and within tol, or the
    infinity of want's sign where want is within tol of the largest
    representable value or beyond."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    tol = np.broadcast_to(np.asarray(tol, np.float64), want.shape)
    exact = np.broadcast_to(np.asarray(exact, bool), want.shape)
    largest = np.broadcast_to(LARGEST[dtype] if largest is None else np.asarray(largest, np.float64), want.shape)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    with np.errstate(invalid="ignore", over="ignore"):
        nan_want = np.isnan(want)
        inf_want = np.isinf(want)
        approx = ~nan_want & ~inf_want & ~exact
        close = np.isfinite(got) & (np.abs(got - want) <= tol)
        overflow = np.isinf(got) & (np.sign(got) == np.sign(want)) & (np.abs(want) + tol >= largest)
        ok = np.where(nan_want, np.isnan(got), False)
        ok |= inf_want & (got == want)
        ok |= exact & ~nan_want & ~inf_want & (got == want)
        ok |= approx & (close | overflow)
    if not ok.all():
        lines = [
            f"  {what}{tuple(int(k) for k in i)}: got {got[tuple(i)]!r}, want {want[tuple(i)]!r}"
            f" ({'exact' if exact[tuple(i)] else f'tol {tol[tuple(i)]:.3g}'})"
            for i in np.argwhere(~ok)[:10]
        ]
        raise AssertionError(f"{int((~ok).sum())} of {ok.size} elements of {what} wrong ({dtype}):\n" + "\n".join(lines))


def lengths(max_short):
    """Short rows, and rows around the CPU kernels' chunk of 2048."""
    return st.one_of(st.integers(1, max_short), st.sampled_from([2047, 2048, 2049, 4097]))


def inject(rng, values, count, choices):
    for _ in range(count):
        if values.size:
            values.flat[rng.integers(values.size)] = rng.choice(choices)


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

    if jaxlib.__version__ in jo.TESTED_JAXLIB:
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
    import importlib.util, json, os, sys, threading
    spec = importlib.util.spec_from_file_location("jax_ops", sys.argv[1])
    jo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(jo)
    out = {}
    good = os.environ["TFL_CORE_LIBRARY"]
    for name, path in json.loads(sys.argv[2]).items():
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
    proc = subprocess.run([sys.executable, str(script), jo.__file__, json.dumps(cases)], capture_output=True,
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


def bpmll_expected(y, c):
    """The rule's loss and gradient in float64; the seed's pairwise formula
    where a row is finite, short and its spread fits float64."""
    rule = npref.bpmll_rule(y, c)
    loss, grad = rule.loss.copy(), rule.grad.copy()
    finite = np.all(np.isfinite(c), axis=1)
    if y.shape[1] <= 300 and np.any(finite):
        spread = np.ptp(np.where(np.isfinite(c), c, 0), axis=1) if c.size else np.zeros(len(c))
        rows = finite & (spread < 600)
        if np.any(rows):
            loss[rows], grad[rows] = npref.bpmll_pairwise(y[rows], c[rows])
    return rule, loss, grad


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

    rule, want_loss, want_grad = bpmll_expected(y_seen, c_seen)
    finite_c = np.where(np.isfinite(c_seen), np.abs(c_seen), 0)
    exponent = np.maximum(finite_c.max(axis=1, initial=0), 1)
    rtol = 64 * ACC_EPS[dtype] * exponent * np.sqrt(labels) + 2 * OUT_EPS[dtype]
    with np.errstate(invalid="ignore", over="ignore"):
        loss_tol = rtol * np.abs(want_loss) + 4 * TINY[dtype]
        scale = np.minimum(rule.grad_scale, np.finfo(np.float64).max)
        grad_tol = (rtol * g_seen)[:, None] * scale + 4 * TINY[dtype]
        want_grad = g_seen[:, None] * want_grad
    # The cached gradient is in y_pred's dtype before the scaling by g.
    grad_largest = np.minimum(LARGEST[dtype], LARGEST[dtype] * np.minimum(g_seen, 1))[:, None]
    got_grad = np.array(to64(grad))
    known = factor_underflow(got_grad, want_grad, want_loss, g_seen, dtype)
    got_grad[known] = want_grad[known]  # the documented flush below 2^24 x the smallest normal; the rest is checked
    assert_elements(to64(loss), want_loss, loss_tol, rule.loss_exact_zero, dtype, "loss")
    assert_elements(got_grad, want_grad, grad_tol, rule.grad_exact_zero, dtype, "grad", grad_largest)


def factor_underflow(got, want, want_loss, upstream, dtype):
    """The elements a row of loss at most 2^24 may flush to exactly 0: the
    core forms those gradients as loss * e^(...), and a factor below the
    accumulation type's smallest normal number flushes (docs/semantics.md).
    Rows of larger loss take the direct form and keep them
    (test_bpmll_gradient_stays_representable_under_a_huge_loss)."""
    floor = 2.0**-1000 if dtype == "float64" else 2.0**-100  # near the accumulation type's smallest normal
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        ratio = np.abs(want) / (upstream[:, None] * np.abs(want_loss)[:, None])
        small_loss = (np.abs(want_loss) <= 2.0**24)[:, None]
        return (got == 0) & np.isfinite(want) & (want != 0) & small_loss & (ratio < floor)


@pytest.mark.parametrize("path", PATHS)
@PROFILE
@given(data=st.data())
def test_bpmll_matches_the_numpy_reference(path, data):
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    rows = data.draw(st.integers(0, 5), label="rows")
    labels = data.draw(lengths(70), label="labels")
    label_kind = data.draw(st.sampled_from(["hard", "soft", "mixed"]), label="label_kind")
    label_dtype = data.draw(
        st.sampled_from(
            ["same", "float32", "float64", "bool", "int32", "int64", "uint8"] if label_kind == "hard" else ["same", "float32"]
        ),
        label="label_dtype",
    )
    density = data.draw(st.floats(0, 1), label="density")
    log_scale = data.draw(st.floats(-3, 4), label="log10_scale")
    offset = data.draw(st.sampled_from([0.0, 1.0, -1.0]), label="offset_sign") * 10**log_scale
    specials = data.draw(st.sampled_from([0, 0, 1, 3]), label="non_finite_logits")
    huge = data.draw(st.sampled_from([0, 0, 1, 4]), label="huge_logits")
    no_pairs = data.draw(st.sampled_from([0, 0, 1, 2]), label="rows_without_pairs")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))

    shape = (rows, labels)
    hard = (rng.random(shape) < density).astype(np.float64)
    soft = np.clip(rng.random(shape) * 2 * density, 0, 1)
    y = {"hard": hard, "soft": soft, "mixed": np.where(rng.random(shape) < 0.5, hard, soft)}[label_kind]
    y[y < 1e-20] = 0  # denormal terms flush to zero on CPU (README: soft labels below 1e-20)
    for _ in range(no_pairs if rows else 0):
        y[rng.integers(rows)] = rng.choice([0.0, 1.0])
    c = offset + 10**log_scale * rng.standard_normal(shape)
    inject(rng, c, huge, [100.0, -100.0, 800.0, -800.0])
    inject(rng, c, specials, [np.nan, np.inf, -np.inf])
    y_j = jnp.asarray(y).astype(dtype if label_dtype == "same" else label_dtype)
    check_bpmll(path, y_j, jnp.asarray(c).astype(dtype), rng.uniform(0.5, 1.5, size=rows))


BPMLL_EDGE_CASES = {
    "no_pairs_huge_float32": ([[0, 0], [1, 1], [0, 0]], [[100, 0], [-100, 100], [-100, -100]], "float32"),
    "no_pairs_huge_float64": ([[0, 0], [1, 1]], [[800, -800], [-800, 800]], "float64"),
    "no_pairs_huge_bfloat16": ([[0, 0, 0], [1, 1, 1]], [[100, 0, -100], [-100, 100, 0]], "bfloat16"),
    "no_pairs_infinite": ([[0, 0, 0], [1, 1, 1]], [[INF, -INF, 0], [-INF, INF, 5]], "float32"),
    "nan_logit_row": ([[1, 0], [1, 0]], [[NAN, 0], [0, 0]], "float32"),
    "nan_logit_row_without_pairs": ([[0, 0], [1, 0]], [[NAN, 0], [0, 0]], "float32"),
    "nan_logit_float16": ([[1, 0, 0], [0, 1, 0]], [[0, NAN, 1], [1, 2, 3]], "float16"),
    "positive_at_plus_inf": ([[1, 0]], [[INF, 0]], "float32"),
    "positive_at_minus_inf": ([[1, 0]], [[-INF, 0]], "float32"),
    "both_at_plus_inf": ([[1, 0]], [[INF, INF]], "float32"),
    "negatives_at_both_infinities": ([[1, 0, 0]], [[0, INF, -INF]], "float32"),
    "negative_at_minus_inf_only": ([[1, 0], [1, 0]], [[0, -INF], [5, -INF]], "float64"),
    "positive_at_minus_inf_soft": ([[0.5, 1, 0, 0.25]], [[0, -INF, 3, 1]], "float32"),
    "soft_sides_both_infinite": ([[0.5, 0.25, 0.75, 0.5]], [[0, INF, -INF, 1]], "float32"),
    "log_domain_float32": ([[1, 0], [1, 0]], [[800, 800], [100, 90]], "float32"),
    "log_domain_float64": ([[1, 0, 0]], [[800, 800, -800]], "float64"),
    "soft_sides_overflow": ([[0.5, 1, 0]], [[0, -100, 100]], "float32"),
    "loss_overflows_but_some_gradients_do_not": ([[1, 1, 0], [1, 0, 1]], [[800, 0, 800], [100, 50, -100]], "float32"),
    "loss_overflows_float64": ([[1, 0, 1, 0]], [[2000, 2000, 0, 0]], "float64"),
    "overflow_float16": ([[1, 0], [1, 0]], [[-8, 8], [8, -8]], "float16"),
    "one_label": ([[1], [0]], [[3.0], [-2.0]], "float32"),
    "no_labels": ([[], []], [[], []], "float32"),
    "no_rows": (np.zeros((0, 5)), np.zeros((0, 5)), "float64"),
}


@pytest.mark.parametrize("case", list(BPMLL_EDGE_CASES))
@pytest.mark.parametrize("path", PATHS)
def test_bpmll_edge_cases(path, case):
    y, c, dtype = BPMLL_EDGE_CASES[case]
    y, c = np.array(y, np.float64), np.array(c, np.float64)
    check_bpmll(path, jnp.asarray(y, jnp.float32), jnp.asarray(c).astype(dtype), np.linspace(0.5, 1.5, len(y)))


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


def make_sequences(data, rng, shape):
    log_scales = [data.draw(st.floats(-3, 4), label=f"log10_scale_{v}") for v in "yx"]
    offsets = [data.draw(st.floats(-10, 10), label=f"offset_{v}_in_scales") for v in "yx"]
    coupling = data.draw(st.floats(-1, 1), label="coupling")
    z = rng.standard_normal(shape)
    noise = rng.standard_normal(shape)
    y = (offsets[0] + z) * 10 ** log_scales[0]
    x = (offsets[1] + coupling * z + np.sqrt(1 - coupling**2) * noise) * 10 ** log_scales[1]
    for _ in range(data.draw(st.sampled_from([0, 0, 1, 2]), label="constant_rows")):
        if shape[0]:
            row = rng.integers(shape[0])
            target = y if rng.random() < 0.5 else x
            target[row] = target[row, 0]
    return y, x


def make_mask(data, rng, shape):
    kind = data.draw(st.sampled_from(["none", "scattered", "padding"]), label="mask")
    if kind == "none":
        return None
    if kind == "scattered":
        return rng.random(shape) < data.draw(st.floats(0, 1), label="valid_share")
    return np.arange(shape[1])[None, :] < rng.integers(0, shape[1] + 1, size=(shape[0], 1))


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

    epsilon = float(np.float32(epsilon))  # the handlers' attribute is a float32
    ref = npref.correlation(y_seen, x_seen, mask, epsilon, g_seen, concordance)
    valid = np.ones(shape, bool) if mask is None else mask
    with np.errstate(invalid="ignore", over="ignore"):
        xv, yv = np.where(valid, x_seen, 0), np.where(valid, y_seen, 0)
        steps = np.maximum(valid.sum(axis=1), 1)
        mean_x, mean_y = xv.sum(axis=1) / steps, yv.sum(axis=1) / steps
        centred_x = np.where(valid, xv - mean_x[:, None], 0)
        centred_y = np.where(valid, yv - mean_y[:, None], 0)
        var_x, var_y = (centred_x**2).sum(axis=1) / steps, (centred_y**2).sum(axis=1) / steps
        spread = np.sqrt(var_x) + np.sqrt(var_y)
        condition = 1 + (np.abs(mean_x) + np.abs(mean_y)) / np.where(spread > 0, spread, 1)
        rtol = (64 * ACC_EPS[dtype] * condition * np.sqrt(steps))[:, None]
        loss_tol = rtol * (1 + np.abs(1 - ref.loss)) + 2 * OUT_EPS[dtype] * np.abs(ref.loss)
        k = 2.0 if concordance else 1.0
        if concordance:
            denominator = var_x + var_y + (mean_x - mean_y) ** 2 + epsilon
        else:
            denominator = np.sqrt(var_x * var_y) + epsilon
        term = k * np.where(valid, np.abs(g_seen), 0).max(axis=1, initial=0) * np.maximum(
            np.abs(centred_x).max(axis=1, initial=0), np.abs(centred_y).max(axis=1, initial=0)
        )
        term = np.where(denominator > 0, term / np.where(denominator > 0, denominator, 1), 0)
        grad_peak = np.maximum(
            np.nan_to_num(np.abs(ref.grad_x), nan=0).max(axis=1, initial=0),
            np.nan_to_num(np.abs(ref.grad_y), nan=0).max(axis=1, initial=0),
        )
        scale = np.maximum(term, grad_peak)[:, None]
        grad_tols = [
            rtol * scale + 2 * OUT_EPS[dtype] * np.abs(np.nan_to_num(want)) + 4 * TINY[dtype]
            for want in (ref.grad_x, ref.grad_y)
        ]
    assert_elements(loss, ref.loss, loss_tol, ref.exact_loss, dtype, "loss")
    assert_elements(grad_x, ref.grad_x, grad_tols[0], ref.exact_grad, dtype, "grad_y_pred")
    assert_elements(grad_y, ref.grad_y, grad_tols[1], ref.exact_grad, dtype, "grad_y_true")


@pytest.mark.parametrize("path", PATHS)
@PROFILE
@given(data=st.data())
def test_correlation_and_ccc_match_the_numpy_reference(path, data):
    concordance = data.draw(st.booleans(), label="concordance")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    shape = (data.draw(st.integers(0, 5), label="rows"), data.draw(lengths(60), label="steps"))
    rank_3 = data.draw(st.booleans(), label="rank_3")
    epsilon = data.draw(st.sampled_from([0.0, 1e-7, 1e-3, 1.0]), label="epsilon")
    mask_dtype = data.draw(st.sampled_from(["bool", "bool", "float32", "int32", "uint8"]), label="mask_dtype")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    y, x = make_sequences(data, rng, shape)
    mask = make_mask(data, rng, shape)
    if mask is not None and data.draw(st.booleans(), label="nan_padding"):
        x[~mask] = np.nan  # masked steps may hold anything
    specials = data.draw(st.sampled_from([0, 0, 1, 3]), label="non_finite_values")
    inject(rng, y, specials // 2, [np.nan, np.inf, -np.inf])
    inject(rng, x, specials - specials // 2, [np.nan, np.inf, -np.inf])
    check_correlation(
        path, concordance, y, x, rng.uniform(0.5, 1.5, size=shape), mask, epsilon, dtype, rank_3, mask_dtype
    )


_Y = [0.5, -1.0, 2.0, 0.25, 1.5]
_X = [0.2, -0.7, 1.1, 0.9, 0.4]
CORRELATION_EDGE_CASES = {
    "nan_in_y_pred": ([_Y, _Y], [[0.2, NAN, 1.1, 0.9, 0.4], _X], None, 1e-7, "float32"),
    "inf_in_y_pred": ([_Y, _Y], [_X, [0.2, -0.7, INF, 0.9, 0.4]], None, 1e-7, "float32"),
    "minus_inf_in_y_true": ([[0.5, -1.0, 2.0, -INF, 1.5], _Y], [_X, _X], None, 1e-7, "float64"),
    "nan_in_both_float16": ([[NAN, -1.0, 2.0, 0.25, 1.5], _Y], [_X, [0.2, -0.7, 1.1, 0.9, NAN]], None, 1e-3, "float16"),
    "inf_bfloat16": ([_Y, _Y], [[INF, -0.7, 1.1, 0.9, 0.4], _X], None, 1e-3, "bfloat16"),
    "masked_nan_and_inf_ignored": (
        [[0.5, -1.0, NAN, 0.25, 1.5], _Y],
        [[0.2, -0.7, 1.1, INF, 0.4], [0.2, -0.7, 1.1, 0.9, -INF]],
        [[1, 1, 0, 0, 1], [1, 1, 1, 1, 0]],
        1e-7,
        "float32",
    ),
    "nan_at_valid_step_masked_row": ([_Y, _Y], [[NAN, -0.7, 1.1, 0.9, 0.4], _X], [[1, 1, 0, 1, 1], [1] * 5], 1e-7, "float32"),
    "constant_rows": ([[1.5] * 5, _Y, [0.3] * 5], [_X, [-2.0] * 5, [0.3] * 5], None, 1e-7, "float32"),
    "constant_equal_rows_epsilon_0": ([[0.3] * 5, _Y], [[0.3] * 5, _X], None, 0.0, "float64"),
    "one_and_no_valid_step": ([_Y, _Y, _Y], [_X, _X, _X], [[0, 0, 1, 0, 0], [0] * 5, [1] * 5], 1e-7, "float32"),
    "one_step": ([[0.5], [2.0]], [[0.1], [-1.0]], None, 1e-7, "float32"),
    "no_rows": (np.zeros((0, 4)), np.zeros((0, 4)), None, 1e-7, "float64"),
}


@pytest.mark.parametrize("concordance", [False, True], ids=["pearson", "ccc"])
@pytest.mark.parametrize("case", list(CORRELATION_EDGE_CASES))
@pytest.mark.parametrize("path", PATHS)
def test_correlation_edge_cases(path, case, concordance):
    y, x, mask, epsilon, dtype = CORRELATION_EDGE_CASES[case]
    y, x = np.array(y, np.float64), np.array(x, np.float64)
    mask = None if mask is None else np.array(mask, bool)
    check_correlation(path, concordance, y, x, np.linspace(0.5, 1.5, x.size).reshape(x.shape), mask, epsilon, dtype)


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


@pytest.mark.parametrize("dtype", DTYPES)
def test_bpmll_jit_is_two_custom_calls(dtype):
    rows, labels = 4, 3001
    y = jnp.zeros((rows, labels), jnp.float32)
    c = jnp.zeros((rows, labels), dtype)
    lowered = jax.jit(jax.value_and_grad(lambda c: jo.bpmll_loss(y, c).sum())).lower(c)
    text = lowered.as_text()
    assert custom_call_count(text, jo.TARGET_BPMLL_LOSS) == 1
    assert custom_call_count(text, jo.TARGET_BPMLL_LOSS_GRAD) == 1
    compiled = lowered.compile().as_text()
    for t in (text, compiled):
        assert f"{labels}x{labels}" not in t and f"{labels},{labels}" not in t
    assert f'custom_call_target="{jo.TARGET_BPMLL_LOSS}"' in compiled
    assert f'custom_call_target="{jo.TARGET_BPMLL_LOSS_GRAD}"' in compiled


@pytest.mark.parametrize("with_mask", [False, True])
def test_correlation_jit_is_two_custom_calls(with_mask):
    rows, steps = 4, 3001
    x = jnp.zeros((rows, steps), jnp.float32)
    mask = jnp.ones((rows, steps), bool) if with_mask else None
    lowered = jax.jit(jax.value_and_grad(lambda x: jo.correlation_loss(x, x, mask=mask).sum())).lower(x)
    text = lowered.as_text()
    assert custom_call_count(text, jo.TARGET_CORRELATION_LOSS) == 1
    assert custom_call_count(text, jo.TARGET_CORRELATION_LOSS_GRAD) == 1
    compiled = lowered.compile().as_text()
    for t in (text, compiled):
        assert f"{steps}x{steps}" not in t and f"{steps},{steps}" not in t
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
        (F32, np.zeros((2, 3, 2), np.float32), {}, r"y_pred must be \(batch, steps\) or \(batch, steps, 1\); got shape \(2, 3, 2\)"),
        (np.zeros(6, np.float32), F32, {}, r"y_true must be \(batch, steps\) or \(batch, steps, 1\); got shape \(6,\)"),
        (np.zeros((2, 4), np.float32), F32, {}, r"y_true and y_pred must have the same \(batch, steps\); got y_true \(2, 4\) and y_pred \(2, 3\)"),
        (F32, F32, {"epsilon": -1.0}, r"epsilon must be finite and >= 0; got -1.0"),
        (F32, F32, {"epsilon": float("nan")}, r"epsilon must be finite and >= 0; got nan"),
        (F32, F32, {"epsilon": float("inf")}, r"epsilon must be finite and >= 0; got inf"),
        (F32, F32, {"epsilon": 1e39}, r"epsilon must be at most 3.402823e\+38 \(the float32 maximum\); got 1e\+39"),
        (F32, F32, {"epsilon": True}, r"epsilon must be a Python float >= 0; got True"),
        (F32, F32, {"epsilon": np.float32(1e-7)}, r"epsilon must be a Python float >= 0; got"),
        (F32, F32, {"epsilon": jnp.float32(1e-7)}, r"epsilon must be a Python float >= 0; got"),
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
