"""The fused linear BP-MLL head on TensorFlow (python/tf_fused_losses/head.py,
_head_tf.py) and its Keras layer (head_layers.BPMLLHead): the per-row loss
and the gradients of hidden, kernel and bias against the unfused path
(`bpmll_loss` of hidden @ kernel + bias, autodiff), on dense labels (0/1 and
soft) and padded ids, chunk sizes that do and do not divide the label count,
batch 0 and 1, rows without pairs, NaN rows, eagerly, under tf.function and
jit_compile; the reductions (on ids the one-pass form) with row weights,
their edge rows, NaN and infinite logits and precisions; the top-k over
chunks; a Keras model trained on padded ids from
tf.data and on dense labels, saved to .keras and loaded again."""

import os

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
import keras  # noqa: E402

from helpers.head_checks import assert_head_results_match  # noqa: E402

import tf_fused_losses as tfl  # noqa: E402
from tf_fused_losses import head  # noqa: E402
from tf_fused_losses.head_layers import BPMLLHead  # noqa: E402

LOSS_RTOL = 1e-5
GRAD_RTOL = 2e-5  # max abs error over the gradient's max abs value


def ids_and_dense(rng, batch, labels, per_row, width):
    """Padded ids (batch, width), with -1 padding, a repeated id and a
    padding-only row, and the 0/1 matrix they stand for."""
    ids = np.full((batch, width), -1, np.int32)
    for i in range(batch):
        chosen = rng.choice(labels, min(per_row, labels), replace=False)
        ids[i, : len(chosen)] = chosen
    if batch > 2:
        ids[1] = -1  # no positive: loss 0
        ids[2, -1] = ids[2, 0]  # a repeat counts once
    rng.shuffle(ids, axis=1)
    dense = np.zeros((batch, labels), np.float32)
    for i, row in enumerate(ids):
        dense[i, row[row >= 0]] = 1
    return ids, dense


def problem(rng, batch=6, d=5, labels=23, dtype=np.float32):
    hidden = rng.normal(size=(batch, d)).astype(dtype)
    kernel = (0.5 * rng.normal(size=(d, labels))).astype(dtype)
    bias = (0.3 * rng.normal(size=(labels,))).astype(dtype)
    return hidden, kernel, bias


def unfused(dense, hidden, kernel, bias, upstream):
    hidden, kernel, bias = (tf.constant(a) for a in (hidden, kernel, bias))
    with tf.GradientTape() as tape:
        tape.watch([hidden, kernel, bias])
        loss = tfl.bpmll_loss(tf.constant(dense), tf.matmul(hidden, kernel) + bias)
        total = tf.reduce_sum(loss * upstream)
    return [loss] + tape.gradient(total, [hidden, kernel, bias])


def fused(labels, hidden, kernel, bias, upstream, wrap, **kwargs):
    def run(labels, hidden, kernel, bias):
        with tf.GradientTape() as tape:
            tape.watch([hidden, kernel, bias])
            loss = head.bpmll_head_loss(labels, hidden, kernel, bias, **kwargs)
            total = tf.reduce_sum(loss * upstream)
        return [loss] + tape.gradient(total, [hidden, kernel, bias])

    return wrap(run)(tf.constant(labels), *(tf.constant(a) for a in (hidden, kernel, bias)))


WRAPS = {
    "eager": lambda f: f,
    "tf.function": tf.function,
    "jit_compile": lambda f: tf.function(f, jit_compile=True),
}


def assert_matches(got, want):
    got = [np.asarray(g) for g in got]
    want = [np.asarray(w) for w in want]
    np.testing.assert_allclose(got[0], want[0], rtol=LOSS_RTOL, atol=0)
    for name, g, w in zip(("hidden", "kernel", "bias"), got[1:], want[1:]):
        assert g.shape == w.shape, name
        scale = max(np.max(np.abs(w)), np.finfo(np.float32).tiny) if w.size else 1
        error = np.max(np.abs(g - w)) / scale if w.size else 0
        assert error <= GRAD_RTOL, f"d/d{name}: max abs error {error:.3g} of its scale"


@pytest.mark.parametrize("wrap", list(WRAPS))
@pytest.mark.parametrize("chunk_size", [None, 4, 7, 23, 64])
@pytest.mark.parametrize("form", ["ids", "dense", "soft"])
def test_head_matches_the_unfused_loss_and_gradients(rng, form, chunk_size, wrap):
    hidden, kernel, bias = problem(rng)
    ids, dense = ids_and_dense(rng, 6, 23, 5, 7)
    if form == "soft":
        dense = rng.uniform(size=dense.shape).astype(np.float32) * (rng.uniform(size=dense.shape) < 0.4)
        dense[3] = 1  # every label positive: no pairs
    upstream = tf.constant(np.linspace(0.5, 2.0, 6), tf.float32)
    labels = ids if form == "ids" else dense
    got = fused(labels, hidden, kernel, bias, upstream, WRAPS[wrap], label_ids=form == "ids", chunk_size=chunk_size)
    assert_matches(got, unfused(dense, hidden, kernel, bias, upstream))
    pairless = 3 if form == "soft" else 1
    assert got[0][pairless] == 0 and not np.any(np.asarray(got[1])[pairless]), "no pairs: loss 0 and gradient 0"


@pytest.mark.parametrize("batch", [0, 1])
@pytest.mark.parametrize("form", ["ids", "dense"])
def test_batch_zero_and_one(rng, batch, form):
    hidden, kernel, bias = problem(rng, batch=batch)
    ids, dense = ids_and_dense(rng, batch, 23, 4, 5)
    upstream = tf.ones([batch])
    for wrap in WRAPS.values():
        got = fused(ids if form == "ids" else dense, hidden, kernel, bias, upstream, wrap, label_ids=form == "ids", chunk_size=5)
        assert got[0].shape == (batch,)
        assert_matches(got, unfused(dense, hidden, kernel, bias, upstream))


def test_without_bias_and_with_ragged_ids(rng):
    hidden, kernel, _ = problem(rng)
    ids, dense = ids_and_dense(rng, 6, 23, 3, 4)
    ragged = tf.ragged.constant([[int(i) for i in row if i >= 0] for row in ids], dtype=tf.int64)
    got = head.bpmll_head_loss(ragged, hidden, kernel, label_ids=True, chunk_size=6)
    want = tfl.bpmll_loss(dense, hidden @ kernel)
    np.testing.assert_allclose(got, want, rtol=LOSS_RTOL)


def test_float64_and_mixed_precision(rng):
    hidden, kernel, bias = problem(rng, dtype=np.float64)
    _, dense = ids_and_dense(rng, 6, 23, 5, 6)
    upstream = tf.ones([6], tf.float64)
    got = fused(dense, hidden, kernel, bias, upstream, tf.function, chunk_size=5)
    want = unfused(dense, hidden, kernel, bias, upstream)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12)
    # bfloat16 kernel: logits in bfloat16, the row statistics in float32.
    half = [tf.cast(a, tf.bfloat16) for a in (hidden, kernel, bias)]
    loss = head.bpmll_head_loss(dense, *half, chunk_size=5)
    assert loss.dtype == tf.bfloat16
    want = tfl.bpmll_loss(dense, tf.matmul(half[0], half[1]) + half[2])
    np.testing.assert_allclose(tf.cast(loss, tf.float32), tf.cast(want, tf.float32), rtol=2e-2)


def test_nan_logits_and_bad_ids_give_their_row_nan_inside_xla(rng):
    hidden, kernel, bias = problem(rng)
    hidden[0, 1] = np.nan
    ids, dense = ids_and_dense(rng, 6, 23, 3, 4)
    ids[4, 0] = 23  # outside [0, 23): NaN under XLA, where nothing can raise
    for wrap in (WRAPS["jit_compile"],):
        loss, dhidden, dkernel, _ = fused(ids, hidden, kernel, bias, tf.ones([6]), wrap, label_ids=True, chunk_size=5)
        loss = np.asarray(loss)
        assert np.isnan(loss[0]) and np.isnan(loss[4])
        assert np.all(np.isnan(np.asarray(dhidden)[4]))
        rest = [1, 2, 3, 5]
        dense_rest = dense[rest]
        want = tfl.bpmll_loss(dense_rest, hidden[rest] @ kernel + bias)
        np.testing.assert_allclose(loss[rest], want, rtol=LOSS_RTOL)


@pytest.mark.parametrize("reduction", [None, "sum"])
@pytest.mark.parametrize("wrap", ["eager", "tf.function"])
def test_bad_ids_raise_outside_xla_naming_the_first(rng, wrap, reduction):
    hidden, kernel, bias = problem(rng)
    ids, _ = ids_and_dense(rng, 6, 23, 3, 4)
    ids[4, 2] = 23
    ids[5, 0] = -2
    error = ValueError if wrap == "eager" else tf.errors.InvalidArgumentError
    upstream = tf.ones([6]) if reduction is None else tf.constant(1.0)
    # The fused ids op's wording (cc/core/bpmll/bpmll_ids_cpu.cc), for an id
    # past the labels and for a negative one.
    with pytest.raises(error, match=r"label_ids\[4, 2\] = 23 is outside \[0, 23\)"):
        fused(ids, hidden, kernel, bias, upstream, WRAPS[wrap], label_ids=True, chunk_size=5, reduction=reduction)
    ids[4, 2] = -1
    with pytest.raises(error, match=r"label_ids\[5, 0\] = -2 is neither a label id in \[0, 23\) nor the padding -1"):
        fused(ids, hidden, kernel, bias, upstream, WRAPS[wrap], label_ids=True, chunk_size=5, reduction=reduction)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match=r"agree on d"):
        head.bpmll_head_loss(tf.zeros([2, 4]), tf.zeros([2, 3]), tf.zeros([5, 4]))
    with pytest.raises(ValueError, match=r"label ids must be int32 or int64"):
        head.bpmll_head_loss(tf.zeros([2, 4]), tf.zeros([2, 3]), tf.zeros([3, 4]), label_ids=True)
    with pytest.raises(ValueError, match=r"chunk_size must be a positive int"):
        head.bpmll_head_loss(tf.zeros([2, 4]), tf.zeros([2, 3]), tf.zeros([3, 4]), chunk_size=0)


@pytest.mark.parametrize("chunk_size", [3, 8, 23])
def test_top_k_over_chunks(rng, chunk_size):
    hidden, kernel, bias = problem(rng)
    scores, ids = tf.function(lambda h: head.bpmll_head_top_k(h, kernel, bias, k=4, chunk_size=chunk_size))(hidden)
    want = tf.math.top_k(hidden @ kernel + bias, 4)
    np.testing.assert_allclose(scores, want.values, rtol=1e-6)
    np.testing.assert_array_equal(ids, want.indices)


# --------------------------------------------------------------------------
# Reductions: the one-pass form on ids, the two-pass form reduced on dense
# labels
# --------------------------------------------------------------------------

REDUCTIONS = ["sum", "sum_over_batch_size", "mean", "mean_with_sample_weight"]


def keras_reduce(rows, reduction, weights):
    """rows reduced as keras.losses.Loss reduces them (division by 0 gives 0)."""
    weighted = rows if weights is None else rows * tf.cast(weights, rows.dtype)
    if reduction in (None, "none"):
        return weighted
    total = tf.reduce_sum(weighted)
    if reduction == "sum":
        return total
    if reduction == "mean_with_sample_weight" and weights is not None:
        return tf.math.divide_no_nan(total, tf.reduce_sum(tf.cast(weights, rows.dtype)))
    return tf.math.divide_no_nan(total, tf.cast(tf.size(rows), rows.dtype))


def unfused_reduced(dense, hidden, kernel, bias, reduction, weights, upstream):
    """The unfused loss of hidden @ kernel + bias reduced, and the gradients
    of upstream x that loss."""
    hidden, kernel, bias = (tf.constant(a) for a in (hidden, kernel, bias))
    with tf.GradientTape() as tape:
        tape.watch([hidden, kernel, bias])
        loss = keras_reduce(tfl.bpmll_loss(tf.constant(dense), tf.matmul(hidden, kernel) + bias), reduction, weights)
        total = tf.reduce_sum(loss * upstream)
    return [loss] + tape.gradient(total, [hidden, kernel, bias])


def fused_reduced(labels, hidden, kernel, bias, upstream, wrap, **kwargs):
    return fused(labels, hidden, kernel, bias, upstream, wrap, **kwargs)


def assert_matches_extended(got, want, grad_rtol=GRAD_RTOL, loss_rtol=LOSS_RTOL):
    """As assert_matches, where NaN and infinities may appear (helpers.head_checks)."""
    assert_head_results_match(got, want, grad_rtol, loss_rtol)


@pytest.mark.parametrize("wrap", list(WRAPS))
@pytest.mark.parametrize("chunk_size", [None, 4, 7, 64])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("form", ["ids", "dense"])
def test_reduced_loss_matches_the_unfused_loss_and_gradients(rng, form, reduction, chunk_size, wrap):
    """On ids the one-pass form (gradients in the forward, scaled by the
    upstream, here 3 and 1), on dense labels the two-pass form reduced; with
    and without row weights (one of them 0)."""
    hidden, kernel, bias = problem(rng)
    ids, dense = ids_and_dense(rng, 6, 23, 5, 7)
    labels = ids if form == "ids" else dense
    for weights, upstream in ((None, 3.0), (np.array([0.5, 2, 0, 1, 1.5, 1], np.float32), 1.0)):
        got = fused_reduced(
            labels, hidden, kernel, bias, tf.constant(upstream), WRAPS[wrap],
            label_ids=form == "ids", chunk_size=chunk_size, reduction=reduction, sample_weight=weights,
        )
        assert got[0].shape == ()
        assert_matches(got, unfused_reduced(dense, hidden, kernel, bias, reduction, weights, upstream))


@pytest.mark.parametrize("wrap", list(WRAPS))
def test_one_pass_edge_rows(rng, wrap):
    """Rows with no positive (padding only), every label positive, repeated
    ids, a label count below the chunk and chunks that do not divide it, a
    row whose negatives' sum in a chunk is below the fast form's range (its
    logits +-25: the chunk takes the log-sum-exp form)."""
    hidden, kernel, bias = problem(rng, batch=5, labels=6)
    ids = np.array(
        [[0, 1, 2, 3, 4, 5, -1], [-1, -1, -1, -1, -1, -1, -1], [2, 2, 5, 5, -1, 2, 0], [4, -1, -1, -1, -1, -1, -1],
         [1, 3, 5, -1, -1, -1, -1]],
        np.int32,
    )  # all positive, padding only, repeats, one positive, three
    dense = np.zeros((5, 6), np.float32)
    for i, row in enumerate(ids):
        dense[i, row[row >= 0]] = 1
    hidden[4] = 0  # row 4's logits are the bias: +25 on its positives, -25 on its negatives
    bias[:] = np.where(dense[4] > 0, 25, -25)
    for chunk_size in (None, 4, 5, 6, 100):
        got = fused(ids, hidden, kernel, bias, tf.constant(2.0), WRAPS[wrap], label_ids=True, chunk_size=chunk_size,
                    reduction="sum")
        assert_matches(got, unfused_reduced(dense, hidden, kernel, bias, "sum", None, 2.0))
        rows = head.bpmll_head_loss_and_rows(ids, hidden, kernel, bias, label_ids=True, chunk_size=chunk_size,
                                             reduction="sum")[1]
        want = tfl.bpmll_loss(dense, hidden @ kernel + bias)
        np.testing.assert_allclose(rows, want, rtol=LOSS_RTOL)
        assert rows[0] == 0 and rows[1] == 0 and 0 < rows[4] < 1e-20


@pytest.mark.parametrize("wrap", list(WRAPS))
def test_one_pass_nan_and_infinite_logits(rng, wrap):
    """A NaN logit makes its row's loss and dhidden NaN and, as in the
    unfused H^T dlogits, all of dkernel and dbias; infinite logits (a bias
    of +inf on a column that is some rows' positive and others' negative,
    -inf on another) give the unfused path's infinities and NaNs; a bad id
    makes its row NaN inside XLA."""
    hidden, kernel, bias = problem(rng, labels=23)
    ids, dense = ids_and_dense(rng, 6, 23, 5, 7)
    infinite = hidden.copy()
    bias_inf = bias.copy()
    bias_inf[ids[0, 0]] = np.inf
    bias_inf[ids[3, 1]] = -np.inf
    got = fused(ids, infinite, kernel, bias_inf, tf.constant(1.0), WRAPS[wrap], label_ids=True, chunk_size=7,
                reduction="sum")
    want = unfused_reduced(dense, infinite, kernel, bias_inf, "sum", None, 1.0)
    assert_matches_extended(got, want)
    with_nan = hidden.copy()
    with_nan[2, 1] = np.nan
    with_nan[1, 0] = np.nan  # row 1 has no positive: NaN comes before "no pairs"
    got = fused(ids, with_nan, kernel, bias, tf.constant(1.0), WRAPS[wrap], label_ids=True, chunk_size=7,
                reduction="sum_over_batch_size")
    want = unfused_reduced(dense, with_nan, kernel, bias, "sum_over_batch_size", None, 1.0)
    assert np.isnan(got[0]) and np.all(np.isnan(got[2])) and np.all(np.isnan(got[3]))
    assert_matches_extended(got, want)
    bad = ids.copy()
    bad[4, 0] = 23
    rows_of = tf.function(
        lambda b: head.bpmll_head_loss_and_rows(b, hidden, kernel, bias, label_ids=True, chunk_size=7, reduction="sum"),
        jit_compile=True,
    )
    loss, rows = rows_of(tf.constant(bad))  # inside XLA: the row is NaN (outside, the id raises)
    assert np.isnan(loss) and np.isnan(rows[4]) and not np.any(np.isnan(np.delete(np.asarray(rows), 4)))


@pytest.mark.parametrize("batch", [0, 1])
def test_one_pass_batch_zero_and_one(rng, batch):
    hidden, kernel, bias = problem(rng, batch=batch)
    ids, dense = ids_and_dense(rng, batch, 23, 4, 5)
    for wrap in WRAPS.values():
        got = fused(ids, hidden, kernel, bias, tf.constant(1.5), wrap, label_ids=True, chunk_size=5,
                    reduction="sum_over_batch_size")
        assert_matches(got, unfused_reduced(dense, hidden, kernel, bias, "sum_over_batch_size", None, 1.5))


@pytest.mark.parametrize("dtype,rtol", [(tf.float64, 1e-12), (tf.float16, 2e-2), (tf.bfloat16, 2e-2)])
def test_one_pass_precisions(rng, dtype, rtol):
    """float64 throughout; float16/bfloat16 kernels: logits and GEMMs in
    that dtype, the row statistics in float32, against the unfused loss of
    the same half-precision logits."""
    hidden, kernel, bias = (tf.cast(a, dtype) for a in problem(rng, dtype=np.float64))
    ids, dense = ids_and_dense(rng, 6, 23, 5, 7)
    for wrap in (WRAPS["tf.function"], WRAPS["jit_compile"]):
        got = fused(ids, hidden, kernel, bias, tf.constant(2.0, dtype), wrap, label_ids=True, chunk_size=5,
                    reduction="sum_over_batch_size")
        assert got[0].dtype == dtype and all(g.dtype == dtype for g in got[1:])
        want = unfused_reduced(dense, hidden, kernel, bias, "sum_over_batch_size", None, tf.constant(2.0, dtype))
        assert_matches_extended([tf.cast(g, tf.float64) for g in got], [tf.cast(w, tf.float64) for w in want],
                                grad_rtol=rtol if dtype != tf.float64 else 1e-10, loss_rtol=rtol)


def test_per_row_weights_and_the_rows_output(rng):
    hidden, kernel, bias = problem(rng)
    ids, dense = ids_and_dense(rng, 6, 23, 5, 7)
    weights = np.linspace(0, 2, 6).astype(np.float32)
    want = tfl.bpmll_loss(dense, hidden @ kernel + bias)
    for form, labels in (("ids", ids), ("dense", dense)):
        got = head.bpmll_head_loss(labels, hidden, kernel, bias, label_ids=form == "ids", sample_weight=weights)
        np.testing.assert_allclose(got, want * weights, rtol=LOSS_RTOL)
        for reduction in ("none", None):
            got = head.bpmll_head_loss(labels, hidden, kernel, bias, label_ids=form == "ids", reduction=reduction)
            np.testing.assert_allclose(got, want, rtol=LOSS_RTOL)
    # The one-pass form's per-row loss: the unweighted rows, without a gradient.
    kernel_t = tf.constant(kernel)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(kernel_t)
        loss, rows = head.bpmll_head_loss_and_rows(ids, hidden, kernel_t, bias, label_ids=True, reduction="sum",
                                                   sample_weight=weights)
    np.testing.assert_allclose(rows, want, rtol=LOSS_RTOL)
    np.testing.assert_allclose(loss, np.sum(want * weights), rtol=LOSS_RTOL)
    assert tape.gradient(rows, kernel_t) is None


def test_bad_reduction_and_sample_weight_raise():
    args = (tf.zeros([2, 4]), tf.zeros([2, 3]), tf.zeros([3, 4]))
    with pytest.raises(ValueError, match=r"reduction must be one of"):
        head.bpmll_head_loss(*args, reduction="average")
    with pytest.raises(ValueError, match=r"sample_weight must have shape \(\) or \(2,\)"):
        head.bpmll_head_loss(*args, reduction="sum", sample_weight=tf.ones([3]))
    with pytest.raises(ValueError, match=r"sample_weight must be rank 0 or 1"):
        head.bpmll_head_loss(*args, reduction="sum", sample_weight=tf.ones([2, 1]))


def test_label_axis_on_tensorflow_arrays_says_to_use_jax():
    """TF's head has no label sharding: label_axis (or its mesh keywords
    alone) with TF arrays is a ValueError saying so, not a silent
    unsharded run."""
    args = (tf.zeros([2, 4]), tf.zeros([2, 3]), tf.zeros([3, 4]))
    with pytest.raises(ValueError, match=r"label-sharded head runs on JAX arrays only.*use JAX"):
        head.bpmll_head_loss(*args, label_axis="model")
    with pytest.raises(ValueError, match=r"keywords \(batch_axis, label_count\) need label_axis"):
        head.bpmll_head_loss(*args, batch_axis="batch", label_count=3)


# --------------------------------------------------------------------------
# The Keras layer
# --------------------------------------------------------------------------


def trainer(units, label_width, label_ids, label_dtype, chunk_size=16):
    features = keras.Input((10,))
    labels = keras.Input((label_width,), dtype=label_dtype)
    hidden = keras.layers.Dense(16, activation="relu")(features)
    layer = BPMLLHead(units, label_ids=label_ids, chunk_size=chunk_size, top_k=3)
    model = keras.Model([features, labels], layer(hidden, labels=labels))
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    return model, keras.Model(features, layer(hidden)), keras.Model(features, hidden), layer


def test_keras_trains_on_padded_ids_from_tf_data_and_round_trips(rng, tmp_path):
    keras.utils.set_random_seed(0)
    x = rng.normal(size=(128, 10)).astype(np.float32)
    ids, dense = ids_and_dense(rng, 128, 50, 3, 5)
    model, predictor, features_to_hidden, layer = trainer(50, 5, True, "int32")
    data = tf.data.Dataset.from_tensor_slices(((x, ids),)).batch(32)
    before = model.evaluate(data, verbose=0)
    history = model.fit(data, epochs=4, verbose=0)
    assert history.history["loss"][-1] < before
    # The layer's loss is the mean of the unfused loss of its logits.
    logits = features_to_hidden(x) @ layer.kernel + layer.bias
    np.testing.assert_allclose(model.evaluate((x, ids), batch_size=128, verbose=0), np.mean(tfl.bpmll_loss(dense, logits)), rtol=1e-5)
    top = predictor.predict(x, verbose=0)
    want = tf.math.top_k(logits, 3)
    np.testing.assert_array_equal(top, want.indices)
    scores, _ = layer.top_k_scores_and_ids(features_to_hidden(x))
    np.testing.assert_allclose(scores, want.values, rtol=1e-6)
    path = os.path.join(tmp_path, "head.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.evaluate((x, ids), batch_size=128, verbose=0), model.evaluate((x, ids), batch_size=128, verbose=0), rtol=1e-6)
    assert loaded.layers[-1].get_config()["label_ids"] is True


@pytest.mark.parametrize("label_ids", [True, False])
def test_keras_layer_loss_and_gradients_match_the_unfused_mean(rng, label_ids):
    """The layer's added loss (on ids the one-pass form) and its gradients
    for the kernel, bias and the layer's input are those of the batch mean
    of the unfused loss of its logits."""
    hidden = tf.constant(rng.normal(size=(8, 5)).astype(np.float32))
    ids, dense = ids_and_dense(rng, 8, 30, 4, 6)
    layer = BPMLLHead(30, label_ids=label_ids, chunk_size=7, bias_initializer="random_normal")
    layer.build(hidden.shape)
    weights = [layer.kernel, layer.bias]
    with tf.GradientTape() as tape:
        tape.watch(hidden)
        rows = layer(hidden, labels=tf.constant(ids if label_ids else dense))
        loss = tf.add_n(layer.losses)
    got = [loss] + tape.gradient(loss, [hidden] + weights)
    with tf.GradientTape() as tape:
        tape.watch(hidden)
        want_rows = tfl.bpmll_loss(dense, hidden @ layer.kernel + layer.bias)
        want_loss = tf.reduce_mean(want_rows)
    want = [want_loss] + tape.gradient(want_loss, [hidden] + weights)
    np.testing.assert_allclose(rows, want_rows, rtol=LOSS_RTOL)
    assert_matches(got, want)


def test_keras_trains_on_dense_labels(rng):
    keras.utils.set_random_seed(0)
    x = rng.normal(size=(96, 10)).astype(np.float32)
    _, dense = ids_and_dense(rng, 96, 40, 4, 4)
    model = trainer(40, 40, False, "float32", chunk_size=None)[0]
    before = model.evaluate((x, dense), verbose=0)
    model.fit((x, dense), batch_size=32, epochs=4, verbose=0)
    assert model.evaluate((x, dense), verbose=0) < before


def test_sparse_ids_give_the_padded_ids_loss(rng):
    hidden, kernel, bias = (tf.constant(a) for a in problem(rng))
    ids, _ = ids_and_dense(rng, 6, 23, 3, 4)
    # A SparseTensor whose values are the ids, at their padded positions.
    sparse = tf.SparseTensor(tf.boolean_mask(tf.where(tf.ones_like(ids, tf.bool)), tf.reshape(ids >= 0, [-1])),
                             tf.boolean_mask(tf.reshape(ids, [-1]), tf.reshape(ids >= 0, [-1])), ids.shape)
    got = head.bpmll_head_loss(sparse, hidden, kernel, bias, label_ids=True, chunk_size=5)
    want = head.bpmll_head_loss(ids, hidden, kernel, bias, label_ids=True, chunk_size=5)
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="SparseTensor labels are label ids: pass label_ids=True"):
        head.bpmll_head_loss(sparse, hidden, kernel, bias)


def test_keras_trains_on_ragged_ids_from_tf_data():
    # Ragged ids straight from tf.data into a ragged model input: no padding step anywhere.
    rng = np.random.default_rng(3)
    keras.utils.set_random_seed(0)
    x = rng.normal(size=(128, 10)).astype(np.float32)
    ids = tf.ragged.constant([rng.choice(50, rng.integers(1, 5), replace=False) for _ in range(128)], tf.int64)
    data = tf.data.Dataset.from_tensor_slices(((x, ids),)).batch(32)
    features, labels = keras.Input((10,)), keras.Input((None,), dtype="int64", ragged=True)
    hidden = keras.layers.Dense(16, activation="relu")(features)
    model = keras.Model([features, labels], tfl.BPMLLHead(50, label_ids=True)(hidden, labels=labels))
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    before = model.evaluate(data, verbose=0)
    history = model.fit(data, epochs=4, verbose=0).history["loss"]
    assert np.all(np.isfinite(history)) and history[-1] < before
