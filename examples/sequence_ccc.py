"""Masked sequence regression of two targets, scored by corpus CCC.

The shape of a continuous emotion-recognition task (AVEC style): per time
step, predict two targets (say arousal and valence) from a few input
features, for sequences of different lengths padded to one length and masked.
The challenge score is Lin's concordance (CCC) of each target over all valid
steps of the whole held-out corpus, not a mean of per-sequence values.

Synthetic data, so it runs offline: the targets are smoothed functions of the
inputs, and every sequence has its own offset and gain (a speaker's baseline
and range), which a per-sequence correlation ignores and a corpus CCC does
not. The same masked GRU model is trained with three losses:

  * MSE;
  * `tfl.CCCLoss()`: one CCC per sequence and target (the per-step form);
  * `tfl.CCCLoss(corpus=True)`: one CCC per target over every valid step of
    the batch, the quantity the challenge scores;

and each is evaluated with `tfl.CorpusCCC(targets=2)`, which streams the
corpus CCC over the whole held-out set.

    python examples/sequence_ccc.py            # about 30 s on 2 CPU cores
    python examples/sequence_ccc.py --quick    # a few seconds: what the tests run
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

import tf_fused_losses as tfl


def make_data(rng, sequences, steps=50, features=4):
    """(inputs, targets) of shape (sequences, steps, features) and
    (sequences, steps, 2), zero past each sequence's length."""
    u = rng.normal(size=(sequences, steps, features))
    kernel = np.exp(-np.arange(8) / 3.0)
    smooth = np.apply_along_axis(lambda v: np.convolve(v, kernel)[:steps], 1, u)
    arousal = smooth[..., 0] + 0.5 * smooth[..., 1]
    valence = np.tanh(smooth[..., 2]) - 0.3 * smooth[..., 3]
    y = np.stack([arousal, valence], -1)
    y = rng.normal(scale=0.5, size=(sequences, 1, 2)) + rng.uniform(0.6, 1.4, (sequences, 1, 2)) * y
    y += rng.normal(scale=0.2, size=y.shape)
    # A sequence's baseline shows in its inputs' mean, so a model can learn it.
    u += y.mean(1, keepdims=True)[..., [0, 1, 0, 1]] * 0.5
    lengths = rng.integers(steps // 3, steps + 1, size=sequences)
    padding = np.arange(steps)[None, :] >= lengths[:, None]
    u[padding], y[padding] = 0.0, 0.0
    return u.astype("float32"), y.astype("float32")


def train(loss, u, y, u_test, y_test, epochs, seed):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input(u.shape[1:]), keras.layers.Masking(0.0),
                              keras.layers.GRU(32, return_sequences=True), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=loss, metrics=[tfl.CorpusCCC(targets=2)])
    start = time.perf_counter()
    model.fit(u, y, batch_size=32, epochs=epochs, verbose=0)
    seconds = time.perf_counter() - start
    metric = tfl.CorpusCCC(targets=2)
    # The held-out corpus: predictions of every sequence, the padding steps
    # marked invalid by a (batch, steps) weight.
    valid = np.any(u_test != 0.0, axis=-1)
    metric.update_state(y_test, model.predict(u_test, verbose=0), sample_weight=valid.astype("float32"))
    return np.asarray(metric.result_per_target()), seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few sequences and epochs (a smoke run)")
    args = parser.parse_args()
    sequences, epochs = (128, 1) if args.quick else (1024, 12)
    rng = np.random.default_rng(0)
    u, y = make_data(rng, sequences + 256)
    (u, u_test), (y, y_test) = np.split(u, [sequences]), np.split(y, [sequences])
    print(f"{sequences} training sequences, {len(u_test)} held out, up to {u.shape[1]} steps, 2 targets; "
          f"Masking + GRU 32 + Dense 2, Adam, {epochs} epochs")
    print(f"\n{'trained with':<26}{'corpus CCC arousal':>20}{'valence':>10}{'mean':>8}{'train s':>9}")
    for name, loss in [("MSE", "mse"), ("CCCLoss()", tfl.CCCLoss()), ("CCCLoss(corpus=True)", tfl.CCCLoss(corpus=True))]:
        ccc, seconds = train(loss, u, y, u_test, y_test, epochs, seed=1)
        print(f"{name:<26}{ccc[0]:>20.4f}{ccc[1]:>10.4f}{ccc.mean():>8.4f}{seconds:>9.1f}")


if __name__ == "__main__":
    main()
