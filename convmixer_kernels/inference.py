"""inference_model: one call from an image to its top classes, as mmpretrain's.

    result = inference_model("convmixer_768_32", "bird.jpg")      # released weights
    result["pred_class"], result["pred_score"], result["topk"]
"""

from typing import Dict, List, Optional, Sequence, Union

import torch
from torch import nn

from .imagenet_classes import imagenet_classes
from .models import get_model
from .preprocess import ImageLike, preprocess, preprocess_args


def class_names(model: nn.Module, classes: Optional[Sequence[str]] = None) -> Optional[Sequence[str]]:
    """The names of a model's outputs: `classes` if given, a `class_names` attribute of the
    model, the ImageNet names for 1000 outputs, else None."""
    if classes is not None:
        return classes
    if getattr(model, "class_names", None) is not None:
        return model.class_names
    return imagenet_classes() if getattr(model, "num_classes", None) == 1000 else None


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
    Returns, per image, mmpretrain's fields: pred_label (int), pred_score (float),
    pred_class (str), pred_scores (the softmax over all classes, a float32 numpy array),
    and topk: [{"label", "score", "class"}, ...] best first."""
    if isinstance(model, str):
        model = get_model(model, pretrained=pretrained, **model_kwargs)
    if device is not None:
        model = model.to(device)
    model.eval()
    param = next(model.parameters())
    images = image if isinstance(image, list) else [image]
    batch = torch.stack([preprocess(img, **preprocess_args(model)) for img in images])
    scores = torch.softmax(model(batch.to(param.device, param.dtype)).float(), dim=1).cpu()
    names = class_names(model, classes)
    results = []
    for row in scores:
        values, labels = row.topk(min(topk, row.numel()))
        top = [
            {"label": int(l), "score": float(v), "class": names[int(l)] if names else str(int(l))}
            for v, l in zip(values, labels)
        ]
        results.append({
            "pred_label": top[0]["label"],
            "pred_score": top[0]["score"],
            "pred_class": top[0]["class"],
            "pred_scores": row.numpy(),
            "topk": top,
        })
    return results if isinstance(image, list) else results[0]
