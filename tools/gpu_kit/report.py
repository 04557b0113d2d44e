"""The kit's outputs: a table on stdout, gpu_check.json and gpu_check.md."""

import collections
import json
import os


def _fmt(x, digits=3):
    if x is None:
        return "—"
    if isinstance(x, float):
        if x == 0:
            return "0"
        return f"{x:.{digits}g}"
    return str(x)


def _shape(shape):
    return "×".join(str(s) for s in shape) if shape else "—"


def case_table(cases):
    lines = [f"{'case':<72} {'backend':<12} {'launch':<14} {'max_abs':>9} {'max_rel':>9}  result"]
    for c in cases:
        lines.append(f"{c['name']:<72} {c['backend']:<12} {c['launch'] or '—':<14} {_fmt(c['max_abs_err']):>9} "
                     f"{_fmt(c['max_rel_err']):>9}  {'ok' if c['passed'] else 'FAIL'}")
    return "\n".join(lines)


def summary_rows(cases):
    """(backend, op, dtype) -> [cases, failed, worst max_rel_err, launch shapes]."""
    groups = collections.OrderedDict()
    for c in cases:
        key = (c["backend"], c["op"], c["dtype"])
        g = groups.setdefault(key, [0, 0, 0.0, set()])
        g[0] += 1
        g[1] += not c["passed"]
        g[2] = max(g[2], c["max_rel_err"] or 0.0)
        if c.get("launch"):
            g[3].add(c["launch"])
    return groups


def bench_table(bench):
    lines = [f"{'impl':<16} {'kernel':<40} {'shape':<14} {'launch':<14} {'ms':>9} {'GB/s':>8} {'of copy':>8}"]
    for b in bench:
        if b.get("skipped"):
            lines.append(f"{b.get('impl', '?'):<16} {b.get('kernel', '') or '':<40} {_shape(b.get('shape')):<14} "
                         f"skipped: {b['skipped']}")
            continue
        frac = b.get("fraction_of_copy")
        lines.append(f"{b['impl']:<16} {b['kernel'] + (' ' + b['loss'] if b.get('loss') else ''):<40} "
                     f"{_shape(b['shape']):<14} {b.get('launch') or '—':<14} {_fmt(b['ms_median'], 4):>9} "
                     f"{_fmt(b['gbps'], 4):>8} {(f'{100 * frac:.0f}%' if frac else '—'):>8}")
    return "\n".join(lines)


def stdout_report(result):
    print()
    print(case_table(result["cases"]))
    print()
    print("Summary by backend, op and dtype:")
    for (backend, op, dtype), (n, failed, worst, launches) in summary_rows(result["cases"]).items():
        print(f"  {backend:<12} {op:<18} {dtype:<9} {n:>4} cases, {failed} failed, worst row-scaled error "
              f"{_fmt(worst)}, launches: {', '.join(sorted(launches)) or '—'}")
    if result.get("sanitizer"):
        print("\ncompute-sanitizer:")
        for s in result["sanitizer"]:
            print(f"  {s['tool']:<10} {s['status']:<14} {s.get('detail') or ''}")
    if result.get("bench"):
        print("\nBenchmarks (median of runs):")
        print(bench_table(result["bench"]))
    print()
    for line in result["verdict_lines"]:
        print(line)


def markdown(result):
    m = result["machine"]
    out = [f"# GPU check: {result['mode']}", ""]
    out.append(f"- date: {result['date']}")
    out.append(f"- commit: `{result['commit']}` (sources digest `{result['source_digest']}`)")
    out.append(f"- machine: {m.get('hostname')}, {m.get('cpus')} CPUs, Python {m.get('python')}, "
               f"numpy {m.get('numpy')}")
    if m.get("gpu"):
        g = m["gpu"]
        out.append(f"- GPU: {g.get('name')} (sm_{str(g.get('compute_capability', '')).replace('.', '')}, "
                   f"{g.get('multiprocessors')} SMs, L2 {(g.get('l2_cache_bytes') or 0) >> 20} MiB), "
                   f"driver {m.get('driver')}, CUDA runtime {g.get('cuda_runtime_version')}")
    if m.get("nvcc"):
        out.append(f"- nvcc: {m['nvcc']}; arch built: {m.get('arch') or '—'}")
    out.append(f"- jax: {m.get('jax') or 'not importable'}; TensorFlow imported by the kit: "
               f"{result['tensorflow_imported']}")
    out.append(f"- wall time: {result['seconds']:.0f} s")
    out.append("")
    out += [f"**{line}**" if i == 0 else line for i, line in enumerate(result["verdict_lines"])]
    out.append("")
    out.append("## Phases")
    out.append("")
    out.append("| phase | status | seconds |")
    out.append("|---|---|---|")
    for name, p in result["phases"].items():
        out.append(f"| {name} | {p.get('status')} | {_fmt(p.get('seconds'))} |")
    out.append("")
    failures = [c for c in result["cases"] if not c["passed"]]
    if failures:
        out.append("## Failures")
        out.append("")
        for c in failures:
            out.append(f"- `{c['name']}` ({c['backend']}, {c['inputs']}):")
            for p in c["problems"][:4]:
                out.append(f"  - `{p.strip().splitlines()[-1][:300] if p.strip() else p}`")
        out.append("")
    out.append("## Cases by backend, op and dtype")
    out.append("")
    out.append("| backend | op | dtype | cases | failed | worst row-scaled error | launch shapes |")
    out.append("|---|---|---|---|---|---|---|")
    for (backend, op, dtype), (n, failed, worst, launches) in summary_rows(result["cases"]).items():
        out.append(f"| {backend} | {op} | {dtype} | {n} | {failed} | {_fmt(worst)} | "
                   f"{', '.join(sorted(launches)) or '—'} |")
    out.append("")
    out.append("Errors are |result − float64 reference| divided by the largest |reference| of the row "
               "(tolerances: float16 2e-3, bfloat16 1.6e-2, float32 2e-5, float64 1e-11); NaN and ±inf must sit "
               "exactly where the reference has them; every case runs twice and must give equal bits.")
    out.append("")
    if result.get("sanitizer"):
        out.append("## compute-sanitizer")
        out.append("")
        out.append("| tool | status | errors | cases (failed) | launch shapes | seconds | summary |")
        out.append("|---|---|---|---|---|---|---|")
        for s in result["sanitizer"]:
            out.append(f"| {s['tool']} | {s['status']} | {_fmt(s.get('errors'))} | {s.get('cases', 0)} "
                       f"({_fmt(s.get('cases_failed'))}) | {', '.join(s.get('launch_shapes') or []) or '—'} | "
                       f"{_fmt(s.get('seconds'))} | {(s.get('detail') or '').replace('|', '/')} |")
        out.append("")
    if result.get("bench"):
        out.append("## Benchmarks")
        out.append("")
        out.append("float32; median of runs after warm-up; GB/s count the bytes each kernel must move (a step: "
                   "the fused minimum, the same for every implementation).")
        out.append("")
        out.append("| impl | kernel | loss | shape | launch | ms | GB/s | of D2D copy |")
        out.append("|---|---|---|---|---|---|---|---|")
        for b in result["bench"]:
            if b.get("skipped"):
                out.append(f"| {b.get('impl')} | {b.get('kernel', '')} | {b.get('loss') or ''} | "
                           f"{_shape(b.get('shape'))} | | skipped: {b['skipped']} | | |")
                continue
            frac = b.get("fraction_of_copy")
            out.append(f"| {b['impl']} | {b['kernel']} | {b.get('loss') or ''} | {_shape(b['shape'])} | "
                       f"{b.get('launch') or ''} | {_fmt(b['ms_median'], 4)} | {_fmt(b['gbps'], 4)} | "
                       f"{f'{100 * frac:.0f}%' if frac else ''} |")
        out.append("")
    out.append("<details><summary>Every case</summary>")
    out.append("")
    out.append("| case | backend | inputs | launch | max abs err | max rel err | result |")
    out.append("|---|---|---|---|---|---|---|")
    for c in result["cases"]:
        out.append(f"| `{c['name']}` | {c['backend']} | {c['inputs']} | {c['launch'] or '—'} | "
                   f"{_fmt(c['max_abs_err'])} | {_fmt(c['max_rel_err'])} | {'ok' if c['passed'] else '**FAIL**'} |")
    out.append("")
    out.append("</details>")
    out.append("")
    return "\n".join(out)


def write(result, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, "gpu_check.json")
    md_path = os.path.join(out_dir, "gpu_check.md")
    with open(json_path, "w") as f:
        json.dump(result, f, indent=1, default=str)
    with open(md_path, "w") as f:
        f.write(markdown(result))
    return json_path, md_path
