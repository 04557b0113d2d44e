"""Loads a SavedModel that calls the fused ops, and a .keras file compiled
with a fused loss, in a fresh interpreter, in three stages:

  bare       tf_fused_losses not imported
  imported   after `import tf_fused_losses` (the op library loads lazily)
  loaded     after tf_fused_losses.load_ops()

Usage: saved_model_load.py SAVED_MODEL_DIR MODEL.keras INPUTS.npz OUT.npz
Prints {stage: {"saved_model": outcome, "keras": outcome}} as JSON, where an
outcome is "ok" or "<ExceptionType>: <message>"; at the "loaded" stage it
writes the reloaded functions' outputs, and gradients taken through them,
to OUT.npz."""

import json
import sys

import numpy as np
import tensorflow as tf


def attempt(load):
    try:
        return load(), "ok"
    except Exception as e:  # the outcome is the result
        return None, f"{type(e).__name__}: {e}"


def main(saved_dir, keras_path, inputs_path, out_path):
    import keras

    inputs = dict(np.load(inputs_path))
    outcomes = {}
    for stage in ("bare", "imported", "loaded"):
        if stage == "imported":
            import tf_fused_losses  # noqa: F401
        if stage == "loaded":
            tf_fused_losses.load_ops()
        module, saved_outcome = attempt(lambda: tf.saved_model.load(saved_dir))
        model, keras_outcome = attempt(lambda: keras.models.load_model(keras_path))
        outcomes[stage] = {"saved_model": saved_outcome, "keras": keras_outcome}
    print(json.dumps(outcomes))
    if module is None or model is None:
        return
    results = {}
    for name in ("bpmll", "correlation", "ccc"):
        args = [tf.constant(inputs[f"{name}/{arg}"]) for arg in ("y_true", "y_pred", "mask") if f"{name}/{arg}" in inputs]
        for i, t in enumerate(getattr(module, name)(*args)):
            results[f"{name}/out{i}"] = t.numpy()
        # Differentiating the reloaded function uses the gradients that
        # `import tf_fused_losses` registers.
        y_pred = args[1]
        with tf.GradientTape() as tape:
            tape.watch(y_pred)
            total = tf.reduce_sum(getattr(module, f"{name}_loss")(*args))
        results[f"{name}/outer_grad"] = tape.gradient(total, y_pred).numpy()
    results["keras/evaluate"] = np.array(model.evaluate(inputs["keras/x"], inputs["keras/y"], verbose=0))
    np.savez(out_path, **results)


if __name__ == "__main__":
    main(*sys.argv[1:5])
