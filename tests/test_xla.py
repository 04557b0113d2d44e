"""The fused ops inside XLA: jit_compile'd functions lower them to typed-FFI
custom calls (cc/xla) that run the same CPU row drivers as the OpKernels.
Results must equal the OpKernels' bit for bit (both reduce every row in the
same fixed order, whatever the thread count), the HLO must hold the custom
calls, and Keras' fit(jit_compile=True) must train with them."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_fused_losses as tfl
from helpers import last_json_line, make_loss, make_model, run_script, task_data

FLOATS = ["float16", "bfloat16", "float32", "float64"]
LABELS = ["float16", "bfloat16", "float32", "float64", "int32", "int64", "uint8", "bool"]
# B = 0, L = 1, odd, one past a chunk, whole rows, the piece path (few long rows).
BPMLL_SHAPES = [(0, 5), (3, 1), (4, 37), (3, 2049), (64, 300), (2, 70001)]
SEQUENCE_SHAPES = [(0, 5), (2, 1), (4, 37), (3, 2049), (2, 140001)]


def bits(x):
    return np.asarray(x).view(np.uint8)


def assert_same_bits(got, want, what):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, (what, got.shape, want.shape, got.dtype, want.dtype)
    assert np.array_equal(bits(got), bits(want)), f"{what}: XLA and the op differ at {np.argwhere(bits(got) != bits(want))[:5]}"


def bpmll_with_grad(y, c):
    with tf.GradientTape() as tape:
        tape.watch(c)
        loss = tfl.bpmll_loss(y, c)
    return loss, tape.gradient(loss, c)


def sequence_with_grads(kind, y, x, mask, want_grad_y=True):
    fn = tfl.ccc_loss if kind == "ccc" else tfl.correlation_loss
    with tf.GradientTape() as tape:
        tape.watch([x, y] if want_grad_y else [x])
        loss = fn(y, x, mask=mask)
    return (loss, *tape.gradient(loss, [x, y] if want_grad_y else [x]))


def bpmll_inputs(rng, shape, dtype, label_dtype):
    y = rng.random(shape) < 0.3
    if label_dtype.startswith(("float", "bfloat")):
        y = np.where(rng.random(shape) < 0.2, rng.random(shape), y)  # some soft labels
    c = rng.normal(scale=3.0, size=shape)
    return tf.cast(tf.constant(y.astype(np.float64)), label_dtype), tf.cast(tf.constant(c), dtype)


def seed_reference(y, c):
    """The seed's formula in float64 (rows with pairs): pairwise where the
    pair tensor is small, else its factored form."""
    y, c = np.asarray(y, np.float64), np.asarray(c, np.float64)
    pos, neg = y * np.exp(-c), (1 - y) * np.exp(c)
    pairs = y.sum(1) * (1 - y).sum(1)
    if y.shape[1] <= 3000:
        return (pos[:, :, None] * neg[:, None, :]).sum(axis=(1, 2)) / pairs
    return pos.sum(1) * neg.sum(1) / pairs


@pytest.mark.parametrize("shape", BPMLL_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", FLOATS)
def test_bpmll_under_xla_equals_the_op_bitwise(rng, shape, dtype):
    y, c = bpmll_inputs(rng, shape, dtype, "float32")
    want = bpmll_with_grad(y, c)
    got = tf.function(bpmll_with_grad, jit_compile=True)(y, c)
    for name, g, w in zip(("loss", "grad"), got, want):
        assert_same_bits(tf.cast(g, tf.float32) if dtype == "bfloat16" else g, tf.cast(w, tf.float32) if dtype == "bfloat16" else w, name)
    if shape[0] and shape[1] > 1 and dtype == "float64":
        has_pairs = (y.numpy().sum(1) > 0) & ((1 - y.numpy()).sum(1) > 0)
        np.testing.assert_allclose(got[0].numpy()[has_pairs], seed_reference(y, c)[has_pairs], rtol=1e-10)


@pytest.mark.parametrize("label_dtype", LABELS)
def test_bpmll_under_xla_takes_every_label_dtype(rng, label_dtype):
    y, c = bpmll_inputs(rng, (6, 129), "float32", label_dtype)
    want = bpmll_with_grad(y, c)
    got = tf.function(bpmll_with_grad, jit_compile=True)(y, c)
    assert_same_bits(got[0], want[0], "loss")
    assert_same_bits(got[1], want[1], "grad")


@pytest.mark.parametrize("shape", SEQUENCE_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("kind", ["pearson", "ccc"])
@pytest.mark.parametrize("masked", [False, True])
def test_sequence_losses_under_xla_equal_the_op_bitwise(rng, shape, dtype, kind, masked):
    x = tf.cast(tf.constant(rng.normal(size=shape)), dtype)
    y = tf.cast(tf.constant(rng.normal(size=shape) + 0.5 * rng.normal(size=shape)), dtype)
    mask = tf.constant(rng.random(shape) < 0.8) if masked else None
    want = sequence_with_grads(kind, y, x, mask)
    got = tf.function(lambda y, x: sequence_with_grads(kind, y, x, mask), jit_compile=True)(y, x)
    for name, g, w in zip(("loss", "grad_x", "grad_y"), got, want):
        as32 = (lambda t: tf.cast(t, tf.float32)) if dtype == "bfloat16" else (lambda t: t)
        assert_same_bits(as32(g), as32(w), name)


def test_sequence_input_of_rank_three_under_xla(rng):
    x = tf.constant(rng.normal(size=(3, 50, 1)), tf.float32)
    y = tf.constant(rng.normal(size=(3, 50, 1)), tf.float32)
    want = sequence_with_grads("ccc", y, x, None)
    got = tf.function(lambda y, x: sequence_with_grads("ccc", y, x, None), jit_compile=True)(y, x)
    for g, w in zip(got, want):
        assert_same_bits(g, w, "ccc (batch, steps, 1)")


def hlo_of(fn, *args):
    return tf.function(fn, jit_compile=True).experimental_get_compiler_ir(*args)(stage="hlo")


def custom_call_targets(hlo):
    return sorted(set(re.findall(r'custom_call_target="([^"]+)"', hlo)))


def test_hlo_holds_the_four_custom_calls(rng):
    y, c = bpmll_inputs(rng, (4, 20), "float32", "float32")
    assert custom_call_targets(hlo_of(bpmll_with_grad, y, c)) == ["tfl_bpmll_loss", "tfl_bpmll_loss_grad"]
    x = tf.constant(rng.normal(size=(3, 30)), tf.float32)
    hlo = hlo_of(lambda y, x: sequence_with_grads("ccc", y, x, None), x, x)
    assert custom_call_targets(hlo) == ["tfl_correlation_loss", "tfl_correlation_loss_grad"]
    assert "API_VERSION_TYPED_FFI" in hlo
    assert "compute_grad_y_true = true" in hlo
    # Nothing of the pure-TF form: no exp over the logits outside the custom calls.
    assert " exponential(" not in hlo_of(lambda y, c: tfl.bpmll_loss(y, c), y, c)


def test_the_skipped_y_true_gradient_is_skipped_under_xla(rng):
    x = tf.constant(rng.normal(size=(3, 30)), tf.float32)
    y = tf.constant(rng.normal(size=(3, 30)), tf.float32)
    hlo = hlo_of(lambda y, x: sequence_with_grads("pearson", y, x, None, want_grad_y=False), y, x)
    assert "compute_grad_y_true = false" in hlo
    want = sequence_with_grads("pearson", y, x, None, want_grad_y=False)
    got = tf.function(lambda y, x: sequence_with_grads("pearson", y, x, None, want_grad_y=False), jit_compile=True)(y, x)
    for g, w in zip(got, want):
        assert_same_bits(g, w, "pearson without y_true's gradient")


def test_bad_labels_under_xla_raise_naming_the_element(rng):
    y = np.zeros((3, 8), np.float32)
    y[:, 0] = 1
    y[2, 5] = 1.5
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape("y_true must hold labels in [0, 1]; y_true[2, 5] = 1.5")):
        tf.function(tfl.bpmll_loss, jit_compile=True)(tf.constant(y), tf.constant(rng.normal(size=(3, 8)), tf.float32))


def test_pure_tf_switch_still_applies_under_xla(rng, pure_tf):
    y, c = bpmll_inputs(rng, (4, 20), "float32", "float32")
    assert custom_call_targets(hlo_of(lambda y, c: tfl.bpmll_loss(y, c), y, c)) == []


@pytest.mark.parametrize("kind", ["bpmll", "correlation", "ccc"])
def test_keras_fit_with_jit_compile_runs_the_kernels_and_matches(kind, monkeypatch):
    # The pure-TF forms would only run if the fused ops were not lowered.
    for name in ("bpmll_loss_pure_tf", "correlation_loss_pure_tf", "ccc_loss_pure_tf"):
        monkeypatch.setattr(tfl._tf_pure, name, lambda *a, **k: (_ for _ in ()).throw(AssertionError("pure path ran")))
    x, y = task_data(kind, np.random.default_rng(3), 96)
    histories, weights = {}, {}
    for jit in (False, True):
        model = make_model(kind, x, y, seed=1)
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss=make_loss(kind), jit_compile=jit)
        histories[jit] = model.fit(x, y, batch_size=32, epochs=3, shuffle=False, verbose=0).history["loss"]
        weights[jit] = [w.numpy() for w in model.weights]
    np.testing.assert_allclose(histories[True], histories[False], rtol=1e-5)
    for a, b in zip(weights[True], weights[False]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_library_loaded_after_an_xla_compile_still_lowers():
    assert last_json_line(run_script("xla_checks.py", "late_load").stdout) == {"late_load": "ok", "finite": True}


def test_xla_results_do_not_depend_on_the_thread_count(tmp_path):
    outputs = {}
    for threads in (1, 2, 4):
        out = tmp_path / f"threads{threads}.npz"
        run_script("xla_checks.py", "threads", threads, out)
        outputs[threads] = dict(np.load(out))
    for threads in (2, 4):
        for name, value in outputs[threads].items():
            assert_same_bits(value, outputs[1][name], f"{name} with {threads} threads vs 1")


def test_saved_model_of_a_jit_compiled_function_reloads(tmp_path):
    run_script("xla_checks.py", "save", tmp_path / "saved")
    run_script("xla_checks.py", "load", tmp_path / "saved", tmp_path / "out.npz")
    out = np.load(tmp_path / "out.npz")
    assert bool(out["hlo"])
    assert out["bpmll"].shape == (5,) and np.all(np.isfinite(out["bpmll"]))
    assert out["ccc"].shape == (3, 40000) and np.all(np.isfinite(out["ccc"]))
