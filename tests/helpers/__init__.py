"""Shared pieces of the integration tests: small learnable tasks, models,
an op-call recorder, and a runner for the subprocess scripts in this folder
(TF settings such as logical devices or a missing op library need a fresh
interpreter)."""

import json
import os
import subprocess
import sys
import threading

import numpy as np

HELPERS = os.path.dirname(os.path.abspath(__file__))
LOSS_KINDS = ("bpmll", "correlation", "ccc")
PURE_TF_ENV = "TF_FUSED_LOSSES_PY_OPS"  # tf_fused_losses.PURE_TF_ENV, without importing TF here
CPU_ISAS = ("baseline", "avx2", "avx512")  # TFL_CPU_ISA's values, lowest first


def multilabel_data(rng, samples, features=8, labels=12):
    """Labels are thresholded linear functions of the features: learnable."""
    x = rng.normal(size=(samples, features)).astype(np.float32)
    scores = x @ rng.normal(size=(features, labels)) + rng.normal(scale=0.5, size=(samples, labels))
    y = (scores > np.quantile(scores, 0.7, axis=1, keepdims=True)).astype(np.float32)
    return x, y


def sequence_data(rng, samples, steps=16, features=4):
    """(samples, steps, features) inputs and (samples, steps, 1) targets that
    a per-step Dense layer can predict up to noise."""
    x = rng.normal(size=(samples, steps, features)).astype(np.float32)
    y = x @ rng.normal(size=(features, 1)) + rng.normal(scale=0.3, size=(samples, steps, 1))
    return x, y.astype(np.float32)


def task_data(kind, rng, samples):
    return multilabel_data(rng, samples) if kind == "bpmll" else sequence_data(rng, samples)


def make_loss(kind, **kwargs):
    import tf_fused_losses as tfl

    return {"bpmll": tfl.BPMLLLoss, "correlation": tfl.CorrelationLoss, "ccc": tfl.CCCLoss}[kind](**kwargs)


def loss_function(kind):
    """The per-sample or per-step functional form of a loss kind."""
    import tf_fused_losses as tfl

    return {"bpmll": tfl.bpmll_loss, "correlation": tfl.correlation_loss, "ccc": tfl.ccc_loss}[kind]


def make_model(kind, x, y, hidden=16, seed=0):
    """A small model for the task, with deterministic initial weights."""
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input(x.shape[1:]),
            keras.layers.Dense(hidden, activation="tanh"),
            keras.layers.Dense(y.shape[-1]),
        ]
    )


class OpRecorder:
    """Stands in for the loaded op library and records which ops were called
    with which y_pred dtype (install it with `record_ops`)."""

    def __init__(self, library):
        self._library = library
        self.calls = []

    def __getattr__(self, name):
        op = getattr(self._library, name)

        def recorded(**kwargs):
            dtype = kwargs["y_pred"].dtype if "y_pred" in kwargs else kwargs[next(iter(kwargs))].dtype
            self.calls.append((name, dtype.name))
            return op(**kwargs)

        return recorded

    def forward_dtypes(self):
        return {dtype for name, dtype in self.calls if not name.endswith("_grad")}


def record_ops(monkeypatch):
    """Routes every op call of the wrappers and gradients through a recorder."""
    from tf_fused_losses import _tf_ops

    recorder = OpRecorder(_tf_ops.ops())
    monkeypatch.setattr(_tf_ops, "ops", lambda: recorder)
    return recorder


def run_in_threads(work, count):
    """Runs work(index) on `count` threads released together; returns the
    exceptions raised, as text (a thread's exception would otherwise be lost)."""
    barrier = threading.Barrier(count)
    failures = []

    def run(index):
        try:
            barrier.wait()
            work(index)
        except Exception as e:  # collected for the caller to assert on
            failures.append(f"thread {index}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return failures


def package_root():
    """The folder holding the tf_fused_losses package that the tests import."""
    import tf_fused_losses

    return os.path.dirname(os.path.dirname(os.path.abspath(tf_fused_losses.__file__)))


def subprocess_env(extra=None, pure_tf=None):
    """The environment for a script: this package and the helpers importable,
    quiet TF logs, then `extra`.

    pure_tf says what the script runs on: None inherits this process's
    TF_FUSED_LOSSES_PY_OPS (a suite run with it set runs its scripts on the
    pure-TF path too), False removes it (a script that tests the op library
    itself), True sets it."""
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    if pure_tf is True:
        env[PURE_TF_ENV] = "1"
    elif pure_tf is False:
        env.pop(PURE_TF_ENV, None)
    elif pure_tf is not None:
        raise ValueError(f"pure_tf must be None, True or False, got {pure_tf!r}")
    paths = [os.path.dirname(HELPERS), package_root()] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra or {})
    return env


def start_script(name, *args, env=None, pure_tf=None):
    """Starts tests/helpers/<name> in a fresh interpreter, output to a pipe;
    env defaults to subprocess_env(pure_tf=pure_tf)."""
    return subprocess.Popen(
        [sys.executable, os.path.join(HELPERS, name), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env if env is not None else subprocess_env(pure_tf=pure_tf),
    )


def run_script(name, *args, env=None, timeout=300, check=True, pure_tf=None):
    """Runs tests/helpers/<name> in a fresh interpreter; returns the process.
    env defaults to subprocess_env(pure_tf=pure_tf). On failure the
    assertion shows the script's output."""
    proc = subprocess.run(
        [sys.executable, os.path.join(HELPERS, name), *map(str, args)],
        capture_output=True,
        text=True,
        env=env if env is not None else subprocess_env(pure_tf=pure_tf),
        timeout=timeout,
    )
    if check:
        assert proc.returncode == 0, f"{name} exited with {proc.returncode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    return proc


def last_json_line(text):
    return json.loads(text.strip().splitlines()[-1])


# x86-64 micro-architecture levels, as /proc/cpuinfo names their features:
# the builds are compiled with -march=x86-64-v3 (avx2) and -v4 (avx512).
_X86_64_V3 = {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}
_X86_64_V4 = _X86_64_V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}


def library_cpu_isas():
    """The levels the op library holds a build of (build_info()["cpu_isas"],
    "isa_baseline;isa_avx2;..."), lowest first."""
    import tf_fused_losses

    built = {name.strip().replace("isa_", "") for name in tf_fused_losses.build_info().get("cpu_isas", "").split(";")}
    return [isa for isa in CPU_ISAS if isa in built]


def runnable_cpu_isas():
    """The TFL_CPU_ISA caps that select a build of their own here: built into
    the library and supported by this CPU (all built ones where the CPU's
    level cannot be read)."""
    best = cpu_isa_level()
    return [isa for isa in library_cpu_isas() if best is None or CPU_ISAS.index(isa) <= CPU_ISAS.index(best)]


def cpu_isa_level():
    """The highest TFL_CPU_ISA level this CPU supports, read from
    /proc/cpuinfo (not from the library): "avx512", "avx2" or "baseline";
    None where that cannot be told (not Linux on x86-64)."""
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        return None
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags"))
    except (OSError, StopIteration):
        return None
    if _X86_64_V4 <= flags:
        return "avx512"
    return "avx2" if _X86_64_V3 <= flags else "baseline"


def xla_lowerings_built():
    """Whether the TF frontend for the installed TensorFlow has the tf2xla
    lowerings (TF 2.16 ships no XLA FFI headers: there jit_compile takes the
    pure path)."""
    import tf_fused_losses as tfl

    return bool(tfl.build_info().get("xla", True))
