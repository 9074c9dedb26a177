"""Training: exact resume, crash-safe checkpoints, DDP on gloo, validation, export."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from psr import train
from psr.losses import resolve_vgg_weights
from psr.models import SRConfig, SRNet
from psr.resize import imresize

REPO = Path(__file__).resolve().parent.parent
HAVE_VGG = resolve_vgg_weights() is not None
needs_vgg = pytest.mark.skipif(not HAVE_VGG, reason="no local VGG-16 weights")


def write_images(folder: Path, sizes: list[tuple[int, int]], rng: np.random.Generator) -> Path:
    """Smooth random RGB PNGs (bicubic-enlarged noise) of the given (h, w) sizes."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, (h, w) in enumerate(sizes):
        small = rng.integers(0, 256, (max(2, h // 3), max(2, w // 3), 3), dtype=np.uint8)
        Image.fromarray(small).resize((w, h), Image.BICUBIC).save(folder / f"im{i:02d}.png")
    return folder


@pytest.fixture
def data_dir(tmp_path: Path, rng: np.random.Generator) -> Path:
    return write_images(tmp_path / "train", [(48, 60), (56, 44), (40, 72), (64, 52), (45, 45), (50, 66)], rng)


TINY = ["--channels", "8", "--blocks", "1", "--patch", "24", "--batch-size", "2", "--scale", "4", "--n-val", "2"]
TINY += ["--val-crop", "40", "--quiet", "--threads", "1"]


def parse(*argv: str | Path) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    train.add_arguments(p)
    return p.parse_args([str(a) for a in argv])


def initial_state(cfg: SRConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """The weights psr.train starts from for ``--seed seed``."""
    torch.manual_seed(seed)
    return SRNet(cfg).state_dict()


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        elif isinstance(a[k], dict):
            assert_same_state(a[k], b[k])
        elif isinstance(a[k], (list, tuple)):
            assert len(a[k]) == len(b[k])
            for x, y in zip(a[k], b[k], strict=True):
                assert_same_state({"v": x}, {"v": y})
        else:
            assert a[k] == b[k], k


# ---------------------------------------------------------------------------------------------
# resume


@pytest.mark.parametrize("loss", ["pixel", pytest.param("perceptual", marks=needs_vgg)])
def test_resume_is_bit_exact(tmp_path: Path, data_dir: Path, loss: str) -> None:
    common = [*TINY, "--data", data_dir, "--loss", loss, "--iterations", "6", "--lr-decay-at", "0.5"]
    common += ["--val-every", "2", "--checkpoint-every", "2", "--degradation", "blur_range:0.5:1.5"]
    if loss == "perceptual":
        common += ["--tv-weight", "1e3", "--pixel-weight", "1e4"]
    full = train.main(parse(*common, "--out", tmp_path / "full", "--workers", "0"))
    part = train.main(parse(*common, "--out", tmp_path / "split", "--workers", "0", "--stop-at", "3"))
    assert part["iteration"] == 3 and part["stopped_early"]
    assert train.load_checkpoint(tmp_path / "split" / "checkpoint.pt")["iteration"] == 3
    # The resumed half uses data workers: batches do not depend on them.
    rest = train.main(parse(*common, "--out", tmp_path / "split", "--workers", "2", "--resume"))
    assert full["iteration"] == rest["iteration"] == 6 and not rest["stopped_early"]
    assert full["it_per_s"] > 0 and rest["it_per_s"] > 0

    a = train.load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    b = train.load_checkpoint(tmp_path / "split" / "checkpoint.pt")
    assert_same_state(a["model"], b["model"])
    assert_same_state(a["optimizer"], b["optimizer"])
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert a["best"] == b["best"] and a["best"]["metric"] == ("psnr" if loss == "pixel" else "relu2_2")
    # The model really trained (weights moved), and the loss logs agree iteration by iteration.
    init = initial_state(SRConfig(scale=4, channels=8, num_blocks=1))
    assert float((a["model"]["head.weight"] - init["head.weight"]).abs().sum()) > 1e-3
    la = {r["it"]: r["loss"] for r in read_log(tmp_path / "full") if "loss" in r}
    lb = {r["it"]: r["loss"] for r in read_log(tmp_path / "split") if "loss" in r}
    assert la == lb and sorted(la) == [1, 2, 3, 4, 5, 6]
    if loss == "perceptual":  # the loss is the sum of its logged terms, the per-pixel one included
        for r in (r for r in read_log(tmp_path / "full") if "loss" in r):
            assert r["pixel"] > 0 and r["loss"] == pytest.approx(r["feature"] + r["pixel"] + r["tv"], rel=1e-5)
    vals = [r for r in read_log(tmp_path / "full") if "val_psnr" in r]
    assert [r["it"] for r in vals] == [2, 4, 6]
    assert all(math.isfinite(r["val_psnr"]) and 0 < r["val_ssim"] <= 1 for r in vals)
    if HAVE_VGG:
        assert all(r["val_relu2_2"] > 0 for r in vals)
    assert (tmp_path / "full" / "best.safetensors").is_file()


def test_resume_refuses_other_model_and_missing_checkpoint(tmp_path: Path, data_dir: Path) -> None:
    args = [*TINY, "--data", data_dir, "--iterations", "2", "--out", tmp_path / "r", "--workers", "0"]
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train.main(parse(*args, "--resume"))
    train.main(parse(*args))
    with pytest.raises(ValueError, match="config"):
        train.main(parse(*[a if a != "8" else "16" for a in args], "--resume", "--iterations", "3"))


def test_legacy_checkpoint_resumes_and_exports(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkpoint in the first format (string args, generator state, best = {psnr, iteration})."""
    out = tmp_path / "legacy"
    cfg = SRConfig(scale=4, channels=8, num_blocks=1)
    torch.manual_seed(0)
    model = SRNet(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    old_args = {"data": str(data_dir), "scale": "4", "loss": "pixel", "iterations": "4", "batch_size": "2"}
    old_args.update({"patch": "24", "lr": "0.001", "lr_decay_at": "[]", "degradation": "bicubic", "n_val": "2"})
    old_args.update({"val_crop": "40", "global_skip": "True", "name": "x4-legacy", "seed": "0"})
    gen = torch.Generator().manual_seed(0)
    train.save_checkpoint(
        out / "checkpoint.pt",
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "rng": {"data": gen.get_state(), "torch": torch.get_rng_state(), "python": __import__("random").getstate()},
            "iteration": 2,
            "elapsed": 1.5,
            "best": {"psnr": -math.inf, "iteration": 0},
            "config": cfg.to_dict(),
            "args": json.dumps({k: str(v) for k, v in old_args.items()}),
        },
    )
    parsed = train.checkpoint_args(train.load_checkpoint(out / "checkpoint.pt"))
    assert parsed["scale"] == 4 and parsed["lr_decay_at"] == [] and parsed["global_skip"] is True
    same = ["--degradation", "bicubic", "--name", "x4-legacy"]  # resumed runs take their flags anew
    s = train.main(parse(*TINY, "--data", data_dir, "--iterations", 4, "--out", out, "--resume", "--workers", 0, *same))
    assert "psr train: warning: --resume: checkpoint from the sequential sampler" in capsys.readouterr().err
    assert s["iteration"] == 4 and s["best"]["iteration"] == 4  # validated at the end
    p = argparse.ArgumentParser()
    train.add_export_arguments(p)
    meta = train.export_main(
        p.parse_args(
            [str(out), "-o", str(tmp_path / "x.safetensors"), "--which", "last", "--set5", str(tmp_path / "none")]
        )
    )
    assert meta["name"] == "x4-legacy" and meta["iterations"] == 4 and meta["degradation"] == "bicubic"


# ---------------------------------------------------------------------------------------------
# crash safety


def test_checkpoint_survives_sigkill_during_write(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "psr.train", *map(str, TINY), "--data", str(data_dir), "--out", str(out)]
    cmd += ["--iterations", "100000", "--checkpoint-every", "1", "--val-every", "100000", "--workers", "0"]
    env = dict(os.environ, PSR_TEST_CHECKPOINT_DELAY="0.5")
    ckpt, tmp = out / "checkpoint.pt", out / "checkpoint.pt.tmp"
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not ckpt.exists():  # first checkpoint complete
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "no checkpoint written"
            time.sleep(0.01)
        while not tmp.exists():  # the next write has started and pauses half-way
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    st = train.load_checkpoint(ckpt)  # the previous checkpoint is intact
    k = st["iteration"]
    assert k >= 1
    assert tmp.exists()
    with pytest.raises(ValueError, match="corrupt"):
        train.load_checkpoint(tmp)  # the torn write is not mistaken for a checkpoint
    s = train.main(parse(*TINY, "--data", data_dir, "--out", out, "--resume", "--iterations", k + 1, "--workers", "0"))
    assert s["iteration"] == k + 1
    assert train.load_checkpoint(ckpt)["iteration"] == k + 1 and not tmp.exists()


def test_load_checkpoint_rejects_garbage(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt"):
        train.load_checkpoint(bad)
    train.save_checkpoint(tmp_path / "partial.pt", {"model": {}})
    with pytest.raises(ValueError, match="lacks"):
        train.load_checkpoint(tmp_path / "partial.pt")


# ---------------------------------------------------------------------------------------------
# DDP


def test_ddp_two_cpu_processes_match_one(tmp_path: Path, data_dir: Path) -> None:
    """torchrun, gloo: 2 processes x 1 sample equal 1 process x 2 samples (no BN, so no batch stats)."""
    args = [*map(str, TINY), "--data", str(data_dir), "--iterations", "3", "--norm", "none", "--workers", "0"]
    args += ["--val-every", "100", "--checkpoint-every", "100"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "psr.train", *args, "--out", str(tmp_path / "ddp")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    single = train.main(parse(*args, "--out", tmp_path / "one"))
    a = train.load_checkpoint(tmp_path / "ddp" / "checkpoint.pt")
    b = train.load_checkpoint(tmp_path / "one" / "checkpoint.pt")
    assert a["iteration"] == b["iteration"] == single["iteration"] == 3
    init = initial_state(SRConfig(scale=4, channels=8, num_blocks=1, norm="none"))
    moved = 0.0
    # DDP averages per-process gradients, one process averages the batch: the same sum in another
    # order. Where the two samples' gradients nearly cancel, that rounding is a large part of the
    # tiny gradient, and Adam (each step ~lr whatever the gradient's size) carries it into the
    # weights: seen up to 2.1e-6 after 3 steps at lr 1e-3. Allow 1% of one step, not more.
    for k in b["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-4, atol=1e-5)
        moved += float((b["model"][k] - init[k]).abs().sum())
    assert moved > 1e-3
    log = read_log(tmp_path / "ddp")
    assert log[0]["processes"] == 2 and [r["it"] for r in log if "loss" in r] == [1, 2, 3]


# ---------------------------------------------------------------------------------------------
# validation and export


def _random_model(scale: int = 4) -> SRNet:
    torch.manual_seed(3)
    m = SRNet(SRConfig(scale=scale, channels=8, num_blocks=1))
    torch.nn.init.normal_(m.tail.weight, std=0.02)
    return m.eval()


def _y(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.float64)
    return 16 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255


def test_validate_initial_model_is_bicubic(tmp_path: Path, rng: np.random.Generator) -> None:
    """A global-skip net with a zero head is MATLAB bicubic: validation must score bicubic's PSNR/SSIM."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    s = 4
    folder = write_images(tmp_path / "val", [(36, 44), (52, 40)], rng)
    imgs = [torch.from_numpy(np.asarray(Image.open(f))).permute(2, 0, 1).contiguous() for f in sorted(folder.iterdir())]
    net = SRNet(SRConfig(scale=s, channels=8, num_blocks=1))
    torch.nn.init.zeros_(net.tail.weight)  # residual exactly zero: the output is the bicubic skip
    torch.nn.init.zeros_(net.tail.bias)
    got = train.validate(net, imgs, s, torch.device("cpu"))
    ps, ss = [], []
    for hr in imgs:
        lr = imresize(hr, 1 / s)
        up = imresize(lr.double() / 255, float(s)).clamp(0, 1)
        sr = torch.round(up * 255).permute(1, 2, 0).numpy()
        ys, yh = _y(sr)[s:-s, s:-s], _y(hr.permute(1, 2, 0).numpy())[s:-s, s:-s]
        ps.append(peak_signal_noise_ratio(yh, ys, data_range=255))
        ss.append(
            structural_similarity(yh, ys, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
        )
    # The net computes bicubic in float32, the reference in float64: a few pixels round the other way.
    assert got["psnr"] == pytest.approx(np.mean(ps), abs=2e-3)
    assert got["ssim"] == pytest.approx(np.mean(ss), abs=5e-4)


@needs_vgg
def test_validate_agrees_with_evaluate(tmp_path: Path, rng: np.random.Generator) -> None:
    """Training validation and psr.evaluate (through psr.upscale) give the same scores."""
    from psr.evaluate import evaluate
    from psr.losses import feature_distance

    folder = write_images(tmp_path / "val", [(40, 48), (44, 36)], rng)
    files = sorted(folder.glob("*.png"))
    imgs = [torch.from_numpy(np.asarray(Image.open(f).convert("RGB"))).permute(2, 0, 1).contiguous() for f in files]
    model = _random_model()
    vgg = train._feature_net(None, allow_download=False)
    got = train.validate(model, imgs, 4, torch.device("cpu"), vgg)
    ref = evaluate(files, 4, model, match_histogram=False, device="cpu")
    assert got["psnr"] == pytest.approx(ref["psnr"], abs=1e-3)
    assert got["ssim"] == pytest.approx(ref["ssim"], abs=1e-4)
    assert got["relu2_2"] == pytest.approx(ref["perceptual"], rel=1e-3)
    # and the feature distance agrees with psr.losses' own evaluation function
    with torch.no_grad():
        sr = torch.round(model(imresize(imgs[0], 0.25).float()[None] / 255).clamp(0, 1) * 255)[0]
    d = feature_distance(sr[:, 4:-4, 4:-4] / 255, imgs[0][:, 4:-4, 4:-4].float() / 255)
    per_image = train.validate(model, imgs[:1], 4, torch.device("cpu"), vgg)["relu2_2"]
    assert per_image == pytest.approx(d, rel=1e-6)


def test_scale3_trains_exports_and_upscales(tmp_path: Path, data_dir: Path, rng: np.random.Generator) -> None:
    """x3 end to end: 3x LR patches, a one-stage x3 network, export, psr.upscale and psr.evaluate."""
    import psr
    from psr.evaluate import evaluate

    out = tmp_path / "x3"
    tiny = list(TINY)
    tiny[tiny.index("--scale") + 1] = "3"
    train.main(parse(*tiny, "--data", data_dir, "--out", out, "--iterations", "2", "--workers", "0",
                     "--degradation", "bicubic"))  # fmt: skip
    p = argparse.ArgumentParser()
    train.add_export_arguments(p)
    dst = tmp_path / "x3.safetensors"
    set5 = write_images(tmp_path / "set5", [(45, 39)], rng)
    meta = train.export_main(p.parse_args([str(out), "-o", str(dst), "--set5", str(set5), "--device", "cpu"]))
    assert psr.read_metadata(dst)["scale"] == 3 and meta["patch"] == 24
    img = rng.integers(0, 256, (7, 10, 3), dtype=np.uint8)
    assert psr.upscale(img, 3, model=dst).shape == (21, 30, 3)
    with pytest.raises(ValueError, match="upscales by 3"):
        psr.upscale(img, 4, model=dst)
    assert evaluate(set5, 3, dst, device="cpu", perceptual=False)["psnr"] == pytest.approx(meta["set5_psnr"], abs=1e-3)


def test_export_writes_shipped_format(tmp_path: Path, data_dir: Path, rng: np.random.Generator) -> None:
    import psr
    from psr.evaluate import evaluate

    out = tmp_path / "run"
    train.main(
        parse(*TINY, "--data", data_dir, "--out", out, "--iterations", "4", "--val-every", "2", "--workers", "0",
              "--degradation", "bicubic", "--name", "x4-tiny")
    )  # fmt: skip
    set5 = write_images(tmp_path / "set5", [(44, 40), (36, 52)], rng)
    p = argparse.ArgumentParser()
    train.add_export_arguments(p)
    dst = tmp_path / "exported.safetensors"
    meta = train.export_main(p.parse_args([str(out), "-o", str(dst), "--set5", str(set5), "--device", "cpu"]))
    stored = psr.read_metadata(dst)
    assert stored["match_histogram"] == meta["match_histogram"]
    required = ["config", "scale", "loss", "degradation", "training_data", "iterations", "patch", "wall_time_s"]
    required += ["val_psnr", "val_ssim", "set5_psnr", "set5_ssim", "match_histogram", "name"]
    for key in required:
        assert key in stored, key
    assert stored["scale"] == 4 and stored["loss"] == "pixel" and stored["degradation"] == "bicubic"
    assert stored["name"] == "x4-tiny" and stored["patch"] == 24 and stored["training_data"] == str(data_dir)
    assert stored["iterations"] in (2, 4)  # the best validation iteration
    # The default is the better setting on validation PSNR (pixel loss).
    with_m, without = stored["val_with_matching"]["psnr"], stored["val_without_matching"]["psnr"]
    assert stored["match_histogram"] == (with_m > without)
    assert stored["val_psnr"] == pytest.approx(max(with_m, without), abs=1e-3)
    # The exported model loads by path and reproduces its recorded Set5 score through psr.evaluate.
    model = psr.load_model(dst)
    r = evaluate(set5, 4, dst, device="cpu", perceptual=False)
    assert r["match_histogram"] == stored["match_histogram"]
    assert r["psnr"] == pytest.approx(stored["set5_psnr"], abs=1e-3)
    assert model.scale == 4 and model.cfg.channels == 8
    with pytest.raises(ValueError, match="safetensors"):
        train.export_main(p.parse_args([str(out), "-o", str(tmp_path / "x.pt")]))
    with pytest.raises(FileNotFoundError):
        train.export_main(p.parse_args([str(tmp_path / "nope"), "-o", str(dst)]))
    # An existing output (e.g. a shipped weights file) is replaced only with --overwrite.
    before = dst.read_bytes()
    with pytest.raises(ValueError, match="pass --overwrite"):
        train.export_main(p.parse_args([str(out), "-o", str(dst), "--set5", "none", "--which", "last"]))
    assert dst.read_bytes() == before
    train.export_main(p.parse_args([str(out), "-o", str(dst), "--set5", "none", "--which", "last", "--overwrite"]))
    assert dst.read_bytes() != before
    (tmp_path / "folder.safetensors").mkdir()
    with pytest.raises(ValueError, match="is a folder"):  # --overwrite cannot replace a folder
        train.export_main(p.parse_args([str(out), "-o", str(tmp_path / "folder.safetensors"), "--overwrite"]))


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        (["--patch", "30"], "multiple"),
        (["--lr", "0"], "--lr"),
        (["--iterations", "0"], "--iterations"),
        (["--lr-decay-at", "1.5"], "lr-decay-at"),
        (["--tv-weight", "-1"], "tv-weight"),
        (["--pixel-weight", "-1"], "pixel-weight"),
        (["--pixel-weight", "1"], "adds a per-pixel term to --loss perceptual"),  # with --loss pixel
        (["--device", "tpu"], "--device"),
        (["--degradation", "gauss"], "degradation"),
        (["--workers", "-1"], "--workers"),
        (["--max-minutes", "nan"], "--max-minutes"),
        (["--max-minutes", "-1"], "--max-minutes"),
        (["--val-crop", "10"], r"--val-crop \(10\) must leave at least 11 pixels.*--val-crop >= 20"),
        (["--val-crop", "19"], r"--val-crop >= 20"),
        (["--scale", "8", "--patch", "8", "--batch-size", "1"], r"--patch \(8\) must be at least 2 x --scale"),
    ],
)
def test_bad_arguments(tmp_path: Path, data_dir: Path, flags: list[str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        train.main(parse(*TINY, "--data", data_dir, "--out", tmp_path / "bad", "--iterations", "1", *flags))


def test_no_validation_split_trains_without_validating(tmp_path: Path, data_dir: Path) -> None:
    """--n-val 0: no NaN scores and no validation records; export takes the last checkpoint."""
    import warnings

    out = tmp_path / "noval"
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # "Mean of empty slice"
        r = train.main(parse(*TINY, "--data", data_dir, "--out", out, "--iterations", "2", "--n-val", "0",
                             "--val-every", "1", "--val-crop", "8", "--workers", "0"))  # fmt: skip
    assert r["iteration"] == 2
    assert not any("val_psnr" in rec for rec in read_log(out)) and not (out / "best.safetensors").exists()
    # Exported from the last checkpoint with the user's histogram setting (nothing to choose it on).
    import psr.weights as psr_weights

    p = argparse.ArgumentParser()
    train.add_export_arguments(p)
    dst = tmp_path / "noval.safetensors"
    with pytest.raises(ValueError, match="pass --match-histogram on or off"):
        train.export_main(p.parse_args([str(out), "-o", str(dst), "--set5", "none"]))
    meta = train.export_main(p.parse_args([str(out), "-o", str(dst), "--set5", "none", "--match-histogram", "off"]))
    assert meta["match_histogram"] is False and "val_psnr" not in meta and meta["val_images"] == 0
    assert psr_weights.load_model(dst).scale == 4


def test_resume_with_another_validation_set_warns_and_restarts_the_best(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    base = [*TINY, "--out", out, "--workers", "0", "--val-every", "1", "--checkpoint-every", "1", "--iterations", "3"]
    train.main(parse(*base, "--data", data_dir, "--stop-at", "1"))
    other = tmp_path / "other"
    other.mkdir()
    for f in sorted(data_dir.iterdir())[:4]:
        (other / f.name).write_bytes(f.read_bytes())
    capsys.readouterr()
    train.main(parse(*base, "--data", other, "--resume", "--stop-at", "2"))
    err = capsys.readouterr().err
    assert "--resume: --data was" in err and "the validation set changed" in err
    assert train.load_checkpoint(out / "checkpoint.pt")["best"]["iteration"] == 2
    train.main(parse(*base, "--data", other, "--resume", "--iterations", "4"))  # extending a run: no notice
    err = capsys.readouterr().err
    assert "--resume:" not in err


def test_resume_keeps_a_best_file_newer_than_the_checkpoint(tmp_path: Path, data_dir: Path) -> None:
    """Stopped after validation wrote best.safetensors but before the checkpoint: the resumed run
    takes the file's record, so a worse later validation does not replace the better file."""
    import psr.weights as W

    out = tmp_path / "run"
    base = [*TINY, "--data", data_dir, "--out", out, "--workers", "0", "--val-every", "1"]
    train.main(parse(*base, "--iterations", "4", "--checkpoint-every", "2", "--stop-at", "2"))
    meta = W.read_metadata(out / "best.safetensors")
    meta.update(iterations=3, val_psnr=99.0)  # as if iteration 3 had validated at 99 dB, then a kill
    model = W.load_model(out / "best.safetensors", fuse=False)
    W.save_weights(out / "best.safetensors", model, {k: v for k, v in meta.items() if k not in ("format", "config")})
    before = (out / "best.safetensors").read_bytes()
    train.main(parse(*base, "--iterations", "4", "--checkpoint-every", "2", "--resume"))
    assert (out / "best.safetensors").read_bytes() == before
    assert train.load_checkpoint(out / "checkpoint.pt")["best"]["value"] == 99.0
    # A best file scored on another validation set (another --data, --n-val or --val-crop) does not count.
    best = {"metric": "psnr", "value": 20.0, "iteration": 0}
    base_meta = {"training_data": meta["training_data"], "n_val_images": meta["n_val_images"]}
    path = out / "best.safetensors"
    assert train._newer_best_file(path, best, base_meta, meta["val_crop"])["value"] == 99.0
    assert train._newer_best_file(path, best, {**base_meta, "training_data": "/elsewhere"}, meta["val_crop"]) == best
    assert train._newer_best_file(path, best, {**base_meta, "n_val_images": 7}, meta["val_crop"]) == best
    assert train._newer_best_file(path, best, base_meta, meta["val_crop"] + 4) == best


def test_too_small_validation_image_is_refused_before_training(tmp_path: Path) -> None:
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(data / "a.png")  # training
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(data / "b.png")  # validation
    args = parse(*TINY, "--data", data, "--out", tmp_path / "run", "--iterations", "2", "--n-val", "1")
    with pytest.raises(ValueError, match=r"validation image .*b\.png.*too small"):
        train.main(args)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_learning_rate_schedule() -> None:
    a = parse("--lr", "0.002", "--iterations", "100", "--lr-decay-at", "0.5", "0.8", "--warmup", "4")
    got = [train._lr_at(a, it) for it in (0, 1, 3, 10, 49, 50, 79, 80, 99)]
    want = [0.0005, 0.001, 0.002, 0.002, 0.002, 0.0002, 0.0002, 0.00002, 0.00002]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert train._lr_at(parse("--lr", "0.001"), 0) == 0.001  # the paper's: constant, no warm-up


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("loss", ["pixel", pytest.param("perceptual", marks=needs_vgg)])
def test_cuda_bf16_training_resumes(tmp_path: Path, data_dir: Path, loss: str) -> None:
    """GPU path (bf16 autocast, channels_last): runs, checkpoints on the CPU side, resumes."""
    args = [*TINY, "--data", data_dir, "--out", tmp_path / "gpu", "--device", "cuda", "--loss", loss]
    args += ["--iterations", "4", "--val-every", "2", "--checkpoint-every", "2", "--workers", "1"]
    half = train.main(parse(*args, "--stop-at", "2"))
    assert half["iteration"] == 2
    full = train.main(parse(*args, "--resume"))
    assert full["iteration"] == 4
    st = train.load_checkpoint(tmp_path / "gpu" / "checkpoint.pt")
    SRNet(SRConfig.from_dict(st["config"])).load_state_dict(st["model"])  # plain layout, loads on the CPU
    assert all(torch.isfinite(v).all() for v in st["model"].values() if v.is_floating_point())
    assert math.isfinite(full["best"]["value"])


def test_init_from_starts_from_given_weights_with_fresh_optimiser(tmp_path: Path, data_dir: Path) -> None:
    """Fine-tuning (e.g. perceptual from pixel): the weights of another run, iteration 0, new Adam state."""
    import psr

    base = [*TINY, "--data", data_dir, "--workers", "0", "--val-every", "2", "--checkpoint-every", "2"]
    train.main(parse(*base, "--out", tmp_path / "src", "--iterations", "2", "--degradation", "bicubic"))
    src = train.load_checkpoint(tmp_path / "src" / "checkpoint.pt")
    for init in (tmp_path / "src" / "checkpoint.pt", tmp_path / "src" / "best.safetensors"):
        out = tmp_path / f"ft-{init.suffix[1:]}"
        # --stop-at 1 with lr ~0: the weights after one step are the source's (and not the seed's).
        r = train.main(parse(*base, "--out", out, "--iterations", "4", "--stop-at", "1", "--lr", "1e-30",
                             "--init-from", init))  # fmt: skip
        assert r["iteration"] == 1
        st = train.load_checkpoint(out / "checkpoint.pt")
        for k, v in src["model"].items():
            if v.is_floating_point() and "running" not in k:
                torch.testing.assert_close(st["model"][k], v, rtol=0, atol=1e-20)
        assert not torch.equal(
            st["model"]["head.weight"], initial_state(SRConfig(scale=4, channels=8, num_blocks=1))["head.weight"]
        )
        # A fresh optimiser: one step of state, not the source run's two.
        assert all(int(s["step"]) == 1 for s in st["optimizer"]["state"].values())
        # Resuming keeps the provenance in the exported metadata.
        train.main(parse(*base, "--out", out, "--iterations", "2", "--resume", "--lr", "1e-30"))
        p = argparse.ArgumentParser()
        train.add_export_arguments(p)
        dst = tmp_path / f"{out.name}.safetensors"
        train.export_main(p.parse_args([str(out), "-o", str(dst), "--which", "last", "--set5", "none"]))
        assert str(init) in psr.read_metadata(dst)["initialised_from"]
    with pytest.raises(ValueError, match="init-from"):
        train.main(parse(*[a if a != "8" else "16" for a in base], "--out", tmp_path / "bad", "--iterations", "1",
                         "--init-from", tmp_path / "src" / "checkpoint.pt"))  # fmt: skip


def test_init_from_may_change_only_the_resize_of_resize_conv(tmp_path: Path, data_dir: Path) -> None:
    """``resize_conv`` and ``bilinear_conv`` share their parameters, so one may start from the other;
    any other change of the network (here deconv -> resize-conv) is refused."""
    base = [*TINY, "--data", data_dir, "--workers", "0", "--val-every", "2", "--checkpoint-every", "2"]
    train.main(parse(*base, "--out", tmp_path / "rc", "--iterations", "1", "--upsample", "resize_conv"))
    src = train.load_checkpoint(tmp_path / "rc" / "checkpoint.pt")
    r = train.main(parse(*base, "--out", tmp_path / "bl", "--iterations", "2", "--stop-at", "1", "--lr", "1e-30",
                         "--upsample", "bilinear_conv", "--init-from", tmp_path / "rc" / "checkpoint.pt"))  # fmt: skip
    assert r["iteration"] == 1
    st = train.load_checkpoint(tmp_path / "bl" / "checkpoint.pt")
    assert st["config"]["upsample"] == "bilinear_conv"
    torch.testing.assert_close(st["model"]["head.weight"], src["model"]["head.weight"], rtol=0, atol=1e-20)
    with pytest.raises(ValueError, match="init-from.*has config"):
        train.main(parse(*base, "--out", tmp_path / "dc", "--iterations", "1", "--upsample", "deconv",
                         "--init-from", tmp_path / "rc" / "checkpoint.pt"))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# the run folder: an earlier run is never overwritten by accident


def test_earlier_run_is_refused_without_resume_or_overwrite(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from psr.cli import main as cli_main

    out = tmp_path / "run"
    base = [*TINY, "--workers", "0", "--val-every", "2", "--checkpoint-every", "2", "--out", out]
    train.main(parse(*base, "--data", data_dir, "--iterations", "2"))
    before = {name: (out / name).read_bytes() for name in train.RUN_FILES}
    # Refused before any set-up: a --data that does not exist is not even looked at.
    for extra in ([], ["--init-from", out / "checkpoint.pt"]):
        with pytest.raises(ValueError, match="holds an earlier run") as exc:
            train.main(parse(*base, "--data", tmp_path / "absent", "--iterations", "4", *extra))
        assert str(out) in str(exc.value) and "--resume" in str(exc.value) and "--overwrite" in str(exc.value)
    assert {name: (out / name).read_bytes() for name in train.RUN_FILES} == before
    capsys.readouterr()
    argv = ["train", *map(str, base), "--data", str(data_dir), "--iterations", "4"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("psr train: error: --out") and "--overwrite" in err and len(err.splitlines()) == 1
    with pytest.raises(ValueError, match="pass one of them"):
        train.main(parse(*base, "--data", data_dir, "--iterations", "4", "--resume", "--overwrite"))
    # Any file of a run counts, but a log alone (a run that stopped before its first checkpoint,
    # with nothing to resume or export) is replaced, with a warning.
    lone = tmp_path / "lone-log"
    lone.mkdir()
    (lone / "log.jsonl").write_text('{"event": "start"}\n')
    capsys.readouterr()
    assert train.main(parse(*TINY, "--data", data_dir, "--out", lone, "--iterations", "1"))["iteration"] == 1
    assert "holds only the log of a run that wrote no checkpoint" in capsys.readouterr().err
    assert [r.get("event") for r in read_log(lone)].count("start") == 1
    for name in ("checkpoint.pt", "best.safetensors"):
        lone = tmp_path / f"lone-{name}"
        lone.mkdir()
        (lone / name).write_bytes(b"")
        with pytest.raises(ValueError, match=name.replace(".", r"\.")) as exc:
            train.main(parse(*TINY, "--data", data_dir, "--out", lone, "--iterations", "1"))
        # --resume is offered only where there is a checkpoint to continue from.
        assert ("--resume" in str(exc.value)) == (name == "checkpoint.pt"), str(exc.value)
    # --overwrite starts afresh: --init-from inside OUT is read first, then the old files go.
    src = train.load_checkpoint(out / "checkpoint.pt")
    r = train.main(parse(*base, "--data", data_dir, "--iterations", "3", "--stop-at", "1", "--val-every", "100",
                         "--lr", "1e-30", "--init-from", out / "checkpoint.pt", "--overwrite"))  # fmt: skip
    assert r["iteration"] == 1
    st = train.load_checkpoint(out / "checkpoint.pt")
    assert st["iteration"] == 1
    for k, v in src["model"].items():
        if v.is_floating_point() and "running" not in k:
            torch.testing.assert_close(st["model"][k], v, rtol=0, atol=1e-20)
    assert not (out / "best.safetensors").exists()  # the earlier run's best is gone, none validated yet
    log = read_log(out)
    assert log[0]["event"] == "start" and [r["it"] for r in log if "loss" in r] == [1]
    assert "--overwrite: deleted" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Ctrl-C


def _interrupt(monkeypatch: pytest.MonkeyPatch, iteration: int, how: str) -> None:
    """Ctrl-C during ``iteration`` (1-based) of the next training run.

    ``raise``: KeyboardInterrupt raised at its start (between iterations, as an interrupt that did not
    come through psr's SIGINT handler); ``signal``: SIGINT in the middle of its forward pass;
    ``signal2``: SIGINT twice there (stop at once).
    """
    real_lr_at, real_job = train._lr_at, train._sr_job
    now = {"it": -1}

    def lr_at(args: argparse.Namespace, it: int) -> float:
        now["it"] = it
        if how == "raise" and it + 1 == iteration:
            raise KeyboardInterrupt
        return real_lr_at(args, it)

    def sr_job(*a: object, **k: object) -> object:
        job = real_job(*a, **k)
        losses = job.losses

        def interrupted(net: torch.nn.Module, batch: list[torch.Tensor]) -> dict:
            if how == "signal" and now["it"] + 1 == iteration:
                signal.raise_signal(signal.SIGINT)
            if how == "signal2" and now["it"] + 1 == iteration:
                net(batch[0])  # BN statistics move: the state is now mid-iteration
                signal.raise_signal(signal.SIGINT)
                signal.raise_signal(signal.SIGINT)
            return losses(net, batch)

        job.losses = interrupted
        return job

    monkeypatch.setattr(train, "_lr_at", lr_at)
    monkeypatch.setattr(train, "_sr_job", sr_job)


def test_ctrl_c_saves_a_checkpoint_that_resumes_bit_exactly(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from psr.cli import main as cli_main

    # Python's own Ctrl-C handler, as in a terminal: a process started in the background by a
    # non-interactive shell (CI runners can be) inherits SIGINT ignored, and then psr leaves it be.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _ctrl_c_cases(tmp_path, data_dir, monkeypatch, capsys, cli_main)
    finally:
        signal.signal(signal.SIGINT, previous)


def _ctrl_c_cases(
    tmp_path: Path,
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    cli_main: Callable[[list[str]], int],
) -> None:
    common = [*TINY, "--data", data_dir, "--iterations", "6", "--lr-decay-at", "0.5", "--workers", "0"]
    common += ["--val-every", "2", "--checkpoint-every", "4", "--degradation", "blur_range:0.5:1.5"]
    full = train.main(parse(*common, "--out", tmp_path / "full"))
    out = tmp_path / "split"
    ckpt = out / "checkpoint.pt"
    capsys.readouterr()

    # 1. A KeyboardInterrupt between iterations: checkpoint at the last completed one.
    with monkeypatch.context() as m:
        _interrupt(m, 4, "raise")
        with pytest.raises(train.TrainingInterrupted) as exc:
            train.main(parse(*common, "--out", out))
    assert isinstance(exc.value, KeyboardInterrupt) and exc.value.code == 130
    assert exc.value.summary["iteration"] == 3 and exc.value.summary["interrupted"]
    assert train.load_checkpoint(ckpt)["iteration"] == 3 and not (out / "checkpoint.pt.tmp").exists()
    err = capsys.readouterr().err
    assert "psr train: interrupted at iteration 3; checkpoint saved; continue with --resume" in err
    assert "Traceback" not in err and signal.getsignal(signal.SIGINT) is signal.default_int_handler

    # 2. SIGINT mid-iteration through the CLI: iteration 5 finishes, is saved, exit status 130.
    with monkeypatch.context() as m:
        _interrupt(m, 5, "signal")
        with pytest.raises(SystemExit) as exc:
            cli_main(["train", *map(str, common), "--out", str(out), "--resume"])
    assert exc.value.code == 130
    assert train.load_checkpoint(ckpt)["iteration"] == 5
    err = capsys.readouterr().err
    assert "finishing iteration 5" in err and "interrupted at iteration 5; checkpoint saved" in err

    # 3. Twice (stop at once) mid-iteration: no torn checkpoint, the previous one is kept.
    before = ckpt.read_bytes()
    with monkeypatch.context() as m:
        _interrupt(m, 6, "signal2")
        with pytest.raises(train.TrainingInterrupted):
            train.main(parse(*common, "--out", out, "--resume"))
    assert ckpt.read_bytes() == before and not (out / "checkpoint.pt.tmp").exists()
    assert "the one at iteration 5 is kept" in capsys.readouterr().err

    # Resumed to the end: the same run as the uninterrupted one, bit for bit.
    rest = train.main(parse(*common, "--out", out, "--resume"))
    assert full["iteration"] == rest["iteration"] == 6
    a, b = train.load_checkpoint(tmp_path / "full" / "checkpoint.pt"), train.load_checkpoint(ckpt)
    assert_same_state(a["model"], b["model"])
    assert_same_state(a["optimizer"], b["optimizer"])
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert a["best"] == b["best"]
    la = {r["it"]: r["loss"] for r in read_log(tmp_path / "full") if "loss" in r}
    lb = {r["it"]: r["loss"] for r in read_log(out) if "loss" in r}
    assert la == lb and sorted(lb) == [1, 2, 3, 4, 5, 6]


def test_interrupted_checkpoint_write_keeps_the_previous_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoint.pt"
    train.save_checkpoint(path, {"model": {}, "optimizer": {}, "rng": {}, "iteration": 1, "config": {}})
    before = path.read_bytes()

    def ctrl_c(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", ctrl_c)  # a second Ctrl-C while the checkpoint is written
    with pytest.raises(KeyboardInterrupt):
        train.save_checkpoint(path, {"model": {}, "optimizer": {}, "rng": {}, "iteration": 2, "config": {}})
    assert path.read_bytes() == before and not (tmp_path / "checkpoint.pt.tmp").exists()


# ---------------------------------------------------------------------------------------------
# paths, notices, --help


def test_paths_are_recorded_absolute_and_export_runs_from_anywhere(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from psr.cli import main as cli_main

    monkeypatch.chdir(tmp_path)
    flags = [*TINY, "--workers", "0", "--iterations", "2", "--val-every", "2", "--name", "x4-rel"]
    train.main(parse(*flags, "--data", "train", "--out", "runs/train"))  # relative, as typed
    run = tmp_path / "runs" / "train"
    st = train.load_checkpoint(run / "checkpoint.pt")
    assert train.checkpoint_args(st)["data"] == str(data_dir.resolve())
    assert psr_metadata(run / "best.safetensors")["training_data"] == str(data_dir.resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    export = ["export", str(run), "--set5", "none", "--device", "cpu"]
    assert cli_main([*export, "-o", "a.safetensors"]) == 0
    # An older run recorded --data as given: found from the folder it was trained in (its --out).
    old_args = json.loads(st["args"])
    old_args.update(data="train", out="runs/train")
    train.save_checkpoint(run / "checkpoint.pt", {**st, "args": json.dumps(old_args)})
    capsys.readouterr()
    assert cli_main([*export, "--which", "last", "-o", "b.safetensors"]) == 0
    err = capsys.readouterr().err
    assert "psr export: warning: training data folder 'train' is not found from the current folder" in err
    assert str(data_dir.resolve()) in err
    # Nowhere to be found: the error says to pass --data.
    old_args.update(data="gone")
    train.save_checkpoint(run / "checkpoint.pt", {**st, "args": json.dumps(old_args)})
    assert cli_main([*export, "--which", "last", "-o", "c.safetensors"]) == 2
    err = capsys.readouterr().err
    assert "'gone'" in err and "pass --data FOLDER" in err
    assert cli_main([*export, "--which", "last", "-o", "c.safetensors", "--data", str(data_dir)]) == 0
    # A style path recorded relatively compares equal to the same file made absolute on --resume.
    assert train._same_arg("style", "../train/im00.png", data_dir / "im00.png")
    assert not train._same_arg("style", "../train/im01.png", data_dir / "im00.png")


def psr_metadata(path: Path) -> dict:
    from psr.weights import read_metadata

    return read_metadata(path)


def test_resume_notices_are_one_line_on_stderr(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import warnings

    args = [*TINY, "--data", data_dir, "--out", tmp_path / "r", "--workers", "0", "--val-every", "100"]
    train.main(parse(*args, "--iterations", "1", "--degradation", "bicubic"))
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warnings.warn (with its source line) any more
        train.main(parse(*args, "--iterations", "2", "--resume", "--degradation", "paper", "--seed", "0"))
    err = capsys.readouterr().err.splitlines()
    # Without local VGG-16 weights (no ../shared) validation says so too, once, on its own line.
    no_vgg = "psr train: warning: no local VGG-16 weights: the relu2_2 distance is not measured in validation"
    if resolve_vgg_weights() is None:
        assert err.count(no_vgg) == 1
        err.remove(no_vgg)
    assert err == ["psr train: warning: --resume: --degradation was 'bicubic', now 'paper'"]


def test_help_shows_defaults(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from psr.cli import main as cli_main

    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit):
        cli_main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for want in ("--out OUT run folder (checkpoints, logs) (default: runs/train)", "(default: 200000)",
                 "HR patch size (a multiple of --scale) (default: 288)", "for validation (default: 20)",
                 "iterations between checkpoints (default: 500)", "iterations between validations (default: 500)",
                 "(default: 0.001)", "(default: $PSR_VGG_WEIGHTS, else $PSR_SHARED/weights/vgg16_caffe_relu4_3",
                 "--overwrite", "status 130"):  # fmt: skip
        assert want in text, want
    with pytest.raises(SystemExit):
        cli_main(["export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for want in ("(default: best)", "(default: auto)", "(default: cpu)", "(default: $PSR_VGG_WEIGHTS"):
        assert want in text, want


def test_export_refuses_histogram_matching_for_a_style_run(tmp_path: Path) -> None:
    from psr.models import StyleConfig, StyleNet
    from psr.weights import save_weights

    run = tmp_path / "style-run"
    torch.manual_seed(0)
    save_weights(run / "best.safetensors", StyleNet(StyleConfig(channels=4, num_blocks=1)), {"name": "s"})
    p = argparse.ArgumentParser()
    train.add_export_arguments(p)
    with pytest.raises(ValueError, match="style run; histogram matching"):
        train.export_main(p.parse_args([str(run), "-o", str(tmp_path / "s.safetensors"), "--match-histogram", "on"]))
    assert not (tmp_path / "s.safetensors").exists()


def test_init_from_a_shipped_name_is_not_shadowed_by_a_local_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--init-from x4-pixel`` means the shipped model even where ./x4-pixel exists, as
    ``psr upscale --model x4-pixel`` does; a path spelled with a separator is the local file."""
    from psr.weights import WEIGHTS_DIR

    if not (WEIGHTS_DIR / "x4-pixel.safetensors").is_file():
        pytest.skip("no shipped x4-pixel")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x4-pixel").write_bytes(b"a local file")
    args = parse(*TINY, "--init-from", "x4-pixel")
    train._absolute_paths(args)
    assert args.init_from == "x4-pixel"
    args = parse(*TINY, "--init-from", "./x4-pixel")
    train._absolute_paths(args)
    assert args.init_from == str(tmp_path / "x4-pixel")
