"""The launchers raise a kernel's dynamic shared-memory limit once per instantiation and
device, not on every launch (cudaFuncSetAttribute costs microseconds per call), on the
CPU emulator."""

import torch

from tests.harness import cuda_emulator
from tests.harness.parity import Case, make_inputs


def test_shared_memory_opt_in_is_cached(emulator):
    emu = emulator  # tests/ops/conftest.py
    backend = cuda_emulator.EmulatedCudaBackend(emu)
    # float32, k = 31: the generic path's 46-row input planes need about 76 KB
    inp = make_inputs(Case(n=1, c=3, h=9, w=9, k=31, dtype=torch.float32))

    def run():
        return backend.forward_eval(inp.x, inp.weight, inp.bias, inp.gamma, inp.beta, inp.running_mean,
                                    inp.running_var, 1e-5, "gelu")

    before = emu.attribute_calls()
    first = run()
    after_first = emu.attribute_calls()
    assert after_first - before <= 1  # 0 if an earlier test in this process opted this kernel in
    assert after_first >= 1
    again = run()
    assert emu.attribute_calls() == after_first
    assert torch.equal(first, again)
