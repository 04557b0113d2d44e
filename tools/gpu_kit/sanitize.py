"""compute-sanitizer over the kit's reduced case set (tag "sanitize": every
launch shape of every op, masks, aliasing, misaligned arrays), on a GPU.

Each tool runs `python -m gpu_kit child-cases` on the built GPU module in its
own process. A tool that refuses the machine (no support for the device or
driver, no permission) is recorded as refused, not as a failure; errors it
reports are failures. Logs (trimmed) are kept beside gpu_check.json.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time

from . import ROOT, log

TOOLS = [
    ("memcheck", ["--tool", "memcheck", "--leak-check", "no"]),
    ("racecheck", ["--tool", "racecheck", "--racecheck-report", "all"]),
    ("synccheck", ["--tool", "synccheck"]),
    ("initcheck", ["--tool", "initcheck"]),
]
ERROR_EXIT = 86
LOG_LIMIT = 2 << 20


def find(nvcc=None):
    candidates = [os.environ.get("COMPUTE_SANITIZER"), shutil.which("compute-sanitizer")]
    if nvcc:
        home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        candidates += [os.path.join(home, "bin", "compute-sanitizer"),
                       os.path.join(home, "compute-sanitizer", "compute-sanitizer")]
    candidates.append("/usr/local/cuda/bin/compute-sanitizer")
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def _summary(tool, text):
    """(errors, detail) from the tool's summary line; errors None when there is none."""
    if tool == "racecheck":
        m = re.search(r"RACECHECK SUMMARY: (\d+) hazards? displayed \((\d+) errors?, (\d+) warnings?\)", text)
        if m:
            return int(m.group(2)), m.group(0)
    m = re.search(r"ERROR SUMMARY: (\d+) errors?", text)
    if m:
        return int(m.group(1)), m.group(0)
    return None, None


def run(sanitizer, module_path, out_dir, deadline, tools=None):
    results = []
    chosen = [(tool, options) for tool, options in TOOLS if not tools or tool in tools]
    for index, (tool, options) in enumerate(chosen):
        # An equal share of what is left, so that one slow tool cannot starve the others.
        remaining = (deadline - time.monotonic()) / (len(chosen) - index)
        if remaining < 20:
            results.append({"tool": tool, "status": "skipped", "detail": "time budget"})
            continue
        cases_json = os.path.join(out_dir, f"sanitizer_{tool}_cases.json")
        command = [sanitizer, *options, "--error-exitcode", str(ERROR_EXIT), "--print-limit", "50",
                   sys.executable, "-m", "gpu_kit", "child-cases", "--module", module_path, "--tag", "sanitize",
                   "--json", cases_json]
        started = time.monotonic()
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=remaining,
                                  cwd=os.path.join(ROOT, "tools"))
            text, code = proc.stdout + proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as e:
            text = ((e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or ""))
            text += "\n(timed out)"
            code = None
        seconds = time.monotonic() - started
        log_path = os.path.join(out_dir, f"sanitizer_{tool}.log")
        with open(log_path, "w") as f:
            f.write(text[-LOG_LIMIT:])
        errors, detail = _summary(tool, text)
        cases = None
        if os.path.exists(cases_json):
            with open(cases_json) as f:
                cases = [json.loads(line) for line in f if line.strip()]
            os.remove(cases_json)
        entry = {"tool": tool, "exit_code": code, "errors": errors, "seconds": round(seconds, 1),
                 "cases": len(cases) if cases else 0,
                 "cases_failed": sum(not c["passed"] for c in cases) if cases else None,
                 "launch_shapes": sorted({c["launch"] for c in cases if c.get("launch")}) if cases else [],
                 "log": os.path.basename(log_path), "detail": detail}
        if code is None:
            entry["status"] = "timed out"
        elif errors is None or (cases is None and code not in (0, ERROR_EXIT)):
            # No summary: the tool did not get to run the program (unsupported
            # device or driver, no permission, ...).
            entry["status"] = "refused"
            entry["detail"] = " | ".join(text.strip().splitlines()[-4:])[-800:]
        elif errors == 0 and code == 0:
            entry["status"] = "clean"
        elif errors == 0:
            entry["status"] = "program failed"
            entry["detail"] = " | ".join(text.strip().splitlines()[-4:])[-800:]
        else:
            entry["status"] = "errors"
        results.append(entry)
        log(f"compute-sanitizer {tool}: {entry['status']} ({entry.get('detail')}) in {seconds:.0f} s")
    return results
