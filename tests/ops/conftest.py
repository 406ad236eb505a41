"""The CUDA emulator's fixtures, shared by the parity sweep (tests/ops/test_parity.py) and
the emulator's own tests (tests/ops/backends/test_cuda_emulated.py)."""

import pytest

from tests.harness import cuda_emulator


@pytest.fixture(scope="session")
def emulator():
    """csrc/cuda built for the emulator, once per test process."""
    if cuda_emulator.compiler() is None:
        pytest.skip("no C++ compiler for the CUDA emulator")
    return cuda_emulator.Emulator(cuda_emulator.build())


@pytest.fixture
def emulated(emulator):
    """Registers the emulated kernels as backend "cuda_emulated" (as an H100 by default)."""
    from convmixer_kernels.ops import backends

    emulator.configure()
    backend = backends.register_backend(cuda_emulator.EmulatedCudaBackend(emulator))
    yield backend
    backends.unregister_backend(backend.NAME)
    emulator.configure()
