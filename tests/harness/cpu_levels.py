"""The compiled CPU capability levels this CPU runs, and switching between them (the CPU
backend's tests and the synchronized pieces' tests run at every level)."""

import contextlib

import convmixer_kernels as cmk
from convmixer_kernels import _extension

RUNNABLE = [level for level, runs in cmk.cpu_capabilities().items() if runs]


@contextlib.contextmanager
def cpu_level(level):
    before = cmk.cpu_capability()
    _extension.load()._set_cpu_capability(level)
    try:
        yield
    finally:
        _extension.load()._set_cpu_capability(before)
