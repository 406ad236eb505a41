"""Each backend's own tests (tile paths, configs, capability levels, emulator faults); the
parity sweep every backend runs is tests/ops/test_parity.py."""
