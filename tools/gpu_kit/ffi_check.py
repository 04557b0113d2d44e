"""The XLA FFI handlers (cc/xla/ffi_handlers.h) through JAX, without TensorFlow.

Registers the handlers of a TF-free library (libtfl_ffi_host.so or
libtfl_ffi_cuda.so; gpu_kit.backends builds them) with
jax.ffi.register_ffi_target(..., platform="cpu" or "CUDA") and runs the
kit's FFI cases through jax.jit(jax.ffi.ffi_call(...)): the path XLA takes
when TensorFlow compiles these ops. An adapter gives JAX the harness
module's interface, so the cases and their judging are those of
gpu_kit.cases. The handlers plan their own launches (real SM counts), so
launch shapes are not checked here.

Runs in its own process (python -m gpu_kit child-ffi ...): JAX claims the
GPU there, and a crash cannot take the kit down.
"""

import ctypes
import json
import os
import sys

import numpy as np

TARGETS = {
    "tfl_bpmll_loss": "TflBpmllLoss",
    "tfl_bpmll_loss_grad": "TflBpmllLossGrad",
    "tfl_correlation_loss": "TflCorrelationLoss",
    "tfl_correlation_loss_grad": "TflCorrelationLossGrad",
}


class FfiBackend:
    """The harness module's four calls on top of jax.ffi.ffi_call."""

    checks_launch = False

    def __init__(self, jax, platform, device):
        self.jax, self.jnp = jax, jax.numpy
        self.backend = f"xla_ffi_{platform.lower()}"
        self.device = device
        self._jitted = {}

    def _in(self, a, dtype):
        a = np.ascontiguousarray(a)
        if dtype == "bfloat16":
            a = a.view(self.jnp.bfloat16)
        return self.jax.device_put(a, self.device)

    def _jdtype(self, dtype):
        return self.jnp.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)

    @staticmethod
    def _out(x, dtype, into):
        a = np.asarray(x)
        if dtype == "bfloat16":
            a = a.view(np.uint16)
        np.copyto(into, a.reshape(into.shape))

    def _call(self, key, target, results, args, **attrs):
        fn = self._jitted.get(key)
        if fn is None:
            jax = self.jax
            fn = jax.jit(lambda *xs: jax.ffi.ffi_call(target, results)(*xs, **attrs))
            self._jitted[key] = fn
        return fn(*args)

    def bpmll(self, y_true, label_dtype, y_pred, dtype, loss, grad, **_):
        sd = self.jax.ShapeDtypeStruct
        jd = self._jdtype(dtype)
        out = self._call(("bpmll", y_pred.shape, dtype, label_dtype), "tfl_bpmll_loss",
                         (sd(loss.shape, jd), sd(grad.shape, jd)),
                         (self._in(y_true, label_dtype), self._in(y_pred, dtype)))
        self._out(out[0], dtype, loss)
        self._out(out[1], dtype, grad)
        return {"shape": "xla_ffi"}

    def scale_rows(self, scale, x, out, dtype, **_):
        sd = self.jax.ShapeDtypeStruct
        result = self._call(("scale", x.shape, dtype), "tfl_bpmll_loss_grad", sd(x.shape, self._jdtype(dtype)),
                            (self._in(scale, dtype), self._in(x, dtype)))
        self._out(result, dtype, out)
        return {"shape": "xla_ffi"}

    @staticmethod
    def _mask(mask):
        return np.zeros((0,), bool) if mask is None else np.ascontiguousarray(mask)

    def correlation_forward(self, y_true, y_pred, mask, dtype, epsilon, concordance, loss, row_stats, **_):
        sd = self.jax.ShapeDtypeStruct
        m = self._mask(mask)
        out = self._call(("forward", y_pred.shape, dtype, m.shape, bool(concordance), float(epsilon)),
                         "tfl_correlation_loss",
                         (sd(loss.shape, self._jdtype(dtype)), sd(row_stats.shape, np.float64)),
                         (self._in(y_true, dtype), self._in(y_pred, dtype), self.jax.device_put(m, self.device)),
                         concordance=bool(concordance), epsilon=np.float32(epsilon))
        self._out(out[0], dtype, loss)
        self._out(out[1], "float64", row_stats)
        return {"shape": "xla_ffi"}

    def correlation_backward(self, grad_loss, y_true, y_pred, mask, row_stats, dtype, epsilon, concordance,
                             grad_y_true, grad_y_pred, **_):
        sd = self.jax.ShapeDtypeStruct
        m = self._mask(mask)
        want = grad_y_true is not None
        jd = self._jdtype(dtype)
        out = self._call(("backward", y_pred.shape, dtype, m.shape, bool(concordance), float(epsilon), want),
                         "tfl_correlation_loss_grad", (sd(y_pred.shape, jd), sd(y_pred.shape, jd)),
                         (self._in(grad_loss, dtype), self._in(y_true, dtype), self._in(y_pred, dtype),
                          self.jax.device_put(m, self.device),
                          self.jax.device_put(np.ascontiguousarray(row_stats), self.device)),
                         concordance=bool(concordance), epsilon=np.float32(epsilon), compute_grad_y_true=want)
        self._out(out[1], dtype, grad_y_pred)
        if want:
            self._out(out[0], dtype, grad_y_true)
        return {"shape": "xla_ffi"}


def bad_labels_raise(backend):
    """The Host handler's convention for labels outside [0, 1]: an error naming
    the first bad element (the CPU op's; the CUDA handler gives NaN rows)."""
    y = np.zeros((3, 6), np.float32)
    y[:, 0] = 1
    y[1, 4] = 2.0
    c = np.zeros((3, 6), np.float32)
    result = {"name": "bpmll_loss/float32/float32/bad_labels_raise", "op": "bpmll_loss", "dtype": "float32",
              "label_dtype": "float32", "shape": [3, 6], "launch": None, "expected_launch": None,
              "inputs": "bad label: the Host handler must raise InvalidArgument naming y_true[1, 4]",
              "backend": backend.backend, "max_abs_err": 0.0, "max_rel_err": 0.0, "tolerance": 0.0,
              "deterministic": None, "problems": [], "seconds": 0.0}
    try:
        backend.bpmll(y, "float32", c, "float32", np.zeros(3, np.float32), np.zeros((3, 6), np.float32))
        result["problems"].append("no error raised")
    except Exception as e:  # noqa: BLE001 - XlaRuntimeError
        if "y_true[1, 4] = 2" not in str(e):
            result["problems"].append(f"unexpected error: {str(e)[:500]}")
    result["passed"] = not result["problems"]
    return result


def main(args):
    """python -m gpu_kit child-ffi --platform cpu|CUDA --lib PATH --json OUT [--cases PATTERN ...]"""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax

    jax.config.update("jax_enable_x64", True)
    from . import cases as kit_cases

    platform = args.platform
    suffix = "Host" if platform == "cpu" else "Cuda"
    lib = ctypes.cdll.LoadLibrary(args.lib)
    for target, symbol in TARGETS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol + suffix)), platform=platform)
    device = jax.devices("cpu" if platform == "cpu" else "gpu")[0]
    backend = FfiBackend(jax, platform, device)
    selected = kit_cases.select(kit_cases.all_cases(), args.cases, tag="ffi")
    results = []
    for case in selected:
        if platform == "cpu" and case.inputs == "bad_labels":
            continue
        results.append(kit_cases.run_case(backend, case))
    if platform == "cpu":
        results.append(bad_labels_raise(backend))
    summary = {"platform": platform, "device": str(device), "jax": jax.__version__, "library": args.lib,
               "cases": len(results), "failed": sum(not r["passed"] for r in results),
               "tensorflow_imported": "tensorflow" in sys.modules}
    with open(args.json, "w") as f:
        json.dump({"summary": summary, "cases": results}, f)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit("run through python -m gpu_kit child-ffi")
