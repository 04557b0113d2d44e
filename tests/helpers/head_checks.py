"""Comparisons of the fused head's results with the unfused path's, shared
by the TF and JAX head tests (numpy only, so the JAX env imports it too)."""

import numpy as np


def assert_head_results_match(got, want, grad_rtol, loss_rtol):
    """got and want: (loss, dhidden, dkernel, dbias). Where NaN and
    infinities may appear: the same entries NaN, +inf and -inf, the finite
    ones close (the loss by rtol, the gradients by max abs error relative
    to their finite entries' scale)."""
    for name, g, w in zip(("loss", "hidden", "kernel", "bias"), got, want):
        g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
        assert g.shape == w.shape, name
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w), err_msg=f"{name}: NaN entries")
        np.testing.assert_array_equal(np.isposinf(g), np.isposinf(w), err_msg=f"{name}: +inf entries")
        np.testing.assert_array_equal(np.isneginf(g), np.isneginf(w), err_msg=f"{name}: -inf entries")
        finite = np.isfinite(w)
        if not finite.any():
            continue
        if name == "loss":
            np.testing.assert_allclose(g[finite], w[finite], rtol=loss_rtol, atol=0)
        else:
            scale = max(np.max(np.abs(w[finite])), np.finfo(np.float32).tiny)
            error = np.max(np.abs(g[finite] - w[finite])) / scale
            assert error <= grad_rtol, f"d/d{name}: max abs error {error:.3g} of its scale"
