"""Checkpoints of the official release, timm and mmpretrain: reading, converting, loading.

Key formats (depth d, block i), as docs/design.md tabulates them:

    part             official          timm                  mmpretrain
    patch conv       0.*               stem.0.*              backbone.stem.0.*
    stem BN          2.*               stem.2.*              backbone.stem.2.*
    block i          {i+3}.*           blocks.{i}.*          backbone.stages.{i}.*
    classifier       {d+5}.*           head.*                head.fc.*

A file may wrap its dict in state_dict / model / state_dict_ema / model_ema and prefix keys
with module. (DataParallel) or _orig_mod. (torch.compile). ConvMixer's own keys are timm's,
so every format is converted to timm's before loading.
"""

import argparse
import dataclasses
import os
import re
import warnings
from typing import Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn

from . import hub
from .configs import CONFIGS

FORMATS = ("official", "timm", "mmpretrain")
_WRAPPERS = ("state_dict", "model")
_EMA_WRAPPERS = ("state_dict_ema", "model_ema")
_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model: wrong architecture, missing or unexpected keys."""


def read_checkpoint(path: str) -> Mapping:
    """The object saved in `path`: torch.save files (.pth, .pth.tar, .pt) are read with
    weights_only=True (tensors and plain containers; timm's training files also keep an
    argparse.Namespace of their arguments, allowed here); .safetensors needs safetensors.
    A file that cannot be read raises CheckpointError: a damaged one says so (with its
    size), and only a file that really holds refused Python objects gets the advice about
    weights_only, naming them."""
    path = os.fspath(path)
    if not path.strip():
        raise FileNotFoundError("checkpoint path is empty (an unset variable?); give the path of a checkpoint file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}"
                                + (" (it is a directory)" if os.path.isdir(path) else ""))
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise ImportError(f"reading {path} needs the safetensors package: pip install safetensors") from exc
        try:
            return load_file(path)
        except Exception as exc:  # safetensors has one error type for every kind of damage
            raise CheckpointError(_damaged_message(path, exc)) from exc
    try:
        with torch.serialization.safe_globals(_ALLOWED_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        refused = _refused_globals(path, exc)
        if not refused:
            raise CheckpointError(_damaged_message(path, exc)) from exc
        raise CheckpointError(
            f"{path} holds Python objects that a weights-only load refuses: {', '.join(refused)}. "
            "Loading them runs code from the file. Only if you trust the file, load it yourself "
            "(torch.load(path, weights_only=False)) and pass the dict in place of the path."
        ) from exc


# Beyond torch's own allowlist: timm's training files keep their argparse.Namespace.
_ALLOWED_GLOBALS = [argparse.Namespace]
# torch's weights-only unpickler names the first global it refuses this way.
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def _refused_globals(path: str, exc: Exception) -> List[str]:
    """The globals a weights-only load refused in `path`; empty when the failure is of
    another kind (a damaged file, or a file torch.save did not write)."""
    named = _REFUSED_GLOBAL.findall(str(exc))
    if not named:
        return []
    try:
        # A zip-format file can be listed in full; torch's message names only the first.
        with torch.serialization.safe_globals(_ALLOWED_GLOBALS):
            return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path)) or named
    except Exception:  # the legacy (non-zip) format: the one torch named
        return named


def _looks_like(head: bytes) -> str:
    """What the first bytes of a file that is not a torch checkpoint suggest it is."""
    if head.lstrip()[:1] == b"<":
        return " It starts like an HTML or XML page: a failed or redirected download?"
    if len(head) > 9 and head[8:10] == b'{"':
        return " It looks like a safetensors file: name it *.safetensors."
    return ""


def _reason(exc: Exception) -> str:
    """The parser's own words for the damage, without torch's advice to retry with
    weights_only=False (which a damaged file does not need and a hostile one must not get)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        # torch's detail is the line after "WeightsUnpickler error:", e.g. "Unsupported operand 60".
        detail = [line for line in lines[1:] if not line.startswith(("Please file", "Check the documentation"))]
        return f"{type(exc).__name__}: {detail[0] if detail else 'not a pickle that torch.save writes'}"
    if not lines:
        return "EOFError: the file ends early" if isinstance(exc, EOFError) else type(exc).__name__
    return f"{type(exc).__name__}: {lines[0].split('. ')[0]}"


def _damaged_message(path: str, exc: Exception) -> str:
    """The error text for a checkpoint file that cannot be parsed at all."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(64)
    message = f"{path} ({size:,} bytes) is damaged or not a checkpoint ({_reason(exc)}).{_looks_like(head)}"
    if os.path.dirname(os.path.abspath(path)) == os.path.abspath(hub.cache_dir()):
        message += (f" It is in the released-weights cache, probably a cut-off download: delete it "
                    f"(rm {path}) and call get_model(..., pretrained=True) again to fetch it anew.")
    else:
        message += " Check that the download or copy finished, or fetch the file again."
    return message


def unwrap(checkpoint: Mapping, use_ema: bool = True) -> Dict[str, Tensor]:
    """The state dict inside a checkpoint, module. / _orig_mod. prefixes removed. With
    use_ema, an EMA copy (state_dict_ema, model_ema) is taken before the plain one, as
    timm's loader does."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"a checkpoint must be a dict, got {type(checkpoint).__name__}")
    for key in (_EMA_WRAPPERS if use_ema else ()) + _WRAPPERS:
        if isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
            break
    state = {}
    for key, value in checkpoint.items():
        if not isinstance(value, Tensor):
            continue  # metadata beside the tensors of an unwrapped file (epoch, arch, ...)
        stripped = True
        while stripped:
            stripped = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix):], True
        state[key] = value
    if not state:
        raise CheckpointError(f"no tensors found in the checkpoint (top-level keys: {list(checkpoint)[:10]})")
    return state


def detect_format(state: Mapping[str, Tensor]) -> str:
    keys = list(state)
    if any(k.startswith("backbone.") for k in keys):
        return "mmpretrain"
    if any(k.startswith(("stem.", "blocks.")) for k in keys):
        return "timm"
    if any(k.split(".", 1)[0].isdigit() for k in keys):
        return "official"
    raise CheckpointError(f"not a ConvMixer checkpoint in a known format ({FORMATS}); first keys: {keys[:5]}")


def _official_depth(state: Mapping[str, Tensor]) -> int:
    # The depthwise convs ("{i+3}.0.fn.0.weight") are the only keys that name a block.
    return sum(1 for k in state if re.fullmatch(r"\d+\.0\.fn\.0\.weight", k))


def _to_timm(state: Mapping[str, Tensor], fmt: str) -> Dict[str, Tensor]:
    if fmt == "timm":
        return dict(state)
    out = {}
    if fmt == "mmpretrain":
        for key, value in state.items():
            for old, new in (("backbone.stem.", "stem."), ("backbone.stages.", "blocks."), ("head.fc.", "head.")):
                if key.startswith(old):
                    key = new + key[len(old):]
                    break
            out[key] = value
        return out
    depth = _official_depth(state)
    for key, value in state.items():
        index, _, rest = key.partition(".")
        if index.isdigit():
            n = int(index)
            if n in (0, 2):
                key = f"stem.{n}.{rest}"
            elif 3 <= n < depth + 3:
                key = f"blocks.{n - 3}.{rest}"
            elif n == depth + 5:
                key = f"head.{rest}"
        out[key] = value  # anything else keeps its key, so a load reports it as unexpected
    return out


def _from_timm(state: Mapping[str, Tensor], fmt: str) -> Dict[str, Tensor]:
    if fmt == "timm":
        return dict(state)
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    out = {}
    for key, value in state.items():
        part, _, rest = key.partition(".")
        if fmt == "mmpretrain":
            prefix = {"stem": "backbone.stem.", "blocks": "backbone.stages.", "head": "head.fc."}.get(part)
            key = key if prefix is None else prefix + rest
        elif part == "stem":
            key = rest
        elif part == "blocks":
            index, _, rest = rest.partition(".")
            key = f"{int(index) + 3}.{rest}"
        elif part == "head":
            key = f"{depth + 5}.{rest}"
        out[key] = value
    return out


def convert_state_dict(checkpoint: Mapping, to: str = "timm", use_ema: bool = True) -> Dict[str, Tensor]:
    """A ConvMixer state dict (any of the three formats, wrapped or not) in format `to`:
    "timm" (also this package's ConvMixer), "official" or "mmpretrain"."""
    if to not in FORMATS:
        raise ValueError(f"convert_state_dict: to must be one of {FORMATS}, got {to!r}")
    state = unwrap(checkpoint, use_ema)
    return _from_timm(_to_timm(state, detect_format(state)), to)


@dataclasses.dataclass(frozen=True)
class Architecture:
    """What a checkpoint's shapes say about the model that made it."""

    dim: int
    depth: int
    kernel_size: int
    patch_size: int
    in_chans: int
    num_classes: Optional[int]  # None where the file has no classifier (a backbone)

    def differences(self, model: nn.Module) -> List[str]:
        fields = ("dim", "depth", "kernel_size", "patch_size")
        mine = dict(zip(fields, (model.num_features, model.depth, model.kernel_size, model.patch_size)))
        return [f"{f} {getattr(self, f)} in the checkpoint, {mine[f]} in the model"
                for f in fields if getattr(self, f) != mine[f]]


def infer_architecture(state: Mapping[str, Tensor]) -> Architecture:
    """dim, depth, kernel and patch size, input channels and classes of a timm-format
    state dict, read from its shapes."""
    try:
        patch = state["stem.0.weight"]
        depthwise = state["blocks.0.0.fn.0.weight"]
    except KeyError as exc:
        raise CheckpointError(f"the checkpoint lacks {exc.args[0]!r}, which gives the architecture") from None
    head = state.get("head.weight")
    return Architecture(
        dim=patch.shape[0],
        depth=len({k.split(".")[1] for k in state if k.startswith("blocks.")}),
        kernel_size=depthwise.shape[-1],
        patch_size=patch.shape[-1],
        in_chans=patch.shape[1],
        num_classes=None if head is None else head.shape[0],
    )


@dataclasses.dataclass
class LoadResult:
    format: str
    architecture: Architecture
    missing_keys: List[str]
    unexpected_keys: List[str]


def _matching_config(arch: Architecture) -> Optional[str]:
    for name, c in CONFIGS.items():
        if (c.dim, c.depth, c.kernel_size, c.patch_size) == (arch.dim, arch.depth, arch.kernel_size, arch.patch_size):
            return name
    return None


def _adapt_patch_conv(weight: Tensor, in_chans: int) -> Tensor:
    # A model with other input channels keeps the pretrained filters' response to a grey
    # image: one channel sums them; n channels repeat them, scaled by 3 / n.
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-in_chans // weight.shape[1])
    return weight.repeat(1, repeats, 1, 1)[:, :in_chans] * (weight.shape[1] / in_chans)


def load_checkpoint(
    model: nn.Module,
    checkpoint,
    *,
    strict: bool = True,
    use_ema: bool = True,
    reset_head: Optional[bool] = False,
    config_name: Optional[str] = None,
) -> LoadResult:
    """Loads a checkpoint (a path, or a dict already loaded) of any format into a ConvMixer.

    The checkpoint's architecture, read from its shapes, must match the model's dim,
    depth, kernel and patch size: an error names each difference and the named config
    that fits the file. A different in_chans adapts the patch conv.
    strict: missing or unexpected keys raise an error naming them; otherwise they warn
    and are returned.
    reset_head: False, the classifier is loaded like the rest; True, the model keeps its
    own; None, it keeps its own only where the checkpoint's has other classes or none."""
    source = os.fspath(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else None
    state = unwrap(read_checkpoint(source) if source is not None else checkpoint, use_ema)
    fmt = detect_format(state)
    state = _to_timm(state, fmt)
    arch = infer_architecture(state)
    where = source or "the checkpoint"
    differences = arch.differences(model)
    if differences:
        fits = _matching_config(arch)
        hint = f"; it fits the config {fits!r}" if fits else ""
        target = f"the config {config_name!r}" if config_name else "the model"
        raise CheckpointError(f"{where} does not fit {target}: {'; '.join(differences)}{hint}")
    if arch.in_chans != model.in_chans:
        state["stem.0.weight"] = _adapt_patch_conv(state["stem.0.weight"], model.in_chans)
    if reset_head is None:
        reset_head = arch.num_classes != model.num_classes
        if reset_head and model.num_classes > 0:
            has = "no classifier" if arch.num_classes is None else f"a classifier for {arch.num_classes} classes"
            warnings.warn(
                f"{where} has {has}, the model one for {model.num_classes}: the model keeps its "
                "freshly initialized classifier",
                stacklevel=2,
            )
    own_head: Tuple[str, ...] = ()
    if reset_head:
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        own_head = tuple(k for k in model.state_dict() if k.startswith("head."))
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k not in own_head]
    unexpected = list(result.unexpected_keys)
    if missing or unexpected:
        message = (f"{where} ({fmt} format) does not match the model: "
                   f"missing keys {missing}, unexpected keys {unexpected}")
        if strict:
            raise CheckpointError(message)
        warnings.warn(message, stacklevel=2)
    return LoadResult(fmt, arch, missing, unexpected)
