"""Benchmark CSV rows -> markdown tables (one file per device). The CSV is the record;
the tables and plots are made from it, so they never disagree."""

import csv
import os
import re
from collections import OrderedDict

FIELDS = ["op", "mode", "backend", "dtype", "layout", "shape", "k", "activation", "median_ms", "p20_ms",
          "p80_ms", "gbps", "frac_copy", "copy_gbps", "peak_mem_bytes", "saved_for_backward_bytes", "device",
          "torch", "triton", "commit", "date", "gflops", "frac_sgemm", "sgemm_gflops"]
BASELINES = ("eager", "compile", "compile-max-autotune")


def device_slug(device: str) -> str:
    """'NVIDIA H200' -> 'nvidia_h200', 'Intel(R) Xeon(R) Processor (2 threads, ...)' ->
    'intel_xeon_processor': the results file name of a device (trademark signs and the
    text in parentheses after the name, a CPU's thread count and level, left out)."""
    name = re.sub(r"\((R|TM)\)", "", device, flags=re.IGNORECASE).split(" (")[0]
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def append_rows(path, rows, fields=FIELDS):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        if new:
            writer.writeheader()
        writer.writerows(rows)


def read_latest(path):
    """The last row for each (mode, backend, dtype, layout, shape, k, activation)."""
    latest = OrderedDict()
    for row in read_rows(path):
        key = (row["mode"], row["backend"], row["dtype"], row["layout"], row["shape"], row["k"], row["activation"])
        latest[key] = row
    return list(latest.values())


def write_markdown(csv_path):
    rows = read_latest(csv_path)
    groups = OrderedDict()
    for row in rows:
        groups.setdefault((row["mode"], row["dtype"], row["shape"], row["k"], row["activation"]), []).append(row)
    sgemm = rows[0].get("sgemm_gflops")
    compute = f", float32 sgemm {sgemm} GFLOP/s" if sgemm else ""
    lines = [f"# mixer block benchmark: {rows[0]['device']}", "",
             f"torch {rows[0]['torch']}, commit {rows[0]['commit']}, {rows[0]['date']}; copy bandwidth "
             f"{rows[0]['copy_gbps']} GB/s{compute}. Median ms of repeated runs after warm-up (p20-p80). "
             "`vs eager` / `vs compile`: speed-up over the faster layout of eager / of torch.compile "
             "(either mode). GB/s counts compulsory traffic (eval: read x, write y; train: also read dy, "
             "write dx). GFLOP/s counts the depthwise convolutions' multiply-adds (training: forward, input "
             "and weight gradients); `of sgemm` divides it by a float32 matmul's rate in the same run.", ""]
    for (mode, dtype, shape, k, act), group in groups.items():
        best = {}
        for base in ("eager", "compile"):
            times = [float(r["median_ms"]) for r in group if r["backend"].startswith(base)]
            best[base] = min(times) if times else None
        lines += [f"## {mode}, {dtype}, {shape}, k={k}, {act}", "",
                  "| backend | layout | median ms | p20-p80 | GB/s | of copy | GFLOP/s | of sgemm | vs eager | vs compile "
                  "| saved for bwd MB | peak MB |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in group:
            ms = float(r["median_ms"])
            ratio = {b: (f"{best[b] / ms:.2f}x" if best[b] else "") for b in best}
            saved = f"{int(r['saved_for_backward_bytes']) / 2**20:.1f}" if r["saved_for_backward_bytes"] else ""
            peak = f"{int(r['peak_mem_bytes']) / 2**20:.0f}" if r["peak_mem_bytes"] else ""
            lines.append(f"| {r['backend']} | {r['layout']} | {ms:.3f} | {float(r['p20_ms']):.3f}-{float(r['p80_ms']):.3f} "
                         f"| {r['gbps']} | {r['frac_copy']} | {r.get('gflops') or ''} | {r.get('frac_sgemm') or ''} | {ratio['eager']} | {ratio['compile']} | {saved} | {peak} |")
        lines.append("")
    md_path = os.path.splitext(csv_path)[0] + ".md"
    with open(md_path, "w") as f:
        f.write("\n".join(lines))
    return md_path
