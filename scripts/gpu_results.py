"""Files the benchmark CSV a GPU run returned (gpu_check.sh's bench.csv) into the repository:

    python scripts/gpu_results.py /path/to/bench.csv [more.csv ...]

Appends its rows to benchmarks/results/<device>.csv (one file per device named in the
rows), rebuilds that device's markdown table and PNG plots from the whole CSV, and merges
the cuda/triton timings into the table `backend="auto"` reads
(convmixer_kernels/data/auto_select.json). Prints what it wrote.
"""

import argparse
import os
import sys
from collections import OrderedDict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
sys.path.insert(0, ROOT)

from plot_results import plot  # noqa: E402
from results_table import FIELDS, append_rows, device_slug, read_rows, write_markdown  # noqa: E402


def load(paths):
    """The rows of every CSV, checked to be benchmark rows."""
    rows = []
    for path in paths:
        found = read_rows(path)
        if not found:
            raise SystemExit(f"{path}: no benchmark rows (did the bench stage run?)")
        missing = [f for f in ("mode", "backend", "dtype", "layout", "shape", "k", "median_ms", "device")
                   if f not in found[0]]
        if missing:
            raise SystemExit(f"{path}: not a benchmark CSV (missing columns {missing})")
        rows += [{field: row.get(field, "") for field in FIELDS} for row in found]
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv", nargs="+", help="CSV files a GPU run returned")
    parser.add_argument("--results", default=os.path.join(ROOT, "benchmarks", "results"),
                        help="where the per-device CSV, markdown and PNGs live")
    parser.add_argument("--table", default=None,
                        help="the auto_select table to refresh (default convmixer_kernels/data/auto_select.json)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNGs (no matplotlib)")
    args = parser.parse_args(argv)

    rows = load(args.csv)
    by_device = OrderedDict()
    for row in rows:
        by_device.setdefault(row["device"], []).append(row)
    for device, group in by_device.items():
        path = os.path.join(args.results, f"{device_slug(device)}.csv")
        append_rows(path, group)
        written = [path, write_markdown(path)] + ([] if args.no_plots else plot(path))
        print(f"{device}: {len(group)} rows -> " + ", ".join(os.path.relpath(p, ROOT) for p in written))

    from tools import auto_table

    table = args.table or auto_table.CHECKOUT_TABLE
    merged = auto_table.update_table(rows, table)
    print(f"auto_select: {merged} entries merged into {table}")


if __name__ == "__main__":
    main()
