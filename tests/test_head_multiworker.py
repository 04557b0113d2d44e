"""BPMLLHead trained data-parallel by tf.distribute's MultiWorkerMirroredStrategy
with two worker processes on 127.0.0.1 (TF_CONFIG, free loopback ports):
both workers end with identical weights, equal to the same SGD steps on
whole global batches on one device (issue 22, part 3).

Each worker is this file run as a script (`python
tests/test_head_multiworker.py OUT.npz`, TF_CONFIG in the environment): the
strategy must exist before any other TF op of the process. The module
imports no framework at its top (`run_together` serves the JAX two-process
test too).
"""

import contextlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

GLOBAL_BATCH, STEPS, LEARNING_RATE = 16, 3, 0.1
FEATURES, LABELS, IDS_PER_ROW = 8, 24, 4


def run_together(commands, envs, timeout):
    """Starts every command at once, each with its environment (they wait on
    one another: a cluster), waits for all, each bounded by `timeout`
    seconds, and kills whichever is left; returns their stdouts. A command
    that fails fails the test with its stderr."""
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for c, env in zip(commands, envs, strict=True)]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            assert p.returncode == 0, f"{p.args} exited with {p.returncode}:\n{err[-6000:]}"
            outs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return outs


def _data():
    """Each row's 4 positive ids are the labels a fixed linear map of its
    features scores best: learnable; every third row padded with a -1."""
    rng = np.random.default_rng(13)
    x = rng.normal(size=(GLOBAL_BATCH * STEPS, FEATURES)).astype(np.float32)
    scores = x @ rng.normal(size=(FEATURES, LABELS))
    ids = np.argsort(-scores, axis=1)[:, :IDS_PER_ROW].astype(np.int32)
    ids[::3, -1] = -1
    return x, ids


def train(strategy, worker, workers):
    """SGD steps on a model ending in BPMLLHead (label ids), each worker on
    its contiguous share of every global batch, the head's added loss
    weighted by that share and the gradients summed over the workers
    (strategy None: one device, whole global batches). Returns the initial
    and final weights."""
    import keras
    import tensorflow as tf

    from tf_fused_losses.head_layers import BPMLLHead

    x, ids = _data()
    with strategy.scope() if strategy else contextlib.nullcontext():
        keras.utils.set_random_seed(0)
        features = keras.Input((FEATURES,))
        labels = keras.Input((IDS_PER_ROW,), dtype="int32")
        hidden = keras.layers.Dense(16, activation="tanh")(features)
        model = keras.Model([features, labels], BPMLLHead(LABELS, label_ids=True, chunk_size=8)(hidden, labels=labels))
    initial = [np.asarray(w) for w in model.get_weights()]

    share = GLOBAL_BATCH // workers

    def replica_step(x, ids):
        with tf.GradientTape() as tape:
            model([x, ids])
            # The head's added loss, its training objective (the mean over this
            # replica's rows), as a share of the global batch's mean.
            loss = tf.add_n(model.losses) * (share / GLOBAL_BATCH)
        return tape.gradient(loss, model.trainable_variables)

    @tf.function
    def step(x, ids):
        if strategy is None:
            grads = replica_step(x, ids)
        else:
            grads = [strategy.reduce(tf.distribute.ReduceOp.SUM, g, axis=None)
                     for g in strategy.run(replica_step, args=(x, ids))]
        for variable, grad in zip(model.trainable_variables, grads):
            variable.assign_sub(LEARNING_RATE * grad)

    for s in range(STEPS):
        start = s * GLOBAL_BATCH + worker * share
        step(tf.constant(x[start:start + share]), tf.constant(ids[start:start + share]))
    return initial, [np.asarray(w) for w in model.get_weights()]


def worker_main(out_path):
    import tensorflow as tf

    # Before any other TF op of this process.
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    config = json.loads(os.environ["TF_CONFIG"])
    initial, final = train(strategy, config["task"]["index"], len(config["cluster"]["worker"]))
    np.savez(out_path, **{f"initial{i}": w for i, w in enumerate(initial)},
             **{f"final{i}": w for i, w in enumerate(final)})


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    pytest.importorskip("tensorflow", reason="MultiWorkerMirroredStrategy needs TensorFlow")
    pytest.importorskip("keras", reason="BPMLLHead needs Keras")
    from helpers import subprocess_env
    from test_integration_distribute import free_ports

    folder = tmp_path_factory.mktemp("head_workers")
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    outputs = [folder / f"{index}.npz" for index in range(2)]
    # One TF_CONFIG per worker: the index differs.
    envs = [subprocess_env({"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})})
            for index in range(2)]
    run_together([[sys.executable, __file__, str(path)] for path in outputs], envs, timeout=240)
    return [dict(np.load(path)) for path in outputs]


def test_two_workers_end_identical_and_equal_one_device(two_workers):
    first, second = two_workers
    names = sorted(n for n in first if n.startswith("final"))
    assert names and names == sorted(n for n in second if n.startswith("final"))
    for name in names:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)  # identical, not close
    initial, want = train(None, 0, 1)
    for i, name in enumerate(names):
        np.testing.assert_array_equal(first[f"initial{i}"], initial[i])  # same start as the yardstick
        np.testing.assert_allclose(first[name], want[i], rtol=1e-5, atol=1e-7, err_msg=name)
    assert any(not np.allclose(first[f"final{i}"], initial[i]) for i in range(len(names)))  # it trained


if __name__ == "__main__":
    worker_main(sys.argv[1])
