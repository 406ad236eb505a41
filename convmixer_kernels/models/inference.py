"""inference_model: one call from an image to its top classes, as mmpretrain's.

    result = inference_model("convmixer_768_32", "bird.jpg")      # released weights
    result["pred_class"], result["pred_score"], result["topk"]
"""

from typing import Dict, List, Optional, Sequence, Union

import torch
from torch import nn

from .imagenet_classes import imagenet_classes
from .factory import get_model
from .preprocess import ImageLike, preprocess, preprocess_args


def class_names(model: nn.Module, classes: Optional[Sequence[str]] = None) -> Optional[Sequence[str]]:
    """The names of a model's outputs: `classes` if given, a `class_names` attribute of the
    model, the ImageNet names for 1000 outputs, else None."""
    if classes is not None:
        return classes
    if getattr(model, "class_names", None) is not None:
        return model.class_names
    return imagenet_classes() if getattr(model, "num_classes", None) == 1000 else None


def _check_topk(topk) -> None:
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise ValueError(f"inference_model: topk must be a positive integer, got {topk!r}")


def _check_names(names: Optional[Sequence[str]], outputs: int, given: bool) -> None:
    if names is not None and len(names) != outputs:
        source = "classes" if given else "the model's class_names"
        raise ValueError(f"inference_model: {source} has {len(names)} names but the model has {outputs} "
                         "outputs; give one name per output")


def _modes(model: nn.Module):
    # Each submodule's own flag: a model may train with some BatchNorms frozen in eval.
    return [(m, m.training) for m in model.modules()]


@torch.no_grad()
def inference_model(
    model: Union[str, nn.Module],
    image: Union[ImageLike, List[ImageLike]],
    topk: int = 5,
    *,
    classes: Optional[Sequence[str]] = None,
    device=None,
    pretrained=True,
    **model_kwargs,
) -> Union[Dict, List[Dict]]:
    """Classifies an image (a path, PIL image, HWC uint8 array or CHW tensor) or a list of them.

    model: a module, or a config name built by get_model(name, pretrained, **model_kwargs)
    (pretrained: True for the released weights, or a checkpoint path).
    topk: a positive integer (more than the outputs gives them all). classes: one name per
    output. The model runs in eval mode and gets back each module's mode afterwards.
    Returns, per image, mmpretrain's fields: pred_label (int), pred_score (float),
    pred_class (str), pred_scores (the softmax over all classes, a float32 numpy array),
    and topk: [{"label", "score", "class"}, ...] best first."""
    _check_topk(topk)
    images = image if isinstance(image, list) else [image]
    if not images:
        raise ValueError("inference_model: image is an empty list; pass at least one image")
    if isinstance(model, str):
        model = get_model(model, pretrained=pretrained, **model_kwargs)
    if device is not None:
        model = model.to(device)
    modes = _modes(model)
    model.eval()
    try:
        scores = _scores(model, images)
    finally:
        for module, training in modes:
            module.training = training
    names = class_names(model, classes)
    _check_names(names, scores.shape[1], given=classes is not None)
    results = [_result(row, topk, names) for row in scores]
    return results if isinstance(image, list) else results[0]


def _scores(model: nn.Module, images: List[ImageLike]) -> torch.Tensor:
    """The softmax over the outputs for each image, float32 on the CPU."""
    param = next(model.parameters())
    batch = torch.stack([preprocess(img, **preprocess_args(model)) for img in images])
    return torch.softmax(model(batch.to(param.device, param.dtype)).float(), dim=1).cpu()


def _result(row: torch.Tensor, topk: int, names: Optional[Sequence[str]]) -> Dict:
    values, labels = row.topk(min(topk, row.numel()))
    top = [
        {"label": int(l), "score": float(v), "class": names[int(l)] if names else str(int(l))}
        for v, l in zip(values, labels)
    ]
    return {
        "pred_label": top[0]["label"],
        "pred_score": top[0]["score"],
        "pred_class": top[0]["class"],
        "pred_scores": row.numpy(),
        "topk": top,
    }
