"""napari plugin for psr: upscale image layers, keeping their physical geometry.

``upscale_layer(layer, scale=4, ...)`` returns a new Image layer that overlays the input exactly;
the "Upscale" dock widget (plugin "psr super-resolution") (see ``napari.yaml``) runs it in a worker thread.
``stylize_layer(layer, style, ...)`` and the "Stylize" widget do the same for style transfer. The plugin never
imports torchvision, triton or ``torch._dynamo``: in a process that shows a Mesa GL canvas, loading
triton's LLVM segfaults napari.
"""

from __future__ import annotations

from typing import Any

from ._layer import MAX_DISPLAY_SIZE, plan_upscale, upscale_layer, upscaled_geometry
from ._style import plan_stylize, stylize_layer

__all__ = [
    "MAX_DISPLAY_SIZE",
    "StylizeWidget",
    "UpscaleWidget",
    "plan_stylize",
    "plan_upscale",
    "stylize_layer",
    "upscale_layer",
    "upscaled_geometry",
]


def __getattr__(name: str) -> Any:
    # The widget needs magicgui and a Qt binding; import it only when asked for.
    if name == "UpscaleWidget":
        from ._widget import UpscaleWidget

        return UpscaleWidget
    if name == "StylizeWidget":
        from ._style_widget import StylizeWidget

        return StylizeWidget
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
