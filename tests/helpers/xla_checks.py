"""XLA checks that need a fresh interpreter. Usage: xla_checks.py CHECK [ARGS]

  late_load            compiles an unrelated function with XLA first, then imports
                       tf_fused_losses and runs every loss under jit_compile
                       (the JIT kernels were registered before the library loaded)
  threads N OUT.npz    intra-op threads = N, then every loss and gradient under
                       jit_compile on fixed inputs, saved to OUT.npz
  save DIR             saves a SavedModel whose functions are jit_compile'd losses
  load DIR OUT.npz     loads it after load_ops() and runs it, saved to OUT.npz

Prints one JSON line with what it checked."""

import json
import sys

import numpy as np
import tensorflow as tf


def inputs():
    rng = np.random.default_rng(7)
    return {
        "y": (rng.random((5, 70001 // 7)) < 0.2).astype(np.float32),
        "c": rng.normal(size=(5, 70001 // 7)).astype(np.float32),
        "long_y": (rng.random((2, 70001)) < 0.2).astype(np.float32),
        "long_c": rng.normal(size=(2, 70001)).astype(np.float32),
        "seq_y": rng.normal(size=(3, 40000)).astype(np.float32),
        "seq_x": rng.normal(size=(3, 40000)).astype(np.float32),
        "mask": rng.random((3, 40000)) < 0.9,
    }


def all_losses(tfl, data):
    """Every loss and its gradients, computed under jit_compile."""

    @tf.function(jit_compile=True)
    def bpmll(y, c):
        with tf.GradientTape() as tape:
            tape.watch(c)
            loss = tfl.bpmll_loss(y, c)
        return loss, tape.gradient(loss, c)

    @tf.function(jit_compile=True)
    def sequence(y, x, mask):
        out = []
        for fn in (tfl.correlation_loss, tfl.ccc_loss):
            with tf.GradientTape() as tape:
                tape.watch([y, x])
                loss = fn(y, x, mask=mask)
            out += [loss, *tape.gradient(loss, [x, y])]
        return out

    results = {}
    for key, (y, c) in {"bpmll": ("y", "c"), "bpmll_long": ("long_y", "long_c")}.items():
        loss, grad = bpmll(tf.constant(data[y]), tf.constant(data[c]))
        results[f"{key}_loss"], results[f"{key}_grad"] = loss.numpy(), grad.numpy()
    names = ["pearson_loss", "pearson_grad_x", "pearson_grad_y", "ccc_loss", "ccc_grad_x", "ccc_grad_y"]
    for name, value in zip(names, sequence(tf.constant(data["seq_y"]), tf.constant(data["seq_x"]), tf.constant(data["mask"]))):
        results[name] = value.numpy()
    return results


def main(check, *args):
    if check == "late_load":
        warm = tf.function(lambda x: tf.sin(x) * 2, jit_compile=True)
        warm(tf.constant([1.0]))
        import tf_fused_losses as tfl

        results = all_losses(tfl, inputs())
        print(json.dumps({"late_load": "ok", "finite": bool(all(np.isfinite(v).all() for v in results.values()))}))
    elif check == "threads":
        tf.config.threading.set_intra_op_parallelism_threads(int(args[0]))
        import tf_fused_losses as tfl

        np.savez(args[1], **all_losses(tfl, inputs()))
        print(json.dumps({"threads": int(args[0])}))
    elif check == "save":
        import tf_fused_losses as tfl

        module = tf.Module()
        module.bpmll = tf.function(
            lambda y, c: tfl.bpmll_loss(y, c), jit_compile=True, input_signature=[tf.TensorSpec([None, None])] * 2
        )
        module.ccc = tf.function(
            lambda y, x: tfl.ccc_loss(y, x), jit_compile=True, input_signature=[tf.TensorSpec([None, None])] * 2
        )
        tf.saved_model.save(module, args[0])
        print(json.dumps({"saved": args[0]}))
    elif check == "load":
        import tf_fused_losses as tfl

        tfl.load_ops()
        module = tf.saved_model.load(args[0])
        data = inputs()
        np.savez(
            args[1],
            bpmll=module.bpmll(tf.constant(data["y"]), tf.constant(data["c"])).numpy(),
            ccc=module.ccc(tf.constant(data["seq_y"]), tf.constant(data["seq_x"])).numpy(),
            hlo=np.array("custom_call_target=\"tfl_bpmll_loss\"" in module.bpmll.experimental_get_compiler_ir(
                tf.constant(data["y"]), tf.constant(data["c"]))(stage="hlo")),
        )
        print(json.dumps({"loaded": args[0]}))
    else:
        raise SystemExit(f"unknown check {check!r}")


if __name__ == "__main__":
    main(*sys.argv[1:])
