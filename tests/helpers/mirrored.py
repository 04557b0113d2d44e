"""MirroredStrategy over two logical CPU devices against one device, for
each loss: one custom-loop step (loss and gradients) and a few steps of
Keras fit (weights). Usage: mirrored.py OUT.npz; prints the replicas'
devices as JSON. Logical devices must be set before TF initialises, hence
a process of its own."""

import json
import sys

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from helpers import LOSS_KINDS, make_loss, make_model, task_data  # noqa: E402
from helpers.training import per_example_loss  # noqa: E402

GLOBAL_BATCH = 32


def loop_step(kind, model, x, y, strategy=None):
    """Mean loss over the global batch, its gradients, and the devices that
    the replicas placed the loss on (recorded while tracing)."""
    devices = []

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            per_example = per_example_loss(kind, y, model(x, training=True))
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=GLOBAL_BATCH)
        devices.append(per_example.device)
        return loss, tape.gradient(loss, model.trainable_variables)

    if strategy is None:
        loss, grads = tf.function(replica_step)(x, y)
        return loss.numpy(), [g.numpy() for g in grads], devices
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
    batch = next(iter(strategy.experimental_distribute_dataset(dataset)))

    @tf.function
    def step(batch):
        loss, grads = strategy.run(replica_step, args=batch)
        total = strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
        return total, [strategy.reduce(tf.distribute.ReduceOp.SUM, g, axis=None) for g in grads]

    total, grads = step(batch)
    return total.numpy(), [g.numpy() for g in grads], devices


def fit_weights(kind, x, y, initial):
    model = make_model(kind, x, y)
    model.set_weights(initial)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=make_loss(kind))
    model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=2, shuffle=False, verbose=0)
    return model.get_weights()


def main(out_path):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    results, devices = {}, {}
    for kind in LOSS_KINDS:
        x, y = task_data(kind, np.random.default_rng(3), 2 * GLOBAL_BATCH)
        single_model = make_model(kind, x, y)
        initial = single_model.get_weights()
        with strategy.scope():
            mirrored_model = make_model(kind, x, y)
            mirrored_model.set_weights(initial)
        for name, (loss, grads, used) in {
            "single": loop_step(kind, single_model, x[:GLOBAL_BATCH], y[:GLOBAL_BATCH]),
            "mirrored": loop_step(kind, mirrored_model, x[:GLOBAL_BATCH], y[:GLOBAL_BATCH], strategy),
        }.items():
            results[f"{kind}/loop_loss/{name}"] = loss
            for i, g in enumerate(grads):
                results[f"{kind}/loop_grad{i}/{name}"] = g
            devices[f"{kind}/{name}"] = used
        for i, w in enumerate(fit_weights(kind, x, y, initial)):
            results[f"{kind}/fit_weight{i}/single"] = w
        with strategy.scope():
            for i, w in enumerate(fit_weights(kind, x, y, initial)):
                results[f"{kind}/fit_weight{i}/mirrored"] = w
        for i, w in enumerate(initial):
            results[f"{kind}/initial_weight{i}/single"] = w
    np.savez(out_path, **results)
    print(json.dumps(devices))


if __name__ == "__main__":
    main(sys.argv[1])
