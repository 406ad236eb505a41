"""backend="auto" on CUDA: the faster of the `cuda` and `triton` backends, per shape.

Neither backend wins everywhere (their tilings and code generators differ with C, H, W, k,
dtype and layout), so "auto" decides per problem key

    (GPU name, C, H, W, k, dtype, layout, training)

from, in this order:

1. ``CONVMIXER_KERNELS_AUTO=cuda`` or ``=triton`` forces that backend where it can run;
2. the table ``convmixer_kernels/data/auto_select.json``: median times measured by the
   benchmark (``update_table`` turns its CSV rows into entries; the entry whose batch is
   nearest the call's is used);
3. a timed first call: each candidate runs a few times on random inputs of the call's
   shape (the forward for eval; forward + backward for training, since autograd reuses
   the forward's backend), and the faster one is cached for the key for the life of the
   process. Timing is skipped while torch.compile traces, while a CUDA graph is being
   captured, and with ``CONVMIXER_KERNELS_AUTO=static``; then the static order
   (cuda before triton) decides, uncached, so a later eager call can still measure.

``explain_auto(...)`` says which backend "auto" takes for a shape and why;
``auto_decisions()`` lists the decisions made so far.
"""

import json
import math
import os
import statistics
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence

import torch

TABLE_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "auto_select.json")
TABLE_FORMAT = 1
# The backends "auto" chooses between on CUDA; any other available backend is taken as is.
CONTENDERS = ("cuda", "triton")
# Timing inputs larger than this are timed at a smaller batch.
_TIMING_BYTES = 512 * 2**20
_TIMING_WARMUP = 3  # the first runs also autotune the triton kernels
_TIMING_REPEATS = 10


class Problem(NamedTuple):
    """What "auto" decides on; built by `Problem.of` from a call's arguments."""

    device: str  # "cuda:0"
    batch: int
    channels: int
    height: int
    width: int
    kernel_size: int
    dtype: torch.dtype
    layout: str  # "nchw" or "channels_last"
    training: bool  # batch statistics (forward_train + backward), else forward_eval
    activation: str

    @staticmethod
    def of(x: torch.Tensor, conv_weight: torch.Tensor, training: bool, activation: str) -> "Problem":
        # x is already dense here (ops/mixer_block.py copies other strides first).
        layout = "nchw" if x.is_contiguous() else "channels_last"
        n, c, h, w = (int(s) for s in x.shape)
        return Problem(str(x.device), n, c, h, w, int(conv_weight.shape[-1]), x.dtype, layout, bool(training),
                       activation)

    def key(self) -> tuple:
        return (_device_name(self.device), self.channels, self.height, self.width, self.kernel_size,
                _dtype_name(self.dtype), self.layout, self.training)

    def describe(self) -> str:
        mode = "training" if self.training else "eval"
        return (f"C={self.channels} H={self.height} W={self.width} k={self.kernel_size} "
                f"{_dtype_name(self.dtype)} {self.layout} {mode} on {_device_name(self.device)}")


@dataclass
class Decision:
    backend: str
    source: str  # "forced", "table", "timed", "static", "only"
    times_ms: Dict[str, float] = field(default_factory=dict)
    batch: Optional[int] = None  # the batch the times were measured at

    def reason(self) -> str:
        times = ", ".join(f"{name} {ms:.3f} ms" for name, ms in sorted(self.times_ms.items()))
        if self.source == "forced":
            return "forced by CONVMIXER_KERNELS_AUTO"
        if self.source == "table":
            return f"the benchmark table {os.path.relpath(TABLE_PATH)} (batch {self.batch}: {times})"
        if self.source == "timed":
            return f"timed on the first call (batch {self.batch}: {times})"
        if self.source == "only":
            return "the only fused backend available"
        return "the static order (cuda before triton): no table entry, and no timing here"


_decisions: Dict[tuple, Decision] = {}


def _device_name(device: str) -> str:
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(dev)
    return dev.type


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _policy() -> str:
    return os.environ.get("CONVMIXER_KERNELS_AUTO", "").strip().lower()


def choose(available: Sequence[str], problem: Optional[Problem]) -> str:
    """The backend "auto" takes among `available` (fastest-first static order) for a call."""
    return decide(available, problem).backend


def decide(available: Sequence[str], problem: Optional[Problem]) -> Decision:
    contenders = [name for name in available if name in CONTENDERS]
    if problem is None or len(contenders) < 2:
        return Decision(available[0], "only" if len(available) == 1 else "static")
    policy = _policy()
    if policy in contenders:
        return Decision(policy, "forced")
    key = problem.key()
    if key in _decisions and _decisions[key].backend in contenders:
        return _decisions[key]
    decision = _from_table(key, problem.batch, contenders)
    if decision is None and policy != "static" and _can_time():
        decision = _timed(problem, contenders)
    if decision is None:
        return Decision(contenders[0], "static")
    _decisions[key] = decision
    return decision


def _can_time() -> bool:
    if torch.compiler.is_compiling():
        return False
    return not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())


# ---------------------------------------------------------------------------- the table


def _load_table(path: str) -> List[dict]:
    try:
        with open(path) as f:
            table = json.load(f)
    except (OSError, ValueError):
        return []
    if table.get("format") != TABLE_FORMAT:
        return []
    return table.get("entries", [])


_table_cache: Dict[str, List[dict]] = {}


def _entries() -> List[dict]:
    if TABLE_PATH not in _table_cache:
        _table_cache[TABLE_PATH] = _load_table(TABLE_PATH)
    return _table_cache[TABLE_PATH]


def _entry_key(e: Mapping) -> tuple:
    return (e["device"], e["C"], e["H"], e["W"], e["k"], e["dtype"], e["layout"], e["training"])


def _from_table(key: tuple, batch: int, contenders: Sequence[str]) -> Optional[Decision]:
    rows = [e for e in _entries() if _entry_key(e) == key and sum(name in e["ms"] for name in contenders) >= 2]
    if not rows:
        return None
    nearest = min(rows, key=lambda e: abs(math.log(max(e["batch"], 1) / max(batch, 1))))
    times = {name: float(nearest["ms"][name]) for name in contenders if name in nearest["ms"]}
    return Decision(min(times, key=times.get), "table", times, int(nearest["batch"]))


def update_table(rows: Iterable[Mapping], path: Optional[str] = None) -> int:
    """Merges benchmark rows into the table; returns the number of entries written.

    A row is a dict with the benchmark CSV's columns: backend, mode ("eval_fwd" or
    "train_fwd_bwd"), dtype, layout, shape ("NxCxHxW"), k, median_ms, device. Rows of
    backends other than cuda and triton are ignored; a new measurement of the same key and
    batch replaces the old one.
    """
    path = path or TABLE_PATH
    grouped: Dict[tuple, Dict[str, float]] = {}
    for row in rows:
        if row["backend"] not in CONTENDERS or row["mode"] not in ("eval_fwd", "train_fwd_bwd"):
            continue
        n, c, h, w = (int(v) for v in str(row["shape"]).split("x"))
        key = (row["device"], c, h, w, int(row["k"]), row["dtype"], row["layout"], row["mode"] == "train_fwd_bwd", n)
        grouped.setdefault(key, {})[row["backend"]] = float(row["median_ms"])
    entries = {(*_entry_key(e), e["batch"]): e for e in _load_table(path)}
    for (device, c, h, w, k, dtype, layout, training, n), times in grouped.items():
        entries[(device, c, h, w, k, dtype, layout, training, n)] = dict(
            device=device, C=c, H=h, W=w, k=k, dtype=dtype, layout=layout, training=training, batch=n, ms=times)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ordered = sorted(entries.values(), key=lambda e: (*_entry_key(e), e["batch"]))
    with open(path, "w") as f:
        json.dump({"format": TABLE_FORMAT, "entries": ordered}, f, indent=1)
        f.write("\n")
    _table_cache.pop(path, None)
    return len(grouped)


# ---------------------------------------------------------------------------- timing


def _timing_inputs(p: Problem, batch: int):
    dev = torch.device(p.device)
    gen = torch.Generator(device=dev).manual_seed(0)  # leaves the global RNG alone
    fmt = torch.channels_last if p.layout == "channels_last" else torch.contiguous_format

    def randn(*shape, dtype=p.dtype):
        return torch.randn(*shape, generator=gen, device=dev, dtype=dtype)

    c, k = p.channels, p.kernel_size
    x = randn(batch, c, p.height, p.width).contiguous(memory_format=fmt)
    weight = randn(c, 1, k, k) / k
    bias = randn(c)
    gamma, beta = randn(c, dtype=torch.float32), randn(c, dtype=torch.float32)
    mean = randn(c, dtype=torch.float32)
    var = torch.rand(c, generator=gen, device=dev) + 0.5
    dy = randn(batch, c, p.height, p.width).contiguous(memory_format=fmt)
    return x, weight, bias, gamma, beta, mean, var, dy


def _run_once(backend, p: Problem, inputs, eps: float = 1e-5):
    x, weight, bias, gamma, beta, mean, var, dy = inputs
    if not p.training:
        backend.forward_eval(x, weight, bias, gamma, beta, mean, var, eps, p.activation)
        return
    _, batch_mean, batch_var = backend.forward_train(x, weight, bias, gamma, beta, eps, p.activation)
    backend.backward(dy, x, weight, bias, gamma, batch_mean, batch_var, eps, True, p.activation)


def _median_ms(fn) -> float:
    for _ in range(_TIMING_WARMUP):
        fn()
    times = []
    for _ in range(_TIMING_REPEATS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _timed(p: Problem, contenders: Sequence[str]) -> Optional[Decision]:
    from .backends import get_backend

    element = torch.finfo(p.dtype).bits // 8
    per_image = p.channels * p.height * p.width * element * 2  # x and dy
    batch = max(1, min(p.batch, _TIMING_BYTES // max(per_image, 1)))
    times = {}
    try:
        with torch.no_grad(), torch.autocast(torch.device(p.device).type, enabled=False), \
                torch.cuda.device(torch.device(p.device)):
            inputs = _timing_inputs(p, batch)
            for name in contenders:
                backend = get_backend(name)
                times[name] = _median_ms(lambda: _run_once(backend, p, inputs))
    except Exception:  # noqa: BLE001 - out of memory, a kernel that fails to build or launch
        # A contender that fails here decides nothing: the call itself then runs the
        # static choice and reports its own error.
        return None
    finally:
        torch.cuda.empty_cache()
    return Decision(min(times, key=times.get), "timed", times, batch)


# ---------------------------------------------------------------------------- reporting


def explain_auto(x_shape: Sequence[int], kernel_size: int, dtype: torch.dtype = torch.bfloat16,
                 layout: str = "nchw", training: bool = False, device="cuda", activation: str = "gelu",
                 measure: bool = False) -> str:
    """Which backend backend="auto" takes for a block on an input of x_shape, and why.

    With measure=True a shape that has no decision yet is timed now (as its first call
    would be); otherwise the answer says what the first call will do.
    """
    from .backends import available_backends

    device = torch.device(device)
    n, c, h, w = (int(s) for s in x_shape)
    p = Problem(str(device), n, c, h, w, int(kernel_size), dtype, layout, bool(training), activation)
    available = [name for name in available_backends(device, dtype) if name != "eager"] or ["eager"]
    contenders = [name for name in available if name in CONTENDERS]
    key = p.key()
    if (len(contenders) >= 2 and key not in _decisions and not measure and _policy() not in contenders
            and _from_table(key, n, contenders) is None):
        how = ("the static order decides (CONVMIXER_KERNELS_AUTO=static): 'cuda'"
               if _policy() == "static" else "the first call times " + " and ".join(contenders))
        return f"auto for {p.describe()}: not decided yet; {how}"
    decision = decide(available, p)
    return f"auto picks {decision.backend!r} for {p.describe()}: {decision.reason()}"


def auto_decisions() -> Dict[tuple, Decision]:
    """The per-key decisions made so far in this process (key: Problem.key())."""
    return dict(_decisions)


def main(argv=None) -> None:
    """python -m convmixer_kernels.ops.auto_select RESULTS.csv [...]: merge benchmark CSVs
    into the table."""
    import argparse
    import csv

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("csv", nargs="+")
    parser.add_argument("--table", default=None, help=f"default {TABLE_PATH}")
    args = parser.parse_args(argv)
    rows = []
    for path in args.csv:
        with open(path, newline="") as f:
            rows += list(csv.DictReader(f))
    written = update_table(rows, args.table)
    print(f"{written} entries from {len(rows)} rows merged into {args.table or TABLE_PATH}")


if __name__ == "__main__":
    main()
