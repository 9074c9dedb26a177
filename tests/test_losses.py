"""psr.losses against independent computations (torchvision's VGG-16, float64 by hand, einsum)."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from psr import losses
from psr.data import default_shared_dir
from psr.losses import (
    TAPS,
    PerceptualLoss,
    PixelLoss,
    StyleLoss,
    TVLoss,
    VGGFeatures,
    feature_distance,
    gram_matrix,
    resolve_vgg_weights,
)

SHARED_VGG = default_shared_dir() / "weights" / "vgg16_caffe_relu4_3.safetensors"
needs_vgg = pytest.mark.skipif(not SHARED_VGG.is_file(), reason="shared VGG-16 weights missing")
CAFFE_MEAN_BGR = torch.tensor([103.939, 116.779, 123.68], dtype=torch.float64)


def _torchvision_features(path=SHARED_VGG) -> torch.nn.Module:
    """torchvision's own VGG-16 features[:23], loaded strict=True from the shared file, float64."""
    import torchvision
    from safetensors.torch import load_file

    net = torchvision.models.vgg16(weights=None).features[:23]
    net.load_state_dict(load_file(str(path)), strict=True)
    return net.double().eval()


def _caffe_input(x: torch.Tensor) -> torch.Tensor:
    """RGB [0,1] -> BGR 0..255 minus the Caffe mean, by hand in float64."""
    x = x.double() * 255.0
    return x.flip(1) - CAFFE_MEAN_BGR.reshape(1, 3, 1, 1)


def _random_vgg_state(seed: int = 0, depth: int = 23) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in losses._build_features(depth).state_dict().items():
        sd[k] = torch.randn(v.shape, generator=g) * (0.1 if k.endswith("weight") else 0.01)
    return sd


def _save(path, sd, metadata=None) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata=metadata)


@pytest.fixture
def caffe_file(tmp_path):
    """A small random VGG in the shared file's format (Caffe convention in its metadata)."""
    p = tmp_path / "vgg_rand.safetensors"
    _save(p, _random_vgg_state(), {"input": "BGR, 0..255, minus mean"})
    return p


# --------------------------------------------------------------------------------------- shared VGG


@needs_vgg
def test_perceptual_loss_equals_independent_relu2_2_mse():
    """The issue's check: relu2_2 MSE on the shared weights, recomputed with torchvision in float64."""
    g = torch.Generator().manual_seed(1)
    out = torch.rand(2, 3, 45, 37, generator=g)
    tgt = (out + 0.1 * torch.randn(out.shape, generator=g)).clamp(0, 1)
    ref_net = _torchvision_features()
    with torch.no_grad():
        f_out = ref_net[: TAPS["relu2_2"] + 1](_caffe_input(out))
        f_tgt = ref_net[: TAPS["relu2_2"] + 1](_caffe_input(tgt))
    ref = ((f_out - f_tgt) ** 2).sum() / f_out.numel()  # 1/(C H W) ||.||^2, averaged over N
    got = PerceptualLoss()(out, tgt)
    assert got.dtype == torch.float32
    assert ref.item() > 1.0  # a real distance, not a degenerate zero
    torch.testing.assert_close(got.double(), ref, rtol=2e-5, atol=0)


@needs_vgg
def test_all_taps_match_torchvision_in_float64():
    x = torch.rand(1, 3, 33, 29, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    vgg = VGGFeatures(tuple(TAPS)).double()
    assert vgg.convention == "caffe"
    got = vgg(x)
    ref_net = _torchvision_features()
    h = _caffe_input(x)
    with torch.no_grad():
        for i, layer in enumerate(ref_net):
            h = layer(h)
            for name, idx in TAPS.items():
                if idx == i:
                    torch.testing.assert_close(got[name], h, rtol=1e-10, atol=1e-9)
    assert set(got) == set(TAPS)


@needs_vgg
def test_shared_file_found_by_default_and_network_truncated(monkeypatch):
    monkeypatch.delenv("PSR_VGG_WEIGHTS", raising=False)
    assert resolve_vgg_weights() == SHARED_VGG
    vgg = VGGFeatures(("relu1_2",))
    assert len(vgg.features) == TAPS["relu1_2"] + 1
    assert vgg.weights_source == repr(str(SHARED_VGG))


@needs_vgg
def test_feature_distance_matches_loss_and_input_kinds():
    g = torch.Generator().manual_seed(3)
    a = torch.randint(0, 256, (31, 27, 3), generator=g, dtype=torch.uint8).numpy()
    b = np.clip(a.astype(np.int16) + np.random.default_rng(0).integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    d_np = feature_distance(a, b)
    ta = torch.from_numpy(a).permute(2, 0, 1).float()[None] / 255
    tb = torch.from_numpy(b).permute(2, 0, 1).float()[None] / 255
    assert d_np == pytest.approx(PerceptualLoss()(ta, tb).item(), rel=1e-5)
    assert feature_distance(ta, tb) == pytest.approx(d_np, rel=1e-12)
    assert feature_distance(a.astype(np.float64) / 255, b.astype(np.float64) / 255) == pytest.approx(d_np, rel=1e-6)
    assert feature_distance(b, a) == pytest.approx(d_np, rel=1e-12)
    assert feature_distance(a, a) == 0.0
    # gray (H, W) is replicated to three channels
    gray = a[..., 1]
    assert feature_distance(gray, b[..., 1]) == pytest.approx(
        feature_distance(np.repeat(gray[..., None], 3, -1), np.repeat(b[..., 1:2], 3, -1)), rel=1e-12
    )
    with pytest.raises(ValueError, match="same shape"):
        feature_distance(a, b[1:])
    with pytest.raises(ValueError, match="layer"):
        feature_distance(a, b, layer="relu5_3")


# ------------------------------------------------------------------------------ random-weight files


def test_caffe_convention_by_hand(caffe_file):
    x = torch.rand(2, 3, 23, 19, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    vgg = VGGFeatures(("relu1_2", "relu2_2"), caffe_file).double()
    assert vgg.convention == "caffe"
    sd = _random_vgg_state()
    h = _caffe_input(x)
    h = F.relu(F.conv2d(h, sd["0.weight"].double(), sd["0.bias"].double(), padding=1))
    h = F.relu(F.conv2d(h, sd["2.weight"].double(), sd["2.bias"].double(), padding=1))
    out = vgg(x)
    torch.testing.assert_close(out["relu1_2"], h, rtol=1e-12, atol=1e-10)
    h = F.max_pool2d(h, 2)
    h = F.relu(F.conv2d(h, sd["5.weight"].double(), sd["5.bias"].double(), padding=1))
    h = F.relu(F.conv2d(h, sd["7.weight"].double(), sd["7.bias"].double(), padding=1))
    torch.testing.assert_close(out["relu2_2"], h, rtol=1e-12, atol=1e-10)


def test_torchvision_convention_from_pth_with_prefixed_keys(tmp_path):
    """A full torchvision-style state dict (features.N / classifier keys) in a .pth file."""
    sd = {f"features.{k}": v for k, v in _random_vgg_state(5).items()}
    sd["features.24.weight"] = torch.zeros(512, 512, 3, 3)  # conv5: ignored
    sd["classifier.0.weight"] = torch.zeros(4, 4)
    p = tmp_path / "vgg16-tv.pth"
    torch.save(sd, p)
    vgg = VGGFeatures(("relu1_2",), p).double()
    assert vgg.convention == "torchvision"
    x = torch.rand(1, 3, 17, 21, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).reshape(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).reshape(1, 3, 1, 1)
    h = (x - mean) / std
    h = F.relu(F.conv2d(h, sd["features.0.weight"].double(), sd["features.0.bias"].double(), padding=1))
    h = F.relu(F.conv2d(h, sd["features.2.weight"].double(), sd["features.2.bias"].double(), padding=1))
    torch.testing.assert_close(vgg(x)["relu1_2"], h, rtol=1e-12, atol=1e-10)


def test_state_dict_keys_match_torchvision_layout(caffe_file):
    import torchvision

    vgg = VGGFeatures(("relu4_3",), caffe_file)
    ref = torchvision.models.vgg16(weights=None).features[:23]
    assert list(vgg.features.state_dict()) == list(ref.state_dict())
    ref.load_state_dict(vgg.features.state_dict(), strict=True)  # and back
    assert [type(a) for a in vgg.features] == [type(b) for b in ref]


def test_frozen_but_differentiable(caffe_file):
    loss = PerceptualLoss(weights=caffe_file)
    assert all(not p.requires_grad for p in loss.parameters())
    loss.train()
    assert not loss.vgg.training
    out = torch.rand(1, 3, 16, 18, requires_grad=True)
    tgt = torch.rand(1, 3, 16, 18)
    val = loss(out, tgt)
    val.backward()
    assert out.grad is not None and out.grad.abs().sum() > 0
    # gradient against finite differences, in float64 on one coordinate
    loss64 = PerceptualLoss(weights=caffe_file).double()
    o = out.detach().double().requires_grad_(True)
    t = tgt.double()
    loss64(o, t).backward()
    eps = 1e-6
    d = torch.zeros_like(o)
    d[0, 1, 7, 9] = eps
    fd = (loss64(o.detach() + d, t) - loss64(o.detach() - d, t)) / (2 * eps)
    assert o.grad[0, 1, 7, 9].item() == pytest.approx(fd.item(), rel=1e-5)


def test_perceptual_loss_sums_layers(caffe_file):
    g = torch.Generator().manual_seed(7)
    a, b = torch.rand(2, 3, 20, 24, generator=g), torch.rand(2, 3, 20, 24, generator=g)
    both = PerceptualLoss(("relu1_2", "relu2_2"), caffe_file)(a, b)
    one = PerceptualLoss(("relu1_2",), caffe_file)(a, b)
    two = PerceptualLoss(("relu2_2",), caffe_file)(a, b)
    torch.testing.assert_close(both, one + two, rtol=1e-6, atol=0)
    assert PerceptualLoss(weights=caffe_file)(a, a).item() == 0.0


def test_shared_vgg_instance(caffe_file):
    vgg = VGGFeatures(("relu4_3",), caffe_file)
    a = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    b = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(PerceptualLoss(vgg=vgg)(a, b), PerceptualLoss(weights=caffe_file)(a, b))
    shallow = VGGFeatures(("relu1_2",), caffe_file)
    with pytest.raises(ValueError, match="deeper"):
        StyleLoss(a[0], vgg=shallow)
    with pytest.raises(ValueError, match="deeper"):
        shallow(a, ("relu2_2",))


# ------------------------------------------------------------------------------------ Gram / style


def test_gram_matrix_against_loop_float64():
    g = torch.Generator().manual_seed(10)
    f = torch.randn(2, 5, 7, 3, generator=g, dtype=torch.float64)
    got = gram_matrix(f)
    n, c, h, w = f.shape
    ref = torch.empty(n, c, c, dtype=torch.float64)
    for i in range(n):
        for p in range(c):
            for q in range(c):
                ref[i, p, q] = sum(f[i, p, y, x] * f[i, q, y, x] for y in range(h) for x in range(w)) / (c * h * w)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got, torch.einsum("nchw,ndhw->ncd", f, f) / (c * h * w), rtol=1e-12, atol=1e-14)
    assert torch.allclose(got, got.transpose(1, 2))
    # float32 and bf16 inputs come back in float32, close to the float64 value
    torch.testing.assert_close(gram_matrix(f.float()).double(), ref, rtol=1e-5, atol=1e-6)
    assert gram_matrix(f.bfloat16()).dtype == torch.float32
    with pytest.raises(ValueError, match="features"):
        gram_matrix(f[0])


def test_style_loss_against_independent_grams(caffe_file):
    g = torch.Generator().manual_seed(11)
    style = torch.rand(3, 40, 36, generator=g, dtype=torch.float64)
    out = torch.rand(2, 3, 28, 32, generator=g, dtype=torch.float64)
    layers = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
    vgg = VGGFeatures(layers, caffe_file).double()
    fs, fo = vgg(style[None]), vgg(out)
    ref = 0.0
    for name in layers:
        gs = torch.einsum("nchw,ndhw->ncd", fs[name], fs[name]) / fs[name][0].numel()
        go = torch.einsum("nchw,ndhw->ncd", fo[name], fo[name]) / fo[name][0].numel()
        ref += sum(((go[i] - gs[0]) ** 2).sum() for i in range(2)) / 2  # ||.||_F^2, batch mean
    loss = StyleLoss(style, layers, vgg=vgg)
    got = loss(out)
    assert got.item() > 0
    torch.testing.assert_close(got, torch.as_tensor(ref, dtype=got.dtype), rtol=1e-6, atol=0)
    # the style image against itself has zero style loss
    assert loss(style[None].double()).item() == pytest.approx(0.0, abs=1e-10)
    with pytest.raises(ValueError, match="style_image"):
        StyleLoss(torch.rand(4, 8, 8), vgg=vgg)
    with pytest.raises(TypeError, match="style_image"):
        StyleLoss(np.zeros((3, 8, 8)), vgg=vgg)


# ----------------------------------------------------------------------------------- TV and pixel


def test_tv_loss_against_numpy():
    x = torch.rand(2, 3, 9, 13, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    a = x.numpy()
    dy, dx = np.diff(a, axis=2), np.diff(a, axis=3)
    assert TVLoss()(x).item() == pytest.approx((dy**2).mean() + (dx**2).mean(), rel=1e-12)
    assert TVLoss("l1")(x).item() == pytest.approx(np.abs(dy).mean() + np.abs(dx).mean(), rel=1e-12)
    assert TVLoss()(torch.full((1, 3, 5, 5), 0.3)).item() == 0.0
    with pytest.raises(ValueError, match="kind"):
        TVLoss("l3")


def test_pixel_loss():
    a, b = torch.rand(2, 3, 5, 7), torch.rand(2, 3, 5, 7)
    assert PixelLoss()(a, b).item() == pytest.approx(((a - b) ** 2).mean().item(), rel=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        PixelLoss()(a, b[:, :, :4])


# ------------------------------------------------------------------------------- lookup and errors


def test_lookup_order(tmp_path, monkeypatch, caffe_file):
    env_file = tmp_path / "env.safetensors"
    _save(env_file, _random_vgg_state(1), {"convention": "caffe"})
    shared = tmp_path / "shared"
    (shared / "weights").mkdir(parents=True)
    shared_file = shared / "weights" / losses.SHARED_VGG_FILE
    _save(shared_file, _random_vgg_state(2), {"input": "BGR"})
    monkeypatch.setenv("PSR_SHARED", str(shared))
    monkeypatch.setenv("PSR_VGG_WEIGHTS", str(env_file))
    assert resolve_vgg_weights(caffe_file) == caffe_file
    assert resolve_vgg_weights() == env_file
    monkeypatch.delenv("PSR_VGG_WEIGHTS")
    assert resolve_vgg_weights() == shared_file
    shared_file.unlink()
    assert resolve_vgg_weights() is None
    monkeypatch.setenv("PSR_VGG_WEIGHTS", str(tmp_path / "nope.safetensors"))
    with pytest.raises(FileNotFoundError, match="PSR_VGG_WEIGHTS"):
        resolve_vgg_weights()
    with pytest.raises(FileNotFoundError, match="weights"):
        VGGFeatures(weights=tmp_path / "missing.safetensors")


def test_torchvision_fallback_warns_once(tmp_path, monkeypatch):
    """No file anywhere: torchvision's weights with their own convention and a one-time warning."""
    monkeypatch.delenv("PSR_VGG_WEIGHTS", raising=False)
    monkeypatch.setenv("PSR_SHARED", str(tmp_path / "no-shared"))
    fake = {f"features.{k}": v for k, v in _random_vgg_state(13).items()}
    calls = []

    def fake_download():
        calls.append(1)
        return dict(fake)

    # Patch only the download; the warning logic in _torchvision_state_dict is exercised via a wrapper.
    monkeypatch.setattr(losses, "_warned_torchvision", False)
    real = losses._torchvision_state_dict

    def wrapped():
        import torchvision.models

        monkeypatch.setattr(
            torchvision.models.VGG16_Weights.IMAGENET1K_V1.__class__,
            "get_state_dict",
            lambda self, *a, **k: fake_download(),
        )
        return real()

    monkeypatch.setattr(losses, "_torchvision_state_dict", wrapped)
    with pytest.warns(UserWarning, match="different model"):
        vgg = VGGFeatures(("relu1_2",))
    assert vgg.convention == "torchvision" and calls
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        VGGFeatures(("relu1_2",))  # second time: no warning


def test_corrupt_and_mismatched_files_refused(tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01not a safetensors file" * 10)
    with pytest.raises(ValueError, match="corrupt"):
        VGGFeatures(weights=garbage)

    good = tmp_path / "good.safetensors"
    _save(good, _random_vgg_state(), {"input": "BGR"})
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="corrupt"):
        VGGFeatures(weights=truncated)

    bad_pth = tmp_path / "bad.pth"
    bad_pth.write_bytes(b"PK\x03\x04 broken zip")
    with pytest.raises(ValueError, match="corrupt"):
        VGGFeatures(weights=bad_pth)

    sd = _random_vgg_state()
    sd["2.weight"] = torch.zeros(64, 32, 3, 3)
    wrong_shape = tmp_path / "shape.safetensors"
    _save(wrong_shape, sd, {"input": "BGR"})
    with pytest.raises(ValueError, match="shape"):
        VGGFeatures(weights=wrong_shape)

    sd = _random_vgg_state(depth=4)  # only conv1_x: enough for relu1_2, not for relu2_2
    short = tmp_path / "short.safetensors"
    _save(short, sd, {"input": "BGR"})
    assert VGGFeatures(("relu1_2",), short).convention == "caffe"
    with pytest.raises(ValueError, match="missing"):
        VGGFeatures(("relu2_2",), short)

    sd = _random_vgg_state()
    sd["5.bias"][3] = float("nan")
    nan_file = tmp_path / "nan.safetensors"
    _save(nan_file, sd, {"input": "BGR"})
    with pytest.raises(ValueError, match="NaN"):
        VGGFeatures(weights=nan_file)

    sd = _random_vgg_state()
    sd["backbone.0.weight"] = torch.zeros(1)
    odd_key = tmp_path / "key.safetensors"
    _save(odd_key, sd, {"input": "BGR"})
    with pytest.raises(ValueError, match="unexpected key"):
        VGGFeatures(weights=odd_key)

    no_meta = tmp_path / "nometa.safetensors"
    _save(no_meta, _random_vgg_state())
    with pytest.raises(ValueError, match="convention"):
        VGGFeatures(weights=no_meta)
    assert VGGFeatures(weights=no_meta, convention="torchvision").convention == "torchvision"


def test_bad_arguments(caffe_file):
    with pytest.raises(ValueError, match="unknown VGG-16 tap"):
        VGGFeatures(("relu2_1",), caffe_file)
    with pytest.raises(ValueError, match="empty"):
        VGGFeatures((), caffe_file)
    with pytest.raises(ValueError, match="convention"):
        VGGFeatures(weights=caffe_file, convention="bgr")
    vgg = VGGFeatures(weights=caffe_file)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        vgg(torch.rand(1, 4, 8, 8))
    with pytest.raises(TypeError, match="floating"):
        vgg(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="same shape"):
        PerceptualLoss(weights=caffe_file)(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9))
    with pytest.raises(TypeError, match="vgg"):
        PerceptualLoss(vgg="not a module")


def test_import_does_not_load_torchvision(caffe_file):
    code = (
        "import sys, torch; import psr.losses as L; "
        f"v = L.PerceptualLoss(weights={str(caffe_file)!r}); v(torch.rand(1,3,8,8), torch.rand(1,3,8,8)); "
        "bad = [m for m in ('torchvision', 'triton', 'torch._dynamo') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
