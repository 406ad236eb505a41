"""Model benchmark CSV rows (benchmarks/bench_model.py) -> a markdown table and PNG bar
charts. The CSV is the record; table and plots are rebuilt from it, so they agree."""

import csv
import os
from collections import OrderedDict

import results_table

FIELDS = ["model", "mode", "contender", "dtype", "batch", "image", "median_ms", "p20_ms", "p80_ms",
          "images_per_s", "first_call_s", "memory_bytes", "memory_kind", "repeats", "note", "device",
          "torch", "triton", "commit", "date"]


def append_rows(path, rows):
    results_table.append_rows(path, rows, FIELDS)


def read_latest(path):
    """The last row of each (model, mode, contender, dtype, batch, image)."""
    latest = OrderedDict()
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            latest[(row["model"], row["mode"], row["contender"], row["dtype"], row["batch"], row["image"])] = row
    return list(latest.values())


def _groups(rows):
    groups = OrderedDict()
    for row in rows:
        groups.setdefault((row["model"], row["mode"], row["dtype"], row["batch"], row["image"]), []).append(row)
    return groups


def speedups(group):
    """contender -> (speed-up over the faster eager layout, over compile) or None each."""
    def best(names):
        times = [float(r["median_ms"]) for r in group if r["contender"] in names]
        return min(times) if times else None

    eager, compiled = best(("eager_nchw", "eager_channels_last")), best(("compile",))
    ms = {r["contender"]: float(r["median_ms"]) for r in group}
    return {c: (eager / t if eager else None, compiled / t if compiled else None) for c, t in ms.items()}


def write_markdown(csv_path):
    rows = read_latest(csv_path)
    notes = sorted({r["note"] for r in rows if r["note"]})
    lines = [f"# ConvMixer model benchmark: {rows[0]['device']}", "",
             f"torch {rows[0]['torch']}, commit {rows[0]['commit']}, {rows[0]['date']}. Images/s from the median "
             "step time after warm-up (p20-p80 in ms). eval: one forward under no_grad; train: forward, "
             "cross-entropy, backward and an SGD step. `vs eager`: speed-up over the faster eager layout; "
             "`vs compile`: over torch.compile of the eager channels_last model. bfloat16 rows run under "
             "autocast. Memory: a GPU's peak allocated in a step; on a CPU the bytes saved for backward."]
    if notes:
        lines += ["", "**Measured under: " + "; ".join(notes) + ".**"]
    lines.append("")
    for (model, mode, dtype, batch, image), group in _groups(rows).items():
        ratio = speedups(group)
        lines += [f"## {model}, {mode}, {dtype}, batch {batch}, {image}x{image}", "",
                  "| contender | images/s | median ms | p20-p80 | vs eager | vs compile | memory MB | first call s |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in group:
            eager, compiled = ratio[r["contender"]]
            mem = f"{int(r['memory_bytes']) / 2**20:.0f} ({r['memory_kind']})" if r["memory_bytes"] else ""
            lines.append(f"| {r['contender']} | {float(r['images_per_s']):.1f} | {float(r['median_ms']):.1f} "
                         f"| {float(r['p20_ms']):.1f}-{float(r['p80_ms']):.1f} "
                         f"| {f'{eager:.2f}x' if eager else ''} | {f'{compiled:.2f}x' if compiled else ''} "
                         f"| {mem} | {r['first_call_s']} |")
        lines.append("")
    md_path = os.path.splitext(csv_path)[0] + ".md"
    with open(md_path, "w") as f:
        f.write("\n".join(lines))
    return md_path


def plot(csv_path):
    """One PNG per mode: bars per (model, dtype) and contender, height = speed-up over the
    faster eager layout. [] where matplotlib is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return []
    from plot_results import speedup_bars

    rows = read_latest(csv_path)
    written = []
    for mode in OrderedDict.fromkeys(r["mode"] for r in rows):
        groups = OrderedDict((key, g) for key, g in _groups(rows).items() if key[1] == mode)
        contenders = OrderedDict.fromkeys(r["contender"] for g in groups.values() for r in g)
        labels = [f"{model}\n{dtype} b{batch}" for model, _, dtype, batch, _ in groups]
        series = OrderedDict((c, [(speedups(g).get(c) or (0.0,))[0] or 0.0 for g in groups.values()])
                             for c in contenders)
        out = os.path.splitext(csv_path)[0] + f"_{mode}.png"
        written.append(speedup_bars(labels, series, f"ConvMixer {mode}: {rows[0]['device']}", out, label_size=7))
    return written
