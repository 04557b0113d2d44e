"""Saving and loading: .keras files compiled with the losses, and
tf.saved_model of functions that call the fused ops, reloaded in a fresh
interpreter with and without the op library (tests/helpers/saved_model_load.py)."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_fused_losses as tfl
from helpers import LOSS_KINDS, last_json_line, loss_function, make_loss, make_model, run_script, task_data

MATRIX = tf.TensorSpec([None, None], tf.float32)
MASK = tf.TensorSpec([None, None], tf.bool)
NOT_REGISTERED = r"RuntimeError: Op type not registered 'Fused(Bpmll|Correlation)Loss(Grad)?'"


def loss_and_grads(fn, y_true, y_pred, *mask):
    """The loss and its gradients (BP-MLL has none for y_true)."""
    with tf.GradientTape() as tape:
        tape.watch([y_true, y_pred])
        loss = fn(y_true, y_pred, *mask)
    return (loss,) + tuple(g for g in tape.gradient(loss, [y_true, y_pred]) if g is not None)


def traced(body, masked):
    """body(y_true, y_pred[, mask]) as a tf.function with a fixed signature
    (plain positional arguments: SavedModel cannot encode defaults)."""
    if masked:
        return tf.function(lambda y_true, y_pred, mask: body(y_true, y_pred, mask), input_signature=[MATRIX, MATRIX, MASK])
    return tf.function(lambda y_true, y_pred: body(y_true, y_pred), input_signature=[MATRIX, MATRIX])


def masked_loss(fn):
    return lambda y_true, y_pred, mask: fn(y_true, y_pred, mask=mask)


class LossModule(tf.Module):
    """For each loss: `<kind>` returns the loss and the gradients taken inside
    the function (so the graph holds the gradient ops), `<kind>_loss` the
    loss alone (to be differentiated from outside after reloading)."""

    def __init__(self):
        super().__init__()
        self.bpmll = traced(lambda y, c: loss_and_grads(tfl.bpmll_loss, y, c), masked=False)
        self.bpmll_loss = traced(tfl.bpmll_loss, masked=False)
        for kind in ("correlation", "ccc"):
            loss = masked_loss(loss_function(kind))
            setattr(self, kind, traced(lambda y, x, m, loss=loss: loss_and_grads(loss, y, x, m), masked=True))
            setattr(self, f"{kind}_loss", traced(loss, masked=True))


def make_inputs(rng):
    inputs = {
        "bpmll/y_true": (rng.random((5, 40)) < 0.3).astype(np.float32),
        "bpmll/y_pred": rng.normal(size=(5, 40)).astype(np.float32),
    }
    for kind in ("correlation", "ccc"):
        inputs[f"{kind}/y_true"] = rng.normal(size=(4, 30)).astype(np.float32)
        inputs[f"{kind}/y_pred"] = (inputs[f"{kind}/y_true"] + rng.normal(size=(4, 30))).astype(np.float32)
        inputs[f"{kind}/mask"] = rng.random((4, 30)) < 0.8
    return inputs


def call_args(inputs, kind):
    return [tf.constant(inputs[f"{kind}/{arg}"]) for arg in ("y_true", "y_pred", "mask") if f"{kind}/{arg}" in inputs]


@pytest.fixture(scope="module")
def reloaded(tmp_path_factory):
    """Saves a LossModule and a compiled .keras model, reloads both in a fresh
    interpreter; returns (in-process results, outcomes per stage, reloaded
    results, SavedModel folder)."""
    folder = tmp_path_factory.mktemp("saved")
    rng = np.random.default_rng(17)
    inputs = make_inputs(rng)
    module = LossModule()
    expected = {}
    for kind in LOSS_KINDS:
        args = call_args(inputs, kind)
        for i, t in enumerate(getattr(module, kind)(*args)):
            expected[f"{kind}/out{i}"] = t.numpy()
        with tf.GradientTape() as tape:
            tape.watch(args[1])
            total = tf.reduce_sum(getattr(module, f"{kind}_loss")(*args))
        expected[f"{kind}/outer_grad"] = tape.gradient(total, args[1]).numpy()
    tf.saved_model.save(module, str(folder / "module"))

    x, y = task_data("bpmll", rng, 32)
    model = make_model("bpmll", x, y)
    model.compile(optimizer="sgd", loss=tfl.BPMLLLoss(reduction="sum"))
    model.save(folder / "model.keras")
    expected["keras/evaluate"] = np.array(model.evaluate(x, y, verbose=0))
    np.savez(folder / "inputs.npz", **inputs, **{"keras/x": x, "keras/y": y})

    out = folder / "reloaded.npz"
    proc = run_script("saved_model_load.py", folder / "module", folder / "model.keras", folder / "inputs.npz", out)
    outcomes = last_json_line(proc.stdout)
    return expected, outcomes, (np.load(out) if out.exists() else None), folder / "module"


def test_saved_graph_holds_the_fused_ops(reloaded):
    graph = (reloaded[3] / "saved_model.pb").read_bytes()
    for op in (b"FusedBpmllLoss", b"FusedBpmllLossGrad", b"FusedCorrelationLoss", b"FusedCorrelationLossGrad"):
        assert op in graph


@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_reloaded_functions_give_identical_values_and_gradients(reloaded, kind):
    expected, outcomes, results, _ = reloaded
    assert outcomes["loaded"]["saved_model"] == "ok", outcomes
    names = [k for k in expected if k.startswith(f"{kind}/")]
    assert len(names) == (3 if kind == "bpmll" else 4)
    for name in names:
        np.testing.assert_array_equal(results[name], expected[name], err_msg=name)


def test_without_the_op_library_loading_fails_naming_the_op(reloaded):
    """TF's message names the op type but not the package. `import
    tf_fused_losses` alone does not register the ops either: the library
    loads on the first call of an op, so it must be loaded explicitly."""
    _, outcomes, _, _ = reloaded
    for stage in ("bare", "imported"):
        assert re.match(NOT_REGISTERED, outcomes[stage]["saved_model"]), outcomes[stage]["saved_model"]


def test_keras_file_needs_only_the_import(reloaded):
    expected, outcomes, results, _ = reloaded
    bare = outcomes["bare"]["keras"]
    assert bare.startswith("TypeError: Could not locate class 'BPMLLLoss'")
    assert "'module': 'tf_fused_losses.losses'" in bare  # Keras names the module to import
    assert outcomes["imported"]["keras"] == "ok"
    np.testing.assert_allclose(results["keras/evaluate"], expected["keras/evaluate"], rtol=1e-6)


@pytest.mark.parametrize("module, name", [("tf_fused_losses.bpmll", "BPMLLLoss"), ("tf_fused_losses.correlation", "CCCLoss")])
def test_files_saved_when_the_classes_lived_in_bpmll_and_correlation_still_load(module, name):
    """Until the layering the classes said they lived in `bpmll` and
    `correlation`; files saved then name those modules. Keras finds the
    classes by their registered names first."""
    config = {"module": module, "class_name": name, "config": {"name": "x", "reduction": "sum"},
              "registered_name": f"tf_fused_losses>{name}"}
    loss = keras.saving.deserialize_keras_object(config)
    assert type(loss).__name__ == name and loss.reduction == "sum"


@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_keras_file_round_trip_keeps_the_loss_and_trains_on(tmp_path, rng, kind):
    x, y = task_data(kind, rng, 32)
    model = make_model(kind, x, y)
    options = {"reduction": "sum"} if kind == "bpmll" else {"epsilon": 1e-3, "reduction": "sum"}
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=make_loss(kind, **options))
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert type(loaded.loss) is type(model.loss)
    assert loaded.loss.get_config() == model.loss.get_config()
    np.testing.assert_allclose(loaded.evaluate(x, y, verbose=0), model.evaluate(x, y, verbose=0), rtol=1e-6)
    for m in (model, loaded):
        m.fit(x, y, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)

