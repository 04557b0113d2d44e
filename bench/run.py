"""Benchmarks the fused losses against pure-TF and outside implementations.

    python bench/run.py            # the full default sweep (under 10 minutes)
    python bench/run.py --quick    # tiny sizes, a few seconds of timing

For each op, size, dtype pair and pass (forward only, forward + backward) it
times every implementation after warm-up, measures the peak extra memory of
one call, and reports medians with their spread, the fused op's speedup over
each alternative, and the effective bandwidth against the machine's copy
bandwidth. Cases run in worker subprocesses (bench/worker.py), one per op
and size by default, so that a case that runs out of memory costs only its
group. The JAX columns (the fused handlers through jax.ffi, and the pure
forms in jax.numpy, both under jax.jit) run in bench/jax_worker.py under a
JAX interpreter (--jax-python), and the torch columns (the fused torch.library
ops, the keras.ops forms on torch, the seed formulas in eager torch, and
torch.compile of the stable pure forms) in bench/torch_worker.py under a
torch interpreter (--torch-python), right after the TF worker of the same op
and size. See docs/benchmarks.md for what each column means.
"""

import argparse
import collections
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import report  # noqa: E402  (bench/report.py, found through HERE)

WORKER = os.path.join(HERE, "worker.py")
JAX_WORKER = os.path.join(HERE, "jax_worker.py")
TORCH_WORKER = os.path.join(HERE, "torch_worker.py")
# Read by tf_fused_losses._jax_ops.library_path() and _core_c_api (torch).
JAX_LIBRARY_ENV = "TFL_CORE_LIBRARY"
RESULT_PREFIX = "RESULT "

OPS = ("bpmll", "correlation", "ccc")
JAX_IMPLS = ("jax_fused", "jax_pure")
# Planned where --torch-python is given (or named in --impls).
TORCH_IMPLS = ("torch_fused", "torch_keras", "torch_seed", "torch_compile")
IMPLS = {
    "bpmll": ("fused", "fused_xla", "graph", "xla", "pairwise", "peer") + JAX_IMPLS,
    "correlation": ("fused", "fused_xla", "graph", "xla") + JAX_IMPLS,
    "ccc": ("fused", "fused_xla", "graph", "xla") + JAX_IMPLS,
}
MODES = ("fwd", "fwd+bwd")
BASELINE_DTYPES = "float32:float32"
PEER_REQUIREMENT = "bpmll==1.0.0"

DEFAULT_SIZES = {
    "bpmll": "256x18,256x1000,256x30000,64x200000,4x2000000",
    "correlation": "20x100,256x1000,64x100000,4x2000000",
}
QUICK_SIZES = {"bpmll": "8x18,4x300", "correlation": "4x50,2x500"}
# y_pred:y_true. The alternatives run the first (float32) pair only.
DEFAULT_DTYPES = {
    "bpmll": "float32:float32,float32:uint8,float32:bool,float16:float16,bfloat16:bfloat16",
    "correlation": "float32:float32,float16:float16,bfloat16:bfloat16",
}
QUICK_DTYPES = {"bpmll": "float32:float32,float32:uint8", "correlation": "float32:float32"}


def default_deps_dir():
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "tf-fused-losses-bench")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--extreme", action="store_true",
                   help="also the extreme-label section at the Amazon-670K shape (bench/extreme_labels.py: ids "
                        "against dense labels; bench/head_bench.py: Dense + BPMLLLoss against the fused head), "
                        "each a subprocess of its own, after the sweep")
    p.add_argument("--extreme-only", action="store_true", help="the extreme-label section alone")
    p.add_argument("--devices", type=int,
                   help="the sharding section alone, on this many CPU devices (8): bench/sharding_bench.py under "
                        "--jax-python (BP-MLL 256x30000 and the head at the Amazon-670K shape, sharded against "
                        "unsharded on the same mesh, with the collectives' bytes from the compiled HLO)")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few repeats, for a smoke test; writes no file unless asked")
    p.add_argument("--ops", default=",".join(OPS), help="comma-separated subset of %(default)s")
    p.add_argument("--impls", help=f"comma-separated subset of {','.join(IMPLS['bpmll'] + TORCH_IMPLS)} (default: "
                                   f"all but the torch ones, which --torch-python adds)")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of %(default)s")
    p.add_argument("--bpmll-sizes", help=f"BxL list (default {DEFAULT_SIZES['bpmll']})")
    p.add_argument("--corr-sizes", help=f"BxT list for correlation and CCC (default {DEFAULT_SIZES['correlation']})")
    p.add_argument("--bpmll-dtypes", help=f"y_pred:y_true list (default {DEFAULT_DTYPES['bpmll']})")
    p.add_argument("--corr-dtypes", help=f"y_pred:y_true list (default {DEFAULT_DTYPES['correlation']})")
    p.add_argument("--corr-grad", choices=("both", "y_pred"), default="both",
                   help="fwd+bwd of correlation and CCC differentiates both inputs where the fused op does (both, "
                        "the default) or y_pred only, as a training step with constant targets")
    p.add_argument("--warmup", type=int,
                   help="untimed calls before timing: the tracing call, the memory call, then more while a call "
                        "takes under 0.25 s (default 3; quick 2)")
    p.add_argument("--case-seconds", type=float, help="timing budget per case, sets the repeats (default 0.6; quick 0.02)")
    p.add_argument("--case-max-seconds", type=float, default=8.0,
                   help="slow cases stop after this much timing, with at least 3 calls (default %(default)s)")
    p.add_argument("--min-repeats", type=int, help="fewest timed calls per case (default 5; quick 3)")
    p.add_argument("--max-repeats", type=int, help="most timed calls per case (default 200; quick 5)")
    p.add_argument("--pairwise-limit-gb", type=float, default=4.0,
                   help="skip the O(B L^2) forms when B*L*L*8 bytes exceeds this (default %(default)s)")
    p.add_argument("--copy-mb", type=int, help="array size for the copy bandwidth (default 512; quick 64)")
    p.add_argument("--isolate", choices=("group", "case", "none"),
                   help="worker process per op and size (group, default), per case, or one for all (none, quick's default)")
    p.add_argument("--markdown", help="write the table here (default docs/benchmarks_table.md; quick: none)")
    p.add_argument("--json", help="write raw results here (default bench/results.json; quick: none)")
    p.add_argument("--plot", help="write the log-log plot here (default docs/benchmarks.png; quick: none)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--deps-dir", default=default_deps_dir(),
                   help="private pip --target dir for the bpmll peer and matplotlib (default %(default)s)")
    p.add_argument("--no-install", action="store_true", help="never pip-install the peer or matplotlib")
    p.add_argument("--jax-python",
                   help="Python interpreter with jax for the JAX columns (jax_fused, jax_pure); it needs no "
                        "TensorFlow. Default: this interpreter if it can import jax, else the JAX columns are "
                        "skipped, saying why. Its worker imports the package from <repo>/python and finds "
                        "libtfl_core.so there (lib/) or at $TFL_CORE_LIBRARY")
    p.add_argument("--torch-python",
                   help="Python interpreter with torch (and keras, for the keras.ops column) for the torch columns "
                        f"({', '.join(TORCH_IMPLS)}); it needs no TensorFlow. Its worker imports the package from "
                        "<repo>/python and finds libtfl_core.so there (lib/) or at $TFL_CORE_LIBRARY")
    args = p.parse_args(argv)

    quick = args.quick
    defaults = {
        "warmup": (3, 2),
        "case_seconds": (0.6, 0.02),
        "min_repeats": (5, 3),
        "max_repeats": (200, 5),
        "copy_mb": (512, 64),
        "isolate": ("group", "none"),
        "markdown": (os.path.join(ROOT, "docs", "benchmarks_table.md"), None),
        "json": (os.path.join(HERE, "results.json"), None),
        "plot": (os.path.join(ROOT, "docs", "benchmarks.png"), None),
    }
    for name, (full, small) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    sizes = QUICK_SIZES if quick else DEFAULT_SIZES
    dtypes = QUICK_DTYPES if quick else DEFAULT_DTYPES
    args.bpmll_sizes = parse_sizes(args.bpmll_sizes or sizes["bpmll"], "--bpmll-sizes")
    args.corr_sizes = parse_sizes(args.corr_sizes or sizes["correlation"], "--corr-sizes")
    args.bpmll_dtypes = parse_dtypes(args.bpmll_dtypes or dtypes["bpmll"], "--bpmll-dtypes")
    args.corr_dtypes = parse_dtypes(args.corr_dtypes or dtypes["correlation"], "--corr-dtypes")
    args.ops = parse_choice(args.ops, OPS, "--ops")
    if args.impls is None:
        args.impls = ",".join(IMPLS["bpmll"] + (TORCH_IMPLS if args.torch_python else ()))
    args.impls = parse_choice(args.impls, IMPLS["bpmll"] + TORCH_IMPLS, "--impls")
    args.modes = parse_choice(args.modes, MODES, "--modes")
    if args.min_repeats < 1 or args.max_repeats < args.min_repeats:
        p.error(f"need 1 <= --min-repeats <= --max-repeats; got {args.min_repeats} and {args.max_repeats}")
    return args


def parse_sizes(text, flag):
    sizes = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise SystemExit(f"{flag}: expected sizes like 256x1000 (batch x length), got {item!r}")
        sizes.append((int(parts[0]), int(parts[1])))
    return sizes


FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
LABEL_DTYPES = FLOAT_DTYPES + ("int32", "int64", "uint8", "bool")


def parse_dtypes(text, flag):
    pairs = []
    for item in text.split(","):
        parts = item.strip().split(":")
        if len(parts) != 2 or parts[0] not in FLOAT_DTYPES or parts[1] not in LABEL_DTYPES:
            raise SystemExit(
                f"{flag}: expected y_pred:y_true pairs, y_pred one of {', '.join(FLOAT_DTYPES)} and y_true one of "
                f"{', '.join(LABEL_DTYPES)}; got {item!r}"
            )
        pairs.append((parts[0], parts[1]))
    return pairs


def parse_choice(text, allowed, flag):
    chosen = [t.strip() for t in text.split(",") if t.strip()]
    bad = [c for c in chosen if c not in allowed]
    if bad or not chosen:
        raise SystemExit(f"{flag}: expected a comma-separated subset of {', '.join(allowed)}; got {text!r}")
    return chosen


# --------------------------------------------------------------------------
# Plan
# --------------------------------------------------------------------------


def plan_groups(args):
    """Lists of cases, one list per op and size; the fused op first in each pass."""
    groups = []
    for op in args.ops:
        sizes = args.bpmll_sizes if op == "bpmll" else args.corr_sizes
        dtype_pairs = args.bpmll_dtypes if op == "bpmll" else args.corr_dtypes
        if op != "bpmll":
            # Correlation's inputs share one dtype.
            dtype_pairs = [(pred, pred) for pred, _ in dtype_pairs]
            dtype_pairs = list(dict.fromkeys(dtype_pairs))
        impls = [i for i in IMPLS[op] + TORCH_IMPLS if i in args.impls]
        for batch, length in sizes:
            group = []
            for pred, label in dtype_pairs:
                baseline = f"{pred}:{label}" == BASELINE_DTYPES
                for mode in args.modes:
                    for impl in impls:
                        if impl != "fused" and not baseline:
                            continue
                        group.append(
                            {"op": op, "batch": batch, "length": length, "pred_dtype": pred, "label_dtype": label,
                             "mode": mode, "impl": impl}
                        )
            if group:
                groups.append(group)
    return groups


def plan_jobs(groups, isolate):
    if isolate == "none":
        return [[case for group in groups for case in group]]
    if isolate == "case":
        return [[case] for group in groups for case in group]
    return groups


# --------------------------------------------------------------------------
# Workers
# --------------------------------------------------------------------------


def worker_config(args):
    return {
        "warmup": args.warmup,
        "case_seconds": args.case_seconds,
        "case_max_seconds": args.case_max_seconds,
        "min_repeats": args.min_repeats,
        "max_repeats": args.max_repeats,
        "pairwise_limit_gb": args.pairwise_limit_gb,
        "copy_mb": args.copy_mb,
        "deps_dir": args.deps_dir,
        "corr_grad": args.corr_grad,
    }


def _forward_progress(stream, tail):
    for line in stream:
        if line.startswith("["):
            sys.stderr.write(line)
            sys.stderr.flush()
        else:
            tail.append(line.rstrip("\n"))


def side_worker_env():
    """The JAX and torch workers' environment: this one, but
    PYTHONPATH=<repo>/python alone (the checkout's package, and nothing meant
    for the TF interpreter); TFL_CORE_LIBRARY passes through only where the
    user set it, else the package's own lib/libtfl_core.so is used."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.join(ROOT, "python")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def run_worker(job, python=None, script=WORKER, env=None):
    """Runs one job; returns its (kind, payload) records and an error or None."""
    if env is None:
        env = dict(os.environ)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        proc = subprocess.Popen(
            [python or sys.executable, script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=env
        )
    except OSError as e:
        return [], f"could not start {python or sys.executable}: {e}"
    tail = collections.deque(maxlen=15)
    reader = threading.Thread(target=_forward_progress, args=(proc.stderr, tail), daemon=True)
    reader.start()
    proc.stdin.write(json.dumps(job))
    proc.stdin.close()
    records = []
    for line in proc.stdout:
        if line.startswith(RESULT_PREFIX):
            record = json.loads(line[len(RESULT_PREFIX):])
            records.append((record["kind"], record["payload"]))
    returncode = proc.wait()
    reader.join()
    if returncode == 0:
        return records, None
    if returncode < 0:
        why = f"worker killed by {signal.Signals(-returncode).name}"
        if -returncode == signal.SIGKILL:
            why += " (likely out of memory)"
    else:
        why = f"worker exited with status {returncode}"
    last = [line for line in tail if line.strip()][-3:]
    if last:
        why += ": " + " | ".join(last)[-400:]
    return records, why


class Side:
    """A worker of another framework (JAX, torch): its interpreter, what its
    probe found, and why one of its cases cannot run (None where it can)."""

    def __init__(self, impls, script, python, meta, reason):
        self.impls = impls
        self.script = script
        self.python = python
        self.meta = meta  # the probe's payload, or None
        self.reason = reason  # why no JAX case runs, or None

    def why_not(self, case):
        """Why this case is not run (status, reason), or None to run it."""
        if self.reason:
            return "skipped", self.reason
        check = (self.meta.get("self_check") or {}).get(case["impl"], {}).get(case["op"])
        if check and check.get("ok") is False:
            errors = ", ".join(f"{k} {v:.2g}" for k, v in check["max_rel_err"].items())
            return "failed", (f"self-check against tests/helpers/numpy_reference.py failed at {check['size']} "
                              f"(relative errors {errors}; tolerance {self.meta['self_check_rtol']:g})")
        if case["impl"] == self.impls[0] and self.meta.get("load_error"):  # the fused column
            reason = self.meta["load_error"]
            built = os.path.join(ROOT, "build", "cmake", "lib", "libtfl_core.so")
            if not os.environ.get(JAX_LIBRARY_ENV) and os.path.isfile(built):
                reason += f" (a build is at {built}: {JAX_LIBRARY_ENV}={built} python bench/run.py ...)"
            return "skipped", reason
        return None


# What each other framework's worker is: (its implementations, the fused one
# first; its script; the flag naming its interpreter; the framework).
SIDES = {
    "jax": (JAX_IMPLS, JAX_WORKER, "--jax-python", "JAX"),
    "torch": (TORCH_IMPLS, TORCH_WORKER, "--torch-python", "torch"),
}


def probe_side(args, config, name):
    """Finds the interpreter of SIDES[name] and runs its worker's probe
    (versions, the library, the self-check) once; returns a Side."""
    impls, script, flag, framework = SIDES[name]
    wanted = [i for i in impls if i in args.impls]
    if not wanted:
        return Side(impls, script, None, None, "not asked for (--impls)")
    python = getattr(args, name + "_python") or sys.executable
    where = flag if getattr(args, name + "_python") else f"this interpreter (pass {flag} PATH for another)"
    records, error = run_worker({"config": config, "probe": True, "cases": []}, python, script, side_worker_env())
    meta = next((payload for kind, payload in records if kind == "meta"), None)
    if meta is None:
        return Side(impls, script, python, None, f"the {framework} worker did not start under {python} ({where}): {error}")
    if meta.get("error"):
        return Side(impls, script, python, meta, f"{meta['error']} ({where})")
    return Side(impls, script, python, meta, None)


def _case_line(total, case, status, reason):
    return (f"[{case['index']:>3}/{total}] {case['op']} B={case['batch']} L={case['length']} "
            f"{case['pred_dtype']}/{case['label_dtype']} {case['mode']} {case['impl']}: {status}: {reason}")


def _run_part(job, cases, python, script, env, total):
    """Runs cases in one worker; returns (meta or None, results in the cases' order, error)."""
    records, error = run_worker(dict(job, cases=cases), python, script, env)
    meta, done = None, []
    for kind, payload in records:
        if kind == "meta":
            meta = payload
        else:
            done.append(payload)
    for case in cases[len(done):]:
        failed = dict(case, status="failed", reason=error or "worker stopped early")
        print(_case_line(total, case, "failed", failed["reason"]), file=sys.stderr, flush=True)
        done.append(failed)
    return meta, done, error


def run_all(args, groups, sides=None):
    """Runs every job: its TF cases in bench/worker.py, then the cases of
    each other framework in its worker (`sides`: name -> Side); returns the
    TF worker's metadata and the results in the plan's order."""
    sides = sides or {}
    config = worker_config(args)
    jobs = plan_jobs(groups, args.isolate)
    total = sum(len(job) for job in jobs)
    index = 0
    for job in jobs:
        for case in job:
            index += 1
            case["index"] = index
    meta, results = None, []
    if args.isolate != "none":
        jobs.insert(0, [])  # the copy bandwidth and versions, alone in a process
    for number, cases in enumerate(jobs):
        job = {"config": config, "meta": number == 0, "total": total}
        other_impls = {impl: name for name, (impls, _, _, _) in SIDES.items() for impl in impls}
        tf_cases = [c for c in cases if c["impl"] not in other_impls]
        by_index = {}
        if tf_cases or number == 0:
            tf_meta, done, error = _run_part(job, tf_cases, None, WORKER, None, total)
            meta = tf_meta or meta
            if number == 0 and meta is None:
                raise SystemExit(f"the benchmark worker could not start: {error}")
            by_index.update((r["index"], r) for r in done)
        for name, (_, script, _, framework) in SIDES.items():
            side = sides.get(name)
            runnable = []
            for case in (c for c in cases if other_impls.get(c["impl"]) == name):
                why = side.why_not(case) if side is not None else ("skipped", f"no {framework} interpreter")
                if why is None:
                    runnable.append(case)
                else:
                    by_index[case["index"]] = dict(case, status=why[0], reason=why[1])
                    print(_case_line(total, case, *why), file=sys.stderr, flush=True)
            if runnable:
                _, done, _ = _run_part(dict(job, meta=False), runnable, side.python, script, side_worker_env(), total)
                by_index.update((r["index"], r) for r in done)
        results.extend(by_index[c["index"]] for c in cases)
    for r in results:
        r.pop("index", None)
    return meta, results


# --------------------------------------------------------------------------
# Private installs: the PyPI peer and matplotlib
# --------------------------------------------------------------------------


def _importable(module, deps_dir):
    if importlib.util.find_spec(module) is not None:
        return True
    if os.path.isdir(os.path.join(deps_dir, module)):
        return True
    return False


def pip_target_install(requirement, deps_dir, no_deps):
    """pip install --target deps_dir; returns None, or why it failed."""
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target", deps_dir]
    if no_deps:
        command.append("--no-deps")
    command.append(requirement)
    print(f"installing {requirement} into {deps_dir}", file=sys.stderr, flush=True)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"pip failed to run: {e}"
    if done.returncode != 0:
        return "pip install failed: " + (done.stderr.strip().splitlines() or ["no output"])[-1]
    return None


def ensure_peer(args, notes):
    if "bpmll" not in args.ops or "peer" not in args.impls or _importable("bpmll", args.deps_dir):
        return
    if args.no_install:
        notes.append(f"The bpmll peer is not installed and --no-install was given (pip install --target {args.deps_dir} "
                     f"--no-deps {PEER_REQUIREMENT} adds it).")
        return
    # --no-deps: it requires `tensorflow`, which would pull the full package
    # next to the tensorflow-cpu already here.
    error = pip_target_install(PEER_REQUIREMENT, args.deps_dir, no_deps=True)
    if error:
        notes.append(f"The bpmll peer could not be installed: {error}")


def import_matplotlib(args, notes):
    if args.deps_dir not in sys.path:
        sys.path.append(args.deps_dir)
    if not _importable("matplotlib", args.deps_dir):
        if args.no_install:
            notes.append("No plot: matplotlib is not installed and --no-install was given.")
            return None
        error = pip_target_install("matplotlib", args.deps_dir, no_deps=False)
        if error:
            notes.append(f"No plot: matplotlib could not be installed: {error}")
            return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        notes.append(f"No plot: matplotlib does not import ({e}).")
        return None
    return plt


# --------------------------------------------------------------------------
# Machine
# --------------------------------------------------------------------------


def machine_description():
    info = {"python": platform.python_version(), "kernel": platform.release(), "nproc": os.cpu_count()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        lscpu = ""
    fields = {}
    for line in lscpu.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    for key, name in (("Model name", "cpu"), ("CPU(s)", "cpus"), ("Thread(s) per core", "threads_per_core"),
                      ("L1d cache", "l1d"), ("L2 cache", "l2"), ("L3 cache", "l3"), ("Hypervisor vendor", "hypervisor")):
        if key in fields:
            info[name] = fields[key]
    flags = fields.get("Flags", "").split()
    info["simd"] = [f for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "f16c") if f in flags]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    info["memory_gib"] = round(int(line.split()[1]) / (1 << 20), 1)
    except OSError:
        pass
    return info


EXTREME_LABELS = 670091  # Amazon-670K


def extreme_section(args):
    """The extreme-label rows (issue 21), each script in its own process so
    that its memory high-water marks are its own: with --quick at a small
    label count, to check that the section runs."""
    labels = "4096" if args.quick else str(EXTREME_LABELS)
    commands = [
        [sys.executable, os.path.join(HERE, "extreme_labels.py"), "--labels", labels],
        [sys.executable, os.path.join(HERE, "head_bench.py"), "--labels", labels] + (["--steps", "1"] if args.quick else []),
    ]
    for command in commands:
        print(f"\n==== {' '.join(os.path.relpath(c, ROOT) if c.startswith(ROOT) else c for c in command[1:])}",
              flush=True)
        done = subprocess.run(command, cwd=ROOT)
        if done.returncode != 0:
            raise SystemExit(f"{os.path.basename(command[1])} failed with exit status {done.returncode}")


def sharding_section(args):
    """bench/sharding_bench.py in a JAX interpreter of its own: the
    host-platform device count is fixed when jax starts."""
    if not args.jax_python:
        raise SystemExit("--devices needs --jax-python PATH (a Python with jax)")
    if args.devices != 8:
        raise SystemExit(f"--devices: bench/sharding_bench.py runs on 8 CPU devices; got {args.devices}")
    command = [args.jax_python, os.path.join(HERE, "sharding_bench.py")] + (
        ["--head-batch", "16", "--hlo-batch", "64", "--labels", "65536", "--mesh-labels", "8192", "--steps", "1"]
        if args.quick else [])
    done = subprocess.run(command, cwd=ROOT, env=side_worker_env())
    if done.returncode != 0:
        raise SystemExit(f"sharding_bench.py failed with exit status {done.returncode}")


def main(argv=None):
    args = parse_args(argv)
    if args.devices:
        sharding_section(args)
        return
    if args.extreme_only:
        extreme_section(args)
        return
    started = time.time()
    load_at_start = _load_average()
    notes = []
    ensure_peer(args, notes)
    groups = plan_groups(args)
    sides = {}
    for name, (impls, _, _, framework) in SIDES.items():
        if not any(c["impl"] in impls for group in groups for c in group):
            continue
        sides[name] = side = probe_side(args, worker_config(args), name)
        if side.reason:
            notes.append(f"{framework} columns skipped: {side.reason}")
            print(f"{framework} columns skipped: {side.reason}", file=sys.stderr, flush=True)
    meta, results = run_all(args, groups, sides)
    for name, side in sides.items():
        if side.meta is not None:
            meta[name] = side.meta
    meta["machine"] = machine_description()
    meta["command"] = " ".join(["python", "bench/run.py"] + list(sys.argv[1:] if argv is None else argv))
    meta["config"] = worker_config(args)
    meta["notes"] = notes
    meta["load_average"] = {"start": load_at_start, "end": _load_average()}
    rows = report.derive(results, meta["copy_bandwidth"]["reference_gbps"])
    markdown = report.markdown(meta, rows)
    print(markdown)
    if args.markdown:
        _write(args.markdown, markdown)
    if args.plot and not args.no_plot:
        plt = import_matplotlib(args, notes)
        if plt is not None:
            report.plot(plt, rows, args.plot)
            meta["plot"] = args.plot
    if args.json:
        _write(args.json, json.dumps({"meta": meta, "summary": report.summary(rows), "results": rows}, indent=1) + "\n")
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"finished {len(rows)} cases in {time.time() - started:.0f} s", file=sys.stderr)
    if args.extreme:
        extreme_section(args)


def _load_average():
    """The 1, 5 and 15 minute load averages, or None: other work on the
    machine during a run shows up in its timings."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _write(path, text):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
