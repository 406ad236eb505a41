"""GPU measurement for the benchmarks: CUDA-event timings, input rotation past L2, peak
memory and the copy bandwidth of the same GPU. Importable anywhere: nothing here
touches CUDA until a function is called.

    times = cuda_time(lambda i: block(xs[i % len(xs)]), warmup=10, repeats=100)
    n_sets = rotation_count(bytes_of_one_input_set, device)   # how many input sets to cycle
    gbps = copy_bandwidth_gbps(device)                         # the ceiling of a streaming op
    peak = peak_memory_bytes(lambda: block(x).backward(dy))
"""

import statistics
from typing import Callable, Tuple

import torch


def cuda_time(fn: Callable[[int], object], warmup: int = 10, repeats: int = 100) -> Tuple[float, float, float]:
    """(median, p20, p80) in ms of fn(i) on the current stream, i = 0, 1, ... (pass i on
    to pick one of several input sets). Each run sits between its own pair of CUDA events;
    the runs are queued back to back and read after one synchronize at the end, so the
    host's launch latency only shows where the GPU really waits for it (many small
    kernels), as it would in a training loop."""
    for i in range(warmup):
        fn(i)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
    torch.cuda.synchronize()
    for i, (start, end) in enumerate(events):
        start.record()
        fn(warmup + i)
        end.record()
    torch.cuda.synchronize()
    times = sorted(start.elapsed_time(end) for start, end in events)
    if len(times) < 5:
        return statistics.median(times), times[0], times[-1]
    q = statistics.quantiles(times, n=5)
    return statistics.median(times), q[0], q[3]


def l2_bytes(device: torch.device) -> int:
    props = torch.cuda.get_device_properties(device)
    # Older torch builds do not expose the L2 size; 50 MB is an H100's.
    return getattr(props, "L2_cache_size", 50 * 2**20)


def rotation_count(bytes_per_set: int, device: torch.device, minimum: int = 2) -> int:
    """How many input sets of bytes_per_set to cycle through so that a set is evicted
    from L2 before it comes round again (the sets together span three times L2)."""
    return max(minimum, -(-3 * l2_bytes(device) // max(1, bytes_per_set)))


def copy_bandwidth_gbps(device: torch.device, nbytes: int = 1 << 30, repeats: int = 20) -> float:
    """GB/s (read + write) of dst.copy_(src) for nbytes float32 tensors: the streaming
    ceiling that a memory-bound kernel's achieved bandwidth is compared with."""
    src = torch.randn(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    median, _, _ = cuda_time(lambda i: dst.copy_(src), warmup=3, repeats=repeats)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * nbytes / (median * 1e-3) / 1e9


def peak_memory_bytes(fn: Callable[[], object]) -> int:
    """Peak memory fn allocates on the current CUDA device beyond what was allocated
    when it started (torch.cuda.max_memory_allocated)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base
