"""The mixer_block op: registration, autograd, backend dispatch."""

from . import kernel_fakes
from .backends import available_backends, unavailable_backends
from .mixer_block import mixer_block

kernel_fakes.register()

__all__ = ["mixer_block", "available_backends", "unavailable_backends"]
