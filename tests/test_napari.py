"""psr_napari: geometry derived by hand, data against psr.upscale plane by plane, the widget, the manifest.

Viewer tests need a display (CI runs pytest under ``xvfb-run -a``) and skip without one; the
widget tests on a plain ``ViewerModel`` fall back to Qt's offscreen platform.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("napari")
pytest.importorskip("magicgui")
pytest.importorskip("npe2")

# A Mesa GL context (any napari viewer, shown or not) followed by ``import triton`` in the same
# process segfaults (two LLVMs). Test modules collected after this one import torchvision, which
# imports triton, after this module's viewers exist: load triton now, at collection, before any GL
# context. The user-order test below runs in a fresh process where triton is never imported.
try:
    import triton  # noqa: F401
except Exception:  # not installed (or unusable): then it cannot crash anything either
    pass

HAS_DISPLAY = bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
if not HAS_DISPLAY:
    # Widget tests on a ViewerModel need a QApplication but no GL: Qt's offscreen platform is enough.
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
needs_display = pytest.mark.skipif(not HAS_DISPLAY, reason="needs an X display (run under xvfb-run -a)")

import napari.layers  # noqa: E402
from napari.components import ViewerModel  # noqa: E402

import psr  # noqa: E402
from psr_napari import MAX_DISPLAY_SIZE, upscale_layer, upscaled_geometry  # noqa: E402
from tests.conftest import make_tiny_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "psr_napari" / "napari.yaml"


@pytest.fixture(scope="module")
def tiny_x2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("weights") / "tiny-x2.safetensors", scale=2, seed=1)


def _random_rotation(rng: np.random.Generator, n: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(n, n)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _check_overlay(src: napari.layers.Image, out: napari.layers.Image, f: int, rng: np.random.Generator) -> None:
    """Each old pixel is tiled by f x f new ones: new index f*i+k has its centre at old i - 1/2 + (k + 1/2)/f.

    Derived from the pixel-centre convention (pixel i covers [i - 1/2, i + 1/2]), independently of
    the scale/translate formula; checked through both layers' full data-to-world transforms.
    """
    n = src.ndim
    shape = src.data.shape[:n] if not src.multiscale else src.data[0].shape[:n]
    for _ in range(12):
        old_idx = np.array([rng.integers(0, s) for s in shape], dtype=float)
        k = rng.integers(0, f, size=2)
        new_idx = old_idx.copy()
        new_idx[-2:] = f * old_idx[-2:] + k
        old_pos = old_idx.copy()
        old_pos[-2:] = old_idx[-2:] - 0.5 + (k + 0.5) / f
        np.testing.assert_allclose(out.data_to_world(new_idx), src.data_to_world(old_pos), rtol=0, atol=1e-9)
    # The outer corners of the pixel grids coincide: the result covers exactly the same area.
    lo_old, hi_old = np.full(n, -0.5), np.array(shape, dtype=float) - 0.5
    lo_new, hi_new = lo_old.copy(), hi_old.copy()
    hi_new[-2:] = f * np.array(shape[-2:]) - 0.5
    np.testing.assert_allclose(out.data_to_world(lo_new), src.data_to_world(lo_old), atol=1e-9)
    np.testing.assert_allclose(out.data_to_world(hi_new), src.data_to_world(hi_old), atol=1e-9)


# --------------------------------------------------------------------------------------------
# upscale_layer, no Qt


def test_gray_uint16_scale_translate(rng: np.random.Generator, tiny_model: Path) -> None:
    data = rng.integers(300, 4000, size=(23, 31)).astype(np.uint16)
    s, t = np.array([0.3, 0.7]), np.array([5.0, -2.0])
    src = napari.layers.Image(
        data,
        name="cells",
        scale=s,
        translate=t,
        colormap="magma",
        contrast_limits=(350, 3100),
        gamma=0.7,
        blending="additive",
        opacity=0.6,
        units=("um", "um"),
        axis_labels=("y", "x"),
        metadata={"keep": "out"},
    )
    calls: list[tuple[int, int]] = []
    out = upscale_layer(src, 4, model=tiny_model, tile=16, progress=lambda d, n: calls.append((d, n)))
    assert out.data.dtype == np.uint16 and out.data.shape == (92, 124)
    expected = psr.upscale(data, 4, model=tiny_model, channel_axis=None, tile=16)
    np.testing.assert_array_equal(out.data, expected)
    assert np.ptp(out.data.astype(float)) > 1000  # a real image came out, not a constant
    # The formula for a layer with only scale and translate ...
    np.testing.assert_allclose(out.scale, s / 4)
    np.testing.assert_allclose(out.translate, t - s * 3 / 8)
    # ... agrees with pixel centres derived by hand.
    _check_overlay(src, out, 4, rng)
    assert out.name == "cells x4" and not out.rgb
    assert out.colormap.name == "magma"
    np.testing.assert_allclose(out.contrast_limits, (350, 3100))
    assert out.gamma == pytest.approx(0.7) and out.opacity == pytest.approx(0.6)
    assert str(out.blending) == "additive"
    assert [str(u) for u in out.units] == [str(u) for u in src.units] and tuple(out.axis_labels) == ("y", "x")
    # The source's metadata is carried over (it still describes the data), psr's added beside it.
    assert out.metadata["keep"] == "out" and "psr" not in src.metadata
    meta = out.metadata["psr"]
    assert meta["version"] == psr.__version__ and meta["model"] == str(tiny_model)
    assert meta["scale"] == 4 and meta["tile"] == 16 and meta["match_histogram"] is False
    assert meta["source_layer"] == "cells" and meta["upscaled_axes"] == [0, 1]
    assert calls == [(i, 4) for i in range(1, 5)]  # 2 x 2 tiles of 16 px
    assert meta["precision"] == "float32"
    # bfloat16 goes through to psr.upscale (same result as calling it directly) and is recorded.
    fast = upscale_layer(src, 4, model=tiny_model, tile=16, precision="bfloat16")
    direct = psr.upscale(data, 4, model=tiny_model, channel_axis=None, tile=16, precision="bfloat16")
    np.testing.assert_array_equal(fast.data, direct)
    assert fast.metadata["psr"]["precision"] == "bfloat16" and not np.array_equal(fast.data, out.data)


@pytest.mark.filterwarnings("ignore:Non-orthogonal slicing")  # napari's display caveat, not ours
@pytest.mark.parametrize("f", [2, 3, 4])
def test_rotate_shear_affine_3d(rng: np.random.Generator, f: int) -> None:
    data = rng.random((3, 11, 14)).astype(np.float32)
    affine = np.eye(4)
    affine[:3, :3] = _random_rotation(rng, 3) @ np.diag(rng.uniform(0.5, 2.0, 3))
    affine[:3, 3] = rng.normal(size=3) * 10
    src = napari.layers.Image(
        data,
        scale=rng.uniform(0.2, 3.0, 3),
        translate=rng.normal(size=3) * 5,
        rotate=_random_rotation(rng, 3),
        shear=rng.uniform(-0.4, 0.4, 3),
        affine=affine,
    )
    out = upscale_layer(src, f, model="bicubic")
    assert out.data.shape == (3, 11 * f, 14 * f)
    _check_overlay(src, out, f, rng)
    np.testing.assert_allclose(out.rotate, src.rotate, atol=1e-12)
    np.testing.assert_allclose(out.shear, src.shear, atol=1e-12)
    np.testing.assert_allclose(out.affine.affine_matrix, src.affine.affine_matrix, atol=1e-12)
    # Non-upscaled axes keep their scale.
    assert out.scale[0] == pytest.approx(src.scale[0])


def test_upscaled_geometry_matches_formula_without_rotation(rng: np.random.Generator) -> None:
    src = napari.layers.Image(np.zeros((2, 5, 6, 7)), scale=rng.uniform(0.1, 2, 4), translate=rng.normal(size=4))
    g = upscaled_geometry(src, 8)
    np.testing.assert_allclose(g["scale"], src.scale * [1, 1, 1 / 8, 1 / 8])
    np.testing.assert_allclose(g["translate"], src.translate - src.scale * [0, 0, 7 / 16, 7 / 16])


def test_stack_slice_by_slice(rng: np.random.Generator, tiny_x2: Path) -> None:
    data = rng.random((2, 3, 13, 17)).astype(np.float32)
    data[..., 0, 0], data[..., 1, 1] = 0.0, 1.0  # every plane spans [0, 1]: its own normalisation = the stack's
    src = napari.layers.Image(data, scale=(4.0, 2.0, 0.5, 0.5))
    calls: list[tuple[int, int]] = []
    out = upscale_layer(src, 2, model=tiny_x2, normalize=None, progress=lambda d, n: calls.append((d, n)))
    assert out.data.shape == (2, 3, 26, 34) and out.data.dtype == np.float32
    for t in range(2):
        for z in range(3):
            plane = psr.upscale(data[t, z], 2, model=tiny_x2, normalize=None)
            np.testing.assert_allclose(out.data[t, z], plane, rtol=0, atol=2e-6)
    assert calls[-1] == (6, 6)
    np.testing.assert_allclose(out.scale, (4.0, 2.0, 0.25, 0.25))
    np.testing.assert_allclose(out.translate, (0, 0, -0.125, -0.125))


@pytest.mark.parametrize("shape", [(19, 26, 3), (2, 13, 17, 4)])
def test_rgb_layer(rng: np.random.Generator, tiny_x2: Path, shape: tuple[int, ...]) -> None:
    data = rng.integers(0, 256, size=shape, dtype=np.uint8)
    src = napari.layers.Image(data, rgb=True, scale=[1.5] * (len(shape) - 1), translate=[3.0] * (len(shape) - 1))
    out = upscale_layer(src, 2, model=tiny_x2)
    assert out.rgb and out.data.dtype == np.uint8
    assert out.data.shape == (*shape[:-3], shape[-3] * 2, shape[-2] * 2, shape[-1])
    planes = data.reshape(-1, *shape[-3:])
    for i, plane in enumerate(planes):
        np.testing.assert_array_equal(
            out.data.reshape(-1, *out.data.shape[-3:])[i], psr.upscale(plane, 2, model=tiny_x2)
        )
    _check_overlay(src, out, 2, rng)
    np.testing.assert_allclose(out.contrast_limits, src.contrast_limits)


def test_multiscale_uses_highest_resolution(rng: np.random.Generator) -> None:
    base = rng.integers(0, 1000, size=(40, 36)).astype(np.uint16)
    src = napari.layers.Image([base, base[::2, ::2]], multiscale=True, scale=(0.5, 0.25))
    out = upscale_layer(src, 2, model="bicubic")
    assert not out.multiscale and out.data.shape == (80, 72)
    np.testing.assert_array_equal(out.data, psr.upscale(base, 2, model="bicubic", channel_axis=None))
    _check_overlay(src, out, 2, rng)


def test_bad_input(rng: np.random.Generator, tiny_model: Path) -> None:
    img = napari.layers.Image(rng.random((9, 9)))
    with pytest.raises(TypeError, match="layer"):
        upscale_layer(napari.layers.Labels(np.zeros((9, 9), dtype=np.uint8)), 2, model="bicubic")
    for bad in (1, 9, 2.5, True, "4"):
        with pytest.raises(ValueError, match="scale"):
            upscale_layer(img, bad, model="bicubic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tile"):
        upscale_layer(img, 2, model="bicubic", tile=4)
    with pytest.raises(ValueError, match="upscales by 4"):
        upscale_layer(img, 2, model=tiny_model)
    with pytest.raises(ValueError, match="device"):
        upscale_layer(img, 2, model="bicubic", device="gpu0")
    with pytest.raises(ValueError, match="precision"):
        upscale_layer(img, 2, model="bicubic", precision="half")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            upscale_layer(img, 2, model="bicubic", device="cuda")
    if "x4-pixel" not in psr.list_models():
        with pytest.raises(ValueError, match="x4-pixel"):
            upscale_layer(img, 4)


def test_too_large_output_warns(rng: np.random.Generator) -> None:
    src = napari.layers.Image(rng.integers(0, 255, size=(2, MAX_DISPLAY_SIZE // 4 + 1), dtype=np.uint8))
    with pytest.warns(UserWarning, match="larger|more than napari"):
        out = upscale_layer(src, 4, model="bicubic")
    assert out.data.shape == (8, MAX_DISPLAY_SIZE + 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        upscale_layer(napari.layers.Image(np.ones((4, 4), np.uint8)), 4, model="bicubic")


def test_output_larger_than_memory_is_refused_when_planning(
    qtbot, monkeypatch: pytest.MonkeyPatch, notes: dict[str, list[str]]
) -> None:  # type: ignore[no-untyped-def]
    """A layer whose result cannot fit in memory is refused when planned (the widget's note says
    so before Upscale is clicked), before any job would load the whole (here lazy) layer."""
    import dask.array as da

    import psr.api
    from psr_napari._layer import plan_upscale
    from psr_napari._style import plan_stylize

    monkeypatch.setattr(psr.api, "_physical_memory", lambda: 8 * 2**30)
    huge = da.zeros(
        (60000, 60000), dtype=np.uint16, chunks=4096
    )  # 6.7 GiB in; psr.upscale counts 4 bytes an output value
    layer = napari.layers.Image(huge, contrast_limits=(0, 1))
    with pytest.raises(ValueError, match=r"need 60\.3 GiB, more than this machine's 8\.0 GiB"):
        plan_upscale(layer, 2, model="bicubic")
    with pytest.raises(ValueError, match="more than this machine's"):
        plan_stylize(layer, "starry_night")
    assert plan_upscale(napari.layers.Image(da.zeros((4000, 4000), np.uint16)), 8, model="bicubic").scale == 8
    # Never accepted here and then refused by psr.upscale after loading the layer (its own estimate).
    with pytest.raises(ValueError, match="more than this machine's"):
        plan_upscale(napari.layers.Image(da.zeros((10000, 10000), np.uint8)), 8, model="bicubic")
    with pytest.raises(ValueError, match="more than this machine's"):
        psr.upscale(np.zeros((10000, 10000), np.uint8), 8, model="bicubic")
    viewer = ViewerModel()
    viewer.add_layer(layer)
    w = _make_widget(qtbot, viewer, scale=2, model="bicubic")
    assert "more than this machine's" in w._note.value
    w._run.native.click()
    assert w._worker is None and len(viewer.layers) == 1


def test_progress_can_cancel(rng: np.random.Generator) -> None:
    src = napari.layers.Image(rng.random((5, 40, 40)))

    def stop(done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        upscale_layer(src, 2, model="bicubic", tile=16, progress=stop)


# --------------------------------------------------------------------------------------------
# manifest and samples


def test_manifest_valid() -> None:
    from npe2 import PluginManifest

    mf = PluginManifest.from_file(MANIFEST)
    mf.validate_imports()
    assert [w.display_name for w in mf.contributions.widgets] == ["Upscale", "Stylize"]
    assert {s.key for s in mf.contributions.sample_data} == {"nuclei", "chelsea"}
    # Installed: the distribution's napari.manifest entry point resolves to this manifest.
    assert PluginManifest.from_distribution("psr").name == "psr"
    res = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", str(MANIFEST), "--imports"], capture_output=True, text=True
    )
    assert res.returncode == 0 and "valid" in res.stdout, res.stdout + res.stderr


def test_samples(shared_dir: Path) -> None:
    import tifffile

    from psr_napari import _sample_data

    [(data, meta, kind)] = _sample_data.nuclei()
    assert kind == "image" and data.dtype == np.uint16 and data.shape == (160, 160)
    full = tifffile.imread(shared_dir / "data" / "microscopy" / "stardist_DSB2018" / "img2d.tif")
    np.testing.assert_array_equal(data, full[256:416, 0:160])
    assert "CC0" in meta["metadata"]["credit"]
    assert "CC0" in (_sample_data.SAMPLES_DIR / "CREDITS.md").read_text()
    [(photo, pmeta, _)] = _sample_data.chelsea()
    assert photo.shape == (300, 451, 3) and pmeta["rgb"]


# --------------------------------------------------------------------------------------------
# the widget on a ViewerModel (Qt widgets, no GL canvas)


@pytest.fixture
def notes(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Capture napari notifications (the widget imports these functions when it calls them)."""
    import napari.utils.notifications as nt

    seen: dict[str, list[str]] = {"error": [], "warning": [], "info": []}
    for kind in seen:
        monkeypatch.setattr(nt, f"show_{kind}", lambda msg, kind=kind: seen[kind].append(str(msg)))
    return seen


def _make_widget(qtbot, viewer, **values):  # type: ignore[no-untyped-def]
    from psr_napari._widget import UpscaleWidget

    w = UpscaleWidget(viewer)
    qtbot.addWidget(w.native)
    for k, v in values.items():
        getattr(w, f"_{k}").value = v
    return w


def test_widget_runs_in_thread(qtbot, rng: np.random.Generator, notes: dict[str, list[str]]) -> None:  # type: ignore[no-untyped-def]
    viewer = ViewerModel()
    data = rng.integers(0, 5000, size=(2, 45, 50)).astype(np.uint16)
    viewer.add_image(data, name="stack", scale=(1.0, 0.2, 0.2))
    w = _make_widget(qtbot, viewer, scale=2, model="bicubic", tile=32)
    assert w._layer.value is viewer.layers["stack"]
    assert "output: 90 x 100 px, 2 planes" in w._note.value
    w._run.native.click()  # a real click, through the button's signal
    qtbot.waitUntil(lambda: w._worker is None and len(viewer.layers) == 2, timeout=60_000)
    out = viewer.layers["stack x2"]
    np.testing.assert_array_equal(out.data, psr.upscale(data, 2, model="bicubic", channel_axis=None, tile=32))
    np.testing.assert_allclose(out.scale, (1.0, 0.1, 0.1))
    assert w._progress.value == w._progress.max == 2 * 4
    assert notes["error"] == [] and "added 'stack x2'" in w._status.value
    assert w._run.enabled and not w._cancel.enabled


def test_widget_cancel_and_errors(qtbot, rng: np.random.Generator, notes: dict[str, list[str]]) -> None:  # type: ignore[no-untyped-def]
    viewer = ViewerModel()
    viewer.add_image(rng.random((40, 256, 256)).astype(np.float32), name="big")
    w = _make_widget(qtbot, viewer, scale=4, model="bicubic", tile=32)
    w._run.native.click()
    assert w._cancel.enabled and not w._run.enabled
    w._cancel.native.click()
    qtbot.waitUntil(lambda: w._worker is None, timeout=60_000)
    assert len(viewer.layers) == 1 and w._status.value == "cancelled"
    assert w._progress.value < 40 * 64 and notes["error"] == []
    # The same through the cancel button of napari's activity dock (its progress object).
    w._run.native.click()
    w._pbar.cancel()
    qtbot.waitUntil(lambda: w._worker is None, timeout=60_000)
    assert len(viewer.layers) == 1 and w._status.value == "cancelled"

    # psr refuses boolean images: a notification and a status line, no traceback, no layer.
    viewer.add_image(np.zeros((20, 20), dtype=bool), name="mask")
    w._layer.value = viewer.layers["mask"]
    w._run.native.click()
    qtbot.waitUntil(lambda: w._worker is None, timeout=60_000)
    assert len(viewer.layers) == 2
    assert len(notes["error"]) == 1 and "dtype" in notes["error"][0] and w._status.value.startswith("error")


def test_widget_warns_before_too_large(qtbot, rng: np.random.Generator, notes: dict[str, list[str]]) -> None:  # type: ignore[no-untyped-def]
    viewer = ViewerModel()
    viewer.add_image(rng.integers(0, 255, size=(3, MAX_DISPLAY_SIZE // 4 + 1), dtype=np.uint8), name="wide")
    w = _make_widget(qtbot, viewer, scale=4, model="bicubic")
    assert "larger than napari can display" in w._note.value
    w._run.native.click()
    assert w._worker is None and len(notes["warning"]) == 1 and w._run.text == "Upscale anyway"
    w._run.native.click()
    qtbot.waitUntil(lambda: w._worker is None and len(viewer.layers) == 2, timeout=60_000)
    assert viewer.layers[1].data.shape == (12, MAX_DISPLAY_SIZE + 4)


def test_widget_model_list(qtbot, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from psr_napari import _widget

    fake = {
        "x4-perceptual": {"scale": 4, "loss": "perceptual"},
        "x4-pixel": {"scale": 4, "loss": "pixel"},
        "x8-pixel": {"scale": 8, "loss": "pixel"},
    }
    monkeypatch.setattr(_widget, "_shipped_models", lambda: dict(fake))
    viewer = ViewerModel()
    w = _make_widget(qtbot, viewer)
    assert set(w._model.choices) == {"x4-perceptual", "x4-pixel", "bicubic"} and w._model.value == "x4-pixel"
    assert "invents" not in w._note.value and "no image layer" in w._note.value
    w._model.value = "x4-perceptual"
    perceptual = [line for line in w._note.value.splitlines() if "invents plausible detail" in line]
    assert len(perceptual) == 1
    w._scale.value = 8
    assert set(w._model.choices) == {"x8-pixel", "bicubic"} and w._model.value == "x8-pixel"
    w._scale.value = 3
    assert w._model.choices == ("bicubic",)
    # The layer list follows the viewer; a widget opened before any image takes the first one.
    assert w._layer.value is None
    viewer.add_image(np.zeros((5, 5)), name="a")
    assert w._layer.value is viewer.layers["a"]
    viewer.add_labels(np.zeros((5, 5), dtype=np.uint8), name="lab")
    assert [c for c in w._layer.choices if c is not None] == [viewer.layers["a"]]
    # With a non-image layer active, a new widget picks the topmost image layer.
    viewer.add_image(np.zeros((5, 5)), name="b")
    viewer.layers.selection.active = viewer.layers["lab"]
    assert _make_widget(qtbot, viewer)._layer.value is viewer.layers["b"]


def test_widget_scale_change_keeps_the_kind_of_model(qtbot, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """A new scale keeps the model's kind where it exists there (pixel, perceptual, bicubic), else
    falls back to the pixel-loss model, never to whatever the list holds first."""
    from psr_napari import _widget

    fake = {f"x{s}-{k}": {"scale": s, "loss": k} for s in (2, 4, 8) for k in ("perceptual", "pixel")}
    del fake["x2-perceptual"]
    monkeypatch.setattr(_widget, "_shipped_models", lambda: dict(fake))
    w = _make_widget(qtbot, ViewerModel())
    assert w._model.value == "x4-pixel"
    for scale, want in ((8, "x8-pixel"), (4, "x4-pixel"), (6, "bicubic"), (4, "x4-pixel")):
        w._scale.value = scale
        assert w._model.value == want, scale
    w._model.value = "x4-perceptual"
    for scale, want in ((8, "x8-perceptual"), (4, "x4-perceptual"), (2, "x2-pixel")):
        w._scale.value = scale
        assert w._model.value == want, scale
    w._model.value = "bicubic"
    w._scale.value = 8
    assert w._model.value == "bicubic"


# --------------------------------------------------------------------------------------------
# real viewers (GL canvas): need a display


@needs_display
def test_widget_docked_from_manifest(make_napari_viewer, rng: np.random.Generator) -> None:  # type: ignore[no-untyped-def]
    viewer = make_napari_viewer(show=True)
    viewer.open_sample("psr", "nuclei")
    src = viewer.layers[0]
    src.scale = (0.33, 0.33)
    dock, w = viewer.window.add_plugin_dock_widget("psr", "Upscale")
    assert dock.name == "Upscale (psr)"  # napari appends the plugin name
    assert type(w).__name__ == "UpscaleWidget" and w._layer.value is src
    w._model.value = "bicubic"
    w._scale.value = 4
    w._run.native.click()
    w.wait(60)
    assert len(viewer.layers) == 2
    out = viewer.layers["nuclei (DSB2018) x4"]
    assert out.data.shape == (640, 640) and out.data.dtype == np.uint16
    _check_overlay(src, out, 4, rng)


USER_ORDER = textwrap.dedent(
    """
    import sys
    import numpy as np
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)  # the GL context exists from here on
    viewer.add_image(np.random.default_rng(0).random((40, 50)).astype(np.float32), name="img", scale=(2, 2))
    for _ in range(10):
        QApplication.processEvents()
    _, w = viewer.window.add_plugin_dock_widget("psr", "Upscale")  # imports psr_napari now
    w._model.value = "bicubic"
    w._scale.value = 4
    w._run.native.click()
    w.wait(120)
    out = viewer.layers["img x4"]
    assert out.data.shape == (160, 200), out.data.shape
    assert np.allclose(out.scale, 0.5) and np.allclose(out.translate, -0.75)
    bad = sorted(m for m in ("triton", "torchvision", "torch._dynamo") if m in sys.modules)
    assert not bad, f"imported {bad} in a process with a GL canvas"
    import psr
    out2 = psr.upscale(viewer.layers["img"].data, 4, model="bicubic", channel_axis=None)
    assert np.array_equal(out.data, out2)
    viewer.close()
    print("USER-ORDER-OK")
    """
)


@needs_display
def test_user_order_no_triton_fresh_process() -> None:
    """Viewer and layer first, plugin second, in a fresh process: no triton, no crash."""
    res = subprocess.run([sys.executable, "-c", USER_ORDER], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0 and "USER-ORDER-OK" in res.stdout, (
        f"rc={res.returncode}\nstdout:\n{res.stdout[-3000:]}\nstderr:\n{res.stderr[-3000:]}"
    )


def test_core_never_imports_qt() -> None:
    code = (
        "import sys, numpy as np, psr, psr_napari;"
        "psr.upscale(np.ones((8, 8), np.float32), 2, model='bicubic', normalize=None);"
        "bad = [m for m in ('PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'qtpy', 'napari', 'triton', 'torchvision') "
        "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr


CLOSE_MID_RUN = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from napari.components import ViewerModel
    from qtpy.QtWidgets import QApplication
    from psr_napari._widget import UpscaleWidget
    from psr_napari._style_widget import StylizeWidget

    app = QApplication.instance() or QApplication(sys.argv)
    for cls, kw in ((UpscaleWidget, {"_scale": 4, "_model": "bicubic", "_tile": 32}), (StylizeWidget, {"_tile": 64})):
        viewer = ViewerModel()
        viewer.add_image(np.random.default_rng(0).random((60, 256, 256)).astype(np.float32), name="big")
        w = cls(viewer)
        for k, v in kw.items():
            getattr(w, k).value = v
        w._run.native.click()
        end = time.monotonic() + 60
        while w._progress.value < 2 and time.monotonic() < end:  # a couple of tiles done
            app.processEvents(); time.sleep(0.005)
        assert w._worker is not None, "the job ended before the widget could be closed"
        steps = w._job.steps
        w.native.close()
        w.native.deleteLater()  # what closing the viewer does to its dock widgets
        app.sendPostedEvents(None, 52)  # QEvent.DeferredDelete
        while w._worker is not None and time.monotonic() < end:  # late signals reach a dead widget
            app.processEvents(); time.sleep(0.005)
        assert w._worker is None, "the job did not stop"
        assert w._cancel_event.is_set() and len(viewer.layers) == 1, steps
        for _ in range(20):
            app.processEvents(); time.sleep(0.005)
    print("closed cleanly")
    """
)


def test_widget_closed_mid_run_stops_the_job_without_crashing() -> None:
    """PyQt6 aborts the process on an exception in a slot: a progress report, result or finish
    signal reaching a widget deleted with its viewer crashed a script (SIGABRT). Now the job is
    cancelled at the next tile and the late signals are ignored. A fresh process: a crash must
    fail this test, not end the test run."""
    env = {**os.environ, "QT_QPA_PLATFORM": os.environ.get("QT_QPA_PLATFORM", "offscreen")}
    res = subprocess.run(
        [sys.executable, "-c", CLOSE_MID_RUN], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env
    )
    assert res.returncode == 0 and "closed cleanly" in res.stdout, (res.returncode, res.stdout, res.stderr[-3000:])
