"""One worker of a two-worker MultiWorkerMirroredStrategy (TF_CONFIG in the
environment). For each loss it trains a model with a custom loop for a few
SGD steps, each worker on its own half of every global batch, and saves the
initial and final weights. Usage: multi_worker.py OUT.npz

(Keras 3's model.fit does not run under MultiWorkerMirroredStrategy:
"Attempt to convert a value (PerReplica...) to a Tensor", with any loss.)"""

import json
import os
import sys

import tensorflow as tf

# The strategy must exist before any other TF op runs in this process.
strategy = tf.distribute.MultiWorkerMirroredStrategy()

import numpy as np  # noqa: E402

from helpers import LOSS_KINDS, make_model, task_data  # noqa: E402
from helpers.training import GLOBAL_BATCH, LEARNING_RATE, STEPS, local_batch, per_example_loss  # noqa: E402


def train(kind, worker, workers):
    x, y = task_data(kind, np.random.default_rng(11), GLOBAL_BATCH * STEPS)
    with strategy.scope():
        model = make_model(kind, x, y)
    initial = model.get_weights()

    @tf.function
    def step(x, y):
        def replica_step(x, y):
            with tf.GradientTape() as tape:
                loss = tf.nn.compute_average_loss(per_example_loss(kind, y, model(x)), global_batch_size=GLOBAL_BATCH)
            return tape.gradient(loss, model.trainable_variables)

        grads = strategy.run(replica_step, args=(x, y))
        for variable, grad in zip(model.trainable_variables, grads):
            variable.assign_sub(LEARNING_RATE * strategy.reduce(tf.distribute.ReduceOp.SUM, grad, axis=None))

    for s in range(STEPS):
        step(*local_batch(x, y, s, worker, workers))
    return initial, model.get_weights()


def main(out_path):
    task = json.loads(os.environ["TF_CONFIG"])["task"]
    workers = len(json.loads(os.environ["TF_CONFIG"])["cluster"]["worker"])
    results = {}
    for kind in LOSS_KINDS:
        initial, final = train(kind, task["index"], workers)
        for i, (w0, w1) in enumerate(zip(initial, final)):
            results[f"{kind}/initial{i}"] = w0
            results[f"{kind}/final{i}"] = w1
    np.savez(out_path, **results)


if __name__ == "__main__":
    main(sys.argv[1])
