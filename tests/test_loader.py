"""The lazy loader: version checks, a missing library, the pure-TF switch,
build info, and the TFL_CPU_ISA cap on the CPU build in use."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import tf_fused_losses as tfl
from helpers import CPU_ISAS, cpu_isa_level, last_json_line, library_cpu_isas, runnable_cpu_isas, subprocess_env
from tf_fused_losses import _loader


@pytest.fixture
def unloaded(monkeypatch):
    """The loader as if nothing were loaded yet; restored afterwards."""
    monkeypatch.setattr(_loader, "_library", None)


def test_unsupported_tensorflow_names_versions_and_ways_out(unloaded, monkeypatch):
    monkeypatch.setattr(_loader, "_builds", lambda: {"2.98": {"version": "2.98.0", "xla": True}, "2.99": {"version": "2.99.1", "xla": True}})
    with pytest.raises(RuntimeError) as err:
        _loader.ops()
    message = str(err.value)
    assert f"TensorFlow {tf.__version__} is installed" in message
    assert "TensorFlow 2.98, 2.99 only" in message
    assert f"support {_loader.SUPPORTED_TF[0]}-{_loader.SUPPORTED_TF[-1]}" in message
    assert "--no-build-isolation" in message
    assert _loader.PURE_TF_ENV in message


def test_build_info_lists_every_frontend_and_the_one_for_this_tensorflow():
    info = tfl.build_info()
    minor = ".".join(tf.__version__.split(".")[:2])
    assert minor in info["tensorflow_builds"]
    assert info["tensorflow_library"] == _loader.tf_library_path(minor)
    assert os.path.exists(info["tensorflow_library"]) and os.path.exists(_loader.core_library_path())
    assert info["xla"] == info["tensorflow_builds"][minor]["xla"]
    assert info["xla_ffi_api"].count(".") == 1


_FIRST_CALL_UNDER_XLA = """
import json, sys
import numpy as np
import tensorflow as tf
import tf_fused_losses as tfl
from tf_fused_losses import _loader

kind = sys.argv[1]
y = np.array([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0]], np.float32)
c = np.array([[0.5, -1.0, 2.0, 0.25], [3.0, 1.0, -2.0, 0.5]], np.float32)
loss = {"bpmll": tfl.bpmll_loss, "correlation": tfl.correlation_loss, "ccc": tfl.ccc_loss, "keras_fit": None}[kind]
assert _loader._library is None, "the library must not be loaded before the first call"
if loss is None:
    import keras
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, kernel_initializer="ones")])
    model.compile(optimizer="sgd", loss=tfl.BPMLLLoss(), jit_compile=True)
    first = model.fit(c, y, batch_size=2, epochs=1, verbose=0, shuffle=False).history["loss"][0]
    print(json.dumps({"finite": bool(np.isfinite(first))}))
else:
    jitted = tf.function(loss, jit_compile=True)(tf.constant(y), tf.constant(c)).numpy()
    eager = loss(tf.constant(y), tf.constant(c)).numpy()
    rel = np.abs(jitted - eager) / np.maximum(np.abs(eager), 1.0)
    print(json.dumps({"max_rel_diff": float(np.max(rel)), "finite": bool(np.isfinite(jitted).all())}))
"""


@pytest.mark.parametrize("kind", ["bpmll", "correlation", "ccc", "keras_fit"])
def test_the_first_call_of_a_process_may_be_inside_jit_compile(kind):
    """In a fresh interpreter, a loss's first call is traced for XLA, before
    the library is loaded. Where this TF minor's frontend has no lowerings
    (2.16-2.20), the pure path must run there (it once chose only after a
    load, and the fused op entered XLA's cluster: "No registered
    'FusedBpmllLoss' OpKernel for XLA_CPU_JIT devices"); elsewhere the late
    registration of the lowerings must serve the first compile."""
    env = subprocess_env(pure_tf=False)
    done = subprocess.run([sys.executable, "-c", _FIRST_CALL_UNDER_XLA, kind], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-6000:]
    report = last_json_line(done.stdout)
    assert report["finite"], report
    if "max_rel_diff" in report:
        # Inside XLA the pure form runs where there are no lowerings: the
        # same loss to float32 rounding, not the same bits.
        assert report["max_rel_diff"] <= 1e-6, report


def test_use_pure_tf_is_decided_from_the_build_before_any_load(unloaded, monkeypatch):
    """Inside XLA, a frontend without lowerings sends the losses to the pure
    path whether or not the library is loaded yet."""
    minor = ".".join(tf.__version__.split(".")[:2])
    monkeypatch.delenv(_loader.PURE_TF_ENV, raising=False)
    for has_lowerings in (False, True):
        monkeypatch.setattr(_loader, "_builds", lambda: {minor: {"version": tf.__version__, "xla": has_lowerings}})
        seen = {}

        @tf.function(jit_compile=True)
        def probe(x):
            seen["pure"] = _loader.use_pure_tf()
            return x + 1

        probe(tf.constant(1.0))
        assert seen["pure"] is (not has_lowerings)
        assert _loader.use_pure_tf() is False  # eagerly, the fused op runs either way
    assert _loader._library is None


def test_missing_library_says_what_is_missing(unloaded, monkeypatch, tmp_path):
    monkeypatch.setattr(_loader, "_HERE", str(tmp_path))
    with pytest.raises(RuntimeError, match=r"op library is missing .*libtf_fused_losses\.so.*TensorFlow " + tf.__version__):
        _loader.ops()


def test_build_info_describes_this_build():
    info = tfl.build_info()
    assert info["tensorflow"].split(".")[:2] == tf.__version__.split(".")[:2]
    assert "cuda" in info and "cuda_archs" in info and "cpu_isas" in info


def test_import_does_not_load_the_library():
    code = "import tf_fused_losses, tf_fused_losses._loader as l; print(l._library is None)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ), check=True)
    assert out.stdout.strip().splitlines()[-1] == "True"


@pytest.mark.parametrize("value, expected", [("1", True), ("true", True), ("0", False), ("", False)])
def test_pure_tf_switch(monkeypatch, value, expected):
    monkeypatch.setenv(_loader.PURE_TF_ENV, value)
    assert tfl.use_pure_tf() is expected


def test_pure_tf_path_works_without_the_library(unloaded, monkeypatch, tmp_path):
    monkeypatch.setattr(_loader, "_HERE", str(tmp_path))
    monkeypatch.setenv(_loader.PURE_TF_ENV, "1")
    loss = tfl.bpmll_loss([[1.0, 0.0]], [[0.0, 0.0]])
    assert float(loss[0]) == pytest.approx(1.0)


# --------------------------------------------------------------------------
# TFL_CPU_ISA: which x86-64 build of the chunk loops runs
# --------------------------------------------------------------------------

_ISA_SCRIPT = """
import json
import tf_fused_losses as tfl
try:
    tfl.bpmll_loss([[1.0, 0.0]], [[0.0, 0.0]])
except RuntimeError as e:
    print(json.dumps({"error": str(e)}))
else:
    print(json.dumps({"error": None, "cpu_isa": tfl.build_info().get("cpu_isa")}))
"""


def first_call_with_cap(cap):
    """In a fresh process (the choice is made once, at load): the error of the
    first loss call, or the build_info()["cpu_isa"] it left."""
    extra = {} if cap is None else {"TFL_CPU_ISA": cap}
    env = subprocess_env(extra, pure_tf=False)
    if cap is None:
        env.pop("TFL_CPU_ISA", None)
    done = subprocess.run([sys.executable, "-c", _ISA_SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return last_json_line(done.stdout)


def test_an_unknown_isa_cap_is_refused_naming_the_variable_and_the_choices():
    report = first_call_with_cap("avx9000")
    assert report["error"] is not None, f"TFL_CPU_ISA=avx9000 was accepted: {report}"
    message = report["error"]
    assert "TFL_CPU_ISA" in message and "avx9000" in message, message
    assert all(isa in message for isa in CPU_ISAS), f"the message should name {', '.join(CPU_ISAS)}: {message}"


@pytest.mark.skipif(cpu_isa_level() is None,
                    reason="not x86-64 Linux: the CPU's level cannot be read from /proc/cpuinfo")
def test_without_a_cap_the_best_level_of_this_cpu_runs():
    best = cpu_isa_level()
    report = first_call_with_cap(None)
    assert report["error"] is None, report
    expected = runnable_cpu_isas()[-1]
    assert report["cpu_isa"] == expected, f"/proc/cpuinfo says {best}; the library holds {library_cpu_isas()}: {report}"


@pytest.mark.parametrize("cap", CPU_ISAS)
def test_a_cap_the_cpu_supports_selects_that_build(cap):
    best = cpu_isa_level()
    if best is None and cap != "baseline":
        pytest.skip("not x86-64 Linux: cannot tell whether this CPU runs " + cap)
    if best is not None and CPU_ISAS.index(cap) > CPU_ISAS.index(best):
        pytest.skip(f"this CPU's best level is {best}: the refusal of {cap} is tested instead")
    if cap not in library_cpu_isas():
        pytest.skip(f"the library holds no {cap} build (build_info: {library_cpu_isas()})")
    report = first_call_with_cap(cap)
    assert report["error"] is None, report
    assert report["cpu_isa"] == cap, f"TFL_CPU_ISA={cap}, but build_info() reports {report['cpu_isa']!r}"


def test_a_cap_above_what_the_cpu_supports_is_refused():
    best = cpu_isa_level()
    if best is None:
        pytest.skip("not x86-64 Linux: the CPU's level cannot be read from /proc/cpuinfo")
    above = CPU_ISAS[CPU_ISAS.index(best) + 1 :]
    if not above:
        pytest.skip(f"this CPU supports every level up to {best}: no cap above it to refuse")
    for cap in above:
        report = first_call_with_cap(cap)
        assert report["error"] is not None, f"TFL_CPU_ISA={cap} on a CPU whose best level is {best}: {report}"
        assert "TFL_CPU_ISA" in report["error"] and cap in report["error"], report["error"]
