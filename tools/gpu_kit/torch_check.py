"""The PyTorch ops (python/tf_fused_losses/_torch_ops.py: torch.library ops over
the core's C entry points, cc/core/c_api/tfl_c_api.h) on CUDA tensors, through
the kit's FFI cases and their judging (gpu_kit.cases), so that the first lent
GPU proves them too.

Needs torch with CUDA and a libtfl_core.so built with CUDA: $TFL_CORE_LIBRARY,
else the package's lib/ (a CMake build with TFL_CUDA=on). Where either is
missing the phase says so and is skipped. Runs in its own process (python -m
gpu_kit.torch_check ...): torch claims the GPU there, and a crash cannot take
the kit down.
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np

from . import ROOT, log


class TorchBackend:
    """The harness module's four calls on top of torch.ops.tfl on a CUDA device."""

    checks_launch = False  # the entry points plan their own launches (real SM counts)
    backend = "torch_cuda"

    def __init__(self, torch, device):
        from tf_fused_losses import _torch_ops  # noqa: F401 - registers torch.ops.tfl

        self.torch = torch
        self.device = device

    def _in(self, a, dtype):
        torch = self.torch
        a = np.ascontiguousarray(a)
        if dtype == "bfloat16":  # stored as uint16 bits
            return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16).to(self.device)
        return torch.from_numpy(a).to(self.device)

    def _out(self, t, dtype, into):
        t = t.detach().to("cpu").contiguous()
        if dtype == "bfloat16":
            t = t.view(self.torch.int16)
        np.copyto(into, t.numpy().view(into.dtype).reshape(into.shape))

    def bpmll(self, y_true, label_dtype, y_pred, dtype, loss, grad, **_):
        out = self.torch.ops.tfl.bpmll_loss(self._in(y_true, label_dtype), self._in(y_pred, dtype))
        self._out(out[0], dtype, loss)
        self._out(out[1], dtype, grad)
        return {"shape": "torch"}

    def scale_rows(self, scale, x, out, dtype, **_):
        result = self.torch.ops.tfl.bpmll_loss_grad(self._in(scale, dtype), self._in(x, dtype))
        self._out(result, dtype, out)
        return {"shape": "torch"}

    def _mask(self, mask):
        return None if mask is None else self._in(mask, "bool")

    def correlation_forward(self, y_true, y_pred, mask, dtype, epsilon, concordance, loss, row_stats, **_):
        out = self.torch.ops.tfl.correlation_loss(self._in(y_true, dtype), self._in(y_pred, dtype), self._mask(mask),
                                                  float(np.float32(epsilon)), bool(concordance))
        self._out(out[0], dtype, loss)
        self._out(out[1], "float64", row_stats)
        return {"shape": "torch"}

    def correlation_backward(self, grad_loss, y_true, y_pred, mask, row_stats, dtype, epsilon, concordance,
                             grad_y_true, grad_y_pred, **_):
        want = grad_y_true is not None
        out = self.torch.ops.tfl.correlation_loss_grad(
            self._in(grad_loss, dtype), self._in(y_true, dtype), self._in(y_pred, dtype), self._mask(mask),
            self._in(row_stats, "float64"), float(np.float32(epsilon)), bool(concordance), want)
        self._out(out[1], dtype, grad_y_pred)
        if want:
            self._out(out[0], dtype, grad_y_true)
        return {"shape": "torch"}


def child(argv):
    """python -m gpu_kit.torch_check --json OUT [--cases PATTERN ...]: the
    cases, or {"skipped": why}, into OUT."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", required=True)
    parser.add_argument("--cases", nargs="+")
    args = parser.parse_args(argv)
    sys.path.insert(0, os.path.join(ROOT, "python"))

    def done(payload):
        with open(args.json, "w") as f:
            json.dump(payload, f)
        print(json.dumps(payload.get("summary", payload)))
        return 0

    try:
        import torch
    except ImportError as e:
        return done({"skipped": f"torch is not importable: {e}"})
    if not torch.cuda.is_available():
        return done({"skipped": f"torch {torch.__version__} sees no CUDA device"})
    try:
        from tf_fused_losses import _core_c_api, _torch_ops
    except (ImportError, RuntimeError) as e:
        return done({"skipped": f"tf_fused_losses._torch_ops does not import: {e}"})
    try:
        platforms = _torch_ops.load()
    except RuntimeError as e:
        return done({"skipped": str(e)})
    if "cuda" not in platforms:
        return done({"skipped": f"{_core_c_api.library_path()} has no CUDA entry points (build it with TFL_CUDA=on, "
                                f"or point {_core_c_api.LIBRARY_ENV} at such a build)"})
    from . import cases as kit_cases

    backend = TorchBackend(torch, torch.device("cuda", torch.cuda.current_device()))
    selected = kit_cases.select(kit_cases.all_cases(), args.cases, tag="ffi")
    results = [kit_cases.run_case(backend, case) for case in selected]
    summary = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
               "library": _core_c_api.library_path(), "cases": len(results),
               "failed": sum(not r["passed"] for r in results), "tensorflow_imported": "tensorflow" in sys.modules}
    return done({"summary": summary, "cases": results})


def phase(a, emulate, out_dir, seconds_left, phases):
    """The torch CUDA phase of `python -m gpu_kit run`: records its status in
    phases["torch_cuda"] and returns its case results (none where skipped)."""
    if emulate or a.build_only:
        phases["torch_cuda"] = {"status": "skipped: GPU only" if emulate else "skipped: --build-only"}
        return []
    path = os.path.join(out_dir, "torch_cuda.json")
    command = [sys.executable, "-m", "gpu_kit.torch_check", "--json", path] + (["--cases", *a.cases] if a.cases else [])
    timeout = max(30.0, min(240.0, seconds_left - 60))
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=os.path.join(ROOT, "tools"))
    except subprocess.TimeoutExpired:
        phases["torch_cuda"] = {"status": f"timed out after {timeout:.0f} s"}
        return []
    if proc.returncode != 0 or not os.path.exists(path):
        tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-4:])[-800:]
        phases["torch_cuda"] = {"status": "failed to run", "detail": tail}
        return []
    with open(path) as f:
        data = json.load(f)
    os.remove(path)
    if "skipped" in data:
        phases["torch_cuda"] = {"status": "skipped: " + data["skipped"]}
        return []
    phases["torch_cuda"] = dict(data["summary"], status="ran")
    log(f"torch.library ops on CUDA: {data['summary']}")
    return data["cases"]


if __name__ == "__main__":
    sys.exit(child(sys.argv[1:]))
