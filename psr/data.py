"""Training data: HR patches from a folder of images and the LR images made from them.

Degradations (``--degradation``):

* ``"paper"``: Gaussian blur sigma=1.0, then antialiased bicubic downsampling by f (Johnson et al.).
* ``"bicubic"``: MATLAB-compatible antialiased bicubic downsampling only, exactly the benchmark's
  LR. A model trained on blurred LR over-sharpens such inputs.
* ``"blur_range:LO:HI"``: blur with sigma drawn uniformly from [LO, HI] per patch, then bicubic.

LR patches are rounded to 8 bits (``quantize=True``) because benchmark and user LR images are.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .resize import imresize

__all__ = [
    "IMAGE_SUFFIXES",
    "Degradation",
    "PatchSampler",
    "default_shared_dir",
    "find_images",
    "gaussian_blur",
    "load_rgb",
    "split_train_val",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def default_shared_dir() -> Path:
    """``$PSR_SHARED``, else ``../shared`` beside the repository (where training data lives)."""
    env = os.environ.get("PSR_SHARED")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "shared"


def find_images(root: str | os.PathLike) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data directory {str(root)!r} does not exist")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {str(root)!r}")
    return files


def split_train_val(files: list[Path], n_val: int = 20) -> tuple[list[Path], list[Path]]:
    """A fixed validation split: every k-th file of the sorted list, so it spans every sub-folder."""
    if n_val <= 0:
        return list(files), []
    if n_val >= len(files):
        raise ValueError(f"n_val={n_val} leaves no training images out of {len(files)}")
    step = len(files) / n_val
    val_idx = {int(i * step + step / 2) for i in range(n_val)}
    train = [f for i, f in enumerate(files) if i not in val_idx]
    val = [f for i, f in enumerate(files) if i in val_idx]
    return train, val


def load_rgb(path: str | os.PathLike) -> torch.Tensor:
    """(3, H, W) uint8 tensor."""
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W) with radius ceil(3 sigma) and reflect padding."""
    if sigma <= 0:
        return x
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.reshape(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, k.reshape(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


@dataclass(frozen=True)
class Degradation:
    """How LR is made from HR; see the module docstring for the names."""

    sigma_lo: float = 0.0
    sigma_hi: float = 0.0
    name: str = "bicubic"

    @classmethod
    def parse(cls, spec: str) -> Degradation:
        if spec == "bicubic":
            return cls(0.0, 0.0, "bicubic")
        if spec == "paper":
            return cls(1.0, 1.0, "paper")
        if spec.startswith("blur_range:"):
            try:
                lo, hi = (float(v) for v in spec.split(":")[1:])
            except ValueError:
                raise ValueError(f"degradation {spec!r}: expected 'blur_range:LO:HI'") from None
            if not 0 <= lo <= hi:
                raise ValueError(f"degradation {spec!r}: need 0 <= LO <= HI")
            return cls(lo, hi, spec)
        raise ValueError(f"degradation must be 'paper', 'bicubic' or 'blur_range:LO:HI', got {spec!r}")

    def __call__(self, hr: torch.Tensor, scale: int, gen: torch.Generator | None = None) -> torch.Tensor:
        """LR (N, C, H/f, W/f) from float HR in [0, 1]."""
        if self.sigma_hi > 0:
            if self.sigma_lo == self.sigma_hi:
                hr = gaussian_blur(hr, self.sigma_lo)
            else:
                sig = torch.empty(hr.shape[0]).uniform_(self.sigma_lo, self.sigma_hi, generator=gen)
                hr = torch.cat([gaussian_blur(hr[i : i + 1], float(s)) for i, s in enumerate(sig)])
        return imresize(hr, 1.0 / scale)  # type: ignore[return-value]


class PatchSampler:
    """Random HR patches with random flips/transposes, and their degraded LR.

    Images whose short side is below ``patch`` are skipped (reported in ``skipped``). Sampling picks
    an image with probability proportional to its number of possible patch positions, so large
    images are not under-sampled. Everything random flows through the passed ``torch.Generator``, so
    a run is reproducible and resumable from the generator's state.
    """

    def __init__(
        self,
        files: list[Path],
        *,
        patch: int,
        scale: int,
        degradation: Degradation,
        quantize: bool = True,
    ) -> None:
        if patch % scale:
            raise ValueError(f"patch ({patch}) must be a multiple of scale ({scale})")
        self.patch, self.scale, self.degradation, self.quantize = patch, scale, degradation, quantize
        self.images: list[torch.Tensor] = []
        self.skipped: list[Path] = []
        for f in files:
            img = load_rgb(f)
            if min(img.shape[1:]) < patch:
                self.skipped.append(f)
            else:
                self.images.append(img)
        if not self.images:
            raise ValueError(f"no training image is at least {patch}x{patch} pixels")
        w = torch.tensor([(i.shape[1] - patch + 1) * (i.shape[2] - patch + 1) for i in self.images], dtype=torch.float64)
        self.weights = w / w.sum()

    def batch(self, batch_size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(lr, hr) float32 in [0, 1]: (B, 3, P/f, P/f) and (B, 3, P, P)."""
        p = self.patch
        idx = torch.multinomial(self.weights, batch_size, replacement=True, generator=gen)
        hrs = []
        for i in idx.tolist():
            img = self.images[i]
            y = int(torch.randint(0, img.shape[1] - p + 1, (1,), generator=gen))
            x = int(torch.randint(0, img.shape[2] - p + 1, (1,), generator=gen))
            crop = img[:, y : y + p, x : x + p]
            flips = torch.randint(0, 2, (3,), generator=gen).tolist()
            if flips[0]:
                crop = crop.flip(-1)
            if flips[1]:
                crop = crop.flip(-2)
            if flips[2]:
                crop = crop.transpose(-1, -2)
            hrs.append(crop)
        hr = torch.stack(hrs).float() / 255.0
        lr = self.degradation(hr, self.scale, gen).clamp(0, 1)
        if self.quantize:
            lr = torch.round(lr * 255.0) / 255.0
        return lr, hr
