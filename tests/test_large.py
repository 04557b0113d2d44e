"""More than 2^31 elements: index arithmetic must be 64-bit everywhere.
Peak memory about 16 GB, about 6 minutes here: opt in with `pytest --run-large`.

BP-MLL on a bool y_true and a float16 y_pred of (2, 2^30 + 7) (flat indices
past 2^31 in rows shorter than 2^31) and (1, 2^31 + 5) (columns past 2^31),
in a fresh interpreter with oneDNN off (tests/helpers/large_bpmll.py), against
a chunked float64 numpy computation.
"""

import numpy as np
import pytest

from helpers import last_json_line, run_script, subprocess_env

pytestmark = pytest.mark.large


@pytest.mark.parametrize("shape", [(2, 2**30 + 7), (1, 2**31 + 5)], ids=["rows_past_2^31", "row_past_2^31"])
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
