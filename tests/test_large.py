"""More than 2^31 elements: index arithmetic must be 64-bit everywhere.
Peak memory about 16 GB (BP-MLL) and 12 GB (correlation), minutes per case:
opt in with `pytest --run-large`.

BP-MLL on a bool y_true and a float16 y_pred, and Pearson and CCC on float16
y_true and y_pred, of (2, 2^30 + 7) (flat indices past 2^31 in rows shorter
than 2^31) and (1, 2^31 + 5) (columns past 2^31), each in a fresh interpreter
with oneDNN off (tests/helpers/large_bpmll.py, large_correlation.py), against
a chunked float64 numpy computation.
"""

import numpy as np
import pytest

from helpers import last_json_line, run_script, subprocess_env

pytestmark = pytest.mark.large


SHAPES = pytest.mark.parametrize("shape", [(2, 2**30 + 7), (1, 2**31 + 5)], ids=["rows_past_2^31", "row_past_2^31"])


@SHAPES
def test_bpmll_past_2_to_the_31_elements(tmp_path, shape):
    assert shape[0] * shape[1] > 2**31
    out = tmp_path / "large.npz"
    proc = run_script("large_bpmll.py", *shape, out, env=subprocess_env({"TF_ENABLE_ONEDNN_OPTS": "0"}), timeout=3600)
    print(shape, last_json_line(proc.stdout))
    r = np.load(out)
    np.testing.assert_array_equal(r["public_loss"], r["loss"])
    # float32 sums of 2^31 terms, then one float16 rounding.
    np.testing.assert_allclose(r["loss"].astype(np.float64), r["want_loss"], rtol=3e-3)

    hot = {tuple(p) for p in r["hot"]}
    assert hot and hot <= {tuple(p) for p in r["probes"]}
    assert max(row * shape[1] + column for row, column in hot) >= 2**31
    for (row, column), got, scaled, want in zip(r["probes"], r["cached"], r["scaled"], r["want_grads"]):
        # The backward op scales each row by its upstream gradient.
        assert scaled == float(np.float16(got * float(r["upstream"][row]))), (row, column, got, scaled)
        if (row, column) in hot:
            assert abs(want) > 0.05, want
            assert got == pytest.approx(want, rel=3e-3), (row, column, got, want)
        else:
            assert abs(got - want) <= 1e-6, (row, column, got, want)


@SHAPES
def test_correlation_past_2_to_the_31_elements(tmp_path, shape):
    assert shape[0] * shape[1] > 2**31
    out = tmp_path / "large.npz"
    proc = run_script(
        "large_correlation.py", *shape, out, env=subprocess_env({"TF_ENABLE_ONEDNN_OPTS": "0"}), timeout=3600
    )
    print(shape, last_json_line(proc.stdout))
    r = np.load(out)
    flat = r["probes"][:, 0] * shape[1] + r["probes"][:, 1]
    assert flat.max() >= 2**31
    for kind in ("pearson", "ccc"):
        # The public function is the forward op.
        np.testing.assert_array_equal(r[f"{kind}_public_probes"], r[f"{kind}_probes"], err_msg=kind)
        np.testing.assert_array_equal(r[f"{kind}_public_sums"], r[f"{kind}_sums"], err_msg=kind)
        # Row sums: a region of steps left unwritten or written elsewhere
        # moves them by O(1) a step. The rows' float32 moments, merged over
        # 2^20 chunks, bound them to 3e-3 as for BP-MLL's sums (1e-5 at
        # 5e7 steps); the probes catch single steps.
        np.testing.assert_allclose(r[f"{kind}_sums"], r[f"{kind}_want_sums"], rtol=3e-3, err_msg=kind)
        # Each probe: those moments, then one float16 rounding (2^-11) of
        # values up to about 10.
        for name, got, want in [("loss", r[f"{kind}_probes"], r[f"{kind}_want_probes"]),
                                ("grad_y_pred", r[f"{kind}_grads"], r[f"{kind}_want_grads"])]:
            np.testing.assert_allclose(got, want, rtol=3e-3, atol=3e-3, err_msg=f"{kind} {name}")
