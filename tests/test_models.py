from __future__ import annotations

import pytest
import torch
from torch import nn

from psr.models import SR_UPSAMPLE, SRConfig, SRNet
from psr.resize import imresize

from .conftest import DEVICES


def _random_bn(model: nn.Module) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 2)
                m.bias.uniform_(-1, 1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scale", [2, 3, 4, 8])
@pytest.mark.parametrize("skip", [True, False])
def test_shapes_and_range(device: str, scale: int, skip: bool) -> None:
    model = SRNet(SRConfig(scale=scale, channels=8, num_blocks=2, global_skip=skip)).to(device).eval()
    x = torch.rand(2, 3, 7, 9, device=device)
    y = model(x)
    assert y.shape == (2, 3, 7 * scale, 9 * scale)
    assert y.min() >= 0 and y.max() <= 1


def test_paper_architecture_parameter_count() -> None:
    # 9x9 conv 3->64, 4 residual blocks, two stride-1/2 convs, 9x9 conv 64->3, BN everywhere:
    # the figure the planning probe reported for the x4 network.
    assert sum(p.numel() for p in SRNet(SRConfig(scale=4)).parameters()) == 401_859
    counts = {type(m) for m in SRNet(SRConfig(scale=8)).upsample}
    assert nn.ConvTranspose2d in counts


def test_skip_starts_near_bicubic() -> None:
    # The residual head starts small (but not zero), so an untrained skip network is near MATLAB
    # bicubic; with a zeroed residual it is exactly bicubic.
    model = SRNet(SRConfig(scale=4)).double().eval()
    x = torch.rand(1, 3, 10, 12, dtype=torch.float64)
    diff = (model(x, clamp=False) - imresize(x, 4.0)).abs()
    assert 0 < diff.mean() < 0.1
    torch.nn.init.zeros_(model.tail.weight)
    torch.testing.assert_close(model(x, clamp=False), imresize(x, 4.0))


@pytest.mark.parametrize("upsample", SR_UPSAMPLE)
@pytest.mark.parametrize("scale", [2, 3, 4, 8])
def test_fuse_folds_batchnorm_exactly(upsample: str, scale: int) -> None:
    model = SRNet(SRConfig(scale=scale, upsample=upsample, channels=16, num_blocks=2)).double()
    _random_bn(model)
    nn.init.normal_(model.tail.weight, std=0.1)
    model.eval()
    fused = model.fuse()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    x = torch.rand(2, 3, 11, 6, dtype=torch.float64)
    torch.testing.assert_close(fused(x, clamp=False), model(x, clamp=False), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("upsample", SR_UPSAMPLE)
@pytest.mark.parametrize("scale", [3, 4])
def test_receptive_radius_bounds_influence(scale: int, upsample: str) -> None:
    model = SRNet(SRConfig(scale=scale, channels=8, upsample=upsample)).double().eval()
    _random_bn(model)
    nn.init.normal_(model.tail.weight, std=0.1)
    r = model.receptive_radius
    x = torch.rand(1, 3, 2 * r + 9, 2 * r + 9, dtype=torch.float64)
    x2 = x.clone()
    c = r + 4
    x2[..., c, c] += 1.0  # perturb one input pixel
    diff = (model(x2, clamp=False) - model(x, clamp=False)).abs().sum(1)[0]
    ys, xs = torch.nonzero(diff > 0, as_tuple=True)
    # Every changed output lies within r LR pixels of the perturbed pixel.
    assert (ys // scale - c).abs().max() <= r and (xs // scale - c).abs().max() <= r
    assert len(ys) > 0


def _bilinear_x2_1d(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Half-pixel-centred linear x2 along ``dim``: 3/4 of the nearest input, 1/4 of the next one
    on that side, the edge repeated."""
    n = x.shape[dim]
    prev = x.index_select(dim, torch.tensor([0, *range(n - 1)]))
    nxt = x.index_select(dim, torch.tensor([*range(1, n), n - 1]))
    even, odd = 0.75 * x + 0.25 * prev, 0.75 * x + 0.25 * nxt
    return torch.stack([even, odd], dim + 1).flatten(dim, dim + 1)


@pytest.mark.parametrize("upsample", ["resize_conv", "bilinear_conv"])
def test_resize_conv_stages_resize_as_named(upsample: str) -> None:
    """With each stage's conv made the identity, a resize-conv net's upsampling is the named resize."""
    model = SRNet(SRConfig(scale=4, upsample=upsample, channels=5, num_blocks=0)).double()
    x = torch.randn(2, 5, 7, 9, dtype=torch.float64)
    stages = [m for m in model.upsample if isinstance(m, nn.Sequential)]
    assert len(stages) == 2
    want = got = x
    for stage in stages:
        conv = stage[-1]
        with torch.no_grad():
            conv.weight.zero_()
            conv.weight[:, :, 1, 1] = torch.eye(5, dtype=torch.float64)
            conv.bias.zero_()
        if upsample == "resize_conv":
            want = want.repeat_interleave(2, -2).repeat_interleave(2, -1)
        else:
            want = _bilinear_x2_1d(_bilinear_x2_1d(want, 2), 3)
        got = stage(got)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_config_validation() -> None:
    for bad in (1, 5, 6, 16):
        with pytest.raises(ValueError, match="scale must be 2, 3, 4 or 8"):
            SRConfig(scale=bad)
    with pytest.raises(ValueError, match="upsample"):
        SRConfig(upsample="bilinear")
    with pytest.raises(ValueError, match="unknown SRConfig"):
        SRConfig.from_dict({"scale": 4, "bogus": 1})
    with pytest.raises(ValueError, match="RGB"):
        SRNet(SRConfig(scale=2, channels=4, num_blocks=0))(torch.rand(1, 1, 5, 5))


def test_scale3_stage_is_one_tap_per_output() -> None:
    """x3 upsamples in one stage of factor 3 (no 2x stages): the paper-style transposed conv of
    stride 3 and kernel 3 gives every output pixel exactly one tap, so no uneven overlap."""
    model = SRNet(SRConfig(scale=3, channels=4, num_blocks=0))
    ups = [m for m in model.upsample if isinstance(m, nn.ConvTranspose2d)]
    assert len(ups) == 1 and ups[0].stride == (3, 3) and ups[0].kernel_size == (3, 3)
    u = ups[0]  # its geometry on one channel with unit weights
    conv = nn.ConvTranspose2d(1, 1, u.kernel_size, u.stride, u.padding, u.output_padding, bias=False)
    nn.init.ones_(conv.weight)
    # Each output pixel's value counts the input pixels (taps) that reach it.
    assert torch.equal(conv(torch.ones(1, 1, 5, 7)), torch.ones(1, 1, 15, 21))
    for up in ("resize_conv", "bilinear_conv", "pixel_shuffle"):
        m = SRNet(SRConfig(scale=3, upsample=up, channels=4, num_blocks=0)).eval()
        assert m(torch.rand(1, 3, 4, 5)).shape == (1, 3, 12, 15)
