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
    from tf_fused_losses import _loader, bpmll, correlation

    recorder = OpRecorder(_loader.ops())
    for module in (bpmll, correlation):
        monkeypatch.setattr(module, "ops", lambda: recorder)
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


def subprocess_env(extra=None):
    """The environment for a script: this package and the helpers importable,
    quiet TF logs, the pure-TF switch off (the scripts test the ops)."""
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env.pop("TF_FUSED_LOSSES_PY_OPS", None)
    paths = [os.path.dirname(HELPERS), package_root()] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra or {})
    return env


def start_script(name, *args, env=None):
    """Starts tests/helpers/<name> in a fresh interpreter, output to a pipe."""
    return subprocess.Popen(
        [sys.executable, os.path.join(HELPERS, name), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env if env is not None else subprocess_env(),
    )


def run_script(name, *args, env=None, timeout=300, check=True):
    """Runs tests/helpers/<name> in a fresh interpreter; returns the process.
    On failure the assertion shows the script's output."""
    proc = subprocess.run(
        [sys.executable, os.path.join(HELPERS, name), *map(str, args)],
        capture_output=True,
        text=True,
        env=env if env is not None else subprocess_env(),
        timeout=timeout,
    )
    if check:
        assert proc.returncode == 0, f"{name} exited with {proc.returncode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    return proc


def last_json_line(text):
    return json.loads(text.strip().splitlines()[-1])
