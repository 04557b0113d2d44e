"""The kit's driver: `python -m gpu_kit run [--emulate] ...` (tools/gpu_check.sh
runs it), and the child processes it starts (child-cases, child-ffi,
child-bench). Nothing here imports TensorFlow; the report records whether
anything did."""

import argparse
import datetime
import hashlib
import json
import os
import platform
import subprocess
import sys
import time

from . import ROOT, log


def parse(argv):
    parser = argparse.ArgumentParser(prog="python -m gpu_kit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="the whole check (tools/gpu_check.sh)")
    run.add_argument("--emulate", action="store_true",
                     help="the CPU emulation (g++ against tests/cuda_emu/cuda_emulation.h) instead of a GPU")
    run.add_argument("--out", help="output folder (default: $OUT, else build/gpu_check)")
    run.add_argument("--jobs", type=int, help="parallel compile jobs (default: TFL_KIT_JOBS or the CPU count)")
    run.add_argument("--arch", help="CUDA arch to build for, e.g. 90 (default: the local GPU's, via nvidia-smi)")
    run.add_argument("--cases", nargs="+", metavar="PATTERN", help="only cases whose name contains a pattern")
    run.add_argument("--skip", action="append", default=[], choices=["cases", "ffi", "sanitizer", "bench"],
                     help="skip a phase (repeatable); --emulate --skip cases is the FFI check alone")
    run.add_argument("--build-only", action="store_true", help="build everything, run nothing")
    run.add_argument("--budget", type=float, help="seconds for the whole run (default: 470 on a GPU, 570 emulated)")
    run.add_argument("--inject-error", metavar="PATTERN",
                     help="self-test: corrupt one output of the cases whose name contains PATTERN; they must fail")

    child = sub.add_parser("child-cases", help="cases on a built GPU module (alone or under compute-sanitizer)")
    child.add_argument("--module", required=True)
    child.add_argument("--tag")
    child.add_argument("--cases", nargs="+")
    child.add_argument("--inject-error")
    child.add_argument("--json", required=True, help="one JSON result per line, written as each case ends")

    ffi = sub.add_parser("child-ffi", help="the FFI handlers through jax.jit")
    ffi.add_argument("--platform", required=True, choices=["cpu", "CUDA"])
    ffi.add_argument("--lib", required=True)
    ffi.add_argument("--json", required=True)
    ffi.add_argument("--cases", nargs="+")

    bench = sub.add_parser("child-bench", help="JAX or PyTorch timings")
    bench.add_argument("--framework", required=True, choices=["jax", "torch"])
    bench.add_argument("--copy-gbps", type=float, default=0.0)
    bench.add_argument("--json", required=True)
    return parser.parse_args(argv)


# --------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------


def commit():
    if os.environ.get("TFL_KIT_COMMIT"):
        return os.environ["TFL_KIT_COMMIT"]
    try:
        sha = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha, dirty = "", ""
    if not sha:
        return "unknown (no git checkout; set TFL_KIT_COMMIT)"
    return sha + ("+uncommitted changes" if dirty else "")


def source_digest():
    """A digest of what the kit builds and runs: cuda/, cc/, tests/cuda_emu/, tools/gpu_kit/."""
    h = hashlib.sha256()
    for top in ("cuda", "cc", os.path.join("tests", "cuda_emu"), os.path.join("tools", "gpu_kit")):
        for folder, subfolders, names in sorted(os.walk(os.path.join(ROOT, top))):
            subfolders[:] = sorted(d for d in subfolders if d != "__pycache__")
            for name in sorted(names):
                if name.endswith((".h", ".cuh", ".cc", ".cu", ".py")):
                    path = os.path.join(folder, name)
                    with open(path, "rb") as f:
                        h.update(os.path.relpath(path, ROOT).encode() + f.read())
    return h.hexdigest()[:16]


def machine_info():
    import numpy

    return {"hostname": platform.node(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "numpy": numpy.__version__}


# --------------------------------------------------------------------------
# Phases
# --------------------------------------------------------------------------


def run_cases(module, selected, inject=None, sink=None):
    from . import cases as kit_cases

    results = []
    for i, case in enumerate(selected, 1):
        r = kit_cases.run_case(module, case, inject_error=bool(inject) and inject in case.name)
        results.append(r)
        if sink is not None:
            sink.write(json.dumps(r) + "\n")
            sink.flush()
        if not r["passed"]:
            log(f"FAIL {case.name}: {r['problems'][0][:300]}")
        if i % 50 == 0 or i == len(selected):
            log(f"cases: {i}/{len(selected)} run, {sum(not x['passed'] for x in results)} failed")
    return results


def read_results(path):
    results = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if line.strip():
                    results.append(json.loads(line))
    return results


def gpu_cases_phase(module_path, selected, patterns, inject, out_dir, timeout):
    """The cases on the GPU module in a child process, so that a hung or
    faulting kernel (a sticky CUDA error ends the context) costs the phase,
    not the run: results stream to a file, and on a timeout the case after
    the last one written is reported as hung."""
    path = os.path.join(out_dir, "cases_gpu.jsonl")
    if os.path.exists(path):
        os.remove(path)
    command = [sys.executable, "-m", "gpu_kit", "child-cases", "--module", module_path, "--json", path]
    if patterns:
        command += ["--cases", *patterns]
    if inject:
        command += ["--inject-error", inject]
    status = "ran"
    try:
        proc = subprocess.run(command, timeout=timeout, cwd=os.path.join(ROOT, "tools"))
        if proc.returncode != 0:
            status = f"child exited with status {proc.returncode}"
    except subprocess.TimeoutExpired:
        status = f"timed out after {timeout:.0f} s"
    results = read_results(path)
    if os.path.exists(path):
        os.remove(path)
    if len(results) < len(selected):
        from . import cases as kit_cases

        missing = selected[len(results)]
        stub = kit_cases.failed_result(missing, "cuda", f"no result: the child process {status} during or "
                                                        "before this case")
        results.append(stub)
        log(f"FAIL {missing.name}: {stub['problems'][0]}")
    return status, results


def ffi_phase(platform_name, lib, out_dir, patterns, timeout):
    """The FFI cases of one platform, from a child process."""
    path = os.path.join(out_dir, f"ffi_{platform_name.lower()}.json")
    env = dict(os.environ)
    if platform_name == "cpu":
        env["JAX_PLATFORMS"] = "cpu"
    command = [sys.executable, "-m", "gpu_kit", "child-ffi", "--platform", platform_name, "--lib", lib, "--json", path]
    if patterns:
        command += ["--cases", *patterns]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=os.path.join(ROOT, "tools"))
    except subprocess.TimeoutExpired:
        return {"status": f"timed out after {timeout:.0f} s"}, []
    if proc.returncode != 0 or not os.path.exists(path):
        tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-4:])[-800:]
        return {"status": "failed to run", "detail": tail}, []
    with open(path) as f:
        data = json.load(f)
    os.remove(path)
    summary = data["summary"]
    summary["status"] = "ran"
    return summary, data["cases"]


def verdict(result, build_status):
    failed = [c for c in result["cases"] if not c["passed"]]
    bad_builds = {k: v for k, v in build_status.items() if v}
    sanitizer_errors = [s for s in result["sanitizer"] if s.get("status") in ("errors", "program failed")]
    cases_phase = result["phases"].get("cases", {}).get("status", "ran")
    cases_ran = cases_phase == "ran" or cases_phase == "skipped: --skip cases"
    ok = not failed and not bad_builds and not sanitizer_errors and result["cases"] and cases_ran
    backends = sorted({c["backend"] for c in result["cases"]})
    lines = [f"{'PASSED' if ok else 'FAILED'}: {len(result['cases']) - len(failed)} of {len(result['cases'])} "
             f"cases passed ({', '.join(backends) or 'no backend ran'})"]
    if failed:
        lines.append(f"failed cases: {', '.join(c['name'] + ' [' + c['backend'] + ']' for c in failed[:20])}"
                     + (" ..." if len(failed) > 20 else ""))
    for name, error in bad_builds.items():
        lines.append(f"build failed: {name}: {error.strip().splitlines()[0][:300] if error.strip() else error}")
    for s in result["sanitizer"]:
        lines.append(f"compute-sanitizer {s['tool']}: {s['status']}")
    for name, p in result["phases"].items():
        if p.get("status") not in ("ran", "ok"):
            lines.append(f"{name}: {p.get('status')}")
    return bool(ok), lines


def main_run(a):
    from . import backends, report

    started = time.monotonic()
    emulate = a.emulate
    mode = "emulated (g++ against tests/cuda_emu/cuda_emulation.h)" if emulate else "GPU"
    out_dir = os.path.abspath(a.out or os.environ.get("OUT") or os.path.join(ROOT, "build", "gpu_check"))
    os.makedirs(out_dir, exist_ok=True)
    budget = a.budget or (570.0 if emulate else 470.0)
    deadline = started + budget
    jobs = a.jobs or backends.default_jobs()
    log(f"mode: {mode}; output: {out_dir}; {jobs} compile job(s); time budget {budget:.0f} s")
    machine = machine_info()
    phases = {}
    result = {"kit": "tools/gpu_check.sh", "mode": "emulate" if emulate else "gpu",
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
              "commit": commit(), "source_digest": source_digest(), "machine": machine, "phases": phases,
              "cases": [], "sanitizer": [], "bench": [], "ffi": {}}

    # ---------------------------------------------------------------- build
    t = time.monotonic()
    jax = None if "ffi" in a.skip else backends.jax_info()
    machine["jax"] = jax["version"] if jax else None
    log(f"jax: {jax['version'] + ' (' + jax['include_dir'] + ')' if jax else 'not importable: FFI checks skipped'}")
    builds, extra = [], []
    nvcc = arch = None
    build_status = {}
    if emulate:
        if "cases" not in a.skip:
            extra.append(("emulated module", backends.build_emulated_module))
    else:
        nvcc = backends.find_nvcc()
        if not nvcc:
            build_status["gpu module"] = "no nvcc found (set NVCC or CUDA_HOME)"
        else:
            machine["nvcc"] = backends.tool_version([nvcc, "--version"])
            arch = backends.local_arch(a.arch)
            machine["arch"] = f"sm_{arch}" if arch else "native"
            gpus = backends.nvidia_smi()
            machine["nvidia_smi"] = gpus
            machine["driver"] = gpus[0]["driver_version"] if gpus else None
            log(f"nvcc: {machine['nvcc']}; building for {machine['arch']}; GPUs: {gpus or 'nvidia-smi saw none'}")
            builds.append(backends.gpu_module_build(nvcc, arch))
            if jax:
                builds.append(backends.cuda_ffi_build(nvcc, arch, jax["include_dir"]))
    if jax:
        builds.append(backends.host_ffi_build(jax["include_dir"]))
    machine["cxx"] = backends.compiler_version()
    if builds or extra:
        build_status.update(backends.run_builds(builds, jobs, extra))
    outputs = {b.name: b.output for b in builds}
    if any(build_status.values()):
        with open(os.path.join(out_dir, "build_errors.log"), "w") as f:
            for name, error in build_status.items():
                if error:
                    f.write(f"==== {name}\n{error[-200000:]}\n")
    phases["build"] = {"status": "ok" if not any(build_status.values()) else "failed",
                       "seconds": round(time.monotonic() - t, 1),
                       "builds": {k: ("ok" if not v else v[-2000:]) for k, v in build_status.items()}}

    module = None
    if not a.build_only:
        try:
            if emulate and "emulated module" in build_status and not build_status["emulated module"]:
                module = backends.emulated_module()
            elif not emulate and not build_status.get("gpu module") and "gpu module" in outputs:
                module = backends.load_module(outputs["gpu module"])
                machine["gpu"] = module.device_info()
                log(f"GPU: {machine['gpu']}")
        except Exception as e:  # noqa: BLE001
            build_status["load module"] = f"{type(e).__name__}: {e}"
            log(f"cannot use the module: {e}")
            module = None

    # ---------------------------------------------------------------- cases
    cases_ok = True
    if "cases" in a.skip:
        phases["cases"] = {"status": "skipped: --skip cases"}
    elif module is not None:
        from . import cases as kit_cases

        t = time.monotonic()
        selected = kit_cases.select(kit_cases.all_cases(), a.cases)
        log(f"cases: {len(selected)} on the {module.backend} backend")
        if emulate:
            result["cases"] += run_cases(module, selected, a.inject_error)
            status = "ran"
        else:
            timeout = max(60.0, min(240.0, deadline - time.monotonic() - 200))
            status, gpu_results = gpu_cases_phase(outputs["gpu module"], selected, a.cases, a.inject_error,
                                                  out_dir, timeout)
            result["cases"] += gpu_results
            cases_ok = status == "ran"
        phases["cases"] = {"status": status, "seconds": round(time.monotonic() - t, 1), "count": len(selected)}

    # ------------------------------------------------------------------ FFI
    if a.build_only:
        pass
    elif not jax:
        phases["ffi"] = {"status": "skipped: " + ("--skip ffi" if "ffi" in a.skip else "jax not importable")}
    else:
        platforms = [("cpu", "Host FFI handlers")] + ([] if emulate else [("CUDA", "CUDA FFI handlers")])
        for platform_name, build_name in platforms:
            t = time.monotonic()
            key = f"ffi_{platform_name.lower()}"
            if build_status.get(build_name) or build_name not in outputs:
                phases[key] = {"status": f"skipped: {build_name} did not build"}
                continue
            remaining = deadline - time.monotonic()
            summary, ffi_cases = ffi_phase(platform_name, outputs[build_name], out_dir, a.cases,
                                           max(30.0, min(240.0, remaining - 60)))
            summary["seconds"] = round(time.monotonic() - t, 1)
            result["ffi"][platform_name] = summary
            result["cases"] += ffi_cases
            phases[key] = {"status": summary["status"], "seconds": summary["seconds"],
                           "detail": summary.get("detail")}
            log(f"FFI {platform_name} through jax.jit: {summary}")

    from .torch_check import phase as torch_phase  # the torch.library ops on CUDA, where torch has CUDA
    result["cases"] += torch_phase(a, emulate, out_dir, deadline - time.monotonic(), phases)

    # ------------------------------------------------------ GPU-only phases
    if not emulate and module is not None and not cases_ok:
        phases["sanitizer"] = phases["bench"] = {"status": "skipped: the cases phase did not finish"}
    elif not emulate and module is not None:
        from . import bench, sanitize

        if "sanitizer" in a.skip:
            phases["sanitizer"] = {"status": "skipped: --skip sanitizer"}
        else:
            tool = sanitize.find(nvcc)
            if not tool:
                phases["sanitizer"] = {"status": "skipped: compute-sanitizer not found"}
            else:
                t = time.monotonic()
                reserve = 0 if "bench" in a.skip else 150
                result["sanitizer"] = sanitize.run(tool, outputs["gpu module"], out_dir, deadline - reserve)
                phases["sanitizer"] = {"status": "ran", "seconds": round(time.monotonic() - t, 1)}
        if "bench" in a.skip:
            phases["bench"] = {"status": "skipped: --skip bench"}
        else:
            t = time.monotonic()
            try:
                copy = bench.copy(module)
                result["bench"].append(copy)
                log(f"bench D2D copy: {copy['gbps']:.0f} GB/s")
                sms = machine["gpu"]["multiprocessors"]
                result["bench"] += bench.fused(module, sms, copy["gbps"], deadline - 90)
                for framework in ("jax", "torch"):
                    remaining = deadline - time.monotonic() - 10
                    if remaining < 20:
                        result["bench"].append({"impl": framework, "skipped": "time budget"})
                        continue
                    result["bench"] += bench.framework(framework, copy["gbps"], out_dir, min(150.0, remaining))
                phases["bench"] = {"status": "ran", "seconds": round(time.monotonic() - t, 1)}
            except Exception as e:  # noqa: BLE001 - timings are not verdicts
                phases["bench"] = {"status": f"failed: {type(e).__name__}: {e}"[:500],
                                   "seconds": round(time.monotonic() - t, 1)}
    elif emulate:
        phases["sanitizer"] = {"status": "skipped: GPU only (the emulation has tests/cuda_emu/tsan_driver.cc)"}
        phases["bench"] = {"status": "skipped: GPU only"}

    # --------------------------------------------------------------- report
    result["tensorflow_imported"] = "tensorflow" in sys.modules
    result["seconds"] = round(time.monotonic() - started, 1)
    ok, result["verdict_lines"] = verdict(result, build_status)
    if a.build_only:
        ok = not any(build_status.values())
        result["verdict_lines"] = [f"{'BUILT' if ok else 'BUILD FAILED'}: " + ", ".join(
            f"{k}: {'ok' if not v else 'failed'}" for k, v in build_status.items())] + [
            f"build error ({k}): {v[-1500:]}" for k, v in build_status.items() if v]
    result["passed"] = ok
    json_path, md_path = report.write(result, out_dir)
    report.stdout_report(result)
    log(f"wrote {json_path} and {md_path}")
    return 0 if ok else 1


def main_child_cases(a):
    from . import backends, cases as kit_cases

    module = backends.load_module(a.module)
    selected = kit_cases.select(kit_cases.all_cases(), a.cases, tag=a.tag)
    with open(a.json, "w") as sink:
        results = run_cases(module, selected, a.inject_error, sink)
    print(f"{len(results)} cases, {sum(not r['passed'] for r in results)} failed", flush=True)
    return 0


def main(argv=None):
    a = parse(sys.argv[1:] if argv is None else argv)
    if a.command == "run":
        return main_run(a)
    if a.command == "child-cases":
        return main_child_cases(a)
    if a.command == "child-ffi":
        from . import ffi_check

        return ffi_check.main(a)
    if a.command == "child-bench":
        from . import bench

        return bench.child(a)
    return 2


if __name__ == "__main__":
    sys.exit(main())
