"""Tables, targets and the plot of bench/run.py, from the workers' raw results."""

import collections

IMPL_LABELS = {
    "fused": "fused op",
    "fused_xla": "fused op, XLA",
    "graph": "pure TF, graph",
    "xla": "pure TF, XLA",
    "pairwise": "seed pairwise, graph",
    "peer": "bpmll (PyPI), graph",
    "jax_fused": "JAX fused (ffi)",
    "jax_pure": "JAX pure (jit)",
    "torch_fused": "torch fused (torch.library)",
    "torch_keras": "torch keras.ops forms",
    "torch_seed": "torch seed formula, eager",
    "torch_compile": "torch pure, torch.compile",
}
# The README's table: one row per op and size, one column per implementation.
SUMMARY_LABELS = {
    "fused": "fused",
    "fused_xla": "fused, XLA",
    "graph": "pure TF graph",
    "xla": "pure TF XLA",
    "pairwise": "seed pairwise",
    "peer": "PyPI bpmll",
    "jax_fused": "JAX fused (ffi)",
    "jax_pure": "JAX pure (jit)",
    "torch_fused": "torch fused",
    "torch_keras": "torch keras.ops",
    "torch_seed": "torch seed eager",
    "torch_compile": "torch pure compile",
}
SUMMARY_OPS = {"bpmll": "BP-MLL", "correlation": "Pearson", "ccc": "CCC"}
JAX_FORMS = {
    "bpmll": ("tf_fused_losses._jax_ops.bpmll_loss", "bench/jax_worker.py bpmll_pure (factored, max shifts)"),
    "correlation": ("tf_fused_losses._jax_ops.correlation_loss", "bench/jax_worker.py correlation_pure"),
    "ccc": ("tf_fused_losses._jax_ops.correlation_loss(concordance=True)",
            "bench/jax_worker.py correlation_pure(concordance=True)"),
}
TORCH_FORMS = {
    "bpmll": ("tf_fused_losses._torch_ops.bpmll_loss", "tf_fused_losses._keras_ops.bpmll_loss",
              "bench/torch_worker.py bpmll_seed", "bench/torch_worker.py bpmll_stable (factored, max shifts)"),
    "correlation": ("tf_fused_losses._torch_ops.correlation_loss", "tf_fused_losses._keras_ops.correlation_loss",
                    "bench/torch_worker.py correlation_seed", "bench/torch_worker.py correlation_seed"),
    "ccc": ("tf_fused_losses._torch_ops.correlation_loss(concordance=True)",
            "tf_fused_losses._keras_ops.correlation_loss(concordance=True)",
            "bench/torch_worker.py correlation_seed(concordance=True)",
            "bench/torch_worker.py correlation_seed(concordance=True)"),
}
TORCH_FORMS_IMPLS = ("torch_fused", "torch_keras", "torch_seed", "torch_compile")
OP_TITLES = {
    "bpmll": ("BP-MLL", "tf_fused_losses.bpmll_loss", "L"),
    "correlation": ("Pearson correlation", "tf_fused_losses.correlation_loss", "T"),
    "ccc": ("CCC", "tf_fused_losses.ccc_loss", "T"),
}
SHORT_DTYPES = {"float16": "f16", "bfloat16": "bf16", "float32": "f32", "float64": "f64", "uint8": "u8", "bool": "bool",
                "int32": "i32", "int64": "i64"}
COLUMNS = ("B", "len", "y_pred/y_true", "pass", "implementation", "median ms", "IQR ms", "min-max ms", "ns/elem",
           "GB/s", "% copy", "peak extra MiB", "peak/y_pred", "fused speedup", "others' CPUs")
# A case timed while other processes used more CPUs than this, on average,
# is marked in the summary: its time is likely inflated.
NOISY_OTHERS_CPUS = 0.2


def _key(row):
    return (row["op"], row["batch"], row["length"], row["pred_dtype"], row["label_dtype"], row["mode"])


def derive(results, copy_gbps):
    """Adds per-element time, bandwidth, memory ratio and the fused op's speedup."""
    fused = {_key(r): r for r in results if r["impl"] == "fused" and r["status"] == "ok"}
    rows = []
    for r in results:
        row = dict(r)
        row["elements"] = r["batch"] * r["length"]
        if r["status"] == "ok":
            row["ns_per_element"] = r["median_s"] / row["elements"] * 1e9
            row["gbps"] = r["bytes"] / r["median_s"] / 1e9
            row["copy_fraction"] = row["gbps"] / copy_gbps
            if r["y_pred_bytes"] < r.get("memory_floor_bytes", 0):
                # Too small for the allocator's statistics to see.
                row["peak_extra_bytes"] = None
            peak = row.get("peak_extra_bytes")
            row["peak_over_y_pred"] = None if peak is None else peak / r["y_pred_bytes"]
            base = fused.get(_key(r))
            row["fused_speedup"] = r["median_s"] / base["median_s"] if base and r["impl"] != "fused" else None
        rows.append(row)
    return rows


def _ms(seconds):
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def _pass_label(row):
    if row["mode"] == "fwd":
        return "fwd"
    return f"fwd+bwd [{row['grad_wrt']}]"


def _dtypes(row):
    return f"{SHORT_DTYPES[row['pred_dtype']]}/{SHORT_DTYPES[row['label_dtype']]}"


def _cells(row):
    peak = row.get("peak_extra_bytes")
    speedup = row.get("fused_speedup")
    return [
        str(row["batch"]),
        str(row["length"]),
        _dtypes(row),
        _pass_label(row),
        IMPL_LABELS[row["impl"]],
        _ms(row["median_s"]),
        _ms(row["q3_s"] - row["q1_s"]),
        f"{_ms(row['min_s'])}-{_ms(row['max_s'])}",
        f"{row['ns_per_element']:.3g}",
        f"{row['gbps']:.3g}",
        f"{100 * row['copy_fraction']:.2g}",
        "n/a" if peak is None else f"{peak / 2**20:.3g}",
        "n/a" if peak is None else f"{row['peak_over_y_pred']:.2f}",
        "-" if speedup is None else f"{speedup:.3g}x",
        "?" if row.get("others_cpus") is None else f"{row['others_cpus']:.2f}",
    ]


def _table(rows, length_name):
    header = [length_name if c == "len" else c for c in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cells(row)) + " |")
    return lines


def _not_run(rows):
    """One line per reason, listing the sizes, dtypes and passes it covers."""
    by_reason = collections.OrderedDict()
    for r in rows:
        if r["status"] != "ok":
            what = f"{IMPL_LABELS[r['impl']]} ({r['status']})"
            by_reason.setdefault((what, r["reason"]), []).append(
                f"{r['batch']}x{r['length']} {_dtypes(r)} {r['mode']}")
    return [f"- {what} at {', '.join(cases)}: {reason}" for (what, reason), cases in by_reason.items()]


# --------------------------------------------------------------------------
# The targets
# --------------------------------------------------------------------------


def _find(rows, op, batch, length, mode, impl):
    for r in rows:
        if (r["op"], r["batch"], r["length"], r["mode"], r["impl"]) == (op, batch, length, mode, impl) and (
                r["pred_dtype"], r["label_dtype"]) == ("float32", "float32"):
            return r
    return None


def _speedup_target(rows, op, batch, length, mode, impl, at_least):
    fused = _find(rows, op, batch, length, mode, "fused")
    other = _find(rows, op, batch, length, mode, impl)
    for name, r in (("fused op", fused), (IMPL_LABELS[impl], other)):
        if r is None:
            return None, "not measured in this run"
        if r["status"] != "ok":
            return None, f"{name} {r['status']}: {r['reason']}"
    ratio = other["median_s"] / fused["median_s"]
    return ratio >= at_least, f"{ratio:.3g}x"


def targets(rows):
    """(description, met: True/False/None, measured) for each target of the issue."""
    out = []
    met_speed, speed = _speedup_target(rows, "bpmll", 256, 30000, "fwd+bwd", "xla", 3)
    fused = _find(rows, "bpmll", 256, 30000, "fwd+bwd", "fused")
    if fused is not None and fused["status"] == "ok":
        bandwidth_met = fused["copy_fraction"] >= 0.5
        measured = f"{speed} faster; {100 * fused['copy_fraction']:.0f}% of copy bandwidth"
        met = None if met_speed is None else (met_speed and bandwidth_met)
    else:
        measured, met = speed, None
    out.append(("BP-MLL fwd+bwd, B=256, L=30000, float32: >= 3x faster than XLA factored pure TF, "
                "and >= 50% of copy bandwidth", met, measured))
    for mode in ("fwd+bwd", "fwd"):
        met, measured = _speedup_target(rows, "bpmll", 256, 1000, mode, "pairwise", 300)
        out.append((f"BP-MLL {mode}, B=256, L=1000: >= 300x faster than the seed's pairwise form", met, measured))
    for mode in ("fwd+bwd", "fwd"):
        met, measured = _speedup_target(rows, "bpmll", 256, 18, mode, "graph", 1)
        out.append((f"BP-MLL {mode}, B=256, L=18: no slower than pure-TF factored in graph mode (speedup >= 1)",
                    met, measured))
    xla_fused = _find(rows, "bpmll", 256, 30000, "fwd+bwd", "fused_xla")
    xla_pure = _find(rows, "bpmll", 256, 30000, "fwd+bwd", "xla")
    fused = _find(rows, "bpmll", 256, 30000, "fwd+bwd", "fused")
    if any(r is None or r["status"] != "ok" for r in (xla_fused, xla_pure, fused)):
        met, measured = None, "not measured in this run"
    else:
        speedup = xla_pure["median_s"] / xla_fused["median_s"]
        overhead = xla_fused["median_s"] / fused["median_s"] - 1
        met = speedup >= 3 and overhead <= 0.10
        measured = f"{speedup:.3g}x pure TF in XLA; {100 * overhead:+.0f}% against the fused op outside XLA"
    out.append(("BP-MLL fwd+bwd, B=256, L=30000, float32, under jit_compile: the fused custom calls >= 3x faster "
                "than the pure form in XLA, and within 10% of the fused op outside XLA", met, measured))
    met, measured = _speedup_target(rows, "correlation", 64, 100000, "fwd+bwd", "xla", 3)
    out.append(("Correlation fwd+bwd, B=64, T=100000: >= 3x faster than the XLA-compiled seed formula", met, measured))
    fused = _find(rows, "bpmll", 64, 200000, "fwd+bwd", "fused")
    if fused is None:
        met, measured = None, "not measured in this run"
    elif fused["status"] != "ok":
        met, measured = None, f"fused op {fused['status']}: {fused['reason']}"
    elif fused.get("peak_extra_bytes") is None:
        met, measured = None, "no memory statistics on this machine"
    else:
        met = fused["peak_over_y_pred"] <= 3
        measured = f"{fused['peak_over_y_pred']:.2f}x y_pred ({fused['peak_extra_bytes'] / 2**20:.0f} MiB)"
    out.append(("Peak extra memory of a BP-MLL fwd+bwd step at B=64, L=200000: <= 3x the size of y_pred", met, measured))
    out += _torch_targets(rows)
    return out


def _torch_targets(rows):
    """Issue 20's: at BP-MLL 256x30000 fwd+bwd, float32, the fused torch op
    >= 3x torch.compile of the stable pure form, and within 15% of the TF
    fused op of the same run. Left out where the run has no torch column."""
    torch_fused = _find(rows, "bpmll", 256, 30000, "fwd+bwd", "torch_fused")
    if torch_fused is None:
        return []
    out = []
    compiled = _find(rows, "bpmll", 256, 30000, "fwd+bwd", "torch_compile")
    tf_fused = _find(rows, "bpmll", 256, 30000, "fwd+bwd", "fused")
    for other, description, check in (
        (compiled, ">= 3x faster than torch.compile of the stable pure form", lambda ratio: ratio >= 3),
        (tf_fused, "within 15% of the TF fused op", lambda ratio: ratio >= 1 / 1.15),
    ):
        pair = [("torch fused", torch_fused), ("the other column", other)]
        missing = next((f"{name}: {'not measured' if r is None else r['status']}" for name, r in pair
                        if r is None or r["status"] != "ok"), None)
        if missing:
            met, measured = None, missing
        else:
            ratio = other["median_s"] / torch_fused["median_s"]
            met, measured = check(ratio), f"{ratio:.3g}x ({_ms(torch_fused['median_s'])} vs {_ms(other['median_s'])} ms)"
        out.append((f"BP-MLL fwd+bwd, B=256, L=30000, float32, torch fused: {description}", met, measured))
    return out


# --------------------------------------------------------------------------
# Summary: the README's table
# --------------------------------------------------------------------------


def _summary_ms(seconds):
    ms = seconds * 1e3
    return f"{ms:.0f}" if ms >= 100 else f"{ms:#.3g}"


def _bytes_text(n):
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= size:
            return f"{n / size:.2g} {unit}"
    return f"{n:.0f} bytes"


def _summary_cell(row):
    if row is None:
        return ""
    if row["status"] == "ok":
        noisy = (row.get("others_cpus") or 0) > NOISY_OTHERS_CPUS
        return _summary_ms(row["median_s"]) + (" \u2020" if noisy else "")
    if row["impl"] in ("pairwise", "peer") and "--pairwise-limit-gb" in row.get("reason", ""):
        return "needs " + _bytes_text(row["batch"] * row["length"] * row["length"] * 8)
    return row["status"]


def summary(rows):
    """The README-style table: float32 y_pred and y_true, forward + backward
    (forward only where the run has no fwd+bwd), median ms; one row per op
    and size, one column per implementation the run planned. Returns
    {"mode", "columns": [impl], "labels": [header], "rows": [{"case", "op",
    "batch", "length", "cells": {impl: text}, "median_ms": {impl: ms}}]}, or
    None when there is nothing to show."""
    base = [r for r in rows if (r["pred_dtype"], r["label_dtype"]) == ("float32", "float32")]
    modes = {r["mode"] for r in base}
    if not modes:
        return None
    mode = "fwd+bwd" if "fwd+bwd" in modes else "fwd"
    base = [r for r in base if r["mode"] == mode]
    impls = [i for i in IMPL_LABELS if any(r["impl"] == i for r in base)]
    cases = collections.OrderedDict()
    for r in base:
        cases.setdefault((r["op"], r["batch"], r["length"]), {})[r["impl"]] = r
    out_rows = []
    for op in SUMMARY_OPS:
        for (row_op, batch, length), by_impl in cases.items():
            if row_op != op:
                continue
            name = f"{SUMMARY_OPS[op]} {batch}\u00d7{length}"
            grads = {r.get("grad_wrt") for r in by_impl.values() if r["status"] == "ok"}
            if op != "bpmll" and mode == "fwd+bwd" and len(grads) == 1:
                name += " (both grads)" if grads == {"y_true, y_pred"} else " (y_pred grad)"
            out_rows.append({
                "case": name, "op": op, "batch": batch, "length": length,
                "cells": {i: _summary_cell(by_impl.get(i)) for i in impls},
                "median_ms": {i: by_impl[i]["median_s"] * 1e3 for i in impls
                              if i in by_impl and by_impl[i]["status"] == "ok"},
            })
    return {"mode": mode, "columns": impls, "labels": [SUMMARY_LABELS[i] for i in impls], "rows": out_rows}


def summary_markdown(table):
    lines = ["| case | " + " | ".join(table["labels"]) + " |", "|---" * (len(table["labels"]) + 1) + "|"]
    for row in table["rows"]:
        lines.append("| " + " | ".join([row["case"]] + [row["cells"][i] for i in table["columns"]]) + " |")
    return lines


# --------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------


def markdown(meta, rows):
    copy = meta["copy_bandwidth"]
    machine = meta["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Machine: {machine.get('cpu', 'unknown CPU')}, {machine.get('nproc')} CPUs, "
        f"{machine.get('memory_gib', '?')} GiB; TensorFlow {meta['tensorflow']} "
        f"({meta['intra_op_threads']} intra-op threads, oneDNN {meta['onednn']}), "
        f"tf_fused_losses {meta['tf_fused_losses']}.",
        "",
        f"Copy bandwidth ({copy['megabytes']} MiB array, read + write bytes, best of 5): numpy copy "
        f"{copy['numpy_copy_gbps']:.3g} GB/s, TF negation {copy['tf_negate_gbps']:.3g} GB/s; "
        f"'% copy' is against {copy['reference_gbps']:.3g} GB/s.",
        "",
        f"Peak memory: {_memory_method(rows)}.",
    ]
    load = meta.get("load_average") or {}
    if load.get("start") and load.get("end"):
        lines += ["", "Load average (1, 5, 15 min) at the start: " + ", ".join(map(str, load["start"]))
                  + "; at the end: " + ", ".join(map(str, load["end"])) + f" ({machine.get('nproc')} CPUs)."]
    if meta.get("jax"):
        lines += ["", _jax_line(meta["jax"])]
    if meta.get("torch"):
        lines += ["", _torch_line(meta["torch"])]
    table = summary(rows)
    if table is not None and table["rows"]:
        what = "forward + backward (the gradient of the loss's mean)" if table["mode"] == "fwd+bwd" else "forward"
        lines += ["", "## Summary", "",
                  f"{what[0].upper() + what[1:]}, float32, median ms; the tables below have the spread, bandwidth "
                  f"and memory of each.", ""]
        lines += summary_markdown(table)
        if any("\u2020" in cell for row in table["rows"] for cell in row["cells"].values()):
            lines += ["", f"\u2020 Other processes used more than {NOISY_OTHERS_CPUS:g} CPUs on average while this "
                          f"case was timed (the full tables' last column): its time is likely inflated."]
    for op in ("bpmll", "correlation", "ccc"):
        op_rows = [r for r in rows if r["op"] == op]
        if not op_rows:
            continue
        title, function, length_name = OP_TITLES[op]
        lines += ["", f"## {title}", ""]
        line = f"Fused: `{function}`; pure TF: `{meta['reference'][op]}`"
        if any(r["impl"] in ("jax_fused", "jax_pure") for r in op_rows):
            line += f"; JAX fused: `{JAX_FORMS[op][0]}` under `jax.jit`; JAX pure: `{JAX_FORMS[op][1]}` under `jax.jit`"
        if any(r["impl"] in TORCH_FORMS_IMPLS for r in op_rows):
            fused, keras, seed, pure = TORCH_FORMS[op]
            line += (f"; torch fused: `{fused}`; torch keras.ops: `{keras}`; torch seed: `{seed}` (eager); "
                     f"torch pure: `{pure}` under `torch.compile`")
        lines.append(line + ".")
        lines.append("")
        lines += _table([r for r in op_rows if r["status"] == "ok"], length_name)
        missing = _not_run(op_rows)
        if missing:
            lines += ["", "Not run:", ""] + missing
    lines += ["", "## Targets", ""]
    for description, met, measured in targets(rows):
        box = {True: "[x]", False: "[ ]", None: "[ ]"}[met]
        verdict = {True: "met: ", False: "NOT met: ", None: ""}[met]
        lines.append(f"- {box} {description} - {verdict}{measured}")
    if meta.get("notes"):
        lines += ["", "Notes:", ""] + [f"- {note}" for note in meta["notes"]]
    return "\n".join(lines) + "\n"


MEMORY_METHODS = {
    "tf-allocator": ("TF's CPU allocator statistics (peak during one call minus bytes in use before it, "
                     "tf.config.experimental.get_memory_info); they miss allocations under 256 KiB, so cases whose "
                     "y_pred is smaller read n/a"),
    "vmhwm": "the process's peak resident size during one call minus its resident size before it (VmHWM)",
    "xla-buffer-assignment": ("XLA's buffer assignment of the compiled step, temporaries plus outputs "
                              "(compiled.memory_analysis()): planned, not measured, since jaxlib's CPU client keeps "
                              "no allocator statistics; allocations inside the custom calls' handlers are not in it"),
    "torch-none": "not measured (torch keeps no statistics of its CPU allocator)",
}


def _memory_method(rows):
    methods = sorted({str(r.get("memory_method")) for r in rows if r["status"] == "ok"},
                     key=lambda m: list(MEMORY_METHODS).index(m) if m in MEMORY_METHODS else len(MEMORY_METHODS))
    if len(methods) == 1:
        return MEMORY_METHODS.get(methods[0], "method " + methods[0])
    parts = []
    for m in methods:
        who = {"xla-buffer-assignment": "the JAX rows", "torch-none": "the torch rows"}.get(m, "the TF rows")
        parts.append(f"for {who}, {MEMORY_METHODS.get(m, 'method ' + m)}")
    return "; ".join(parts)


def _jax_line(jax):
    if jax.get("error"):
        return f"JAX: {jax['error']}"
    text = (f"JAX {jax['jax']} (jaxlib {jax['jaxlib']}, Python {jax['python_version']}, {jax['python']}, "
            f"devices {', '.join(jax['devices'])}), in its own worker process; package `{jax.get('package', '?')}`")
    if jax.get("load"):
        load = jax["load"]
        text += f", handlers from `{load['library']}` (FFI API {load['library_ffi_api']} on {load['jaxlib_ffi_api']})"
    elif jax.get("load_error"):
        text += f"; the handler library did not load: {jax['load_error'].rstrip('.')}"
    return text + _self_check_text(jax, ("jax_pure", "jax_fused"))


def _torch_line(torch):
    if torch.get("error"):
        return f"torch: {torch['error']}"
    text = (f"torch {torch['torch']} (Python {torch['python_version']}, {torch['python']}, {torch['threads']} "
            f"threads), in its own worker process; package `{torch.get('package', '?')}`")
    if torch.get("load"):
        text += f", C entry points from `{torch['load']['library']}` ({', '.join(torch['load']['platforms'])})"
    elif torch.get("load_error"):
        text += f"; the C entry points did not load: {torch['load_error'].rstrip('.')}"
    return text + _self_check_text(torch, TORCH_FORMS_IMPLS)


def _self_check_text(meta, impls):
    """The verdicts of a worker's self-check (bench/harness.py), then the
    full stop."""
    check = meta.get("self_check") or {}
    if check.get("reason"):
        return f". Self-check not run: {check['reason']}."
    verdicts = []
    for impl in impls:
        ops = check.get(impl, {})
        ran = {op: c for op, c in ops.items() if c.get("ok") is not None}
        if not ran:
            continue
        worst = max(max(c["max_rel_err"].values()) for c in ran.values())
        state = "passed" if all(c["ok"] for c in ran.values()) else "FAILED"
        verdicts.append(f"{IMPL_LABELS[impl]} {state} (largest error {worst:.2g} of each array's largest "
                        f"element, tolerance {meta.get('self_check_rtol', 0):g})")
    if not verdicts:
        return "."
    return (". Self-check of fwd+bwd against tests/helpers/numpy_reference.py (float64) on a 5-row case: "
            + "; ".join(verdicts) + ".")


# --------------------------------------------------------------------------
# Plot
# --------------------------------------------------------------------------


def plot(plt, rows, path):
    """Time per element against the row length, log-log: one panel per op and pass."""
    ok = [r for r in rows if r["status"] == "ok"]
    ops = [op for op in ("bpmll", "correlation", "ccc") if any(r["op"] == op for r in ok)]
    modes = [m for m in ("fwd", "fwd+bwd") if any(r["mode"] == m for r in ok)]
    if not ops or not modes:
        return
    figure, axes = plt.subplots(len(modes), len(ops), figsize=(5 * len(ops), 4 * len(modes)), squeeze=False)
    for col, op in enumerate(ops):
        title, _, length_name = OP_TITLES[op]
        for line_row, mode in enumerate(modes):
            ax = axes[line_row][col]
            lines = collections.OrderedDict()
            for r in ok:
                if r["op"] != op or r["mode"] != mode:
                    continue
                label = IMPL_LABELS[r["impl"]]
                if (r["pred_dtype"], r["label_dtype"]) != ("float32", "float32"):
                    label += f" {_dtypes(r)}"
                lines.setdefault(label, []).append((r["length"], r["ns_per_element"], r["impl"]))
            for label, points in lines.items():
                points.sort()
                style = "-" if label == IMPL_LABELS[points[0][2]] else ":"
                ax.plot([p[0] for p in points], [p[1] for p in points], style, marker="o", markersize=3, label=label)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(f"{length_name} (batch differs by size, see the table)")
            ax.set_ylabel("ns per element")
            ax.set_title(f"{title}, {mode}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
