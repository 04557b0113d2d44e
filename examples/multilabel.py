"""Multi-label classification with BP-MLL, evaluated as the papers do.

A tabular multi-label task (synthetic, so it runs offline: 40 features, 100
labels, about 4 positive labels a row, each label driven by a few latent
topics plus noise) learned by the same Keras model twice, once with
`tfl.BPMLLLoss` and once with binary cross-entropy, and evaluated on held-out
rows with the BP-MLL paper's ranking metrics and the extreme-classification
ones (P@k, nDCG@k). BP-MLL optimises the ranking of positives above
negatives; on this task the two losses land within a few percent of each
other on every metric (the output in docs/examples.md). BP-MLL learns no
threshold, so hamming loss (which needs one) is left out.

    python examples/multilabel.py            # about 30 s on 2 CPU cores
    python examples/multilabel.py --quick    # a few seconds: what the tests run
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

import tf_fused_losses as tfl


def make_data(rng, rows, features=40, labels=100, topics=12):
    """Rows whose labels follow latent topics: x is a noisy view of the
    topics, and label l is on where its topics' score beats a threshold that
    gives about 4 positives a row."""
    z = rng.normal(size=(rows, topics))
    x = z @ rng.normal(size=(topics, features)) / np.sqrt(topics) + 0.5 * rng.normal(size=(rows, features))
    scores = z @ rng.normal(size=(topics, labels)) + rng.normal(scale=0.7, size=(rows, labels))
    y = scores > np.quantile(scores, 1 - 4 / labels, axis=1, keepdims=True)
    return x.astype("float32"), y.astype("float32")


def metrics():
    return [tfl.RankingLoss(), tfl.OneError(), tfl.Coverage(), tfl.AveragePrecision(),
            tfl.PrecisionAtK(k=1, name="p@1"), tfl.PrecisionAtK(k=3, name="p@3"),
            tfl.PrecisionAtK(k=5, name="p@5"), tfl.NDCGAtK(k=5, name="ndcg@5")]


def train(loss, x, y, x_test, y_test, epochs, seed):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(128, activation="relu"),
                              keras.layers.Dense(y.shape[1])])
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss=loss, metrics=metrics())
    start = time.perf_counter()
    model.fit(x, y, batch_size=64, epochs=epochs, verbose=0)
    seconds = time.perf_counter() - start
    return model.evaluate(x_test, y_test, batch_size=500, verbose=0, return_dict=True), seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few rows and epochs (a smoke run)")
    args = parser.parse_args()
    rows, epochs = (600, 2) if args.quick else (3000, 20)
    rng = np.random.default_rng(0)
    x, y = make_data(rng, rows + 1000)
    (x, x_test), (y, y_test) = np.split(x, [rows]), np.split(y, [rows])
    print(f"{rows} training rows, {len(x_test)} held out, {y.shape[1]} labels, "
          f"{y.sum(1).mean():.1f} positives a row; Dense 128 relu + Dense(labels), Adam, {epochs} epochs")

    results = {}
    for name, loss in [("BPMLLLoss", tfl.BPMLLLoss()),
                       ("binary cross-entropy", keras.losses.BinaryCrossentropy(from_logits=True))]:
        results[name], seconds = train(loss, x, y, x_test, y_test, epochs, seed=1)
        print(f"  trained with {name:<22} in {seconds:5.1f} s")

    keys = ["ranking_loss", "one_error", "coverage", "average_precision", "p@1", "p@3", "p@5", "ndcg@5"]
    better = {"ranking_loss": "lower", "one_error": "lower", "coverage": "lower"}
    print(f"\nheld-out {'metric':<20}" + "".join(f"{name:>24}" for name in results))
    for key in keys:
        print(f"  {key:<18} ({better.get(key, 'higher'):>6})" + "".join(f"{r[key]:>24.4f}" for r in results.values()))


if __name__ == "__main__":
    main()
