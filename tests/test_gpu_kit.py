"""tools/gpu_check.sh, the GPU check kit, where there is no GPU: end to end on
the CPU emulation with a few cases (the script, its JSON and Markdown
reports, its exit status, that it imports no TensorFlow), that a wrong
result fails it, and that its GPU build's own sources (the harness module
with device memory, a kernel part) compile with nvcc where nvcc exists.
Every kit case runs on the emulation in tests/test_cuda_emulation.py; the
kit's FFI check (the Host handlers through JAX) runs here where jax is.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tools", "gpu_check.sh")
if os.path.join(ROOT, "tools") not in sys.path:
    sys.path.insert(0, os.path.join(ROOT, "tools"))

# One case of each op, every launch shape among them, a 16-bit dtype, a
# label type, a mask, y_true's gradient skipped and misaligned arrays.
FEW = [
    "bpmll_loss/float32/uint8/warp_odd",
    "bpmll_loss/float32/float32/block_1025/",
    "bpmll_loss_grad/float16/pieces_forced",
    "pearson_loss_grad/float32/pieces_forced/mask/no_grad_y_true",
    "ccc_loss/float32/warp/offset/mask",
]
CASE_KEYS = {"op", "dtype", "label_dtype", "shape", "launch", "max_abs_err", "max_rel_err", "passed"}


def run_kit(out, *args):
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(out))
    return subprocess.run(["bash", SCRIPT, "--emulate", "--skip", "ffi", *args], capture_output=True, text=True,
                          env=env, timeout=900, cwd=ROOT)


def test_emulated_kit_writes_its_reports(tmp_path):
    proc = run_kit(tmp_path, "--cases", *FEW)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    with open(tmp_path / "gpu_check.json") as f:
        report = json.load(f)
    assert report["passed"] is True and report["mode"] == "emulate"
    assert report["tensorflow_imported"] is False
    assert set(report) >= {"machine", "commit", "cases", "sanitizer", "bench"}
    cases = report["cases"]
    assert {c["op"] for c in cases} == {"bpmll_loss", "bpmll_loss_grad", "pearson_loss_grad", "ccc_loss"}
    assert {c["launch"] for c in cases} == {"rows_per_warp", "row_per_block", "pieces"}
    for c in cases:
        assert CASE_KEYS <= set(c), c
        assert c["passed"] and c["backend"] == "emulated" and c["deterministic"]
    markdown = (tmp_path / "gpu_check.md").read_text()
    assert "PASSED" in markdown and "bpmll_loss/float32/uint8/warp_odd" in markdown
    assert "PASSED" in proc.stdout


def test_a_wrong_result_fails_the_kit(tmp_path):
    case = "bpmll_loss/float32/float32/block_1025/"
    proc = run_kit(tmp_path, "--cases", case, "--inject-error", case)
    assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr[-4000:]
    with open(tmp_path / "gpu_check.json") as f:
        report = json.load(f)
    (result,) = report["cases"]
    assert not result["passed"] and not report["passed"]
    assert any("row-scaled error" in p for p in result["problems"]), result["problems"]
    assert "FAILED" in (tmp_path / "gpu_check.md").read_text()


def test_ffi_cases_cover_every_shape_class_of_every_op():
    from gpu_kit import cases as kit_cases

    ffi = kit_cases.select(kit_cases.all_cases(), tag="ffi")
    for op in kit_cases.OPS:
        covered = {kit_cases.shape_class(c.shape) for c in ffi if c.op == op}
        assert covered == set(kit_cases.SHAPE_CLASSES), (op, set(kit_cases.SHAPE_CLASSES) - covered)


def test_ffi_handlers_through_jax(tmp_path):
    # The kit's FFI check alone (--skip cases): the Host handlers built from
    # cc/, registered with JAX and run through jax.jit on every FFI case,
    # with output buffers XLA allocates (an unwritten per-row output holds
    # whatever was there). CI runs it in the JAX env (tools/check_jax_env.sh).
    pytest.importorskip("jax", reason="the FFI check runs where jax is importable (CI: tools/check_jax_env.sh)")
    from gpu_kit import cases as kit_cases

    env = dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path))
    proc = subprocess.run(["bash", SCRIPT, "--emulate", "--skip", "cases"], capture_output=True, text=True, env=env,
                          timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    with open(tmp_path / "gpu_check.json") as f:
        report = json.load(f)
    summary = report["ffi"]["cpu"]
    assert summary["status"] == "ran" and summary["failed"] == 0 and not summary["tensorflow_imported"], summary
    wanted = {c.name for c in kit_cases.select(kit_cases.all_cases(), tag="ffi") if c.inputs != "bad_labels"}
    ran = {c["name"] for c in report["cases"] if c["backend"] == "xla_ffi_cpu"}
    assert wanted <= ran, sorted(wanted - ran)


@pytest.mark.slow
def test_gpu_build_sources_compile_with_nvcc():
    # The kit's GPU build is otherwise compiled on a GPU machine only: the
    # harness module with device memory (g++) and one nvcc part of the kernel
    # wrappers, for sm_90 (about a minute on 2 cores).
    from gpu_kit import backends

    nvcc = backends.find_nvcc()
    if not nvcc:
        pytest.skip("no nvcc: the kit's GPU build is compiled where nvcc is")
    pytest.importorskip("pybind11")
    build = backends.gpu_module_build(nvcc, "90")
    wanted = [job for job in build.compile_jobs
              if job.output.endswith(("emu_module.o", "part_kFloat_2.o"))]
    assert len(wanted) == 2
    for job in wanted:
        job.run()
        assert os.path.getsize(job.output) > 0
