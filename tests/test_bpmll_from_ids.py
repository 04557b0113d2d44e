"""`tf_fused_losses.bpmll_loss_from_ids` and `BPMLLLoss(label_ids=True)`:
ragged, sparse and padded ids on every path give `bpmll_loss` of the dense
labels (the fused op's own bit-level tests are in test_bpmll_ids.py and
test_bpmll_ids_jax.py); a Keras model trains on ids from tf.data. Runs in
the TensorFlow environment and, for its JAX part, in the JAX one."""

import importlib.util
import os

import numpy as np
import pytest

import tf_fused_losses as tfl

HAS_TF = importlib.util.find_spec("tensorflow") is not None
HAS_JAX = importlib.util.find_spec("jax") is not None
needs_tf = pytest.mark.skipif(not HAS_TF, reason="needs TensorFlow")


def draw(rng, batch=5, labels=37, most=6):
    """Ids per row (repeats and an empty row included), their padded form,
    the dense 0/1 labels and float32 logits."""
    rows = [rng.choice(labels, size=rng.integers(0, most + 1)) for _ in range(batch)]
    rows[0] = np.array([], np.int64)
    if batch > 1:
        rows[1] = np.concatenate([rows[1], rows[1][:1]]) if len(rows[1]) else np.array([3, 3])
    width = max(1, max(len(r) for r in rows))
    padded = np.full((batch, width), -1, np.int64)
    dense = np.zeros((batch, labels), np.uint8)
    for i, r in enumerate(rows):
        padded[i, : len(r)] = r
        dense[i, r] = 1
    logits = rng.normal(scale=3.0, size=(batch, labels)).astype(np.float32)
    return rows, padded, dense, logits


@needs_tf
@pytest.mark.parametrize("form", ["ragged", "sparse", "padded", "padded_int32"])
@pytest.mark.parametrize("mode", ["eager", "function", "jit_compile"])
def test_ids_give_the_dense_loss_and_gradient(rng, form, mode):
    import tensorflow as tf

    rows, padded, dense, logits = draw(rng)
    if form == "ragged":
        ids = tf.ragged.constant([r.tolist() for r in rows], dtype=tf.int64, ragged_rank=1)
    elif form == "sparse":
        ids = _sparse_ids(tf, rows, padded.shape)
    elif form == "padded":
        ids = tf.constant(padded)
    else:
        ids = tf.constant(padded.astype(np.int32))
    if mode == "jit_compile" and form in ("ragged", "sparse"):
        pytest.skip("ragged and sparse ids are padded before XLA: test_ragged_ids_inside_xla_say_how_to_pad")
    c = tf.Variable(logits)

    def loss_and_grad(fn, labels):
        with tf.GradientTape() as tape:
            loss = fn(labels, c)
            total = tf.reduce_sum(loss * tf.range(1.0, 6.0))
        return loss, tape.gradient(total, c)

    run = {"eager": lambda f: f, "function": tf.function, "jit_compile": lambda f: tf.function(f, jit_compile=True)}[mode]
    got = run(lambda labels: loss_and_grad(tfl.bpmll_loss_from_ids, labels))(ids)
    want = run(lambda labels: loss_and_grad(tfl.bpmll_loss, labels))(tf.constant(dense))
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.numpy(), w.numpy())


def _sparse_ids(tf, rows, shape):
    indices = [[i, k] for i, r in enumerate(rows) for k in range(len(r))]
    values = [int(v) for r in rows for v in r]
    return tf.SparseTensor(tf.constant(indices or np.zeros((0, 2)), tf.int64), tf.constant(values, tf.int64), shape)


@needs_tf
def test_ragged_ids_inside_xla_say_how_to_pad(rng):
    import tensorflow as tf

    rows, _, _, logits = draw(rng)
    ids = tf.ragged.constant([r.tolist() for r in rows], dtype=tf.int64, ragged_rank=1)
    with pytest.raises(ValueError, match=r"label_ids as a tf.RaggedTensor cannot be padded inside XLA.*to_tensor"):
        tf.function(tfl.bpmll_loss_from_ids, jit_compile=True)(ids, tf.constant(logits))


@needs_tf
def test_the_pure_path_densifies_and_marks_bad_rows_nan(rng, monkeypatch):
    import tensorflow as tf

    monkeypatch.setenv(tfl.PURE_TF_ENV, "1")
    _, padded, dense, logits = draw(rng)
    got = tfl.bpmll_loss_from_ids(tf.constant(padded), tf.constant(logits)).numpy()
    want = tfl.bpmll_loss(tf.constant(dense), tf.constant(logits)).numpy()
    np.testing.assert_array_equal(got, want)
    padded[2, 0] = 37  # outside [0, 37): that row only
    bad = tfl.bpmll_loss_from_ids(tf.constant(padded), tf.constant(logits)).numpy()
    assert np.isnan(bad[2]) and np.array_equal(np.delete(bad, 2), np.delete(want, 2))


@needs_tf
def test_bad_ids_raise_naming_the_element(rng):
    import tensorflow as tf

    _, padded, _, logits = draw(rng)
    padded[3, 0] = 37
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"label_ids\[3, 0\] = 37 is outside \[0, 37\)"):
        tfl.bpmll_loss_from_ids(tf.constant(padded), tf.constant(logits))


def test_the_keras_ops_form_densifies_to_the_same_loss(rng):
    """The fallback of backends without a fused ids op."""
    pytest.importorskip("keras")
    from tf_fused_losses import _keras_ops

    _, padded, dense, logits = draw(rng)
    got = np.asarray(_keras_ops.bpmll_loss_from_ids(padded, logits))
    want = np.asarray(_keras_ops.bpmll_loss(dense, logits))
    np.testing.assert_allclose(got, want, rtol=2e-6)
    padded[1, 0] = -3
    assert np.isnan(np.asarray(_keras_ops.bpmll_loss_from_ids(padded, logits))[1])


@pytest.mark.skipif(not HAS_JAX, reason="needs jax")
def test_jax_ids_give_the_dense_bits(rng):
    import jax
    import jax.numpy as jnp

    _, padded, dense, logits = draw(rng)
    weights = jnp.arange(1.0, 6.0)

    def total(fn, labels):
        return lambda c: jnp.sum(fn(labels, c) * weights)

    for transform in (lambda f: f, jax.jit):
        got = transform(jax.value_and_grad(total(tfl.bpmll_loss_from_ids, jnp.asarray(padded))))(jnp.asarray(logits))
        want = transform(jax.value_and_grad(total(tfl.bpmll_loss, jnp.asarray(dense))))(jnp.asarray(logits))
        for g, w in zip(got, want):
            np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


@needs_tf
@pytest.mark.parametrize("form, jit_compile", [("ragged", False), ("padded", True), ("padded", False)])
def test_a_keras_model_trains_on_ids_from_tf_data(rng, form, jit_compile, tmp_path):
    import keras
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        pytest.skip("tf.data ids into a Keras model: the tensorflow backend")
    batch, features, labels = 96, 8, 40
    x = rng.normal(size=(batch, features)).astype(np.float32)
    scores = x @ rng.normal(size=(features, labels))
    rows = [np.argsort(-s)[: rng.integers(1, 5)].tolist() for s in scores]
    ids = tf.ragged.constant(rows, dtype=tf.int64, ragged_rank=1)
    data = tf.data.Dataset.from_tensor_slices((x, ids)).batch(16)
    if form == "padded":
        data = data.map(lambda f, i: (f, i.to_tensor(default_value=-1)))
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((features,)), keras.layers.Dense(labels)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=tfl.BPMLLLoss(label_ids=True), jit_compile=jit_compile)
    history = model.fit(data, epochs=6, verbose=0).history["loss"]
    assert np.all(np.isfinite(history)) and history[-1] < 0.8 * history[0], history
    path = os.path.join(tmp_path, "ids.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.loss.label_ids is True
    padded = data.map(lambda f, i: (f, i.to_tensor(default_value=-1) if isinstance(i, tf.RaggedTensor) else i))
    np.testing.assert_allclose(loaded.evaluate(padded, verbose=0), model.evaluate(padded, verbose=0), rtol=1e-6)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch")
def test_torch_ids_give_the_dense_loss_and_gradient_and_name_bad_ids(rng):
    import torch

    _, padded, dense, logits = draw(rng)
    c = torch.tensor(logits, requires_grad=True)
    weights = torch.arange(1.0, 6.0)
    got = tfl.bpmll_loss_from_ids(torch.tensor(padded), c)
    (got_grad,) = torch.autograd.grad((got * weights).sum(), c)
    want = tfl.bpmll_loss(torch.tensor(dense), c)
    (want_grad,) = torch.autograd.grad((want * weights).sum(), c)
    assert torch.equal(got, want) and torch.equal(got_grad, want_grad)
    # The ids op itself, not a densified dense op: its graph holds tfl::bpmll_ids_loss.
    assert "bpmll_ids_loss" in str(got.grad_fn.name()) or "bpmll_ids_loss" in repr(got.grad_fn)
    padded[4, 0] = -2
    with pytest.raises(ValueError, match=r"label_ids\[4, 0\] = -2 is neither a label id in \[0, 37\) nor the padding"):
        tfl.bpmll_loss_from_ids(torch.tensor(padded), c)
    padded[4, 0] = 37
    with pytest.raises(ValueError, match=r"label_ids\[4, 0\] = 37 is outside \[0, 37\)"):
        tfl.bpmll_loss_from_ids(torch.tensor(padded), c)
