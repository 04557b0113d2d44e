"""The SGD steps that the multi-worker test runs on each worker, and that the
test repeats on one device as the yardstick."""

import numpy as np
import tensorflow as tf

from helpers import loss_function

GLOBAL_BATCH = 16
STEPS = 3
LEARNING_RATE = 0.1


def per_example_loss(kind, y, y_pred):
    """(batch,): BP-MLL per sample; the per-step losses averaged over steps."""
    loss = loss_function(kind)(y, y_pred)
    return loss if kind == "bpmll" else tf.reduce_mean(loss, axis=1)


def local_batch(x, y, step, worker, workers):
    """The worker's contiguous share of global batch number `step`."""
    share = GLOBAL_BATCH // workers
    start = step * GLOBAL_BATCH + worker * share
    return tf.constant(x[start : start + share]), tf.constant(y[start : start + share])


def sgd_on_one_device(kind, model, x, y):
    """The same steps on whole global batches, without a strategy."""
    for s in range(STEPS):
        xb, yb = local_batch(x, y, s, 0, 1)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(per_example_loss(kind, yb, model(xb)))
        for variable, grad in zip(model.trainable_variables, tape.gradient(loss, model.trainable_variables)):
            variable.assign_sub(LEARNING_RATE * grad)
    return [np.asarray(w) for w in model.get_weights()]
