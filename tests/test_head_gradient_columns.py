"""The in-place column writes behind the TF head's kernel gradient outside
XLA (FusedHeadWriteColumns, FusedHeadAddColumns: cc/tf/ops/
head_gradient_columns_op.cc): the ops themselves, their errors, and the
head's graph-mode gradients through them against the TensorArray path they
replace, bit for bit, over chunks that do and do not divide the labels,
and across repeated calls of one traced step (the buffer is the step's own)."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from tf_fused_losses import _head_tf, _loader, head  # noqa: E402

pytestmark = pytest.mark.skipif(_loader.use_pure_tf(), reason="the op library does not load here (pure path)")


def library():
    return _loader.ops()


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_write_columns_writes_the_columns_and_nothing_else(rng, dtype):
    matrix = rng.normal(size=(3, 10)).astype(dtype)
    columns = rng.normal(size=(3, 4)).astype(dtype)
    out = library().fused_head_write_columns(matrix=tf.constant(matrix), columns=tf.constant(columns), start=5)
    want = matrix.copy()
    want[:, 5:9] = columns
    np.testing.assert_array_equal(out.numpy(), want)


def test_add_columns_adds_each_repeated_id_in_turn(rng):
    matrix = rng.normal(size=(4, 6)).astype(np.float32)
    ids = np.array([2, 0, 2, 5], np.int64)
    columns = rng.normal(size=(4, 4)).astype(np.float32)
    out = library().fused_head_add_columns(matrix=tf.constant(matrix), ids=tf.constant(ids), columns=tf.constant(columns))
    want = matrix.copy()
    for j, i in enumerate(ids):
        want[:, i] += columns[j]
    np.testing.assert_array_equal(out.numpy(), want)


def test_bad_arguments_name_the_range_and_the_shapes():
    matrix = tf.zeros([3, 10])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"columns \[8, 12\) are outside the matrix's \[0, 10\)"):
        library().fused_head_write_columns(matrix=matrix, columns=tf.zeros([3, 4]), start=8)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"columns must be \(3, w\)"):
        library().fused_head_write_columns(matrix=matrix, columns=tf.zeros([2, 4]), start=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"ids\[1\] = 10 is outside \[0, 10\)"):
        library().fused_head_add_columns(matrix=matrix, ids=tf.constant([0, 10]), columns=tf.zeros([2, 3]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"ids must be \(n,\) and columns \(n, 3\)"):
        library().fused_head_add_columns(matrix=matrix, ids=tf.constant([0, 1]), columns=tf.zeros([2, 4]))


def head_step(labels, hidden, kernel, bias, **options):
    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch([hidden, kernel, bias])
            loss = head.bpmll_head_loss(labels, hidden, kernel, bias, **options)
            total = tf.reduce_sum(loss * tf.linspace(0.5, 2.0, tf.size(loss))) if loss.shape.rank else loss
        return [loss] + tape.gradient(total, [hidden, kernel, bias])

    return step


@pytest.mark.parametrize("chunk_size", [4, 7, 29])
@pytest.mark.parametrize("form", ["one-pass", "two-pass"])
def test_graph_gradients_equal_the_tensorarray_path_bit_for_bit(rng, monkeypatch, form, chunk_size):
    batch, d, labels = 5, 6, 29
    hidden, kernel, bias = (
        tf.constant(rng.normal(size=shape).astype(np.float32)) for shape in ((batch, d), (d, labels), (labels,))
    )
    ids = np.full((batch, 4), -1, np.int32)
    for i in range(batch):
        ids[i, : i % 4 + 1] = rng.choice(labels, i % 4 + 1, replace=False)
    ids[2, 3] = ids[2, 0]  # a repeated id: its column is added to once
    options = dict(label_ids=True, chunk_size=chunk_size)
    if form == "one-pass":
        options["reduction"] = "sum_over_batch_size"
    step = head_step(tf.constant(ids), hidden, kernel, bias, **options)
    graph = step.get_concrete_function().graph.as_graph_def()
    op_types = {node.op for f in graph.library.function for node in f.node_def} | {node.op for node in graph.node}
    assert "FusedHeadWriteColumns" in op_types
    in_place = [step() for _ in range(3)]  # the same traced step, three times
    monkeypatch.setattr(_head_tf, "_column_writes_available", lambda: False)
    by_chunks = head_step(tf.constant(ids), hidden, kernel, bias, **options)()
    for got in in_place:
        for name, g, w in zip(("loss", "hidden", "kernel", "bias"), got, by_chunks):
            np.testing.assert_array_equal(g.numpy(), w.numpy(), err_msg=name)
