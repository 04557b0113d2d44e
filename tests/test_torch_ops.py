"""The PyTorch ops (python/tf_fused_losses/_torch_ops.py): torch.library
custom ops over the core's plain C entry points (cc/core/c_api/tfl_c_api.h)
through ctypes. opcheck of every op; gradcheck in float64; values and
gradients against the float64 numpy references
(tests/helpers/numpy_reference.py) with the error bounds, edge cases and
drawn examples of tests/helpers/reference_checks.py, for every dtype torch
has and every label dtype; torch.compile(fullgraph=True) of a training
step; bits that do not depend on torch.set_num_threads; a Keras fit on
KERAS_BACKEND=torch that runs the fused ops. Needs torch and
libtfl_core.so; no TensorFlow, no JAX.
"""

import ctypes
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the PyTorch ops need torch (pip install torch)")
from helpers import numpy_reference as npref  # noqa: E402
from helpers import reference_checks as rc  # noqa: E402
from helpers import subprocess_env  # noqa: E402
from helpers.reference_checks import DTYPES, INF, NAN  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tf_fused_losses import _core_c_api, _torch_ops as to  # noqa: E402

try:
    PLATFORMS = to.load()
except RuntimeError as e:
    pytest.skip(f"the core's C entry points do not load: {e}", allow_module_level=True)

PROFILE = settings(
    max_examples=int(os.environ.get("TFL_TORCH_EXAMPLES", "30")),
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
TORCH_DTYPES = {name: getattr(torch, name) for name in DTYPES + ["int32", "int64", "uint8", "bool"]}


def as_input(values, dtype, requires_grad=False):
    """The tensor a call gets, and its exact values in float64."""
    t = torch.as_tensor(np.asarray(values, np.float64)).to(TORCH_DTYPES[dtype])
    if requires_grad:
        t.requires_grad_(True)
    return t, to64(t)


def to64(t):
    return t.detach().to(torch.float64).numpy()


def assert_bit_equal(a, b, what=""):
    assert a.shape == b.shape and a.dtype == b.dtype, (what, a.shape, b.shape, a.dtype, b.dtype)
    a, b = a.detach(), b.detach()
    if a.element_size() == 2:
        a, b = a.view(torch.int16), b.view(torch.int16)
    assert torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan())
                                 and torch.equal(a.nan_to_num(), b.nan_to_num())), what


@pytest.fixture
def calls(monkeypatch):
    """Records each call into the core: (kernel, device type, arguments)."""
    recorded = []
    run = to._run

    def recording(kernel, device, *arguments):
        recorded.append((kernel, device.type, arguments))
        return run(kernel, device, *arguments)

    monkeypatch.setattr(to, "_run", recording)
    return recorded


# --------------------------------------------------------------------------
# The ops: schema, fake, autograd, dispatch
# --------------------------------------------------------------------------


def test_the_ops_are_registered_with_cpu_kernels():
    assert "cpu" in PLATFORMS
    for name in ("bpmll_loss", "bpmll_ids_loss", "bpmll_loss_grad", "correlation_loss", "correlation_loss_grad"):
        assert hasattr(torch.ops.tfl, name)
    # ctypes.CDLL (not PyDLL): the GIL is released for the length of each call.
    library = _core_c_api.library()["library"]
    assert isinstance(library, ctypes.CDLL) and not isinstance(library, ctypes.PyDLL)


def bpmll_samples(rng):
    for dtype, label_dtype in [("float32", "float32"), ("float64", "bool"), ("bfloat16", "int64"),
                               ("float16", "uint8"), ("float32", "int32")]:
        y = torch.as_tensor(rng.random((4, 9)) < 0.4).to(TORCH_DTYPES[label_dtype])
        c = torch.as_tensor(rng.standard_normal((4, 9))).to(TORCH_DTYPES[dtype]).requires_grad_(True)
        yield y, c


def correlation_samples(rng):
    for dtype in DTYPES:
        for with_mask in (False, True):
            for concordance in (False, True):
                y = torch.as_tensor(rng.standard_normal((3, 11))).to(TORCH_DTYPES[dtype])
                x = torch.as_tensor(rng.standard_normal((3, 11))).to(TORCH_DTYPES[dtype]).requires_grad_(True)
                mask = torch.as_tensor(rng.random((3, 11)) < 0.7) if with_mask else None
                yield y, x, mask, 1e-7, concordance


def test_opcheck_bpmll(rng):
    for y, c in bpmll_samples(rng):
        torch.library.opcheck(torch.ops.tfl.bpmll_loss, (y, c))
        loss, cached = torch.ops.tfl.bpmll_loss(y, c.detach())
        torch.library.opcheck(torch.ops.tfl.bpmll_loss_grad, (torch.rand_like(loss), cached))


def test_opcheck_bpmll_ids(rng):
    for dtype, id_dtype in [("float32", torch.int32), ("float64", torch.int64), ("bfloat16", torch.int64)]:
        ids = torch.tensor([[3, -1, 0], [8, 8, -1], [-1, -1, -1], [1, 2, 4]], dtype=id_dtype)
        c = torch.as_tensor(rng.standard_normal((4, 9))).to(TORCH_DTYPES[dtype]).requires_grad_(True)
        torch.library.opcheck(torch.ops.tfl.bpmll_ids_loss, (ids, c))


def test_opcheck_correlation(rng):
    for y, x, mask, epsilon, concordance in correlation_samples(rng):
        torch.library.opcheck(torch.ops.tfl.correlation_loss, (y, x, mask, epsilon, concordance))
        y.requires_grad_(True)
        torch.library.opcheck(torch.ops.tfl.correlation_loss, (y, x, mask, epsilon, concordance))
        loss, stats = torch.ops.tfl.correlation_loss(y.detach(), x.detach(), mask, epsilon, concordance)
        for want in (False, True):
            torch.library.opcheck(
                torch.ops.tfl.correlation_loss_grad,
                (torch.rand_like(loss), y.detach(), x.detach(), mask, stats, epsilon, concordance, want),
            )


def test_gradcheck_float64(rng):
    y = torch.as_tensor(rng.random((4, 13)) < 0.4, dtype=torch.float64)
    c = torch.as_tensor(rng.standard_normal((4, 13)), dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda c: to.bpmll_loss(y, c), (c,))
    t = torch.as_tensor(rng.standard_normal((3, 17)), dtype=torch.float64).requires_grad_(True)
    x = torch.as_tensor(rng.standard_normal((3, 17)), dtype=torch.float64).requires_grad_(True)
    mask = torch.as_tensor(rng.random((3, 17)) < 0.7)
    for concordance in (False, True):
        for m in (None, mask):
            assert torch.autograd.gradcheck(
                lambda t, x: to.correlation_loss(t, x, mask=m, concordance=concordance, epsilon=1e-7), (t, x)
            )


@pytest.mark.parametrize("concordance", [False, True])
def test_y_true_gradient_only_when_asked(concordance, rng, calls):
    y = torch.as_tensor(rng.standard_normal((3, 17)))
    x = torch.as_tensor(rng.standard_normal((3, 17))).requires_grad_(True)
    g = torch.as_tensor(rng.uniform(0.5, 1.5, (3, 17)))

    def grads(y, x):
        (to.correlation_loss(y, x, concordance=concordance) * g).sum().backward()
        backward = [args for kernel, _, args in calls if kernel == "correlation_loss_grad"]
        calls.clear()
        return backward[-1]

    only_x = grads(y, x)
    assert only_x[10] == 0, "grad_y_true was computed"
    grad_x = x.grad.clone()
    x.grad = None
    y.requires_grad_(True)
    both = grads(y, x)
    assert both[10] != 0
    assert_bit_equal(x.grad, grad_x)
    ref = npref.correlation(y.detach().numpy(), x.detach().numpy(), None, float(np.float32(1e-7)), g.numpy(),
                            concordance)
    np.testing.assert_allclose(x.grad.numpy(), ref.grad_x, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(y.grad.numpy(), ref.grad_y, rtol=1e-9, atol=1e-12)


def test_backward_gets_no_zeros_for_the_residual_output(rng):
    """cached_grad and row_stats are residuals: autograd must not fill a
    (batch, labels) tensor of zeros as their gradient each step (it cost
    more than the fused op at 256 x 1000)."""
    y = torch.as_tensor(rng.random((64, 500)) < 0.3, dtype=torch.float32)
    x = torch.as_tensor(rng.standard_normal((64, 500)), dtype=torch.float32).requires_grad_(True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        torch.autograd.grad(to.bpmll_loss(y, x).mean(), (x,))
        torch.autograd.grad(to.correlation_loss(y, x, concordance=True).mean(), (x,))
    names = {event.name for event in prof.events()}
    assert {"tfl::bpmll_loss_grad", "tfl::correlation_loss_grad"} <= names
    assert not names & {"aten::zeros", "aten::zero_"}, sorted(names)


# --------------------------------------------------------------------------
# BP-MLL against the numpy reference
# --------------------------------------------------------------------------


def bpmll_loss_and_grad(y, c, g):
    c = c.detach().requires_grad_(True)
    loss = to.bpmll_loss(y, c)
    loss.backward(g)
    return loss.detach(), c.grad


def check_bpmll(y, c, upstream):
    dtype = str(c.dtype).rpartition(".")[2]
    g, g_seen = as_input(upstream, dtype)
    loss, grad = bpmll_loss_and_grad(y, c, g)
    assert loss.dtype == c.dtype and loss.shape == c.shape[:1]
    assert grad.dtype == c.dtype and grad.shape == c.shape
    # As the JAX path: the gradient is cached in y_pred's dtype before the
    # scaling by g, and elements whose factor underflows may flush.
    rc.check_bpmll(to64(loss), to64(grad), to64(y), to64(c), g_seen, dtype, pairwise=True, cached_grad=True,
                   factor_flush=True)


@PROFILE
@given(data=st.data())
def test_bpmll_matches_the_numpy_reference(data):
    y, c, upstream, dtype, label_dtype = rc.draw_bpmll_example(data)
    check_bpmll(as_input(y, label_dtype)[0], as_input(c, dtype)[0], upstream)


BPMLL_EDGE_CASES = {
    **rc.BPMLL_EDGE_CASES,
    "one_label": ([[1], [0]], [[3.0], [-2.0]], "float32"),
    "no_labels": ([[], []], [[], []], "float32"),
    "no_rows": (np.zeros((0, 5)), np.zeros((0, 5)), "float64"),
}


@pytest.mark.parametrize("case", list(BPMLL_EDGE_CASES))
def test_bpmll_edge_cases(case):
    y, c, upstream, dtype = rc.bpmll_edge_case(BPMLL_EDGE_CASES[case])
    check_bpmll(as_input(y, "float32")[0], as_input(c, dtype)[0], upstream)


@pytest.mark.parametrize("label_dtype", list(TORCH_DTYPES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_bpmll_label_dtypes_read_as_is(label_dtype, dtype, rng):
    """Every label dtype gives the float32 labels' bits (no cast)."""
    y = (rng.random((6, 37)) < 0.3).astype(np.float64)
    c = as_input(rng.standard_normal((6, 37)) * 3, dtype)[0]
    g = as_input(rng.uniform(0.5, 1.5, 6), dtype)[0]
    loss, grad = bpmll_loss_and_grad(as_input(y, label_dtype)[0], c, g)
    want_loss, want_grad = bpmll_loss_and_grad(as_input(y, "float32")[0], c, g)
    assert_bit_equal(loss, want_loss, "loss")
    assert_bit_equal(grad, want_grad, "grad")


@pytest.mark.parametrize(
    "label_dtype, bad", [("float32", 2.0), ("float32", NAN), ("float64", -INF), ("int32", -1), ("uint8", 7)]
)
def test_bpmll_names_the_first_bad_label(label_dtype, bad):
    y = np.zeros((3, 6))
    y[:, 0] = 1
    y[1, 4] = bad
    y[2, 1] = bad
    with pytest.raises(ValueError, match=r"labels in \[0, 1\]; y_true\[1, 4\] = "):
        to.bpmll_loss(as_input(y, label_dtype)[0], torch.zeros(3, 6))


def test_bpmll_refuses_bad_arguments():
    with pytest.raises(ValueError, match="y_pred must be one of float16"):
        to.bpmll_loss(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match="same shape"):
        to.bpmll_loss(torch.zeros(2, 4), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="rank 2"):
        to.bpmll_loss(torch.zeros(2, 3, 1), torch.zeros(2, 3, 1))


def test_bpmll_large(rng):
    """64 x 3000 (pieces of a row), float32 and float64."""
    y = (rng.random((64, 3000)) < 0.05).astype(np.float64)
    for dtype in ("float32", "float64"):
        check_bpmll(as_input(y, "float32")[0], as_input(rng.standard_normal((64, 3000)) * 4, dtype)[0],
                    rng.uniform(0.5, 1.5, 64))


# --------------------------------------------------------------------------
# Pearson and CCC against the numpy reference
# --------------------------------------------------------------------------


def correlation_loss_and_grads(y, x, g, mask, epsilon, concordance):
    y = y.detach().requires_grad_(True)
    x = x.detach().requires_grad_(True)
    loss = to.correlation_loss(y, x, epsilon=epsilon, mask=mask, concordance=concordance)
    loss.backward(g)
    return loss.detach(), y.grad, x.grad


def check_correlation(concordance, y, x, upstream, mask, epsilon, dtype, rank_3=False, mask_dtype="bool"):
    shape = x.shape
    y_t, y_seen = as_input(y, dtype)
    x_t, x_seen = as_input(x, dtype)
    g_t, g_seen = as_input(upstream, dtype)
    if rank_3:
        y_t, x_t = y_t[..., None], x_t[..., None]
    mask_t = None if mask is None else as_input(mask, mask_dtype)[0]
    loss, grad_y, grad_x = correlation_loss_and_grads(y_t, x_t, g_t, mask_t, epsilon, concordance)
    assert loss.dtype == x_t.dtype and tuple(loss.shape) == shape
    assert grad_y.dtype == x_t.dtype and grad_x.dtype == x_t.dtype
    assert grad_y.shape == y_t.shape and grad_x.shape == x_t.shape
    loss, grad_y, grad_x = (to64(t).reshape(shape) for t in (loss, grad_y, grad_x))
    rc.check_correlation(loss, grad_y, grad_x, y_seen, x_seen, mask, epsilon, g_seen, concordance, dtype)


@PROFILE
@given(data=st.data())
def test_correlation_and_ccc_match_the_numpy_reference(data):
    e = rc.draw_correlation_example(data, mask_dtypes=["bool", "bool", "float32", "int32", "uint8"])
    check_correlation(e.concordance, e.y, e.x, e.upstream, e.mask, e.epsilon, e.dtype, e.rank_3, e.mask_dtype)


CORRELATION_EDGE_CASES = {
    **rc.CORRELATION_EDGE_CASES,
    "one_step": ([[0.5], [2.0]], [[0.1], [-1.0]], None, 1e-7, "float32"),
    "no_rows": (np.zeros((0, 4)), np.zeros((0, 4)), None, 1e-7, "float64"),
}


@pytest.mark.parametrize("concordance", [False, True], ids=["pearson", "ccc"])
@pytest.mark.parametrize("case", list(CORRELATION_EDGE_CASES))
def test_correlation_edge_cases(case, concordance):
    y, x, upstream, mask, epsilon, dtype = rc.correlation_edge_case(CORRELATION_EDGE_CASES[case])
    check_correlation(concordance, y, x, upstream, mask, epsilon, dtype)


def test_correlation_casts_y_true_to_y_preds_dtype(rng):
    y = rng.integers(-5, 5, (3, 20))
    x = torch.as_tensor(rng.standard_normal((3, 20))).bfloat16()
    for y_in in (torch.as_tensor(y, dtype=torch.int32), torch.as_tensor(y, dtype=torch.float64), 
                 torch.as_tensor(y > 0)):
        got = to.correlation_loss(y_in, x)
        assert got.dtype == torch.bfloat16
        assert_bit_equal(got, to.correlation_loss(y_in.bfloat16(), x))


def test_correlation_refuses_bad_arguments():
    x = torch.zeros(2, 5)
    with pytest.raises(ValueError, match="epsilon must be finite and >= 0"):
        to.correlation_loss(x, x, epsilon=-1.0)
    with pytest.raises(ValueError, match=r"mask must have shape \(batch, steps\) = \(2, 5\)"):
        to.correlation_loss(x, x, mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="concordance must be a bool"):
        to.correlation_loss(x, x, concordance=1)


def test_correlation_large(rng):
    """64 x 3000, Pearson and CCC, with a padding mask."""
    shape = (64, 3000)
    y = rng.standard_normal(shape)
    x = 0.5 * y + rng.standard_normal(shape)
    mask = np.arange(shape[1])[None, :] < rng.integers(0, shape[1] + 1, size=(shape[0], 1))
    for concordance in (False, True):
        check_correlation(concordance, y, x, rng.uniform(0.5, 1.5, shape), mask, 1e-7, "float32")


# --------------------------------------------------------------------------
# Threads, torch.compile
# --------------------------------------------------------------------------


def test_bits_do_not_depend_on_the_thread_count(rng):
    """Shapes that take the pieces of rows (few long rows) and whole rows."""
    before = torch.get_num_threads()
    cases = []
    for shape in ((3, 70000), (40, 3000)):
        y = torch.as_tensor(rng.random(shape) < 0.1, dtype=torch.float32)
        c = torch.as_tensor(rng.standard_normal(shape) * 3, dtype=torch.float32)
        g = torch.as_tensor(rng.uniform(0.5, 1.5, shape[0]), dtype=torch.float32)
        cases.append(lambda y=y, c=c, g=g: bpmll_loss_and_grad(y, c, g))
    for shape in ((2, 300000), (64, 5000)):
        y = torch.as_tensor(rng.standard_normal(shape), dtype=torch.float32)
        x = torch.as_tensor(rng.standard_normal(shape), dtype=torch.float32)
        g = torch.as_tensor(rng.uniform(0.5, 1.5, shape), dtype=torch.float32)
        mask = torch.as_tensor(rng.random(shape) < 0.9)
        for concordance in (False, True):
            cases.append(lambda y=y, x=x, g=g, m=mask, k=concordance: correlation_loss_and_grads(y, x, g, m, 1e-7, k))
    try:
        results = {}
        for threads in (1, 2, 4):
            torch.set_num_threads(threads)
            results[threads] = [case() for case in cases]
    finally:
        torch.set_num_threads(before)
    for threads in (2, 4):
        for i, (got, want) in enumerate(zip(results[threads], results[1])):
            for a, b in zip(got, want):
                assert_bit_equal(a, b, f"case {i}, {threads} threads")


def compiled_training(kind, rng):
    """The losses of a few steps of a Linear model whose forward and
    backward run under torch.compile(fullgraph=True)."""
    torch.manual_seed(0)
    features, outputs = 8, 12
    x = torch.as_tensor(rng.standard_normal((32, features)), dtype=torch.float32)
    if kind == "bpmll":
        y = torch.as_tensor(x.numpy() @ rng.standard_normal((features, outputs)) > 0.5, dtype=torch.float32)
    else:
        y = torch.as_tensor(x.numpy() @ rng.standard_normal((features, outputs)), dtype=torch.float32)
    model = torch.nn.Linear(features, outputs)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def objective(x, y):
        pred = model(x)
        if kind == "bpmll":
            return to.bpmll_loss(y, pred).mean()
        return to.correlation_loss(y, pred, concordance=kind == "ccc").mean()

    # The model, the loss and (through AOTAutograd) their backward compile
    # into one graph each; the optimizer's Python stays outside, as usual.
    compiled = torch.compile(objective, fullgraph=True)
    losses = []
    for _ in range(8):
        optimizer.zero_grad()
        loss = compiled(x, y)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("kind", ["bpmll", "correlation", "ccc"])
def test_torch_compile_fullgraph_training_step(kind, rng, calls):
    torch._dynamo.reset()
    losses = compiled_training(kind, rng)
    assert losses[-1] < losses[0], losses
    kernels = {kernel for kernel, _, _ in calls}
    forward = "bpmll_loss" if kind == "bpmll" else "correlation_loss"
    assert kernels == {forward, forward + "_grad"}, kernels


# --------------------------------------------------------------------------
# Keras on the torch backend
# --------------------------------------------------------------------------

KERAS_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    os.environ["KERAS_BACKEND"] = "torch"
    import numpy as np
    import keras
    import tf_fused_losses as tfl
    from tf_fused_losses import _torch_ops
    from helpers import make_loss, make_model, task_data

    kernels = []
    run = _torch_ops._run
    def recording(kernel, device, *arguments):
        kernels.append(kernel)
        return run(kernel, device, *arguments)
    _torch_ops._run = recording

    out = {}
    for kind in ("bpmll", "correlation", "ccc"):
        kernels.clear()
        rng = np.random.default_rng(0)
        x, y = task_data(kind, rng, 64)
        model = make_model(kind, x, y)
        model.compile(optimizer=keras.optimizers.Adam(0.01), loss=make_loss(kind))
        history = model.fit(x, y, batch_size=16, epochs=3, verbose=0, sample_weight=rng.uniform(0.5, 1.5, len(x)))
        out[kind] = {"losses": history.history["loss"], "kernels": sorted(set(kernels))}
    out["modules"] = sorted(m for m in ("tensorflow", "jax") if m in sys.modules)

    # Where the core does not load: the keras.ops forms, with one warning.
    import warnings
    import torch
    from tf_fused_losses import _dispatch
    def broken():
        raise RuntimeError("no core library here")
    _torch_ops.load = broken
    _dispatch.reset_torch_state()
    kernels.clear()
    y = torch.tensor([[1.0, 0.0, 1.0]])
    c = torch.tensor([[0.5, -0.5, 2.0]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fallback = [float(tfl.bpmll_loss(y, c)[0]) for _ in range(3)]
    out["fallback"] = {"losses": fallback, "kernels": kernels, "warnings": [str(w.message) for w in caught]}
    print(json.dumps(out))
    """
)


def test_keras_fit_on_the_torch_backend_runs_the_fused_ops(tmp_path):
    if importlib.util.find_spec("keras") is None:
        pytest.skip("Keras is not installed")
    script = tmp_path / "keras_fit.py"
    script.write_text(KERAS_SCRIPT)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=subprocess_env({"KERAS_BACKEND": "torch"}), timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for kind, forward in (("bpmll", "bpmll_loss"), ("correlation", "correlation_loss"), ("ccc", "correlation_loss")):
        assert out[kind]["kernels"] == sorted([forward, forward + "_grad"]), out
        losses = out[kind]["losses"]
        assert all(np.isfinite(losses)) and losses[-1] < losses[0], (kind, losses)
    assert out["modules"] == []
    fallback = out["fallback"]
    assert fallback["kernels"] == [] and len(set(fallback["losses"])) == 1
    assert len(fallback["warnings"]) == 1, fallback
    assert "keras.ops forms" in fallback["warnings"][0] and "no core library here" in fallback["warnings"][0]
