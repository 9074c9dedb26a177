"""``psr.stylize``: input kinds and dtypes, strength, preserve_color, seamless tiles, errors, CLI."""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import psr.weights
from psr.models import StyleConfig, StyleNet
from psr.stylize import Stylizer, stylize
from psr.weights import save_weights

from .conftest import make_tiny_model, random_style_net

# The package attribute psr.stylize is the function; the module is reached through importlib.
S = importlib.import_module("psr.stylize")


@pytest.fixture(scope="module")
def net() -> StyleNet:
    return random_style_net(StyleConfig(channels=4, num_blocks=2))


@pytest.fixture(scope="module")
def style_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("styles") / "tiny_style.safetensors"
    save_weights(path, random_style_net(StyleConfig(channels=4, num_blocks=1), seed=3), {"name": "tiny_style"})
    return path


def ref(net: StyleNet, rgb01: np.ndarray) -> np.ndarray:
    """The network on a float (H, W, 3) image in [0, 1], in float64 numpy."""
    with torch.no_grad():
        y = net(torch.from_numpy(rgb01.astype(np.float32)).permute(2, 0, 1)[None])
    return y[0].permute(1, 2, 0).double().numpy()


# ---------------------------------------------------------------------------------------------
# input kinds and dtypes


def test_float_and_uint8_numpy_match_the_network(net: StyleNet, rng: np.random.Generator) -> None:
    x = rng.random((23, 31, 3)).astype(np.float32)
    out = stylize(x, net, normalize=None, tile=None)
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_allclose(out, ref(net, x), atol=1e-6)
    u8 = rng.integers(0, 256, (19, 26, 3), dtype=np.uint8)
    out8 = stylize(u8, net)
    expect = np.rint(np.clip(ref(net, u8 / 255.0) * 255, 0, 255)).astype(np.uint8)
    assert out8.dtype == np.uint8 and np.abs(out8.astype(int) - expect).max() <= 1


def test_pil_modes_gray_and_alpha(net: StyleNet, rng: np.random.Generator) -> None:
    rgba = rng.integers(0, 256, (21, 18, 4), dtype=np.uint8)
    out = stylize(Image.fromarray(rgba, "RGBA"), net)
    assert isinstance(out, Image.Image) and out.mode == "RGBA" and out.size == (18, 21)
    arr = np.asarray(out)
    assert np.array_equal(arr[..., 3], rgba[..., 3])  # alpha untouched
    expect = np.rint(ref(net, rgba[..., :3] / 255.0) * 255)
    assert np.abs(arr[..., :3].astype(int) - expect).max() <= 1
    gray = rng.integers(0, 256, (17, 20), dtype=np.uint8)
    g = stylize(Image.fromarray(gray, "L"), net)
    assert g.mode == "L"
    expect_g = np.rint(ref(net, np.repeat(gray[..., None] / 255.0, 3, -1)).mean(-1) * 255)
    assert np.abs(np.asarray(g).astype(int) - expect_g).max() <= 1
    g16 = rng.integers(0, 65536, (12, 13), dtype=np.uint16)
    im16 = Image.fromarray(g16)
    assert im16.mode == "I;16"
    o16 = stylize(im16, net)
    assert o16.mode == "I;16" and o16.size == (13, 12)


def test_torch_tensors_keep_dtype_shape_and_batch(net: StyleNet) -> None:
    x = torch.rand(2, 3, 15, 22)
    out = stylize(x, net, normalize=None)
    assert out.shape == x.shape and out.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(out, net(x), atol=1e-6, rtol=0)
    b = stylize(x[0].to(torch.bfloat16), net, normalize=None)
    assert b.dtype == torch.bfloat16 and b.shape == (3, 15, 22)
    torch.testing.assert_close(Stylizer(net)(x), out, atol=0, rtol=0)


def test_stylizer_module_registers_its_network_and_clamps(style_file: Path) -> None:
    """As Upscaler: the network is a submodule (parameters, state_dict, .to()), a private copy of a
    file style, and a rounding error past [0, 1] in the input is clamped, not refused."""
    mod = Stylizer(style_file)
    assert len(list(mod.parameters())) > 0 and len(mod.state_dict()) > 0
    assert mod.net is not S.resolve_style(style_file, torch.device("cpu"))  # not the shared cache
    x = torch.rand(1, 3, 12, 13)
    x[0, 0, 0, 0] = 1.0
    torch.testing.assert_close(mod(x + 1e-6), mod((x + 1e-6).clamp(0, 1)), atol=0, rtol=0)
    torch.testing.assert_close(mod(x), stylize(x, style_file, normalize=None), atol=0, rtol=0)
    S._cached_style.cache_clear()


def test_stack_and_percentile_normalisation(net: StyleNet, rng: np.random.Generator) -> None:
    stack = rng.random((2, 14, 17, 3)) * 1000 - 200  # float64, outside [0, 1]
    out = stylize(stack, net)
    assert out.shape == stack.shape and out.dtype == np.float64
    lo, hi = np.percentile(stack, [0.1, 99.9])  # once over the whole input, as psr.upscale
    for i in range(2):
        expect = np.clip(ref(net, (stack[i] - lo) / (hi - lo)) * (hi - lo) + lo, stack.min(), stack.max())
        np.testing.assert_allclose(out[i], expect, rtol=1e-5, atol=1e-3)


# ---------------------------------------------------------------------------------------------
# strength, preserve_color


def test_strength_blends_linearly(net: StyleNet, rng: np.random.Generator) -> None:
    x = rng.random((18, 21, 3)).astype(np.float32)
    full = stylize(x, net, normalize=None)
    np.testing.assert_allclose(stylize(x, net, normalize=None, strength=0.0), x, atol=1e-7)
    half = stylize(x, net, normalize=None, strength=0.5)
    np.testing.assert_allclose(half, 0.5 * x + 0.5 * full, atol=1e-6)
    u8 = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    assert np.array_equal(stylize(u8, net, strength=0), u8)


def test_preserve_color_keeps_chroma_and_takes_luma(net: StyleNet, rng: np.random.Generator) -> None:
    x = (0.25 + 0.5 * rng.random((20, 23, 3))).astype(np.float32)  # mid-range: little clipping
    styled = stylize(x, net, normalize=None).astype(np.float64)
    out = stylize(x, net, normalize=None, preserve_color=True).astype(np.float64)

    # JPEG's full-range YCbCr (ITU-T T.871), written out independently of psr's implementation.
    def ycc(a: np.ndarray) -> np.ndarray:
        m = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
        return a @ m.T

    inside = ((out > 1e-6) & (out < 1 - 1e-6)).all(-1)  # pixels not clipped to [0, 1]
    assert inside.mean() > 0.5
    np.testing.assert_allclose(ycc(out)[inside][:, 1:], ycc(x.astype(np.float64))[inside][:, 1:], atol=2e-5)
    np.testing.assert_allclose(ycc(out)[inside][:, 0], ycc(styled)[inside][:, 0], atol=2e-5)
    assert np.abs(out - styled).max() > 0.05  # the colours really differ from the plain stylisation


# ---------------------------------------------------------------------------------------------
# tiles


@pytest.mark.parametrize("cfg", [StyleConfig(channels=4, num_blocks=2), StyleConfig(channels=4, norm="batch")])
def test_tiles_equal_the_whole_image(cfg: StyleConfig, rng: np.random.Generator) -> None:
    model = random_style_net(cfg, seed=5)
    x = rng.random((101, 83, 3)).astype(np.float32)
    whole = stylize(x, model, normalize=None, tile=None)
    calls: list[tuple[int, int]] = []
    tiled = stylize(x, model, normalize=None, tile=30, progress=lambda d, t: calls.append((d, t)))  # 30 -> 32
    np.testing.assert_allclose(tiled, whole, atol=2e-5)
    assert calls[-1] == (len(calls), 4 * 3) and [d for d, _ in calls] == list(range(1, 13))
    if cfg.norm == "instance":
        # Without the whole-image statistics every tile would be normalised by its own: visible seams.
        own = np.empty_like(x)

        def run(y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
            with torch.no_grad():
                return model(torch.from_numpy(x[y0:y1, x0:x1]).permute(2, 0, 1)[None])

        def write(ys: slice, xs: slice, block: torch.Tensor) -> None:
            own[ys, xs] = block[0].permute(1, 2, 0).numpy()

        S._run_tiled(run, 101, 83, 1, 32, model.receptive_radius, write)
        assert np.abs(own - whole).max() > 1e-3


def test_bfloat16_precision(rng: np.random.Generator) -> None:
    """bf16 autocast: the float32 network's output within bf16 rounding, tiles included."""
    model = random_style_net(StyleConfig(channels=4, num_blocks=2), seed=5)
    x = rng.random((101, 83, 3)).astype(np.float32)
    want = ref(model, x)
    outs = []
    for tile in (None, 30):
        got = stylize(x, model, normalize=None, tile=tile, precision="bfloat16")
        err = np.abs(got - want)
        # A random 4-channel net: about 0.03 / 0.004 here (8-bit mantissas through 13 conv layers).
        assert got.dtype == np.float32 and err.max() < 0.1 and err.mean() < 1e-2, (tile, err.max(), err.mean())
        assert err.max() > 0  # it ran in bf16
        outs.append(got)
    # Tiles still share the whole image's statistics: no seams beyond bf16 rounding.
    assert np.abs(outs[1] - outs[0]).max() < 0.02
    with pytest.raises(ValueError, match="precision"):
        stylize(x, model, precision="fp16")


def test_progress_can_cancel(net: StyleNet, rng: np.random.Generator) -> None:
    def stop(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        stylize(rng.random((70, 70, 3)), net, tile=32, progress=stop)


# ---------------------------------------------------------------------------------------------
# style resolution and errors


def test_styles_by_name_and_clear_errors(
    style_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rng: np.random.Generator
) -> None:
    x = rng.integers(0, 256, (12, 14, 3), dtype=np.uint8)
    monkeypatch.setattr(psr.weights, "WEIGHTS_DIR", tmp_path)
    S._cached_style.cache_clear()
    with pytest.raises(ValueError, match="no style models are shipped yet"):
        stylize(x, "starry_night")
    (tmp_path / "tiny_style.safetensors").write_bytes(style_file.read_bytes())
    make_tiny_model(tmp_path / "x4-tiny.safetensors")
    with pytest.raises(ValueError, match=r"unknown; shipped styles: tiny_style\b"):
        stylize(x, "starry_night")
    by_name, by_path = stylize(x, "tiny_style"), stylize(x, style_file)
    assert np.array_equal(by_name, by_path) and not np.array_equal(by_name, x)
    with pytest.raises(ValueError, match="not a style model"):
        stylize(x, "x4-tiny")
    S._cached_style.cache_clear()


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"strength": 1.5}, ValueError, "strength must lie in"),
        ({"strength": -0.1}, ValueError, "strength must lie in"),
        ({"strength": True}, TypeError, "strength must be a number"),
        ({"strength": "1"}, TypeError, "strength must be a number"),
        ({"preserve_color": "yes"}, TypeError, "preserve_color must be a bool"),
        ({"tile": 4}, ValueError, "tile must be"),
        ({"tile_overlap": -1}, ValueError, "tile_overlap"),
        ({"device": "tpu:x"}, ValueError, "device"),
    ],
)
def test_bad_arguments(net: StyleNet, kwargs: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        stylize(np.zeros((8, 8, 3), np.uint8), net, **kwargs)


def test_bad_inputs(net: StyleNet) -> None:
    with pytest.raises(TypeError, match="image must be"):
        stylize([[1, 2], [3, 4]], net)
    with pytest.raises(TypeError, match="style must be"):
        stylize(np.zeros((8, 8, 3), np.uint8), 3)
    with pytest.raises(ValueError, match="NaN"):
        stylize(np.full((8, 8, 3), np.nan), net)


# ---------------------------------------------------------------------------------------------
# command line and import hygiene


def test_cli_run_writes_files(style_file: Path, tmp_path: Path, rng: np.random.Generator) -> None:
    src = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)).save(src)
    p = argparse.ArgumentParser()
    S.add_arguments(p)
    out = tmp_path / "out"
    assert S.run(p.parse_args([str(src), "-o", str(out), "--style", str(style_file), "--quiet"])) == 0
    written = out / "photo_tiny_style.png"
    got = np.asarray(Image.open(written))
    assert np.array_equal(got, stylize(np.asarray(Image.open(src)), style_file))
    with pytest.raises(SystemExit, match="exists"):
        S.run(p.parse_args([str(src), "-o", str(out), "--style", str(style_file), "--quiet"]))
    with pytest.raises(SystemExit, match="unknown|no style models"):
        S.run(p.parse_args([str(src), "-o", str(out), "--style", "nope", "--quiet"]))


def test_style_grid_and_cli_grid(
    style_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rng: np.random.Generator, capsys
) -> None:  # type: ignore[no-untyped-def]
    photo = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    grid = S.style_grid(photo, [style_file, style_file], size=20)
    assert grid.shape == (20, 3 * 30 + 2 * 4, 3) and grid.dtype == np.uint8
    small = np.asarray(Image.fromarray(photo).resize((30, 20), Image.LANCZOS))
    assert np.array_equal(grid[:, :30], small) and np.array_equal(grid[:, 34:64], stylize(small, style_file))
    assert (grid[:, 30:34] == 255).all()
    monkeypatch.setattr(psr.weights, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(ValueError, match="no style models are shipped"):
        S.style_grid(photo)
    (tmp_path / "tiny_style.safetensors").write_bytes(style_file.read_bytes())
    src = tmp_path / "photo.png"
    Image.fromarray(photo).save(src)
    p = argparse.ArgumentParser()
    S.add_arguments(p)
    assert S.run(p.parse_args([str(src), "--grid", str(tmp_path / "g.png"), "--quiet"])) == 0
    assert np.asarray(Image.open(tmp_path / "g.png")).shape == (384, 2 * 576 + 4, 3)
    # An existing grid file is replaced only with --overwrite, as every other output.
    before = (tmp_path / "g.png").read_bytes()
    with pytest.raises(SystemExit, match="--overwrite"):
        S.run(p.parse_args([str(src), "--grid", str(tmp_path / "g.png"), "--quiet"]))
    assert (tmp_path / "g.png").read_bytes() == before
    assert S.run(p.parse_args([str(src), "--grid", str(tmp_path / "g.png"), "--quiet", "--overwrite"])) == 0
    with pytest.raises(SystemExit, match="name a .png"):
        S.run(p.parse_args([str(src), "--grid", str(tmp_path / "g.bmp"), "--quiet"]))
    assert S.run(p.parse_args(["--list"])) == 0
    assert "tiny_style" in capsys.readouterr().out
    S._cached_style.cache_clear()


def test_cli_grid_scales_16bit_input_to_8bit(style_file: Path, tmp_path: Path, rng: np.random.Generator) -> None:
    g16 = rng.integers(0, 65536, (33, 47), dtype=np.uint16)  # Pillow's convert("RGB") clips this to 255
    src = tmp_path / "in16.png"
    Image.fromarray(g16).save(src)
    assert Image.open(src).mode == "I;16"
    p = argparse.ArgumentParser()
    S.add_arguments(p)
    grid_path = tmp_path / "g.png"
    assert S.run(p.parse_args([str(src), "--grid", str(grid_path), "--style", str(style_file), "--quiet"])) == 0
    grid = np.asarray(Image.open(grid_path))
    w = round(47 * 384 / 33)
    g8 = np.rint(g16 / 257.0).astype(np.uint8)
    expect = np.asarray(Image.fromarray(np.stack([g8] * 3, -1)).resize((w, 384), Image.LANCZOS))
    panel = grid[:, :w]
    assert np.abs(panel.astype(int) - expect).max() <= 1
    assert (panel == 255).mean() < 0.05  # not the white panel of a clipped conversion
    # 32-bit integer images: scaled by their own maximum.
    i32 = rng.integers(0, 5000, (9, 11)).astype(np.int32)
    np.testing.assert_array_equal(S._rgb8(Image.fromarray(i32, "I"))[..., 0], np.rint(i32 * 255.0 / i32.max()))


def test_shipped_style_name_wins_over_a_local_path(
    style_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rng: np.random.Generator
) -> None:
    shipped = tmp_path / "weights"
    shipped.mkdir()
    monkeypatch.setattr(psr.weights, "WEIGHTS_DIR", shipped)
    S._cached_style.cache_clear()
    (shipped / "tiny_style.safetensors").write_bytes(style_file.read_bytes())
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    x = rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)
    want = stylize(x, style_file)
    (work / "tiny_style").mkdir()  # `mkdir wave && psr stylize img.png --style wave`
    assert np.array_equal(stylize(x, "tiny_style"), want)
    (work / "tiny_style").rmdir()
    other = random_style_net(StyleConfig(channels=4, num_blocks=1), seed=11)
    save_weights(work / "tiny_style", other, {"name": "local"})  # a local file of the shipped name
    assert np.array_equal(stylize(x, "tiny_style"), want)
    local = stylize(x, "./tiny_style")  # spelled as a path: the local file
    assert not np.array_equal(local, want) and np.array_equal(local, stylize(x, other))
    save_weights(work / "mine", other, {"name": "mine"})  # a bare name that is not shipped: a path
    assert np.array_equal(stylize(x, "mine"), local)
    with pytest.raises(ValueError, match="unknown; shipped styles: tiny_style"):
        stylize(x, "nothing_here")
    src = work / "img.png"
    Image.fromarray(x).save(src)
    p = argparse.ArgumentParser()
    S.add_arguments(p)
    assert S.run(p.parse_args([str(src), "-o", "out", "--style", "tiny_style", "--quiet"])) == 0
    assert np.array_equal(np.asarray(Image.open(work / "out" / "img_tiny_style.png")), want)
    S._cached_style.cache_clear()


def test_a_rewritten_style_file_is_not_served_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rng: np.random.Generator
) -> None:
    """As for upscaling models: the cache is keyed on the file (path, inode, mtime, size)."""
    monkeypatch.chdir(tmp_path)
    x = rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)
    a, b = (random_style_net(StyleConfig(channels=4, num_blocks=1), seed=s) for s in (21, 22))
    save_weights(tmp_path / "s.safetensors", a, {"name": "s"})
    assert np.array_equal(stylize(x, "s.safetensors"), stylize(x, a))
    save_weights(tmp_path / "s.safetensors", b, {"name": "s"})
    assert np.array_equal(stylize(x, "s.safetensors"), stylize(x, b))
    S._cached_style.cache_clear()


def test_cli_checks_inputs_and_outputs_before_any_work(
    style_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    rng: np.random.Generator,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from psr.cli import main

    d1, d2, out = tmp_path / "d1", tmp_path / "d2", tmp_path / "out"
    for d in (d1, d2):
        d.mkdir()
        Image.fromarray(rng.integers(0, 256, (11, 9, 3), np.uint8)).save(d / "a.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    rgba = tmp_path / "rgba.png"
    Image.fromarray(rng.integers(0, 256, (7, 9, 4), np.uint8)).save(rgba)

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("stylize ran before the checks")

    monkeypatch.setattr(S, "stylize", no_work)
    style = ["--style", str(style_file), "--quiet"]
    cases = [
        ([str(d1 / "a.png"), str(bad)], "out", f"{bad}: cannot read it as an image"),
        ([str(d1), str(d2)], "out", str(d2 / "a.png")),  # two inputs, one target
        ([str(rgba)], "x.jpg", "JPEG cannot store mode RGBA"),
        ([str(rgba)], "x.webp", "cannot write .webp"),
        ([str(rgba), str(d1)], "y.png", "-o must be a folder for several inputs"),
    ]
    for inputs, o, message in cases:
        assert main(["stylize", *inputs, "-o", str(tmp_path / o), *style]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.png", "d1", "d2", "rgba.png"]
    with pytest.raises(SystemExit) as exc:
        main(["stylize", str(rgba), "--tile", "4", *style])
    assert exc.value.code == 2 and "--tile" in capsys.readouterr().err
    out.mkdir()
    (out / "a_tiny_style.png").write_bytes(b"")
    assert main(["stylize", str(d1), "-o", str(out), *style]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err


def test_cli_orientation_dpi_and_gray_alpha(style_file: Path, tmp_path: Path, rng: np.random.Generator) -> None:
    from psr.cli import main

    upright = rng.integers(0, 256, (9, 15, 3), np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 8  # "rotate 90 CCW to display"
    Image.fromarray(np.ascontiguousarray(np.rot90(upright, -1))).save(
        tmp_path / "photo.jpg", quality=100, exif=exif, dpi=(100, 200)
    )
    la = rng.integers(0, 256, (13, 7, 2), np.uint8)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    out = tmp_path / "out"
    for name in ("photo.jpg", "la.png"):
        assert main(["stylize", str(tmp_path / name), "-o", str(out), "--style", str(style_file), "--quiet"]) == 0
    im = Image.open(out / "photo_tiny_style.jpg")
    assert im.size == (15, 9) and im.getexif().get(0x0112) is None and im.info["dpi"] == (200, 100)
    g = Image.open(out / "la_tiny_style.png")
    assert g.mode == "LA" and g.size == (7, 13)
    got = np.asarray(g)
    assert np.array_equal(got[..., 1], la[..., 1])  # alpha kept as is, as stylize does for RGBA
    assert np.array_equal(got[..., 0], stylize(la[..., 0], style_file))


def test_import_does_not_load_torchvision_or_triton() -> None:
    code = (
        "import sys, importlib, numpy as np, psr\nS = importlib.import_module('psr.stylize')\n"
        "from psr.models import StyleNet\n"
        "S.stylize(np.zeros((9, 9, 3), np.uint8), StyleNet())\n"
        "bad = [m for m in ('torchvision', 'triton', 'torch._dynamo') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------
# napari: stylize_layer and the "Stylize" widget (on a ViewerModel: Qt widgets, no GL canvas)

if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def test_stylize_layer_keeps_geometry(net: StyleNet, rng: np.random.Generator) -> None:
    layers = pytest.importorskip("napari.layers")
    from psr_napari import stylize_layer

    gray = layers.Image(rng.random((2, 30, 41)).astype(np.float32), scale=(2.0, 0.5, 0.25), translate=(1, 2, 3))
    out = stylize_layer(gray, net, tile=16, strength=0.7)
    np.testing.assert_array_equal(out.data, stylize(gray.data, net, channel_axis=None, tile=16, strength=0.7))
    np.testing.assert_allclose(out.scale, gray.scale)
    np.testing.assert_allclose(out.translate, gray.translate)
    assert out.metadata["psr"]["strength"] == 0.7 and not out.rgb
    rgb = layers.Image(rng.integers(0, 256, (25, 33, 3), dtype=np.uint8), rgb=True, name="photo")
    out_rgb = stylize_layer(rgb, net, preserve_color=True)
    assert out_rgb.rgb and out_rgb.name == "photo (StyleNet)" and out_rgb.data.dtype == np.uint8
    np.testing.assert_array_equal(out_rgb.data, stylize(rgb.data, net, preserve_color=True))
    with pytest.raises(ValueError, match="strength"):
        stylize_layer(rgb, net, strength=2)


def test_stylize_widget_runs_in_thread(qtbot, style_file: Path, rng: np.random.Generator) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("napari")
    pytest.importorskip("magicgui")
    from napari.components import ViewerModel

    from psr_napari._style_widget import FROM_FILE, StylizeWidget

    viewer = ViewerModel()
    data = rng.integers(0, 256, (40, 45, 3), dtype=np.uint8)
    viewer.add_image(data, name="photo", rgb=True)
    w = StylizeWidget(viewer)
    qtbot.addWidget(w.native)
    assert w._layer.value is viewer.layers["photo"]
    w._style.value = FROM_FILE
    assert "choose a style weights file" in w._note.value
    w._file.value = style_file
    w._strength.value = 0.5
    assert "output: 40 x 45 px" in w._note.value
    w._run.native.click()
    qtbot.waitUntil(lambda: w._worker is None and len(viewer.layers) == 2, timeout=60_000)
    out = viewer.layers["photo (tiny_style)"]
    np.testing.assert_array_equal(out.data, stylize(data, style_file, strength=0.5))
    assert "added 'photo (tiny_style)'" in w._status.value and w._run.enabled


def test_cli_grid_applies_the_stylize_options(style_file: Path, tmp_path: Path, rng: np.random.Generator) -> None:
    """--grid panels are what psr stylize writes with the same --strength, --preserve-color, --tile
    and --precision; -o is refused beside --grid (it would be ignored)."""
    photo = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    src = tmp_path / "photo.png"
    Image.fromarray(photo).save(src)
    p = argparse.ArgumentParser()
    S.add_arguments(p)
    opts = ["--style", str(style_file), "--strength", "0.4", "--preserve-color", "--tile", "16", "--quiet"]
    assert S.run(p.parse_args([str(src), "--grid", str(tmp_path / "g.png"), *opts])) == 0
    grid = np.asarray(Image.open(tmp_path / "g.png"))
    small = np.asarray(Image.fromarray(photo).resize((576, 384), Image.LANCZOS))
    want = stylize(small, style_file, strength=0.4, preserve_color=True, tile=16)
    np.testing.assert_array_equal(grid[:, 580:], want)
    assert not np.array_equal(want, stylize(small, style_file))  # the options change the panel
    with pytest.raises(SystemExit, match="leave out -o"):
        S.run(p.parse_args([str(src), "--grid", str(tmp_path / "g2.png"), "-o", str(tmp_path / "x"), *opts]))
    assert not (tmp_path / "g2.png").exists()
