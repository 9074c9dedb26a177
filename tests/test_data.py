"""Training data: degradations, patch sampling, determinism, workers, small-image rule."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from psr.data import (
    Degradation,
    IterationBatches,
    PatchSampler,
    find_images,
    gaussian_blur,
    load_rgb,
    make_loader,
    sample_seed,
    split_train_val,
)
from psr.resize import imresize

from .conftest import write_png16


def write_images(folder: Path, sizes: list[tuple[int, int]], rng: np.random.Generator) -> list[Path]:
    """Smooth random RGB images (h, w) as PNGs: bicubic-enlarged noise, so blur and resize matter."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (h, w) in enumerate(sizes):
        small = rng.integers(0, 256, (max(2, h // 3), max(2, w // 3), 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.BICUBIC)
        paths.append(folder / f"im{i:02d}.png")
        img.save(paths[-1])
    return paths


@pytest.fixture
def images(tmp_path: Path, rng: np.random.Generator) -> list[Path]:
    return write_images(tmp_path / "train", [(45, 61), (70, 52), (33, 97), (64, 64)], rng)


# ---------------------------------------------------------------------------------------------
# gaussian blur against independent references


def _direct_blur64(x: np.ndarray, sigma: float) -> np.ndarray:
    """float64 2-D convolution with the explicit 2-D Gaussian, mirror padding, by loops over taps."""
    r = max(1, math.ceil(3 * sigma))
    t = np.arange(-r, r + 1)
    k2 = np.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / (2 * sigma**2))
    k2 /= k2.sum()
    h, w = x.shape[-2:]
    xp = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(r, r), (r, r)], mode="reflect")
    out = np.zeros_like(x, dtype=np.float64)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            out += k2[dy, dx] * xp[..., dy : dy + h, dx : dx + w]
    return out


@pytest.mark.parametrize("sigma", [0.6, 1.0, 1.7])
def test_gaussian_blur_matches_direct_float64_convolution(rng: np.random.Generator, sigma: float) -> None:
    x = rng.random((2, 3, 23, 31))
    ref = _direct_blur64(x, sigma)
    got64 = gaussian_blur(torch.from_numpy(x), sigma).numpy()
    np.testing.assert_allclose(got64, ref, rtol=0, atol=1e-12)
    got32 = gaussian_blur(torch.from_numpy(x).float(), sigma).numpy()
    np.testing.assert_allclose(got32, ref, rtol=0, atol=2e-6)


@pytest.mark.parametrize("sigma", [0.8, 1.0, 2.3])
def test_gaussian_blur_matches_scipy(rng: np.random.Generator, sigma: float) -> None:
    ndimage = pytest.importorskip("scipy.ndimage")
    x = rng.random((1, 3, 29, 19))
    r = max(1, math.ceil(3 * sigma))
    ref = ndimage.gaussian_filter(x, sigma=(0, 0, sigma, sigma), mode="mirror", truncate=r / sigma)
    np.testing.assert_allclose(gaussian_blur(torch.from_numpy(x), sigma).numpy(), ref, rtol=0, atol=1e-12)


def test_gaussian_blur_bad_input() -> None:
    x = torch.rand(1, 3, 8, 8)
    assert gaussian_blur(x, 0.0) is x
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur(x, 3.0)  # radius 9 does not fit an 8-pixel image
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur(x, float("nan"))
    with pytest.raises(ValueError, match="x must be"):
        gaussian_blur(torch.rand(3, 8, 8), 1.0)


# ---------------------------------------------------------------------------------------------
# degradations


def test_degradation_parse() -> None:
    assert Degradation.parse("paper") == Degradation(1.0, 1.0, "paper")
    assert Degradation.parse("bicubic") == Degradation(0.0, 0.0, "bicubic")
    assert Degradation.parse("blur_range:0.5:1.5") == Degradation(0.5, 1.5, "blur_range:0.5:1.5")
    for bad in ("gauss", "blur_range:1", "blur_range:a:b", "blur_range:2:1", "blur_range:-1:1", "blur_range:0:inf"):
        with pytest.raises(ValueError, match="degradation"):
            Degradation.parse(bad)
    with pytest.raises(TypeError, match="degradation"):
        Degradation.parse(1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("scale", [2, 3, 4, 8])
@pytest.mark.parametrize("spec", ["paper", "bicubic", "blur_range:0.3:1.2"])
def test_degradation_shapes(images: list[Path], scale: int, spec: str) -> None:
    patch = 4 * scale if scale < 8 else 32
    s = PatchSampler(images, patch=patch, scale=scale, degradation=Degradation.parse(spec))
    lr, hr = s.batch_at(5, 1, range(3))
    assert hr.shape == (3, 3, patch, patch) and lr.shape == (3, 3, patch // scale, patch // scale)
    assert lr.dtype == hr.dtype == torch.float32
    assert 0 <= float(lr.min()) and float(lr.max()) <= 1
    # LR is 8-bit quantised, HR is the 8-bit source.
    torch.testing.assert_close(lr * 255, torch.round(lr * 255), rtol=0, atol=1e-4)
    torch.testing.assert_close(hr * 255, torch.round(hr * 255), rtol=0, atol=1e-4)


def test_bicubic_lr_equals_imresize_of_hr(images: list[Path]) -> None:
    s = PatchSampler(images, patch=32, scale=4, degradation=Degradation.parse("bicubic"))
    lr, hr = s.batch_at(3, 7, range(4))
    # Float path as in training: the same numbers exactly.
    ref = torch.round(imresize(hr, 0.25).clamp(0, 1) * 255) / 255
    torch.testing.assert_close(lr, ref, rtol=0, atol=0)
    # uint8 path (float64 inside, rounded): as MATLAB on uint8, at most one level apart on ties.
    ref8 = imresize((hr * 255).round().to(torch.uint8), 0.25)
    diff = (lr * 255).round().to(torch.int16) - ref8.to(torch.int16)
    assert int(diff.abs().max()) <= 1 and float((diff != 0).float().mean()) < 0.01


def test_paper_lr_is_blur_then_imresize(images: list[Path]) -> None:
    ndimage = pytest.importorskip("scipy.ndimage")
    s = PatchSampler(images, patch=32, scale=2, degradation=Degradation.parse("paper"), quantize=False)
    lr, hr = s.batch_at(0, 0, range(2))
    blurred = ndimage.gaussian_filter(hr.double().numpy(), sigma=(0, 0, 1.0, 1.0), mode="mirror", truncate=3.0)
    ref = imresize(torch.from_numpy(blurred), 0.5).clamp(0, 1).float()
    torch.testing.assert_close(lr, ref, rtol=0, atol=1e-5)
    # and the blur matters: plain bicubic differs clearly
    assert float((imresize(hr, 0.5) - lr).abs().max()) > 0.01


def test_blur_range_draws_per_sample(rng: np.random.Generator) -> None:
    d = Degradation.parse("blur_range:0.4:1.6")
    gen = torch.Generator().manual_seed(int(rng.integers(1 << 31)))
    sig = [d.draw_sigma(gen) for _ in range(200)]
    assert 0.4 <= min(sig) and max(sig) <= 1.6 and np.std(sig) > 0.2
    hr = torch.from_numpy(rng.random((3, 3, 24, 24))).float()
    per = d.apply(hr, 4, sig[:3])
    for i in range(3):
        one = imresize(gaussian_blur(hr[i : i + 1], sig[i]), 0.25)
        torch.testing.assert_close(per[i : i + 1], one, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="sigmas"):
        d.apply(hr, 4, sig[:2])


# ---------------------------------------------------------------------------------------------
# sampling


def test_sample_seed() -> None:
    seeds = {sample_seed(s, i, j) for s in range(3) for i in range(20) for j in range(4)}
    assert len(seeds) == 3 * 20 * 4
    assert sample_seed(5, 6, 7) == sample_seed(5, 6, 7)
    assert all(0 <= v < 2**63 for v in seeds)
    for bad in ((-1, 0, 0), (0, -1, 0), (0, 0, 1.5), (True, 0, 0)):
        with pytest.raises(ValueError):
            sample_seed(*bad)  # type: ignore[arg-type]


def test_batches_are_deterministic_per_seed_and_iteration(images: list[Path]) -> None:
    s = PatchSampler(images, patch=24, scale=4, degradation=Degradation.parse("blur_range:0.3:1.5"))
    lr1, hr1 = s.batch_at(11, 3, range(4))
    lr2, hr2 = s.batch_at(11, 3, range(4))
    assert torch.equal(lr1, lr2) and torch.equal(hr1, hr2)
    _, hr_other_it = s.batch_at(12, 3, range(4))
    _, hr_other_seed = s.batch_at(11, 4, range(4))
    assert not torch.equal(hr1, hr_other_it) and not torch.equal(hr1, hr_other_seed)
    # A sample does not depend on which other samples are drawn with it (DDP shards, resume).
    lr_b, hr_b = s.batch_at(11, 3, [2, 3])
    assert torch.equal(hr_b, hr1[2:]) and torch.equal(lr_b, lr1[2:])
    # Another sampler over the same files reproduces the batch.
    s2 = PatchSampler(images, patch=24, scale=4, degradation=Degradation.parse("blur_range:0.3:1.5"))
    assert torch.equal(s2.batch_at(11, 3, range(4))[1], hr1)


def test_sequential_batch_follows_generator(images: list[Path]) -> None:
    s = PatchSampler(images, patch=24, scale=4, degradation=Degradation.parse("paper"))
    g = torch.Generator().manual_seed(9)
    state = g.get_state()
    a = s.batch(3, g)
    g.set_state(state)
    b = s.batch(3, g)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(s.batch(3, g)[1], a[1])


def _dihedral(x: torch.Tensor) -> list[torch.Tensor]:
    out = []
    for t in (False, True):
        y = x.transpose(-1, -2) if t else x
        for fy in (False, True):
            for fx in (False, True):
                z = y.flip(-2) if fy else y
                out.append(z.flip(-1) if fx else z)
    return out


def test_patches_are_crops_of_the_images_under_flips(images: list[Path]) -> None:
    p = 16
    s = PatchSampler(images, patch=p, scale=4, degradation=Degradation.parse("bicubic"))
    srcs = [load_rgb(f) for f in images]
    _, hr = s.batch_at(0, 0, range(6))
    for patch in (hr * 255).round().to(torch.uint8):
        # undo every dihedral transform and look for the result in every image
        found = False
        for cand in _dihedral(patch):
            for img in srcs:
                win = img.unfold(1, p, 1).unfold(2, p, 1)  # (3, H-p+1, W-p+1, p, p)
                if (win == cand[:, None, None]).all(dim=(0, 3, 4)).any():
                    found = True
                    break
            if found:
                break
        assert found


def test_image_choice_proportional_to_positions(tmp_path: Path) -> None:
    # Two flat images of different sizes: the patch colour says which image it came from.
    folder = tmp_path / "flat"
    folder.mkdir()
    Image.new("RGB", (40, 30), (10, 10, 10)).save(folder / "a.png")  # (30-9+1)*(40-9+1) = 704 positions
    Image.new("RGB", (20, 12), (200, 200, 200)).save(folder / "b.png")  # (12-9+1)*(20-9+1) = 48 positions
    s = PatchSampler(find_images(folder), patch=9, scale=3, degradation=Degradation.parse("bicubic"))
    n = 3000
    _, hr = s.batch_at(0, 1, range(n))
    frac_b = float((hr[:, 0, 0, 0] > 0.5).float().mean())
    expect = 48 / (704 + 48)
    assert abs(frac_b - expect) < 4 * math.sqrt(expect * (1 - expect) / n)


def test_small_image_rule(tmp_path: Path, rng: np.random.Generator) -> None:
    files = write_images(tmp_path / "mix", [(50, 60), (20, 70), (15, 18)], rng)
    skip = PatchSampler(files, patch=24, scale=4, degradation=Degradation.parse("bicubic"), small="skip")
    assert skip.skipped == files[1:] and len(skip.images) == 1 and skip.padded == []
    pad = PatchSampler(files, patch=24, scale=4, degradation=Degradation.parse("bicubic"), small="pad")
    assert pad.padded == files[1:] and len(pad.images) == 3 and pad.skipped == []
    # 15x18 -> 24x24, mirrored with the edge sample repeated: pads (4, 5) rows and (3, 3) columns.
    orig, padded = load_rgb(files[2]), pad.images[2]
    assert padded.shape == (3, 24, 24)
    assert torch.equal(padded[:, 4:19, 3:21], orig)
    for k in range(4):
        assert torch.equal(padded[:, 3 - k, 3:21], orig[:, k])  # top: row k mirrored
    for k in range(5):
        assert torch.equal(padded[:, 19 + k, 3:21], orig[:, 14 - k])  # bottom
    for k in range(3):
        assert torch.equal(padded[:, 4:19, 2 - k], orig[:, :, k])  # left
    lr, hr = pad.batch_at(0, 0, range(8))
    assert hr.shape == (8, 3, 24, 24) and lr.shape == (8, 3, 6, 6)
    with pytest.raises(ValueError, match="no training image"):
        PatchSampler(files[2:], patch=24, scale=4, degradation=Degradation.parse("bicubic"))


def test_sampler_bad_arguments(images: list[Path]) -> None:
    d = Degradation.parse("bicubic")
    with pytest.raises(ValueError, match="multiple of scale"):
        PatchSampler(images, patch=30, scale=4, degradation=d)
    with pytest.raises(ValueError, match="patch"):
        PatchSampler(images, patch=2, scale=4, degradation=d)
    with pytest.raises(ValueError, match="small"):
        PatchSampler(images, patch=16, scale=4, degradation=d, small="crop")
    with pytest.raises(TypeError, match="degradation"):
        PatchSampler(images, patch=16, scale=4, degradation="bicubic")  # type: ignore[arg-type]
    s = PatchSampler(images, patch=16, scale=4, degradation=d)
    with pytest.raises(ValueError, match="multiple"):
        IterationBatches(s, batch_size=3, seed=0, start=0, stop=4, rank=0, world_size=2)
    with pytest.raises(ValueError, match="rank"):
        IterationBatches(s, batch_size=4, seed=0, start=0, stop=4, rank=2, world_size=2)
    with pytest.raises(ValueError, match="workers"):
        make_loader(s, batch_size=2, seed=0, start=0, stop=1, workers=-1)


# ---------------------------------------------------------------------------------------------
# loaders


def test_loader_independent_of_workers_and_start(images: list[Path]) -> None:
    s = PatchSampler(images, patch=24, scale=4, degradation=Degradation.parse("blur_range:0.5:1.0"))
    torch_state = torch.get_rng_state()
    serial = list(make_loader(s, batch_size=3, seed=5, start=0, stop=5, workers=0))
    assert torch.equal(torch.get_rng_state(), torch_state)  # the global RNG is not consumed
    parallel = list(make_loader(s, batch_size=3, seed=5, start=0, stop=5, workers=2))
    resumed = list(make_loader(s, batch_size=3, seed=5, start=2, stop=5, workers=0))
    assert len(serial) == len(parallel) == 5 and len(resumed) == 3
    for (a_lr, a_hr), (b_lr, b_hr) in zip(serial, parallel, strict=True):
        assert torch.equal(a_lr, b_lr) and torch.equal(a_hr, b_hr)
    for (a_lr, a_hr), (b_lr, b_hr) in zip(serial[2:], resumed, strict=True):
        assert torch.equal(a_lr, b_lr) and torch.equal(a_hr, b_hr)


def test_ddp_shards_make_up_the_global_batch(images: list[Path]) -> None:
    s = PatchSampler(images, patch=24, scale=4, degradation=Degradation.parse("bicubic"))
    whole = IterationBatches(s, batch_size=4, seed=2, start=3, stop=6)
    shards = [IterationBatches(s, batch_size=4, seed=2, start=3, stop=6, rank=r, world_size=2) for r in range(2)]
    for k in range(3):
        lr, hr = whole[k]
        assert torch.equal(torch.cat([sh[k][1] for sh in shards]), hr)
        assert torch.equal(torch.cat([sh[k][0] for sh in shards]), lr)
    with pytest.raises(IndexError):
        whole[3]


def test_split_train_val(tmp_path: Path, rng: np.random.Generator) -> None:
    files = [tmp_path / f"{i:03d}.png" for i in range(57)]
    train, val = split_train_val(files, 7)
    assert len(val) == 7 and len(train) == 50 and not set(train) & set(val)
    assert split_train_val(files, 7) == (train, val)
    assert split_train_val(files, 0) == (files, [])
    with pytest.raises(ValueError, match="n_val"):
        split_train_val(files[:5], 5)


def test_find_images(tmp_path: Path, rng: np.random.Generator) -> None:
    write_images(tmp_path / "a" / "b", [(10, 12)], rng)
    (tmp_path / "a" / "notes.txt").write_text("x")
    assert [p.name for p in find_images(tmp_path)] == ["im00.png"]
    with pytest.raises(FileNotFoundError, match="does not exist.*PSR_SHARED"):
        find_images(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="is a file; expected a folder"):
        find_images(tmp_path / "a" / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        find_images(tmp_path / "empty")


def test_load_rgb_refuses_wide_data_and_turns_photos_upright(tmp_path: Path) -> None:
    """16-bit and float images are refused by name (RGB conversion saturated or zeroed them); a
    photo with an EXIF orientation is read upright, as psr upscale reads it."""
    import tifffile
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 65536, (12, 10)).astype(np.uint16)).save(tmp_path / "g16.png")
    tifffile.imwrite(tmp_path / "f32.tif", rng.random((12, 10)).astype(np.float32))
    write_png16(tmp_path / "rgb48.png", rng.integers(0, 65536, (12, 10, 3)), 2)  # Pillow: mode RGB, 8 bits
    with pytest.raises(ValueError, match="rgb48.png.*16-bit RGB PNG"):
        load_rgb(tmp_path / "rgb48.png")
    from psr.evaluate import load_hr

    with pytest.raises(ValueError, match="rgb48.png.*16-bit RGB PNG"):
        load_hr(tmp_path / "rgb48.png")
    for name in ("g16.png", "f32.tif"):
        with pytest.raises(ValueError, match=rf"{name}.*is not an 8-bit gray or colour image"):
            load_rgb(tmp_path / name)
    rgb = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = 6  # stored rotated: shown after turning 90 degrees clockwise
    im.save(tmp_path / "rot.png", exif=exif)
    got = load_rgb(tmp_path / "rot.png")
    assert got.shape == (3, 10, 12)
    np.testing.assert_array_equal(got.permute(1, 2, 0).numpy(), np.rot90(rgb, k=-1))
