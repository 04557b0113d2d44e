"""Many Python threads calling the ops at once: through one tf.function on
different inputs, and as the first calls of a fresh process (the op library
loads lazily)."""

import numpy as np
import tensorflow as tf

import tf_fused_losses as tfl
from helpers import last_json_line, run_in_threads, run_script

THREADS = 8
ROUNDS = 6
MATRIX = tf.TensorSpec([None, None], tf.float32)


@tf.function(input_signature=[MATRIX, MATRIX, MATRIX, MATRIX, tf.TensorSpec([None, None], tf.bool)])
def all_losses(labels, logits, targets, predictions, mask):
    """Every op once, forward and backward, on dynamic shapes."""
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([logits, targets, predictions])
        bpmll = tfl.bpmll_loss(labels, logits)
        correlation = tfl.correlation_loss(targets, predictions, mask=mask)
        ccc = tfl.ccc_loss(targets, predictions)
        weighted = tf.reduce_sum(correlation * predictions) + tf.reduce_sum(ccc * targets)
    outputs = [bpmll, tape.gradient(bpmll, logits), correlation, ccc]
    return outputs + tape.gradient(weighted, [targets, predictions])


def thread_inputs(index):
    """Different shapes and values per thread; thread 0 takes the long-row
    (piece-wise) paths of the kernels."""
    rng = np.random.default_rng(index)
    rows, labels = (2, 70_001) if index == 0 else (3 + index, 50 * index + 7)
    steps = 140_001 if index == 0 else 40 * index + 3
    return [
        tf.constant((rng.random((rows, labels)) < 0.3).astype(np.float32)),
        tf.constant(rng.normal(size=(rows, labels)).astype(np.float32)),
        tf.constant(rng.normal(size=(2, steps)).astype(np.float32)),
        tf.constant(rng.normal(size=(2, steps)).astype(np.float32)),
        tf.constant(rng.random((2, steps)) < 0.9),
    ]


def test_threads_sharing_one_tf_function_get_their_own_results():
    inputs = [thread_inputs(i) for i in range(THREADS)]
    expected = [[t.numpy() for t in all_losses(*args)] for args in inputs]
    mismatches = []

    def work(index):
        for round_ in range(ROUNDS):
            for name, got, want in zip("abcdef", all_losses(*inputs[index]), expected[index]):
                if not np.array_equal(got.numpy(), want):
                    mismatches.append(f"thread {index} round {round_} output {name} differs")

    failures = run_in_threads(work, THREADS) + mismatches
    assert not failures, failures[:10]
    assert all_losses.experimental_get_tracing_count() == 1


def test_first_calls_from_many_threads_load_the_library_once():
    # On the op path whatever the suite runs on: the script counts the loads.
    report = last_json_line(run_script("first_call_race.py", pure_tf=False).stdout)
    # "wrong": threads whose losses differ from float64 values computed from
    # the definitions.
    assert report == {"errors": [], "loads": 1, "wrong": []}
