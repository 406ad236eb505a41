import os
import sys

# tests/parity.py is imported as a plain module by every backend's tests.
sys.path.insert(0, os.path.dirname(__file__))
# The eager fallback warns once per device; the tests ask for backends by name.
os.environ.setdefault("CONVMIXER_KERNELS_QUIET_FALLBACK", "1")
