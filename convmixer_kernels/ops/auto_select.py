"""backend="auto" on CUDA: the faster of the `cuda` and `triton` backends, per shape.

Neither backend wins everywhere (their tilings and code generators differ with C, H, W, k,
dtype and layout), so "auto" decides per problem key

    (GPU name, C, H, W, k, dtype, layout, training)

from, in this order:

1. ``CONVMIXER_KERNELS_AUTO=cuda`` or ``=triton`` forces that backend where it can run;
2. the table ``convmixer_kernels/data/auto_select.json``: median times measured by the
   benchmark (tools/auto_table.py turns its CSV rows into entries of a checkout's table;
   the entry whose batch is nearest the call's is used);
3. a timed first call: each candidate runs a few times on random inputs of the call's
   shape (the forward for eval; forward + backward for training, since autograd reuses
   the forward's backend), and the faster one is cached for the key for the life of the
   process. Timing is skipped while torch.compile traces, while a CUDA graph is being
   captured, and with ``CONVMIXER_KERNELS_AUTO=static``; then the static order
   (cuda before triton) decides, uncached, so a later eager call can still measure.

``ops.backends.explain_auto(...)`` says which backend "auto" takes for a shape and why;
``auto_decisions()`` lists the decisions made so far.

A pure decision: it is given the available backend objects (ops/backends) and imports
none of them.
"""

import json
import math
import os
import statistics
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence

import torch

from ..conventions import layout_of

# Read only: the library never writes its own data (tools/auto_table.py writes a checkout's).
TABLE_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "auto_select.json")
TABLE_FORMAT = 1
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
        n, c, h, w = (int(s) for s in x.shape)
        return Problem(str(x.device), n, c, h, w, int(conv_weight.shape[-1]), x.dtype, layout_of(x),
                       bool(training), activation)

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


def decide(candidates: Sequence, problem: Optional[Problem]) -> Decision:
    """The backend "auto" takes among `candidates` (backend objects that can run the call,
    fastest-first static order) for a call; several are measured against each other."""
    names = [b.NAME for b in candidates]
    if problem is None or len(names) < 2:
        return Decision(names[0], "only" if len(names) == 1 else "static")
    policy = _policy()
    if policy in names:
        return Decision(policy, "forced")
    key = problem.key()
    if key in _decisions and _decisions[key].backend in names:
        return _decisions[key]
    decision = _from_table(key, problem.batch, names)
    if decision is None and policy != "static" and _can_time():
        decision = _timed(problem, candidates)
    if decision is None:
        return Decision(names[0], "static")
    _decisions[key] = decision
    return decision


def _can_time() -> bool:
    if torch.compiler.is_compiling():
        return False
    return not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())


# ---------------------------------------------------------------------------- the table


def load_table(path: str) -> List[dict]:
    try:
        with open(path) as f:
            table = json.load(f)
    except (OSError, ValueError):
        return []
    if table.get("format") != TABLE_FORMAT:
        return []
    return table.get("entries", [])


_table_cache: Dict[str, List[dict]] = {}


def forget_table(path: str) -> None:
    """Drops the cached entries of `path`, so the next decision reads the file again."""
    _table_cache.pop(path, None)


def _entries() -> List[dict]:
    if TABLE_PATH not in _table_cache:
        _table_cache[TABLE_PATH] = load_table(TABLE_PATH)
    return _table_cache[TABLE_PATH]


def entry_key(e: Mapping) -> tuple:
    return (e["device"], e["C"], e["H"], e["W"], e["k"], e["dtype"], e["layout"], e["training"])


def _from_table(key: tuple, batch: int, contenders: Sequence[str]) -> Optional[Decision]:
    rows = [e for e in _entries() if entry_key(e) == key and sum(name in e["ms"] for name in contenders) >= 2]
    if not rows:
        return None
    nearest = min(rows, key=lambda e: abs(math.log(max(e["batch"], 1) / max(batch, 1))))
    times = {name: float(nearest["ms"][name]) for name in contenders if name in nearest["ms"]}
    return Decision(min(times, key=times.get), "table", times, int(nearest["batch"]))


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


def _timed(p: Problem, candidates: Sequence) -> Optional[Decision]:
    element = torch.finfo(p.dtype).bits // 8
    per_image = p.channels * p.height * p.width * element * 2  # x and dy
    batch = max(1, min(p.batch, _TIMING_BYTES // max(per_image, 1)))
    times = {}
    try:
        with torch.no_grad(), torch.autocast(torch.device(p.device).type, enabled=False), \
                torch.cuda.device(torch.device(p.device)):
            inputs = _timing_inputs(p, batch)
            for backend in candidates:
                times[backend.NAME] = _median_ms(lambda: _run_once(backend, p, inputs))
    except Exception:  # noqa: BLE001 - out of memory, a kernel that fails to build or launch
        # A contender that fails here decides nothing: the call itself then runs the
        # static choice and reports its own error.
        return None
    finally:
        torch.cuda.empty_cache()
    return Decision(min(times, key=times.get), "timed", times, batch)


# ---------------------------------------------------------------------------- reporting


def explain(candidates: Sequence, problem: Problem, measure: bool = False) -> str:
    """Which of `candidates` "auto" takes for `problem`, and why (see
    ops.backends.explain_auto, which gives it the available backends)."""
    names = [b.NAME for b in candidates]
    key = problem.key()
    if (len(names) >= 2 and key not in _decisions and not measure and _policy() not in names
            and _from_table(key, problem.batch, names) is None):
        how = (f"the static order decides (CONVMIXER_KERNELS_AUTO=static): {names[0]!r}"
               if _policy() == "static" else "the first call times " + " and ".join(names))
        return f"auto for {problem.describe()}: not decided yet; {how}"
    decision = decide(candidates, problem)
    return f"auto picks {decision.backend!r} for {problem.describe()}: {decision.reason()}"


def auto_decisions() -> Dict[tuple, Decision]:
    """The per-key decisions made so far in this process (key: Problem.key())."""
    return dict(_decisions)
