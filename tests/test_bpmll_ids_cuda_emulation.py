"""The GPU label-id BP-MLL kernel (cuda/bpmll_ids_kernels.cuh) under the
CUDA emulation (tests/cuda_emu/cuda_emulation.h, compiled by the host
compiler): against the dense GPU kernel on the equivalent uint8 matrix, bit
for bit, in every launch shape; rows with bad ids read NaN. The driver is
tests/bpmll_ids_emu/driver.cc; no GPU and no TensorFlow needed."""

import os
import subprocess

import pytest

from cuda_emu import build as emu_build

DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bpmll_ids_emu", "driver.cc")


def test_ids_kernel_gives_the_dense_kernel_bits_under_emulation(tmp_path):
    try:
        cxx = emu_build.compiler()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    program = str(tmp_path / "bpmll_ids_emu")
    includes = [f"-I{d}" for d in emu_build.include_dirs()]
    built = subprocess.run([cxx, *emu_build.COMMON_FLAGS, "-O1", *includes, DRIVER, "-o", program],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-6000:]
    ran = subprocess.run([program], capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stdout[-6000:] + ran.stderr[-3000:]
    assert ran.stdout.splitlines()[-1] == "0 failures", ran.stdout[-6000:]
