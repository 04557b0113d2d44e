"""Inputs and bit comparisons of the label-id BP-MLL tests (test_bpmll_ids.py
for TF, test_bpmll_ids_jax.py for JAX). Framework-free."""

import numpy as np


def random_ids(rng, batch, labels, width):
    """(batch, width) int64 ids, -1 padding anywhere, a repeated id in about
    half the rows, and the uint8 (batch, labels) matrix they stand for."""
    ids = np.full((batch, width), -1, np.int64)
    dense = np.zeros((batch, labels), np.uint8)
    for i in range(batch):
        count = int(rng.integers(0, width + 1)) if labels else 0
        chosen = rng.integers(0, labels, size=count)
        if count > 1 and rng.random() < 0.5:
            chosen[-1] = chosen[0]  # counts once
        ids[i, rng.permutation(width)[:count]] = chosen
        dense[i, chosen] = 1
    return ids, dense


def dense_of(ids, labels):
    """The uint8 0/1 matrix of a (batch, K) id array (-1 = padding)."""
    ids = np.asarray(ids)
    dense = np.zeros((len(ids), labels), np.uint8)
    for i, row in enumerate(ids):
        dense[i, row[row >= 0]] = 1
    return dense


def assert_same_bits(got, want, what):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, (what, got.shape, want.shape, got.dtype, want.dtype)
    differ = (got.view(np.uint8) != want.view(np.uint8)).reshape(got.size, -1).any(axis=1) if got.size else []
    assert not np.any(differ), f"{what}: ids and dense differ at flat indices {np.flatnonzero(differ)[:5]}"
