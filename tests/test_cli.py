"""The psr command line: round trips on PNG and 16-bit TIFF, folders, errors, the sample job."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

import psr
from psr.cli import main


def test_png_round_trip(tmp_path: Path, tiny_model: Path, rng: np.random.Generator) -> None:
    arr = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    src = tmp_path / "in.png"
    Image.fromarray(arr).save(src)
    out = tmp_path / "out.png"
    assert main(["upscale", str(src), "-o", str(out), "--model", str(tiny_model), "--quiet"]) == 0
    got = np.asarray(Image.open(out))
    np.testing.assert_array_equal(got, psr.upscale(arr, 4, model=tiny_model))
    # Existing outputs are not overwritten silently.
    with pytest.raises(SystemExit, match="exists"):
        main(["upscale", str(src), "-o", str(out), "--model", str(tiny_model), "--quiet"])


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


def test_folder_bicubic_and_gray_png16(tmp_path: Path) -> None:
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
    with pytest.raises(SystemExit, match="no such file"):
        main(["upscale", str(tmp_path / "missing.png"), "-o", str(tmp_path / "o")])
    bad = tmp_path / "x.gif"
    bad.write_bytes(b"GIF89a")
    with pytest.raises(SystemExit, match="unsupported file type"):
        main(["upscale", str(bad), "-o", str(tmp_path / "o")])
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
    listed = json.loads(capsys.readouterr().out)
    assert set(listed) == set(psr.list_models())
