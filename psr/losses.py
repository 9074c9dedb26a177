"""Loss networks and losses of Johnson et al. (2016): VGG-16 feature, Gram (style), TV and pixel losses.

The loss network is VGG-16's convolutional part, defined here with torchvision's ``features``
indices (so ``features.N.weight`` state dicts load either way) but without importing torchvision:
importing this module must stay cheap and must not pull in triton (see the package docstring).

Weights are looked up in this order (:func:`resolve_vgg_weights`):

1. an explicit ``weights`` path;
2. ``$PSR_VGG_WEIGHTS``;
3. ``$PSR_SHARED/weights/vgg16_caffe_relu4_3.safetensors`` (``PSR_SHARED`` defaults to ``../shared``
   beside the repository, see :func:`psr.data.default_shared_dir`);
4. torchvision's ``IMAGENET1K_V1`` (downloaded; a one-time warning says it is a different model).

The shared file is the Caffe VGG-16 the paper used: it wants BGR in 0..255 minus the ImageNet mean,
while torchvision's weights want RGB in [0, 1] normalised by mean/std. Every module here takes RGB
in [0, 1] and applies the convention of the weights it loaded, so losses from either are comparable
in meaning though not in magnitude.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "TAPS",
    "SHARED_VGG_FILE",
    "VGGFeatures",
    "PerceptualLoss",
    "StyleLoss",
    "TVLoss",
    "PixelLoss",
    "gram_matrix",
    "feature_distance",
    "resolve_vgg_weights",
]

# Named taps -> index in torchvision's vgg16().features (the ReLU after the named conv).
TAPS: dict[str, int] = {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 22}
SHARED_VGG_FILE = "vgg16_caffe_relu4_3.safetensors"

# torchvision's vgg16 "D" configuration up to conv4_3: channels per conv, "M" = 2x2 max pool.
_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512)

_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TV_MEAN = (0.485, 0.456, 0.406)
_TV_STD = (0.229, 0.224, 0.225)
_CONVENTIONS = ("caffe", "torchvision")

_warned_torchvision = False


def _build_features(depth: int) -> nn.Sequential:
    """``vgg16().features[:depth]`` with torchvision's layer indices."""
    layers: list[nn.Module] = []
    c_in = 3
    for v in _CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c_in, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            c_in = int(v)
    return nn.Sequential(*layers[:depth])


def _check_layers(layers: Iterable[str] | str, argname: str = "layers") -> tuple[str, ...]:
    if isinstance(layers, str):
        layers = (layers,)
    out = tuple(layers)
    if not out:
        raise ValueError(f"{argname} must name at least one of {sorted(TAPS)}, got an empty sequence")
    bad = [name for name in out if name not in TAPS]
    if bad:
        raise ValueError(f"{argname}: unknown VGG-16 tap(s) {bad}; expected names from {sorted(TAPS)}")
    if len(set(out)) != len(out):
        raise ValueError(f"{argname} has duplicates: {out}")
    return out


def vgg_lookup_help(last: str) -> str:
    """Where :func:`resolve_vgg_weights` looks without an explicit file, for ``--help`` texts;
    ``last`` says what the command does when it finds none."""
    from .data import default_shared_dir

    return f"$PSR_VGG_WEIGHTS, else $PSR_SHARED/weights/{SHARED_VGG_FILE} (here {default_shared_dir()}), else {last}"


def resolve_vgg_weights(weights: str | os.PathLike | None = None) -> Path | None:
    """The VGG weights file to use, following the lookup order in the module docstring.

    Parameters
    ----------
    weights : path, optional
        Explicit weights file (``.safetensors``, or a torchvision ``.pth`` checkpoint).

    Returns
    -------
    Path or None
        The file, or None when only torchvision's download is left.

    Raises
    ------
    FileNotFoundError
        If the explicit path or ``$PSR_VGG_WEIGHTS`` names a file that does not exist.
    """
    if weights is not None:
        p = Path(weights)
        if not p.is_file():
            raise FileNotFoundError(f"weights: VGG weights file {str(p)!r} does not exist")
        return p
    env = os.environ.get("PSR_VGG_WEIGHTS")
    if env:
        p = Path(env)
        if not p.is_file():
            raise FileNotFoundError(f"$PSR_VGG_WEIGHTS names {env!r}, which does not exist")
        return p
    from .data import default_shared_dir

    p = default_shared_dir() / "weights" / SHARED_VGG_FILE
    return p if p.is_file() else None


def _convention_from_metadata(meta: Mapping[str, str] | None) -> str | None:
    if not meta:
        return None
    conv = meta.get("convention")
    if conv in _CONVENTIONS:
        return conv
    if meta.get("input", "").strip().upper().startswith("BGR"):
        return "caffe"
    return None


def _read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    """Tensors and the convention recorded in the file (None if it records none)."""
    if path.suffix in (".pth", ".pt"):
        try:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises a zoo of types for bad pickles / zips
            raise ValueError(f"VGG weights file {str(path)!r} is corrupt or not a torch checkpoint: {exc}") from None
        if not isinstance(sd, Mapping):
            raise ValueError(f"VGG weights file {str(path)!r} does not hold a state dict")
        # torchvision's own checkpoints (vgg16-397923af.pth) carry no metadata.
        return dict(sd), "torchvision"
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata()
            sd = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # safetensors raises its own error types for bad headers / truncation
        raise ValueError(f"VGG weights file {str(path)!r} is corrupt or not a safetensors file: {exc}") from None
    return sd, _convention_from_metadata(meta)


def _normalise_keys(sd: Mapping[str, Any], depth: int, source: str) -> dict[str, torch.Tensor]:
    """``features.N.x`` / ``N.x`` -> ``N.x``, keeping only layers below ``depth``; checks shapes."""
    expected = _build_features(TAPS["relu4_3"] + 1).state_dict()  # every conv parameter up to conv4_3
    out: dict[str, torch.Tensor] = {}
    for key, val in sd.items():
        k = key[len("features.") :] if key.startswith("features.") else key
        if key.startswith("classifier."):
            continue  # a full torchvision vgg16 state dict
        idx_s, _, kind = k.partition(".")
        if not idx_s.isdigit() or kind not in ("weight", "bias"):
            raise ValueError(f"VGG weights from {source}: unexpected key {key!r} (expected e.g. '0.weight')")
        idx = int(idx_s)
        if idx >= 23:
            continue  # conv5 and beyond: not part of the loss network
        if k not in expected:
            raise ValueError(f"VGG weights from {source}: key {key!r} is not a VGG-16 conv parameter")
        if not isinstance(val, torch.Tensor) or tuple(val.shape) != tuple(expected[k].shape):
            shape = tuple(val.shape) if isinstance(val, torch.Tensor) else type(val).__name__
            raise ValueError(
                f"VGG weights from {source}: {key!r} has shape {shape}, expected {tuple(expected[k].shape)}"
            )
        if idx < depth:
            if not torch.isfinite(val).all():
                raise ValueError(f"VGG weights from {source}: {key!r} contains NaN or Inf")
            out[k] = val.detach().to(torch.float32)
    need = [k for k in expected if int(k.split(".")[0]) < depth]
    missing = [k for k in need if k not in out]
    if missing:
        raise ValueError(f"VGG weights from {source}: missing {missing} for the requested layers")
    return out


def _torchvision_state_dict() -> dict[str, torch.Tensor]:
    """torchvision's IMAGENET1K_V1 VGG-16 (downloads on first use); the only torchvision import."""
    global _warned_torchvision
    if not _warned_torchvision:
        warnings.warn(
            "psr: no Caffe VGG-16 weights found (weights=, $PSR_VGG_WEIGHTS, $PSR_SHARED/weights/"
            f"{SHARED_VGG_FILE}); using torchvision's IMAGENET1K_V1 VGG-16, a different model with another "
            "input convention (RGB normalised by mean/std). Losses are not comparable with the paper's.",
            UserWarning,
            stacklevel=4,
        )
        _warned_torchvision = True
    try:
        from torchvision.models import VGG16_Weights

        return dict(VGG16_Weights.IMAGENET1K_V1.get_state_dict(progress=False))
    except Exception as exc:
        raise RuntimeError(
            "psr: could not get VGG-16 loss-network weights: none of weights=, $PSR_VGG_WEIGHTS, "
            f"$PSR_SHARED/weights/{SHARED_VGG_FILE} exists, and torchvision's download failed ({exc})"
        ) from exc


class VGGFeatures(nn.Module):
    """Frozen VGG-16 feature extractor returning the named ReLU taps.

    Parameters
    ----------
    layers : sequence of str
        Taps to return, from ``relu1_2``, ``relu2_2``, ``relu3_3``, ``relu4_3``; the network is built
        only up to the deepest one.
    weights : path, optional
        Weights file; None follows the lookup order in the module docstring.
    convention : {"caffe", "torchvision"}, optional
        Input convention of the weights. None reads it from the file (safetensors metadata
        ``convention``, or an ``input`` starting with "BGR" for the shared file; ``.pth`` files are
        torchvision's); a safetensors file that records neither is refused.

    Notes
    -----
    ``forward(x)`` takes RGB floats in [0, 1], (N, 3, H, W), and returns ``{name: tensor}``.
    Parameters never require grad, but gradients flow to ``x``. The module stays in eval mode.
    """

    def __init__(
        self,
        layers: Iterable[str] | str = ("relu2_2",),
        weights: str | os.PathLike | None = None,
        *,
        convention: str | None = None,
    ) -> None:
        super().__init__()
        self.layers = _check_layers(layers)
        if convention is not None and convention not in _CONVENTIONS:
            raise ValueError(f"convention must be one of {_CONVENTIONS} or None, got {convention!r}")
        depth = max(TAPS[name] for name in self.layers) + 1
        self.features = _build_features(depth)

        path = resolve_vgg_weights(weights)
        if path is None:
            sd, found, source = _torchvision_state_dict(), "torchvision", "torchvision IMAGENET1K_V1"
        else:
            sd, found = _read_state_dict(path)
            source = repr(str(path))
        conv = convention or found
        if conv is None:
            raise ValueError(
                f"VGG weights file {source} does not record its input convention; "
                "pass convention='caffe' or convention='torchvision'"
            )
        self.features.load_state_dict(_normalise_keys(sd, depth, source), strict=True)
        self.convention: str = conv
        self.weights_source: str = source
        # Constants in float64 (cast to the input's dtype per call), so a .double() copy of this
        # module is exact rather than carrying float32-rounded means.
        f64 = torch.float64
        if conv == "caffe":
            # RGB [0,1] -> BGR 0..255 minus mean: x' = 255 * x[BGR] - mean.
            scale = torch.full((3,), 255.0, dtype=f64)
            shift = torch.tensor(_CAFFE_MEAN_BGR, dtype=f64)
            perm = [2, 1, 0]
        else:
            scale = 1.0 / torch.tensor(_TV_STD, dtype=f64)
            shift = torch.tensor(_TV_MEAN, dtype=f64) / torch.tensor(_TV_STD, dtype=f64)
            perm = [0, 1, 2]
        self.register_buffer("_scale", scale.reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("_shift", shift.reshape(1, 3, 1, 1), persistent=False)
        self._perm = perm
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGGFeatures:
        # The loss network is frozen: a parent's .train() must not change it (no dropout/BN here
        # today, but keep the guarantee explicit).
        return super().train(False)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """RGB [0, 1] -> the input convention of the loaded weights."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"x must be RGB images of shape (N, 3, H, W), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating tensor with values in [0, 1], got dtype {x.dtype}")
        if self._perm != [0, 1, 2]:
            x = x[:, self._perm]
        return x * self._scale.to(x.dtype) - self._shift.to(x.dtype)

    def forward(self, x: torch.Tensor, layers: Iterable[str] | str | None = None) -> dict[str, torch.Tensor]:
        """Features at ``layers`` (default: the constructor's) of RGB [0, 1] images (N, 3, H, W)."""
        names = self.layers if layers is None else _check_layers(layers)
        too_deep = [name for name in names if TAPS[name] >= len(self.features)]
        if too_deep:
            raise ValueError(f"layers {too_deep} are deeper than this network (built up to {self.layers})")
        want = {TAPS[name]: name for name in names}
        last = max(want)
        h = self.preprocess(x)
        out: dict[str, torch.Tensor] = {}
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in want:
                out[want[i]] = h
            if i == last:
                break  # no work past the deepest requested tap
        return out


def _vgg_for(layers: tuple[str, ...], weights: str | os.PathLike | None, vgg: VGGFeatures | None) -> VGGFeatures:
    if vgg is None:
        return VGGFeatures(layers, weights)
    if not isinstance(vgg, VGGFeatures):
        raise TypeError(f"vgg must be a VGGFeatures, got {type(vgg).__name__}")
    too_deep = [name for name in layers if TAPS[name] >= len(vgg.features)]
    if too_deep:
        raise ValueError(f"vgg is built only up to {vgg.layers}; {too_deep} need a deeper VGGFeatures")
    return vgg


def _at_least_f32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _check_pair(output: torch.Tensor, target: torch.Tensor) -> None:
    if not isinstance(output, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise TypeError("output and target must be torch tensors")
    if output.shape != target.shape:
        raise ValueError(
            f"output and target must have the same shape, got {tuple(output.shape)} and {tuple(target.shape)}"
        )


class PerceptualLoss(nn.Module):
    """Feature-reconstruction loss: ``sum_j mse(phi_j(output), phi_j(target))``.

    ``F.mse_loss`` is the paper's ``1 / (C_j H_j W_j) ||phi_j(y^) - phi_j(y)||^2`` averaged over the
    batch. Images are RGB floats in [0, 1], (N, 3, H, W). Target features are computed without grad
    unless ``target`` requires grad.

    Parameters
    ----------
    layers : sequence of str
        VGG taps (default the paper's SR choice, ``relu2_2``).
    weights : path, optional
        VGG weights; see :class:`VGGFeatures`.
    vgg : VGGFeatures, optional
        Share an existing loss network (e.g. with a :class:`StyleLoss`) instead of loading another.
    """

    def __init__(
        self,
        layers: Iterable[str] | str = ("relu2_2",),
        weights: str | os.PathLike | None = None,
        *,
        vgg: VGGFeatures | None = None,
    ) -> None:
        super().__init__()
        self.layers = _check_layers(layers)
        self.vgg = _vgg_for(self.layers, weights, vgg)

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_pair(output, target)
        f_out = self.vgg(output, self.layers)
        if target.requires_grad:
            f_tgt = self.vgg(target, self.layers)
        else:
            with torch.no_grad():
                f_tgt = self.vgg(target, self.layers)
        # bf16/fp16 features (autocast) are compared in float32; float64 stays float64.
        loss = sum(F.mse_loss(_at_least_f32(f_out[name]), _at_least_f32(f_tgt[name])) for name in self.layers)
        return loss  # type: ignore[return-value]


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """Gram matrices ``G = F F^T / (C H W)`` of (N, C, H, W) features, shape (N, C, C), in float32+.

    Computed outside autocast: in bf16 the C*H*W-term sums lose too much precision.
    """
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"features must be a torch.Tensor, got {type(features).__name__}")
    if features.ndim != 4:
        raise ValueError(f"features must be (N, C, H, W), got shape {tuple(features.shape)}")
    n, c, h, w = features.shape
    if c * h * w == 0:
        raise ValueError(f"features must be non-empty, got shape {tuple(features.shape)}")
    f = features.reshape(n, c, h * w)
    if f.dtype in (torch.float16, torch.bfloat16) or not f.is_floating_point():
        f = f.float()
    with torch.autocast(device_type=f.device.type, enabled=False):
        return torch.bmm(f, f.transpose(1, 2)) / (c * h * w)


class StyleLoss(nn.Module):
    """Style-reconstruction loss: ``sum_j ||G_j(output) - G_j(style)||_F^2``, averaged over the batch.

    The squared Frobenius norm is the paper's (Johnson et al. eq. 4) with ``G = F F^T / (C H W)``
    (:func:`gram_matrix`). The style image's Grams are computed once at construction.

    Parameters
    ----------
    style_image : Tensor
        RGB floats in [0, 1], (3, H, W) or (1, 3, H, W).
    layers : sequence of str
        VGG taps (default the paper's relu1_2, relu2_2, relu3_3, relu4_3).
    weights : path, optional
        VGG weights; see :class:`VGGFeatures`.
    vgg : VGGFeatures, optional
        Share an existing loss network.
    """

    def __init__(
        self,
        style_image: torch.Tensor,
        layers: Iterable[str] | str = ("relu1_2", "relu2_2", "relu3_3", "relu4_3"),
        weights: str | os.PathLike | None = None,
        *,
        vgg: VGGFeatures | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(style_image, torch.Tensor):
            raise TypeError(f"style_image must be a torch.Tensor, got {type(style_image).__name__}")
        if style_image.ndim == 3:
            style_image = style_image[None]
        if style_image.ndim != 4 or style_image.shape[:2] != (1, 3):
            raise ValueError(f"style_image must be (3, H, W) or (1, 3, H, W), got {tuple(style_image.shape)}")
        self.layers = _check_layers(layers)
        self.vgg = _vgg_for(self.layers, weights, vgg)
        param = next(self.vgg.parameters())
        with torch.no_grad():
            feats = self.vgg(style_image.to(param.device, param.dtype), self.layers)
        for name in self.layers:
            self.register_buffer(f"gram_{name}", gram_matrix(feats[name]).detach())

    def target_gram(self, layer: str) -> torch.Tensor:
        """The style image's (1, C, C) Gram matrix at ``layer``."""
        return getattr(self, f"gram_{layer}")

    def forward(self, output: torch.Tensor) -> torch.Tensor:
        feats = self.vgg(output, self.layers)
        total = output.new_zeros((), dtype=torch.float32)
        for name in self.layers:
            diff = gram_matrix(feats[name]) - self.target_gram(name)
            total = total + diff.pow(2).sum(dim=(1, 2)).mean()
        return total


class TVLoss(nn.Module):
    """Total-variation regulariser (Mahendran & Vedaldi 2015; used by Johnson et al.).

    ``kind="l2"``: mean squared difference of vertical neighbours plus that of horizontal neighbours
    (the form of Johnson's reference code); ``kind="l1"``: the same with absolute differences. Means,
    not sums, so the weight does not depend on the image size.
    """

    def __init__(self, kind: str = "l2") -> None:
        super().__init__()
        if kind not in ("l1", "l2"):
            raise ValueError(f"kind must be 'l1' or 'l2', got {kind!r}")
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            raise ValueError(f"x must be a (N, C, H, W) tensor, got {getattr(x, 'shape', type(x).__name__)}")
        dy = x[:, :, 1:, :] - x[:, :, :-1, :]
        dx = x[:, :, :, 1:] - x[:, :, :, :-1]
        if self.kind == "l2":
            return dy.pow(2).mean() + dx.pow(2).mean()
        return dy.abs().mean() + dx.abs().mean()


class PixelLoss(nn.Module):
    """Per-pixel loss: mean squared error between output and target (the paper's baseline)."""

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_pair(output, target)
        return F.mse_loss(output, target)


# One cached extractor per (layer, weights file) for evaluation.
_CACHE: dict[tuple[str, str], VGGFeatures] = {}
_CACHE_LOCK = threading.Lock()


def _cached_vgg(layer: str, weights: str | os.PathLike | None) -> VGGFeatures:
    path = resolve_vgg_weights(weights)
    key = (layer, str(path) if path is not None else "<torchvision>")
    with _CACHE_LOCK:
        vgg = _CACHE.get(key)
        if vgg is None:
            vgg = VGGFeatures((layer,), path)
            _CACHE[key] = vgg
    return vgg


def _as_image_tensor(x: Any, name: str) -> torch.Tensor:
    """numpy (H, W), (H, W, 3) uint8 / float [0, 1], or tensor (3, H, W) / (N, 3, H, W) -> (N, 3, H, W)."""
    if isinstance(x, np.ndarray):
        if x.dtype == np.uint8:
            t = torch.from_numpy(x.astype(np.float32) / 255.0)
        elif np.issubdtype(x.dtype, np.floating):
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        else:
            raise TypeError(f"{name} must be uint8 or floating in [0, 1], got dtype {x.dtype}")
        if t.ndim == 2:
            t = t[None, None].expand(1, 3, *t.shape)
        elif t.ndim == 3 and t.shape[-1] == 3:
            t = t.permute(2, 0, 1)[None]
        else:
            raise ValueError(f"{name} must be (H, W) or (H, W, 3) as a numpy array, got shape {x.shape}")
        return t
    if isinstance(x, torch.Tensor):
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor in [0, 1], got dtype {x.dtype}")
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{name} must be (3, H, W) or (N, 3, H, W) as a tensor, got {tuple(x.shape)}")
        return x.float()
    raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")


def feature_distance(
    a: Any,
    b: Any,
    layer: str = "relu2_2",
    *,
    weights: str | os.PathLike | None = None,
) -> float:
    """VGG-16 feature-reconstruction distance ``mse(phi(a), phi(b))`` at one tap, as a float.

    The quantity the paper's perceptual loss minimises, for evaluation: lower is closer in feature
    space. Units follow the loaded weights (Caffe: features of 0..255 inputs).

    Parameters
    ----------
    a, b : ndarray or Tensor
        Same-shape images: numpy (H, W, 3) or gray (H, W), uint8 or floats in [0, 1]; or tensors
        (3, H, W) / (N, 3, H, W) in [0, 1] (the mean over the batch is returned).
    layer : str
        VGG tap.
    weights : path, optional
        VGG weights; see :class:`VGGFeatures`. The extractor is cached per (layer, file).
    """
    layer = _check_layers(layer, "layer")[0]
    ta, tb = _as_image_tensor(a, "a"), _as_image_tensor(b, "b")
    if ta.shape != tb.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(ta.shape)} and {tuple(tb.shape)}")
    vgg = _cached_vgg(layer, weights)
    dev = vgg._scale.device
    with torch.no_grad():
        fa = vgg(ta.to(dev), (layer,))[layer]
        fb = vgg(tb.to(dev), (layer,))[layer]
        return float(F.mse_loss(fa.double(), fb.double()))
