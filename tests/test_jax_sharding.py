"""The JAX custom calls partitioned along the batch (issue 22, part 1):
under jax.jit with batch-sharded NamedSharding inputs on 8 CPU devices,
every fused loss (BP-MLL dense and label ids, Pearson, CCC), forward and
backward, runs on each device's own rows: in the compiled HLO each custom
call's operands are (B/8, ...) and there is no collective; the results are
the one-device bits. Keras' DataParallel trains with BPMLLLoss and CCCLoss
and ends with the one-device weights. Two JAX processes train with
BPMLLLoss over 4 + 4 CPU devices and end with identical weights, equal to
one process on 8 devices.

The device count is fixed when jax first initialises its backends
(XLA_FLAGS=--xla_force_host_platform_device_count=8), so every check runs in
a fresh interpreter: this file run as a script (`python
tests/test_jax_sharding.py calls|keras|process ...`) prints its findings as
JSON, and the tests read them.
"""

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys

import pytest

DEVICES = 8
XLA_FLAGS = f"--xla_force_host_platform_device_count={DEVICES}"
COLLECTIVE = re.compile(
    # The result shape may be a tuple: (f32[], f32[32,16]{1,0}) all-reduce(...).
    r"= (\([^=]*?\)|\S+) (all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter|collective-broadcast)"
    r"(?:-start)?\("
)
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "f64": 8}


# --------------------------------------------------------------------------
# HLO reading (used by the workers and by bench-like measurements)
# --------------------------------------------------------------------------


def _shapes(text):
    """[(dtype, [dims])] of the array shapes in an HLO shape text."""
    return [(d, [int(x) for x in dims.split(",") if x]) for d, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", text)]


def _bytes(text):
    total = 0
    for dtype, dims in _shapes(text):
        n = DTYPE_BYTES.get(dtype, 4)
        for d in dims:
            n *= d
        total += n
    return total


def custom_calls(hlo):
    """The tfl custom calls of a compiled HLO text: target, operand shapes (its
    operand_layout_constraints) and result shapes."""
    calls = []
    for line in hlo.splitlines():
        target = re.search(r'custom_call_target="(tfl_[a-z_]+)"', line)
        if not target:
            continue
        # Up to "}}": each shape ends with its layout's braces.
        operands = re.search(r"operand_layout_constraints=\{(.*?\})\}", line).group(1)
        result = re.search(r"= (.*?) custom-call\(", line).group(1)
        calls.append({"target": target.group(1), "operands": [s for _, s in _shapes(operands)],
                      "results": [s for _, s in _shapes(result)]})
    return calls


def collectives(hlo):
    """[(op, result shape, bytes)] of the collectives of a compiled HLO text."""
    return [(op, shape, _bytes(shape)) for shape, op in COLLECTIVE.findall(hlo)]


# --------------------------------------------------------------------------
# Workers: run in a fresh interpreter with 8 CPU devices
# --------------------------------------------------------------------------


def _call_cases(np, jnp, tfl, ids_loss, batch, labels):
    """name -> (function of the arrays giving (per-row loss, gradients), arrays)."""
    import jax

    rng = np.random.default_rng(22)
    logits = rng.normal(size=(batch, labels)).astype(np.float32)
    y = (rng.random((batch, labels)) < 0.1).astype(np.float32)
    ids = np.full((batch, 6), -1, np.int32)
    ids[:, :3] = rng.integers(0, labels, (batch, 3))
    target = (0.5 * logits + rng.normal(size=logits.shape)).astype(np.float32)
    mask = rng.random((batch, labels)) < 0.8

    def with_grad(loss, argnums=1):
        # The gradient of the sum: a cotangent of ones, no cross-row reduction.
        def f(*args):
            return loss(*args), jax.grad(lambda *a: jnp.sum(loss(*a)), argnums)(*args)

        return f

    return {
        "bpmll": (with_grad(tfl.bpmll_loss), (y, logits)),
        "bpmll_bool_bf16": (with_grad(tfl.bpmll_loss), (y > 0, logits.astype(jnp.bfloat16))),
        "bpmll_ids": (with_grad(ids_loss), (ids, logits)),
        "pearson": (with_grad(tfl.correlation_loss), (target, logits)),
        "pearson_mask_both_grads": (
            with_grad(lambda t, p, m: tfl.correlation_loss(t, p, mask=m), (0, 1)), (target, logits, mask)),
        "ccc": (with_grad(tfl.ccc_loss), (target, logits)),
        "ccc_steps_1": (with_grad(tfl.ccc_loss), (target[..., None], logits[..., None])),
    }


def _bits_equal(np, a, b):
    import jax

    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(leaves_a) == len(leaves_b) and all(
        np.asarray(x).dtype == np.asarray(y).dtype
        and np.array_equal(np.asarray(x).view(np.uint8), np.asarray(y).view(np.uint8))
        for x, y in zip(leaves_a, leaves_b)
    )


def worker_calls(batch, labels):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    import tf_fused_losses as tfl
    from tf_fused_losses import _ids_jax

    devices = jax.devices()
    assert len(devices) == DEVICES, devices
    mesh = Mesh(np.array(devices), ("x",))
    one = devices[0]
    report = {"shardy": bool(jax.config.jax_use_shardy_partitioner)}
    for name, (f, arrays) in _call_cases(np, jnp, tfl, _ids_jax.bpmll_loss_from_padded_ids, batch, labels).items():
        sharded = [jax.device_put(a, NamedSharding(mesh, P("x"))) for a in arrays]
        fun = jax.jit(f)
        hlo = fun.lower(*sharded).compile().as_text()
        got = fun(*sharded)
        want = jax.jit(f)(*[jax.device_put(a, one) for a in arrays])
        # Each device's results against one device running that device's rows.
        rows = batch // DEVICES
        per_device = all(
            _bits_equal(np, [x[i * rows:(i + 1) * rows] for x in jax.tree.leaves(got)],
                        jax.jit(f)(*[jax.device_put(a[i * rows:(i + 1) * rows], one) for a in arrays]))
            for i in range(DEVICES)
        )
        report[name] = {
            "calls": custom_calls(hlo),
            "collectives": collectives(hlo),
            "bits_equal_one_device": _bits_equal(np, got, want),
            "bits_equal_per_device": per_device,
            "max_abs_diff": max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
                                for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want))),
            "result_shard_shapes": sorted({tuple(s.data.shape) for x in jax.tree.leaves(got)
                                           for s in x.addressable_shards}),
        }
    return report


def worker_layouts():
    """Dim 1 sharded (gathered), a 2 x 4 mesh, an uneven batch inside jit, and
    an uneven batch as an argument."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    import tf_fused_losses as tfl

    devices = jax.devices()
    rng = np.random.default_rng(7)
    report = {}

    def f(t, p):
        return tfl.bpmll_loss(t, p), jax.grad(lambda q: jnp.sum(tfl.bpmll_loss(t, q)))(p)

    def g(t, p):
        return tfl.ccc_loss(t, p), jax.grad(lambda q: jnp.sum(tfl.ccc_loss(t, q)))(p)

    def run(name, fun, arrays, in_sharding, constrain=None):
        def body(*a):
            if constrain is not None:
                a = [jax.lax.with_sharding_constraint(x, constrain) for x in a]
            return fun(*a)

        placed = [jax.device_put(a, in_sharding) for a in arrays]
        hlo = jax.jit(body).lower(*placed).compile().as_text()
        got = jax.jit(body)(*placed)
        want = jax.jit(fun)(*[jax.device_put(a, devices[0]) for a in arrays])
        report[name] = {"calls": custom_calls(hlo), "collectives": collectives(hlo),
                        "bits_equal_one_device": _bits_equal(np, got, want)}

    logits = rng.normal(size=(64, 96)).astype(np.float32)
    y = (rng.random(logits.shape) < 0.1).astype(np.float32)
    mesh = Mesh(np.array(devices), ("x",))
    run("labels_sharded_bpmll", f, (y, logits), NamedSharding(mesh, P(None, "x")))
    run("labels_sharded_ccc", g, (0.3 * logits, logits), NamedSharding(mesh, P(None, "x")))
    mesh2 = Mesh(np.array(devices).reshape(2, 4), ("data", "model"))
    run("mesh_2x4_rows_and_labels", f, (y, logits), NamedSharding(mesh2, P("data", "model")))
    run("mesh_2x4_rows_over_both", f, (y, logits), NamedSharding(mesh2, P(("data", "model"))))
    odd = rng.normal(size=(10, 96)).astype(np.float32)
    odd_y = (rng.random(odd.shape) < 0.2).astype(np.float32)
    replicated = NamedSharding(mesh, P())
    run("uneven_inside_jit_bpmll", f, (odd_y, odd), replicated, constrain=NamedSharding(mesh, P("x")))
    run("uneven_inside_jit_ccc", g, (0.3 * odd, odd), replicated, constrain=NamedSharding(mesh, P("x")))
    try:
        jax.jit(f)(*[jax.device_put(a, NamedSharding(mesh, P("x"))) for a in (odd_y, odd)])
        report["uneven_argument"] = "ran"
    except Exception as e:  # noqa: BLE001 - the message is the finding
        report["uneven_argument"] = f"{type(e).__name__}: {e}"
    return report


def _keras_data(np, batch, labels, steps):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(batch, 16)).astype(np.float32)
    y = (rng.random((batch, labels)) < 0.1).astype(np.float32)
    y[:, 0] = 1.0  # every row has a positive
    seq = (x[:, :1] * np.linspace(-1, 1, steps)[None, :] + 0.1 * rng.normal(size=(batch, steps))).astype(np.float32)
    return x, y, seq


def _keras_models(keras, labels, steps):
    from tf_fused_losses import BPMLLLoss, CCCLoss

    keras.utils.set_random_seed(3)
    inputs = keras.Input((16,))
    hidden = keras.layers.Dense(32, activation="tanh")(inputs)
    bpmll = keras.Model(inputs, keras.layers.Dense(labels)(hidden))
    bpmll.compile(optimizer=keras.optimizers.SGD(0.05), loss=BPMLLLoss())
    keras.utils.set_random_seed(4)
    inputs = keras.Input((16,))
    hidden = keras.layers.Dense(32, activation="tanh")(inputs)
    ccc = keras.Model(inputs, keras.layers.Dense(steps)(hidden))
    ccc.compile(optimizer=keras.optimizers.SGD(0.05), loss=CCCLoss())
    return bpmll, ccc


def worker_keras(data_parallel, epochs=3, batch=64, labels=40, steps=24):
    import jax
    import keras
    import numpy as np

    if data_parallel:
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
    x, y, seq = _keras_data(np, batch, labels, steps)
    bpmll, ccc = _keras_models(keras, labels, steps)
    # batch_size 32 over 8 devices: 4 rows each.
    history = {
        "bpmll": bpmll.fit(x, y, batch_size=32, epochs=epochs, shuffle=False, verbose=0).history["loss"],
        "ccc": ccc.fit(x, seq, batch_size=32, epochs=epochs, shuffle=False, verbose=0).history["loss"],
    }
    return {
        "history": history,
        "weights": {"bpmll": [np.asarray(w).tolist() for w in bpmll.get_weights()],
                    "ccc": [np.asarray(w).tolist() for w in ccc.get_weights()]},
        "devices": len(jax.devices()),
    }


def worker_process(process_id, port, epochs=3, batch=64, labels=40, steps=24):
    """One of two JAX processes (4 CPU devices each) on 127.0.0.1, training the
    BP-MLL model over the 8 global devices with DataParallel."""
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id,
                               initialization_timeout=120)
    import keras
    import numpy as np

    # auto_shard_dataset=False: each process is given its own rows below
    # (Keras shards only tf.data datasets by itself).
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(devices=jax.devices(), auto_shard_dataset=False))
    x, y, seq = _keras_data(np, batch, labels, steps)
    bpmll, _ = _keras_models(keras, labels, steps)
    # Each process feeds its half of every global batch of 32 (Keras'
    # DataParallel shards the per-process batch over the local devices).
    half = batch // 2
    mine = np.concatenate([np.arange(s + process_id * 16, s + process_id * 16 + 16) for s in range(0, batch, 32)])
    assert len(mine) == half
    loss = bpmll.fit(x[mine], y[mine], batch_size=16, epochs=epochs, shuffle=False, verbose=0).history["loss"]
    out = {"history": loss, "weights": [np.asarray(w).tolist() for w in bpmll.get_weights()],
           "global_devices": jax.device_count(), "local_devices": jax.local_device_count()}
    jax.distributed.shutdown()
    return out


# --------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------


def _skip_reason():
    if importlib.util.find_spec("jax") is None:
        return "the JAX path needs jax (pip install jax)"
    return None


if __name__ != "__main__":
    reason = _skip_reason()
    if reason:
        pytest.skip(reason, allow_module_level=True)
    from tf_fused_losses import _jax_ops as jo  # noqa: E402  (imports jax; the checks run in subprocesses)

    if not os.path.isfile(jo.library_path()):
        pytest.skip(f"libtfl_core.so is not at {jo.library_path()} (build it, or set {jo.LIBRARY_ENV})",
                    allow_module_level=True)


def _worker(*args, env=None, timeout=600):
    env = dict(os.environ if env is None else env)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + XLA_FLAGS).strip()
    env.setdefault("KERAS_BACKEND", "jax")
    proc = subprocess.run([sys.executable, __file__, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


BATCH, LABELS = 64, 100


@pytest.fixture(scope="module", params=["shardy", "gspmd"])
def calls(request):
    """Under Shardy (JAX's default partitioner: the calls' sdy.sharding_rule)
    and under GSPMD (jax_use_shardy_partitioner off: XLA's batch-partitionable
    custom-call partitioner alone)."""
    env = dict(os.environ, JAX_USE_SHARDY_PARTITIONER="true" if request.param == "shardy" else "false")
    report = _worker("calls", BATCH, LABELS, env=env)
    assert report["shardy"] == (request.param == "shardy"), "the worker ran under the other partitioner"
    return report


# Under GSPMD, XLA's batch partitioner takes one sharding common to the
# operands' dim 0 (hlo_sharding_util::FindCommonSharding): for the
# correlation backward without a mask, whose operands include the replicated
# (0,) "no mask" placeholder and a broadcast cotangent, that is replication,
# so that one call runs whole on each device (its inputs all-gathered), with
# the same bits. Shardy, JAX's default, partitions it (the sharding rule).
GSPMD_REPLICATED = {("pearson", "tfl_correlation_loss_grad"), ("ccc", "tfl_correlation_loss_grad"),
                    ("ccc_steps_1", "tfl_correlation_loss_grad")}


EXPECTED_TARGETS = {
    "bpmll": ["tfl_bpmll_loss", "tfl_bpmll_loss_grad"],
    "bpmll_bool_bf16": ["tfl_bpmll_loss", "tfl_bpmll_loss_grad"],
    "bpmll_ids": ["tfl_bpmll_ids_loss", "tfl_bpmll_loss_grad"],
    "pearson": ["tfl_correlation_loss", "tfl_correlation_loss_grad"],
    "pearson_mask_both_grads": ["tfl_correlation_loss", "tfl_correlation_loss_grad"],
    "ccc": ["tfl_correlation_loss", "tfl_correlation_loss_grad"],
    "ccc_steps_1": ["tfl_correlation_loss", "tfl_correlation_loss_grad"],
}


@pytest.mark.parametrize("name", sorted(EXPECTED_TARGETS))
def test_every_custom_call_runs_on_its_devices_rows(calls, name):
    """Forward and backward custom calls see (B/8, ...) operands, with no
    collective anywhere in the step (no all-gather of y_pred or y_true, and
    the results stay sharded); the bits are the one-device run's."""
    r = calls[name]
    assert sorted(c["target"] for c in r["calls"]) == EXPECTED_TARGETS[name], r["calls"]
    rows = BATCH // DEVICES
    replicated = set() if calls["shardy"] else {t for n, t in GSPMD_REPLICATED if n == name}
    for call in r["calls"]:
        for shape in call["operands"] + call["results"]:
            # (0,): the "no mask" / "gradient not computed" placeholders.
            assert shape == [0] or shape[0] == (BATCH if call["target"] in replicated else rows), (name, call)
    y_pred_operands = [s for c in r["calls"] for s in c["operands"] if s[1:2] == [LABELS]]
    assert y_pred_operands, r["calls"]
    if replicated:
        assert {op for op, _, _ in r["collectives"]} == {"all-gather"}, r["collectives"]
    else:
        assert r["collectives"] == [], r["collectives"]
    assert r["result_shard_shapes"] and all(s[0] == rows for s in r["result_shard_shapes"]), r
    assert r["bits_equal_per_device"], r
    assert r["bits_equal_one_device"], r


def test_a_device_with_fewer_rows_may_take_the_other_bpmll_path():
    """BP-MLL reduces a batch of at least 16 rows per row and a smaller one of
    more than 8192 labels in pieces (docs/architecture.md); the two differ in
    their last bits. 64 x 10000 on 8 devices is 8 rows each: each device gives
    the bits of one device running its own 8 rows, and the one-device run of
    all 64 within rounding."""
    r = _worker("calls", 64, 10000)["bpmll"]
    assert r["collectives"] == [] and all(c["operands"][-1] == [8, 10000] for c in r["calls"]), r
    assert r["bits_equal_per_device"], r
    assert r["max_abs_diff"] < 1e-5, r


@pytest.fixture(scope="module")
def layouts():
    return _worker("layouts")


def test_a_sharded_label_dimension_is_gathered(layouts):
    """The handlers need whole rows: y_pred sharded along dim 1 is gathered
    (into (B, L) on every device when dim 0 is not sharded), and the results
    stay right."""
    for name in ("labels_sharded_bpmll", "labels_sharded_ccc"):
        r = layouts[name]
        assert r["bits_equal_one_device"], r
        assert any(op == "all-gather" for op, _, _ in r["collectives"]), r
    r = layouts["mesh_2x4_rows_and_labels"]
    assert r["bits_equal_one_device"], r
    assert all(c["operands"][-1] == [32, 96] for c in r["calls"]), r  # rows over "data", labels gathered
    r = layouts["mesh_2x4_rows_over_both"]
    assert r["bits_equal_one_device"] and r["collectives"] == [], r
    assert all(c["operands"][-1] == [8, 96] for c in r["calls"]), r


def test_an_uneven_batch(layouts):
    """Inside jit, a batch of 10 over 8 devices runs on padded shards of 2
    rows (the padding rows are computed and dropped) and gives the one-device
    bits; as an argument, JAX itself refuses the sharding, naming it."""
    for name in ("uneven_inside_jit_bpmll", "uneven_inside_jit_ccc"):
        r = layouts[name]
        assert r["bits_equal_one_device"], r
        assert all(s == [0] or s[0] == 2 for c in r["calls"] for s in c["operands"]), r
    assert "evenly divide" in layouts["uneven_argument"] or "divisible" in layouts["uneven_argument"], layouts


def _close(a, b, rtol=1e-5, atol=1e-6):
    import numpy as np

    return all(np.allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol) for x, y in zip(a, b))


@pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="needs keras")
def test_keras_data_parallel_matches_one_device():
    """keras.distribution.DataParallel over 8 CPU devices trains with BPMLLLoss
    and CCCLoss (the custom calls on 4 rows per device) and ends with the
    weights of the same training on one device, within float32 rounding (the
    gradient's all-reduce sums in another order)."""
    sharded = _worker("keras", 1)
    single = _worker("keras", 0)
    assert sharded["devices"] == DEVICES
    for model in ("bpmll", "ccc"):
        assert _close(sharded["history"][model], single["history"][model]), (sharded["history"], single["history"])
        assert _close(sharded["weights"][model], single["weights"][model]), model
        assert sharded["history"][model][-1] < sharded["history"][model][0]  # it trained


@pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="needs keras")
def test_keras_data_parallel_runs_the_losses_per_shard(tmp_path):
    """The Keras train step's compiled HLO (XLA's dump): the BP-MLL and CCC
    custom calls take 4 of the 32 rows, and the only collective is the
    all-reduce of the loss and the weights' gradients."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_dump_to={tmp_path} --xla_dump_hlo_as_text "
                                     f"--xla_dump_hlo_module_re=.*train_step.*")
    _worker("keras", 1, 1, env=env)
    found = {}
    for path in tmp_path.glob("*after_optimizations.txt"):
        hlo = path.read_text()
        for call in custom_calls(hlo):
            found.setdefault(call["target"], set()).update(tuple(s) for s in call["operands"] if s != [0])
        # One all-reduce of the loss and the weights' gradients; no gather.
        assert [op for op, _, _ in collectives(hlo)] == ["all-reduce"], (path.name, collectives(hlo))
    assert found.get("tfl_bpmll_loss") == {(4, 40)}, found
    assert found.get("tfl_correlation_loss") == {(4, 24)}, found
    assert {(4, 40), (4,)} <= found.get("tfl_bpmll_loss_grad", set()), found


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="needs keras")
def test_two_processes_train_bpmll_like_one():
    """Two JAX processes on 127.0.0.1 (jax.distributed, gloo CPU collectives,
    4 CPU devices each) train the BP-MLL model with DataParallel over the 8
    global devices: both end with identical weights, equal to one process on
    8 devices within float32 rounding. Bounded: each process has 240 s."""
    port = _free_port()
    env = dict(os.environ, KERAS_BACKEND="jax",
               XLA_FLAGS="--xla_force_host_platform_device_count=4")
    procs = [subprocess.Popen([sys.executable, __file__, "process", str(i), str(port)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for i in range(2)]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=240)
            assert p.returncode == 0, err[-6000:]
            outs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert [o["global_devices"] for o in outs] == [8, 8] and [o["local_devices"] for o in outs] == [4, 4]
    assert outs[0]["weights"] == outs[1]["weights"]  # identical, not close
    one = _worker("keras", 1)
    assert _close(outs[0]["weights"], one["weights"]["bpmll"]), (outs[0]["history"], one["history"]["bpmll"])


def main(argv):
    mode = argv[0]
    if mode == "calls":
        report = worker_calls(int(argv[1]), int(argv[2]))
    elif mode == "layouts":
        report = worker_layouts()
    elif mode == "keras":
        report = worker_keras(bool(int(argv[1])), *(int(a) for a in argv[2:]))
    elif mode == "process":
        report = worker_process(int(argv[1]), int(argv[2]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1:])
