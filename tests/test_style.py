"""Style transfer (issue 7): the network, its weights, and ``psr train --task style``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import psr
import psr.weights
from psr import train
from psr.losses import resolve_vgg_weights
from psr.models import StyleConfig, StyleNet, _InstanceNorm
from psr.stylize import stylize
from psr.weights import load_style_model, read_metadata, save_weights

from .conftest import make_tiny_model, random_style_net

needs_vgg = pytest.mark.skipif(resolve_vgg_weights() is None, reason="no local VGG-16 weights")


TINY_CFGS = [
    StyleConfig(channels=4, num_blocks=1),
    StyleConfig(channels=4, num_blocks=2, norm="batch", upsample="deconv"),
]


# ---------------------------------------------------------------------------------------------
# architecture


def test_default_architecture_is_the_papers() -> None:
    net = StyleNet()
    convs = [(m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0]) for m in net.modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]  # fmt: skip
    expected = [(3, 32, 9, 1), (32, 64, 3, 2), (64, 128, 3, 2)]
    expected += [(128, 128, 3, 1)] * 10  # 5 residual blocks of two 3x3 convs
    expected += [(128, 64, 3, 1), (64, 32, 3, 1), (32, 3, 9, 1)]  # nearest x2 then conv (resize-conv)
    assert convs == expected
    assert len([m for m in net.modules() if isinstance(m, _InstanceNorm)]) == 2 + 1 + 10 + 2
    assert not any(isinstance(m, torch.nn.Conv2d) and m.padding != (0, 0) for m in net.modules())  # reflection only
    paper = StyleNet(StyleConfig(norm="batch", upsample="deconv"))
    ups = [m for m in paper.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(m.in_channels, m.out_channels, m.stride[0]) for m in ups] == [(128, 64, 2), (64, 32, 2)]


@pytest.mark.parametrize("cfg", TINY_CFGS, ids=["instance-resize", "batch-deconv"])
@pytest.mark.parametrize("hw", [(1, 2), (5, 7), (8, 8), (37, 23), (30, 41)])
def test_odd_sizes_pad_and_crop(cfg: StyleConfig, hw: tuple[int, int]) -> None:
    net = random_style_net(cfg)
    x = torch.rand(2, 3, *hw)
    y = net(x)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    h, w = hw
    ph, pw = max(8 - h, -h % 4), max(8 - w, -w % 4)
    mode = "reflect" if ph < h and pw < w else "edge"
    # Reference padding by numpy (bottom/right), then the unpadded body, cropped back.
    xp = torch.from_numpy(np.pad(x.numpy(), ((0, 0), (0, 0), (0, ph), (0, pw)), mode=mode))
    with torch.no_grad():
        ref = ((torch.tanh(net._body(xp)) + 1) / 2)[..., :h, :w]
    torch.testing.assert_close(y, ref, atol=1e-6, rtol=0)


def test_instance_norm_matches_torch_and_is_per_image() -> None:
    torch.manual_seed(1)
    m = _InstanceNorm(5).double()
    with torch.no_grad():
        m.weight.uniform_(0.5, 2)
        m.bias.uniform_(-1, 1)
    x = torch.randn(3, 5, 9, 11, dtype=torch.float64) * 3 + 2
    ref = F.instance_norm(x, weight=m.weight, bias=m.bias, eps=m.eps)
    torch.testing.assert_close(m(x), ref, atol=1e-12, rtol=0)
    net = random_style_net(TINY_CFGS[0])
    xb = torch.rand(3, 3, 21, 19)
    with torch.no_grad():
        torch.testing.assert_close(net(xb)[1:2], net(xb[1:2]), atol=1e-5, rtol=0)


def test_fixed_stats_reproduce_and_change_the_output() -> None:
    net = random_style_net(TINY_CFGS[0])
    x, other = torch.rand(1, 3, 33, 26), torch.rand(1, 3, 33, 26) * 0.3
    stats = net.instance_stats(x)
    assert len(stats) == len(net._norms()) and all(mu.shape == var.shape for mu, var in stats)
    with torch.no_grad():
        # The first norm's statistics by hand: var_mean of the first conv's output on the padded input.
        h = net.conv1(StyleNet._pad(x))
        torch.testing.assert_close(stats[0][0].flatten(), h.mean(dim=(0, 2, 3)), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(stats[0][1].flatten(), h.var(dim=(0, 2, 3), unbiased=False), atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(net(x, stats=stats), net(x), atol=1e-6, rtol=0)
        assert (net(other, stats=stats) - net(other)).abs().max() > 1e-3  # the stats are really used
        assert all(m.fixed is None for m in net._norms())  # and removed again
    assert random_style_net(TINY_CFGS[1]).instance_stats(x) == []


def test_bad_configs_and_inputs() -> None:
    with pytest.raises(ValueError, match="norm"):
        StyleConfig(norm="layer")
    with pytest.raises(ValueError, match="upsample"):
        StyleConfig(upsample="pixel_shuffle")
    with pytest.raises(ValueError, match="unknown StyleConfig"):
        StyleConfig.from_dict({"channels": 4, "scale": 4})
    net = random_style_net(TINY_CFGS[0])
    with pytest.raises(ValueError, match="RGB"):
        net(torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="pairs"):
        net(torch.rand(1, 3, 8, 8), stats=[])


def test_receptive_radius_bounds_the_gradient_footprint() -> None:
    net = random_style_net(StyleConfig(channels=4, num_blocks=2))
    x = torch.rand(1, 3, 160, 160, requires_grad=True)
    stats = net.instance_stats(x.detach())  # fixed statistics: locality is what tiles rely on
    net(x, stats=stats)[0, :, 80, 81].sum().backward()
    nz = torch.nonzero(x.grad.abs().sum(dim=(0, 1)))
    reach = int(max(80 - nz[:, 0].min(), nz[:, 0].max() - 80, 81 - nz[:, 1].min(), nz[:, 1].max() - 81))
    assert 0 < reach <= net.receptive_radius and net.receptive_radius % 4 == 0


# ---------------------------------------------------------------------------------------------
# weights


def test_style_weights_round_trip_and_task_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    net = random_style_net(TINY_CFGS[0])
    path = tmp_path / "mystyle.safetensors"
    save_weights(path, net, {"name": "mystyle", "style_image": "x.jpg", "scale": 4})
    meta = read_metadata(path)
    assert meta["task"] == "style" and "scale" not in meta and meta["config"]["channels"] == 4
    loaded = load_style_model(path)
    x = torch.rand(1, 3, 19, 22)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), atol=0, rtol=0)
    assert loaded.name == "mystyle" and not loaded.training
    with pytest.raises(ValueError, match="'style' model, not a super-resolution"):
        psr.load_model(path)
    sr = make_tiny_model(tmp_path / "x4-tiny.safetensors")
    with pytest.raises(ValueError, match="not a style model"):
        load_style_model(sr)
    # Listing: SR only by default (as before), styles on request, everything with task=None.
    monkeypatch.setattr(psr.weights, "WEIGHTS_DIR", tmp_path)
    assert list(psr.list_models()) == ["x4-tiny"]
    assert list(psr.list_models(task="style")) == ["mystyle"]
    assert sorted(psr.list_models(task=None)) == ["mystyle", "x4-tiny"]
    assert isinstance(load_style_model("mystyle"), StyleNet)
    with pytest.raises(ValueError, match="shipped styles: mystyle"):
        load_style_model("nope")
    with pytest.raises(ValueError, match="task must be"):
        psr.list_models(task="sty")


# ---------------------------------------------------------------------------------------------
# training


def test_style_sampler_is_a_function_of_seed_and_iteration(tmp_path: Path, rng: np.random.Generator) -> None:
    folder = _images(tmp_path / "c", rng)
    s = train.StyleSampler(train.find_images(folder), size=24)
    a, a_target = s.batch_at(7, 3, [0, 1, 2])
    b, _ = train.StyleSampler(train.find_images(folder), size=24).batch_at(7, 3, [0, 1, 2])
    assert a.shape == (3, 3, 24, 24) and a.dtype == torch.float32 and a is a_target
    assert torch.equal(a, b) and 0 <= a.min() and a.max() <= 1
    assert not torch.equal(a, s.batch_at(8, 3, [0, 1, 2])[0])
    assert torch.equal(a * 255, (a * 255).round())  # 8-bit content, like real photos


def _images(folder: Path, rng: np.random.Generator) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, (h, w) in enumerate([(48, 60), (56, 44), (40, 72), (64, 52), (45, 45)]):
        small = rng.integers(0, 256, (h // 3, w // 3, 3), dtype=np.uint8)
        Image.fromarray(small).resize((w, h), Image.BICUBIC).save(folder / f"im{i}.png")
    return folder


@pytest.fixture
def style_setup(tmp_path: Path, rng: np.random.Generator) -> tuple[Path, Path]:
    style = tmp_path / "stripes.png"
    yy, xx = np.mgrid[0:40, 0:48]
    stripes = np.stack([(np.sin(xx / 1.5) > 0) * 255, (np.sin((xx + yy) / 2.0) > 0) * 200, 40 + 0 * xx], -1)
    Image.fromarray(stripes.astype(np.uint8)).save(style)
    return _images(tmp_path / "train", rng), style


def _flags(data: Path, style: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "--task", "style", "--style", str(style), "--data", str(data), "--out", str(out),
        "--image-size", "32", "--style-size", "48", "--style-channels", "4", "--style-blocks", "1",
        "--batch-size", "2", "--n-val", "1", "--val-crop", "40", "--threads", "1", "--workers", "0",
        "--quiet", "--lr", "1e-2", *extra,
    ]  # fmt: skip


def _val(out: Path) -> list[dict]:
    return [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "val_style" in r]


@needs_vgg
def test_cli_style_training_lowers_style_loss_resumes_and_exports(
    tmp_path: Path, style_setup: tuple[Path, Path]
) -> None:
    from psr.cli import main

    data, style = style_setup
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["--content-weight", "0.01", "--iterations", "40", "--val-every", "4", "--checkpoint-every", "8"]
    assert main(_flags(data, style, a, *common)) == 0
    vals = _val(a)
    assert [r["it"] for r in vals] == list(range(4, 41, 4))
    styles = [r["val_style"] for r in vals]
    # Small noisy batches on random images: the mean of the last three validations against the
    # first. Over 24 seeds that ratio was 0.21-0.59 (median 0.36); at 24 iterations with a
    # two-by-two comparison it reached 0.78, so this test failed now and then.
    assert np.mean(styles[-3:]) < 0.75 * styles[0], styles
    # Stop at 8, resume to 40: bit-exact on the CPU.
    assert main(_flags(data, style, b, *common, "--stop-at", "8")) == 0
    assert main(_flags(data, style, b, *common, "--resume")) == 0
    sa, sb = train.load_checkpoint(a / "checkpoint.pt"), train.load_checkpoint(b / "checkpoint.pt")
    assert sa["task"] == sb["task"] == "style" and sb["iteration"] == 40
    assert all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"])
    # Export: the style format with the Gram check of the validation split.
    out = tmp_path / "stripes.safetensors"
    assert main(["export", str(a), "-o", str(out), "--which", "last"]) == 0
    meta = read_metadata(out)
    assert meta["task"] == "style" and meta["name"] == "stripes"
    assert meta["iterations"] == 40 and meta["style_image"] == "stripes.png"
    check = meta["gram_check"]
    assert check["images"] == 1 and set(check) >= {"relu2_2", "relu3_3", "all_lower"}
    assert check["relu2_2"]["ratio"] == pytest.approx(check["relu2_2"]["output"] / check["relu2_2"]["input"])
    styled = stylize(np.asarray(Image.open(data / "im0.png")), out)
    assert styled.shape == (48, 60, 3) and styled.dtype == np.uint8
    # --init-from the exported style: its weights, a fresh optimiser, provenance kept.
    ft = tmp_path / "ft"
    assert main(_flags(data, style, ft, "--iterations", "1", "--lr", "1e-30", "--init-from", str(out))) == 0
    sf = train.load_checkpoint(ft / "checkpoint.pt")
    for k, v in sa["model"].items():
        torch.testing.assert_close(sf["model"][k], v, rtol=0, atol=1e-20)
    assert all(int(s["step"]) == 1 for s in sf["optimizer"]["state"].values())
    assert str(out) in read_metadata(ft / "best.safetensors")["initialised_from"]


@needs_vgg
def test_style_resume_refuses_an_sr_checkpoint(tmp_path: Path, style_setup: tuple[Path, Path]) -> None:
    data, style = style_setup
    out = tmp_path / "run"
    train.save_checkpoint(
        out / "checkpoint.pt",
        {"model": {}, "optimizer": {}, "rng": {}, "iteration": 1, "config": {"scale": 4}, "args": "{}"},
    )
    from psr.cli import build_parser

    args = build_parser(["train"]).parse_args(_flags(data, style, out, "--iterations", "2", "--resume"))
    with pytest.raises(ValueError, match="'sr' run, not a style run"):
        train.main(args)


@pytest.mark.parametrize(
    ("extra", "exc", "match"),
    [
        (["--style-weight", "-1"], ValueError, "--style-weight"),
        (["--content-weight", "nan"], ValueError, "--content-weight"),
        (["--style-weight", "0", "--content-weight", "0"], ValueError, "nothing to train"),
        (["--image-size", "8"], ValueError, "--image-size"),
        (["--style-size", "4"], ValueError, "--style-size"),
    ],
)
def test_bad_style_arguments(
    tmp_path: Path, style_setup: tuple[Path, Path], extra: list[str], exc: type, match: str
) -> None:
    from psr.cli import build_parser

    data, style = style_setup
    args = build_parser(["train"]).parse_args(_flags(data, style, tmp_path / "r", *extra))
    with pytest.raises(exc, match=match):
        train.main(args)
    args.style = None
    with pytest.raises(ValueError, match="needs --style"):
        train.main(args)
    args.style = tmp_path / "missing.jpg"
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        train.main(args)


def test_load_style_image_resizes_the_longer_side(tmp_path: Path, rng: np.random.Generator) -> None:
    arr = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "s.png")
    t = train.load_style_image(tmp_path / "s.png", 20)
    assert t.shape == (1, 3, 12, 20) and 0 <= t.min() and t.max() <= 1
    same = train.load_style_image(tmp_path / "s.png", 0)
    torch.testing.assert_close(same[0].permute(1, 2, 0), torch.from_numpy(arr).float() / 255, atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------
# shipped styles: the Gram check


@needs_vgg
@pytest.mark.parametrize("name", sorted(psr.list_models(task="style")))
def test_shipped_style_moves_gram_statistics_toward_the_style(name: str, shared_dir: Path) -> None:
    meta = psr.list_models(task="style")[name]
    style_file = shared_dir / "data" / "styles" / meta["style_image"]
    files = sorted((shared_dir / "data" / "Set5").glob("*.png"))[:3]
    style = train.load_style_image(style_file, int(meta.get("style_size") or 0))
    check = train.gram_check(load_style_model(name), files, style)
    assert check["all_lower"], check
