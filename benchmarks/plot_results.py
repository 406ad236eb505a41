"""Draws PNG bar charts from a benchmark CSV: one figure per (mode, dtype), bars per
shape and contender, height = speed-up over the faster eager layout.

    python benchmarks/plot_results.py benchmarks/results/<device>.csv
"""

import os
import sys
from collections import OrderedDict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from results_table import read_latest  # noqa: E402


def speedup_bars(labels, series, title, out, label_size=None):
    """Saves a bar chart to `out`: one group of bars per label, one bar per series
    (name -> a value per label), heights = speed-ups over the faster eager layout."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(labels) * len(series) / 3), 4))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        ax.bar([s + i * width for s in range(len(labels))], values, width, label=name)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([s + 0.4 - width / 2 for s in range(len(labels))], labels, fontsize=label_size)
    ax.set_ylabel("speed-up over the faster eager layout")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot(csv_path):
    rows = read_latest(csv_path)
    figures = OrderedDict()
    for r in rows:
        figures.setdefault((r["mode"], r["dtype"]), []).append(r)
    written = []
    for (mode, dtype), group in figures.items():
        shapes = list(OrderedDict.fromkeys(f"{r['shape']} k{r['k']}" for r in group))
        contenders = list(OrderedDict.fromkeys(f"{r['backend']} {r['layout']}" for r in group))
        eager_best = {}
        for r in group:
            if r["backend"] == "eager":
                key = f"{r['shape']} k{r['k']}"
                eager_best[key] = min(eager_best.get(key, float("inf")), float(r["median_ms"]))
        series = OrderedDict()
        for name in contenders:
            values = []
            for shape in shapes:
                match = [r for r in group if f"{r['backend']} {r['layout']}" == name and f"{r['shape']} k{r['k']}" == shape]
                values.append(eager_best[shape] / float(match[0]["median_ms"]) if match else 0.0)
            series[name] = values
        out = os.path.splitext(csv_path)[0] + f"_{mode}_{dtype}.png"
        written.append(speedup_bars(shapes, series, f"mixer block {mode}, {dtype}: {group[0]['device']}", out))
    return written


if __name__ == "__main__":
    for path in sys.argv[1:]:
        for out in plot(path):
            print("wrote", out)
