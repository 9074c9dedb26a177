"""psr: perceptual-loss super-resolution (Johnson, Alahi & Fei-Fei, ECCV 2016).

``psr.upscale(image, scale=4)`` upscales numpy, PIL or torch images with a shipped network.
Importing psr never imports torchvision (it pulls in triton, which crashes napari on Mesa GL).
The public names load on first use (PEP 562), so ``import psr`` and ``psr --help`` do not wait
for torch.
"""

from __future__ import annotations

import importlib
import sys
import types
from importlib import metadata as _metadata
from typing import TYPE_CHECKING, Any

try:
    __version__ = _metadata.version("psr")
except _metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+local"

# public name -> the submodule that defines it
_LAZY = {
    "Upscaler": "api",
    "upscale": "api",
    "evaluate": "evaluate",
    "SRConfig": "models",
    "SRNet": "models",
    "imresize": "resize",
    "Stylizer": "stylize",
    "stylize": "stylize",
    "list_models": "weights",
    "load_model": "weights",
    "read_metadata": "weights",
    "save_weights": "weights",
}

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

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ loads them
    from .api import Upscaler, upscale
    from .evaluate import evaluate
    from .models import SRConfig, SRNet
    from .resize import imresize
    from .stylize import Stylizer, stylize
    from .weights import list_models, load_model, read_metadata, save_weights


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'psr' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


class _Package(types.ModuleType):
    # ``psr.evaluate`` and ``psr.stylize`` name both a function and the submodule defining it.
    # Importing a submodule sets it as the package attribute of its name, which would hide the
    # function once anything imported the submodule: keep the function (as an eager
    # ``from .evaluate import evaluate`` did); the modules stay in sys.modules.
    def __setattr__(self, name: str, value: Any) -> None:
        if _LAZY.get(name) == name and isinstance(value, types.ModuleType):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
