"""The label-sharded BP-MLL head on JAX (python/tf_fused_losses/_head_sharded_jax.py,
issue 22 part 2) on 8 CPU devices: loss and the hidden, kernel and bias
gradients against the unsharded head (`_head_jax`) and the unfused loss of
hidden @ kernel + bias, on soft dense labels and ids, over a 1 x 8 and a 2 x 4
(batch x labels) mesh, label counts that need padding; the compiled step's
collectives move O(batch + batch x d) numbers, never batch x labels; the
kernel's gradient stays label-sharded; `head.bpmll_head_loss(...,
mesh=, label_axis=)` routes to it. Keras on JAX: BPMLLHead (38 labels,
pad_units_to=4) under ModelParallel with a LayoutMap sharding its kernel
along the labels trains like one device and infers the same logits and
top-k, and so does DataParallel; an indivisible kernel is refused by name;
two JAX processes (4 CPU devices each) train the label-sharded head and end
with identical weights, equal to one process on 8 devices.

The device count is fixed when jax first initialises, so every check runs
in a fresh interpreter: this file run as a script (`python
tests/test_head_sharded.py head|keras|process ...`) prints its findings as
JSON, and the tests read them.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from test_head_multiworker import run_together
from test_jax_sharding import DEVICES, XLA_FLAGS, _free_port, _shapes, collectives

# Numbers of the numerics worker: rows, hidden width, labels per mesh.
BATCH, HIDDEN = 16, 5
MESHES = {
    # 203 labels over 8 devices: padded to 208, 26 per device.
    "1x8": {"shape": (1, 8), "labels": 203},
    # 204 labels over 4: 51 per device, no padding; 8 rows per device.
    "2x4": {"shape": (2, 4), "labels": 204},
}
IDS_PER_ROW = 6
CHUNK = 8  # several chunks and a remainder on every device
LOSS_RTOL = 1e-5
GRAD_RTOL = 2e-5  # max abs error over the gradient's max abs value


# --------------------------------------------------------------------------
# Workers: run in a fresh interpreter with 8 CPU devices
# --------------------------------------------------------------------------


def _labels(np, rng, batch, labels):
    """Padded ids (a repeated id, a padding-only row) and the 0/1 matrix
    they stand for."""
    ids = np.full((batch, IDS_PER_ROW), -1, np.int32)
    ids[:, :4] = rng.integers(0, labels, (batch, 4))
    ids[1] = -1
    ids[2, 4] = ids[2, 0]
    dense = np.zeros((batch, labels), np.float32)
    for i, row in enumerate(ids):
        dense[i, row[row >= 0]] = 1
    return ids, dense


def _relative_error(np, got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


def worker_head():
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    import tf_fused_losses as tfl
    from tf_fused_losses import _head_jax
    from tf_fused_losses._head_sharded_jax import bpmll_head_loss_label_sharded

    assert len(jax.devices()) == DEVICES
    rng = np.random.default_rng(22)
    report = {}
    for mesh_name, spec in MESHES.items():
        labels = spec["labels"]
        mesh = Mesh(np.array(jax.devices()).reshape(spec["shape"]), ("batch", "labels"))
        hidden = rng.normal(size=(BATCH, HIDDEN)).astype(np.float32)
        kernel = (0.5 * rng.normal(size=(HIDDEN, labels))).astype(np.float32)
        bias = (0.3 * rng.normal(size=(labels,))).astype(np.float32)
        ids, dense = _labels(np, rng, BATCH, labels)
        upstream = np.linspace(0.5, 2.0, BATCH).astype(np.float32)
        # A NaN logit (row 0) and a bad id / a label outside [0, 1] (row 3):
        # their rows NaN, the others as without them.
        nan_hidden = hidden.copy()
        nan_hidden[0, 1] = np.nan
        # Dense labels soft: positives in [0.5, 1], a few negatives in (0, 0.2].
        soft = np.where(dense > 0, rng.uniform(0.5, 1, dense.shape),
                        rng.uniform(0, 0.2, dense.shape) * (rng.random(dense.shape) < 0.05)).astype(np.float32)
        bad_ids, bad_soft = ids.copy(), soft.copy()
        bad_ids[3, 5] = labels
        bad_soft[3, 7] = 1.5
        for form, y, bad_y, y_dense in (("ids", ids, bad_ids, dense), ("dense", soft, bad_soft, soft)):
            label_ids = form == "ids"
            batch_axis = "batch" if spec["shape"][0] > 1 else None

            def sharded(y, h, k, b, label_ids=label_ids, batch_axis=batch_axis, mesh=mesh):
                return bpmll_head_loss_label_sharded(y, h, k, b, mesh=mesh, label_axis="labels",
                                                     batch_axis=batch_axis, label_ids=label_ids, chunk_size=CHUNK)

            def unsharded(y, h, k, b, label_ids=label_ids):
                return _head_jax.bpmll_head_loss(y, h, k, b, label_ids=label_ids)

            def step(loss_fn):
                def f(y, bad_y, h, nan_h, k, b):
                    value, grads = jax.value_and_grad(
                        lambda h, k, b: jnp.sum(loss_fn(y, h, k, b) * upstream), (0, 1, 2))(h, k, b)
                    return value, grads, loss_fn(bad_y, nan_h, k, b)
                return jax.jit(f)

            # Arrays whose label count divides the label axis are placed as
            # they would live; the others (203 labels) come unplaced and are
            # padded inside.
            divisible = labels % spec["shape"][1] == 0

            def put(a, *partition, divisible=divisible, mesh=mesh):
                return jax.device_put(a, NamedSharding(mesh, P(*partition))) if divisible else a

            placed = [put(y, batch_axis) if label_ids else put(y, batch_axis, "labels"), bad_y,
                      put(hidden, batch_axis), nan_hidden, put(kernel, None, "labels"), put(bias, "labels")]
            compiled = step(sharded).lower(*placed).compile()
            value, grads, bad_loss = compiled(*placed)
            want_value, want_grads, want_bad = step(unsharded)(y, bad_y, hidden, nan_hidden, kernel, bias)
            unfused = jax.jit(jax.value_and_grad(
                lambda h, k, b: jnp.sum(tfl.bpmll_loss(jnp.asarray(y_dense), h @ k + b) * upstream), (0, 1, 2)))
            unfused_value, unfused_grads = unfused(hidden, kernel, bias)
            report[f"{mesh_name}/{form}"] = {
                "loss_error": _relative_error(np, value, want_value),
                "grad_errors": [_relative_error(np, g, w) for g, w in zip(grads, want_grads)],
                "unfused_loss_error": _relative_error(np, value, unfused_value),
                "unfused_grad_errors": [_relative_error(np, g, w) for g, w in zip(grads, unfused_grads)],
                "nan_rows": np.flatnonzero(np.isnan(np.asarray(bad_loss))).tolist(),
                "want_nan_rows": np.flatnonzero(np.isnan(np.asarray(want_bad))).tolist(),
                "other_rows_error": _relative_error(np, np.asarray(bad_loss)[4:], np.asarray(want_bad)[4:]),
                "collectives": collectives(compiled.as_text()),
                "grad_specs": [str(g.sharding.spec) for g in grads],
                "rows_per_device": BATCH // spec["shape"][0],
                "labels_per_device": -(-labels // spec["shape"][1]),
            }
    report["public"] = _worker_public(jax, jnp, np, rng)
    report["label_count"] = _worker_label_count(jax, jnp, np, bpmll_head_loss_label_sharded, _head_jax, rng)
    report["errors"] = _worker_errors(jax, np, bpmll_head_loss_label_sharded)
    return report


def _worker_public(jax, jnp, np, rng):
    """`head.bpmll_head_loss(..., mesh=, label_axis=, batch_axis=)` on a
    2 x 4 mesh against the same call without them (one device's head), per
    reduction, in the loss and the three gradients; and with mesh None (the
    kernel's NamedSharding's), outside jit."""
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from tf_fused_losses import head

    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("batch", "labels"))
    labels = 204
    hidden = rng.normal(size=(BATCH, HIDDEN)).astype(np.float32)
    kernel = (0.5 * rng.normal(size=(HIDDEN, labels))).astype(np.float32)
    bias = (0.3 * rng.normal(size=(labels,))).astype(np.float32)
    ids, dense = _labels(np, rng, BATCH, labels)
    weights = np.linspace(0, 2, BATCH).astype(np.float32)
    placed_kernel = jax.device_put(kernel, NamedSharding(mesh, P(None, "labels")))
    placed_bias = jax.device_put(bias, NamedSharding(mesh, P("labels")))
    out = {}
    for form, y in (("ids", ids), ("dense", dense)):
        for reduction in ("none", "sum", "sum_over_batch_size", "mean_with_sample_weight"):
            def step(k, b, y=y, form=form, reduction=reduction, **sharding):
                def loss(h, k, b):
                    value = head.bpmll_head_loss(y, h, k, b, label_ids=form == "ids", reduction=reduction,
                                                 sample_weight=weights, chunk_size=CHUNK, **sharding)
                    return jnp.sum(value), value
                return jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))(hidden, k, b)

            (_, value), grads = step(placed_kernel, placed_bias, mesh=mesh, label_axis="labels", batch_axis="batch")
            (_, want), want_grads = step(kernel, bias)
            out[f"{form}/{reduction}"] = {
                "shape": list(np.shape(value)),
                "loss_error": _relative_error(np, value, want),
                "grad_errors": [_relative_error(np, g, w) for g, w in zip(grads, want_grads)],
            }
    eager = head.bpmll_head_loss(ids, hidden, placed_kernel, placed_bias, label_ids=True, label_axis="labels")
    out["mesh_from_kernel_error"] = _relative_error(
        np, eager, head.bpmll_head_loss(ids, hidden, kernel, bias, label_ids=True))
    return out


def _worker_errors(jax, np, bpmll_head_loss_label_sharded):
    """The messages of calls the sharded head refuses."""
    from jax.sharding import Mesh

    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("batch", "labels"))
    hidden, kernel = np.zeros((15, HIDDEN), np.float32), np.zeros((HIDDEN, 8), np.float32)
    ids = np.zeros((15, 2), np.int32)
    calls = {
        "uneven_batch": dict(batch_axis="batch"),
        "unknown_axis": dict(label_axis="model"),
        "same_axis": dict(label_axis="labels", batch_axis="labels"),
        "label_count_too_large": dict(label_count=9),
    }
    out = {}
    for name, kwargs in calls.items():
        kwargs = {"label_axis": "labels", **kwargs}
        try:
            bpmll_head_loss_label_sharded(ids, hidden, kernel, mesh=mesh, label_ids=True, **kwargs)
            out[name] = "ran"
        except ValueError as e:
            out[name] = str(e)
    return out


def _worker_label_count(jax, jnp, np, bpmll_head_loss_label_sharded, _head_jax, rng):
    """A kernel that lives sharded, made 208 columns wide for 203 labels
    (`label_count`): the loss and gradients of the 203, and gradient 0 in
    the padding, however the padding was initialised."""
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()), ("labels",))
    labels, width = 203, 208
    hidden = rng.normal(size=(BATCH, HIDDEN)).astype(np.float32)
    kernel = (0.5 * rng.normal(size=(HIDDEN, width))).astype(np.float32)
    bias = (0.3 * rng.normal(size=(width,))).astype(np.float32)
    ids, _ = _labels(np, rng, BATCH, labels)

    def grads(loss_fn, k, b):
        return jax.jit(jax.value_and_grad(lambda h, k, b: jnp.sum(loss_fn(h, k, b)), (0, 1, 2)))(hidden, k, b)

    value, (dh, dk, db) = grads(lambda h, k, b: bpmll_head_loss_label_sharded(
        ids, h, k, b, mesh=mesh, label_axis="labels", label_ids=True, label_count=labels, chunk_size=CHUNK),
        jax.device_put(kernel, NamedSharding(mesh, P(None, "labels"))),
        jax.device_put(bias, NamedSharding(mesh, P("labels"))))
    want_value, (want_dh, want_dk, want_db) = grads(
        lambda h, k, b: _head_jax.bpmll_head_loss(ids, h, k, b, label_ids=True), kernel[:, :labels], bias[:labels])
    return {
        "loss_error": _relative_error(np, value, want_value),
        "grad_errors": [_relative_error(np, dh, want_dh), _relative_error(np, np.asarray(dk)[:, :labels], want_dk),
                        _relative_error(np, np.asarray(db)[:labels], want_db)],
        "padding_grad_max": float(max(np.abs(np.asarray(dk)[:, labels:]).max(), np.abs(np.asarray(db)[labels:]).max())),
        "kernel_grad_spec": str(dk.sharding.spec),
    }


# Keras: one model (BPMLLHead), trained on one device, with DataParallel and
# with ModelParallel (the head's kernel split over "model"). 38 labels do not
# divide over the 4 "model" devices: pad_units_to=4 makes the kernel 40 wide
# on every run.
KERAS_SAMPLES, KERAS_FEATURES, KERAS_LABELS, KERAS_IDS = 64, 12, 38, 5
KERAS_PAD_TO, KERAS_TOP_K = 4, 3
GLOBAL_BATCH, EPOCHS = 32, 3
KERAS_MESH = (2, 4)


def _keras_data(np):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(KERAS_SAMPLES, KERAS_FEATURES)).astype(np.float32)
    scores = x @ rng.normal(size=(KERAS_FEATURES, KERAS_LABELS))
    ids = np.argsort(-scores, axis=1)[:, :KERAS_IDS].astype(np.int32)
    ids[::3, -1] = -1  # padding
    return x, ids


def _keras_model(keras):
    """(trainer, predictor of the logits, predictor of the hidden layer),
    sharing their weights."""
    from tf_fused_losses.head_layers import BPMLLHead

    keras.utils.set_random_seed(3)
    features = keras.Input((KERAS_FEATURES,))
    labels = keras.Input((KERAS_IDS,), dtype="int32")
    hidden = keras.layers.Dense(16, activation="tanh", name="hidden")(features)
    head = BPMLLHead(KERAS_LABELS, label_ids=True, chunk_size=4, pad_units_to=KERAS_PAD_TO, name="head")
    model = keras.Model([features, labels], head(hidden, labels=labels))
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    return model, keras.Model(features, head(hidden)), keras.Model(features, hidden)


def _model_parallel(keras, devices):
    mesh = keras.distribution.DeviceMesh(KERAS_MESH, ("batch", "model"), devices=devices)
    layout_map = keras.distribution.LayoutMap(mesh)
    layout_map["head/kernel"] = (None, "model")
    layout_map["head/bias"] = ("model",)
    return keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch", auto_shard_dataset=False)


def _local_value(np, array):
    """This process's copy of an array whose every element it holds (the
    head's kernel: each process holds all label shards of its batch row)."""
    out = np.full(array.shape, np.nan, array.dtype)
    for shard in array.addressable_shards:
        out[shard.index] = np.asarray(shard.data)
    assert not np.isnan(out).any(), "this process does not hold the whole array"
    return out


def _fit(np, models, x, ids, batch_size, predict=False):
    model, logits_model, hidden_model = models
    history = model.fit((x, ids), batch_size=batch_size, epochs=EPOCHS, shuffle=False, verbose=0).history["loss"]
    out = {"history": history, "weights": [_local_value(np, w.value).tolist() for w in model.weights],
           "specs": {w.path: str(getattr(w.value.sharding, "spec", None)) for w in model.weights}}
    if predict:
        # Inference on the (sharded) kernel: the logits, and the top-k found
        # chunk by chunk, both of the 38 labels only.
        scores, top = logits_model.get_layer("head").top_k_scores_and_ids(hidden_model.predict(x, verbose=0),
                                                                          k=KERAS_TOP_K)
        out.update(logits=np.asarray(logits_model.predict(x, verbose=0)).tolist(),
                   top_k_scores=np.asarray(scores).tolist(), top_k_ids=np.asarray(top).tolist())
    return out


def _keras_refusal_and_round_trip(keras, np, devices, models, tmp):
    """Under ModelParallel, a 38-label head without pad_units_to refuses to
    build; the padded model's config and .keras file round-trip (weights
    40 wide), and a config without pad_units_to (older files) loads."""
    from tf_fused_losses.head_layers import BPMLLHead

    out = {}
    with _model_parallel(keras, devices).scope():
        try:
            BPMLLHead(KERAS_LABELS, name="head")(keras.Input((16,)))
            out["indivisible"] = "built"
        except ValueError as e:
            out["indivisible"] = str(e)
    model = models[0]
    path = os.path.join(tmp, "head.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    out["loaded_config"] = {key: loaded.get_layer("head").get_config()[key] for key in ("units", "pad_units_to")}
    out["loaded_weights_equal"] = all(np.array_equal(np.asarray(a), np.asarray(b))
                                      for a, b in zip(model.weights, loaded.weights))
    out["kernel_shape"] = list(loaded.get_layer("head").kernel.shape)
    old_config = model.get_layer("head").get_config()
    del old_config["pad_units_to"]
    old = BPMLLHead.from_config(old_config)
    out["old_config"] = [old.pad_units_to, old.kernel_width]
    return out


def worker_keras():
    import tempfile

    import jax
    import keras
    import numpy as np

    from tf_fused_losses import _head_sharded_jax

    # Which runs trace the label-sharded head: counted at its entry point.
    traced = []
    sharded_head = _head_sharded_jax.bpmll_head_loss_label_sharded

    def counting(*args, **kwargs):
        traced.append(kwargs["label_axis"])
        return sharded_head(*args, **kwargs)

    _head_sharded_jax.bpmll_head_loss_label_sharded = counting
    x, ids = _keras_data(np)
    one_device = _keras_model(keras)
    report = {"one_device": _fit(np, one_device, x, ids, GLOBAL_BATCH, predict=True)}
    with keras.distribution.DataParallel(devices=jax.devices()).scope():
        report["data_parallel"] = _fit(np, _keras_model(keras), x, ids, GLOBAL_BATCH)
    report["traced_before_model_parallel"] = list(traced)
    with _model_parallel(keras, jax.devices()).scope():
        report["model_parallel"] = _fit(np, _keras_model(keras), x, ids, GLOBAL_BATCH, predict=True)
    report["traced"] = traced
    with tempfile.TemporaryDirectory() as tmp:
        report["checks"] = _keras_refusal_and_round_trip(keras, np, jax.devices(), one_device, tmp)
    return report


def worker_process(process_id, port):
    """One of two JAX processes (4 CPU devices each) on 127.0.0.1, training
    the label-sharded head with ModelParallel over the 8 global devices: this
    process's 4 devices are one row of the 2 x 4 mesh, its label shards all
    4, and it feeds that row's half of every global batch."""
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id,
                               initialization_timeout=120)
    import keras
    import numpy as np

    distribution = _model_parallel(keras, jax.devices())
    mesh_devices = distribution.device_mesh.backend_mesh.devices
    mine = {int(r) for r, row in enumerate(mesh_devices) for d in row if d.process_index == jax.process_index()}
    assert len(mine) == 1, mine
    row = mine.pop()
    half = GLOBAL_BATCH // 2
    x, ids = _keras_data(np)
    local = np.concatenate([np.arange(s + row * half, s + (row + 1) * half) for s in range(0, KERAS_SAMPLES, GLOBAL_BATCH)])
    with distribution.scope():
        out = _fit(np, _keras_model(keras), x[local], ids[local], half)
    out.update(global_devices=jax.device_count(), local_devices=jax.local_device_count())
    jax.distributed.shutdown()
    return out


# --------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------


if __name__ != "__main__":
    if importlib.util.find_spec("jax") is None:
        pytest.skip("the JAX head needs jax (pip install jax)", allow_module_level=True)


def _run(args, env, timeout):
    proc = subprocess.run([sys.executable, __file__, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _worker(*args, timeout=300):
    env = dict(os.environ, KERAS_BACKEND="jax")
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + XLA_FLAGS).strip()
    return _run(args, env, timeout)


@pytest.fixture(scope="module")
def head():
    return _worker("head")


@pytest.mark.parametrize("case", [f"{m}/{f}" for m in MESHES for f in ("ids", "dense")])
def test_matches_the_unsharded_head_and_the_unfused_loss(head, case):
    """Loss and the three gradients equal the one-device head's and those of
    bpmll_loss(labels, hidden @ kernel + bias), within float32 rounding;
    rows with a NaN logit or a bad label are NaN and only they."""
    r = head[case]
    assert r["loss_error"] <= LOSS_RTOL and r["unfused_loss_error"] <= LOSS_RTOL, r
    assert max(r["grad_errors"] + r["unfused_grad_errors"]) <= GRAD_RTOL, r
    assert r["nan_rows"] == r["want_nan_rows"] == [0, 3], r
    assert r["other_rows_error"] <= LOSS_RTOL, r


@pytest.mark.parametrize("case", [f"{m}/{f}" for m in MESHES for f in ("ids", "dense")])
def test_collectives_move_rows_never_rows_times_labels(head, case):
    """Over the label axis the step all-reduces per-row numbers (k, rows)
    and the hidden gradient (rows, d); over the batch axis (2 x 4 only) the
    label slice's weight gradient (d, labels/4) and (labels/4,) and the
    scalar mean. No collective holds a (rows, labels/devices) array or
    anything as large."""
    r = head[case]
    rows, shard = r["rows_per_device"], r["labels_per_device"]
    reduced = {(), (rows,), (rows, HIDDEN)} | {(k, rows) for k in range(2, 6)}
    gathered = set()
    if rows < BATCH:
        reduced |= {(HIDDEN, shard), (shard,)}
    if MESHES[case.split("/")[0]]["labels"] % DEVICES:
        # 203 labels come as an unsharded kernel, padded inside to 208: its
        # gradient, sliced back to 203 columns (which no mesh axis divides),
        # is gathered - (d, labels), independent of the batch.
        gathered = {(HIDDEN, shard * DEVICES), (shard * DEVICES,)}
    for op, shape, size in r["collectives"]:
        for _, dims in _shapes(shape):
            assert tuple(dims) in (reduced if op == "all-reduce" else gathered if op == "all-gather" else ()), (
                op, shape, r["collectives"])
        assert size < rows * shard * 4 or op == "all-gather", r["collectives"]
    shapes = {tuple(dims) for _, shape, _ in r["collectives"] for _, dims in _shapes(shape)}
    assert (rows, HIDDEN) in shapes and (2, rows) in shapes  # the hidden gradient's psum, the log sums' pmax


@pytest.mark.parametrize("form", ["ids", "dense"])
def test_the_weight_gradients_stay_label_sharded(head, form):
    """A label-sharded kernel and bias get label-sharded gradients (the 2 x 4
    mesh's; the 1 x 8 case's kernel is not sharded: 203 labels)."""
    specs = head[f"2x4/{form}"]["grad_specs"]
    assert specs == ["P('batch',)", "P(None, 'labels')", "P('labels',)"], specs


def test_a_kernel_padded_past_label_count(head):
    """A kernel made 208 columns wide for 203 labels, placed label-sharded:
    the loss and gradients of the 203, gradient exactly 0 in the padding."""
    r = head["label_count"]
    assert r["loss_error"] <= LOSS_RTOL and max(r["grad_errors"]) <= GRAD_RTOL, r
    assert r["padding_grad_max"] == 0, r
    assert r["kernel_grad_spec"] == "P(None, 'labels')", r


@pytest.mark.parametrize("reduction", ["none", "sum", "sum_over_batch_size", "mean_with_sample_weight"])
@pytest.mark.parametrize("form", ["ids", "dense"])
def test_the_public_head_routes_to_the_label_sharded_one(head, form, reduction):
    """head.bpmll_head_loss with mesh, label_axis and batch_axis (2 x 4, a
    label-sharded kernel and bias) equals the call without them, reduced and
    weighted alike, in the loss and the three gradients."""
    r = head["public"][f"{form}/{reduction}"]
    assert r["shape"] == ([] if reduction != "none" else [BATCH]), r
    assert r["loss_error"] <= LOSS_RTOL and max(r["grad_errors"]) <= GRAD_RTOL, r


def test_the_public_head_takes_the_mesh_from_the_kernel(head):
    """mesh None: the placed kernel's NamedSharding gives it."""
    assert head["public"]["mesh_from_kernel_error"] <= LOSS_RTOL


def test_refusals_say_why(head):
    """A batch the batch axis does not divide, an axis the mesh lacks, one
    axis for both, and a label_count past the kernel's columns: each a
    ValueError naming the problem."""
    errors = head["errors"]
    assert "batch (15 rows) must be divisible by the size of batch_axis 'batch' (2)" in errors["uneven_batch"]
    assert "label_axis 'model' is not an axis of the mesh" in errors["unknown_axis"]
    assert "must be different mesh axes" in errors["same_axis"]
    assert "label_count must be an int in [1, 8]" in errors["label_count_too_large"]


def _close(np, a, b, rtol=1e-5, atol=1e-6):
    return len(a) == len(b) and all(np.allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)
                                    for x, y in zip(a, b))


@pytest.fixture(scope="module")
def keras_runs():
    if importlib.util.find_spec("keras") is None:
        pytest.skip("needs keras")
    return _worker("keras")


def test_keras_model_parallel_and_data_parallel_train_like_one_device(keras_runs):
    """BPMLLHead of 38 labels with pad_units_to=4 (a 40-wide kernel): under
    ModelParallel on a 2 x 4 mesh, its kernel and bias split over "model"
    by a LayoutMap (the layer then trains through the label-sharded head),
    and under DataParallel over 8 devices, it ends with the one-device
    weights and losses within float32 rounding; the kernel stays
    label-sharded, and its padding columns keep their initial values
    (gradient 0, as on one device)."""
    import numpy as np

    one = keras_runs["one_device"]
    assert one["history"][-1] < one["history"][0]  # it trained
    for name in ("data_parallel", "model_parallel"):
        run = keras_runs[name]
        assert _close(np, run["history"], one["history"]), (name, run["history"], one["history"])
        assert _close(np, run["weights"], one["weights"]), name
    specs = keras_runs["model_parallel"]["specs"]
    assert specs["head/kernel"] == "P(None, 'model')" and specs["head/bias"] == "P('model',)"
    # Only the ModelParallel run trained through the label-sharded head.
    assert keras_runs["traced_before_model_parallel"] == [] and set(keras_runs["traced"]) == {"model"}, keras_runs


def test_keras_model_parallel_inference_gives_the_units_only(keras_runs):
    """The trained ModelParallel model's logits (batch, 38) and top-k equal
    the one-device model's; the padding columns are not in them."""
    import numpy as np

    one, sharded = keras_runs["one_device"], keras_runs["model_parallel"]
    assert np.shape(sharded["logits"]) == (KERAS_SAMPLES, KERAS_LABELS)
    assert _close(np, [sharded["logits"], sharded["top_k_scores"]], [one["logits"], one["top_k_scores"]])
    assert sharded["top_k_ids"] == one["top_k_ids"]
    assert np.max(sharded["top_k_ids"]) < KERAS_LABELS


def test_keras_indivisible_kernel_says_to_pad_and_the_padded_head_round_trips(keras_runs):
    """38 labels over the 4-device "model" axis without pad_units_to: a
    ValueError naming units, the axis, its size and pad_units_to. The padded
    model saves and loads (.keras) with its 40-wide weights and config; a
    config without pad_units_to (an older file) loads unpadded."""
    checks = keras_runs["checks"]
    message = checks["indivisible"]
    assert "units=38" in message and "'model'" in message and "size 4" in message, message
    assert "pad_units_to=4" in message, message
    assert checks["loaded_config"] == {"units": KERAS_LABELS, "pad_units_to": KERAS_PAD_TO}, checks
    assert checks["loaded_weights_equal"] and checks["kernel_shape"] == [16, 40], checks
    assert checks["old_config"] == [None, KERAS_LABELS], checks


def test_two_processes_train_the_label_sharded_head_like_one(keras_runs):
    """Two JAX processes on 127.0.0.1 (jax.distributed, gloo, 4 CPU devices
    each) train the label-sharded head with ModelParallel over the 8 global
    devices: both end with identical weights, equal to one process on 8
    devices within float32 rounding. Bounded: each process has 240 s."""
    import numpy as np

    port = _free_port()
    env = dict(os.environ, KERAS_BACKEND="jax", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    stdouts = run_together([[sys.executable, __file__, "process", str(i), str(port)] for i in range(2)], [env] * 2,
                           timeout=240)
    outs = [json.loads(out.strip().splitlines()[-1]) for out in stdouts]
    assert [o["global_devices"] for o in outs] == [8, 8] and [o["local_devices"] for o in outs] == [4, 4]
    assert outs[0]["weights"] == outs[1]["weights"]  # identical, not close
    one_process = keras_runs["model_parallel"]
    assert _close(np, outs[0]["weights"], one_process["weights"]), (outs[0]["history"], one_process["history"])
    assert outs[0]["specs"]["head/kernel"] == "P(None, 'model')"


def main(argv):
    mode = argv[0]
    if mode == "head":
        report = worker_head()
    elif mode == "keras":
        report = worker_keras()
    elif mode == "process":
        report = worker_process(int(argv[1]), int(argv[2]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1:])
