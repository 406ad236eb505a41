"""The model layer over the kernel library: ConvMixer (convmixer.py), its named
configurations (configs.py, a leaf), get_model (factory.py), checkpoint formats
(checkpoint.py), released weights (hub.py), and the image side: preprocess.py,
inference.py, imagenet_classes.py, imagefolder.py (those need Pillow and load on use)."""

from .configs import CONFIGS, IMAGENET_MEAN, IMAGENET_STD, ModelConfig, get_config, list_models, resolve_name
from .convmixer import ConvMixer
from .factory import create_model, get_model

__all__ = ["CONFIGS", "ConvMixer", "IMAGENET_MEAN", "IMAGENET_STD", "ModelConfig", "create_model", "get_config",
           "get_model", "list_models", "resolve_name"]
