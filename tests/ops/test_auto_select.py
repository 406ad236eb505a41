"""backend="auto" between cuda and triton (ops/auto_select.py): the table (written by
tools/auto_table.py), the forced and static choices and the explanation, on any machine
(the timed path runs in the cuda GPU tests)."""

import csv

import pytest
import torch

from convmixer_kernels.ops import auto_select, backends
from tools import auto_table


@pytest.fixture
def table(tmp_path, monkeypatch):
    path = str(tmp_path / "auto_select.json")
    monkeypatch.setattr(auto_select, "TABLE_PATH", path)
    monkeypatch.setattr(auto_select, "_decisions", {})
    monkeypatch.delenv("CONVMIXER_KERNELS_AUTO", raising=False)
    return path


def _row(backend, ms, batch=128, mode="eval_fwd", layout="nchw", dtype="bfloat16", k=7):
    return dict(backend=backend, mode=mode, dtype=dtype, layout=layout, shape=f"{batch}x768x32x32", k=k,
                median_ms=ms, device="cpu")


def _decide(names, problem):
    return auto_select.decide([backends.get_backend(name) for name in names], problem)


def _choose(names, problem):
    return _decide(names, problem).backend


def _problem(batch=128, training=False, layout="nchw"):
    return auto_select.Problem("cpu", batch, 768, 32, 32, 7, torch.bfloat16, layout, training, "gelu")


def test_table_picks_the_faster_backend(table):
    rows = [_row("cuda", 0.20), _row("triton", 0.15), _row("eager", 0.01),
            _row("cuda", 0.50, mode="train_fwd_bwd"), _row("triton", 0.90, mode="train_fwd_bwd")]
    assert auto_table.update_table(rows, table) == 2
    eval_choice = _decide(["cuda", "triton"], _problem())
    assert (eval_choice.backend, eval_choice.source) == ("triton", "table")
    assert _choose(["cuda", "triton"], _problem(training=True)) == "cuda"
    # eager rows are not contenders; an unmeasured layout falls back to the static order
    assert _decide(["cuda", "triton"], _problem(layout="channels_last")).source == "static"


def test_table_uses_the_nearest_batch_and_merges(table):
    auto_table.update_table([_row("cuda", 1.0, batch=1), _row("triton", 2.0, batch=1),
                              _row("cuda", 3.0, batch=256), _row("triton", 2.0, batch=256)], table)
    assert _choose(["cuda", "triton"], _problem(batch=2)) == "cuda"
    auto_select._decisions.clear()
    assert _choose(["cuda", "triton"], _problem(batch=128)) == "triton"
    # a new measurement of the same key and batch replaces the old one
    auto_table.update_table([_row("cuda", 1.0, batch=256)], table)
    auto_select._decisions.clear()
    assert _choose(["cuda", "triton"], _problem(batch=200)) == "cuda"


def test_csv_cli(table, tmp_path):
    path = tmp_path / "bench.csv"
    rows = [_row("cuda", 0.3), _row("triton", 0.2)]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    auto_table.main([str(path), "--table", table])
    assert _choose(["cuda", "triton"], _problem()) == "triton"


def test_forced_static_and_single(table, monkeypatch):
    auto_table.update_table([_row("cuda", 0.3), _row("triton", 0.2)], table)
    monkeypatch.setenv("CONVMIXER_KERNELS_AUTO", "cuda")
    assert _decide(["cuda", "triton"], _problem()).source == "forced"
    assert _choose(["cuda", "triton"], _problem()) == "cuda"
    monkeypatch.setenv("CONVMIXER_KERNELS_AUTO", "static")
    assert _choose(["cuda", "triton"], _problem(training=True)) == "cuda"
    assert auto_select.auto_decisions() == {}  # a static choice is not cached
    assert _choose(["triton"], _problem()) == "triton"
    assert _choose(["cuda", "triton"], None) == "cuda"


def test_problem_of_follows_the_layout_the_call_runs_in():
    w = torch.randn(8, 1, 3, 3)
    x = torch.randn(2, 8, 6, 6)
    assert auto_select.Problem.of(x, w, False, "gelu").layout == "nchw"
    assert auto_select.Problem.of(x.contiguous(memory_format=torch.channels_last), w, True, "relu").layout == \
        "channels_last"
    p = auto_select.Problem.of(x, w, True, "relu")
    assert (p.batch, p.channels, p.height, p.width, p.kernel_size, p.training) == (2, 8, 6, 6, 3, True)


def test_explain_auto_on_cpu(table):
    text = backends.explain_auto((8, 64, 32, 32), 7, dtype=torch.float32, device="cpu")
    assert "'cpu'" in text and "C=64 H=32 W=32 k=7" in text
