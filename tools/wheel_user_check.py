"""What a user checks after `pip install tf-fused-losses` beside their
TensorFlow: the fused ops load for this TensorFlow, their losses and
gradients match float64 numpy, and a Keras model trains. Run from outside
the checkout so that the installed package is the one imported."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

import tf_fused_losses as tfl


def bpmll64(y, c):
    """Pairwise BP-MLL in float64 and its gradient with respect to c."""
    pos, neg = y == 1, y == 0
    pairs = pos.sum(1) * neg.sum(1)
    e_neg, e_pos = np.exp(-c) * pos, np.exp(c) * neg
    a, b = e_neg.sum(1), e_pos.sum(1)
    loss = a * b / pairs
    grad = (-e_neg * b[:, None] + e_pos * a[:, None]) / pairs[:, None]
    return loss, grad


def moments64(y, x, concordance, eps=1e-7):
    """Per-step Pearson/CCC loss in float64 and its gradient with respect to x (sum of the losses)."""
    n = x.shape[1]
    dx, dy = x - x.mean(1, keepdims=True), y - y.mean(1, keepdims=True)
    vx, vy, cov = (dx**2).mean(1), (dy**2).mean(1), (dx * dy).mean(1)
    if concordance:
        mdiff = x.mean(1) - y.mean(1)
        den = vx + vy + mdiff**2 + eps
        loss = 1 - 2 * dx * dy / den[:, None]
        # d/dx_j of sum_t loss_t = -2 n cov / den, through cov, vx and the mean gap
        grad = -2 * (dy / den[:, None]) + 2 * n * cov[:, None] / den[:, None] ** 2 * (2 * dx / n + 2 * mdiff[:, None] / n)
    else:
        sx, sy = np.sqrt(vx), np.sqrt(vy)
        den = sx * sy + eps
        loss = 1 - dx * dy / den[:, None]
        dden = sy[:, None] * dx / (n * sx[:, None])
        grad = -dy / den[:, None] + n * cov[:, None] * dden / den[:, None] ** 2
    return loss, grad


def main():
    info = tfl.build_info()
    print(f"TensorFlow {tf.__version__}: frontend built against {info['tensorflow']}, xla {info['xla']}")
    rng = np.random.default_rng(0)
    y = (rng.random((6, 300)) < 0.1).astype(np.float32)
    y[:, 0], y[:, 1] = 1, 0
    c = rng.normal(size=y.shape).astype(np.float32)
    c_t = tf.constant(c)
    with tf.GradientTape() as tape:
        tape.watch(c_t)
        loss = tfl.bpmll_loss(tf.constant(y), c_t)
    want_loss, want_grad = bpmll64(y.astype(np.float64), c.astype(np.float64))
    np.testing.assert_allclose(loss.numpy(), want_loss, rtol=2e-5)
    np.testing.assert_allclose(tape.gradient(loss, c_t).numpy(), want_grad, rtol=2e-4, atol=1e-7)

    t = rng.normal(size=(4, 500))
    x = 0.6 * t + rng.normal(size=t.shape)
    for name, fn, concordance in (("pearson", tfl.correlation_loss, False), ("ccc", tfl.ccc_loss, True)):
        x_t = tf.constant(x, tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(x_t)
            got = fn(tf.constant(t, tf.float32), x_t)
        want, want_grad = moments64(t, x, concordance)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(tape.gradient(got, x_t).numpy(), want_grad, rtol=1e-3, atol=1e-6, err_msg=name)

    features = rng.normal(size=(512, 16)).astype(np.float32)
    labels = (features @ rng.normal(size=(16, 40)) > 1.0).astype(np.float32)
    labels[:, 0], labels[:, 1] = 1, 0
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(40)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=tfl.BPMLLLoss())
    history = model.fit(features, labels, batch_size=64, epochs=5, verbose=0).history["loss"]
    assert history[-1] < 0.7 * history[0], history
    print(f"losses and gradients match float64 numpy; Keras BPMLLLoss {history[0]:.3f} -> {history[-1]:.3f} in 5 epochs")


if __name__ == "__main__":
    main()
