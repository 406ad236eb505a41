"""ONNX export of a ConvMixer (or any model with mixer blocks), checked with onnxruntime.

    export_onnx(model, "convmixer.onnx")                   # batch size is dynamic
    python -m convmixer_kernels.cli.export --model convmixer_768_32 --checkpoint FILE --output m.onnx

The export runs on a copy: fused blocks become plain Residual modules again (ONNX has no
fused op), and each padding='same' convolution gets integer padding, since ONNX's pads
are integers: k // 2 for an odd k, a ZeroPad2d one wider on the right and bottom for an
even k. Needs the [onnx] extra: onnx, onnxscript (torch's exporter), onnxruntime (checks).
"""

import argparse
import copy
import importlib
import sys
from typing import List, Optional, Tuple

import torch
from torch import nn

from .args import check_writable, existing_file, model_name, positive_int, writable_path
from ..modules import unswap_mixer_blocks
from ..reference import same_padding


def require_onnx_packages(*modules: str) -> None:
    """Raises ImportError naming the [onnx] extra unless every module imports: checked
    before an export starts, not from deep inside torch.onnx after the model is built."""
    missing = []
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ImportError(
            f"ONNX export needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed: "
            "install the [onnx] extra "
            "(pip install 'convmixer_kernels[onnx]', or pip install onnx onnxscript onnxruntime)"
        )


def _integer_padding(conv: nn.Conv2d) -> nn.Module:
    # 'same' pads the dilated extent d (k - 1) + 1, one more after than before when even.
    before, after = zip(*(same_padding(d * (k - 1) + 1) for k, d in zip(conv.kernel_size, conv.dilation)))
    if before == after:
        conv.padding = before
        return conv
    conv.padding = (0, 0)
    # ZeroPad2d takes (left, right, top, bottom).
    return nn.Sequential(nn.ZeroPad2d((before[1], after[1], before[0], after[0])), conv)


def exportable_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` with plain blocks and integer-padded convolutions;
    the same function as `model`, built from ops every ONNX runtime has."""
    plain = copy.deepcopy(model).eval()
    unswap_mixer_blocks(plain)
    for parent in list(plain.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv2d) and child.padding == "same" and child.padding_mode == "zeros":
                setattr(parent, name, _integer_padding(child))
    return plain


def export_onnx(
    model: nn.Module,
    path: str,
    input_size: Optional[Tuple[int, int]] = None,
    batch_size: int = 1,
    opset: Optional[int] = None,
    dynamic_batch: bool = True,
) -> str:
    """Writes `model` as ONNX to `path` (input "input" NCHW float32, output "output").
    input_size: (H, W), by default the model config's input size (224 without a config).
    Checks first that torch's exporter (onnx, onnxscript) is installed and that `path` can
    be written, so that neither fails only after the whole export."""
    require_onnx_packages("onnx", "onnxscript")
    check_writable(path)
    plain = exportable_copy(model)
    if input_size is None:
        side = (getattr(model, "pretrained_cfg", None) or {}).get("input_size", 224)
        input_size = (side, side)
    param = next(plain.parameters())
    example = torch.randn(batch_size, getattr(plain, "in_chans", 3), *input_size, device=param.device)
    dynamic_shapes = {"x": {0: torch.export.Dim("batch")}} if dynamic_batch else None
    torch.onnx.export(
        plain,
        (example,),
        path,
        dynamo=True,
        input_names=["input"],
        output_names=["output"],
        opset_version=opset,
        dynamic_shapes=dynamic_shapes,
        external_data=False,
        verbose=False,
    )
    return path


def max_onnx_error(model: nn.Module, path: str, x: torch.Tensor) -> float:
    """max |onnxruntime(path)(x) - model(x)| on the CPU, model in eval mode."""
    require_onnx_packages("onnxruntime")
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    was_training = model.training
    model.eval()
    with torch.no_grad():
        expected = model(x).float().cpu().numpy()
    model.train(was_training)
    got = session.run(None, {session.get_inputs()[0].name: x.float().cpu().numpy()})[0]
    return float(abs(got - expected).max())


def main(argv: Optional[List[str]] = None) -> None:
    from ..models import get_model

    parser = argparse.ArgumentParser(prog="python -m convmixer_kernels.cli.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=model_name, help="a config name, e.g. convmixer_768_32")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--checkpoint", type=existing_file("a checkpoint file"),
                         help="weights (official, timm or mmpretrain format); default: random")
    weights.add_argument("--pretrained", action="store_true", help="the released weights")
    parser.add_argument("--output", required=True, type=writable_path, help="the .onnx file to write")
    parser.add_argument("--input-size", type=positive_int, help="image side (default: the config's)")
    parser.add_argument("--num-classes", type=positive_int)
    parser.add_argument("--opset", type=positive_int)
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    args = parser.parse_args(argv)
    try:
        require_onnx_packages("onnx", "onnxscript", *(() if args.no_check else ("onnxruntime",)))
    except ImportError as exc:
        parser.error(f"{exc}{'' if args.no_check else ' (--no-check skips the onnxruntime comparison)'}")
    overrides = {} if args.num_classes is None else {"num_classes": args.num_classes}
    pretrained = args.checkpoint if args.checkpoint is not None else args.pretrained
    if pretrained is False:
        print("exporting randomly initialized weights: no --checkpoint or --pretrained given", file=sys.stderr)
    model = get_model(args.model, pretrained=pretrained, **overrides)
    size = model.pretrained_cfg["input_size"] if args.input_size is None else args.input_size
    if size < model.patch_size:
        parser.error(f"argument --input-size: must be at least the patch size {model.patch_size}, got {size}")
    export_onnx(model, args.output, input_size=(size, size), opset=args.opset)
    print(f"wrote {args.output}")
    if not args.no_check:
        x = torch.randn(2, model.in_chans, size, size)
        print(f"onnxruntime vs PyTorch on a batch of 2: max abs difference {max_onnx_error(model, args.output, x):.3g}")


if __name__ == "__main__":
    main()
