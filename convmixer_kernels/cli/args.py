"""argparse types shared by the command-line tools (evaluate, count, export, predict.py).

Each checks one argument when it is parsed and, if it is wrong, makes argparse print the
usage and a message naming the flag and what it expects, with exit status 2. None of
them falls back to a default: an empty --checkpoint "" (an unset shell variable) is an
error, never "no checkpoint".
"""

import argparse
import os

import torch

from ..models.configs import resolve_name
from ..ops.backends import backend_names

BACKEND_CHOICES = ("auto",) + backend_names()


def positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def model_name(text: str) -> str:
    """A config name or alias, as given (the tools print the name they were asked for)."""
    _as_argument_error(resolve_name, text, ValueError)
    return text


def _as_argument_error(check, text: str, errors) -> None:
    """Runs check(text); its error (of the types `errors`) becomes argparse's, same words."""
    try:
        check(text)
    except errors as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def device_name(text: str) -> str:
    """A torch device string for a device this machine has."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: no CUDA device is available here; use --device cpu")
    return text


def _non_empty(text: str, what: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError(f"is empty; give the path of {what} (an unset shell variable?)")
    return text


def existing_file(what: str):
    """A type for a path that must name an existing file: `what` says which, for the message."""
    return _existing(what, os.path.isfile, "is a directory")


def existing_dir(what: str):
    """A type for a path that must name an existing directory."""
    return _existing(what, os.path.isdir, "is a file")


def _existing(what: str, is_right_kind, wrong_kind: str):
    def check(text: str) -> str:
        _non_empty(text, what)
        if not is_right_kind(text):
            reason = wrong_kind if os.path.exists(text) else "does not exist"
            raise argparse.ArgumentTypeError(f"{text!r} {reason}; give the path of {what}")
        return text

    return check


def writable_path(text: str) -> str:
    """A file path the tool can create or overwrite, checked before any work is done."""
    _non_empty(text, "the file to write")
    _as_argument_error(check_writable, text, OSError)
    return text


def check_writable(path: str) -> None:
    """Raises OSError naming `path` and the reason unless a file can be written there. It
    opens the file for appending (which creates it and keeps an existing one intact), so it
    answers for the user and file system at hand, where os.access would not (root)."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot write {path!r}: it is a directory; give a file name")
    existed = os.path.exists(path)
    try:
        with open(path, "ab"):
            pass
    except OSError as exc:
        raise type(exc)(f"cannot write {path!r}: {exc.strerror or exc}; choose a path in an existing, "
                        "writable folder") from None
    if not existed:
        os.remove(path)
