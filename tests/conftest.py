import os
import sys

# tests/parity.py is imported as a plain module by every backend's tests.
sys.path.insert(0, os.path.dirname(__file__))
# The eager fallback warns once per device; the tests ask for backends by name.
os.environ.setdefault("CONVMIXER_KERNELS_QUIET_FALLBACK", "1")

# Triton reads TRITON_INTERPRET when it is first imported, and importing torch's compiler
# (which convmixer_kernels and the tests do) imports triton: set it before any test
# module is collected, so the Triton backend runs under its interpreter on a CPU machine.
import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
