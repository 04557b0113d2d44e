"""bench/run.py: a tiny run end to end, and the report's arithmetic.

Nothing here depends on how fast anything is.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

import tf_fused_losses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
sys.path.insert(0, BENCH)

import report  # noqa: E402
import run  # noqa: E402

SECTIONS = {"bpmll": "## BP-MLL", "correlation": "## Pearson correlation", "ccc": "## CCC"}
# A Python interpreter with jax for the JAX columns (it needs no TensorFlow),
# e.g. TFL_BENCH_JAX_PYTHON=build/venv-jax/bin/python; without it, this one
# if it imports jax.
JAX_PYTHON_ENV = "TFL_BENCH_JAX_PYTHON"


def _table_rows(markdown, section):
    """The data rows of the table under a section heading, as lists of cells."""
    lines = markdown.split(section + "\n", 1)[1].split("\n## ", 1)[0].splitlines()
    table = [line for line in lines if line.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    return header, [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]


@pytest.mark.slow
def test_quick_run_writes_a_row_per_case(tmp_path):
    markdown_path = tmp_path / "table.md"
    json_path = tmp_path / "results.json"
    env = dict(os.environ)
    # The workers must load the same build of the package as this test.
    package_parent = os.path.dirname(os.path.dirname(tf_fused_losses.__file__))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    command = [sys.executable, os.path.join(BENCH, "run.py"), "--quick", "--no-install", "--no-plot",
               "--bpmll-sizes", "4x18,2x300", "--corr-sizes", "2x40",
               # 2 x 300^2 x 8 bytes = 1.44 MB: the pairwise forms run at 4x18 only.
               "--pairwise-limit-gb", "0.001",
               "--markdown", str(markdown_path), "--json", str(json_path)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    markdown = markdown_path.read_text()
    assert done.stdout.strip() == markdown.strip()
    raw = json.loads(json_path.read_text())
    results = raw["results"]

    # Every planned case is reported once, in the plan's order.
    planned = [c for group in run.plan_groups(run.parse_args(command[2:])) for c in group]
    keys = ("op", "batch", "length", "pred_dtype", "label_dtype", "mode", "impl")
    assert [tuple(r[k] for k in keys) for r in results] == [tuple(c[k] for k in keys) for c in planned]
    # One progress line per case.
    assert len([line for line in done.stderr.splitlines() if line.startswith("[")]) == len(planned)

    # Every op's fused function (outside XLA and as custom calls inside it)
    # and both pure-TF forms (graph and XLA) must run, in both passes; only
    # the outside implementations (pairwise, peer) may be skipped, saying why.
    ours = {"fused", "fused_xla", "graph", "xla"}
    must_run = {"bpmll": ours | {"pairwise"}, "correlation": ours, "ccc": ours}
    for op, name in report.OP_TITLES.items():
        assert hasattr(tf_fused_losses, name[1].split(".")[-1]), name
    for op, impls in must_run.items():
        for mode in run.MODES:
            ran = {r["impl"] for r in results if r["op"] == op and r["mode"] == mode and r["status"] == "ok"}
            assert impls <= ran, (op, mode, sorted(impls - ran),
                                  [r for r in results if r["op"] == op and r["impl"] in impls - ran])
    for r in results:
        if r["impl"] in ("pairwise", "peer") and r["length"] == 300:
            assert r["status"] == "skipped" and "--pairwise-limit-gb" in r["reason"], r
        elif r["impl"] in must_run[r["op"]]:
            assert r["status"] == "ok", r
        else:
            assert r["status"] in ("ok", "skipped"), r
            if r["status"] == "skipped":
                assert r["reason"]
        if r["status"] == "ok":
            assert r["min_s"] <= r["median_s"] <= r["max_s"]
            assert r["repeats"] >= 3

    for op, section in SECTIONS.items():
        header, rows = _table_rows(markdown, section)
        length_name = "L" if op == "bpmll" else "T"
        assert header == [length_name if c == "len" else c for c in report.COLUMNS]
        ok = [r for r in results if r["op"] == op and r["status"] == "ok"]
        assert len(rows) == len(ok)
        for row, r in zip(rows, ok):
            assert row[0] == str(r["batch"]) and row[1] == str(r["length"])
            assert row[4] == report.IMPL_LABELS[r["impl"]]
            speedup = row[report.COLUMNS.index("fused speedup")]
            if r["impl"] == "fused":
                assert speedup == "-"
            elif r["fused_speedup"] is not None:
                assert speedup == f"{r['fused_speedup']:.3g}x"
            assert r["others_cpus"] is None or r["others_cpus"] >= 0
            assert row[-1] == ("?" if r["others_cpus"] is None else f"{r['others_cpus']:.2f}")
    assert markdown.count("\n- [") == len(report.targets(results))


def _result(impl, median, mode="fwd+bwd", op="bpmll", batch=256, length=30000, **extra):
    elements = batch * length
    out = {"op": op, "batch": batch, "length": length, "pred_dtype": "float32", "label_dtype": "float32",
           "mode": mode, "impl": impl, "status": "ok", "median_s": median, "q1_s": median, "q3_s": median,
           "min_s": median, "max_s": median, "repeats": 5, "bytes": 12 * elements, "y_pred_bytes": 4 * elements,
           "peak_extra_bytes": 4 * elements, "memory_floor_bytes": 0, "grad_wrt": "y_pred"}
    out.update(extra)
    return out


def test_derive_compares_each_alternative_with_the_fused_op_of_its_case():
    results = [
        _result("fused", 0.010),
        _result("xla", 0.040),
        _result("graph", 0.020, pred_dtype="float16"),  # no fused op in its case
        _result("fused", 0.001, mode="fwd"),
    ]
    rows = report.derive(results, copy_gbps=20.0)
    fused, xla, other_dtype, fused_fwd = rows
    assert fused["fused_speedup"] is None
    assert xla["fused_speedup"] == pytest.approx(4.0)
    assert other_dtype["fused_speedup"] is None
    assert fused["gbps"] == pytest.approx(12 * 256 * 30000 / 0.010 / 1e9)
    assert fused["copy_fraction"] == pytest.approx(fused["gbps"] / 20.0)
    assert fused["peak_over_y_pred"] == pytest.approx(1.0)
    assert fused_fwd["ns_per_element"] == pytest.approx(0.001 / (256 * 30000) * 1e9)


def test_derive_hides_memory_below_the_allocators_floor():
    small = _result("fused", 0.001, batch=4, length=18, memory_floor_bytes=256 << 10, peak_extra_bytes=0)
    (row,) = report.derive([small], copy_gbps=20.0)
    assert row["peak_extra_bytes"] is None and row["peak_over_y_pred"] is None
    assert "n/a" in report._cells(row)


def test_targets_read_the_matching_cases():
    copy_gbps = 20.0
    # 12 bytes per element at 0.010 s: 9.2 GB/s, 46% of 20 GB/s.
    rows = report.derive(
        [
            _result("fused", 0.010),
            _result("xla", 0.031),
            _result("fused", 0.0010, batch=256, length=1000),
            _result("pairwise", 0.20, batch=256, length=1000),
            _result("fused", 0.004, batch=64, length=200000, peak_extra_bytes=2 * 4 * 64 * 200000),
        ],
        copy_gbps,
    )
    verdicts = {description.split(":")[0]: (met, measured) for description, met, measured in report.targets(rows)}
    met, measured = verdicts["BP-MLL fwd+bwd, B=256, L=30000, float32"]
    assert met is False and "3.1x" in measured and "46%" in measured
    assert verdicts["BP-MLL fwd+bwd, B=256, L=1000"][0] is False  # 200x < 300x
    assert verdicts["BP-MLL fwd, B=256, L=1000"] == (None, "not measured in this run")
    assert verdicts["Peak extra memory of a BP-MLL fwd+bwd step at B=64, L=200000"][0] is True


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--bpmll-sizes", "256", "batch x length"),
        ("--corr-dtypes", "float32:int8", "y_pred:y_true"),
        ("--ops", "bpmll,focal", "subset of"),
    ],
)
def test_bad_options_are_named(flag, value, message):
    with pytest.raises(SystemExit) as raised:
        run.parse_args([flag, value])
    assert flag in str(raised.value) and message in str(raised.value)


def _jax_python():
    """The interpreter for the JAX columns, or pytest.skip saying why none."""
    python = os.environ.get(JAX_PYTHON_ENV)
    if python:
        if not os.path.isfile(python):
            pytest.fail(f"{JAX_PYTHON_ENV}={python} does not exist")
        return python
    if importlib.util.find_spec("jax") is not None:
        return sys.executable
    pytest.skip(f"jax is not importable here; set {JAX_PYTHON_ENV} to a Python with jax (build/venv-jax/bin/python)")


def _core_library_env(env):
    """TFL_CORE_LIBRARY for the JAX worker where the source tree has no
    lib/libtfl_core.so: the CMake build's, if there is one. Returns whether
    the fused JAX column can expect a library."""
    if env.get("TFL_CORE_LIBRARY"):
        return os.path.isfile(env["TFL_CORE_LIBRARY"])
    if os.path.isfile(os.path.join(ROOT, "python", "tf_fused_losses", "lib", "libtfl_core.so")):
        return True
    built = os.path.join(ROOT, "build", "cmake", "lib", "libtfl_core.so")
    if os.path.isfile(built):
        env["TFL_CORE_LIBRARY"] = built
        return True
    return False


@pytest.mark.slow
def test_quick_run_with_jax_columns(tmp_path):
    """The JAX worker, under its own interpreter, beside the TF columns in one run."""
    jax_python = _jax_python()
    markdown_path = tmp_path / "table.md"
    json_path = tmp_path / "results.json"
    env = dict(os.environ)
    package_parent = os.path.dirname(os.path.dirname(tf_fused_losses.__file__))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    have_library = _core_library_env(env)
    command = [sys.executable, os.path.join(BENCH, "run.py"), "--quick", "--no-install", "--no-plot",
               "--bpmll-sizes", "4x18", "--corr-sizes", "2x40", "--bpmll-dtypes", "float32:float32",
               "--impls", "fused,xla,jax_fused,jax_pure", "--jax-python", jax_python,
               "--markdown", str(markdown_path), "--json", str(json_path)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    raw = json.loads(json_path.read_text())
    results = raw["results"]

    planned = [c for group in run.plan_groups(run.parse_args(command[2:])) for c in group]
    keys = ("op", "batch", "length", "pred_dtype", "label_dtype", "mode", "impl")
    assert [tuple(r[k] for k in keys) for r in results] == [tuple(c[k] for k in keys) for c in planned]
    assert len([line for line in done.stderr.splitlines() if line.startswith("[")]) == len(planned)

    jax_meta = raw["meta"]["jax"]
    assert not jax_meta.get("error"), jax_meta
    assert jax_meta["tensorflow_imported"] is False
    assert jax_meta["package"] == os.path.join(ROOT, "python", "tf_fused_losses")
    checks = jax_meta["self_check"]
    assert all(c["ok"] for c in checks["jax_pure"].values()), checks
    if have_library:
        assert "load_error" not in jax_meta, jax_meta["load_error"]
        assert all(c["ok"] for c in checks["jax_fused"].values()), checks

    for r in results:
        if r["impl"] == "jax_pure" or (r["impl"] == "jax_fused" and have_library):
            assert r["status"] == "ok", r
            assert r["min_s"] <= r["median_s"] <= r["max_s"] and r["repeats"] >= 3
            assert r["memory_method"] == "xla-buffer-assignment" and r["peak_extra_bytes"] > 0
            assert r["grad_wrt"] == (None if r["mode"] == "fwd" else
                                     "y_pred" if r["op"] == "bpmll" else "y_true, y_pred"), r
        elif r["impl"] == "jax_fused":
            assert r["status"] == "skipped" and "libtfl_core.so" in r["reason"], r

    # Both JAX columns, side by side with the TF ones, in the README-style table.
    markdown = markdown_path.read_text()
    summary = raw["summary"]
    assert summary["mode"] == "fwd+bwd"
    assert summary["labels"] == ["fused", "pure TF XLA", "JAX fused (ffi)", "JAX pure (jit)"]
    header, rows = _table_rows(markdown, "## Summary")
    assert header == ["case"] + summary["labels"]
    assert [row[0] for row in rows] == ["BP-MLL 4\u00d718", "Pearson 2\u00d740 (both grads)",
                                        "CCC 2\u00d740 (both grads)"]
    for row, expected in zip(rows, summary["rows"]):
        assert row[1:] == [expected["cells"][impl] for impl in summary["columns"]]
        if have_library:
            assert set(expected["median_ms"]) >= {"jax_fused", "jax_pure"}
    for op, section in SECTIONS.items():
        _, table = _table_rows(markdown, section)
        labels = {row[4] for row in table}
        assert report.IMPL_LABELS["jax_pure"] in labels
        assert (report.IMPL_LABELS["jax_fused"] in labels) == have_library


def test_summary_is_the_readme_table():
    results = [
        _result("fused", 0.00585),
        _result("xla", 0.0197),
        _result("jax_fused", 0.0061),
        _result("jax_pure", 0.0283),
        _result("pairwise", 0.0, status="skipped", reason="B*L*L*8 = 1.84e+03 GB exceeds --pairwise-limit-gb 4"),
        _result("fused", 0.001, mode="fwd"),
        _result("fused", 0.00774, op="correlation", batch=64, length=100000, grad_wrt="y_true, y_pred"),
        _result("jax_fused", 0.0, op="correlation", batch=64, length=100000, status="skipped", reason="no jax"),
    ]
    rows = report.derive(results, copy_gbps=20.0)
    table = report.summary(rows)
    assert table["mode"] == "fwd+bwd"
    assert table["columns"] == ["fused", "xla", "pairwise", "jax_fused", "jax_pure"]
    assert table["labels"] == ["fused", "pure TF XLA", "seed pairwise", "JAX fused (ffi)", "JAX pure (jit)"]
    bpmll, corr = table["rows"]
    assert bpmll["case"] == "BP-MLL 256\u00d730000"
    assert bpmll["cells"] == {"fused": "5.85", "xla": "19.7", "pairwise": "needs 1.8 TB", "jax_fused": "6.10",
                              "jax_pure": "28.3"}
    assert bpmll["median_ms"]["jax_pure"] == pytest.approx(28.3)
    assert corr["case"] == "Pearson 64\u00d7100000 (both grads)"
    assert corr["cells"] == {"fused": "7.74", "xla": "", "pairwise": "", "jax_fused": "skipped", "jax_pure": ""}
    noisy = report.derive([_result("jax_pure", 0.0283, others_cpus=report.NOISY_OTHERS_CPUS + 0.1)], 20.0)
    assert report.summary(noisy)["rows"][0]["cells"]["jax_pure"] == "28.3 \u2020"
    lines = report.summary_markdown(table)
    assert lines[0] == "| case | fused | pure TF XLA | seed pairwise | JAX fused (ffi) | JAX pure (jit) |"
    assert lines[2] == "| BP-MLL 256\u00d730000 | 5.85 | 19.7 | needs 1.8 TB | 6.10 | 28.3 |"


def test_extreme_label_section_times_ids_and_dense_labels(tmp_path):
    """bench/extreme_labels.py at a tiny shape: a row per form and pass, and
    the ids read a small fraction of the dense labels' bytes."""
    out = tmp_path / "extreme.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    command = [sys.executable, os.path.join(ROOT, "bench", "extreme_labels.py"), "--batch", "8", "--labels", "40000",
               "--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    rows = json.loads(out.read_text())["rows"]
    assert {(r["form"], r["pass"]) for r in rows} == {
        (form, mode) for form in ("ids (int32, padded)", "dense uint8", "dense float32") for mode in ("fwd", "fwd+bwd")
    }
    ids_bytes = next(r["label_bytes"] for r in rows if r["form"].startswith("ids"))
    float_bytes = next(r["label_bytes"] for r in rows if r["form"] == "dense float32")
    assert ids_bytes * 1000 <= float_bytes
