"""Row-scaled comparison for the CUDA tests: kernels that reduce in another
order than the CPU kernels agree to a tolerance relative to each row's
largest value, not to each element's own (small gradient entries carry the
row's absolute error)."""

import numpy as np


def assert_rows_close(actual, expected, tolerance, name):
    """NaN where expected is NaN, and elsewhere |actual - expected| <=
    tolerance * max(|expected| over the row) (rows: the first axis)."""
    actual = np.asarray(actual).astype(np.float64)
    expected = np.asarray(expected).astype(np.float64)
    if expected.ndim == 1:
        actual, expected = actual[:, None], expected[:, None]
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    assert np.array_equal(np.isnan(actual), np.isnan(expected)), f"{name}: NaN in different places"
    finite = ~np.isnan(expected)
    scale = np.maximum(np.abs(np.where(finite, expected, 0)).max(axis=1, keepdims=True, initial=0), 1e-30)
    err = np.where(finite, np.abs(actual - expected), 0) / scale
    if err.size:
        worst = np.unravel_index(np.argmax(err), err.shape)
        assert err.max() <= tolerance, f"{name}: relative error {err.max():.3g} at {worst} (tolerance {tolerance})"
