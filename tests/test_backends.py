"""The Keras losses on whichever Keras backend is active (KERAS_BACKEND:
tensorflow in the project's venv; jax where only JAX is installed), without
importing TensorFlow unless the backend is tensorflow: values against the
float64 numpy references, reductions and sample_weight, the Keras mask of
y_pred and a Masking layer, training with fit, .keras files, mixed
precision; which implementation runs (dispatch), and, on JAX, that the
jitted train step holds the fused custom calls where they load. Then, in
fresh interpreters: `import tf_fused_losses` imports no framework, the loss
classes are registered once Keras is imported, and a JAX training run never
imports TensorFlow.
"""

import json
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
from helpers import LOSS_KINDS, make_loss, make_model, numpy_reference as npref, subprocess_env, task_data

import tf_fused_losses as tfl

BACKEND = keras.backend.backend()
SEQUENCE_KINDS = ("correlation", "ccc")
REDUCTIONS = ["sum_over_batch_size", "sum", "mean", "mean_with_sample_weight", "none", None]
EPSILON = float(np.float32(1e-7))  # the losses round epsilon to float32

try:
    from keras.src.backend import set_keras_mask
except ImportError:

    def set_keras_mask(x, mask):
        x._keras_mask = mask


def to_numpy(t):
    return np.asarray(keras.ops.convert_to_numpy(keras.ops.cast(t, "float32")), np.float64)


def reference(kind, y, y_pred, mask=None):
    """The per-sample (BP-MLL) or per-step loss in float64."""
    y, y_pred = np.asarray(y, np.float64), np.asarray(y_pred, np.float64)
    if kind == "bpmll":
        return npref.bpmll_rule(y, y_pred).loss
    y, y_pred = y.reshape(y.shape[:2]), y_pred.reshape(y_pred.shape[:2])
    return npref.correlation(y, y_pred, mask, EPSILON, np.ones(y.shape), kind == "ccc").loss


def reduce(values, weights, reduction, mask=None):
    """What Keras does with per-element losses: weights (and the mask, as
    weights scaled to keep the mean over valid elements), then the reduction."""
    weighted = values * (1 if weights is None else weights)
    if mask is not None:
        if reduction in ("sum_over_batch_size", "mean"):
            weighted = weighted * mask * (mask.size / mask.sum())
        else:
            weighted = weighted * mask
    if reduction in (None, "none"):
        return weighted
    if reduction == "sum":
        return weighted.sum()
    if reduction == "mean_with_sample_weight" and weights is not None:
        # Keras divides by the sum of the weights as the loss hands them on:
        # (batch,) weights of a sequence loss as (batch, 1), one per row.
        return weighted.sum() / np.sum(weights)
    return weighted.sum() / values.size


def sequences(rng, batch, steps):
    y = rng.normal(size=(batch, steps)).astype(np.float32)
    x = (0.5 * y + rng.normal(size=(batch, steps))).astype(np.float32)
    return y, x


def jax_fused_or_skip():
    if BACKEND != "jax":
        pytest.skip(f"the Keras backend is {BACKEND}")
    try:
        from tf_fused_losses import _jax_ops

        _jax_ops.load()
    except (ImportError, RuntimeError) as e:
        pytest.skip(f"the fused JAX ops do not load here, so the keras.ops forms run: {e}")
    return _jax_ops


@pytest.fixture
def fresh_dispatch():
    """Forgets whether the fused JAX ops loaded, before and after a test."""
    from tf_fused_losses import _dispatch

    _dispatch.reset_jax_state()
    yield _dispatch
    _dispatch.reset_jax_state()


# --------------------------------------------------------------------------
# Values, reductions, sample_weight, masks
# --------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bpmll_loss_reductions_and_sample_weight(rng, reduction):
    y = (rng.random((6, 40)) < 0.3).astype(np.float32)
    y[:, 0] = 1
    c = rng.normal(size=(6, 40)).astype(np.float32)
    weights = rng.random(6).astype(np.float32)
    got = to_numpy(tfl.BPMLLLoss(reduction=reduction)(y, c, sample_weight=weights))
    np.testing.assert_allclose(got, reduce(reference("bpmll", y, c), weights, reduction), rtol=2e-5)


@pytest.mark.parametrize("kind", SEQUENCE_KINDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weight_shape", [None, "batch", "batch_steps"])
def test_sequence_loss_reductions_and_sample_weight(rng, kind, reduction, weight_shape):
    y, x = sequences(rng, 5, 30)
    weights = {None: None, "batch": rng.random(5), "batch_steps": rng.random((5, 30))}[weight_shape]
    per_step = reference(kind, y, x)
    broadcast = None if weights is None else (weights[:, None] if weights.ndim == 1 else weights)
    got = to_numpy(make_loss(kind, reduction=reduction)(y[..., None], x[..., None], sample_weight=weights))
    np.testing.assert_allclose(got, reduce(per_step, broadcast, reduction), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("kind", SEQUENCE_KINDS)
@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "sum"])
def test_the_keras_mask_of_y_pred_is_used(rng, kind, reduction):
    y, x = sequences(rng, 4, 40)
    mask = np.arange(40)[None, :] < np.array([[40], [25], [3], [10]])
    y_pred = keras.ops.convert_to_tensor(x[..., None])
    set_keras_mask(y_pred, keras.ops.convert_to_tensor(mask))
    got = to_numpy(make_loss(kind, reduction=reduction)(y[..., None], y_pred))
    np.testing.assert_allclose(got, reduce(reference(kind, y, x, mask), None, reduction, mask), rtol=2e-5)
    unmasked = to_numpy(make_loss(kind, reduction=reduction)(y[..., None], x[..., None]))
    assert abs(unmasked - got) > 1e-3


@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_functional_forms_return_the_backends_arrays(rng, kind):
    """numpy in, the Keras backend's arrays out; values as the reference."""
    x, y = task_data(kind, rng, 8)
    y_pred = rng.normal(size=y.shape).astype(np.float32)
    fn = {"bpmll": tfl.bpmll_loss, "correlation": tfl.correlation_loss, "ccc": tfl.ccc_loss}[kind]
    got = fn(y, y_pred)
    module = type(got).__module__.partition(".")[0]
    assert module in {"tensorflow": ("tensorflow",), "jax": ("jax", "jaxlib"), "torch": ("torch",)}[BACKEND], type(got)
    np.testing.assert_allclose(to_numpy(got), reference(kind, y, y_pred), rtol=2e-5, atol=1e-6)


ZEROS = np.zeros((2, 3), np.float32)
BAD_INPUTS = {
    "labels_rank_3": (
        lambda: tfl.bpmll_loss(np.zeros((2, 3, 1), np.float32), ZEROS),
        r"^y_true must be rank 2 \(batch, labels\); got shape \(2, 3, 1\)$",
    ),
    "complex_logits": (
        lambda: tfl.bpmll_loss(ZEROS, ZEROS.astype(np.complex64)),
        r"^y_pred must be one of float16, bfloat16, float32, float64; got dtype complex64$",
    ),
    "int16_labels": (
        lambda: tfl.bpmll_loss(ZEROS.astype(np.int16), ZEROS),
        r"^y_true must be one of float16, bfloat16, float32, float64, int32, int64, uint8, bool; got dtype int16$",
    ),
    "labels_of_another_shape": (
        lambda: tfl.bpmll_loss(np.zeros((2, 4), np.float32), ZEROS),
        r"^y_true and y_pred must have the same shape; got y_true \(2, 4\) and y_pred \(2, 3\)$",
    ),
    "epsilon_bool": (lambda: tfl.correlation_loss(ZEROS, ZEROS, epsilon=True), r"^epsilon must be a real scalar >= 0; got True$"),
    "epsilon_beyond_float32": (
        lambda: tfl.ccc_loss(ZEROS, ZEROS, epsilon=1e39),
        r"^epsilon must be at most 3\.402823e\+38 \(the float32 maximum\); got 1e\+39$",
    ),
    "rank_1_mask": (
        lambda: tfl.ccc_loss(ZEROS, ZEROS, mask=np.ones(3, bool)),
        r"^mask must have shape \(batch, steps\) = \(2, 3\); got shape \(3,\)$",
    ),
    "complex_targets": (
        lambda: tfl.correlation_loss(ZEROS.astype(np.complex64), ZEROS),
        r"^y_true must be numeric; got dtype complex64$",
    ),
    "steps_of_another_length": (
        lambda: tfl.correlation_loss(np.zeros((2, 4), np.float32), ZEROS),
        r"^y_true and y_pred must have the same \(batch, steps\) and targets; got y_true \(2, 4\) and y_pred \(2, 3\)$",
    ),
    "BPMLLLoss_rank_3": (
        lambda: tfl.BPMLLLoss()(np.zeros((2, 3, 1), np.float32), np.zeros((2, 3, 1), np.float32)),
        r"^y_pred must be rank 2 \(batch, labels\); got shape \(2, 3, 1\)$",
    ),
    "CCCLoss_rank_4": (
        lambda: tfl.CCCLoss()(np.zeros((2, 3, 2, 1), np.float32), np.zeros((2, 3, 2, 1), np.float32)),
        r"^y_true must be \(batch, steps\) or \(batch, steps, targets\); got shape \(2, 3, 2, 1\)$",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_rejected_in_the_tf_paths_words(case):
    """On every backend the checks name the argument, its shape or dtype and
    what was expected, as tests/test_bad_input.py has them on the TF path."""
    call, message = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=message):
        call()


# --------------------------------------------------------------------------
# Training, masks in models, saving, mixed precision
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_fit_lowers_the_loss(rng, kind):
    x, y = task_data(kind, rng, 128)
    model = make_model(kind, x, y)
    model.compile(optimizer=keras.optimizers.Adam(2e-2), loss=make_loss(kind))
    history = model.fit(x, y, batch_size=32, epochs=4, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.9 * losses[0], losses
    prediction = model.predict(x, verbose=0)
    np.testing.assert_allclose(model.evaluate(x, y, batch_size=128, verbose=0), reference(kind, y, prediction).mean(), rtol=1e-4)


@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_fit_and_evaluate_honour_sample_weight(rng, kind):
    """Per-sample weights: evaluate's loss is the weighted mean of the
    reference; rows of weight 0 take no part in training."""
    x, y = task_data(kind, rng, 64)
    weights = np.where(np.arange(64) % 2 == 0, 0.0, rng.uniform(0.5, 2.0, size=64)).astype(np.float32)
    model = make_model(kind, x, y)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=make_loss(kind))
    history = model.fit(x, y, sample_weight=weights, batch_size=16, epochs=2, shuffle=False, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    per_element = reference(kind, y, model.predict(x, verbose=0))
    w = weights if kind == "bpmll" else weights[:, None]
    got = model.evaluate(x, y, sample_weight=weights, batch_size=64, verbose=0)
    np.testing.assert_allclose(got, reduce(per_element, w, "sum_over_batch_size"), rtol=1e-4)
    # The weight-0 half alone: the weights do not move.
    model_zero = make_model(kind, x, y)
    model_zero.compile(optimizer=keras.optimizers.SGD(0.05), loss=make_loss(kind))
    before = [np.asarray(w) for w in model_zero.get_weights()]
    model_zero.fit(x[::2], y[::2], sample_weight=weights[::2], batch_size=16, epochs=1, verbose=0)
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(before, model_zero.get_weights()))


@pytest.mark.parametrize("kind", SEQUENCE_KINDS)
def test_padded_sequences_behind_a_masking_layer(rng, kind):
    lengths = np.array([30, 12, 21, 5])
    u = rng.normal(size=(4, 30, 2)).astype(np.float32)
    y = rng.normal(size=(4, 30)).astype(np.float32)
    mask = np.arange(30)[None, :] < lengths[:, None]
    u[~mask] = 0.0
    y[~mask] = np.nan  # padding the loss must never read
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((30, 2)),
            keras.layers.Masking(0.0),
            keras.layers.GRU(4, return_sequences=True),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=make_loss(kind))
    got = model.evaluate(u, y[..., None], batch_size=4, verbose=0)
    prediction = model.predict(u, verbose=0)[..., 0]
    expected = reference(kind, np.where(mask, y, 0), prediction, mask).sum() / mask.sum()
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    history = model.fit(u, y[..., None], batch_size=4, epochs=3, verbose=0)
    assert np.all(np.isfinite(history.history["loss"])), history.history
    assert all(np.all(np.isfinite(np.asarray(w))) for w in model.get_weights())


@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_keras_file_round_trip(rng, tmp_path, kind):
    x, y = task_data(kind, rng, 32)
    model = make_model(kind, x, y)
    options = {} if kind == "bpmll" else {"epsilon": 1e-4}
    model.compile(optimizer="adam", loss=make_loss(kind, reduction="sum", name="my_loss", **options))
    model.fit(x, y, epochs=1, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.loss) is type(model.loss)
    assert loaded.loss.reduction == "sum" and loaded.loss.name == "my_loss"
    assert loaded.loss.get_config() == model.loss.get_config()
    np.testing.assert_allclose(loaded.evaluate(x, y, verbose=0), model.evaluate(x, y, verbose=0), rtol=1e-6)
    loaded.fit(x, y, epochs=1, verbose=0)


@pytest.fixture
def global_policy(request):
    keras.mixed_precision.set_dtype_policy(request.param)
    yield request.param
    keras.mixed_precision.set_dtype_policy("float32")


@pytest.mark.parametrize("global_policy", ["mixed_float16", "mixed_bfloat16"], indirect=True)
@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_mixed_precision_training(rng, global_policy, kind):
    """The loss in the policy's compute dtype (16-bit in, float32
    accumulation): trains, with loss scaling under mixed_float16."""
    compute_dtype = keras.mixed_precision.Policy(global_policy).compute_dtype
    x, y = task_data(kind, rng, 128)
    model = make_model(kind, x, y)
    loss = make_loss(kind, dtype=global_policy)
    assert loss.dtype == compute_dtype
    per_element = loss.call(keras.ops.cast(y[:8], compute_dtype), keras.ops.cast(model(x[:8]), compute_dtype))
    assert keras.backend.standardize_dtype(per_element.dtype) == compute_dtype
    model.compile(optimizer=keras.optimizers.Adam(2e-2), loss=loss)
    history = model.fit(x, y, batch_size=32, epochs=3, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == (global_policy == "mixed_float16")
    assert all(np.all(np.isfinite(np.asarray(w))) for w in model.get_weights())


# --------------------------------------------------------------------------
# Which implementation runs
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_jitted_train_step_holds_the_fused_custom_calls(rng, kind):
    """Keras' JAX train step, jitted as make_train_function jits it, lowers
    the loss to the fused custom calls, forward and backward."""
    jax_fused_or_skip()
    import jax

    x, y = task_data(kind, rng, 32)
    model = make_model(kind, x, y)
    model.compile(optimizer="sgd", loss=make_loss(kind), jit_compile=True)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)  # builds the optimizer and metrics
    state = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in model.optimizer.variables],
        [v.value for v in model.metrics_variables],
    )
    hlo = jax.jit(model.train_step).lower(state, (x, y)).as_text()
    stem = "tfl_bpmll_loss" if kind == "bpmll" else "tfl_correlation_loss"
    assert f"@{stem}(" in hlo or f'"{stem}"' in hlo, hlo[:2000]
    assert f"@{stem}_grad(" in hlo or f'"{stem}_grad"' in hlo, "no fused gradient call in the train step"


def test_jax_arrays_use_the_keras_ops_forms_with_one_warning_where_the_fused_ops_do_not_load(
    rng, monkeypatch, fresh_dispatch
):
    if BACKEND != "jax":
        pytest.skip(f"the Keras backend is {BACKEND}")
    import jax.numpy as jnp

    from tf_fused_losses import _jax_ops, _keras_ops

    def no_library():
        raise RuntimeError("no handler library (test)")

    monkeypatch.setattr(_jax_ops, "load", no_library)
    monkeypatch.delenv(tfl.PURE_TF_ENV, raising=False)
    y = jnp.asarray((rng.random((3, 9)) < 0.4).astype(np.float32))
    c = jnp.asarray(rng.normal(size=(3, 9)).astype(np.float32))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = tfl.bpmll_loss(y, c)
        second = tfl.ccc_loss(c, c * 0.5 + 1)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "no handler library (test)" in messages[0], messages
    np.testing.assert_array_equal(np.asarray(first), np.asarray(_keras_ops.bpmll_loss(y, c)))
    np.testing.assert_array_equal(
        np.asarray(second), np.asarray(_keras_ops.correlation_loss(c, c * 0.5 + 1, epsilon=1e-7, mask=None, concordance=True))
    )


def test_the_pure_switch_runs_the_keras_ops_forms_on_jax(rng, monkeypatch, fresh_dispatch):
    if BACKEND != "jax":
        pytest.skip(f"the Keras backend is {BACKEND}")
    import jax.numpy as jnp

    from tf_fused_losses import _jax_ops

    def fused(*args, **kwargs):
        raise AssertionError("the fused JAX op ran")

    monkeypatch.setattr(_jax_ops, "bpmll_loss", fused)
    monkeypatch.setattr(_jax_ops, "correlation_loss", fused)
    monkeypatch.setenv(tfl.PURE_TF_ENV, "1")
    y, x = sequences(rng, 3, 11)
    got = tfl.correlation_loss(jnp.asarray(y), jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(got), reference("correlation", y, x), rtol=2e-5, atol=1e-6)
    labels = (rng.random((3, 11)) < 0.4).astype(np.float32)
    np.testing.assert_allclose(np.asarray(tfl.bpmll_loss(labels, jnp.asarray(x))), reference("bpmll", labels, x), rtol=2e-5)
    fit_model_once("bpmll", rng)


def test_fused_jax_ops_run_when_they_load(rng, monkeypatch, fresh_dispatch):
    _jax_ops = jax_fused_or_skip()
    import jax.numpy as jnp

    from tf_fused_losses import _keras_ops

    def keras_form(*args, **kwargs):
        raise AssertionError("the keras.ops form ran")

    monkeypatch.setattr(_keras_ops, "bpmll_loss", keras_form)
    monkeypatch.setattr(_keras_ops, "correlation_loss", keras_form)
    monkeypatch.delenv(tfl.PURE_TF_ENV, raising=False)
    y, x = sequences(rng, 3, 11)
    np.testing.assert_allclose(np.asarray(tfl.ccc_loss(jnp.asarray(y), jnp.asarray(x))), reference("ccc", y, x), rtol=2e-5, atol=1e-6)
    fit_model_once("correlation", rng)


def fit_model_once(kind, rng):
    x, y = task_data(kind, rng, 32)
    model = make_model(kind, x, y)
    model.compile(optimizer="sgd", loss=make_loss(kind))
    assert np.isfinite(model.fit(x, y, batch_size=16, epochs=1, verbose=0).history["loss"][0])


def test_tf_tensors_take_the_tf_path(rng, monkeypatch):
    tf = pytest.importorskip("tensorflow")
    from tf_fused_losses import _keras_ops

    def keras_form(*args, **kwargs):
        raise AssertionError("the keras.ops form ran")

    monkeypatch.setattr(_keras_ops, "bpmll_loss", keras_form)
    monkeypatch.setattr(_keras_ops, "correlation_loss", keras_form)
    y = (rng.random((3, 9)) < 0.4).astype(np.float32)
    c = rng.normal(size=(3, 9)).astype(np.float32)
    try:
        got = tfl.bpmll_loss(tf.constant(y), tf.constant(c))
    except RuntimeError as e:
        # A failure where build_info lists a frontend for this TF minor (the
        # library should load); elsewhere there is none to run: say so.
        if tfl.build_info().get("tensorflow_library"):
            raise AssertionError(f"the TF op library built for TensorFlow {tf.__version__} does not load") from e
        pytest.skip(f"no TF op library for TensorFlow {tf.__version__}: {e}")
    assert isinstance(got, tf.Tensor)
    np.testing.assert_allclose(got.numpy(), reference("bpmll", y, c), rtol=2e-5)


# --------------------------------------------------------------------------
# Fresh interpreters
# --------------------------------------------------------------------------


def run_python(code, extra_env=None, timeout=300):
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(extra_env), timeout=timeout
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


FRAMEWORKS = ("tensorflow", "jax", "keras", "torch")


def test_import_imports_no_framework():
    """`import tf_fused_losses` and the names that need no framework (the
    version, the pure switch, build_info, the functional forms before they
    are called) import neither TensorFlow, JAX, torch nor Keras."""
    loaded = run_python(
        "import json, sys\n"
        "import tf_fused_losses as tfl\n"
        "after_import = [m for m in " + repr(FRAMEWORKS) + " if m in sys.modules]\n"
        "tfl.__version__, tfl.PURE_TF_ENV, tfl.use_pure_tf(), tfl.build_info()\n"
        "tfl.bpmll_loss, tfl.correlation_loss, tfl.ccc_loss, tfl.bpmll, tfl.correlation\n"
        "print(json.dumps({'import': after_import, 'names': [m for m in " + repr(FRAMEWORKS) + " if m in sys.modules]}))\n"
    )
    assert loaded == {"import": [], "names": []}, loaded


def test_loss_classes_are_registered_when_keras_is_imported_after_the_package():
    registered = run_python(
        "import json, sys\n"
        "import tf_fused_losses\n"
        "assert 'keras' not in sys.modules\n"
        "import keras\n"
        "names = ['tf_fused_losses>' + n for n in ('BPMLLLoss', 'CorrelationLoss', 'CCCLoss')]\n"
        "print(json.dumps([getattr(keras.saving.get_registered_object(n), '__name__', None) for n in names]))\n",
        {"KERAS_BACKEND": BACKEND},
    )
    assert registered == ["BPMLLLoss", "CorrelationLoss", "CCCLoss"]


@pytest.mark.slow
@pytest.mark.parametrize("fused", [True, False], ids=["fused_or_fallback", "pure_switch"])
def test_training_with_the_jax_backend_never_imports_tensorflow(fused):
    pytest.importorskip("jax")
    result = run_python(
        "import json, sys, warnings\n"
        "import numpy as np\n"
        "import keras\n"
        "from helpers import make_loss, make_model, task_data\n"
        "out = {}\n"
        "with warnings.catch_warnings():\n"
        "    warnings.simplefilter('ignore', RuntimeWarning)\n"
        "    for kind in ('bpmll', 'correlation', 'ccc'):\n"
        "        x, y = task_data(kind, np.random.default_rng(0), 64)\n"
        "        model = make_model(kind, x, y)\n"
        "        model.compile(optimizer='adam', loss=make_loss(kind))\n"
        "        out[kind] = model.fit(x, y, batch_size=16, epochs=2, verbose=0).history['loss']\n"
        "out['backend'] = keras.backend.backend()\n"
        "out['tensorflow'] = 'tensorflow' in sys.modules\n"
        "print(json.dumps(out))\n",
        {"KERAS_BACKEND": "jax", **({} if fused else {tfl.PURE_TF_ENV: "1"})},
        timeout=600,
    )
    assert result["backend"] == "jax"
    assert result["tensorflow"] is False
    for kind in LOSS_KINDS:
        assert np.all(np.isfinite(result[kind])) and result[kind][-1] < result[kind][0], result
