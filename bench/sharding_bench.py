"""BP-MLL sharded over 8 CPU devices against the same call unsharded on the
same mesh (issue 22, part 4): step times and, first, the collectives of the
compiled step read from its HLO (per-device result shapes and bytes).

  PYTHONPATH=python build/venv-jax/bin/python bench/sharding_bench.py
  ... bench/sharding_bench.py --head-batch 64 --steps 2 --json out.json

Cases (one step = jax.value_and_grad of the batch-mean loss, jitted):
  bpmll 256 x 30000   tfl.bpmll_loss on y_pred/y_true sharded along the rows
                      (P("x"): each device runs 32 rows) | the same arrays
                      replicated over the mesh (P(): every device runs all
                      256) | one device
  head 670,091 labels the label-sharded head (kernel (d, labels) split over
   (Amazon-670K)      the labels: 1 x 8, and batch 2 x labels 4) | the
                      unsharded head (head.bpmll_head_loss) under jit with
                      the same label-sharded kernel on the same mesh |
                      one device. Padded label ids, d = 256; the kernel is
                      made 670,096 columns wide (a multiple of 8) and the
                      sharded head is told label_count=670,091.

The head's HLO collectives are read at --hlo-batch rows (default 1024,
compiled only). Its steps are timed at --head-batch rows (default 128; at
1024 one step is 1.4 TFLOP, minutes on 2 cores): at 670,091 labels the
label-sharded head against one device (the unsharded head on the mesh
gathers the whole kernel on every device, about 2 GB of XLA temporaries
each: compiled only there), and at --mesh-labels (default 131,072) the
label-sharded head against the unsharded head on the same mesh. On one
machine with few cores, 8 CPU devices show structure, not speed: the HLO
facts are the primary figure.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

DEVICES = 8
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={DEVICES}").strip()

HERE = os.path.dirname(os.path.abspath(__file__))
# The compiled-HLO readers of the sharding tests (collectives and their bytes).
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import tf_fused_losses as tfl  # noqa: E402
from tf_fused_losses import head  # noqa: E402
from tf_fused_losses._head_sharded_jax import bpmll_head_loss_label_sharded  # noqa: E402
from test_jax_sharding import collectives  # noqa: E402

AMAZON_LABELS = 670_091
IDS_PER_ROW = 8  # Amazon-670K averages 5.45 labels per point


def measure(name, step, args, steps):
    """Compiles step for args; its collectives and XLA's per-device
    temporaries; the median and min of `steps` timed runs after one warm-up
    (none when steps is 0)."""
    start = time.perf_counter()
    compiled = jax.jit(step).lower(*args).compile()
    compile_s = time.perf_counter() - start
    found = collectives(compiled.as_text())
    memory = compiled.memory_analysis()
    result = {
        "case": name,
        "collectives": [{"op": op, "shape": shape, "bytes": size} for op, shape, size in found],
        "collective_bytes": sum(size for _, _, size in found),
        "temp_bytes_per_device": getattr(memory, "temp_size_in_bytes", None),
        "compile_s": round(compile_s, 1),
    }
    if steps:
        jax.block_until_ready(compiled(*args))
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            jax.block_until_ready(compiled(*args))
            times.append(time.perf_counter() - start)
        result.update(median_ms=round(1e3 * statistics.median(times), 1), min_ms=round(1e3 * min(times), 1))
    print(json.dumps(result), flush=True)
    return result


def bpmll_cases(steps, batch=256, labels=30000):
    rng = np.random.default_rng(0)
    y_pred = rng.normal(size=(batch, labels)).astype(np.float32)
    y_true = (rng.random((batch, labels)) < 0.001).astype(np.float32)
    mesh = Mesh(np.array(jax.devices()), ("x",))

    def step(t, p):
        return jax.value_and_grad(lambda q: jnp.mean(tfl.bpmll_loss(t, q)))(p)

    out = []
    for name, placement in (("rows sharded P('x')", NamedSharding(mesh, P("x"))),
                            ("replicated on the mesh P()", NamedSharding(mesh, P())),
                            ("one device", jax.devices()[0])):
        args = [jax.device_put(a, placement) for a in (y_true, y_pred)]
        out.append(measure(f"bpmll {batch}x{labels}: {name}", step, args, steps))
    return out


def head_cases(batch, steps, d, labels, name_suffix="", mesh_unsharded_steps=None, meshes=((1, 8), (2, 4))):
    """The label-sharded head on `meshes`, the unsharded head with the same
    label-sharded kernel on 1 x 8 (timed for mesh_unsharded_steps, default
    steps; 0: compiled only), and (when timed) one device."""
    rng = np.random.default_rng(1)
    width = -(-labels // DEVICES) * DEVICES  # 670,096 for Amazon-670K
    kernel = (0.01 * rng.normal(size=(d, width))).astype(np.float32)
    bias = np.zeros((width,), np.float32)
    ids = rng.integers(0, labels, (batch, IDS_PER_ROW)).astype(np.int32)
    ids[:, -2:] = -1  # padding
    hidden = rng.normal(size=(batch, d)).astype(np.float32)
    out = []
    for shape in meshes:
        mesh = Mesh(np.array(jax.devices()).reshape(shape), ("batch", "labels"))
        rows = "batch" if shape[0] > 1 else None

        def step(ids, h, k, b, mesh=mesh, rows=rows):
            return jax.value_and_grad(lambda h, k, b: jnp.mean(bpmll_head_loss_label_sharded(
                ids, h, k, b, mesh=mesh, label_axis="labels", batch_axis=rows, label_ids=True,
                label_count=labels)), (0, 1, 2))(h, k, b)

        args = [jax.device_put(ids, NamedSharding(mesh, P(rows))), jax.device_put(hidden, NamedSharding(mesh, P(rows))),
                jax.device_put(kernel, NamedSharding(mesh, P(None, "labels"))),
                jax.device_put(bias, NamedSharding(mesh, P("labels")))]
        out.append(measure(f"head {batch}x{labels}: label-sharded, mesh {shape[0]}x{shape[1]}{name_suffix}",
                           step, args, steps))

    def unsharded_step(ids, h, k, b):
        return jax.value_and_grad(lambda h, k, b: jnp.mean(head.bpmll_head_loss(
            ids, h, k[:, :labels], b[:labels], label_ids=True)), (0, 1, 2))(h, k, b)

    mesh = Mesh(np.array(jax.devices()), ("labels",))
    args = [jax.device_put(ids, NamedSharding(mesh, P())), jax.device_put(hidden, NamedSharding(mesh, P())),
            jax.device_put(kernel, NamedSharding(mesh, P(None, "labels"))),
            jax.device_put(bias, NamedSharding(mesh, P("labels")))]
    mesh_steps = steps if mesh_unsharded_steps is None else mesh_unsharded_steps
    suffix = name_suffix or ("" if mesh_steps else " (compiled only)")
    out.append(measure(f"head {batch}x{labels}: unsharded head, kernel label-sharded on 1x8{suffix}",
                       unsharded_step, args, mesh_steps))
    if steps:
        args = [jax.device_put(a, jax.devices()[0]) for a in (ids, hidden, kernel, bias)]
        out.append(measure(f"head {batch}x{labels}: unsharded head, one device", unsharded_step, args, steps))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per case, after one warm-up")
    parser.add_argument("--head-batch", type=int, default=128, help="rows of the timed head steps")
    parser.add_argument("--hlo-batch", type=int, default=1024, help="rows of the head's compiled-only HLO read")
    parser.add_argument("--labels", type=int, default=AMAZON_LABELS, help="the head's label count")
    parser.add_argument("--mesh-labels", type=int, default=131_072,
                        help="label count at which the unsharded head on the mesh is timed against the sharded one")
    parser.add_argument("--d", type=int, default=256, help="the head's hidden width")
    parser.add_argument("--cases", default="bpmll,head", help="comma-separated: bpmll, head")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    assert len(jax.devices()) == DEVICES, jax.devices()
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average": os.getloadavg(),
               "jax": jax.__version__, "devices": f"{DEVICES} CPU devices (--xla_force_host_platform_device_count)"}
    print(json.dumps(machine), flush=True)
    results = []
    cases = set(args.cases.split(","))
    if "bpmll" in cases:
        results += bpmll_cases(args.steps)
    if "head" in cases:
        results += head_cases(args.hlo_batch, 0, args.d, args.labels, " (compiled only)")
        # The unsharded head on the mesh gathers the whole kernel on every
        # device (2 GB of temporaries each at 670,091 labels): timed at
        # --mesh-labels only.
        results += head_cases(args.head_batch, args.steps, args.d, args.labels, mesh_unsharded_steps=0)
        results += head_cases(args.head_batch, args.steps, args.d, args.mesh_labels, meshes=((1, 8),))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
