"""The fused label-id BP-MLL op (FusedBpmllIdsLoss) on TensorFlow: each row's
positive labels as ids padded with -1, giving the loss and y_pred gradient
of the dense op (FusedBpmllLoss) on the equivalent uint8 0/1 matrix bit for
bit, eagerly, in tf.function and under jit_compile; bad ids raise naming the
element; the bits do not depend on the thread count."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

import tf_fused_losses as tfl
from helpers import subprocess_env
from helpers.label_ids import assert_same_bits, dense_of, random_ids
from tf_fused_losses import _ids_tf, _loader

FLOATS = ["float16", "bfloat16", "float32", "float64"]
ID_DTYPES = ["int32", "int64"]
# (batch, labels, K): batch 0, one label, odd, one past a chunk, whole rows
# (>= 16 rows), the piece path (few long rows; 65537 is one past the
# whole-row limit), K = 0 (padding only).
SHAPES = [(0, 5, 3), (3, 1, 2), (4, 37, 6), (3, 2049, 9), (20, 3000, 12), (2, 65537, 7), (3, 70001, 5), (5, 40, 0)]


def logits(rng, shape, dtype):
    return tf.cast(tf.constant(rng.normal(scale=3.0, size=shape)), dtype)


def dense_op(dense, c):
    return _loader.ops().fused_bpmll_loss(y_true=tf.constant(dense), y_pred=c)


def ids_op(ids, c):
    return _loader.ops().fused_bpmll_ids_loss(label_ids=ids, y_pred=c)


def assert_ids_equal_dense(ids, dense, c, what):
    for name, got, want in zip(("loss", "cached_grad"), ids_op(ids, c), dense_op(dense, c)):
        assert_same_bits(got, want, f"{what} {name}")


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("id_dtype", ID_DTYPES)
def test_ids_equal_the_dense_op_bitwise(rng, shape, dtype, id_dtype):
    batch, labels, width = shape
    ids, dense = random_ids(rng, batch, labels, width)
    assert_ids_equal_dense(tf.constant(ids, id_dtype), dense, logits(rng, (batch, labels), dtype), f"{shape} {dtype}")


@pytest.mark.parametrize("dtype", FLOATS)
def test_rows_with_all_none_or_padding_only_positives(rng, dtype):
    labels = 9
    ids = np.array(
        [
            list(range(labels)) + [-1],  # every label positive
            [8, 7, 6, 5, 4, 3, 2, 1, 0, 0],  # every label, reversed, one repeated
            [-1] * 10,  # padding only
            [3, 3, 3, -1, 3, -1, -1, -1, -1, -1],  # one positive, repeated
            [-1, -1, -1, -1, -1, -1, -1, -1, -1, 0],  # padding first
        ]
    )
    dense = dense_of(ids, labels)
    c = logits(rng, dense.shape, dtype)
    assert_ids_equal_dense(tf.constant(ids), dense, c, dtype)
    loss, grad = ids_op(tf.constant(ids), c)
    np.testing.assert_array_equal(tf.cast(loss, tf.float64).numpy()[[0, 1, 2]], 0)
    np.testing.assert_array_equal(tf.cast(grad, tf.float64).numpy()[[0, 1, 2]], 0)


def test_dominating_positives_lose_nothing_to_cancellation():
    # Positives at +30 and negatives at -30 in float32: the negatives' sum is
    # e^-30 per label next to the positives' e^30, which "all minus
    # positives" would cancel to garbage.
    labels, positives = 1000, [0, 17, 999]
    c = np.full((1, labels), -30.0, np.float32)
    c[0, positives] = 30.0
    dense = np.zeros((1, labels), np.uint8)
    dense[0, positives] = 1
    ids = tf.constant([positives + [-1]], tf.int32)
    assert_ids_equal_dense(ids, dense, tf.constant(c), "dominating positives")
    negatives = labels - len(positives)
    want = (len(positives) * np.exp(-30.0)) * (negatives * np.exp(-30.0)) / (len(positives) * negatives)
    np.testing.assert_allclose(ids_op(ids, tf.constant(c))[0].numpy(), [want], rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_nan_and_infinite_logits_follow_the_dense_rule(dtype):
    # (ids, logits): the rows of docs/semantics.md's table, a NaN logit with
    # and without pairs, every label positive at +inf, overflowing logits.
    rows = [
        ([0], [np.inf, 0, 1, 2, 3, 4]),
        ([0], [-np.inf, 0, 1, 2, 3, 4]),
        ([0], [np.inf, np.inf, 0, 0, 0, 0]),
        ([0], [0, np.inf, -np.inf, 0, 0, 0]),
        ([1, 2], [0, np.nan, 0, 0, 0, 0]),
        ([], [np.nan, 0, 0, 0, 0, 0]),
        ([5, 4, 3, 2, 1, 0], [np.inf] * 6),
        ([5], [-800, 800, 0, 0, 0, -800]),
    ]
    ids = np.array([positives + [-1] * (6 - len(positives)) for positives, _ in rows])
    c = tf.cast(tf.constant([row for _, row in rows]), dtype)
    assert_ids_equal_dense(tf.constant(ids), dense_of(ids, 6), c, f"non-finite {dtype}")
    loss = tf.cast(ids_op(tf.constant(ids), c)[0], tf.float64).numpy()
    assert np.isnan(loss[[2, 4, 5]]).all() and loss[1] == np.inf and loss[0] == 0 and loss[6] == 0


@pytest.mark.parametrize("dtype", FLOATS)
def test_gradient_through_the_tape_equals_the_dense_loss(rng, dtype):
    ids, dense = random_ids(rng, 6, 300, 8)
    c = logits(rng, (6, 300), dtype)
    upstream = tf.cast(tf.constant(rng.uniform(0.5, 2.0, size=6)), dtype)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(c)
        got = _ids_tf.bpmll_loss_from_padded_ids(tf.constant(ids), c) * upstream
        want = tfl.bpmll_loss(tf.constant(dense), c) * upstream
    assert_same_bits(got, want, "loss")
    assert_same_bits(tape.gradient(got, c), tape.gradient(want, c), "gradient")


def loss_and_grad(ids, c):
    with tf.GradientTape() as tape:
        tape.watch(c)
        loss = _ids_tf.bpmll_loss_from_padded_ids(ids, c)
    return loss, tape.gradient(loss, c)


@pytest.mark.parametrize("shape", [(0, 5, 3), (4, 37, 6), (20, 3000, 12), (2, 70001, 5)], ids=str)
@pytest.mark.parametrize("dtype", FLOATS)
def test_tf_function_and_jit_compile_give_the_eager_bits(rng, shape, dtype):
    batch, labels, width = shape
    ids, _ = random_ids(rng, batch, labels, width)
    ids, c = tf.constant(ids), logits(rng, (batch, labels), dtype)
    want = loss_and_grad(ids, c)
    for jit in (False, True):
        got = tf.function(loss_and_grad, jit_compile=jit)(ids, c)
        for name, g, w in zip(("loss", "gradient"), got, want):
            assert_same_bits(g, w, f"{name} jit_compile={jit}")


@settings(max_examples=int(os.environ.get("TFL_IDS_EXAMPLES", "25")), deadline=None, derandomize=True, database=None)
@given(
    batch=st.integers(0, 5),
    labels=st.integers(1, 300),
    width=st.integers(0, 8),
    seed=st.integers(0, 2**32 - 1),
    dtype=st.sampled_from(FLOATS),
    special=st.sampled_from([None, np.nan, np.inf, -np.inf, 800.0, -800.0]),
)
def test_drawn_cases_equal_the_dense_op_eagerly_and_under_jit_compile(batch, labels, width, seed, dtype, special):
    rng = np.random.default_rng(seed)
    ids, dense = random_ids(rng, batch, labels, width)
    c = rng.normal(scale=rng.choice([0.5, 5.0, 40.0]), size=(batch, labels))
    if special is not None:
        c[rng.random(c.shape) < 0.05] = special
    c = tf.cast(tf.constant(c), dtype)
    assert_ids_equal_dense(tf.constant(ids), dense, c, "drawn")
    with tf.GradientTape() as tape:
        tape.watch(c)
        want = tfl.bpmll_loss(tf.constant(dense), c)
    want_grad = tape.gradient(want, c)
    got, got_grad = tf.function(loss_and_grad, jit_compile=True)(tf.constant(ids), c)
    assert_same_bits(got, want, "drawn loss under jit_compile")
    assert_same_bits(got_grad, want_grad, "drawn gradient under jit_compile")


def test_hlo_holds_the_ids_custom_call(rng):
    ids, c = tf.constant([[1, -1], [0, 2]]), logits(rng, (2, 5), "float32")
    hlo = tf.function(loss_and_grad, jit_compile=True).experimental_get_compiler_ir(ids, c)(stage="hlo")
    assert sorted(set(re.findall(r'custom_call_target="([^"]+)"', hlo))) == ["tfl_bpmll_ids_loss", "tfl_bpmll_loss_grad"]
    assert "API_VERSION_TYPED_FFI" in hlo


BAD_IDS = [
    (np.array([[0, 1], [2, -1], [3, 3], [1, 670091]]), 670091, "label_ids[3, 1] = 670091 is outside [0, 670091)"),
    (np.array([[0, -2, 7], [9, 9, 9]]), 5, "label_ids[0, 1] = -2 is neither a label id in [0, 5) nor the padding -1"),
    (np.array([[0, -1], [-1, 5]]), 5, "label_ids[1, 1] = 5 is outside [0, 5)"),
]


@pytest.mark.parametrize("ids, labels, message", BAD_IDS, ids=["670091", "-2", "5"])
@pytest.mark.parametrize("jit", [False, True])
def test_bad_ids_raise_naming_the_element(ids, labels, message, jit):
    c = tf.zeros((len(ids), labels))
    fn = tf.function(_ids_tf.bpmll_loss_from_padded_ids, jit_compile=True) if jit else _ids_tf.bpmll_loss_from_padded_ids
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape("FusedBpmllIdsLoss: " + message)):
        fn(tf.constant(ids), c)


def test_argument_checks_name_the_argument():
    c = tf.zeros((2, 4))
    with pytest.raises(ValueError, match="label_ids must be int32 or int64; got dtype float32"):
        _ids_tf.bpmll_loss_from_padded_ids(tf.zeros((2, 3)), c)
    with pytest.raises(ValueError, match=re.escape("label_ids must be rank 2 (batch, ids)")):
        _ids_tf.bpmll_loss_from_padded_ids(tf.constant([1, 2]), c)
    with pytest.raises(ValueError, match="same batch size"):
        _ids_tf.bpmll_loss_from_padded_ids(tf.constant([[1], [2], [3]]), c)
    with pytest.raises(ValueError, match="y_pred must be one of"):
        _ids_tf.bpmll_loss_from_padded_ids(tf.constant([[1], [2]]), tf.zeros((2, 4), tf.int32))


THREADS_SCRIPT = r"""
import json, sys
import numpy as np
import tensorflow as tf

threads, out = int(sys.argv[1]), sys.argv[2]
tf.config.threading.set_intra_op_parallelism_threads(threads)
from tf_fused_losses import _loader

ops = _loader.ops()
results = {}
for rows, labels in [(2, 65536), (4, 30000), (1, 70001), (17, 3000)]:
    rng = np.random.default_rng([rows, labels])
    ids = rng.integers(-1, labels, size=(rows, 9))
    c = tf.constant(rng.normal(scale=2.0, size=(rows, labels)).astype(np.float32))
    for jit in (False, True):
        fn = tf.function(lambda i, c: ops.fused_bpmll_ids_loss(label_ids=i, y_pred=c), jit_compile=jit)
        loss, grad = fn(tf.constant(ids), c)
        results[f"{rows}x{labels}|{jit}|loss"] = loss.numpy()
        results[f"{rows}x{labels}|{jit}|grad"] = grad.numpy()
np.savez(out, **results)
print(json.dumps({"threads": threads}))
"""


def test_same_bits_for_every_thread_count(tmp_path):
    outputs = {}
    for threads in (1, 3):
        path = tmp_path / f"{threads}.npz"
        done = subprocess.run([sys.executable, "-c", THREADS_SCRIPT, str(threads), str(path)], capture_output=True,
                              text=True, env=subprocess_env(pure_tf=False), timeout=600)
        assert done.returncode == 0, f"{threads} threads:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
        with np.load(path) as data:
            outputs[threads] = {key: data[key] for key in data.files}
    assert outputs[1].keys() == outputs[3].keys() and len(outputs[1]) == 16
    for key, one in outputs[1].items():
        assert one.tobytes() == outputs[3][key].tobytes(), key
