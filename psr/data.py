"""Training data: HR patches from a folder of images and the LR images made from them.

Degradations (``--degradation``):

* ``"paper"``: Gaussian blur sigma=1.0, then antialiased bicubic downsampling by f (Johnson et al.).
* ``"bicubic"``: MATLAB-compatible antialiased bicubic downsampling only, exactly the benchmark's
  LR. A model trained on blurred LR over-sharpens such inputs.
* ``"blur_range:LO:HI"``: blur with sigma drawn uniformly from [LO, HI] per patch, then bicubic.

LR patches are rounded to 8 bits (``quantize=True``) because benchmark and user LR images are.

Randomness: sample ``j`` of training iteration ``i`` is drawn from its own generator seeded from
``(seed, i, j)`` (:func:`sample_seed`). A batch is therefore a pure function of the seed and the
iteration: it does not depend on how many worker processes make it, on which DDP rank it is made,
or on what ran before, so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .resize import imresize

__all__ = [
    "IMAGE_SUFFIXES",
    "SMALL_IMAGE_RULES",
    "Degradation",
    "IterationBatches",
    "PatchSampler",
    "default_shared_dir",
    "find_images",
    "gaussian_blur",
    "load_rgb",
    "make_loader",
    "sample_seed",
    "split_train_val",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SMALL_IMAGE_RULES = ("skip", "pad")


def default_shared_dir() -> Path:
    """``$PSR_SHARED``, else ``../shared`` beside the repository (where training data lives)."""
    env = os.environ.get("PSR_SHARED")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "shared"


def find_images(root: str | os.PathLike) -> list[Path]:
    """Every image file (by suffix, see ``IMAGE_SUFFIXES``) under ``root``, sorted by path.

    Raises
    ------
    FileNotFoundError
        ``root`` is not a directory.
    ValueError
        No image is found.
    """
    root = Path(root)
    if root.is_file():
        raise FileNotFoundError(f"data folder {str(root)!r} is a file; expected a folder of images")
    if not root.is_dir():
        raise FileNotFoundError(
            f"data folder {str(root)!r} does not exist (the default data live under $PSR_SHARED/data, or "
            "../shared/data beside a source checkout: set PSR_SHARED or pass the folder)"
        )
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {str(root)!r}")
    return files


def split_train_val(files: list[Path], n_val: int = 20) -> tuple[list[Path], list[Path]]:
    """A fixed validation split: every k-th file of the sorted list, so it spans every sub-folder.

    Returns ``(train, val)``; the split depends only on the sorted file list and ``n_val``.
    """
    if n_val <= 0:
        return list(files), []
    if n_val >= len(files):
        raise ValueError(f"n_val={n_val} leaves no training images out of {len(files)}")
    step = len(files) / n_val
    val_idx = {int(i * step + step / 2) for i in range(n_val)}
    train = [f for i, f in enumerate(files) if i not in val_idx]
    val = [f for i, f in enumerate(files) if i in val_idx]
    return train, val


def refuse_wide_png(path: str | os.PathLike) -> None:
    """ValueError for a 16-bit RGB, RGBA or gray+alpha PNG, which Pillow reads at 8 bits per sample
    (as mode RGB, RGBA or LA, unseen); 16-bit gray PNGs decode fully (mode I;16)."""
    with open(path, "rb") as fh:
        head = fh.read(26)
    # Signature (8 bytes), IHDR's length and type (8), width and height (8), bit depth, colour type.
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return
    depth, colour = head[24], head[25]
    kind = {2: "RGB", 4: "gray+alpha", 6: "RGBA"}.get(colour) if depth == 16 else None
    if kind is not None:
        raise ValueError(
            f"{path}: a 16-bit {kind} PNG, which Pillow can only read at 8 bits per sample; save it as a "
            "16-bit TIFF to keep its precision (e.g. `magick in.png out.tif`), or as an 8-bit PNG"
        )


# PIL modes of 8-bit gray, colour or palette images; RGB conversion keeps their values. 16-bit,
# 32-bit and float modes (I;16, I, F) do not: convert("RGB") saturates or zeroes them.
_EIGHT_BIT_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")


def load_rgb(path: str | os.PathLike) -> torch.Tensor:
    """The image at ``path`` as a (3, H, W) uint8 tensor (gray and RGBA converted to RGB), turned
    upright by its EXIF orientation as ``psr upscale`` reads it.

    Raises
    ------
    ValueError
        The image is not an 8-bit gray, colour or palette image (16-bit, 32-bit or float data, which
        training on 8-bit photographs cannot use without a choice of intensity mapping).
    """
    from PIL import Image, ImageOps

    refuse_wide_png(path)
    with Image.open(path) as im:
        if im.mode not in _EIGHT_BIT_MODES:
            raise ValueError(
                f"{str(path)!r}: mode {im.mode!r} is not an 8-bit gray or colour image; training reads 8-bit "
                "images (convert it, e.g. scale 16-bit data to 0..255, or leave it out of --data)"
            )
        arr = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W), radius ``ceil(3 sigma)``, mirror (``reflect``) padding.

    The kernel is normalised to sum to 1. ``sigma <= 0`` returns ``x`` unchanged. This equals
    ``scipy.ndimage.gaussian_filter(x, (0, 0, sigma, sigma), mode="mirror", truncate=r / sigma)``.
    """
    if x.ndim != 4:
        raise ValueError(f"x must be (N, C, H, W), got shape {tuple(x.shape)}")
    if not math.isfinite(sigma):
        raise ValueError(f"sigma must be finite, got {sigma}")
    if sigma <= 0:
        return x
    r = max(1, math.ceil(3 * sigma))
    if r >= min(x.shape[-2:]):
        raise ValueError(f"sigma={sigma} needs images larger than {r} pixels per side, got shape {tuple(x.shape)}")
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
        """``"paper"``, ``"bicubic"`` or ``"blur_range:LO:HI"`` (0 <= LO <= HI)."""
        if not isinstance(spec, str):
            raise TypeError(f"degradation must be a string, got {type(spec).__name__}")
        if spec == "bicubic":
            return cls(0.0, 0.0, "bicubic")
        if spec == "paper":
            return cls(1.0, 1.0, "paper")
        if spec.startswith("blur_range:"):
            try:
                lo, hi = (float(v) for v in spec.split(":")[1:])
            except ValueError:
                raise ValueError(f"degradation {spec!r}: expected 'blur_range:LO:HI'") from None
            if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi):
                raise ValueError(f"degradation {spec!r}: need finite 0 <= LO <= HI")
            return cls(lo, hi, spec)
        raise ValueError(f"degradation must be 'paper', 'bicubic' or 'blur_range:LO:HI', got {spec!r}")

    def draw_sigma(self, gen: torch.Generator | None = None) -> float:
        """One blur sigma: fixed for 'paper'/'bicubic', uniform in [LO, HI] for a range."""
        if self.sigma_lo == self.sigma_hi:
            return self.sigma_lo
        return float(torch.empty(1, dtype=torch.float64).uniform_(self.sigma_lo, self.sigma_hi, generator=gen))

    def apply(self, hr: torch.Tensor, scale: int, sigmas: Sequence[float]) -> torch.Tensor:
        """LR (N, C, ceil(H/f), ceil(W/f)) from float HR (N, C, H, W) with one blur sigma per image."""
        if hr.ndim != 4 or not hr.is_floating_point():
            raise ValueError(f"hr must be a float (N, C, H, W) tensor, got {hr.dtype} shape {tuple(hr.shape)}")
        if len(sigmas) != hr.shape[0]:
            raise ValueError(f"sigmas must have one value per image ({hr.shape[0]}), got {len(sigmas)}")
        if any(s > 0 for s in sigmas):
            if all(s == sigmas[0] for s in sigmas):
                hr = gaussian_blur(hr, float(sigmas[0]))
            else:
                hr = torch.cat([gaussian_blur(hr[i : i + 1], float(s)) for i, s in enumerate(sigmas)])
        return imresize(hr, 1.0 / scale)  # type: ignore[return-value]

    def __call__(self, hr: torch.Tensor, scale: int, gen: torch.Generator | None = None) -> torch.Tensor:
        """LR (N, C, H/f, W/f) from float HR in [0, 1], sigmas drawn from ``gen``."""
        return self.apply(hr, scale, [self.draw_sigma(gen) for _ in range(hr.shape[0])])


def sample_seed(seed: int, iteration: int, index: int) -> int:
    """A 63-bit seed for sample ``index`` of ``iteration``, well mixed by NumPy's SeedSequence."""
    for name, v in (("seed", seed), ("iteration", iteration), ("index", index)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
    lo, hi = np.random.SeedSequence([int(seed), int(iteration), int(index)]).generate_state(2, np.uint32)
    return (int(hi) << 31) ^ int(lo)


def _pad_symmetric(img: torch.Tensor, patch: int) -> torch.Tensor:
    """Mirror-pad (3, h, w) so both sides are at least ``patch``, split evenly before and after."""
    h, w = img.shape[1:]
    ph, pw = max(0, patch - h), max(0, patch - w)
    pads = ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2))
    # numpy's "symmetric" repeats the edge sample (MATLAB's convention) and handles pads > size.
    return torch.from_numpy(np.pad(img.numpy(), pads, mode="symmetric"))


class PatchSampler:
    """Random HR patches with random flips/transposes, and their degraded LR.

    Parameters
    ----------
    files : list of Path
        Training images.
    patch : int
        HR patch size, a multiple of ``scale``.
    scale : int
        Downsampling factor of the LR.
    degradation : Degradation
        How LR is made from HR.
    quantize : bool
        Round LR to 8 bits, as benchmark and user images are.
    small : {"skip", "pad"}
        Rule for images whose shorter side is below ``patch``: ``"skip"`` leaves them out (listed
        in ``skipped``); ``"pad"`` mirror-pads them (edge sample repeated, evenly on both sides)
        up to ``patch`` and samples them like any other image (listed in ``padded``).

    Notes
    -----
    An image is picked with probability proportional to its number of patch positions, so every
    (image, position) pair is equally likely and large images are not under-sampled.
    """

    def __init__(
        self,
        files: list[Path],
        *,
        patch: int,
        scale: int,
        degradation: Degradation,
        quantize: bool = True,
        small: str = "skip",
    ) -> None:
        if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
            raise ValueError(f"scale must be a positive integer, got {scale!r}")
        if isinstance(patch, bool) or not isinstance(patch, int) or patch < scale:
            raise ValueError(f"patch must be an integer >= scale ({scale}), got {patch!r}")
        if patch % scale:
            raise ValueError(f"patch ({patch}) must be a multiple of scale ({scale})")
        if small not in SMALL_IMAGE_RULES:
            raise ValueError(f"small must be one of {SMALL_IMAGE_RULES}, got {small!r}")
        if not isinstance(degradation, Degradation):
            raise TypeError(f"degradation must be a Degradation, got {type(degradation).__name__}")
        self.patch, self.scale, self.degradation, self.quantize = patch, scale, degradation, quantize
        self.small = small
        self.images: list[torch.Tensor] = []
        self.skipped: list[Path] = []
        self.padded: list[Path] = []
        for f in files:
            img = load_rgb(f)
            if min(img.shape[1:]) < patch:
                if small == "skip":
                    self.skipped.append(f)
                    continue
                img = _pad_symmetric(img, patch)
                self.padded.append(f)
            self.images.append(img)
        if not self.images:
            raise ValueError(f"no training image is at least {patch}x{patch} pixels (small={small!r})")
        w = torch.tensor(
            [(i.shape[1] - patch + 1) * (i.shape[2] - patch + 1) for i in self.images], dtype=torch.float64
        )
        self.weights = w / w.sum()

    def _crop(self, gen: torch.Generator) -> torch.Tensor:
        """One random uint8 (3, P, P) crop with random flips and transpose."""
        p = self.patch
        img = self.images[int(torch.multinomial(self.weights, 1, generator=gen))]
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
        return crop

    def _finish(self, crops: list[torch.Tensor], sigmas: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
        hr = torch.stack(crops).float() / 255.0
        lr = self.degradation.apply(hr, self.scale, sigmas).clamp(0, 1)
        if self.quantize:
            lr = torch.round(lr * 255.0) / 255.0
        return lr.contiguous(), hr.contiguous()

    def batch(self, batch_size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(lr, hr) float32 in [0, 1]: (B, 3, P/f, P/f) and (B, 3, P, P), all drawn from ``gen``.

        The sequential sampler: the stream depends on ``gen``'s state. Training uses
        :meth:`batch_at`, which depends only on (seed, iteration).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        crops, sigmas = [], []
        for _ in range(batch_size):
            crops.append(self._crop(gen))
            sigmas.append(self.degradation.draw_sigma(gen))
        return self._finish(crops, sigmas)

    def batch_at(self, iteration: int, seed: int, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples ``indices`` of ``iteration``'s batch, each from its own seeded generator.

        Returns (lr, hr) as :meth:`batch`, a pure function of ``(seed, iteration, indices)``.
        """
        if len(indices) == 0:
            raise ValueError("indices must not be empty")
        crops, sigmas = [], []
        for j in indices:
            gen = torch.Generator().manual_seed(sample_seed(seed, iteration, j))
            crops.append(self._crop(gen))
            sigmas.append(self.degradation.draw_sigma(gen))
        return self._finish(crops, sigmas)


class IterationBatches(Dataset):
    """Map-style dataset whose item ``k`` is the batch of iteration ``start + k``.

    With DDP, rank ``r`` of ``world_size`` gets samples ``r*b .. (r+1)*b - 1`` of each global batch
    of ``batch_size`` (``b = batch_size // world_size``), so the data of a run does not depend on how
    many processes share it.
    """

    def __init__(
        self,
        sampler: PatchSampler,
        *,
        batch_size: int,
        seed: int,
        start: int,
        stop: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if batch_size % world_size:
            raise ValueError(f"batch_size ({batch_size}) must be a multiple of the number of processes ({world_size})")
        if not 0 <= start <= stop:
            raise ValueError(f"need 0 <= start <= stop, got start={start}, stop={stop}")
        self.sampler, self.seed, self.start, self.stop = sampler, seed, start, stop
        b = batch_size // world_size
        self.indices = list(range(rank * b, (rank + 1) * b))

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= k < len(self):
            raise IndexError(k)
        return self.sampler.batch_at(self.start + k, self.seed, self.indices)


def make_loader(
    sampler: PatchSampler,
    *,
    batch_size: int,
    seed: int,
    start: int,
    stop: int,
    workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader yielding (lr, hr) for iterations ``start .. stop - 1`` in order.

    ``workers`` processes make batches ahead of the training loop; the batches are the same for
    any number of workers (each is a function of seed and iteration only).
    """
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    ds = IterationBatches(
        sampler, batch_size=batch_size, seed=seed, start=start, stop=stop, rank=rank, world_size=world_size
    )
    return DataLoader(
        ds,
        batch_size=None,  # items are whole batches
        shuffle=False,
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=2 if workers else None,
        # A private generator: creating the iterator must not consume the global torch RNG,
        # whose state is checkpointed.
        generator=torch.Generator().manual_seed(0),
    )
