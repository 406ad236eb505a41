"""python tools/auto_table.py RESULTS.csv [...]: merge benchmark CSVs into the table that
backend="auto" reads (convmixer_kernels/ops/auto_select.py), by default this checkout's
convmixer_kernels/data/auto_select.json: a source file, never an installed package."""

import argparse
import csv
import json
import os
import sys
from typing import Dict, Iterable, Mapping

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __name__ == "__main__":
    sys.path.insert(0, ROOT)  # run as a script: the checkout's package, not an installed one

from convmixer_kernels.ops import auto_select  # noqa: E402
from convmixer_kernels.ops.backends import PRIORITY  # noqa: E402

CHECKOUT_TABLE = os.path.join(ROOT, "convmixer_kernels", "data", "auto_select.json")
# "auto" times against each other only the fused backends of one device type's priority list.
CONTENDERS = PRIORITY["cuda"]


def update_table(rows: Iterable[Mapping], path: str) -> int:
    """Merges benchmark rows into the table at `path`; returns the number of entries written.

    A row is a dict with the benchmark CSV's columns: backend, mode ("eval_fwd" or
    "train_fwd_bwd"), dtype, layout, shape ("NxCxHxW"), k, median_ms, device. Rows of
    backends other than cuda and triton are ignored; a new measurement of the same key and
    batch replaces the old one.
    """
    grouped: Dict[tuple, Dict[str, float]] = {}
    for row in rows:
        if row["backend"] not in CONTENDERS or row["mode"] not in ("eval_fwd", "train_fwd_bwd"):
            continue
        n, c, h, w = (int(v) for v in str(row["shape"]).split("x"))
        key = (row["device"], c, h, w, int(row["k"]), row["dtype"], row["layout"], row["mode"] == "train_fwd_bwd", n)
        grouped.setdefault(key, {})[row["backend"]] = float(row["median_ms"])
    entries = {(*auto_select.entry_key(e), e["batch"]): e for e in auto_select.load_table(path)}
    for (device, c, h, w, k, dtype, layout, training, n), times in grouped.items():
        entries[(device, c, h, w, k, dtype, layout, training, n)] = dict(
            device=device, C=c, H=h, W=w, k=k, dtype=dtype, layout=layout, training=training, batch=n, ms=times)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    ordered = sorted(entries.values(), key=lambda e: (*auto_select.entry_key(e), e["batch"]))
    with open(path, "w") as f:
        json.dump({"format": auto_select.TABLE_FORMAT, "entries": ordered}, f, indent=1)
        f.write("\n")
    auto_select.forget_table(path)
    return len(grouped)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("csv", nargs="+")
    parser.add_argument("--table", default=CHECKOUT_TABLE, help="default %(default)s")
    args = parser.parse_args(argv)
    rows = []
    for path in args.csv:
        with open(path, newline="") as f:
            rows += list(csv.DictReader(f))
    written = update_table(rows, args.table)
    print(f"{written} entries from {len(rows)} rows merged into {args.table}")


if __name__ == "__main__":
    main()
