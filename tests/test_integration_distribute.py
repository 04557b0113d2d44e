"""tf.distribute: MirroredStrategy over two logical CPU devices against one
device, and MultiWorkerMirroredStrategy with two worker processes on
127.0.0.1. Each runs in fresh interpreters (tests/helpers/mirrored.py,
multi_worker.py): logical devices and collective ops must be configured
before TF initialises."""

import json
import socket

import numpy as np
import pytest

from helpers import LOSS_KINDS, last_json_line, make_model, run_script, start_script, subprocess_env, task_data
from helpers.training import GLOBAL_BATCH, STEPS, sgd_on_one_device


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
    out = tmp_path_factory.mktemp("mirrored") / "results.npz"
    proc = run_script("mirrored.py", out, timeout=600)
    return np.load(out), last_json_line(proc.stdout)


def pairs(results, kind, what):
    """(single, mirrored) arrays of every result named kind/what*."""
    keys = sorted(k for k in results.files if k.startswith(f"{kind}/{what}") and k.endswith("/single"))
    assert keys, f"no {kind}/{what} results"
    return [(results[k], results[k.replace("/single", "/mirrored")]) for k in keys]


@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_mirrored_replicas_run_on_both_devices(mirrored, kind):
    _, devices = mirrored
    assert [d.rsplit("/", 1)[-1] for d in devices[f"{kind}/mirrored"]] == ["device:CPU:0", "device:CPU:1"]


@pytest.mark.parametrize("kind", LOSS_KINDS)
@pytest.mark.parametrize("what", ["loop_loss", "loop_grad", "fit_weight"])
def test_mirrored_strategy_matches_one_device(mirrored, kind, what):
    """One custom-loop step (global-batch loss, all-reduced gradients) and
    two epochs of Keras fit give what one device gives."""
    results, _ = mirrored
    # Absolute error against the largest entry of all the kind's arrays: the
    # Pearson loss ignores the output bias, whose gradient is 0 up to rounding.
    scale = max(np.abs(single).max() for single, _ in pairs(results, kind, what))
    for single, replicated in pairs(results, kind, what):
        np.testing.assert_allclose(replicated, single, rtol=1e-5, atol=1e-6 * scale)
    if what == "fit_weight":
        initial = [results[f"{kind}/initial_weight{i}/single"] for i in range(len(pairs(results, kind, what)))]
        assert any(not np.allclose(w, w0) for (w, _), w0 in zip(pairs(results, kind, what), initial))


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("workers")
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    procs = []
    for index in range(2):
        config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        procs.append(start_script("multi_worker.py", folder / f"{index}.npz", env=subprocess_env({"TF_CONFIG": config})))
    try:
        outputs = [p.communicate(timeout=420)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for index, (p, output) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"worker {index} exited with {p.returncode}:\n{output[-6000:]}"
    return [np.load(folder / f"{index}.npz") for index in range(2)]


@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_multi_worker_training_keeps_workers_identical_and_matches_one_device(two_workers, kind):
    first, second = two_workers
    names = sorted(k for k in first.files if k.startswith(f"{kind}/final"))
    assert names
    for name in names:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)
    # Each worker saw half of every global batch; the all-reduced steps must
    # equal whole-batch steps on one device.
    x, y = task_data(kind, np.random.default_rng(11), GLOBAL_BATCH * STEPS)
    model = make_model(kind, x, y)
    model.set_weights([first[n.replace("final", "initial")] for n in names])
    expected = sgd_on_one_device(kind, model, x, y)
    moved = False
    for name, want in zip(names, expected):
        np.testing.assert_allclose(first[name], want, rtol=1e-5, atol=1e-7, err_msg=name)
        moved |= not np.allclose(first[name], first[name.replace("final", "initial")])
    assert moved
