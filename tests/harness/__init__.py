"""What the tests share: the parity harness (parity.py), the parity sweep's sizes and rules
(sweep.py), the CUDA emulator (cuda_emulator/: its C++ and
its backend), the synchronized-BN worker
(sync_worker.py) and the CPU levels (cpu_levels.py)."""

import os

# The repository root, for tests that run its scripts or read its sources.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
