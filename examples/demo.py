"""Trains a Keras multi-label model on synthetic data with the fused BP-MLL
loss, then with the pure-TF loss, and prints seconds per step for each.

    python examples/demo.py [--labels 4000] [--batch 256] [--steps 30]
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

import tf_fused_losses as tfl
from tf_fused_losses import reference


def synthetic_multilabel(samples, features, labels, rng):
    x = rng.normal(size=(samples, features)).astype(np.float32)
    w = rng.normal(size=(features, labels)).astype(np.float32) / np.sqrt(features)
    scores = x @ w + 0.3 * rng.normal(size=(samples, labels)).astype(np.float32)
    y = (scores > np.quantile(scores, 0.98, axis=1, keepdims=True)).astype(np.float32)  # ~2% positives
    return x, y


def ranking_accuracy(y, scores):
    accs = [np.mean(s[t == 1][:, None] > s[t == 0][None, :]) for t, s in zip(y, scores) if 0 < t.sum() < len(t)]
    return float(np.mean(accs))


def train(name, loss, x, y, x_test, y_test, batch, steps):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((x.shape[1],)), keras.layers.Dense(256, activation="relu"), keras.layers.Dense(y.shape[1])]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, jit_compile=False)
    data = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(batch).prefetch(2)
    model.fit(data, steps_per_epoch=3, epochs=1, verbose=0)  # trace and warm up
    start = time.perf_counter()
    history = model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
    seconds = (time.perf_counter() - start) / steps
    accuracy = ranking_accuracy(y_test, model.predict(x_test, verbose=0))
    print(f"{name:<34} {seconds * 1e3:9.1f} ms/step   final loss {history.history['loss'][-1]:8.4f}   "
          f"held-out ranking accuracy {accuracy:.3f}")
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=int, default=4000)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    x, y = synthetic_multilabel(args.batch * 16 + 512, args.features, args.labels, rng)
    x_test, y_test = x[-512:], y[-512:]
    x, y = x[:-512], y[:-512]
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs; batch {args.batch}, {args.labels} labels")
    fused = train("fused BPMLLLoss", tfl.BPMLLLoss(), x, y, x_test, y_test, args.batch, args.steps)
    pure = train("pure-TF factored loss (graph)", lambda t, p: reference.bpmll_loss_factored(t, p), x, y, x_test,
                 y_test, args.batch, args.steps)
    pair_bytes = args.batch * args.labels**2 * 8
    print(f"per step: fused is {pure / fused:.2f}x the speed of the pure-TF factored loss; the seed's pairwise "
          f"form would build a {pair_bytes / 2**30:.1f} GiB pair tensor per step at this size")


if __name__ == "__main__":
    main()
