"""The op library's GPU side: which kernels and architectures the built
library holds (runs everywhere), and the GPU kernels against the CPU kernels
on the same inputs and against float64 numpy references (the GPU and CPU
kernels compile the same math headers, so only the references can see an
error there). Those run where TensorFlow sees a GPU; skipped otherwise,
saying so: the CUDA kernels are then covered by test_cuda_emulation.py.
"""

import os
import re
import shutil
import struct
import subprocess

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import kernels

import tf_fused_losses as tfl
from cuda_emu import reference64
from cuda_emu.compare import assert_rows_close
from tf_fused_losses import _loader

OPS = ["FusedBpmllLoss", "FusedBpmllLossGrad", "FusedCorrelationLoss", "FusedCorrelationLossGrad"]
FLOATS = [tf.float16, tf.bfloat16, tf.float32, tf.float64]
LABELS = FLOATS + [tf.int32, tf.int64, tf.uint8, tf.bool]

GPUS = tf.config.list_physical_devices("GPU")
NO_GPU = (
    "no GPU visible to TensorFlow (tensorflow-cpu, or no device): the GPU kernels were not run here; "
    "tests/test_cuda_emulation.py runs the same CUDA code under a CPU emulation"
)
needs_gpu = pytest.mark.skipif(not GPUS, reason=NO_GPU)


def built_with_cuda():
    return bool(tfl.build_info().get("cuda"))


def library_paths():
    """The core (the XLA FFI handlers' kernels) and this TensorFlow's frontend (the OpKernels')."""
    minor = ".".join(tf.__version__.split(".")[:2])
    return [_loader.core_library_path(), _loader.tf_library_path(minor)]


# --------------------------------------------------------------------------
# What the library holds (no GPU needed)
# --------------------------------------------------------------------------


@pytest.mark.parametrize("op", OPS)
def test_gpu_kernels_are_registered_exactly_when_built_with_cuda(op):
    _loader.ops()
    devices = {k.device_type for k in kernels.get_registered_kernels_for_op(op).kernel}
    assert "CPU" in devices
    if built_with_cuda():
        assert "GPU" in devices, f"build_info() says CUDA {tfl.build_info()['cuda']}, but {op} has no GPU kernel"
    else:
        assert "GPU" not in devices, f"{op} has GPU kernels, but build_info() records no CUDA"


def nvcc_path():
    """The CUDA compiler a default build would find: CUDACXX, nvcc on PATH,
    or /usr/local/cuda/bin/nvcc (where the Makefile looks)."""
    candidates = [os.environ.get("CUDACXX"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"]
    return next((c for c in candidates if c and os.path.isfile(c) and os.access(c, os.X_OK)), None)


def test_cuda_build_happened_where_nvcc_exists():
    # The Makefile builds with CUDA where nvcc exists (TFL_CUDA=on; CMake then
    # fails without a CUDA compiler). This catches a library built some other
    # way, or a build that dropped CUDA silently. Only an explicit TFL_CUDA=off
    # makes a CPU-only library acceptable on a machine with nvcc.
    switch = os.environ.get("TFL_CUDA", "").strip().lower()
    if switch == "off":
        pytest.skip("TFL_CUDA=off: a CPU-only library was asked for")
    nvcc = nvcc_path()
    if nvcc is None and switch != "on":
        pytest.skip("no nvcc (CUDACXX, PATH, /usr/local/cuda/bin) and TFL_CUDA is not 'on': "
                    "a CPU-only library is acceptable")
    why = f"nvcc exists ({nvcc})" if nvcc else "TFL_CUDA=on"
    assert built_with_cuda(), (
        f"{why}, but the op libraries at {library_paths()} were built without CUDA (build_info: {tfl.build_info()}). "
        "Rebuild it with CUDA (make; or TFL_CUDA=on), or set TFL_CUDA=off to test a CPU-only build on purpose."
    )


def fatbin_entries(path):
    """(kind, arch) of every image in the library's CUDA fat binaries:
    kind "sm" for SASS (an ELF cubin), "compute" for PTX. Parses the fatbin
    container's headers, so no CUDA tool is needed."""
    with open(path, "rb") as f:
        data = f.read()
    entries = []
    pos = data.find(struct.pack("<I", 0xBA55ED50))
    while pos >= 0:
        _, version, header_size, fat_size = struct.unpack_from("<IHHQ", data, pos)
        if version != 1 or header_size != 16:
            pos = data.find(struct.pack("<I", 0xBA55ED50), pos + 4)
            continue
        entry, end = pos + header_size, pos + header_size + fat_size
        while entry < end:
            kind, _, entry_header_size, payload_size = struct.unpack_from("<HHIQ", data, entry)
            (arch,) = struct.unpack_from("<I", data, entry + 28)
            entries.append(({1: "compute", 2: "sm"}.get(kind, f"kind{kind}"), arch))
            entry += entry_header_size + payload_size
        pos = data.find(struct.pack("<I", 0xBA55ED50), end)
    return entries


@pytest.mark.parametrize("which", [0, 1], ids=["core", "tf_frontend"])
def test_library_embeds_code_for_the_recorded_architectures(which):
    entries = fatbin_entries(library_paths()[which])
    if not built_with_cuda():
        assert entries == [], "a CPU-only library should hold no CUDA code"
        return
    recorded = set(tfl.build_info()["cuda_archs"])
    embedded = {f"{kind}_{arch}" for kind, arch in entries}
    assert entries, "build_info() records CUDA, but the library holds no CUDA fat binary"
    # "sm_90a" is stored as arch 90; "all", "all-major" and "native" name no
    # architecture: the named ones must be there, and with no such word
    # nothing else may be.
    named = {r for r in recorded if re.fullmatch(r"(sm|compute)_\d+[a-z]?", r)}
    named_images = {re.sub(r"[a-z]$", "", r) for r in named}
    assert named_images <= embedded, (sorted(named_images - embedded), sorted(embedded))
    if named == recorded:
        assert embedded == named_images, (sorted(embedded), sorted(recorded))
    else:
        assert any(kind == "sm" for kind, _ in entries), f"{sorted(recorded)}: no SASS image in {sorted(embedded)}"
    # Every kernel source is compiled for every architecture.
    counts = {image: sum(1 for kind, arch in entries if f"{kind}_{arch}" == image) for image in embedded}
    assert len(set(counts.values())) == 1, counts


@pytest.mark.skipif(shutil.which("cuobjdump") is None, reason="cuobjdump is not on PATH")
def test_cuobjdump_lists_the_sass_architectures():
    if not built_with_cuda():
        pytest.skip("a CPU-only library")
    for path in library_paths():
        listing = subprocess.run(["cuobjdump", "--list-elf", path], capture_output=True, text=True, check=True)
        for arch in tfl.build_info()["cuda_archs"]:
            if arch.startswith("sm_"):
                assert f".{arch}." in listing.stdout, listing.stdout


# --------------------------------------------------------------------------
# GPU against CPU
# --------------------------------------------------------------------------

# Reduction orders and exp() differ between the kernels; 16-bit outputs
# differ by at most a rounding.
TOLERANCE = {tf.float16: 2e-3, tf.bfloat16: 1.6e-2, tf.float32: 1e-4, tf.float64: 1e-10}


def on(device, fn, *args, **kwargs):
    with tf.device(device):
        out = fn(*args, **kwargs)
    flat = tf.nest.flatten(out)
    for t in flat:
        assert t.device.endswith(device.lstrip("/")), f"{t.device} is not {device}"
    return tf.nest.map_structure(lambda t: tf.cast(t, tf.float64).numpy(), out)


def assert_close(actual, expected, dtype, name):
    assert_rows_close(actual, expected, TOLERANCE[dtype], name)


def seen(t):
    """The values an op really gets, in float64 (16-bit inputs are rounded)."""
    return tf.cast(t, tf.float64).numpy()


def assert_bpmll_matches_reference(y, c, loss, grad, dtype):
    """bpmll_with_grad's loss and gradient (row i weighted by i + 1) against float64."""
    ref_loss, ref_grad = reference64.bpmll(seen(y), seen(c))
    weights = np.arange(1, len(ref_loss) + 1, dtype=np.float64)[:, None]
    assert_close(loss, ref_loss, dtype, "loss vs float64 reference")
    assert_close(grad, ref_grad * weights, dtype, "grad vs float64 reference")


def bpmll_with_grad(y, c):
    with tf.GradientTape() as tape:
        tape.watch(c)
        loss = tfl.bpmll_loss(y, c)
        total = tf.reduce_sum(loss * tf.cast(tf.range(1, tf.shape(loss)[0] + 1), loss.dtype))
    return loss, tape.gradient(total, c)


# (batch, labels): many short rows (a warp each), rows longer than a warp and
# not a multiple of 32, long rows (a block each), few huge rows (pieces).
BPMLL_SHAPES = [(4096, 18), (33, 45), (64, 3000), (4, 2_000_000), (1, 100_003)]


@needs_gpu
@pytest.mark.parametrize("shape", BPMLL_SHAPES)
@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
@pytest.mark.parametrize("soft", [False, True])
def test_bpmll_gpu_matches_cpu(rng, shape, dtype, soft):
    y = rng.random(shape) if soft else (rng.random(shape) < 0.1).astype(np.float64)
    y = tf.constant(y, dtype)
    c = tf.constant(rng.normal(scale=2, size=shape), dtype)
    gpu_loss, gpu_grad = on("/GPU:0", bpmll_with_grad, y, c)
    cpu_loss, cpu_grad = on("/CPU:0", bpmll_with_grad, y, c)
    assert_close(gpu_loss, cpu_loss, dtype, "loss")
    assert_close(gpu_grad, cpu_grad, dtype, "grad")
    assert_bpmll_matches_reference(y, c, gpu_loss, gpu_grad, dtype)


@needs_gpu
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("label_dtype", LABELS)
def test_bpmll_gpu_every_type_pair(rng, dtype, label_dtype):
    shape = (40, 1500)
    y = tf.cast(rng.random(shape) < 0.3, label_dtype)
    c = tf.cast(rng.normal(size=shape), dtype)
    gpu_loss, gpu_grad = on("/GPU:0", bpmll_with_grad, y, c)
    cpu_loss, cpu_grad = on("/CPU:0", bpmll_with_grad, y, c)
    assert_close(gpu_loss, cpu_loss, dtype, "loss")
    assert_close(gpu_grad, cpu_grad, dtype, "grad")
    assert_bpmll_matches_reference(y, c, gpu_loss, gpu_grad, dtype)


@needs_gpu
def test_bpmll_gpu_is_deterministic_and_marks_bad_labels_with_nan(rng):
    y = (rng.random((8, 70_000)) < 0.2).astype(np.float32)
    c = rng.normal(size=(8, 70_000)).astype(np.float32)
    first = on("/GPU:0", bpmll_with_grad, tf.constant(y), tf.constant(c))
    second = on("/GPU:0", bpmll_with_grad, tf.constant(y), tf.constant(c))
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    y[3, 12_345] = 3.0  # the CPU kernel raises InvalidArgument; the GPU cannot without a host sync
    loss, grad = on("/GPU:0", bpmll_with_grad, tf.constant(y), tf.constant(c))
    assert np.isnan(loss[3]) and np.isnan(grad[3]).all()
    np.testing.assert_array_equal(np.delete(loss, 3), np.delete(first[0], 3))


def correlation_with_grads(fn, y, x, mask, upstream):
    with tf.GradientTape() as tape:
        tape.watch([y, x])
        loss = fn(y, x, mask=mask)
        total = tf.reduce_sum(loss * upstream)
    grad_y, grad_x = tape.gradient(total, [y, x])
    return loss, grad_y, grad_x


@needs_gpu
@pytest.mark.parametrize("shape", [(4096, 18), (33, 45), (64, 3000), (2, 1_000_003)])
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("fn", [tfl.correlation_loss, tfl.ccc_loss], ids=["pearson", "ccc"])
@pytest.mark.parametrize("masked", [False, True])
def test_correlation_gpu_matches_cpu(rng, shape, dtype, fn, masked):
    y_np = rng.normal(size=shape)
    x_np = 0.6 * y_np + rng.normal(size=shape)
    x_np[0] = 0.5  # a constant row
    y, x = tf.constant(y_np, dtype), tf.constant(x_np, dtype)
    mask = tf.constant(rng.random(shape) < 0.8) if masked else None
    upstream = tf.constant(rng.normal(size=shape), dtype)
    gpu = on("/GPU:0", correlation_with_grads, fn, y, x, mask, upstream)
    cpu = on("/CPU:0", correlation_with_grads, fn, y, x, mask, upstream)
    assert_close(gpu[0] - 1, cpu[0] - 1, dtype, "1 - loss")
    assert_close(gpu[1], cpu[1], dtype, "grad y_true")
    assert_close(gpu[2], cpu[2], dtype, "grad y_pred")
    concordance = fn is tfl.ccc_loss
    ref_loss, _, ref_gradients = reference64.correlation(seen(y), seen(x), None if mask is None else mask.numpy(),
                                                         concordance)
    ref_grad_y, ref_grad_x = ref_gradients(seen(upstream))
    assert_close(gpu[0] - 1, ref_loss - 1, dtype, "1 - loss vs float64 reference")
    assert_close(gpu[1], ref_grad_y, dtype, "grad y_true vs float64 reference")
    assert_close(gpu[2], ref_grad_x, dtype, "grad y_pred vs float64 reference")
