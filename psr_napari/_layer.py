"""Upscale a napari Image layer with :func:`psr.upscale`, keeping its physical geometry.

Nothing here imports Qt: a layer can be upscaled headless, and the dock widget runs the same code
in a worker thread. Nothing here imports torchvision, triton or ``torch._dynamo`` either: loading
triton's LLVM into a process that already shows a Mesa (llvmpipe) GL canvas segfaults napari.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # napari and torch are imported lazily: psr_napari must import fast for npe2
    import napari.layers
    from torch import nn

__all__ = ["MAX_DISPLAY_SIZE", "UpscaleJob", "plan_upscale", "upscale_layer", "upscaled_geometry"]

# Largest texture side napari (and most GL drivers) can show at full resolution; bigger 2D images
# are displayed downsampled.
MAX_DISPLAY_SIZE = 16384

# Display properties copied from the source layer when present (names of napari Image arguments).
_DISPLAY_PROPS = (
    "blending",
    "opacity",
    "gamma",
    "interpolation2d",
    "interpolation3d",
    "rendering",
    "depiction",
    "iso_threshold",
    "attenuation",
    "projection_mode",
    "visible",
)


def _check_scale(scale: Any) -> int:
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or not 2 <= scale <= 8:
        raise ValueError(f"scale must be an integer in 2..8, got {scale!r}")
    return int(scale)


def upscaled_geometry(layer: napari.layers.Layer, scale: int) -> dict[str, Any]:
    """Transform arguments for a layer whose last two axes hold ``scale`` times more pixels.

    In the source layer's data space the new pixel grid is the old one scaled by ``1/f`` and
    shifted by ``-(f - 1) / (2 f)`` old pixels on the two upscaled axes, so that the ``f x f`` new
    pixels tile each old pixel exactly. Composed with the layer's data-to-world transform
    ``affine @ (rotate @ shear @ diag(scale) @ x + translate)`` this keeps ``rotate``, ``shear`` and
    ``affine`` and changes only ``scale`` (to ``scale / f``) and ``translate`` (to the old
    data-to-physical map of the shift), which for a layer with only scale and translate is
    ``translate - scale * (f - 1) / (2 f)``.

    Parameters
    ----------
    layer : napari.layers.Layer
        The source layer (its ``ndim`` excludes an RGB axis).
    scale : int
        Upscaling factor ``f`` of the last two (non-RGB) axes.

    Returns
    -------
    dict
        ``scale``, ``translate``, ``rotate``, ``shear``, ``affine``, ``units`` and ``axis_labels``
        for the new layer.
    """
    from napari.utils.transforms import CompositeAffine

    f = _check_scale(scale)
    n = layer.ndim
    shrink = np.ones(n)
    shrink[n - 2 :] = 1.0 / f
    shift = np.zeros(n)
    shift[n - 2 :] = -(f - 1) / (2.0 * f)
    data2physical = CompositeAffine(
        scale=np.asarray(layer.scale, dtype=float),
        translate=np.asarray(layer.translate, dtype=float),
        rotate=np.asarray(layer.rotate, dtype=float),
        shear=np.asarray(layer.shear, dtype=float),
        ndim=n,
    )
    return {
        "scale": np.asarray(layer.scale, dtype=float) * shrink,
        # rotate @ shear @ diag(scale) @ shift + translate: where the old map sends the new origin.
        "translate": np.asarray(data2physical(shift), dtype=float),
        "rotate": np.array(layer.rotate, dtype=float),
        "shear": np.array(layer.shear, dtype=float),
        "affine": np.array(layer.affine.affine_matrix, dtype=float),
        "units": layer.units,
        "axis_labels": layer.axis_labels,
    }


def _resolve_device(device: Any) -> Any:
    import torch

    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or a torch.device, got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked but CUDA is not available")
    return dev


def _model_label(model: Any, scale: int) -> str:
    if model is None:
        return f"x{scale}-pixel"
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(model)
    return str(getattr(model, "name", type(model).__name__))


def is_perceptual(name: str, metadata: dict[str, Any] | None = None) -> bool:
    """Whether a model (by name, or by the ``loss`` in its metadata) was trained with a perceptual loss.

    Such models invent plausible detail; the widget says so when one is chosen.
    """
    loss = str((metadata or {}).get("loss", "")).lower()
    return "perceptual" in name.lower() or "perceptual" in loss or "feature" in loss


@dataclass
class UpscaleJob:
    """One layer's upscaling, planned on the main thread and run anywhere.

    :func:`plan_upscale` reads everything it needs from the layer (so the layer may change or be
    removed while :meth:`run` works in another thread); :meth:`make_layer` builds the result.
    """

    data: Any  # highest-resolution data of the source layer (numpy, dask, zarr, ...)
    rgb: bool
    scale: int
    model: Any
    match_histogram: bool | None
    normalize: tuple[float, float] | None
    tile: int | None
    device: Any
    source_name: str
    layer_kwargs: dict[str, Any] = field(repr=False)
    precision: str = "float32"  # network arithmetic, as for psr.upscale

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.data.shape)

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Shape of the upscaled data (the RGB axis, if any, stays last)."""
        sh = list(self.input_shape)
        k = len(sh) - (3 if self.rgb else 2)
        sh[k] *= self.scale
        sh[k + 1] *= self.scale
        return tuple(sh)

    @property
    def output_plane(self) -> tuple[int, int]:
        """(height, width) of each upscaled plane."""
        k = len(self.input_shape) - (3 if self.rgb else 2)
        return self.output_shape[k], self.output_shape[k + 1]

    @property
    def too_large(self) -> bool:
        """Whether a plane exceeds what napari can display at full resolution."""
        return max(self.output_plane) > MAX_DISPLAY_SIZE

    @property
    def planes(self) -> int:
        """Number of 2D planes (or RGB images) upscaled one by one."""
        sh = self.input_shape
        return int(np.prod(sh[: len(sh) - (3 if self.rgb else 2)], dtype=np.int64))

    @property
    def tiles_per_plane(self) -> int:
        """Tiles psr cuts each plane into (one when a plane fits in a tile)."""
        h, w = (s // self.scale for s in self.output_plane)
        if self.tile is None or (h <= self.tile and w <= self.tile):
            return 1
        return math.ceil(h / self.tile) * math.ceil(w / self.tile)

    @property
    def steps(self) -> int:
        """Progress steps :meth:`run` reports: planes times tiles per plane."""
        return self.planes * self.tiles_per_plane

    def run(self, progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Upscale the data; returns the array and the ``psr`` metadata of the result.

        ``progress(done, total)`` is called after each tile of each slice; raise from it to cancel.
        """
        import psr
        from psr.api import resolve_model

        dev = _resolve_device(self.device)
        # Load (and check) the model once here, so its metadata can be recorded and psr.upscale
        # does not load it again.
        net: nn.Module = resolve_model(self.model, self.scale, dev)
        meta = dict(getattr(net, "metadata", {}) or {})
        match = bool(meta.get("match_histogram", False)) if self.match_histogram is None else bool(self.match_histogram)
        data = np.asarray(self.data)
        kw: dict[str, Any] = {"channel_axis": -1, "rgb": True} if self.rgb else {"channel_axis": None}
        out = psr.upscale(
            data,
            self.scale,
            model=net,
            match_histogram=match,
            normalize=self.normalize,
            tile=self.tile,
            device=dev,
            precision=self.precision,
            progress=progress,
            **kw,
        )
        info = {
            "version": psr.__version__,
            "model": _model_label(self.model, self.scale),
            "model_loss": meta.get("loss"),
            "scale": self.scale,
            "match_histogram": match,
            "normalize": None if self.normalize is None else [float(v) for v in self.normalize],
            "tile": self.tile,
            "device": str(dev),
            "precision": self.precision,
            "source_layer": self.source_name,
            "source_shape": list(self.input_shape),
            "upscaled_axes": [len(self.input_shape) - (3 if self.rgb else 2) + i for i in (0, 1)],
        }
        return out, info

    def make_layer(self, data: np.ndarray, info: dict[str, Any]) -> napari.layers.Image:
        """The result layer (not added to any viewer)."""
        return _result_layer(data, info, self.layer_kwargs)


def _result_layer(data: np.ndarray, info: dict[str, Any], layer_kwargs: dict[str, Any]) -> napari.layers.Image:
    """The result layer of an upscale or stylise job, with psr's record beside the source's metadata
    (credits, acquisition details still describe the result)."""
    from napari.layers import Image

    kwargs = dict(layer_kwargs)
    metadata = {**kwargs.pop("metadata", {}), "psr": info}
    return Image(data, metadata=metadata, **kwargs)


def plan_upscale(
    layer: napari.layers.Image,
    scale: int = 4,
    *,
    model: str | os.PathLike | nn.Module | None = None,
    match_histogram: bool | None = None,
    normalize: tuple[float, float] | None = (0.1, 99.9),
    tile: int | None = 256,
    device: Any = "auto",
    precision: str = "float32",
) -> UpscaleJob:
    """Check the arguments and capture what :class:`UpscaleJob` needs from ``layer``.

    Arguments as for :func:`upscale_layer`. Raises TypeError for a layer that is not an Image
    layer and ValueError for a bad ``scale`` or ``tile``; model problems surface in
    :meth:`UpscaleJob.run`.
    """
    from napari.layers import Image

    if not isinstance(layer, Image):
        raise TypeError(f"layer must be a napari Image layer, got {type(layer).__name__}")
    f = _check_scale(scale)
    if tile is not None and (isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 8):
        raise ValueError(f"tile must be None or an integer >= 8, got {tile!r}")
    if precision not in ("float32", "bfloat16"):
        raise ValueError(f"precision must be 'float32' or 'bfloat16', got {precision!r}")
    data = layer.data[0] if layer.multiscale else layer.data
    kwargs: dict[str, Any] = upscaled_geometry(layer, f)
    kwargs["name"] = f"{layer.name} x{f}"
    kwargs["metadata"] = dict(layer.metadata)
    kwargs["rgb"] = bool(layer.rgb)
    kwargs["contrast_limits"] = [float(v) for v in layer.contrast_limits]
    if not layer.rgb:
        kwargs["colormap"] = layer.colormap
    for prop in _DISPLAY_PROPS:
        if hasattr(layer, prop):
            value = getattr(layer, prop)
            kwargs[prop] = str(value) if hasattr(value, "value") else value  # StringEnum -> str
    _check_fits_in_memory(data, f)
    return UpscaleJob(
        data=data,
        rgb=bool(layer.rgb),
        scale=f,
        model=model,
        match_histogram=match_histogram,
        normalize=normalize,
        tile=None if tile is None else int(tile),
        device=device,
        source_name=layer.name,
        layer_kwargs=kwargs,
        precision=precision,
    )


def _check_fits_in_memory(data: Any, scale: int) -> None:
    """Refuse, when planning (the note shows it before Upscale is clicked), a layer whose input and
    upscaled result do not fit in this machine's memory: the job loads the whole layer (a lazy
    dask or zarr layer too) before psr.upscale could refuse it, and a load cannot be cancelled."""
    from psr.api import _output_bytes, _physical_memory

    itemsize = np.dtype(getattr(data, "dtype", np.float32)).itemsize
    n = int(np.prod([int(s) for s in data.shape], dtype=np.int64))
    # The loaded layer, plus what psr.upscale itself counts for its output (it refuses above that,
    # after the job has loaded the layer).
    need = n * itemsize + _output_bytes(n, scale, itemsize)
    have = _physical_memory()
    if need > have:
        raise ValueError(
            f"this layer ({'x'.join(map(str, data.shape))}, {n * itemsize / 2**30:.1f} GiB) and its x{scale} result "
            f"need {need / 2**30:.1f} GiB, more than this machine's {have / 2**30:.1f} GiB of memory; "
            "crop the layer or pick a smaller scale"
        )


def upscale_layer(
    layer: napari.layers.Image,
    scale: int = 4,
    *,
    model: str | os.PathLike | nn.Module | None = None,
    match_histogram: bool | None = None,
    normalize: tuple[float, float] | None = (0.1, 99.9),
    tile: int | None = 256,
    device: Any = "auto",
    precision: str = "float32",
    progress: Callable[[int, int], None] | None = None,
) -> napari.layers.Image:
    """Upscale an Image layer into a new layer that overlays it exactly.

    Parameters
    ----------
    layer : napari.layers.Image
        Gray, nD (Z, T, ...: every plane over the last two non-RGB axes, one by one), RGB(A), or
        multiscale (its highest resolution is used).
    scale : int
        Upscaling factor of the last two (non-RGB) axes; must match the model's.
    model : str, path or nn.Module, optional
        As for :func:`psr.upscale`: a shipped name (:func:`psr.list_models`), a weights file,
        a module, or ``"bicubic"``. Default: the shipped ``x{scale}-pixel``.
    match_histogram : bool, optional
        As for :func:`psr.upscale`; default the model's own.
    normalize : (lo, hi) or None
        Percentile normalisation for non-uint8 data, computed once over the whole layer.
    tile : int or None
        Tile size in input pixels (``None``: whole planes).
    device : "auto", str or torch.device
        Where the network runs.
    precision : {"float32", "bfloat16"}
        The network's arithmetic, as for :func:`psr.upscale` (bfloat16: about 2-7x faster on bf16-capable CPUs, faster on GPUs, about -0.001 dB).
    progress : callable, optional
        ``progress(done, total)`` after each tile of each plane; raise from it to cancel.

    Returns
    -------
    napari.layers.Image
        Not added to a viewer. Its data has the source's dtype and ``scale`` times more pixels on
        the last two non-RGB axes; ``scale`` and ``translate`` are set so that it overlays the
        source (rotate, shear and affine are kept); colormap, contrast limits, blending, other
        display settings and the rgb flag are copied; it is named ``"<name> x<f>"``, and
        ``metadata["psr"]`` records psr's version, the model and the settings.

    Warns
    -----
    UserWarning
        When a plane of the result is larger than napari displays at full resolution
        (:data:`MAX_DISPLAY_SIZE` pixels on a side).
    """
    job = plan_upscale(
        layer,
        scale,
        model=model,
        match_histogram=match_histogram,
        normalize=normalize,
        tile=tile,
        device=device,
        precision=precision,
    )
    if job.too_large:
        h, w = job.output_plane
        warnings.warn(
            f"upscaled planes are {h} x {w} px, more than napari displays at full resolution "
            f"({MAX_DISPLAY_SIZE} px on a side); they will be shown downsampled",
            UserWarning,
            stacklevel=2,
        )
    out, info = job.run(progress)
    return job.make_layer(out, info)
