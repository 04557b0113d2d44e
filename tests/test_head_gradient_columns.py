"""The library ops behind the TF head outside XLA: the in-place column
writes of its kernel gradient (FusedHeadWriteColumns, FusedHeadAddColumns:
cc/tf/ops/head_gradient_columns_op.cc) and the one-pass form's chunk kernel
(FusedHeadChunk: cc/core/bpmll/bpmll_head_cpu.h). The ops themselves against
numpy, their errors, and the head's graph-mode gradients through them: the
column writes against the TensorArray path they replace, bit for bit, over
chunks that do and do not divide the labels, and across repeated calls of
one traced step (the buffer is the step's own); the chunk kernel against the
framework's ops it replaces, to the last bits of exp."""

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
    assert ("FusedHeadChunk" in op_types) == (form == "one-pass")
    in_place = [step() for _ in range(3)]  # the same traced step, three times
    monkeypatch.setattr(_head_tf, "_column_writes_available", lambda: False)
    by_chunks = head_step(tf.constant(ids), hidden, kernel, bias, **options)()
    for got in in_place:
        for name, g, w in zip(("loss", "hidden", "kernel", "bias"), got, by_chunks):
            np.testing.assert_array_equal(g.numpy(), w.numpy(), err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_chunk_kernel_against_numpy(rng, dtype):
    rows, width, start = 37, 19, 40
    matmul = rng.normal(size=(rows, width)).astype(dtype)
    bias = rng.normal(size=width).astype(dtype)
    factor = rng.normal(size=rows).astype(dtype)
    factor[3] = -1e30  # a row whose terms are all 0
    row_scale = rng.uniform(0.5, 2, size=rows).astype(dtype)
    ids = np.full((rows, 3), -1, np.int32)
    ids[:, 0] = rng.integers(start, start + width, rows)  # in the chunk
    ids[:, 1] = rng.integers(0, start, rows)  # before it
    ids[5, 2] = start + width  # just past it
    dlogits, term_sums, logit_sums, column_sums = library().fused_head_chunk(
        matmul=matmul, bias=bias, factor=factor, row_scale=row_scale, ids=ids, start=start
    )
    c = matmul.astype(np.float64) + bias
    terms = np.exp(c + factor[:, None].astype(np.float64))
    terms[np.arange(rows), ids[:, 0] - start] = 0
    want = row_scale[:, None] * terms
    rtol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(dlogits, want, rtol=rtol, atol=0)
    np.testing.assert_allclose(term_sums, terms.sum(1), rtol=rtol)
    # A sum of mixed signs: float32 rounding against the terms' magnitude.
    np.testing.assert_allclose(logit_sums, c.sum(1), rtol=0, atol=rtol * np.abs(c).sum(1).max())
    np.testing.assert_allclose(column_sums, want.sum(0), rtol=rtol)
    assert not np.any(np.asarray(dlogits)[3]) and term_sums[3] == 0
    assert np.all(np.asarray(dlogits)[np.arange(rows), ids[:, 0] - start] == 0)


def test_chunk_kernel_shape_errors():
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"bias must be \(width,\)"):
        library().fused_head_chunk(matmul=tf.zeros([2, 3]), bias=tf.zeros([4]), factor=tf.zeros([2]),
                                   row_scale=tf.zeros([2]), ids=tf.zeros([2, 1], tf.int32), start=0)


@pytest.mark.parametrize("wrap", ["eager", "tf.function"])
def test_one_pass_head_with_the_chunk_kernel_equals_the_framework_ops(rng, monkeypatch, wrap):
    """Same loss and gradients to float32 rounding, with rows that take the
    fast form and, in another call, a chunk with an infinite logit (the
    exact form, the same framework ops on both paths: bitwise)."""
    batch, d, labels = 9, 5, 61
    hidden, kernel, bias = (rng.normal(size=shape).astype(np.float32) for shape in ((batch, d), (d, labels), (labels,)))
    ids = np.full((batch, 4), -1, np.int32)
    for i in range(batch):
        ids[i, : i % 4 + 1] = rng.choice(labels, i % 4 + 1, replace=False)
    ids[0] = -1  # no positive: loss and gradient 0
    infinite_bias = bias.copy()
    infinite_bias[7] = np.inf

    def run(b):
        hidden_t, kernel_t, bias_t = tf.constant(hidden), tf.constant(kernel), tf.constant(b)

        def step():
            with tf.GradientTape() as tape:
                tape.watch([hidden_t, kernel_t, bias_t])
                loss = head.bpmll_head_loss(tf.constant(ids), hidden_t, kernel_t, bias_t, label_ids=True,
                                            chunk_size=16, reduction="sum_over_batch_size")
            return [loss] + tape.gradient(loss, [hidden_t, kernel_t, bias_t])

        return [x.numpy() for x in (tf.function(step) if wrap == "tf.function" else step)()]

    with_kernel = [run(bias), run(infinite_bias)]
    monkeypatch.setattr(_head_tf, "_chunk_kernel_available", lambda: False)
    framework = [run(bias), run(infinite_bias)]
    for got, want in zip(with_kernel[0], framework[0]):
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7 * np.max(np.abs(want)))
    for got, want in zip(with_kernel[1], framework[1]):
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7 * np.nanmax(np.abs(np.where(np.isfinite(want), want, 0))))


_CHUNK_SCRIPT = """
import sys
import numpy as np
import tensorflow as tf
import tf_fused_losses as tfl
from tf_fused_losses import _loader
rng = np.random.default_rng(3)
rows, width = 45, 300
args = dict(matmul=rng.normal(size=(rows, width)).astype(np.float32), bias=rng.normal(size=width).astype(np.float32),
            factor=rng.normal(size=rows).astype(np.float32), row_scale=rng.uniform(0.5, 2, rows).astype(np.float32),
            ids=rng.integers(-1, 400, (rows, 5)).astype(np.int32), start=100)
out = _loader.ops().fused_head_chunk(**args)
np.savez(sys.argv[1], cpu_isa=tfl.build_info()["cpu_isa"], **{f"out{i}": o.numpy() for i, o in enumerate(out)})
"""


def test_every_cpu_build_of_the_chunk_kernel_agrees(tmp_path):
    """The chunk kernel's AVX2 and AVX-512 builds against the baseline build
    (TFL_CPU_ISA caps the choice): exp and the sums' order may move the last
    bits, nothing more."""
    import subprocess
    import sys

    from helpers import runnable_cpu_isas, subprocess_env

    caps = runnable_cpu_isas()
    if len(caps) < 2 or caps[0] != "baseline":
        pytest.skip(f"this CPU and library run only {caps}: no two builds to compare")
    results = {}
    for cap in caps:
        path = tmp_path / f"{cap}.npz"
        subprocess.run([sys.executable, "-c", _CHUNK_SCRIPT, str(path)],
                       env=subprocess_env({"TFL_CPU_ISA": cap}, pure_tf=False), check=True)
        results[cap] = np.load(path)
        assert str(results[cap]["cpu_isa"]) == cap
    for cap in caps[1:]:
        for key in ("out0", "out1", "out2", "out3"):
            want = results["baseline"][key]
            np.testing.assert_allclose(results[cap][key], want, rtol=0, atol=2e-6 * np.max(np.abs(want)),
                                       err_msg=f"{cap} vs baseline: {key}")
