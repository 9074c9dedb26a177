"""Stylise a napari Image layer with :func:`psr.stylize` (real-time style transfer, issue 7).

Headless like :mod:`psr_napari._layer`: no Qt, no torchvision, triton or ``torch._dynamo`` imports.
The result keeps the source layer's geometry exactly (same pixel grid), so it overlays the input.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ._layer import _DISPLAY_PROPS, _check_fits_in_memory, _resolve_device, _result_layer

if TYPE_CHECKING:
    import napari.layers
    from torch import nn

__all__ = ["StylizeJob", "plan_stylize", "stylize_layer"]


def _style_label(style: Any) -> str:
    if isinstance(style, (str, os.PathLike)):
        return os.path.splitext(os.path.basename(os.fspath(style)))[0]
    return str(getattr(style, "name", type(style).__name__))


@dataclass
class StylizeJob:
    """Everything needed to stylise a layer's data, captured on the main thread (see ``UpscaleJob``)."""

    data: Any
    rgb: bool
    style: Any
    strength: float
    preserve_color: bool
    normalize: tuple[float, float] | None
    tile: int | None
    device: Any
    source_name: str
    layer_kwargs: dict[str, Any] = field(repr=False)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.data.shape)

    @property
    def plane(self) -> tuple[int, int]:
        sh = self.input_shape
        return (sh[-3], sh[-2]) if self.rgb else (sh[-2], sh[-1])

    @property
    def planes(self) -> int:
        sh = self.input_shape
        return int(np.prod(sh[:-3] if self.rgb else sh[:-2], dtype=np.int64))

    @property
    def steps(self) -> int:
        from psr.api import _count_tiles

        tile = None if self.tile is None else -(-self.tile // 4) * 4  # psr.stylize aligns tiles to 4
        return self.planes * _count_tiles(*self.plane, tile)

    def run(self, progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Stylise the data; returns the array and the ``psr`` metadata of the result."""
        import psr
        from psr.stylize import resolve_style, stylize

        dev = _resolve_device(self.device)
        net: nn.Module = resolve_style(self.style, dev)
        kw: dict[str, Any] = {"channel_axis": -1, "rgb": True} if self.rgb else {"channel_axis": None}
        out = stylize(
            np.asarray(self.data),
            net,
            strength=self.strength,
            preserve_color=self.preserve_color,
            normalize=self.normalize,
            tile=self.tile,
            device=dev,
            progress=progress,
            **kw,
        )
        info = {
            "version": psr.__version__,
            "style": _style_label(self.style),
            "strength": self.strength,
            "preserve_color": self.preserve_color,
            "normalize": None if self.normalize is None else [float(v) for v in self.normalize],
            "tile": self.tile,
            "device": str(dev),
            "source_layer": self.source_name,
        }
        return out, info

    def make_layer(self, data: np.ndarray, info: dict[str, Any]) -> napari.layers.Image:
        """The result layer (not added to any viewer)."""
        return _result_layer(data, info, self.layer_kwargs)


def plan_stylize(
    layer: napari.layers.Image,
    style: str | os.PathLike | nn.Module = "starry_night",
    *,
    strength: float = 1.0,
    preserve_color: bool = False,
    normalize: tuple[float, float] | None = (0.1, 99.9),
    tile: int | None = 512,
    device: Any = "auto",
) -> StylizeJob:
    """Check the arguments and capture what :class:`StylizeJob` needs from ``layer``.

    Raises TypeError for a layer that is not an Image layer and ValueError for a bad ``strength``
    or ``tile``; style problems surface in :meth:`StylizeJob.run`.
    """
    from napari.layers import Image

    from psr.stylize import _check_unit

    if not isinstance(layer, Image):
        raise TypeError(f"layer must be a napari Image layer, got {type(layer).__name__}")
    strength = _check_unit(strength, "strength")
    if tile is not None and (isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 8):
        raise ValueError(f"tile must be None or an integer >= 8, got {tile!r}")
    data = layer.data[0] if layer.multiscale else layer.data
    _check_fits_in_memory(data, 1)
    kwargs: dict[str, Any] = {
        "scale": np.asarray(layer.scale, dtype=float),
        "translate": np.asarray(layer.translate, dtype=float),
        "rotate": np.array(layer.rotate, dtype=float),
        "shear": np.array(layer.shear, dtype=float),
        "affine": np.array(layer.affine.affine_matrix, dtype=float),
        "units": layer.units,
        "axis_labels": layer.axis_labels,
        "name": f"{layer.name} ({_style_label(style)})",
        "rgb": bool(layer.rgb),
        "contrast_limits": [float(v) for v in layer.contrast_limits],
        "metadata": dict(layer.metadata),
    }
    if not layer.rgb:
        kwargs["colormap"] = layer.colormap
    for prop in _DISPLAY_PROPS:
        if hasattr(layer, prop):
            value = getattr(layer, prop)
            kwargs[prop] = str(value) if hasattr(value, "value") else value
    return StylizeJob(
        data=data,
        rgb=bool(layer.rgb),
        style=style,
        strength=strength,
        preserve_color=bool(preserve_color),
        normalize=normalize,
        tile=None if tile is None else int(tile),
        device=device,
        source_name=layer.name,
        layer_kwargs=kwargs,
    )


def stylize_layer(
    layer: napari.layers.Image,
    style: str | os.PathLike | nn.Module = "starry_night",
    *,
    strength: float = 1.0,
    preserve_color: bool = False,
    normalize: tuple[float, float] | None = (0.1, 99.9),
    tile: int | None = 512,
    device: Any = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> napari.layers.Image:
    """A new Image layer: ``layer`` stylised with :func:`psr.stylize`, on the same pixel grid.

    RGB(A) layers are stylised as colour images (alpha kept); gray layers plane by plane through
    the RGB network, as the mean of its output. Arguments as for :func:`psr.stylize`.
    """
    job = plan_stylize(
        layer, style, strength=strength, preserve_color=preserve_color, normalize=normalize, tile=tile, device=device
    )
    out, info = job.run(progress)
    return job.make_layer(out, info)
