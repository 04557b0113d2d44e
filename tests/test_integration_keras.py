"""The losses inside Keras and tf.function: mixed precision and loss scaling,
tf.data pipelines, evaluate, sample_weight, class_weight, jit_compile modes,
and tf.function with dynamic shapes."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_fused_losses as tfl
from helpers import LOSS_KINDS, loss_function, make_loss, make_model, record_ops, task_data

SEQUENCE_KINDS = ("correlation", "ccc")


def weights_of(model):
    return [w.numpy() for w in model.weights]


def assert_weights_close(a, b, rtol, atol):
    assert len(a) == len(b)
    for wa, wb in zip(a, b):
        np.testing.assert_allclose(wa, wb, rtol=rtol, atol=atol)


def per_element_loss(kind, y, y_pred, mask=None):
    """What the Keras loss reduces: (batch,) for BP-MLL, (batch, steps) else."""
    if kind == "bpmll":
        return tfl.bpmll_loss(y, y_pred).numpy().astype(np.float64)
    return loss_function(kind)(y, y_pred, mask=mask).numpy().astype(np.float64)


# --------------------------------------------------------------------------
# Mixed precision
# --------------------------------------------------------------------------


@pytest.fixture
def global_policy(request):
    keras.mixed_precision.set_dtype_policy(request.param)
    yield request.param
    keras.mixed_precision.set_dtype_policy("float32")


@pytest.mark.parametrize(
    "global_policy, kind, loss_in",
    [(policy, kind, "compute_dtype") for policy in ("mixed_float16", "mixed_bfloat16") for kind in LOSS_KINDS]
    + [("mixed_float16", "bpmll", "float32"), ("mixed_bfloat16", "correlation", "float32")],
    indirect=["global_policy"],
)
def test_mixed_precision_training(rng, monkeypatch, global_policy, kind, loss_in):
    """Keras losses compute in float32 unless given a dtype: both ways must
    train. With the loss in the policy's compute dtype the ops run in
    float16/bfloat16."""
    recorder = record_ops(monkeypatch)
    compute_dtype = keras.mixed_precision.Policy(global_policy).compute_dtype
    x, y = task_data(kind, rng, 128)
    model = make_model(kind, x, y)
    loss = make_loss(kind, dtype=global_policy if loss_in == "compute_dtype" else None)
    model.compile(optimizer=keras.optimizers.Adam(2e-2), loss=loss)
    history = model.fit(x, y, batch_size=32, epochs=3, verbose=0)

    assert recorder.forward_dtypes() == {compute_dtype if loss_in == "compute_dtype" else "float32"}
    assert any(name.endswith("_grad") for name, _ in recorder.calls)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0], losses
    uses_loss_scaling = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert uses_loss_scaling == (global_policy == "mixed_float16")
    if uses_loss_scaling:
        assert np.isfinite(float(model.optimizer.dynamic_scale.numpy()))
    assert all(np.all(np.isfinite(w)) for w in weights_of(model))


@pytest.mark.parametrize("global_policy", ["mixed_float16"], indirect=True)
@pytest.mark.parametrize("kind", ["bpmll", "correlation"])
@pytest.mark.parametrize(
    "initial_scale, final_scale, weights_move",
    [
        # Four finite steps, each doubling the scale (growth every step).
        (1.0, 16.0, True),
        # A scale of 2^60 overflows the float16 gradients: every step is
        # skipped and halves the scale.
        (2.0**60, 2.0**56, False),
    ],
)
def test_loss_scale_grows_on_finite_and_shrinks_on_overflowing_gradients(
    rng, global_policy, kind, initial_scale, final_scale, weights_move
):
    x, y = task_data(kind, rng, 64)
    model = make_model(kind, x, y)
    optimizer = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(0.05), initial_scale=initial_scale, dynamic_growth_steps=1
    )
    model.compile(optimizer=optimizer, loss=make_loss(kind, dtype=global_policy))
    before = weights_of(model)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)  # 4 steps
    assert float(model.optimizer.dynamic_scale.numpy()) == final_scale
    after = weights_of(model)
    assert all(np.all(np.isfinite(w)) for w in after)
    moved = any(not np.array_equal(a, b) for a, b in zip(before, after))
    assert moved == weights_move


# --------------------------------------------------------------------------
# tf.data, evaluate, sample_weight, class_weight
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_fit_and_evaluate_on_a_tf_data_pipeline_with_sample_weights(rng, kind):
    x, y = task_data(kind, rng, 96)
    # (batch,) weights for the per-sample BP-MLL loss, (batch, steps) for the
    # per-step losses.
    weights = rng.uniform(0.1, 2.0, size=y.shape[:1] if kind == "bpmll" else y.shape[:2]).astype(np.float32)
    train = tf.data.Dataset.from_tensor_slices((x, y, weights)).shuffle(96, seed=1).batch(32).prefetch(2)
    model = make_model(kind, x, y)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=make_loss(kind))
    history = model.fit(train, epochs=2, shuffle=False, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))

    evaluated = model.evaluate(tf.data.Dataset.from_tensor_slices((x, y, weights)).batch(32), verbose=0)
    per_element = per_element_loss(kind, y, model.predict(x, batch_size=32, verbose=0))
    # sum_over_batch_size per batch, and evaluate averages equal-size batches.
    expected = np.sum(per_element * weights) / per_element.size
    np.testing.assert_allclose(evaluated, expected, rtol=2e-5)
    unweighted = model.evaluate(tf.data.Dataset.from_tensor_slices((x, y)).batch(32), verbose=0)
    np.testing.assert_allclose(unweighted, per_element.mean(), rtol=2e-5)


@pytest.mark.parametrize("kind", SEQUENCE_KINDS)
def test_per_sequence_sample_weights(rng, kind):
    y = rng.normal(size=(8, 10)).astype(np.float32)
    y_pred = (y + rng.normal(size=y.shape)).astype(np.float32)
    weights = rng.uniform(0.1, 2.0, size=8).astype(np.float32)
    got = make_loss(kind)(y, y_pred, sample_weight=weights).numpy()
    expected = np.sum(per_element_loss(kind, y, y_pred) * weights[:, None]) / y.size
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def padded_sequences(rng, count, features, target_padding):
    """A padded_batch pipeline of variable-length sequences; inputs are
    padded with zeros (a Masking layer's mask value), targets with
    target_padding."""
    lengths = rng.integers(3, 20, size=count)
    data = [sequence_data_of_length(rng, n, features) for n in lengths]

    def generate():
        yield from data

    signature = (tf.TensorSpec([None, features], tf.float32), tf.TensorSpec([None, 1], tf.float32))
    dataset = tf.data.Dataset.from_generator(generate, output_signature=signature)
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(count))
    return dataset.padded_batch(16, padding_values=(0.0, target_padding)), data


def sequence_data_of_length(rng, steps, features):
    x = rng.normal(size=(steps, features)).astype(np.float32)
    y = x.sum(axis=1, keepdims=True) + rng.normal(scale=0.3, size=(steps, 1))
    return x, y.astype(np.float32)


@pytest.mark.parametrize("kind", SEQUENCE_KINDS)
def test_padded_batches_behind_a_masking_layer(kind):
    """Padded steps must not move the loss: the Keras mask reaches the op."""
    features = 3
    train, data = padded_sequences(np.random.default_rng(7), 48, features, 0.0)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((None, features)),
            keras.layers.Masking(0.0),
            keras.layers.Dense(8, activation="tanh"),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=make_loss(kind))
    history = model.fit(train, epochs=2, shuffle=False, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))

    results = {}
    for padding in (0.0, 1e3):
        dataset, _ = padded_sequences(np.random.default_rng(7), 48, features, padding)
        results[padding] = model.evaluate(dataset, verbose=0)
    assert results[0.0] == pytest.approx(results[1e3], rel=1e-6)
    # Each batch: the mean over its valid steps of the per-step loss, the
    # moments taken over each sequence's own steps.
    batch_losses = []
    for start in range(0, 48, 16):
        per_step = [
            per_element_loss(kind, y[None], model(x[None], training=False))[0] for x, y in data[start : start + 16]
        ]
        batch_losses.append(np.concatenate(per_step).mean())
    np.testing.assert_allclose(results[0.0], np.mean(batch_losses), rtol=1e-5)


def fit_weights(kind, x, y, **fit_kwargs):
    model = make_model(kind, x, y)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=make_loss(kind))
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, **fit_kwargs)
    return weights_of(model)


def test_class_weight_weighs_bpmll_samples_by_their_first_positive_label(rng):
    """Keras 3 reads (batch, labels) targets as one-hot: each sample gets
    class_weight[argmax(y)], the weight of its first positive label."""
    x, y = task_data("bpmll", rng, 64)
    class_weight = {label: 0.25 + label / 4 for label in range(y.shape[1])}
    with_class_weight = fit_weights("bpmll", x, y, class_weight=class_weight)
    as_sample_weight = np.array([class_weight[label] for label in y.argmax(axis=1)], np.float32)
    with_sample_weight = fit_weights("bpmll", x, y, sample_weight=as_sample_weight)
    unweighted = fit_weights("bpmll", x, y)
    assert_weights_close(with_class_weight, with_sample_weight, rtol=1e-5, atol=1e-7)
    assert not all(np.allclose(a, b) for a, b in zip(with_class_weight, unweighted))


def test_class_weight_on_tf_data_needs_every_label_index(rng):
    """Keras' tf.data path gathers from a table of max(key) + 1 weights."""
    x, y = task_data("bpmll", rng, 32)
    y[:, :5] = 0
    y[:, 5] = 1  # every sample's first positive label is 5
    model = make_model("bpmll", x, y)
    model.compile(optimizer="sgd", loss=tfl.BPMLLLoss())
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    history = model.fit(dataset, class_weight={label: 1.0 for label in range(y.shape[1])}, shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"indices\[0\] = 5 is not in \[0, 2\)"):
        model.fit(dataset, class_weight={0: 1.0, 1: 2.0}, shuffle=False, verbose=0)


def test_class_weight_errors_that_keras_raises(rng):
    x, y = task_data("correlation", rng, 16)
    model = make_model("correlation", x, y)
    model.compile(optimizer="sgd", loss=tfl.CorrelationLoss())
    # (batch, steps, 1) targets are read as sparse class labels per sample,
    # which a sequence is not: Keras fails converting one to a Python int.
    with pytest.raises(TypeError, match="only 0-dimensional arrays can be converted"):
        model.fit(x, y, class_weight={0: 1.0, 1: 2.0}, verbose=0)
    with pytest.raises(ValueError, match="You cannot `class_weight` and `sample_weight` at the same time"):
        model.fit(x, y, class_weight={0: 1.0}, sample_weight=np.ones(16), verbose=0)


# --------------------------------------------------------------------------
# jit_compile
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_jit_compile_modes_train_alike(rng, monkeypatch, kind):
    """jit_compile=True runs the fused ops as XLA custom calls, False as
    OpKernels: the same kernels, so the same weights. "auto" resolves to False
    on CPU-only machines and to XLA where an accelerator is visible; it trains
    exactly as the mode it resolves to."""
    x, y = task_data(kind, rng, 64)
    results = {}
    for mode in (False, True, "auto"):
        recorder = record_ops(monkeypatch)
        model = make_model(kind, x, y)
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss=make_loss(kind), jit_compile=mode)
        history = model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
        if mode == "auto":
            has_accelerator = any(d.device_type != "CPU" for d in tf.config.list_physical_devices())
            assert model.jit_compile == has_accelerator
        else:
            assert model.jit_compile is mode
        # The fused ops, forward and backward, in every mode.
        assert {name for name, _ in recorder.calls} >= {f"{recorder.calls[0][0]}", f"{recorder.calls[0][0]}_grad"}, (
            mode, recorder.calls[:3])
        results[mode] = (weights_of(model), history.history["loss"][0], model.jit_compile)
    # The OpKernels (False) against the custom calls (True); XLA may fuse the
    # rest of the step differently, so not bit for bit.
    assert_weights_close(results[True][0], results[False][0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(results[True][1], results[False][1], rtol=1e-4)
    assert any(not np.array_equal(a, b) for a, b in zip(results[True][0], weights_of(make_model(kind, x, y)))), (
        "training did not move the weights"
    )
    # "auto" against the mode it resolved to: the same path, the same start.
    resolved = results["auto"][2]
    assert_weights_close(results["auto"][0], results[resolved][0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(results["auto"][1], results[resolved][1], rtol=1e-6)


# --------------------------------------------------------------------------
# tf.function with dynamic shapes
# --------------------------------------------------------------------------

# Rows done whole, at the chunk boundary, cut into pieces, empty batch.
DYNAMIC_SHAPES = [(1, 2), (3, 17), (5, 2049), (2, 70_001), (0, 4), (4, 1)]


@pytest.mark.parametrize("kind", LOSS_KINDS)
@pytest.mark.parametrize("spec_shape", [[None, None], None], ids=["batch_and_length_unknown", "rank_unknown"])
def test_tf_function_with_dynamic_shapes_traces_once(rng, kind, spec_shape):
    fn = loss_function(kind)
    spec = tf.TensorSpec(spec_shape, tf.float32)

    def loss_and_grad(y, y_pred):
        with tf.GradientTape() as tape:
            tape.watch(y_pred)
            loss = fn(y, y_pred)
        return loss, tape.gradient(loss, y_pred)

    traced = tf.function(loss_and_grad, input_signature=[spec, spec])
    for shape in DYNAMIC_SHAPES:
        y = (rng.random(shape) < 0.4).astype(np.float32) if kind == "bpmll" else rng.normal(size=shape).astype(np.float32)
        y_pred = rng.normal(size=shape).astype(np.float32)
        loss, grad = traced(tf.constant(y), tf.constant(y_pred))
        eager_loss, eager_grad = loss_and_grad(tf.constant(y), tf.constant(y_pred))
        np.testing.assert_array_equal(loss.numpy(), eager_loss.numpy())
        np.testing.assert_array_equal(grad.numpy(), eager_grad.numpy())
        assert grad.shape == shape
    assert traced.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("kind", SEQUENCE_KINDS)
def test_tf_function_with_dynamic_rank_3_sequences_and_masks(rng, kind):
    fn = loss_function(kind)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, 1], tf.float64),
            tf.TensorSpec([None, None, 1], tf.float64),
            tf.TensorSpec([None, None], tf.bool),
        ]
    )
    def traced(y, y_pred, mask):
        with tf.GradientTape() as tape:
            tape.watch([y, y_pred])
            loss = fn(y, y_pred, mask=mask)
        return (loss,) + tuple(tape.gradient(loss, [y, y_pred]))

    for batch, steps in DYNAMIC_SHAPES:
        y, y_pred = rng.normal(size=(2, batch, steps, 1))
        mask = rng.random((batch, steps)) < 0.8
        got = traced(tf.constant(y), tf.constant(y_pred), tf.constant(mask))
        expected = traced.python_function(tf.constant(y), tf.constant(y_pred), tf.constant(mask))
        for g, e in zip(got, expected):
            np.testing.assert_array_equal(g.numpy(), e.numpy())
        assert got[0].shape == (batch, steps) and got[2].shape == (batch, steps, 1)
    assert traced.experimental_get_tracing_count() == 1
