"""psr.evaluate and the metrics it uses, on cases with known values and against independent code."""

from __future__ import annotations

import importlib
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import psr
from psr import losses
from psr.data import default_shared_dir
from psr.metrics import psnr, rgb_to_y, ssim

# The module, also when psr/__init__ re-exports the function under the same name.
ev = importlib.import_module("psr.evaluate")
SET5 = default_shared_dir() / "data" / "Set5"
needs_set5 = pytest.mark.skipif(not (SET5 / "baby.png").is_file(), reason="shared Set5 missing")
C1 = (0.01 * 255) ** 2


# ------------------------------------------------------------------------------------------ metrics


def test_psnr_known_values():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 200, (37, 29))
    for d in (0.5, 3.0, 17.0):
        assert psnr(a + d, a, data_range=255) == pytest.approx(20 * math.log10(255 / d), abs=1e-10)
    noise = rng.normal(0, 4, a.shape)
    mse = np.mean(noise**2)
    assert psnr(a, a + noise, data_range=255) == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-10)
    assert psnr(a, a, data_range=255) == math.inf
    assert psnr(a / 255, (a + 5) / 255, data_range=1.0) == pytest.approx(20 * math.log10(255 / 5), abs=1e-9)
    with pytest.raises(ValueError, match="same shape"):
        psnr(a, a[1:], data_range=255)


def _ssim_by_hand(x: np.ndarray, y: np.ndarray) -> float:
    """Wang et al.'s SSIM, Gaussian 11x11 sigma 1.5, population statistics, written independently."""
    from scipy.ndimage import correlate

    t = np.arange(-5, 6)
    g = np.exp(-(t**2) / (2 * 1.5**2))
    k = np.outer(g, g) / np.outer(g, g).sum()

    def f(z: np.ndarray) -> np.ndarray:
        return correlate(z, k, mode="reflect")

    mx, my = f(x), f(y)
    vx, vy, cxy = f(x * x) - mx * mx, f(y * y) - my * my, f(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    smap = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(smap[5:-5, 5:-5].mean())  # skimage leaves out the window's half-width at the border


def test_ssim_known_values_and_independent_implementation():
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 255, (41, 35))
    b = np.clip(a + rng.normal(0, 20, a.shape), 0, 255)
    assert ssim(a, a, data_range=255) == pytest.approx(1.0, abs=1e-12)
    assert ssim(a, b, data_range=255) == pytest.approx(_ssim_by_hand(a, b), abs=1e-9)
    assert 0 < ssim(a, b, data_range=255) < 0.99
    # constant images: sigma = 0, so SSIM = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1)
    x, y = np.full((20, 24), 100.0), np.full((20, 24), 130.0)
    assert ssim(x, y, data_range=255) == pytest.approx((2 * 100 * 130 + C1) / (100**2 + 130**2 + C1), abs=1e-9)


def test_rgb_to_y_known_values():
    rgb = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]]], dtype=np.uint8)
    assert rgb_to_y(rgb)[0] == pytest.approx([16.0, 235.0, 16 + 65.481, 16 + 128.553, 16 + 24.966], abs=1e-12)


# ------------------------------------------------------------------------------- synthetic evaluate


class _Offset(nn.Module):
    """Nearest-neighbour upscale plus a constant, in [0, 1] units: exact on constant images."""

    def __init__(self, scale: int, d: int) -> None:
        super().__init__()
        self.scale, self.d = scale, d
        self.name = f"offset{d}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat_interleave(self.scale, -2).repeat_interleave(self.scale, -1) + self.d / 255


def _write(path, arr) -> None:
    Image.fromarray(arr).save(path)


@pytest.fixture
def flat_set(tmp_path):
    """Three constant images (two RGB, one gray) with sizes that are not multiples of 4."""
    d = tmp_path / "flat"
    d.mkdir()
    _write(d / "a.png", np.broadcast_to(np.array([100, 150, 50], np.uint8), (23, 30, 3)).copy())
    _write(d / "b.png", np.broadcast_to(np.array([10, 20, 30], np.uint8), (27, 21, 3)).copy())
    _write(d / "g.png", np.full((25, 26), 80, np.uint8))
    return d


@pytest.fixture
def vgg_file(tmp_path):
    """Random VGG conv1_1..conv2_2 in the Caffe convention: enough for relu2_2, cheap to run."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    sd = {
        k: (torch.randn(v.shape, generator=g) * 0.1).contiguous()
        for k, v in losses._build_features(losses.TAPS["relu2_2"] + 1).state_dict().items()
    }
    p = tmp_path / "vgg_small.safetensors"
    save_file(sd, str(p), metadata={"input": "BGR, 0..255, minus mean"})
    return p


def test_evaluate_constant_images_closed_form(flat_set, vgg_file):
    d = 6
    res = ev.evaluate(flat_set, scale=4, model=_Offset(4, d), vgg_weights=vgg_file)
    # Y of an RGB offset by d is offset by 219 d / 255; gray is compared on raw intensities.
    p_rgb = 20 * math.log10(255 / (219 * d / 255))
    p_gray = 20 * math.log10(255 / d)

    def s(y):
        return (2 * y * (y + 219 * d / 255) + C1) / (y**2 + (y + 219 * d / 255) ** 2 + C1)

    ya, yb = rgb_to_y(np.array([[[100, 150, 50]]]))[0, 0], rgb_to_y(np.array([[[10, 20, 30]]]))[0, 0]
    s_gray = (2 * 80 * 86 + C1) / (80**2 + 86**2 + C1)
    names = [im["name"] for im in res["images"]]
    assert names == ["a.png", "b.png", "g.png"]
    assert [im["shape"] for im in res["images"]] == [[20, 28, 3], [24, 20, 3], [24, 24]]  # mod-crop
    got = {im["name"]: im for im in res["images"]}
    assert got["a.png"]["psnr"] == pytest.approx(p_rgb, abs=1e-9)
    assert got["g.png"]["psnr"] == pytest.approx(p_gray, abs=1e-9)
    assert got["a.png"]["ssim"] == pytest.approx(s(ya), abs=1e-9)
    assert got["b.png"]["ssim"] == pytest.approx(s(yb), abs=1e-9)
    assert got["g.png"]["ssim"] == pytest.approx(s_gray, abs=1e-9)
    # means of per-image values (not a pooled MSE)
    assert res["psnr"] == pytest.approx((2 * p_rgb + p_gray) / 3, abs=1e-9)
    assert res["ssim"] == pytest.approx((s(ya) + s(yb) + s_gray) / 3, abs=1e-9)
    # perceptual: the relu2_2 distance of the shaved images, recomputed with psr.losses directly
    hr_a = np.broadcast_to(np.array([100, 150, 50], np.uint8), (12, 20, 3))
    want = losses.feature_distance(hr_a + np.uint8(d), hr_a, weights=vgg_file)
    assert want > 0
    assert got["a.png"]["perceptual"] == pytest.approx(want, rel=1e-6)
    hr_g = np.full((16, 16), 80, np.uint8)
    assert got["g.png"]["perceptual"] == pytest.approx(
        losses.feature_distance(hr_g + np.uint8(d), hr_g, weights=vgg_file), rel=1e-6
    )
    assert res["perceptual"] == pytest.approx(np.mean([im["perceptual"] for im in res["images"]]), rel=1e-12)
    assert res["settings"]["shave"] == 4 and res["settings"]["data"] == "flat"
    assert res["settings"]["perceptual"]["weights"] == str(vgg_file)
    assert res["model"] == "offset6" and res["match_histogram"] is False
    json.dumps(res)  # the result is JSON-serialisable

    # bicubic reproduces constant images exactly
    bic = ev.evaluate(flat_set, scale=2, model="bicubic", perceptual=False)
    assert bic["psnr"] == math.inf and bic["ssim"] == pytest.approx(1.0, abs=1e-12)
    assert bic["perceptual"] is None and bic["settings"]["perceptual"] == "off"


def test_evaluate_random_srnet_against_independent_pipeline(tmp_path):
    """A tiny random SRNet saved with psr.save_weights, scored by hand with skimage and torch."""
    from skimage.metrics import structural_similarity

    torch.manual_seed(3)
    net = psr.SRNet(psr.SRConfig(scale=2))
    with torch.no_grad():  # non-trivial BN statistics, so BN folding matters
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    net.eval()
    wpath = tmp_path / "tiny.safetensors"
    psr.save_weights(wpath, net, {"loss": "pixel", "match_histogram": True, "name": "tiny"})
    rng = np.random.default_rng(4)
    d = tmp_path / "imgs"
    d.mkdir()
    imgs = [rng.integers(0, 256, (31, 26, 3), dtype=np.uint8), rng.integers(0, 256, (22, 35, 3), dtype=np.uint8)]
    for i, im in enumerate(imgs):
        _write(d / f"r{i}.png", im)

    res_off = ev.evaluate(d, scale=2, model=wpath, match_histogram=False, perceptual=False)
    res_default = ev.evaluate(d, scale=2, model=wpath, perceptual=False)
    assert res_default["match_histogram"] is True  # from the metadata
    assert res_off["model"] == "tiny" and res_off["match_histogram"] is False

    loaded = psr.load_model(wpath)
    for im, row in zip(imgs, res_off["images"], strict=True):
        hr = im[: im.shape[0] // 2 * 2, : im.shape[1] // 2 * 2]
        lr = psr.imresize(np.ascontiguousarray(hr.transpose(2, 0, 1)), 0.5).transpose(1, 2, 0)
        with torch.no_grad():
            x = torch.from_numpy(lr.astype(np.float32) / 255).permute(2, 0, 1)[None]
            y = loaded(x)[0].permute(1, 2, 0).numpy()
        sr = np.clip(np.round(y * 255.0), 0, 255)
        w = np.array([65.481, 128.553, 24.966]) / 255
        y_sr = (16 + sr.astype(np.float64) @ w)[2:-2, 2:-2]
        y_hr = (16 + hr.astype(np.float64) @ w)[2:-2, 2:-2]
        want_p = 10 * np.log10(255**2 / np.mean((y_sr - y_hr) ** 2))
        want_s = structural_similarity(
            y_sr, y_hr, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
        )
        assert row["psnr"] == pytest.approx(want_p, abs=1e-9)
        assert row["ssim"] == pytest.approx(want_s, abs=1e-9)
        assert row["psnr"] < 40  # an untrained net: a real, finite difference


@needs_set5
@pytest.mark.parametrize(("scale", "want_psnr", "want_ssim"), [(4, 28.43, 0.8113), (8, 24.40, 0.6583)])
def test_set5_bicubic_reproduces_seed_row(scale, want_psnr, want_ssim):
    res = ev.evaluate(SET5, scale=scale, model="bicubic", perceptual=False)
    assert len(res["images"]) == 5
    # The independent implementation's values, to their printed precision...
    assert res["psnr"] == pytest.approx(want_psnr, abs=0.005)
    assert res["ssim"] == pytest.approx(want_ssim, abs=0.0005)
    if scale == 4:  # ...and the paper's row within the tolerance
        assert abs(res["psnr"] - 28.43) < 0.05 and abs(res["ssim"] - 0.8114) < 0.003


def test_perceptual_skipped_without_weights(flat_set, tmp_path, monkeypatch):
    monkeypatch.delenv("PSR_VGG_WEIGHTS", raising=False)
    monkeypatch.setenv("PSR_SHARED", str(tmp_path / "nothing"))
    res = ev.evaluate(flat_set, scale=2, model="bicubic")
    assert res["perceptual"] is None
    assert all(im["perceptual"] is None for im in res["images"])
    assert "skipped" in res["settings"]["perceptual"]


def test_bad_arguments(flat_set, tmp_path):
    with pytest.raises(ValueError, match="scale"):
        ev.evaluate(flat_set, scale=1)
    with pytest.raises(ValueError, match="upscales by 4"):
        ev.evaluate(flat_set, scale=2, model=_Offset(4, 1), perceptual=False)
    with pytest.raises(ValueError, match="shave"):
        ev.evaluate(flat_set, scale=2, shave=-1, perceptual=False)
    with pytest.raises(ValueError, match="too small: shaving 12 pixels per border leaves less than SSIM's"):
        ev.evaluate(flat_set, scale=2, shave=12, perceptual=False)
    small = tmp_path / "small"
    small.mkdir()
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(small / "s.png")
    with pytest.raises(ValueError, match=r"s\.png'.*too small.*SSIM's 11x11 window"):  # named, before upscaling
        ev.evaluate(small, scale=4, model=_Offset(4, 1), perceptual=False)
    with pytest.raises(TypeError, match="match_histogram"):
        ev.evaluate(flat_set, scale=2, match_histogram="yes", perceptual=False)
    with pytest.raises(FileNotFoundError, match="data"):
        ev.evaluate(tmp_path / "missing", scale=2)
    with pytest.raises(ValueError, match="empty"):
        ev.evaluate([], scale=2)
    with pytest.raises(TypeError, match="data"):
        ev.evaluate(42, scale=2)
    deep = tmp_path / "deep"
    deep.mkdir()
    Image.fromarray(np.full((16, 16), 1000, np.uint16)).save(deep / "d16.png")
    with pytest.raises(ValueError, match="8-bit"):
        ev.evaluate(deep, scale=2, perceptual=False)


# ---------------------------------------------------------------------------------------- figures


def test_one_bit_images_are_scored_as_gray(tmp_path):
    """A 1-bit PNG is a gray image (raw intensities), as the same picture saved as 8-bit gray."""
    pic = (np.indices((40, 40)).sum(0) // 5 % 2 * 255).astype(np.uint8)
    for mode in ("1", "L"):
        d = tmp_path / mode
        d.mkdir()
        Image.fromarray(pic).convert(mode).save(d / "p.png")
    one = ev.evaluate(tmp_path / "1", 4, "bicubic", perceptual=False)
    gray = ev.evaluate(tmp_path / "L", 4, "bicubic", perceptual=False)
    assert one["images"][0]["shape"] == [40, 40] and one["psnr"] == gray["psnr"] and one["ssim"] == gray["ssim"]


def test_make_strip_crops_the_detail_and_enlarges_nearest():
    rng = np.random.default_rng(5)
    hr = np.full((60, 70, 3), 128, np.uint8)
    hr[30:46, 40:56] = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)  # the only texture
    other = 255 - hr
    strip = ev.make_strip([("HR", hr), ("inverted", other)], crop=16, zoom=3, border=2)
    band, gap, side = 22, 4, 48
    assert strip.shape == (band + side, 2 * side + gap, 3)
    np.testing.assert_array_equal(strip[band:, :side], hr[30:46, 40:56].repeat(3, 0).repeat(3, 1))
    np.testing.assert_array_equal(strip[band:, side + gap :], other[30:46, 40:56].repeat(3, 0).repeat(3, 1))
    assert (strip[:band] < 128).any()  # a label was drawn
    gray = ev.make_strip([("g", hr[..., 0])], crop=8, corner=(1, 2), zoom=2)
    np.testing.assert_array_equal(gray[22:, :, 0], hr[1:9, 2:10, 0].repeat(2, 0).repeat(2, 1))
    with pytest.raises(ValueError, match="outside"):
        ev.make_strip([("HR", hr)], crop=16, corner=(50, 0))
    with pytest.raises(ValueError, match="panel"):
        ev.make_strip([("HR", hr), ("bad", hr[:10])])


# -------------------------------------------------------------------------------------------- CLI


def test_cli_tables_json_and_figures(tmp_path, vgg_file):
    import argparse

    torch.manual_seed(6)
    wpath = tmp_path / "tiny4.safetensors"
    psr.save_weights(wpath, psr.SRNet(psr.SRConfig(scale=4)).eval(), {"name": "tiny4", "match_histogram": False})
    rng = np.random.default_rng(7)
    d = tmp_path / "set"
    d.mkdir()
    _write(d / "one.png", rng.integers(0, 256, (44, 41, 3), dtype=np.uint8))
    _write(d / "two.png", rng.integers(0, 256, (40, 48), dtype=np.uint8))
    p = argparse.ArgumentParser()
    ev.add_arguments(p)
    args = p.parse_args(
        [
            "--data", str(d), "--scale", "4", "--model", "bicubic", str(wpath),
            "--vgg-weights", str(vgg_file), "--json", str(tmp_path / "out.json"),
            "--markdown", str(tmp_path / "out.md"), "--figure", str(tmp_path / "fig"), "--crop", "16", "--quiet",
        ]
    )  # fmt: skip
    assert ev.run(args) == 0
    data = json.loads((tmp_path / "out.json").read_text())
    rows = [(r["model"], r["match_histogram"]) for r in data["results"]]
    assert rows == [("bicubic", False), ("bicubic", True), ("tiny4", False), ("tiny4", True)]
    for r in data["results"]:
        direct = ev.evaluate(d, 4, "bicubic" if r["model"] == "bicubic" else wpath,
                             match_histogram=r["match_histogram"], vgg_weights=vgg_file)  # fmt: skip
        assert r["psnr"] == pytest.approx(direct["psnr"], abs=1e-12)
        assert r["perceptual"] == pytest.approx(direct["perceptual"], rel=1e-9)
    md = (tmp_path / "out.md").read_text()
    assert md.count("| set | x4 |") == 4 and "relu2_2" in md
    figs = sorted(f.name for f in (tmp_path / "fig").iterdir())
    assert figs == ["set_one_x4.png", "set_two_x4.png"]
    im = np.asarray(Image.open(tmp_path / "fig" / "set_one_x4.png"))
    zoom = round(256 / 16)
    assert im.shape == (22 + 16 * zoom, 3 * 16 * zoom + 2 * 4, 3)  # HR, bicubic, tiny4


def test_cli_model_selection(monkeypatch):
    monkeypatch.setattr("psr.weights.list_models", lambda: {"x4-a": {"scale": 4}, "x8-b": {"scale": 8}})
    assert ev._models_for(["all"], 4) == ["bicubic", "x4-a"]
    assert ev._models_for(["all", "bicubic"], 8) == ["bicubic", "x8-b"]
    assert ev._models_for(["x8-b", "x4-a"], 4) == ["x4-a"]


def test_cli_nothing_to_evaluate_is_an_error(flat_set, tmp_path, monkeypatch, capsys):
    from psr.cli import main as cli_main
    from psr.models import StyleConfig

    from .conftest import random_style_net

    monkeypatch.setattr("psr.weights.list_models", lambda: {"x4-a": {"scale": 4}, "x8-b": {"scale": 8}})
    # Every requested model skipped at the scale: exit 2 before any work, not an empty table.
    assert cli_main(["eval", "--data", str(flat_set), "--scale", "4", "--model", "x8-b", "--quiet"]) == 2
    cap = capsys.readouterr()
    assert "x8-b is a x8 model; skipped at x4" in cap.err
    assert "psr eval: nothing to evaluate" in cap.err and "PSNR" not in cap.out
    # A style weights file is no upscaler, and says so.
    style = tmp_path / "mystyle.safetensors"
    psr.save_weights(style, random_style_net(StyleConfig(channels=4, num_blocks=1)), {"name": "mystyle"})
    assert cli_main(["eval", "--data", str(flat_set), "--scale", "4", "--model", str(style), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "holds a 'style' model, not a super-resolution model" in err and "xNone" not in err
    # Some models left: the others are evaluated.
    args = ["eval", "--data", str(flat_set), "--scale", "2", "--model", "bicubic", "x8-b", "--no-perceptual"]
    assert cli_main([*args, "--match-histogram", "off", "--quiet"]) == 0
    cap = capsys.readouterr()
    assert cap.out.count("| flat | x2 | bicubic |") == 1 and "skipped at x2" in cap.err


def test_cli_help_shows_defaults(capsys, monkeypatch):
    from psr.cli import main as cli_main

    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit):
        cli_main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for want in ("(default: all)", "(default: both)", "(default: 4)", "(default: auto)", "default: 256)",
                 "(default: $PSR_VGG_WEIGHTS, else $PSR_SHARED/weights/vgg16_caffe_relu4_3"):  # fmt: skip
        assert want in text, want


def test_cli_output_paths_are_checked_before_any_work(flat_set, tmp_path, monkeypatch, capsys):
    """--json, --markdown and --figure that cannot be written stop the run before the evaluation."""
    import os

    from psr.cli import main as cli_main

    ev = importlib.import_module("psr.evaluate")

    def no_work(*args, **kwargs):
        raise AssertionError("evaluated before the output paths were checked")

    monkeypatch.setattr(ev, "evaluate", no_work)
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("x")
    base = ["eval", "--data", str(flat_set), "--scale", "2", "--model", "bicubic", "--no-perceptual", "--quiet"]
    cases = [
        (["--json", str(a_file / "r.json")], "a_file.txt is a file, not a folder"),
        (["--markdown", str(tmp_path)], "is a folder; expected a file name"),
        (["--figure", str(a_file)], "is a file; expected a folder"),
        (["--figure", str(a_file / "figs")], "a_file.txt is a file, not a folder"),
    ]
    if os.path.isdir("/proc/self"):  # a folder that takes no new file whatever the permission bits say
        cases.append((["--json", "/proc/self/r.json"], "cannot write into /proc/self"))
    for extra, want in cases:
        assert cli_main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert want in err and err.startswith("psr eval:"), err
