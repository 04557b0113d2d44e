"""Benchmarks on a GPU: the fused kernels against a device-to-device copy,
JAX (jax.jit of the stable pure formula, XLA's fusion) and PyTorch eager (the
seed's factored formula), at sizes several times the L2.

Kernels and the copy are timed with CUDA events on the default stream after
warm-up (the GPU module's bench_* functions); PyTorch with
torch.cuda.Event; JAX, whose stream events are not exposed, by wall time of
`LOOP` back-to-back dispatches after a block_until_ready, per call (XLA
queues them, so this is GPU time once the work dominates dispatch). Each
figure is the median of several runs.

Effective GB/s count the bytes a kernel must move: every input read once,
every output written once. A "step" is what a training step needs (BP-MLL:
loss and d loss / d y_pred scaled by the upstream gradient; correlation:
loss per step and d / d y_pred); all three implementations of a step are
given the same byte count, the fused minimum, so their GB/s compare.
"""

import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from . import log

WARMUP, RUNS, LOOP = 3, 15, 5
COPY_BYTES = 1 << 30
CONFIGS = [
    ("bpmll", (4096, 30000)),
    ("bpmll", (64, 2_000_000)),
    ("bpmll", (262144, 100)),  # a warp per row
    ("pearson", (256, 100_000)),
    ("ccc", (256, 100_000)),
]


def _median(ms):
    return statistics.median(ms) if ms else None


def _row(impl, kernel, loss, shape, ms, nbytes, copy_gbps, launch=None, **extra):
    med = _median(ms)
    gbps = nbytes / (med * 1e-3) / 1e9 if med else None
    return {"impl": impl, "kernel": kernel, "loss": loss, "shape": list(shape), "dtype": "float32",
            "launch": launch, "ms_median": med, "ms_min": min(ms) if ms else None, "runs": len(ms),
            "bytes": int(nbytes), "gbps": gbps, "fraction_of_copy": gbps / copy_gbps if gbps and copy_gbps else None,
            **extra}


def step_bytes(loss, shape):
    """The fused minimum of a training step's traffic, float32 throughout."""
    rows, n = shape[0], shape[0] * shape[1]
    if loss == "bpmll":
        return n * (4 + 4 + 4) + rows * 4 * 2  # y, c read; grad written; loss written, upstream read
    return n * (4 * 3 + 4 + 4)  # y, x, upstream read; loss, grad_x written


def inputs(loss, shape, seed=0):
    rng = np.random.default_rng(seed)
    if loss == "bpmll":
        c = rng.standard_normal(shape, dtype=np.float32) * np.float32(2)
        y = (rng.random(shape, dtype=np.float32) < 0.5).astype(np.float32)
        return y, c
    y = rng.standard_normal(shape, dtype=np.float32)
    x = np.float32(0.6) * y + rng.standard_normal(shape, dtype=np.float32)
    return y, x


def fused(module, multiprocessors, copy_gbps, deadline):
    rows_out = []
    for loss, shape in CONFIGS:
        if time.monotonic() > deadline:
            rows_out.append({"impl": "fused_cuda", "loss": loss, "shape": list(shape), "skipped": "time budget"})
            continue
        rows, n = shape[0], shape[0] * shape[1]
        y, x = inputs(loss, shape)
        if loss == "bpmll":
            r = module.bench_bpmll(y, "float32", x, "float32", multiprocessors, WARMUP, RUNS)
            fwd = _row("fused_cuda", "FusedBpmllLoss", loss, shape, r["ms"], n * 12 + rows * 4, copy_gbps,
                       r["shape"], grid=r["grid"])
            scale = np.ones(rows, np.float32)
            r2 = module.bench_scale_rows(scale, x, "float32", multiprocessors, WARMUP, RUNS)
            grad = _row("fused_cuda", "FusedBpmllLossGrad", loss, shape, r2["ms"], n * 8 + rows * 4, copy_gbps,
                        r2["shape"], grid=r2["grid"])
            parts = [fwd, grad]
        else:
            concordance = loss == "ccc"
            g = np.ones(shape, np.float32)
            r = module.bench_correlation("forward", g, y, x, None, "float32", concordance, False, multiprocessors,
                                         WARMUP, RUNS)
            fwd = _row("fused_cuda", "FusedCorrelationLoss", loss, shape, r["ms"], n * 12 + rows * 40, copy_gbps,
                       r["shape"], grid=r["grid"])
            r2 = module.bench_correlation("backward", g, y, x, None, "float32", concordance, False, multiprocessors,
                                          WARMUP, RUNS)
            grad = _row("fused_cuda", "FusedCorrelationLossGrad", loss, shape, r2["ms"], n * 16 + rows * 40,
                        copy_gbps, r2["shape"], grid=r2["grid"])
            r3 = module.bench_correlation("backward", g, y, x, None, "float32", concordance, True, multiprocessors,
                                          WARMUP, RUNS)
            both = _row("fused_cuda", "FusedCorrelationLossGrad (+grad_y_true)", loss, shape, r3["ms"],
                        n * 20 + rows * 40, copy_gbps, r3["shape"], grid=r3["grid"])
            parts = [fwd, grad, both]
        rows_out += parts
        # The step: forward then gradient kernel, run i of each paired.
        step_ms = [a + b for a, b in zip(r["ms"], r2["ms"])]
        rows_out.append(_row("fused_cuda", "step", loss, shape, step_ms, step_bytes(loss, shape), copy_gbps,
                             note="forward kernel + gradient kernel"))
        log(f"bench fused {loss} {shape[0]}x{shape[1]}: " +
            ", ".join(f"{p['kernel']} {p['ms_median']:.3f} ms ({p['gbps']:.0f} GB/s)" for p in parts))
        del y, x
    return rows_out


def copy(module):
    r = module.bench_copy(COPY_BYTES, WARMUP, RUNS)
    med = _median(r["ms"])
    gbps = 2 * COPY_BYTES / (med * 1e-3) / 1e9
    return {"impl": "cudaMemcpy D2D", "kernel": "copy", "loss": None, "shape": [COPY_BYTES], "dtype": "bytes",
            "ms_median": med, "ms_min": min(r["ms"]), "runs": len(r["ms"]), "bytes": 2 * COPY_BYTES, "gbps": gbps,
            "fraction_of_copy": 1.0}


# --------------------------------------------------------------------------
# JAX and PyTorch, each in its own process (python -m gpu_kit child-bench)
# --------------------------------------------------------------------------


def formula_error(loss, fn):
    """max |fn(y, x) - float64 reference| / max |reference| on a small
    finite input: the compared formula computes the same loss (per row for
    BP-MLL, per step for the correlations)."""
    from cuda_emu import reference64

    y, x = (a.astype(np.float64) for a in inputs(loss, (4, 64), seed=1))
    if loss == "bpmll":
        want = reference64.bpmll(y, x)[0]
    else:
        want = reference64.correlation(y, x, None, loss == "ccc")[0]
    got = np.asarray(fn(y, x), np.float64)
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def jax_rows(copy_gbps):
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax
    import jax.numpy as jnp

    def bpmll(y, c):
        # The stable pure formula: log-domain sums, 0 for rows without pairs.
        log_p = jax.nn.logsumexp(-c, axis=1, b=y)
        log_n = jax.nn.logsumexp(c, axis=1, b=1 - y)
        pairs = jnp.sum(y, axis=1) * jnp.sum(1 - y, axis=1)
        loss = jnp.exp(log_p + log_n - jnp.log(pairs))
        return jnp.where(pairs > 0, loss, 0.0)

    def correlation(concordance):
        def per_step(y, x):
            my, mx = jnp.mean(y, axis=1, keepdims=True), jnp.mean(x, axis=1, keepdims=True)
            cy, cx = y - my, x - mx
            vy, vx = jnp.mean(cy * cy, axis=1, keepdims=True), jnp.mean(cx * cx, axis=1, keepdims=True)
            if concordance:
                return 1 - 2 * cx * cy / (vx + vy + (mx - my) ** 2 + 1e-7)
            return 1 - cx * cy / (jnp.sqrt(vx) * jnp.sqrt(vy) + 1e-7)
        return per_step

    jax.config.update("jax_enable_x64", True)  # for the formula check; the timed inputs are float32
    out = []
    for loss, shape in CONFIGS:
        check = formula_error(loss, bpmll if loss == "bpmll" else correlation(loss == "ccc"))
        y, x = (jnp.asarray(a) for a in inputs(loss, shape))
        if loss == "bpmll":
            upstream = jnp.ones(shape[0], jnp.float32)

            @jax.jit
            def step(y, c, g):
                value, vjp = jax.vjp(lambda c_: bpmll(y, c_), c)
                return value, vjp(g)[0]
            args = (y, x, upstream)
        else:
            per_step = correlation(loss == "ccc")
            upstream = jnp.ones(shape, jnp.float32)

            @jax.jit
            def step(y, x, g, per_step=per_step):
                value, vjp = jax.vjp(lambda x_: per_step(y, x_), x)
                return value, vjp(g)[0]
            args = (y, x, upstream)
        for _ in range(WARMUP):
            jax.block_until_ready(step(*args))
        ms = []
        for _ in range(RUNS):
            t = time.perf_counter()
            for _ in range(LOOP):
                result = step(*args)
            jax.block_until_ready(result)
            ms.append((time.perf_counter() - t) * 1e3 / LOOP)
        out.append(_row("jax_jit", "step", loss, shape, ms, step_bytes(loss, shape), copy_gbps,
                        formula_error=check,
                        note=f"jax {jax.__version__}: value and vjp of the pure formula, wall time / {LOOP} queued calls"))
        del args, y, x, upstream
    return out


def torch_rows(copy_gbps):
    import torch

    dev = torch.device("cuda")

    def bpmll(y, c):
        # The seed's factored formula.
        return (y * torch.exp(-c)).sum(1) * ((1 - y) * torch.exp(c)).sum(1) / (y.sum(1) * (1 - y).sum(1))

    def correlation(y, x, concordance):
        my, mx = y.mean(1, keepdim=True), x.mean(1, keepdim=True)
        cy, cx = y - my, x - mx
        vy, vx = (cy * cy).mean(1, keepdim=True), (cx * cx).mean(1, keepdim=True)
        if concordance:
            return 1 - 2 * cx * cy / (vx + vy + (mx - my) ** 2 + 1e-7)
        return 1 - cx * cy / (torch.sqrt(vy * vx) + 1e-7)

    def on_numpy(fn):
        return lambda y, x: fn(torch.from_numpy(y), torch.from_numpy(x)).numpy()

    out = []
    for loss, shape in CONFIGS:
        check = formula_error(loss, on_numpy(bpmll if loss == "bpmll" else
                                             lambda y, x: correlation(y, x, loss == "ccc")))
        y, x = (torch.from_numpy(a).to(dev) for a in inputs(loss, shape))
        g = torch.ones(shape[0] if loss == "bpmll" else shape, device=dev)

        def step(y=y, x=x, g=g, loss=loss):
            c = x.detach().requires_grad_(True)
            value = bpmll(y, c) if loss == "bpmll" else correlation(y, c, loss == "ccc")
            value.backward(g)
            return c.grad

        for _ in range(WARMUP):
            step()
        torch.cuda.synchronize()
        ms = []
        for _ in range(RUNS):
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            stop.record()
            stop.synchronize()
            ms.append(start.elapsed_time(stop))
        out.append(_row("torch_eager", "step", loss, shape, ms, step_bytes(loss, shape), copy_gbps,
                        formula_error=check, note=f"torch {torch.__version__}: forward + backward, CUDA events"))
        del y, x, g, step
        torch.cuda.empty_cache()
    return out


def child(args):
    """python -m gpu_kit child-bench --framework jax|torch --copy-gbps X --json OUT"""
    rows = jax_rows(args.copy_gbps) if args.framework == "jax" else torch_rows(args.copy_gbps)
    with open(args.json, "w") as f:
        json.dump(rows, f)
    return 0


def framework(name, copy_gbps, out_dir, timeout):
    """Rows for `name` from a child process, or one row saying why there are none."""
    path = os.path.join(out_dir, f"bench_{name}.json")
    command = [sys.executable, "-m", "gpu_kit", "child-bench", "--framework", name, "--copy-gbps", str(copy_gbps),
               "--json", path]
    started = time.monotonic()
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=os.path.dirname(
            os.path.dirname(os.path.abspath(__file__))))
    except subprocess.TimeoutExpired:
        return [{"impl": name, "skipped": f"timed out after {timeout} s"}]
    if result.returncode != 0 or not os.path.exists(path):
        tail = (result.stdout + result.stderr).strip().splitlines()[-3:]
        return [{"impl": name, "skipped": "failed or missing: " + " | ".join(tail)[-600:]}]
    with open(path) as f:
        rows = json.load(f)
    os.remove(path)
    log(f"bench {name}: {len(rows)} rows in {time.monotonic() - started:.1f} s")
    return rows
