"""psr: perceptual-loss super-resolution (Johnson, Alahi & Fei-Fei, ECCV 2016).

``psr.upscale(image, scale=4)`` upscales numpy, PIL or torch images with a shipped network.
Importing psr never imports torchvision (it pulls in triton, which crashes napari on Mesa GL).
"""

from __future__ import annotations

from importlib import metadata as _metadata

from .api import Upscaler, upscale
from .evaluate import evaluate
from .models import SRConfig, SRNet
from .resize import imresize
from .stylize import Stylizer, stylize
from .weights import list_models, load_model, read_metadata, save_weights

try:
    __version__ = _metadata.version("psr")
except _metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+local"

__all__ = [
    "SRConfig",
    "SRNet",
    "Stylizer",
    "Upscaler",
    "__version__",
    "evaluate",
    "imresize",
    "list_models",
    "load_model",
    "read_metadata",
    "save_weights",
    "stylize",
    "upscale",
]
