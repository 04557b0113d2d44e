"""The fused label-id BP-MLL loss on JAX (python/tf_fused_losses/_ids_jax.py):
the tfl_bpmll_ids_loss handler of libtfl_core.so through jax.ffi, against
the dense JAX loss (_jax_ops.bpmll_loss) on the equivalent uint8 matrix, bit
for bit, under jit, grad and vmap, on fixed and drawn cases (NaN and ±inf
logits included); bad ids raise naming the element. Needs jax and
libtfl_core.so (TFL_CORE_LIBRARY, or lib/ beside the module); no TensorFlow.
Runs with jax_enable_x64 on (float64 logits, int64 ids), restored after.
"""

import importlib
import os
import re

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="the JAX path needs jax (pip install jax)")
import jax.numpy as jnp  # noqa: E402
from helpers.label_ids import assert_same_bits, dense_of, random_ids  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

jo = importlib.import_module("tf_fused_losses._jax_ops")
ids_jax = importlib.import_module("tf_fused_losses._ids_jax")
if not os.path.isfile(jo.library_path()):
    pytest.skip(
        f"libtfl_core.so is not at {jo.library_path()} (build it, or set {jo.LIBRARY_ENV})", allow_module_level=True
    )

FLOATS = ["float16", "bfloat16", "float32", "float64"]
SHAPES = [(0, 5, 3), (3, 1, 2), (4, 37, 6), (3, 2049, 9), (20, 3000, 12), (2, 65537, 7), (5, 40, 0)]


@pytest.fixture(scope="module", autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def loss_and_grad(loss_fn, labels, c, upstream):
    return jax.value_and_grad(lambda c: jnp.sum(loss_fn(labels, c) * upstream))(c), loss_fn(labels, c)


def assert_ids_equal_dense(ids, dense, c, what, jit=True):
    upstream = jnp.asarray(np.linspace(0.5, 2.0, c.shape[0]), c.dtype)
    run = jax.jit(loss_and_grad, static_argnums=0) if jit else loss_and_grad
    (_, got_grad), got = run(ids_jax.bpmll_loss_from_padded_ids, ids, c, upstream)
    (_, want_grad), want = run(jo.bpmll_loss, jnp.asarray(dense), c, upstream)
    assert_same_bits(got, want, f"{what} loss")
    assert_same_bits(got_grad, want_grad, f"{what} gradient")


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("id_dtype", ["int32", "int64"])
def test_ids_equal_the_dense_loss_under_jit_and_grad(rng, shape, dtype, id_dtype):
    batch, labels, width = shape
    ids, dense = random_ids(rng, batch, labels, width)
    c = jnp.asarray(rng.normal(scale=3.0, size=(batch, labels)), dtype)
    assert_ids_equal_dense(jnp.asarray(ids, id_dtype), dense, c, f"{shape} {dtype} {id_dtype}")


def test_eager_equals_jit_and_vmap_folds_into_rows(rng):
    ids, dense = random_ids(rng, 6, 50, 4)
    c = jnp.asarray(rng.normal(size=(6, 50)), jnp.float32)
    assert_ids_equal_dense(jnp.asarray(ids), dense, c, "eager", jit=False)
    stacked_ids, stacked_c = jnp.asarray(ids).reshape(2, 3, 4), c.reshape(2, 3, 50)
    got = jax.jit(jax.vmap(ids_jax.bpmll_loss_from_padded_ids))(stacked_ids, stacked_c)
    assert_same_bits(got.reshape(6), jo.bpmll_loss(jnp.asarray(dense), c), "vmap")


def test_dominating_positives_and_non_finite_logits():
    c = np.full((5, 8), -30.0, np.float32)
    c[0, [0, 3]] = 30.0
    c[1] = [np.inf, 0, 1, 2, 3, 4, 5, 6]
    c[2] = [-np.inf, 0, 1, 2, 3, 4, 5, 6]
    c[3] = [0, np.nan, 0, 0, 0, 0, 0, 0]
    c[4] = [np.inf] * 8
    ids = np.array([[0, 3, -1], [0, -1, -1], [0, 0, -1], [-1, 2, 1], [-1, -1, -1]])
    dense = dense_of(ids, 8)
    assert_ids_equal_dense(jnp.asarray(ids), dense, jnp.asarray(c), "edge cases")
    loss = np.asarray(ids_jax.bpmll_loss_from_padded_ids(jnp.asarray(ids), jnp.asarray(c)))
    np.testing.assert_allclose(loss[0], np.exp(-60.0), rtol=1e-6)
    assert np.isnan(loss[3]) and loss[2] == np.inf and loss[4] == 0


@settings(max_examples=int(os.environ.get("TFL_JAX_EXAMPLES", "30")), deadline=None, derandomize=True, database=None)
@given(
    batch=st.integers(0, 5),
    labels=st.integers(1, 300),
    width=st.integers(0, 8),
    seed=st.integers(0, 2**32 - 1),
    dtype=st.sampled_from(FLOATS),
    special=st.sampled_from([None, np.nan, np.inf, -np.inf, 800.0, -800.0]),
)
def test_drawn_cases_equal_the_dense_loss(batch, labels, width, seed, dtype, special):
    rng = np.random.default_rng(seed)
    ids, dense = random_ids(rng, batch, labels, width)
    c = rng.normal(scale=rng.choice([0.5, 5.0, 40.0]), size=(batch, labels))
    if special is not None and batch:
        c[rng.random(c.shape) < 0.05] = special
    assert_ids_equal_dense(jnp.asarray(ids), dense, jnp.asarray(c, dtype), "drawn")


@pytest.mark.parametrize(
    "ids, labels, message",
    [
        ([[0, 1], [2, -1], [3, 3], [1, 670091]], 670091, "label_ids[3, 1] = 670091 is outside [0, 670091)"),
        ([[0, -2, 7], [9, 9, 9]], 5, "label_ids[0, 1] = -2 is neither a label id in [0, 5) nor the padding -1"),
    ],
)
def test_bad_ids_raise_naming_the_element(ids, labels, message):
    c = jnp.zeros((len(ids), labels), jnp.float32)
    with pytest.raises(Exception, match=re.escape("FusedBpmllIdsLoss: " + message)):
        jax.block_until_ready(jax.jit(ids_jax.bpmll_loss_from_padded_ids)(jnp.asarray(ids), c))


def test_argument_checks_name_the_argument():
    c = jnp.zeros((2, 4), jnp.float32)
    with pytest.raises(ValueError, match="label_ids must be int32 or int64; got dtype float32"):
        ids_jax.bpmll_loss_from_padded_ids(jnp.zeros((2, 3), jnp.float32), c)
    with pytest.raises(ValueError, match=re.escape("label_ids must be rank 2 (batch, ids)")):
        ids_jax.bpmll_loss_from_padded_ids(jnp.asarray([1, 2]), c)
    with pytest.raises(ValueError, match="same batch size"):
        ids_jax.bpmll_loss_from_padded_ids(jnp.asarray([[1], [2], [3]]), c)


def test_the_hlo_holds_the_ids_custom_call():
    ids, c = jnp.asarray([[1, -1], [0, 2]]), jnp.zeros((2, 5), jnp.float32)
    text = jax.jit(jax.grad(lambda c: ids_jax.bpmll_loss_from_padded_ids(ids, c).sum())).lower(c).as_text()
    assert "tfl_bpmll_ids_loss" in text and "tfl_bpmll_loss_grad" in text
