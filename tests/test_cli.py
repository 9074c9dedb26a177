"""The psr command line: round trips on PNG and 16-bit TIFF, folders, errors, the sample job."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageOps

import psr
import psr.weights
from psr.cli import build_parser, main

from .conftest import make_tiny_model, write_png16


def test_png_round_trip(
    tmp_path: Path, tiny_model: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture[str]
) -> None:
    arr = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    src = tmp_path / "in.png"
    Image.fromarray(arr).save(src)
    out = tmp_path / "out.png"
    assert main(["upscale", str(src), "-o", str(out), "--model", str(tiny_model), "--quiet"]) == 0
    got = np.asarray(Image.open(out))
    np.testing.assert_array_equal(got, psr.upscale(arr, 4, model=tiny_model))
    # Existing outputs are not overwritten silently: a usage error (status 2), the file untouched.
    before = out.read_bytes()
    assert main(["upscale", str(src), "-o", str(out), "--model", str(tiny_model), "--quiet"]) == 2
    assert out.read_bytes() == before
    assert "exists; pass --overwrite" in capsys.readouterr().err


def test_tiff16_keeps_dtype_and_scales_pixel_size(tmp_path: Path, tiny_model: Path, rng: np.random.Generator) -> None:
    arr = rng.integers(0, 4096, (2, 10, 12)).astype(np.uint16)  # a small Z stack, 12-bit in 16
    src = tmp_path / "stack.tif"
    tifffile.imwrite(src, arr, resolution=(2.0, 4.0), resolutionunit="CENTIMETER")
    outdir = tmp_path / "out"
    assert main(["upscale", str(src), "-o", str(outdir), "--model", str(tiny_model), "--quiet"]) == 0
    target = outdir / "stack_x4.tif"
    with tifffile.TiffFile(target) as tif:
        data = tif.asarray()
        tags = tif.pages[0].tags
        xres, yres = tags["XResolution"].value, tags["YResolution"].value
        unit = tags["ResolutionUnit"].value
    assert data.dtype == np.uint16 and data.shape == (2, 40, 48)
    np.testing.assert_array_equal(data, psr.upscale(arr, 4, model=tiny_model))
    # Pixels per unit grow by 4: the pixel size is divided by the scale.
    assert xres[0] / xres[1] == pytest.approx(8.0) and yres[0] / yres[1] == pytest.approx(16.0)
    assert int(unit) == 3


def test_folder_bicubic_and_graywrite_png16(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    a16 = np.arange(48, dtype=np.uint16).reshape(6, 8) * 1000
    Image.fromarray(a16).save(folder / "a.png")
    Image.fromarray(np.full((5, 7), 77, np.uint8)).save(folder / "b.png")
    (folder / "notes.txt").write_text("ignored")
    out = tmp_path / "out"
    assert main(["upscale", str(folder), "-o", str(out), "--bicubic", "--scale", "2", "--quiet"]) == 0
    a = Image.open(out / "a_x2.png")
    assert a.mode == "I;16" and a.size == (16, 12)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "b_x2.png")), np.full((10, 14), 77, np.uint8))


def test_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["upscale", str(tmp_path / "missing.png"), "-o", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "x.gif"
    bad.write_bytes(b"GIF89a")
    assert main(["upscale", str(bad), "-o", str(tmp_path / "o")]) == 2
    assert "unsupported file type" in capsys.readouterr().err
    src = tmp_path / "ok.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(src)
    assert main(["upscale", str(src), "-o", str(tmp_path / "o"), "--model", "no-such-model", "--quiet"]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert not (tmp_path / "o" / "ok_x4.png").exists()


def test_sample_job_writes_before_after(tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["upscale", "--sample", "chelsea", "-o", str(tmp_path), "--model", str(tiny_model)]) == 0
    for name in ("chelsea_lr.png", "chelsea_psr_x4.png", "chelsea_bicubic_x4.png", "chelsea_compare.png"):
        assert (tmp_path / name).is_file()
    lr = Image.open(tmp_path / "chelsea_lr.png")
    sr = Image.open(tmp_path / "chelsea_psr_x4.png")
    assert (sr.size[0], sr.size[1]) == (lr.size[0] * 4, lr.size[1] * 4)
    assert "PSNR" in capsys.readouterr().out
    # A second run keeps the files contract: existing outputs stop it (nothing rewritten) unless --overwrite.
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert main(["upscale", "--sample", "chelsea", "-o", str(tmp_path), "--model", str(tiny_model)]) == 2
    assert "pass --overwrite to replace them" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before
    args = ["upscale", "--sample", "chelsea", "-o", str(tmp_path), "--model", str(tiny_model), "--overwrite", "--quiet"]
    assert main(args) == 0
    assert capsys.readouterr().out == ""  # --quiet: errors only
    assert main(["upscale", "--sample", "chelsea", "-o", str(tmp_path / "chelsea_lr.png")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_models_listing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    for name, meta in psr.list_models().items():
        line = next(ln for ln in text.splitlines() if ln.startswith(name))
        if "set5_psnr" in meta:  # the score recorded at export, as printed
            assert f"{meta['set5_psnr']:.2f} dB / {meta['set5_ssim']:.4f}" in line, line
    if psr.list_models(task="style"):
        assert "styles: " in text
    assert main(["models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)  # every shipped network, styles included
    assert set(listed) == set(psr.list_models()) | set(psr.list_models(task="style"))


# ---------------------------------------------------------------------------------------------
# review fixes: TIFF axes, input and output checks before any work, metadata, wording, exit codes


def _err_line(capsys: pytest.CaptureFixture[str]) -> str:
    """stderr of a failed command: exactly one line, no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    ("axes", "shape", "dtype"),
    [
        ("ZYX", (3, 9, 7), np.uint16),
        ("ZYX", (5, 7, 3), np.uint16),  # X = 3 is not RGB: the stack is upscaled along Y and X only
        ("TYX", (2, 7, 9), np.uint16),
        ("CYX", (2, 9, 5), np.float32),
        ("TZCYX", (2, 3, 2, 5, 7), np.uint16),
        ("YXS", (7, 9, 3), np.uint8),
    ],
)
def test_imagej_axes_and_metadata_round_trip(
    tmp_path: Path, rng: np.random.Generator, axes: str, shape: tuple[int, ...], dtype: type
) -> None:
    arr = (rng.random(shape) * 4000).astype(dtype) if dtype != np.uint8 else rng.integers(0, 256, shape, np.uint8)
    src = tmp_path / "stack.tif"
    meta = {"axes": axes, "spacing": 2.5, "unit": "um", "finterval": 0.75, "Info": "psr test", "mode": "grayscale"}
    if axes == "YXS":
        del meta["mode"]
    tifffile.imwrite(src, arr, imagej=True, metadata=meta, resolution=(3.0, 3.0))
    out = tmp_path / "out.tif"
    assert main(["upscale", str(src), "-o", str(out), "--bicubic", "--scale", "2", "--quiet"]) == 0
    with tifffile.TiffFile(out) as tif:
        series = tif.series[0]
        got, got_axes, ij = series.asarray(), series.axes, tif.imagej_metadata
        xres = tif.pages[0].tags["XResolution"].value
    assert tif.is_imagej and got_axes == axes
    # Samples are RGB; ImageJ channels (C) are independent images, each normalised on its own.
    layout = {"channel_axis": "auto"} if axes.endswith("S") else {"channel_axis": None}
    if "C" in axes:
        layout = {"channel_axis": axes.index("C"), "rgb": False}
    expect = psr.upscale(arr, 2, model="bicubic", **layout)
    assert got.dtype == arr.dtype and got.shape == expect.shape
    np.testing.assert_array_equal(got, expect)
    for key in ("spacing", "unit", "finterval", "Info"):  # the Z step, time step and notes hold as they were
        assert ij[key] == meta[key], (key, ij)
    assert xres[0] / xres[1] == pytest.approx(6.0)  # 3 pixels per um -> 6: the pixel size is halved


def test_imagej_channels_are_upscaled_as_independent_images(
    tmp_path: Path, tiny_model: Path, rng: np.random.Generator
) -> None:
    """A dim channel beside a bright one in an ImageJ hyperstack comes out as that channel upscaled
    alone (one shared normalisation squeezed it)."""
    dim = rng.integers(9, 91, (2, 9, 11))
    bright = rng.integers(0, 60001, (2, 9, 11))
    arr = np.stack([dim, bright], axis=1).astype(np.uint16)  # ZCYX
    tifffile.imwrite(tmp_path / "zc.tif", arr, imagej=True, metadata={"axes": "ZCYX"})
    out = tmp_path / "out.tif"
    assert main(["upscale", str(tmp_path / "zc.tif"), "-o", str(out), "--model", str(tiny_model), "--quiet"]) == 0
    got = tifffile.imread(out)
    assert got.shape == (2, 2, 36, 44)
    for c, chan in enumerate((dim, bright)):
        np.testing.assert_array_equal(got[:, c], psr.upscale(chan.astype(np.uint16), 4, model=tiny_model))


def test_planar_rgb_tiff_stays_planar_rgb(tmp_path: Path, rng: np.random.Generator) -> None:
    arr = rng.integers(0, 256, (3, 9, 11), np.uint8)
    src = tmp_path / "planar.tif"
    tifffile.imwrite(src, arr, photometric="rgb", planarconfig="separate")
    assert main(["upscale", str(src), "-o", str(tmp_path / "o"), "--bicubic", "--scale", "2", "--quiet"]) == 0
    with tifffile.TiffFile(tmp_path / "o" / "planar_x2.tif") as tif:
        got, page = tif.asarray(), tif.pages[0]
        assert page.photometric == 2 and page.planarconfig == 2
    np.testing.assert_array_equal(got, psr.upscale(arr, 2, model="bicubic", channel_axis=0, rgb=True))


def test_unreadable_inputs_and_bad_outputs_are_one_line_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], rng: np.random.Generator
) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(rng.integers(0, 256, 37, np.uint8).tobytes())
    good = tmp_path / "good.png"
    Image.fromarray(rng.integers(0, 256, (7, 9), np.uint8)).save(good)
    assert main(["upscale", str(good), str(bad), "-o", str(tmp_path / "o"), "--bicubic", "--quiet"]) == 2
    assert f"{bad}: cannot read it as an image" in _err_line(capsys)
    assert not (tmp_path / "o").exists()  # checked before good.png was upscaled
    existing = tmp_path / "existing_file"
    existing.write_text("not a folder")
    assert main(["upscale", str(good), str(good.with_name("g2.png")), "-o", str(existing), "--quiet"]) == 2
    assert "no such file" in _err_line(capsys)
    Image.open(good).save(good.with_name("g2.png"))
    assert main(["upscale", str(good), str(good.with_name("g2.png")), "-o", str(existing), "--bicubic"]) == 2
    assert f"-o {existing} is an existing file" in _err_line(capsys)
    monkeypatch.setenv("PSR_DEBUG", "1")  # the traceback on request, with the same status
    assert main(["upscale", str(bad), "-o", str(tmp_path / "o"), "--bicubic"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "cannot read it as an image" in err


def test_batch_targets_are_checked_before_any_work(
    tmp_path: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture[str]
) -> None:
    d1, d2, out = tmp_path / "d1", tmp_path / "d2", tmp_path / "out"
    for d in (d1, d2):
        d.mkdir()
        Image.fromarray(rng.integers(0, 256, (5, 7, 3), np.uint8)).save(d / "a.png")
    Image.fromarray(rng.integers(0, 256, (9, 5), np.uint8)).save(d2 / "b.png")
    for extra in ([], ["--overwrite"]):  # two inputs, one target: refused, --overwrite or not
        assert main(["upscale", str(d1), str(d2), "-o", str(out), "--bicubic", "--scale", "2", *extra]) == 2
        err = _err_line(capsys)
        assert str(out / "a_x2.png") in err and str(d1 / "a.png") in err and str(d2 / "a.png") in err
        assert not out.exists()
    # The same file named twice (or through its folder) is upscaled once.
    assert main(["upscale", str(d2), str(d2 / "b.png"), "-o", str(out), "--bicubic", "--scale", "2", "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a_x2.png", "b_x2.png"]
    # Existing targets are found before the first image is written.
    (out / "a_x2.png").unlink()
    assert main(["upscale", str(d2), "-o", str(out), "--bicubic", "--scale", "2", "--quiet"]) == 2
    assert "b_x2.png exists" in _err_line(capsys)
    assert not (out / "a_x2.png").exists()


def test_output_names_with_unsupported_or_file_suffixes(
    tmp_path: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    for p in (a, b):
        Image.fromarray(rng.integers(0, 256, (7, 5, 3), np.uint8)).save(p)
    assert main(["upscale", str(a), "-o", str(tmp_path / "out.webp"), "--bicubic"]) == 2
    err = _err_line(capsys)
    assert "cannot write .webp" in err and ".png, .jpg, .jpeg, .tif, .tiff" in err
    assert not (tmp_path / "out.webp").exists()
    assert main(["upscale", str(a), str(b), "-o", str(tmp_path / "new.png"), "--bicubic"]) == 2
    assert "-o must be a folder for several inputs" in _err_line(capsys)
    assert not (tmp_path / "new.png").exists()
    folder = tmp_path / "shots.png"  # an existing folder is a folder, whatever its name
    folder.mkdir()
    assert main(["upscale", str(a), str(b), "-o", str(folder), "--bicubic", "--quiet"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["a_x4.png", "b_x4.png"]


def _jpeg_with_orientation(path: Path, upright: np.ndarray, dpi: tuple[int, int]) -> None:
    """Store ``upright`` rotated as a camera does, with EXIF orientation 6 to turn it back."""
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    stored = np.rot90(upright, 1)  # 90 CCW: what a sensor held sideways records
    Image.fromarray(np.ascontiguousarray(stored)).save(path, quality=100, exif=exif, dpi=dpi)


def test_exif_orientation_applied_and_dpi_scaled(
    tmp_path: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture[str]
) -> None:
    upright = np.repeat(np.repeat(rng.integers(0, 256, (5, 9, 3), np.uint8), 3, 0), 3, 1)  # 15 x 27, blocky
    src = tmp_path / "photo.jpg"
    _jpeg_with_orientation(src, upright, dpi=(72, 150))
    out = tmp_path / "out"
    assert main(["upscale", str(src), "-o", str(out), "--bicubic", "--scale", "2", "--quiet"]) == 0
    im = Image.open(out / "photo_x2.jpg")
    assert im.size == (54, 30) and im.getexif().get(0x0112) is None  # upright pixels, no tag
    assert im.info["dpi"] == (300, 144)  # x and y swapped by the rotation, then doubled
    expect = psr.upscale(np.asarray(ImageOps.exif_transpose(Image.open(src))), 2, model="bicubic")
    assert np.abs(np.asarray(im).astype(int) - expect).mean() < 4  # JPEG rounding only
    png = tmp_path / "scan.png"
    Image.fromarray(rng.integers(0, 256, (7, 11), np.uint8)).save(png, dpi=(96, 120))
    assert main(["upscale", str(png), "-o", str(out), "--bicubic", "--scale", "3", "--quiet"]) == 0
    assert Image.open(out / "scan_x3.png").info["dpi"] == pytest.approx((288, 360), abs=0.05)
    assert main(["upscale", str(png), "-o", str(out / "scan.tif"), "--bicubic", "--scale", "3", "--quiet"]) == 0
    with tifffile.TiffFile(out / "scan.tif") as tif:
        xres, unit = tif.pages[0].tags["XResolution"].value, tif.pages[0].tags["ResolutionUnit"].value
    assert xres[0] / xres[1] == pytest.approx(288, abs=0.05) and int(unit) == 2  # INCH


def test_checks_come_before_the_network(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import psr.api

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("upscale ran before the checks")

    monkeypatch.setattr(psr.api, "upscale", no_work)
    rgba, la = tmp_path / "rgba.png", tmp_path / "la.png"
    Image.fromarray(rng.integers(0, 256, (9, 7, 4), np.uint8)).save(rgba)
    Image.fromarray(rng.integers(0, 256, (5, 11, 2), np.uint8), "LA").save(la)
    for src in (rgba, la):
        assert main(["upscale", str(src), "-o", str(tmp_path / "x.jpg"), "--bicubic"]) == 2
        assert "JPEG cannot store mode" in _err_line(capsys)
    existing = tmp_path / "done.png"
    existing.write_bytes(b"")
    assert main(["upscale", str(rgba), "-o", str(existing), "--bicubic"]) == 2
    assert "exists" in _err_line(capsys)


def test_cli_wording_for_scale_tile_and_model(
    tmp_path: Path,
    tiny_model: Path,
    rng: np.random.Generator,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    src = tmp_path / "x.png"
    Image.fromarray(rng.integers(0, 256, (7, 9, 3), np.uint8)).save(src)
    monkeypatch.setattr(psr.weights, "WEIGHTS_DIR", tmp_path)  # shipped: only an x4 model
    make_tiny_model(tmp_path / "x4-pixel.safetensors")
    assert main(["upscale", str(src), "-o", str(tmp_path / "o"), "--scale", "3"]) == 2
    err = _err_line(capsys)
    assert "use --bicubic or --model FILE" in err and "x4" in err and "model=" not in err
    assert main(["upscale", str(src), "-o", str(tmp_path / "o"), "--scale", "2", "--model", str(tiny_model)]) == 2
    assert "pass --scale 4" in _err_line(capsys)
    for bad in ("4", "-1", "x"):
        with pytest.raises(SystemExit) as exc:
            main(["upscale", str(src), "-o", str(tmp_path / "o"), "--tile", bad])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert "--tile" in err and "tile must be None" not in err
    with pytest.raises(SystemExit):
        main(["upscale", str(src), "-o", str(tmp_path / "o"), "--scale", "9"])
    assert "from 2 to 8" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_conflicting_options_are_refused_before_any_work(
    tmp_path: Path, tiny_model: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture[str]
) -> None:
    """Options that would be silently ignored are refused instead, before any input is read."""
    import torch

    src = tmp_path / "x.png"
    Image.fromarray(rng.integers(0, 256, (7, 9, 3), np.uint8)).save(src)
    out = tmp_path / "o"
    cases = [
        (["--bicubic", "--model", str(tiny_model)], "--bicubic and --model"),
        (["--sample", "astronaut"], "takes no INPUT files"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "--device cuda: device='cuda' was asked but CUDA is not available"))
    for extra, want in cases:
        assert main(["upscale", str(src), "-o", str(out), "--quiet", *extra]) == 2
        assert want in _err_line(capsys)
    assert main(["upscale", "-o", str(out), "--sample", "astronaut", "--bicubic", "--quiet"]) == 2
    assert "nothing to compare" in _err_line(capsys)
    assert not out.exists()


def test_python_dash_m_psr_is_the_command_line() -> None:
    r = subprocess.run([sys.executable, "-m", "psr", "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("psr ")


def test_exit_status_is_documented_and_consistent(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import psr.api
    import psr.cli

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "exit status:" in text and "usage or input error" in text and "PSR_DEBUG" in text
    src = tmp_path / "x.png"
    Image.fromarray(rng.integers(0, 256, (5, 9), np.uint8)).save(src)
    # Input and usage errors: 2, as argparse's own.
    assert main(["upscale", str(tmp_path / "none.png"), "-o", str(tmp_path / "o")]) == 2
    assert main(["upscale", "-o", str(tmp_path / "o")]) == 2
    assert main(["upscale", str(src), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "no.safetensors")]) == 2
    capsys.readouterr()

    # Failures at run time: 1, on one line.
    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(psr.api, "upscale", out_of_memory)
    assert main(["upscale", str(src), "-o", str(tmp_path / "o"), "--bicubic", "--quiet"]) == 1
    assert "CUDA out of memory" in _err_line(capsys)
    monkeypatch.undo()

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(psr.cli, "write_image", disk_full)
    assert main(["upscale", str(src), "-o", str(tmp_path / "o"), "--bicubic", "--quiet"]) == 1
    assert "No space left on device" in _err_line(capsys)


def test_help_lists_every_command_and_upscale_stays_light(
    tmp_path: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["nosuch"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    for name in ("upscale", "stylize", "models", "bench", "build-ext", "train", "export", "eval"):
        assert f"'{name}'" in err, (name, err)
    with pytest.raises(SystemExit):
        main(["--help"])
    listing = capsys.readouterr().out
    assert all(f"    {name} " in listing for name in ("stylize", "train", "export", "eval")), listing
    with pytest.raises(SystemExit):
        main(["train", "--help"])  # the real parser, with its options
    assert "--data" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["stylize", "--help"])
    assert "--preserve-color" in capsys.readouterr().out
    # --help, --version and upscale's options answer without importing torch (about 3 s here).
    for argv in (["--help"], ["--version"], ["upscale", "--help"], ["nosuch"]):
        code = (
            "import contextlib, io, sys\nfrom psr.cli import main\n"
            f"with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n    main({argv!r})\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert done.returncode == 0, (argv, done.stderr)
    src = tmp_path / "x.png"
    Image.fromarray(rng.integers(0, 256, (5, 7, 3), np.uint8)).save(src)
    code = (
        "import sys\nfrom psr.cli import main\n"
        f"assert main(['upscale', {str(src)!r}, '-o', {str(tmp_path / 'o')!r}, '--bicubic', '--quiet']) == 0\n"
        "bad = [m for m in ('psr.train', 'torchvision', 'triton', 'torch._dynamo') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (tmp_path / "o" / "x_x4.png").is_file()


def test_bench_choices_follow_the_scripts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import psr.cli

    def choices() -> tuple[str, ...]:
        sub = next(a for a in build_parser(["bench"])._actions if isinstance(a, argparse._SubParsersAction))
        return tuple(sub.choices["bench"]._actions[1].choices)

    root = Path(psr.cli.__file__).resolve().parent.parent / "benchmarks"
    if root.is_dir():
        assert set(choices()) == {p.stem[len("bench_") :] for p in root.glob("bench_*.py")}
        assert "stylize" in choices()
    monkeypatch.setattr(psr.cli, "_BENCHMARKS", tmp_path / "absent")  # an installed wheel
    assert set(choices()) == {"cli", "upscale", "ops", "train", "stylize"}
    (tmp_path / "absent").mkdir()
    (tmp_path / "absent" / "bench_extra.py").write_text("")
    assert choices() == ("extra",)


def test_gray_alpha_png_stays_gray_alpha(tmp_path: Path, tiny_model: Path, rng: np.random.Generator) -> None:
    la = rng.integers(0, 256, (9, 13, 2), np.uint8)
    src = tmp_path / "la.png"
    Image.fromarray(la, "LA").save(src)
    out = tmp_path / "out.png"
    assert main(["upscale", str(src), "-o", str(out), "--model", str(tiny_model), "--quiet"]) == 0
    im = Image.open(out)
    assert im.mode == "LA" and im.size == (52, 36)
    got = np.asarray(im)
    np.testing.assert_array_equal(got[..., 0], psr.upscale(la[..., 0], 4, model=tiny_model))
    # Alpha as psr.upscale treats the alpha of RGBA: the bicubic baseline, never the network.
    rgba = np.concatenate([np.repeat(la[..., :1], 3, -1), la[..., 1:]], -1)
    np.testing.assert_array_equal(got[..., 1], psr.upscale(rgba, 4, model=tiny_model)[..., 3])


def test_debug_shows_the_traceback_and_keeps_the_exit_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PSR_DEBUG", "1")
    assert main(["upscale", str(tmp_path / "missing.png"), "-o", str(tmp_path / "o"), "--bicubic"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "psr upscale: error:" in err and "no such file" in err


def test_truncated_png_is_refused_before_anything_is_written(
    tmp_path: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(rng.integers(0, 256, (21, 17, 3), dtype=np.uint8)).save(src / "a.png")
    Image.fromarray(rng.integers(0, 256, (23, 19, 3), dtype=np.uint8)).save(src / "b.png")
    data = (src / "b.png").read_bytes()
    (src / "b.png").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    assert main(["upscale", str(src), "-o", str(out), "--bicubic", "--quiet"]) == 2
    assert "b.png: cannot read it as an image" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("kind", ["imagej stack", "tiled, compressed", "plain pages"])
def test_truncated_tiff_is_refused_before_anything_is_written(
    tmp_path: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    """A truncated TIFF's header still parses; its data extent is checked up front."""
    import tifffile

    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(rng.integers(0, 256, (21, 17, 3), dtype=np.uint8)).save(src / "a.png")
    stack = rng.integers(0, 65535, (3, 24, 20), dtype=np.uint16)
    kw = {
        "imagej stack": {"imagej": True, "metadata": {"axes": "ZYX"}},
        "tiled, compressed": {"tile": (16, 16), "compression": "zlib"},
        "plain pages": {},
    }[kind]
    tifffile.imwrite(src / "b.tif", stack, **kw)
    ok = tmp_path / "ok.tif"
    tifffile.imwrite(ok, stack, **kw)
    assert main(["upscale", str(ok), "-o", str(tmp_path / "ok_out"), "--bicubic", "--quiet"]) == 0  # whole: fine
    data = (src / "b.tif").read_bytes()
    (src / "b.tif").write_bytes(data[: len(data) - 300])
    out = tmp_path / "out"
    assert main(["upscale", str(src), "-o", str(out), "--bicubic", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "b.tif: cannot read it as an image" in err and "truncated" in err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("bad", ["nan", "inf", "complex", "corrupt"])
def test_tiff_values_are_checked_before_anything_is_written(
    tmp_path: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture[str], bad: str
) -> None:
    """What psr.upscale refuses in a TIFF (its dtype, NaN/Inf, data that do not decode) stops the
    run in the check up front, named by its file, before an earlier input's output is written."""
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(rng.integers(0, 256, (21, 17, 3), dtype=np.uint8)).save(src / "a.png")
    data = rng.random((3, 24, 20)).astype(np.float32)
    kw: dict = {}
    if bad in ("nan", "inf"):
        data[1, rng.integers(24), rng.integers(20)] = np.nan if bad == "nan" else -np.inf
    elif bad == "complex":  # (bilevel TIFFs are 8-bit gray: test_tiff_kinds_read_as_their_png_twins)
        data = data.astype(np.complex64)
    else:
        kw = {"compression": "zlib"}
    tifffile.imwrite(src / "b.tif", data, **kw)
    if bad == "corrupt":  # full length, a damaged zlib stream in the second data segment
        with tifffile.TiffFile(src / "b.tif") as tif:
            off = tif.pages[0].dataoffsets[1]
        raw = bytearray((src / "b.tif").read_bytes())
        raw[off : off + 40] = bytes(40)
        (src / "b.tif").write_bytes(bytes(raw))
    out = tmp_path / "out"
    assert main(["upscale", str(src), "-o", str(out), "--bicubic", "--quiet"]) == 2
    err = capsys.readouterr().err
    want = {
        "nan": "NaN or Inf",
        "inf": "NaN or Inf",
        "complex": "got complex64",
        "corrupt": "cannot read it as an image",
    }
    assert "b.tif: " in err and want[bad] in err, err
    assert not out.exists() or not any(out.iterdir())


def test_run_time_refusals_name_their_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An input that passes the checks but that psr.upscale refuses is named in the one-line error."""
    import psr.cli as cli

    src = tmp_path / "a.png"
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(src)

    def refuse(*args: object, **kwargs: object) -> None:
        raise ValueError("something about the image")

    monkeypatch.setattr(cli, "_process", refuse)
    assert main(["upscale", str(src), "-o", str(tmp_path / "o.png"), "--bicubic", "--quiet"]) == 2
    assert f"{src}: something about the image" in capsys.readouterr().err


def test_gray_alpha_goes_to_and_comes_from_tiff_as_one_page(
    tmp_path: Path, tiny_model: Path, rng: np.random.Generator
) -> None:
    """A gray+alpha PNG written as TIFF is one page of gray + alpha samples (not a stack of
    two-pixel-wide pages), and such a TIFF is read back as gray+alpha: the same pixels as the PNG."""
    la = rng.integers(0, 256, (9, 13, 2), np.uint8)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    model = ["--model", str(tiny_model), "--quiet"]
    assert main(["upscale", str(tmp_path / "la.png"), "-o", str(tmp_path / "from_png.png"), *model]) == 0
    want = np.asarray(Image.open(tmp_path / "from_png.png"))
    assert main(["upscale", str(tmp_path / "la.png"), "-o", str(tmp_path / "from_png.tif"), *model]) == 0
    with tifffile.TiffFile(tmp_path / "from_png.tif") as tif:
        assert len(tif.pages) == 1 and tif.series[0].axes == "YXS"
        assert [int(e) for e in tif.pages[0].extrasamples] == [2]  # unassociated alpha
        np.testing.assert_array_equal(tif.asarray(), want)
    assert Image.open(tmp_path / "from_png.tif").mode == "LA"
    tifffile.imwrite(tmp_path / "la.tif", la, photometric="minisblack", planarconfig="contig", extrasamples=[2])
    for suffix in ("tif", "png"):
        out = tmp_path / f"from_tif.{suffix}"
        assert main(["upscale", str(tmp_path / "la.tif"), "-o", str(out), *model]) == 0
        got = tifffile.imread(out) if suffix == "tif" else np.asarray(Image.open(out))
        np.testing.assert_array_equal(got, want)
    with tifffile.TiffFile(tmp_path / "from_tif.tif") as tif:
        assert tif.series[0].axes == "YXS" and [int(e) for e in tif.pages[0].extrasamples] == [2]


@pytest.mark.parametrize(("colour", "channels", "kind"), [(2, 3, "RGB"), (4, 2, "gray+alpha"), (6, 4, "RGBA")])
def test_16_bit_colour_png_is_refused_not_cut_to_8_bits(
    tmp_path: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture[str], colour: int, channels: int, kind: str
) -> None:
    a = rng.integers(0, 65536, (7, 9, channels), dtype=np.uint16)
    write_png16(tmp_path / "wide.png", a, colour)
    assert Image.open(tmp_path / "wide.png").mode in ("RGB", "LA", "RGBA")  # what Pillow makes of it: 8 bits
    out = tmp_path / "out"
    assert main(["upscale", str(tmp_path / "wide.png"), "-o", str(out), "--bicubic", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"wide.png: a 16-bit {kind} PNG" in err and "TIFF" in err
    assert not out.exists() or not any(out.iterdir())
    # 16-bit gray decodes in full (mode I;16) and is upscaled as such.
    write_png16(tmp_path / "gray.png", a[..., 0], 0)
    assert main(["upscale", str(tmp_path / "gray.png"), "-o", str(out), "--bicubic", "--scale", "2", "--quiet"]) == 0
    assert Image.open(out / "gray_x2.png").mode == "I;16"


@pytest.mark.parametrize("suffix", ["png", "jpg", "tif"])
def test_icc_profile_is_carried_to_the_output(tmp_path: Path, rng: np.random.Generator, suffix: str) -> None:
    """The pixel values keep their colour space, so the output keeps the input's ICC profile."""
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    rgb = rng.integers(0, 256, (11, 13, 3), dtype=np.uint8)
    for src_suffix in ("png", "tif"):
        src = tmp_path / f"in_{src_suffix}.{src_suffix}"
        if src_suffix == "png":
            Image.fromarray(rgb).save(src, icc_profile=icc)
        else:
            tifffile.imwrite(src, rgb, photometric="rgb", iccprofile=icc)
        out = tmp_path / f"out_{src_suffix}.{suffix}"
        assert main(["upscale", str(src), "-o", str(out), "--bicubic", "--scale", "2", "--quiet"]) == 0
        with Image.open(out) as im:
            assert im.info.get("icc_profile") == icc
    # A CMYK TIFF or JPEG is read as other values: its CMYK profile would mislabel the result.
    sep = tmp_path / "cmyk.tif"
    tifffile.imwrite(sep, rng.integers(0, 256, (11, 13, 4), dtype=np.uint8), photometric="separated", iccprofile=icc)
    out = tmp_path / f"from_cmyk_tif.{suffix}"
    if suffix != "jpg":  # four samples: no JPEG
        assert main(["upscale", str(sep), "-o", str(out), "--bicubic", "--scale", "2", "--quiet"]) == 0
        with Image.open(out) as im:
            assert "icc_profile" not in im.info
    cmyk = tmp_path / "cmyk.jpg"
    Image.fromarray(rgb).convert("CMYK").save(cmyk, icc_profile=b"not really a CMYK profile")
    out = tmp_path / f"from_cmyk.{suffix}"
    assert main(["upscale", str(cmyk), "-o", str(out), "--bicubic", "--scale", "2", "--quiet"]) == 0
    with Image.open(out) as im:
        assert "icc_profile" not in im.info


@pytest.mark.parametrize("planar", [False, True])
def test_gray_alpha_tiff_stack_keeps_alpha_out_of_the_network(
    tmp_path: Path, tiny_model: Path, rng: np.random.Generator, planar: bool
) -> None:
    """A stack of gray+alpha pages (samples contiguous or planar): the gray planes go through the
    network, the alpha planes through the bicubic baseline, and the output keeps the layout and the
    alpha extra sample."""
    la = rng.integers(0, 256, (3, 9, 13, 2), np.uint8)
    stored = np.ascontiguousarray(np.moveaxis(la, -1, 1)) if planar else la
    src = tmp_path / "la.tif"
    tifffile.imwrite(
        src, stored, photometric="minisblack", planarconfig="separate" if planar else "contig", extrasamples=[2]
    )
    out = tmp_path / "out.tif"
    assert main(["upscale", str(src), "-o", str(out), "--model", str(tiny_model), "--quiet"]) == 0
    with tifffile.TiffFile(out) as tif:
        page = tif.pages[0]
        assert [int(e) for e in page.extrasamples] == [2] and len(tif.pages) == 3
        assert int(page.planarconfig) == (2 if planar else 1)
        got = tif.asarray()
    got = np.moveaxis(got, 1, -1) if planar else got
    assert got.shape == (3, 36, 52, 2)
    np.testing.assert_array_equal(got[..., 0], psr.upscale(la[..., 0], 4, model=tiny_model, channel_axis=None))
    np.testing.assert_array_equal(got[..., 1], psr.upscale(la[..., 1], 4, model="bicubic", channel_axis=None))


def test_miniswhite_tiff_reads_as_pillow_reads_it(tmp_path: Path, tiny_model: Path, rng: np.random.Generator) -> None:
    """MINISWHITE (0 is white) gray: the network sees what Pillow shows (inverted values); a PNG
    output holds those, a TIFF output stays MINISWHITE and shows the same picture."""
    g = rng.integers(0, 256, (11, 15), np.uint8)
    tifffile.imwrite(tmp_path / "mw.tif", g, photometric="miniswhite")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "mw.tif")), 255 - g)  # Pillow's reading
    want = psr.upscale(255 - g, 4, model=tiny_model)
    model = ["--model", str(tiny_model), "--quiet"]
    for suffix in ("png", "tif"):
        out = tmp_path / f"out.{suffix}"
        assert main(["upscale", str(tmp_path / "mw.tif"), "-o", str(out), *model]) == 0
        np.testing.assert_array_equal(np.asarray(Image.open(out)), want)
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        assert int(tif.pages[0].photometric) == 0
        np.testing.assert_array_equal(tif.asarray(), 255 - want)


@pytest.mark.parametrize("kind", ["bilevel", "palette", "lzw", "jpeg"])
def test_tiff_kinds_read_as_their_png_twins(
    tmp_path: Path, tiny_model: Path, rng: np.random.Generator, kind: str
) -> None:
    """Bilevel (CCITT G4), palette, LZW and JPEG-compressed TIFFs (imagecodecs decodes them) give the
    result of the same picture as a PNG: bilevel as 8-bit gray, palette indices as their colours."""
    rgb = rng.integers(0, 256, (13, 17, 3), np.uint8)
    im = {
        "bilevel": Image.fromarray(rgb[..., 0] > 127),
        "palette": Image.fromarray(rgb).quantize(16),
        "lzw": Image.fromarray(rgb),
        "jpeg": Image.fromarray(rgb),
    }[kind]
    compression = {"bilevel": "group4", "palette": None, "lzw": "tiff_lzw", "jpeg": "jpeg"}[kind]
    im.save(tmp_path / "in.tif", compression=compression)
    Image.open(tmp_path / "in.tif").save(tmp_path / "twin.png")  # Pillow's decoding of the same file
    model = ["--model", str(tiny_model), "--quiet"]
    for name in ("in.tif", "twin.png"):
        assert main(["upscale", str(tmp_path / name), "-o", str(tmp_path / f"{name}.png"), *model]) == 0
    got, want = (np.asarray(Image.open(tmp_path / f"{n}.png")) for n in ("in.tif", "twin.png"))
    assert got.dtype == want.dtype == np.uint8 and got.shape == want.shape
    # JPEG: Pillow and imagecodecs (libjpeg-turbo builds) may round the decoded YCbCr differently.
    if kind == "jpeg":
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 8
    else:
        np.testing.assert_array_equal(got, want)


def test_a_tiff_is_decoded_once_for_its_check_and_its_work(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first input's decoding is kept from the check up front for its processing (a one-file
    run decodes its TIFF once); a file changed in between is read again."""
    import psr.cli as cli

    calls: list[str] = []
    real = cli._read_tiff

    def counting(path: Path) -> tuple:
        calls.append(path.name)
        return real(path)

    monkeypatch.setattr(cli, "_read_tiff", counting)
    src = tmp_path / "in"
    src.mkdir()
    stacks = [rng.integers(0, 4096, (2, 9, 11)).astype(np.uint16) for _ in range(2)]
    for i, a in enumerate(stacks):
        tifffile.imwrite(src / f"{i}.tif", a)
    assert main(["upscale", str(src / "0.tif"), "-o", str(tmp_path / "one.tif"), "--bicubic", "--quiet"]) == 0
    assert calls == ["0.tif"]
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "one.tif"), psr.upscale(stacks[0], 4, model="bicubic"))
    calls.clear()
    assert main(["upscale", str(src), "-o", str(tmp_path / "two"), "--bicubic", "--quiet"]) == 0
    assert calls == ["0.tif", "1.tif", "1.tif"] and not cli._DECODED
    for i, a in enumerate(stacks):
        got = tifffile.imread(tmp_path / "two" / f"{i}_x4.tif")
        np.testing.assert_array_equal(got, psr.upscale(a, 4, model="bicubic"))
    # Rewritten after the check: the kept decoding is stale and is not used.
    calls.clear()
    assert cli._probe(src / "0.tif", keep=True) is None and cli._DECODED
    newer = rng.integers(0, 4096, (2, 9, 11)).astype(np.uint16)
    tifffile.imwrite(src / "0.tif", newer)
    image, _ = cli._read(src / "0.tif")
    np.testing.assert_array_equal(image, newer)
    assert calls == ["0.tif", "0.tif"] and not cli._DECODED


def _tiff_record(path: Path) -> tuple:
    """What a TIFF holds: every page's tags (offsets and byte counts aside) and the series' data."""
    with tifffile.TiffFile(path) as tif:
        skip = {"StripOffsets", "StripByteCounts", "TileOffsets", "TileByteCounts", "ImageDescription"}
        tags = [sorted((t.name, str(t.value)) for t in page.tags.values() if t.name not in skip) for page in tif.pages]
        meta = tif.imagej_metadata if tif.is_imagej else tif.shaped_metadata
        return tags, str(meta), tif.series[0].axes, tif.asarray()


@pytest.mark.parametrize("kind", ["imagej", "rgb", "planar_rgb", "gray_alpha_stack", "miniswhite", "float_channels"])
def test_streamed_tiff_output_equals_the_in_memory_one(
    tmp_path: Path, tiny_model: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """TIFF outputs of TIFF inputs are upscaled straight into a memory map of the output file
    (psr.upscale(out=...)): the same tags, metadata and pixels as writing the result from memory."""
    import psr.cli as cli

    src = tmp_path / "in.tif"
    if kind == "imagej":
        data = rng.integers(0, 4096, (2, 3, 9, 11)).astype(np.uint16)
        tifffile.imwrite(
            src, data, imagej=True, resolution=(2.0, 2.0), metadata={"axes": "ZCYX", "unit": "um", "spacing": 0.5}
        )
    elif kind == "rgb":
        tifffile.imwrite(src, rng.integers(0, 256, (9, 11, 3), np.uint8), photometric="rgb", resolution=(72, 72))
    elif kind == "planar_rgb":
        tifffile.imwrite(src, rng.integers(0, 256, (3, 9, 11), np.uint8), photometric="rgb", planarconfig="separate")
    elif kind == "gray_alpha_stack":
        data = rng.integers(0, 256, (2, 2, 9, 11), np.uint8)
        tifffile.imwrite(src, data, photometric="minisblack", planarconfig="separate", extrasamples=[2])
    elif kind == "miniswhite":
        tifffile.imwrite(src, rng.integers(0, 65536, (2, 9, 11)).astype(np.uint16), photometric="miniswhite")
    else:
        data = rng.random((2, 9, 11)).astype(np.float32)
        tifffile.imwrite(src, data, metadata={"axes": "CYX"})
    model = ["--model", str(tiny_model), "--quiet"]
    calls: list[int] = []
    real = cli.write_tiff_streamed
    monkeypatch.setattr(cli, "write_tiff_streamed", lambda *a: calls.append(1) or real(*a))
    assert main(["upscale", str(src), "-o", str(tmp_path / "streamed.tif"), *model]) == 0
    assert calls == [1]
    monkeypatch.setattr(cli, "_streamable", lambda *a: False)
    assert main(["upscale", str(src), "-o", str(tmp_path / "memory.tif"), *model]) == 0
    assert calls == [1]
    got, want = _tiff_record(tmp_path / "streamed.tif"), _tiff_record(tmp_path / "memory.tif")
    assert got[:3] == want[:3]
    np.testing.assert_array_equal(got[3], want[3])
    assert not list(tmp_path.glob(".*.tmp"))


def test_streamed_tiff_output_failing_midway_leaves_nothing(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import psr.cli as cli

    src = tmp_path / "in.tif"
    tifffile.imwrite(src, rng.integers(0, 4096, (2, 9, 11)).astype(np.uint16))

    def half_then_fail(image: object, info: dict, run: object, run_alpha: object, out: np.ndarray) -> None:
        out[0] = 7  # written into the memory map, then the work fails
        raise ValueError("refused halfway")

    monkeypatch.setattr(cli, "_process", half_then_fail)
    out = tmp_path / "out" / "in_x4.tif"
    assert main(["upscale", str(src), "-o", str(out.parent), "--bicubic", "--quiet"]) == 2  # an input refused
    assert "in.tif: refused halfway" in capsys.readouterr().err
    assert not out.exists() and not list(out.parent.iterdir())


def test_streamed_tiff_output_on_a_full_disk_is_a_clear_error(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The output's blocks are reserved before any work (a full disk would otherwise kill the
    process with SIGBUS while writing through the memory map)."""
    import errno
    import os

    src = tmp_path / "in.tif"
    tifffile.imwrite(src, rng.integers(0, 4096, (2, 9, 11)).astype(np.uint16))

    def full(fd: int, offset: int, length: int) -> None:
        assert length == 2 * 36 * 44 * 2  # the result's pixels
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    out = tmp_path / "out"
    assert main(["upscale", str(src), "-o", str(out), "--bicubic", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"cannot write {out / 'in_x4.tif'}: No space left on device" in err, err
    assert not list(out.iterdir())


@pytest.mark.parametrize("kind", ["ome_tczyx", "shaped_yxz", "imagej_iyx", "ycbcr_jpeg", "palette_1bit", "planar_rgb"])
def test_tiff_layouts_upscale_their_y_and_x_axes(
    tmp_path: Path, tiny_model: Path, rng: np.random.Generator, kind: str
) -> None:
    """Whatever the stored axis order, the Y and X axes are upscaled and the rest kept, in place:
    OME TCZYX (channels before two stack axes), a shaped YXZ file, an ImageJ image sequence (IYX),
    JPEG-compressed YCbCr (RGB once decoded), a 1-bit palette, planar RGB (which PNG can now hold)."""
    src = tmp_path / "in.tif"
    model = ["--model", str(tiny_model), "--quiet"]
    if kind == "ome_tczyx":
        data = rng.integers(0, 4096, (2, 3, 2, 9, 11)).astype(np.uint16)
        tifffile.imwrite(src, data, ome=True, metadata={"axes": "TCZYX"})
        want = np.moveaxis(psr.upscale(np.moveaxis(data, 1, -1), 4, model=tiny_model, channel_axis=-1), -1, 1)
    elif kind == "shaped_yxz":
        data = rng.integers(0, 256, (9, 11, 10), np.uint8)
        tifffile.imwrite(src, data, metadata={"axes": "YXZ"})
        want = np.moveaxis(psr.upscale(np.moveaxis(data, -1, 0), 4, model=tiny_model, channel_axis=None), 0, -1)
    elif kind == "imagej_iyx":
        data = rng.integers(0, 256, (3, 9, 11), np.uint8)
        with tifffile.TiffWriter(src) as w:  # "images=3" only, as ImageJ writes a plain sequence
            for k in range(3):
                desc = "ImageJ=1.53t\nimages=3" if k == 0 else None
                w.write(data[k], description=desc, metadata=None, photometric="minisblack")
        assert tifffile.TiffFile(src).series[0].axes == "IYX"
        want = psr.upscale(data, 4, model=tiny_model, channel_axis=None)
    elif kind == "ycbcr_jpeg":
        data = rng.integers(0, 256, (16, 16, 3), np.uint8)
        tifffile.imwrite(src, data, photometric="ycbcr", compression="jpeg", subsampling=(1, 1))
        decoded = tifffile.imread(src)  # RGB
        want = psr.upscale(decoded, 4, model=tiny_model)
    elif kind == "palette_1bit":
        idx = rng.integers(0, 2, (9, 11)).astype(bool)
        cmap = [200 * 257, 20 * 257, 30 * 257, 40 * 257, 10 * 257, 250 * 257]  # R, G, B rows of 2 entries
        tifffile.imwrite(src, idx, photometric="minisblack", extratags=[(320, "H", 6, cmap, True)])
        with tifffile.TiffFile(src, mode="r+b") as tif:  # (tifffile writes no 1-bit palette itself)
            tif.pages[0].tags["PhotometricInterpretation"].overwrite(3)
        assert Image.open(src).mode == "P"
        assert tifffile.TiffFile(src).pages[0].bitspersample == 1
        want = psr.upscale(np.where(idx[..., None], [20, 40, 250], [200, 30, 10]).astype(np.uint8), 4, model=tiny_model)
    else:
        data = rng.integers(0, 256, (3, 9, 11), np.uint8)
        tifffile.imwrite(src, data, photometric="rgb", planarconfig="separate")
        want_rgb = psr.upscale(np.moveaxis(data, 0, -1), 4, model=tiny_model)
        assert main(["upscale", str(src), "-o", str(tmp_path / "out.png"), *model]) == 0
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out.png")), want_rgb)
        want = np.moveaxis(want_rgb, -1, 0)
    assert main(["upscale", str(src), "-o", str(tmp_path / "out.tif"), *model]) == 0
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        got = tif.series[0].asarray()
        if kind == "imagej_iyx":
            assert tif.is_imagej and tif.series[0].axes == "ZYX"
    np.testing.assert_array_equal(got, want)


def test_sigterm_while_writing_leaves_no_temporary_file(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM (how job schedulers stop a job) exits with 143 through the cleanup: the output's
    temporary file is removed, and the default SIGTERM action is back afterwards."""
    import os
    import signal

    import psr.cli as cli

    src = tmp_path / "in.tif"
    tifffile.imwrite(src, rng.integers(0, 4096, (2, 9, 11)).astype(np.uint16))
    seen: list[list[Path]] = []

    def killed(image: object, info: dict, run: object, run_alpha: object, out: np.ndarray) -> None:
        out[0] = 7
        seen.append(list((tmp_path / "out").glob(".*.tmp")))  # the memory-mapped output exists now
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(cli, "_process", killed)
    with pytest.raises(SystemExit) as info:
        main(["upscale", str(src), "-o", str(tmp_path / "out"), "--bicubic", "--quiet"])
    assert info.value.code == 143 and len(seen) == 1 and len(seen[0]) == 1
    assert not list((tmp_path / "out").iterdir())
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_streamed_tiff_output_checks_free_space_and_falls_back_without_memory_maps(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import errno
    import shutil
    from collections import namedtuple

    import psr.cli as cli

    src = tmp_path / "in.tif"
    data = rng.integers(0, 4096, (2, 9, 11)).astype(np.uint16)
    tifffile.imwrite(src, data)
    want = psr.upscale(data, 4, model="bicubic")
    usage = namedtuple("usage", "total used free")
    with monkeypatch.context() as m:  # less free space than the result's pixels: refused before any work
        m.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 100, 100))
        m.setattr(cli, "_process", lambda *a, **k: pytest.fail("no work may start"))
        assert main(["upscale", str(src), "-o", str(tmp_path / "a"), "--bicubic", "--quiet"]) == 1
        assert "its pixels take 0.00 GiB, 0.00 GiB free" in capsys.readouterr().err
        assert not list((tmp_path / "a").iterdir())

    def no_maps(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENODEV, "No such device")

    with monkeypatch.context() as m:  # a file system without shared memory maps: written from memory
        m.setattr(np, "memmap", no_maps)
        assert main(["upscale", str(src), "-o", str(tmp_path / "b"), "--bicubic", "--quiet"]) == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "b" / "in_x4.tif"), want)
    assert [f.name for f in (tmp_path / "b").iterdir()] == ["in_x4.tif"]


def test_a_large_first_tiff_is_not_kept_beside_the_others(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psr.cli as cli

    calls: list[str] = []
    real = cli._read_tiff
    monkeypatch.setattr(cli, "_read_tiff", lambda p: calls.append(p.name) or real(p))
    monkeypatch.setattr(cli, "_physical_memory", lambda: 8 * 100)  # the image (396 bytes) is over 1/8
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, rng.integers(0, 4096, (2, 9, 11)).astype(np.uint16))
    assert main(["upscale", str(src), "-o", str(tmp_path / "o.tif"), "--bicubic", "--quiet"]) == 0
    assert calls == ["in.tif", "in.tif"] and not cli._DECODED
