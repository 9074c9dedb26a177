"""The image transformation network of Johnson, Alahi & Fei-Fei (2016) for super-resolution.

Architecture (the paper's supplementary material, Table 2, for upscaling factor f):

    9x9 conv, 64  ->  4 residual blocks (3x3 conv, BN, ReLU, 3x3 conv, BN, identity skip)
    ->  log2(f) x [3x3 conv, stride 1/2, 64, BN, ReLU]  ->  9x9 conv, 3  ->  scaled tanh

The paper trains f = 4 and 8; f = 2 and 3 are this project's additions. f = 3 has one upsampling
stage of factor 3 (a 3x3 transposed conv of stride 3: every output sees exactly one tap, so there is
no uneven kernel overlap to leave a checkerboard; or nearest x3 + 3x3 conv, or a PixelShuffle(3)).

Departures from the paper, all switchable in :class:`SRConfig`:

* ``global_skip=True`` adds a bicubic upsampling of the input to the output, so the network
  learns only the residual. The paper has no such skip. A 25-minute CPU probe on this project's
  machine scored 29.20 dB on Set5 x4 with the skip against 25.49 dB without it (same budget):
  without it the network spends most of a short schedule learning colour and brightness.
  With the skip the head is ``bicubic(x) + tanh(h)`` instead of ``(tanh(h) + 1) / 2``.
* Values are RGB in [0, 1] rather than the paper's [0, 255]; the scaled tanh maps onto [0, 1].
* ``upsample`` may be ``"deconv"`` (the paper's fractionally strided conv, as
  ``ConvTranspose2d(3, stride=2, padding=1, output_padding=1)``), ``"resize_conv"`` (nearest x2,
  then 3x3 conv; Odena et al. 2016, fewer checkerboard artefacts), ``"bilinear_conv"`` (the same
  with bilinear resizing, which leaves no piecewise-constant blocks for the conv to smooth) or
  ``"pixel_shuffle"``.

For inference, :meth:`SRNet.fuse` folds every BatchNorm into the convolution before it.

The style-transfer network (:class:`StyleNet`, the paper's Table 1 of the supplement) is defined
at the end of this module; see its docstring.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from . import _reference

__all__ = ["SR_SCALES", "SR_UPSAMPLE", "SRConfig", "SRNet", "ResidualBlock", "StyleConfig", "StyleNet"]

SR_SCALES = (2, 3, 4, 8)  # the upscaling factors SRNet is built for
SR_UPSAMPLE = ("deconv", "resize_conv", "bilinear_conv", "pixel_shuffle")  # SRConfig.upsample's choices


@dataclass
class SRConfig:
    scale: int = 4  # upscaling factor f in {2, 3, 4, 8}: one 2x upsampling stage per factor of 2, one 3x for 3
    channels: int = 64  # width of every hidden convolution (paper: 64)
    num_blocks: int = 4  # residual blocks at LR resolution (paper: 4)
    upsample: str = "deconv"  # "deconv" (paper) | "resize_conv" | "bilinear_conv" | "pixel_shuffle"
    norm: str = "batch"  # "batch" (paper) | "none"; BN is folded into the convs at inference
    global_skip: bool = True  # output = bicubic(x) + tanh(h); not in the paper (see module doc)
    skip_a: float = -0.5  # Keys parameter of the skip's bicubic: -0.5 is MATLAB's, the benchmark's

    def __post_init__(self) -> None:
        if self.scale not in SR_SCALES:
            *most, last = SR_SCALES
            raise ValueError(f"scale must be {', '.join(map(str, most))} or {last}, got {self.scale!r}")
        if self.upsample not in SR_UPSAMPLE:
            raise ValueError(f"upsample must be one of {', '.join(map(repr, SR_UPSAMPLE))}, got {self.upsample!r}")
        if self.norm not in ("batch", "none"):
            raise ValueError(f"norm must be 'batch' or 'none', got {self.norm!r}")
        if self.channels < 1 or self.num_blocks < 0:
            raise ValueError("channels must be >= 1 and num_blocks >= 0")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SRConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown SRConfig fields: {sorted(unknown)}")
        return cls(**d)


def _norm(cfg: SRConfig, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if cfg.norm == "batch" else nn.Identity()


class ResidualBlock(nn.Module):
    """3x3 conv, BN, ReLU, 3x3 conv, BN, plus the identity (the paper's block, no final ReLU)."""

    def __init__(self, cfg: SRConfig) -> None:
        super().__init__()
        c = cfg.channels
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.bn1 = _norm(cfg, c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.bn2 = _norm(cfg, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))


def _stages(scale: int) -> list[int]:
    """The factors of the upsampling stages: 2 per factor of 2 (the paper), or one 3."""
    return [3] if scale == 3 else [2] * int(math.log2(scale))


def _upsample_layer(cfg: SRConfig, factor: int) -> nn.Module:
    c = cfg.channels
    if cfg.upsample == "deconv":
        if factor == 3:  # output = 3 * input exactly, one tap per output pixel
            return nn.ConvTranspose2d(c, c, 3, stride=3)
        return nn.ConvTranspose2d(c, c, 3, stride=2, padding=1, output_padding=1)
    if cfg.upsample in ("resize_conv", "bilinear_conv"):
        mode = "nearest" if cfg.upsample == "resize_conv" else "bilinear"
        return nn.Sequential(nn.Upsample(scale_factor=factor, mode=mode), nn.Conv2d(c, c, 3, padding=1))
    return nn.Sequential(nn.Conv2d(c, factor * factor * c, 3, padding=1), nn.PixelShuffle(factor))


class SRNet(nn.Module):
    """Maps RGB in [0, 1], (N, 3, H, W), to (N, 3, fH, fW) in [0, 1]."""

    def __init__(self, cfg: SRConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or SRConfig()
        c = cfg.channels
        self.head = nn.Conv2d(3, c, 9, padding=4)
        self.head_bn = _norm(cfg, c)
        self.blocks = nn.Sequential(*[ResidualBlock(cfg) for _ in range(cfg.num_blocks)])
        ups: list[nn.Module] = []
        for factor in _stages(cfg.scale):
            ups += [_upsample_layer(cfg, factor), _norm(cfg, c), nn.ReLU(inplace=True)]
        self.upsample = nn.Sequential(*ups)
        self.tail = nn.Conv2d(c, 3, 9, padding=4)
        if cfg.global_skip:
            # Start close to bicubic: a default-initialised head adds a residual of about +-0.35,
            # 15-18 dB of noise. Not exactly zero: with a zero head every earlier layer gets a zero
            # gradient at first, and a 500-iteration CPU run stayed at bicubic (measured).
            with torch.no_grad():
                self.tail.weight.mul_(0.1)
                self.tail.bias.zero_()

    @property
    def scale(self) -> int:
        return self.cfg.scale

    @property
    def receptive_radius(self) -> int:
        """How many LR pixels beyond a pixel can change its output (bounds tile overlap)."""
        lr = 4 + 2 * self.cfg.num_blocks  # head 9x9, two 3x3 per block
        hr = 2 * len(_stages(self.cfg.scale))  # per stage a 3x3 kernel at the new resolution and its footprint
        hr += 4  # tail 9x9
        skip = 3 if self.cfg.global_skip else 0  # bicubic taps
        return lr + math.ceil(hr / 2) + skip  # HR pixels counted as half an LR pixel: at least f = 2

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pre-activation output ``h`` of the last convolution."""
        y = torch.relu(self.head_bn(self.head(x)))
        y = self.blocks(y)
        y = self.upsample(y)
        return self.tail(y)

    def forward(self, x: torch.Tensor, *, clamp: bool = True) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"x must be RGB (N, 3, H, W), got shape {tuple(x.shape)}")
        h = self.features(x)
        if self.cfg.global_skip:
            out = _reference.upsample_bicubic(x, self.cfg.scale, a=self.cfg.skip_a) + torch.tanh(h)
        else:
            out = (torch.tanh(h) + 1) * 0.5
        return out.clamp(0, 1) if clamp else out

    @torch.no_grad()
    def fuse(self) -> SRNet:
        """A copy in eval mode with every BatchNorm folded into the preceding convolution."""
        fused = copy.deepcopy(self).eval()
        if fused.cfg.norm != "batch":
            return fused

        def fold(conv: nn.Module, bn: nn.BatchNorm2d, transposed: bool, repeat: int = 1) -> None:
            # ``repeat``: a PixelShuffle(r) between conv and BN sends conv channel k to BN channel k // r^2.
            assert isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d))
            std = torch.sqrt(bn.running_var + bn.eps)
            gain = (bn.weight / std).repeat_interleave(repeat)
            shift = (bn.bias - bn.running_mean * bn.weight / std).repeat_interleave(repeat)
            shape = (1, -1, 1, 1) if transposed else (-1, 1, 1, 1)
            conv.weight.mul_(gain.reshape(shape))
            bias = conv.bias if conv.bias is not None else torch.zeros_like(gain)
            conv.bias = nn.Parameter(bias * gain + shift)

        fold(fused.head, fused.head_bn, False)
        fused.head_bn = nn.Identity()
        for blk in fused.blocks:
            fold(blk.conv1, blk.bn1, False)
            fold(blk.conv2, blk.bn2, False)
            blk.bn1, blk.bn2 = nn.Identity(), nn.Identity()
        mods = list(fused.upsample)
        for i in range(0, len(mods), 3):
            up, bn = mods[i], mods[i + 1]
            if isinstance(up, nn.ConvTranspose2d):
                fold(up, bn, True)
            elif isinstance(up[-1], nn.PixelShuffle):
                fold(up[0], bn, False, repeat=up[-1].upscale_factor ** 2)
            else:
                fold(up[-1], bn, False)
            mods[i + 1] = nn.Identity()
        fused.upsample = nn.Sequential(*mods)
        return fused


# ---------------------------------------------------------------------------------------------
# style transfer


@dataclass
class StyleConfig:
    channels: int = 32  # width of the first conv; then 2x and 4x (paper: 32, 64, 128)
    num_blocks: int = 5  # residual blocks at 1/4 resolution (paper: 5)
    norm: str = "instance"  # "instance" (Ulyanov et al. 2016) | "batch" (paper)
    upsample: str = "resize_conv"  # "resize_conv" (nearest x2 + 3x3 conv) | "deconv" (paper)

    def __post_init__(self) -> None:
        if self.norm not in ("instance", "batch"):
            raise ValueError(f"norm must be 'instance' or 'batch', got {self.norm!r}")
        if self.upsample not in ("deconv", "resize_conv"):
            raise ValueError(f"upsample must be 'deconv' or 'resize_conv', got {self.upsample!r}")
        if self.channels < 1 or self.num_blocks < 0:
            raise ValueError("channels must be >= 1 and num_blocks >= 0")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> StyleConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown StyleConfig fields: {sorted(unknown)}")
        return cls(**d)


class _InstanceNorm(nn.Module):
    """Instance normalisation with an affine map, whose statistics can be fixed from outside.

    ``fixed`` (set by :meth:`StyleNet.forward` with ``stats=``) replaces the per-image mean and
    variance, so that tiles of an image are normalised with the whole image's statistics.
    ``record`` (a list) receives the statistics this layer computed.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.fixed: tuple[torch.Tensor, torch.Tensor] | None = None
        self.record: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fixed is not None:
            mean, var = (t.to(x.dtype) for t in self.fixed)
        else:
            # Statistics in float32 at least: bf16 sums over H*W pixels lose too much.
            xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
            var, mean = torch.var_mean(xf, dim=(2, 3), keepdim=True, correction=0)
            if self.record is not None:
                self.record.append((mean.detach(), var.detach()))
            mean, var = mean.to(x.dtype), var.to(x.dtype)
        scale = self.weight.to(x.dtype).reshape(1, -1, 1, 1) * torch.rsqrt(var + self.eps)
        return (x - mean) * scale + self.bias.to(x.dtype).reshape(1, -1, 1, 1)


def _style_norm(cfg: StyleConfig, channels: int) -> nn.Module:
    return _InstanceNorm(channels) if cfg.norm == "instance" else nn.BatchNorm2d(channels)


class _ConvLayer(nn.Sequential):
    """Reflection padding then a convolution (no zero padding anywhere in the style network)."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int = 1) -> None:
        super().__init__(nn.ReflectionPad2d(k // 2), nn.Conv2d(c_in, c_out, k, stride=stride))


class _StyleBlock(nn.Module):
    """3x3 conv, norm, ReLU, 3x3 conv, norm, plus the identity (reflection padded)."""

    def __init__(self, cfg: StyleConfig, c: int) -> None:
        super().__init__()
        self.conv1 = _ConvLayer(c, c, 3)
        self.norm1 = _style_norm(cfg, c)
        self.conv2 = _ConvLayer(c, c, 3)
        self.norm2 = _style_norm(cfg, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.norm2(self.conv2(torch.relu(self.norm1(self.conv1(x)))))


def _style_up(cfg: StyleConfig, c_in: int, c_out: int) -> nn.Module:
    if cfg.upsample == "deconv":
        return nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1)
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), _ConvLayer(c_in, c_out, 3))


class StyleNet(nn.Module):
    """The style-transfer network of Johnson et al.: RGB [0, 1] (N, 3, H, W) to the same shape.

    9x9 conv c -> 3x3 conv 2c stride 2 -> 3x3 conv 4c stride 2 -> ``num_blocks`` residual blocks
    -> 3x3 conv 2c stride 1/2 -> 3x3 conv c stride 1/2 -> 9x9 conv 3 -> ``(tanh + 1) / 2``, each
    hidden conv followed by a norm and a ReLU, with reflection padding. Inputs of any size: H and
    W are reflection-padded (bottom, right) up to multiples of 4 (at least 8) and the output is
    cropped back.

    Departures from the paper (defaults of :class:`StyleConfig`, both switchable): instance
    normalisation instead of batch normalisation (Ulyanov et al. 2016: each image's contrast is
    normalised away, so the network needs no capacity for it; visibly better stylisation for the
    same training) and nearest-neighbour upsampling + conv instead of fractionally strided convs
    (no checkerboard artefacts, Odena et al. 2016). Values are in [0, 1] instead of 0..255.

    ``stats=`` (a list from :meth:`instance_stats`) fixes every instance norm's statistics, so a
    tile normalised with the whole image's statistics matches the whole-image output.
    """

    multiple = 4  # two stride-2 convolutions

    def __init__(self, cfg: StyleConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or StyleConfig()
        c = cfg.channels
        self.conv1, self.norm1 = _ConvLayer(3, c, 9), _style_norm(cfg, c)
        self.conv2, self.norm2 = _ConvLayer(c, 2 * c, 3, stride=2), _style_norm(cfg, 2 * c)
        self.conv3, self.norm3 = _ConvLayer(2 * c, 4 * c, 3, stride=2), _style_norm(cfg, 4 * c)
        self.blocks = nn.Sequential(*[_StyleBlock(cfg, 4 * c) for _ in range(cfg.num_blocks)])
        self.up1, self.norm4 = _style_up(cfg, 4 * c, 2 * c), _style_norm(cfg, 2 * c)
        self.up2, self.norm5 = _style_up(cfg, 2 * c, c), _style_norm(cfg, c)
        self.tail = _ConvLayer(c, 3, 9)

    @property
    def receptive_radius(self) -> int:
        """Input pixels beyond a pixel that can change its output, rounded up to a multiple of 4.

        Counted per layer at its resolution and scaled to input pixels: 9x9 (4), stride-2 3x3 at
        full and half resolution (1 + 2), two 3x3 per block at 1/4 (8 each), the two upsampling
        3x3s at 1/2 and full resolution (4 + 2, plus the nearest-neighbour footprint), 9x9 (4).
        """
        r = 4 + 1 + 2 + 8 * self.cfg.num_blocks + 4 + 2 + 4 + 4
        return -(-r // 4) * 4

    def _norms(self) -> list[_InstanceNorm]:
        return [m for m in self.modules() if isinstance(m, _InstanceNorm)]

    def _body(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.norm1(self.conv1(x)))
        y = torch.relu(self.norm2(self.conv2(y)))
        y = torch.relu(self.norm3(self.conv3(y)))
        y = self.blocks(y)
        y = torch.relu(self.norm4(self.up1(y)))
        y = torch.relu(self.norm5(self.up2(y)))
        return self.tail(y)

    @staticmethod
    def _pad(x: torch.Tensor) -> torch.Tensor:
        # Up to a multiple of 4, and at least 8: the 9x9 reflection pad needs 5 pixels, the 3x3s at
        # 1/4 resolution need 2.
        h, w = x.shape[-2:]
        ph, pw = max(8 - h, -h % StyleNet.multiple), max(8 - w, -w % StyleNet.multiple)
        if ph or pw:
            # Reflection needs pad < size; replicate covers 1- to 3-pixel-wide inputs.
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = torch.nn.functional.pad(x, (0, pw, 0, ph), mode=mode)
        return x

    def forward(self, x: torch.Tensor, *, stats: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"x must be RGB (N, 3, H, W), got shape {tuple(x.shape)}")
        norms = self._norms()
        if stats is not None:
            if len(stats) != len(norms):
                raise ValueError(f"stats must hold {len(norms)} (mean, var) pairs, got {len(stats)}")
            for m, st in zip(norms, stats, strict=True):
                m.fixed = st
        try:
            h, w = x.shape[-2:]
            out = (torch.tanh(self._body(self._pad(x))) + 1) * 0.5
            return out[..., :h, :w]
        finally:
            for m in norms:
                m.fixed = None

    @torch.no_grad()
    def instance_stats(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every instance norm's (mean, var), each (N, C, 1, 1), for the whole (padded) image ``x``.

        Empty for ``norm="batch"``, whose statistics are fixed after training anyway.
        """
        norms = self._norms()
        rec: list[tuple[torch.Tensor, torch.Tensor]] = []
        for m in norms:
            m.record = rec
        try:
            if norms:
                self._body(self._pad(x))
        finally:
            for m in norms:
                m.record = None
        return rec
