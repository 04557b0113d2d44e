"""The ranking and XMC metrics (`tf_fused_losses.metrics`, `.keras_metrics`)
against sklearn.metrics and numpy references, on the Keras backend of
KERAS_BACKEND (run the file under each: the TF venv, a JAX venv).

Scores are small integers in the tie cases, so that ties with relevant and
irrelevant labels, at the top and at the k-th place, are common."""

import os

import numpy as np
import pytest

skm = pytest.importorskip("sklearn.metrics", reason="the metrics are checked against scikit-learn's")
keras = pytest.importorskip("keras")

from tf_fused_losses import keras_metrics, metrics  # noqa: E402

BACKEND = keras.backend.backend()


@pytest.fixture(scope="module", autouse=True)
def float64_on_jax():
    """JAX keeps float64 only with x64 on; the comparisons are in float64."""
    if BACKEND != "jax":
        yield
        return
    import jax

    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def make_case(seed, batch=48, labels=13, ties=True, density=0.3):
    """Dense 0/1 labels with an empty row and a full row, and float64 scores."""
    rng = np.random.default_rng(seed)
    y_true = (rng.random((batch, labels)) < density).astype(np.float64)
    y_true[0] = 0.0
    y_true[1] = 1.0
    y_true[2] = 0.0
    y_true[2, 3] = 1.0
    if ties:
        y_pred = rng.integers(-2, 3, (batch, labels)).astype(np.float64)
        y_pred[3] = 1.0  # a row tied throughout
    else:
        y_pred = rng.standard_normal((batch, labels))
    return y_true, y_pred


def padded_ids(y_true, seed, extra=3):
    """Each row's relevant ids in a shuffled row padded with -1, one id repeated."""
    rng = np.random.default_rng(seed)
    width = int(y_true.sum(axis=1).max()) + extra
    ids = np.full((y_true.shape[0], width), -1, dtype=np.int64)
    for row, labels in enumerate(y_true):
        relevant = np.flatnonzero(labels)
        ids[row, : len(relevant)] = relevant
        if len(relevant):
            ids[row, -1] = relevant[0]
        rng.shuffle(ids[row])
    return ids


CASES = [pytest.param(seed, ties, id=f"{'ties' if ties else 'distinct'}-{seed}") for seed in (0, 1) for ties in (True, False)]


# --------------------------------------------------------------------------
# numpy references for what sklearn lacks
# --------------------------------------------------------------------------


def reference_one_error(y_true, y_pred):
    """1 unless every label at the row's top score is relevant; 0 without relevant labels."""
    errors = []
    for labels, scores in zip(y_true, y_pred):
        at_top = scores == scores.max()
        errors.append(float(labels.any() and not labels[at_top].all()))
    return np.array(errors)


def reference_tie_averaged_top_k(gains, y_pred, k):
    """sklearn's tie-averaged DCG with discount 1/k on the first k places:
    the mean, over orders of tied labels, of (1/k) sum of the top k gains."""
    rows = []
    for row_gains, scores in zip(gains, y_pred):
        unique, inverse, counts = np.unique(-scores, return_inverse=True, return_counts=True)
        group_gain = np.bincount(inverse.ravel(), weights=row_gains, minlength=len(unique)) / counts
        ends = np.cumsum(counts)
        starts = ends - counts
        places = np.clip(np.minimum(ends, k) - starts, 0, None)
        rows.append(float((group_gain * places).sum()) / k)
    return np.array(rows)


def reference_precision_at_k_distinct(y_true, y_pred, k):
    top = np.argsort(-y_pred, axis=1)[:, :k]
    return np.take_along_axis(y_true, top, axis=1).sum(axis=1) / k


# --------------------------------------------------------------------------
# Functions against sklearn, dense and ids
# --------------------------------------------------------------------------


@pytest.mark.parametrize("seed,ties", CASES)
def test_ranking_statistics_equal_sklearn(seed, ties):
    y_true, y_pred = make_case(seed, ties=ties)
    statistics = {name: to_numpy(rows) for name, rows in metrics.ranking_statistics(y_true, y_pred).items()}
    assert all(rows.dtype == np.float64 and rows.shape == (len(y_true),) for rows in statistics.values())
    np.testing.assert_allclose(statistics["ranking_loss"].mean(), skm.label_ranking_loss(y_true, y_pred), rtol=1e-12)
    np.testing.assert_allclose(statistics["coverage"].mean(), skm.coverage_error(y_true, y_pred), rtol=1e-12)
    np.testing.assert_allclose(
        statistics["average_precision"].mean(),
        skm.label_ranking_average_precision_score(y_true, y_pred),
        rtol=1e-12,
    )
    np.testing.assert_array_equal(statistics["one_error"], reference_one_error(y_true, y_pred))
    # Row by row too (sklearn on one row at a time), where sklearn accepts the row.
    for row in range(len(y_true)):
        one_true, one_pred = y_true[row : row + 1], y_pred[row : row + 1]
        np.testing.assert_allclose(statistics["ranking_loss"][row], skm.label_ranking_loss(one_true, one_pred), atol=1e-15)
        np.testing.assert_allclose(statistics["coverage"][row], skm.coverage_error(one_true, one_pred), atol=1e-15)
        np.testing.assert_allclose(
            statistics["average_precision"][row],
            skm.label_ranking_average_precision_score(one_true, one_pred),
            atol=1e-15,
        )


@pytest.mark.parametrize("seed,ties", CASES)
def test_single_statistic_functions_agree_with_ranking_statistics(seed, ties):
    y_true, y_pred = make_case(seed, ties=ties)
    statistics = metrics.ranking_statistics(y_true, y_pred)
    for function in (metrics.ranking_loss, metrics.one_error, metrics.coverage, metrics.average_precision):
        np.testing.assert_array_equal(to_numpy(function(y_true, y_pred)), to_numpy(statistics[function.__name__]))


@pytest.mark.parametrize("threshold", [0.0, 0.5, -1.0])
@pytest.mark.parametrize("seed,ties", CASES)
def test_hamming_loss_equals_sklearn(seed, ties, threshold):
    y_true, y_pred = make_case(seed, ties=ties)
    rows = to_numpy(metrics.hamming_loss(y_true, y_pred, threshold=threshold))
    np.testing.assert_allclose(rows.mean(), skm.hamming_loss(y_true, y_pred > threshold), rtol=1e-12)
    ids = padded_ids(y_true, seed)
    np.testing.assert_allclose(to_numpy(metrics.hamming_loss(ids, y_pred, threshold=threshold, label_ids=True)), rows)


@pytest.mark.parametrize("k", [1, 3, 5, 20])
@pytest.mark.parametrize("seed,ties", CASES)
def test_ndcg_at_k_equals_sklearn(seed, ties, k):
    y_true, y_pred = make_case(seed, ties=ties)
    rows = to_numpy(metrics.ndcg_at_k(y_true, y_pred, k))
    np.testing.assert_allclose(rows.mean(), skm.ndcg_score(y_true, y_pred, k=k), rtol=1e-12)
    np.testing.assert_allclose(rows[4:], [skm.ndcg_score(y_true[r : r + 1], y_pred[r : r + 1], k=k) for r in range(4, len(rows))], rtol=1e-12)


@pytest.mark.parametrize("k", [1, 3, 5, 20])
@pytest.mark.parametrize("seed,ties", CASES)
def test_precision_and_ps_precision_at_k(seed, ties, k):
    y_true, y_pred = make_case(seed, ties=ties)
    rows = to_numpy(metrics.precision_at_k(y_true, y_pred, k))
    np.testing.assert_allclose(rows, reference_tie_averaged_top_k(y_true, y_pred, k), rtol=1e-12, atol=1e-15)
    if not ties:
        np.testing.assert_allclose(rows, reference_precision_at_k_distinct(y_true, y_pred, k), rtol=1e-12)
    propensities = np.random.default_rng(seed).uniform(0.05, 1.0, y_true.shape[1])
    ps_rows = to_numpy(metrics.ps_precision_at_k(y_true, y_pred, propensities, k))
    np.testing.assert_allclose(ps_rows, reference_tie_averaged_top_k(y_true / propensities, y_pred, k), rtol=1e-12)
    best = to_numpy(metrics.ps_precision_at_k(y_true, y_pred, propensities, k, best=True))
    expected_best = np.sort(y_true / propensities, axis=1)[:, ::-1][:, :k].sum(axis=1) / k
    np.testing.assert_allclose(best, expected_best, rtol=1e-12)
    assert np.all(ps_rows <= best + 1e-12)


def test_precision_at_k_splits_the_kth_place_among_ties():
    # Top score 3 (relevant), then four labels tied at 1, one of them relevant:
    # P@3 = (1 + 2 * 1/4) / 3, whichever two of the four top_k would pick.
    y_true = np.array([[1, 0, 0, 1, 0, 0]], dtype=np.float64)
    y_pred = np.array([[3, 1, 1, 1, 1, 0]], dtype=np.float64)
    np.testing.assert_allclose(to_numpy(metrics.precision_at_k(y_true, y_pred, 3)), [(1 + 0.5) / 3])
    np.testing.assert_allclose(to_numpy(metrics.one_error(y_true, y_pred)), [0.0])
    np.testing.assert_allclose(to_numpy(metrics.one_error(y_true, np.array([[3, 3, 1, 1, 1, 0.0]]))), [1.0])


@pytest.mark.parametrize("seed,ties", CASES)
def test_label_ids_equal_dense_labels(seed, ties):
    y_true, y_pred = make_case(seed, ties=ties)
    ids = padded_ids(y_true, seed)
    for name, rows in metrics.ranking_statistics(ids, y_pred, label_ids=True).items():
        np.testing.assert_allclose(to_numpy(rows), to_numpy(metrics.ranking_statistics(y_true, y_pred)[name]), err_msg=name)
    propensities = np.random.default_rng(seed).uniform(0.05, 1.0, y_true.shape[1])
    for k in (1, 3, 5, 20):
        for function, extra in (
            (metrics.precision_at_k, {}),
            (metrics.ndcg_at_k, {}),
            (metrics.ps_precision_at_k, {"propensities": propensities}),
            (metrics.ps_precision_at_k, {"propensities": propensities, "best": True}),
        ):
            np.testing.assert_allclose(
                to_numpy(function(ids.astype(np.int32), y_pred, k=k, label_ids=True, **extra)),
                to_numpy(function(y_true, y_pred, k=k, **extra)),
                rtol=1e-12,
                err_msg=f"{function.__name__} k={k}",
            )


def test_soft_labels_count_from_one_half():
    y_true, y_pred = make_case(3)
    soft = np.where(y_true > 0, 0.9, 0.1)
    for name, rows in metrics.ranking_statistics(soft, y_pred).items():
        np.testing.assert_array_equal(to_numpy(rows), to_numpy(metrics.ranking_statistics(y_true, y_pred)[name]))


def test_max_positives_bounds_dense_rows():
    y_true, y_pred = make_case(4, labels=20)
    exact = {name: to_numpy(rows) for name, rows in metrics.ranking_statistics(y_true, y_pred).items()}
    enough = int(y_true.sum(axis=1).max())
    bounded = metrics.ranking_statistics(y_true, y_pred, max_positives=enough)
    for name, rows in bounded.items():
        np.testing.assert_allclose(to_numpy(rows), exact[name], err_msg=name)
    too_few = {name: to_numpy(rows) for name, rows in metrics.ranking_statistics(y_true, y_pred, max_positives=3).items()}
    over = y_true.sum(axis=1) > 3
    for name, rows in too_few.items():
        assert np.all(np.isnan(rows[over])), name
        np.testing.assert_allclose(rows[~over], exact[name][~over], err_msg=name)


def test_float32_scores_give_float32_rows():
    y_true, y_pred = make_case(5)
    rows = metrics.ranking_loss(y_true, y_pred.astype(np.float32))
    assert keras.backend.standardize_dtype(rows.dtype) == "float32"
    np.testing.assert_allclose(to_numpy(rows).mean(), skm.label_ranking_loss(y_true, y_pred), rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_scores(dtype):
    y_true, y_pred = make_case(10)  # small integers: exact in every dtype
    scores = keras.ops.cast(y_pred, dtype)
    ids = padded_ids(y_true, 10)
    for name, rows in metrics.ranking_statistics(ids, scores, label_ids=True).items():
        np.testing.assert_allclose(to_numpy(rows), to_numpy(metrics.ranking_statistics(y_true, y_pred)[name]), rtol=1e-6)
    np.testing.assert_allclose(
        to_numpy(metrics.ndcg_at_k(y_true, scores, 3)), to_numpy(metrics.ndcg_at_k(y_true, y_pred, 3)), rtol=1e-6
    )


def test_jain_propensities():
    counts = np.array([0, 1, 10, 1000])
    propensities = metrics.jain_propensities(counts, num_samples=5000)
    c = (np.log(5000) - 1) * 2.5**0.55
    np.testing.assert_allclose(propensities, 1 / (1 + c * np.exp(-0.55 * np.log(counts + 1.5))), rtol=1e-14)
    assert np.all(np.diff(propensities) > 0) and np.all(propensities <= 1)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: metrics.precision_at_k(np.ones((2, 3)), np.ones((2, 3)), k=0), "k must be a positive integer"),
        (lambda: metrics.ranking_loss(np.ones((2, 4)), np.ones((2, 3))), "same shape"),
        (lambda: metrics.ranking_loss(np.ones((2, 2)), np.ones((2, 3)), label_ids=True), "int32 or int64"),
        (lambda: metrics.ranking_loss(np.ones((2, 3)), np.ones((2, 3)), max_positives=0), "max_positives"),
        (lambda: metrics.ps_precision_at_k(np.ones((2, 3)), np.ones((2, 3)), np.ones(4)), r"shape \(3,\)"),
        (lambda: metrics.ranking_loss(np.ones((2, 3)), np.ones((2, 3), dtype=np.int32)), "y_pred must be"),
    ],
)
def test_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --------------------------------------------------------------------------
# No sort of whole rows: the traced programs' sorts and top-k widths
# --------------------------------------------------------------------------


def _sort_widths(function, *arrays):
    """The widths of every sort and top_k the traced function runs."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        graph = tf.function(function).get_concrete_function(*[tf.TensorSpec(a.shape, a.dtype) for a in arrays]).graph
        widths = []
        for op in graph.get_operations():
            if op.type in ("TopKV2", "TopK") or "Sort" in op.type:
                widths.append(op.outputs[0].shape[-1])  # tf.sort is a TopKV2 as wide as its rows
        return widths
    if BACKEND == "jax":
        import jax

        def walk(jaxpr):
            for equation in jaxpr.eqns:
                if equation.primitive.name == "top_k":
                    yield equation.params.get("k", equation.outvars[0].aval.shape[-1])
                elif equation.primitive.name == "sort":
                    yield equation.invars[0].aval.shape[-1]
                for param in equation.params.values():
                    inner = getattr(param, "jaxpr", None)
                    if inner is not None:
                        yield from walk(getattr(inner, "jaxpr", inner))

        return list(walk(jax.make_jaxpr(function)(*arrays).jaxpr))
    pytest.skip(f"no trace inspection for the {BACKEND} backend")


def test_no_sort_of_whole_rows_with_label_ids():
    labels = 4096
    rng = np.random.default_rng(0)
    y_pred = rng.standard_normal((4, labels)).astype(np.float32)
    ids = rng.integers(-1, labels, (4, 8)).astype(np.int32)
    propensities = np.full(labels, 0.5)
    for function in (
        lambda t, p: metrics.ranking_statistics(t, p, label_ids=True),
        lambda t, p: metrics.precision_at_k(t, p, 5, label_ids=True),
        lambda t, p: metrics.ndcg_at_k(t, p, 5, label_ids=True),
        lambda t, p: metrics.ps_precision_at_k(t, p, propensities, 5, label_ids=True),
        lambda t, p: metrics.hamming_loss(t, p, label_ids=True),
    ):
        widths = _sort_widths(function, ids, y_pred)
        assert all(w <= 8 for w in widths), widths


def test_no_sort_of_whole_rows_with_dense_labels_and_max_positives():
    labels = 4096
    rng = np.random.default_rng(0)
    y_pred = rng.standard_normal((4, labels)).astype(np.float32)
    y_true = (rng.random((4, labels)) < 0.001).astype(np.float32)
    widths = _sort_widths(lambda t, p: metrics.ranking_statistics(t, p, max_positives=16), y_true, y_pred)
    assert widths and all(w <= 16 for w in widths), widths
    widths = _sort_widths(lambda t, p: metrics.precision_at_k(t, p, 5), y_true, y_pred)
    assert widths and all(w <= 5 for w in widths), widths


# --------------------------------------------------------------------------
# Keras metrics: streaming, weights, reset, config, fit
# --------------------------------------------------------------------------


def all_metrics(label_ids, labels, propensities):
    return [
        (keras_metrics.RankingLoss(label_ids=label_ids), lambda t, p: skm.label_ranking_loss(t, p)),
        (keras_metrics.Coverage(label_ids=label_ids), lambda t, p: skm.coverage_error(t, p)),
        (
            keras_metrics.AveragePrecision(label_ids=label_ids),
            lambda t, p: skm.label_ranking_average_precision_score(t, p),
        ),
        (keras_metrics.OneError(label_ids=label_ids), lambda t, p: reference_one_error(t, p).mean()),
        (keras_metrics.HammingLoss(threshold=0.5, label_ids=label_ids), lambda t, p: skm.hamming_loss(t, p > 0.5)),
        (keras_metrics.NDCGAtK(k=3, label_ids=label_ids), lambda t, p: skm.ndcg_score(t, p, k=3)),
        (
            keras_metrics.PrecisionAtK(k=3, label_ids=label_ids),
            lambda t, p: reference_tie_averaged_top_k(t, p, 3).mean(),
        ),
        (
            keras_metrics.PSPrecisionAtK(k=3, propensities=propensities, label_ids=label_ids),
            lambda t, p: reference_tie_averaged_top_k(t / propensities, p, 3).mean(),
        ),
        (
            keras_metrics.PSPrecisionAtK(k=3, propensities=propensities, normalize=True, label_ids=label_ids),
            lambda t, p: reference_tie_averaged_top_k(t / propensities, p, 3).sum()
            / (np.sort(t / propensities, axis=1)[:, ::-1][:, :3].sum() / 3),
        ),
    ]


@pytest.mark.parametrize("label_ids", [False, True], ids=["dense", "ids"])
def test_keras_metrics_stream_over_batches(label_ids):
    y_true, y_pred = make_case(6, batch=60)
    y_pred = y_pred.astype(np.float32)  # exact small integers: the same ties as float64
    labels_in = padded_ids(y_true, 6) if label_ids else y_true
    propensities = np.random.default_rng(6).uniform(0.05, 1.0, y_true.shape[1])
    for metric, expected in all_metrics(label_ids, y_true.shape[1], propensities):
        for start in range(0, 60, 25):  # batches of 25, 25, 10
            metric.update_state(labels_in[start : start + 25], y_pred[start : start + 25])
        np.testing.assert_allclose(float(metric.result()), expected(y_true, y_pred), rtol=1e-5, err_msg=metric.name)
        metric.reset_state()
        assert float(metric.result()) == 0.0
        metric.update_state(labels_in[:10], y_pred[:10])
        np.testing.assert_allclose(float(metric.result()), expected(y_true[:10], y_pred[:10]), rtol=1e-5, err_msg=metric.name)


def test_keras_metric_sample_weight():
    y_true, y_pred = make_case(7, batch=30)
    weights = np.random.default_rng(7).uniform(0, 2, 30)
    metric = keras_metrics.RankingLoss()
    metric.update_state(y_true, y_pred.astype(np.float32), sample_weight=weights)
    np.testing.assert_allclose(
        float(metric.result()), skm.label_ranking_loss(y_true, y_pred, sample_weight=weights), rtol=1e-5
    )


def test_keras_metrics_config_round_trip():
    propensities = metrics.jain_propensities(np.arange(6) * 10, num_samples=100)
    for metric in [
        keras_metrics.RankingLoss(label_ids=True, max_positives=8),
        keras_metrics.HammingLoss(threshold=0.5),
        keras_metrics.NDCGAtK(k=3),
        keras_metrics.PSPrecisionAtK(k=1, label_counts=np.arange(6) * 10, num_samples=100, normalize=True),
    ]:
        restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(metric))
        assert type(restored) is type(metric) and restored.get_config() == metric.get_config()
    assert keras_metrics.NDCGAtK(k=3).name == "ndcg_at_3"
    np.testing.assert_allclose(restored.propensities, propensities)
    with pytest.raises(ValueError, match="either propensities or label_counts"):
        keras_metrics.PSPrecisionAtK(k=1)


@pytest.mark.parametrize("label_ids", [False, True], ids=["dense", "ids"])
def test_keras_metrics_in_evaluate(label_ids):
    """Compiled metrics run in the backend's traced step (dynamic batch size
    on TF) and give the rows' mean over batches."""
    y_true, _ = make_case(8, batch=64, labels=10, ties=False)
    x = np.random.default_rng(8).standard_normal((64, 6)).astype(np.float32)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(10)])
    labels_in = padded_ids(y_true, 8) if label_ids else y_true.astype(np.float32)
    model.compile(
        loss=lambda labels, scores: keras.ops.mean(keras.ops.square(scores), axis=-1),  # reads no labels
        metrics=[
            keras_metrics.RankingLoss(label_ids=label_ids),
            keras_metrics.PrecisionAtK(k=3, label_ids=label_ids),
            keras_metrics.AveragePrecision(label_ids=label_ids),
        ],
        jit_compile=BACKEND != "torch",
    )
    results = model.evaluate(x, labels_in, batch_size=20, return_dict=True, verbose=0)
    y_pred = model.predict(x, verbose=0).astype(np.float64)
    np.testing.assert_allclose(results["ranking_loss"], skm.label_ranking_loss(y_true, y_pred), rtol=1e-5)
    np.testing.assert_allclose(results["precision_at_3"], reference_precision_at_k_distinct(y_true, y_pred, 3).mean(), rtol=1e-5)
    np.testing.assert_allclose(
        results["average_precision"], skm.label_ranking_average_precision_score(y_true, y_pred), rtol=1e-5
    )


def test_keras_metrics_in_fit():
    y_true, _ = make_case(9, batch=32, labels=8, ties=False)
    x = np.random.default_rng(9).standard_normal((32, 5)).astype(np.float32)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8)])
    model.compile(
        optimizer="sgd",
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
        metrics=[keras_metrics.OneError(), keras_metrics.NDCGAtK(k=2), keras_metrics.HammingLoss()],
    )
    history = model.fit(x, y_true.astype(np.float32), batch_size=8, epochs=2, verbose=0)
    for name in ("one_error", "ndcg_at_2", "hamming_loss"):
        assert len(history.history[name]) == 2 and np.all(np.isfinite(history.history[name])), name
