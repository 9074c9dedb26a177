"""Train an SR transformation network (``psr train``) and export a run as shipped weights (``psr export``).

Defaults follow the paper: Adam lr 1e-3, batch 4, 288x288 HR patches, 200k iterations, no weight
decay, the relu2_2 feature loss for ``--loss perceptual``, Gaussian-blur-then-bicubic degradation.

* Data: every sample of every iteration comes from a generator seeded by (seed, iteration, sample)
  (see :mod:`psr.data`), made ahead by ``--workers`` processes; the batches do not depend on the
  number of workers or processes.
* Checkpoints (``OUT/checkpoint.pt``) hold model, optimiser, iteration, wall time, the best
  validation score and every RNG state, written atomically (temp file, fsync, rename). ``--resume``
  continues exactly where a run stopped: bit-exact on the CPU.
* Validation every ``--val-every`` iterations on images held out of the training folder: Y-PSNR,
  SSIM and the relu2_2 feature distance. The best weights (by PSNR for ``pixel``, by relu2_2
  distance for ``perceptual``) are kept in ``OUT/best.safetensors``. Set5 is never used here.
* GPU: bf16 autocast, channels_last, cudnn.benchmark. Several GPUs (or CPU processes, on gloo):
  ``torchrun --nproc-per-node N -m psr.train ...``; ``--batch-size`` is the global batch.
* Run folders: ``--out`` holding an earlier run (checkpoint.pt, log.jsonl or best.safetensors) is
  refused unless ``--resume`` continues it or ``--overwrite`` starts afresh (removing those files).
  Paths (``--data``, ``--style``, ``--init-from``, ``--vgg-weights``) are stored absolute.
* Ctrl-C: the current iteration finishes, a checkpoint is written at it (as ``--stop-at`` does, so
  ``--resume`` continues bit-exactly) and the command exits with status 130 (``train.main`` raises
  :class:`TrainingInterrupted`, a ``SystemExit(130)`` that is also a ``KeyboardInterrupt``). A second
  Ctrl-C stops at once; the last complete checkpoint is kept (writes are atomic).
* ``psr export RUN_DIR -o FILE`` picks the best weights, chooses the default histogram matching on
  the validation split, scores Set5 and writes the shipped-weights format with its metadata.

Style transfer (``--task style --style IMAGE``) trains a :class:`~psr.models.StyleNet` with the same
machinery (per-(seed, iteration, sample) data, atomic checkpoints, exact resume, validation, bf16 on
CUDA, DDP): content images are random square crops of the training images resized to
``--image-size``; the loss is ``content_weight * relu2_2 feature loss + style_weight * Gram loss at
relu1_2, relu2_2, relu3_3, relu4_3 + tv_weight * TV``. ``psr export`` writes such a run as a style
(``task: "style"``) with the Gram check of the validation images in its metadata.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .data import (
    SMALL_IMAGE_RULES,
    Degradation,
    PatchSampler,
    default_shared_dir,
    find_images,
    load_rgb,
    make_loader,
    split_train_val,
)
from .metrics import SSIM_WINDOW, fits_ssim, psnr, rgb_to_y, shave, ssim
from .models import SR_SCALES, SR_UPSAMPLE, SRConfig, SRNet, StyleConfig, StyleNet
from .resize import imresize
from .weights import save_weights

__all__ = [
    "TrainingInterrupted",
    "add_arguments",
    "add_export_arguments",
    "export_main",
    "load_checkpoint",
    "main",
    "save_checkpoint",
    "validate",
]

FEATURE_LAYER = "relu2_2"  # the paper's SR loss layer; also the validation feature distance
STYLE_WEIGHT = 3e-5
STYLE_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")  # the paper's style layers
GRAM_CHECK_LAYERS = ("relu2_2", "relu3_3")  # where shipped styles must move Gram statistics toward the style
# Default Gram-loss weight, chosen by training (benchmarks/RESULTS.md, style transfer). With the Caffe
# VGG (0..255 inputs) and the paper's squared Frobenius norms, a photo's Gram loss to a painting is
# ~1e10 and a relu2_2 feature loss ~1e5. Johnson's released defaults (content 1, style 5 on
# mean-squared Grams, 5 / C^2 per layer here) would be 3e-4 at relu2_2, but the Frobenius form
# weights relu3_3 and relu4_3 4x and 16x more than that code does: at 3e-4 the content was gone after
# 500 iterations (starry_night); at 1e-4 it was faint at 100; 3e-5 keeps it and still stylises.
_CHECKPOINT_DELAY_ENV = "PSR_TEST_CHECKPOINT_DELAY"  # test hook: seconds to pause mid-write


def _show_defaults(p: argparse.ArgumentParser) -> None:
    """Append "(default: X)" to the help of every option of ``p`` that has a default worth showing.

    What ``argparse.ArgumentDefaultsHelpFormatter`` does, without replacing the formatter of a
    parser made elsewhere (``psr train``'s comes from :mod:`psr.cli`). Flags (store_true/false),
    options without a default and help that already says "(default..." are left alone.
    """
    for action in p._actions:
        if not action.help or action.help == argparse.SUPPRESS or "(default" in action.help:
            continue
        if not action.option_strings or action.nargs == 0 or action.default in (None, argparse.SUPPRESS):
            continue
        if isinstance(action.default, (list, tuple)):
            shown = " ".join(map(str, action.default)) or "none"
            action.help += f" (default: {shown})"
        else:
            action.help += " (default: %(default)s)"


def _vgg_default_help(download: bool) -> str:
    """Where the VGG-16 weights come from without --vgg-weights (:func:`psr.losses.resolve_vgg_weights`)."""
    from .losses import vgg_lookup_help

    return vgg_lookup_help(
        "torchvision's IMAGENET1K_V1 download for the losses (validation then skips relu2_2)"
        if download
        else "none: the relu2_2 distance is skipped"
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add ``psr train``'s options to ``p``."""
    shared = default_shared_dir()
    p.add_argument("--task", default="sr", choices=("sr", "style"), help="super-resolution or style transfer")
    g = p.add_argument_group("data")
    g.add_argument("--data", type=Path, default=shared / "data" / "train", help="folder of training images")
    g.add_argument("--scale", type=int, default=4, choices=SR_SCALES, help="upscaling factor")
    g.add_argument("--patch", type=int, default=288, help="HR patch size (a multiple of --scale)")
    g.add_argument(
        "--degradation",
        default="paper",
        help="'paper' (blur 1.0 + bicubic), 'bicubic' or 'blur_range:LO:HI'",
    )
    g.add_argument(
        "--small-images",
        default="skip",
        choices=SMALL_IMAGE_RULES,
        help="images smaller than --patch: leave out, or mirror-pad up to the patch size",
    )
    g.add_argument("--workers", type=int, default=2, help="data worker processes (0: make batches in the main process)")
    g.add_argument("--n-val", type=int, default=20, help="images held out of --data for validation")
    g.add_argument("--val-crop", type=int, default=256, help="centre crop of validation images (HR pixels)")

    g = p.add_argument_group("model")
    g.add_argument("--upsample", default="deconv", choices=SR_UPSAMPLE, help="upsampling layers")
    g.add_argument(
        "--no-global-skip", dest="global_skip", action="store_false", help="the paper's net, no bicubic skip"
    )
    g.add_argument("--channels", type=int, default=64, help="hidden channels (paper: 64)")
    g.add_argument("--blocks", type=int, default=4, help="residual blocks (paper: 4)")
    g.add_argument("--norm", default="batch", choices=("batch", "none"), help="normalisation (paper: batch)")

    g = p.add_argument_group("optimisation")
    g.add_argument("--loss", default="pixel", choices=("pixel", "perceptual"), help="per-pixel MSE or relu2_2 features")
    g.add_argument("--tv-weight", type=float, default=0.0, help="weight of the total-variation regulariser")
    g.add_argument(
        "--pixel-weight",
        type=float,
        default=0.0,
        help="with --loss perceptual: plus this times the per-pixel MSE (images in [0, 1]), which sees the "
        "upsampling layers' periodic grid that relu2_2 features barely do (not in the paper)",
    )
    g.add_argument(
        "--vgg-weights", type=Path, default=None, help=f"VGG-16 weights file (default: {_vgg_default_help(True)})"
    )
    g.add_argument("--iterations", type=int, default=200_000, help="training iterations (paper: 200k)")
    g.add_argument("--batch-size", type=int, default=4, help="global batch (split across DDP processes)")
    g.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    g.add_argument(
        "--warmup",
        type=int,
        default=0,
        help="linear lr warm-up over this many iterations (not in the paper; 0: none). Adam at full lr "
        "throws the near-bicubic start (a residual head scaled to 0.1) far off in the first iterations",
    )
    g.add_argument("--lr-decay-at", type=float, nargs="*", default=[], help="fractions of --iterations where lr *= 0.1")
    g.add_argument("--seed", type=int, default=0, help="seed of the initial weights and of the data")

    g = p.add_argument_group("run")
    g.add_argument("--out", type=Path, default=Path("runs/train"), help="run folder (checkpoints, logs)")
    g.add_argument("--checkpoint-every", type=int, default=500, help="iterations between checkpoints")
    g.add_argument("--val-every", type=int, default=500, help="iterations between validations")
    g.add_argument("--resume", action="store_true", help="continue the run in OUT from OUT/checkpoint.pt")
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in an OUT that holds an earlier run, deleting its checkpoint.pt, log.jsonl and "
        "best.safetensors (without --resume or --overwrite such an OUT is refused)",
    )
    g.add_argument(
        "--init-from",
        default=None,
        help="start from these weights (a shipped name, a .safetensors file or a run's checkpoint.pt) with a "
        "fresh optimiser at iteration 0, e.g. a perceptual run fine-tuned from a pixel model; same config needed",
    )
    g.add_argument("--stop-at", type=int, default=0, help="stop (resumably) after this iteration; 0: run to the end")
    g.add_argument("--max-minutes", type=float, default=0, help="stop (resumably) after this long; 0: no limit")
    g.add_argument("--device", default="auto", help="'auto' (CUDA if available), 'cpu', 'cuda' or 'cuda:N'")
    g.add_argument("--no-amp", dest="amp", action="store_false", help="no bf16 autocast on CUDA")
    g.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    g.add_argument(
        "--name",
        default=None,
        help="model name written into the weights metadata (default: x{scale}-{loss}; styles: the style image's name)",
    )
    g.add_argument("--quiet", action="store_true", help="no progress bar")

    g = p.add_argument_group("style transfer (--task style; --data, --n-val, --val-crop, --tv-weight shared)")
    g.add_argument("--style", type=Path, default=None, help="style image (e.g. ../shared/data/styles/wave.jpg)")
    g.add_argument("--style-size", type=int, default=512, help="longer side of the style image (0: as it is)")
    g.add_argument(
        "--style-weight",
        type=float,
        default=STYLE_WEIGHT,
        help="weight of the Gram loss (squared Frobenius norms, G = F F^T / CHW, Caffe VGG)",
    )
    g.add_argument("--content-weight", type=float, default=1.0, help="weight of the relu2_2 feature loss")
    g.add_argument("--image-size", type=int, default=256, help="content crops are resized to this (paper: 256)")
    g.add_argument("--style-channels", type=int, default=32, help="first-layer width (paper: 32)")
    g.add_argument("--style-blocks", type=int, default=5, help="residual blocks (paper: 5)")
    g.add_argument("--style-norm", default="instance", choices=("instance", "batch"), help="paper: batch")
    g.add_argument("--style-upsample", default="resize_conv", choices=("resize_conv", "deconv"), help="paper: deconv")
    _show_defaults(p)


def _check_args(args: argparse.Namespace) -> None:
    positive = ("iterations", "batch_size", "patch", "checkpoint_every", "val_every", "channels", "val_crop")
    for name in positive:
        v = getattr(args, name)
        if v < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    for name in ("workers", "n_val", "threads", "stop_at", "blocks", "seed", "warmup"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise ValueError(f"--lr must be a positive number, got {args.lr}")
    if not (args.tv_weight >= 0 and math.isfinite(args.tv_weight)):
        raise ValueError(f"--tv-weight must be >= 0, got {args.tv_weight}")
    pixel_weight = getattr(args, "pixel_weight", 0.0)  # older callers' namespaces lack it
    if not (pixel_weight >= 0 and math.isfinite(pixel_weight)):
        raise ValueError(f"--pixel-weight must be >= 0, got {pixel_weight}")
    if pixel_weight > 0 and (getattr(args, "task", "sr") != "sr" or args.loss != "perceptual"):
        raise ValueError("--pixel-weight adds a per-pixel term to --loss perceptual (super-resolution only)")
    if not args.max_minutes >= 0:  # NaN too: it would never stop the run
        raise ValueError(f"--max-minutes must be >= 0, got {args.max_minutes}")
    if any(not 0 < f < 1 for f in args.lr_decay_at):
        raise ValueError(f"--lr-decay-at fractions must lie in (0, 1), got {args.lr_decay_at}")
    if args.patch % args.scale:
        raise ValueError(f"--patch ({args.patch}) must be a multiple of --scale ({args.scale})")
    if getattr(args, "task", "sr") == "sr":
        if args.patch < 2 * args.scale:  # 1x1 LR patches: nothing to learn, and BatchNorm fails at batch 1
            raise ValueError(f"--patch ({args.patch}) must be at least 2 x --scale ({2 * args.scale})")
        # Validation crops are cut to a multiple of the scale, then shaved by it on every side.
        crop = args.val_crop - args.val_crop % args.scale
        if args.n_val > 0 and not fits_ssim(crop, crop, args.scale):
            smallest = -(-(2 * args.scale + SSIM_WINDOW) // args.scale) * args.scale
            raise ValueError(
                f"--val-crop ({args.val_crop}) must leave at least {SSIM_WINDOW} pixels after the {args.scale}-pixel "
                f"shave on each side at --scale {args.scale}: use --val-crop >= {smallest}"
            )


def _warn(message: str, command: str = "train") -> None:
    """A notice for the person at the terminal: one line on stderr, ``psr train: warning: ...``."""
    print(f"psr {command}: warning: {message}", file=sys.stderr, flush=True)


# Options that choose the validation set: a resume that changes one starts the best-so-far afresh.
_VALIDATION_KEYS = ("data", "n_val", "val_crop")

# Files a run writes into --out: their presence means an earlier run is there.
RUN_FILES = ("checkpoint.pt", "log.jsonl", "best.safetensors")
_PATH_ARGS = ("data", "style", "vgg_weights")  # stored absolute, so export works from any folder


def _absolute_paths(args: argparse.Namespace) -> None:
    """Make the path options absolute (resolved), so that the run's recorded args hold from anywhere.

    ``--init-from`` may be a shipped model name: it is made absolute only when it names a file.
    """
    for name in _PATH_ARGS:
        v = getattr(args, name, None)
        if v is not None:
            setattr(args, name, Path(v).expanduser().resolve())
    init = getattr(args, "init_from", None)
    from .weights import _shipped_file

    if init and _shipped_file(init) is not None:
        return  # a shipped name wins over a local file of that name (write ./NAME for the file)
    if init and Path(init).expanduser().is_file():
        args.init_from = str(Path(init).expanduser().resolve())


def _check_out(args: argparse.Namespace) -> None:
    """Refuse to start a new run over an earlier one in ``--out`` (before any expensive set-up)."""
    out = Path(args.out)
    if args.resume and args.overwrite:
        raise ValueError("--resume continues the run in --out and --overwrite starts afresh: pass one of them")
    if args.resume:
        if not (out / "checkpoint.pt").exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {str(out / 'checkpoint.pt')!r}")
        return
    found = [name for name in RUN_FILES if (out / name).exists()]
    if found == ["log.jsonl"] and not args.overwrite:
        # A run that stopped before its first checkpoint (e.g. on an argument found bad only at
        # its first validation) left nothing to resume or export: its log does not block a new run.
        if int(os.environ.get("RANK", "0")) == 0:  # torchrun: every rank checks, one deletes
            _warn(f"--out {str(out)!r} holds only the log of a run that wrote no checkpoint: starting afresh")
            (out / "log.jsonl").unlink(missing_ok=True)
        return
    if found and not args.overwrite:
        fresh = " (--init-from starts a new run at iteration 0)" if getattr(args, "init_from", None) else ""
        resume = "--resume to continue it, " if "checkpoint.pt" in found else ""
        raise ValueError(
            f"--out {str(out)!r} holds an earlier run ({', '.join(found)}){fresh}: pass {resume}"
            "--overwrite to start afresh (deleting it), or another --out"
        )


def _clear_run(out: Path) -> list[str]:
    """Delete the files of an earlier run in ``out`` (--overwrite); returns their names."""
    gone = []
    for name in (*RUN_FILES, "checkpoint.pt.tmp"):
        f = out / name
        if f.is_file() or f.is_symlink():
            f.unlink()
            gone.append(name)
    return gone


# ---------------------------------------------------------------------------------------------
# checkpoints


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` with torch.save to a temp file, fsync, then rename over ``path``.

    A crash or SIGKILL at any point leaves either the previous file or the new one, never a torn
    file; an exception during the write (a second Ctrl-C, a full disk) also removes the temp file.
    ``$PSR_TEST_CHECKPOINT_DELAY`` (seconds, for tests) pauses half-way through the write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getbuffer()
    delay = float(os.environ.get(_CHECKPOINT_DELAY_ENV, "0") or 0)
    try:
        with open(tmp, "wb") as fh:
            half = len(data) // 2
            fh.write(data[:half])
            if delay > 0:
                fh.flush()
                time.sleep(delay)
            fh.write(data[half:])
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint written by :func:`save_checkpoint`; ValueError if it is corrupt or unreadable."""
    try:
        st = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        why = str(exc).strip() or f"{type(exc).__name__} (an empty or truncated file?)"
        raise ValueError(f"checkpoint {str(path)!r} is corrupt or unreadable: {why}") from None
    missing = {"model", "optimizer", "rng", "iteration", "config"} - set(st) if isinstance(st, dict) else {"all keys"}
    if missing:
        raise ValueError(f"checkpoint {str(path)!r} lacks {sorted(missing)}")
    return st


def checkpoint_args(st: dict) -> dict[str, Any]:
    """The training arguments stored in a checkpoint, with the old all-strings form parsed back."""
    raw = st.get("args")
    d = json.loads(raw) if isinstance(raw, str) else dict(raw or {})
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, str):
            try:
                v = json.loads(v)  # "4" -> 4, "[0.75]" -> [0.75], "True" stays a string
            except json.JSONDecodeError:
                v = {"True": True, "False": False, "None": None}.get(v, v)
        out[k] = v
    return out


def _init_weights(model: torch.nn.Module, source: str, task: str) -> str:
    """Load ``source`` (shipped name, weights file or checkpoint) into ``model``; returns a description.

    The configs must be equal: fine-tuning changes the loss, not the network. The one exception is
    the resize of a resize-conv upsampling (``resize_conv`` <-> ``bilinear_conv``): the parameters
    are the same, only the fixed interpolation before each conv differs.
    """
    if str(source).endswith(".pt"):
        st = load_checkpoint(Path(source))
        if st.get("task", "sr") != task:
            raise ValueError(f"--init-from: {source!r} is a {st.get('task', 'sr')!r} run, not a {task!r} run")
        cfg, state, where = st["config"], st["model"], f"{source} (iteration {int(st['iteration'])})"
    else:
        from .weights import load_model, load_style_model

        src = load_style_model(source) if task == "style" else load_model(source, fuse=False)
        cfg, state = src.cfg.to_dict(), src.state_dict()
        where = f"{source} ({src.metadata.get('iterations', '?')} iterations)"  # type: ignore[attr-defined]
    mine = model.cfg.to_dict()  # type: ignore[attr-defined]
    resize = ("resize_conv", "bilinear_conv")
    if cfg.get("upsample") in resize and mine.get("upsample") in resize:
        cfg = {**cfg, "upsample": mine["upsample"]}
    if cfg != mine:
        raise ValueError(f"--init-from: {source!r} has config {cfg}, this run's is {mine}")
    model.load_state_dict(state)
    return where


def _newer_best_file(path: Path, best: dict, meta_base: dict, val_crop: int) -> dict:
    """The best-so-far record, from ``best.safetensors`` where it is newer than the checkpoint's.

    Validation writes the best file when it finds a new best, the checkpoint comes later: a run
    stopped between the two resumes with an older record than its file, and a later, worse
    validation would then replace the better file. Only a file scored on this run's validation
    set counts (same data folder, number of validation images and crop).
    """
    from .weights import read_metadata

    if not path.is_file():
        return best
    try:
        meta = read_metadata(path)
    except ValueError:
        return best
    same_set = all(meta.get(k) == meta_base.get(k) for k in ("training_data", "n_val_images"))
    if not same_set or meta.get("val_crop") != val_crop:
        return best
    it, value = meta.get("iterations"), meta.get(f"val_{best.get('metric')}")
    if isinstance(it, int) and it > int(best.get("iteration", 0)) and isinstance(value, (int, float)):
        scores = {
            k[4:]: float(v)
            for k, v in meta.items()
            if k.startswith("val_") and k != "val_crop" and isinstance(v, float)
        }
        return {**best, **scores, "value": float(value), "iteration": it}
    return best


def _normalise_best(best: dict | None, loss: str) -> dict:
    """Best-so-far record; old checkpoints hold only {'psnr', 'iteration'}."""
    metric = "psnr" if loss == "pixel" else FEATURE_LAYER
    worst = -math.inf if metric == "psnr" else math.inf
    best = dict(best or {})
    if "metric" not in best:
        value = best.get("psnr", -math.inf) if metric == "psnr" else math.inf
        best = {"metric": metric, "value": value, "iteration": best.get("iteration", 0), **best}
    if best["metric"] != metric:
        best = {"metric": metric, "value": worst, "iteration": 0}
    return best


def _better(best: dict, scores: dict) -> bool:
    v = scores.get(best["metric"])
    if v is None or not math.isfinite(v):
        return False
    return v > best["value"] if best["metric"] == "psnr" else v < best["value"]


# ---------------------------------------------------------------------------------------------
# validation and scoring


def _feature_net(args_weights: str | os.PathLike | None, allow_download: bool):
    """A relu2_2 VGGFeatures, or None when no local weights exist and downloading is not allowed."""
    from .losses import VGGFeatures, resolve_vgg_weights

    if resolve_vgg_weights(args_weights) is None and not allow_download:
        _warn("no local VGG-16 weights: the relu2_2 distance is not measured in validation")
        return None
    return VGGFeatures((FEATURE_LAYER,), args_weights)


def _feature_distance(vgg, sr: torch.Tensor, hr: torch.Tensor) -> float:
    with torch.no_grad():
        a = vgg(sr, (FEATURE_LAYER,))[FEATURE_LAYER]
        b = vgg(hr, (FEATURE_LAYER,))[FEATURE_LAYER]
        return float(F.mse_loss(a.double(), b.double()))


@torch.no_grad()
def validate(
    model: torch.nn.Module,
    images: Sequence[torch.Tensor],
    scale: int,
    device: torch.device,
    vgg: torch.nn.Module | None = None,
) -> dict[str, float]:
    """Mean Y-PSNR, SSIM (shave = scale) and relu2_2 distance over ``images``.

    ``images`` are uint8 (3, H, W) HR tensors with H, W multiples of ``scale``; LR is MATLAB
    bicubic rounded to 8 bits and the output is rounded to 8 bits, as in the benchmark protocol.
    The relu2_2 distance (``vgg`` given) compares the rounded output with HR, shaved likewise.
    """
    was_training = model.training
    model.eval()
    p, s, f = [], [], []
    for hr in images:
        lr = imresize(hr, 1.0 / scale)  # uint8 in, uint8 out (rounded), as the benchmark
        x = (lr.float() / 255.0)[None].to(device)
        sr8 = torch.round(model(x).float().clamp(0, 1) * 255.0).cpu()[0]
        ys, yh = rgb_to_y(sr8.permute(1, 2, 0).numpy()), rgb_to_y(hr.permute(1, 2, 0).numpy())
        p.append(psnr(shave(ys, scale), shave(yh, scale), data_range=255))
        s.append(ssim(shave(ys, scale), shave(yh, scale), data_range=255))
        if vgg is not None:
            a = sr8[:, scale:-scale, scale:-scale][None].float().div(255).to(device)
            b = hr[:, scale:-scale, scale:-scale][None].float().div(255).to(device)
            f.append(_feature_distance(vgg, a, b))
    model.train(was_training)
    out = {"psnr": float(np.mean(p)), "ssim": float(np.mean(s))}
    if f:
        out[FEATURE_LAYER] = float(np.mean(f))
    return out


def _centre_crop(img: torch.Tensor, size: int, scale: int) -> torch.Tensor:
    h, w = img.shape[1:]
    ch, cw = min(size, h), min(size, w)
    ch, cw = ch - ch % scale, cw - cw % scale
    y, x = (h - ch) // 2, (w - cw) // 2
    return img[:, y : y + ch, x : x + cw].contiguous()


# ---------------------------------------------------------------------------------------------
# distributed / device


def _dist_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) when not under it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


def _resolve_device(spec: str, local_rank: int, world: int) -> torch.device:
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise ValueError(f"--device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {spec!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {spec}: CUDA is not available")
        if world > 1:
            dev = torch.device("cuda", local_rank)
    elif dev.type != "cpu":
        raise ValueError(f"--device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {spec!r}")
    return dev


# ---------------------------------------------------------------------------------------------
# training


def _lr_at(args: argparse.Namespace, it: int) -> float:
    """Learning rate of (0-based) iteration ``it``: linear warm-up, then x0.1 at each decay point."""
    n_decays = sum(it >= math.floor(f * args.iterations) for f in args.lr_decay_at)
    warm = min(1.0, (it + 1) / args.warmup) if getattr(args, "warmup", 0) else 1.0
    return args.lr * warm * (0.1**n_decays)


def _rng_state(seed: int, device: torch.device) -> dict:
    st = {
        # The data RNG is a function of (seed, iteration, sample): its "state" is the seed.
        "data": {"scheme": "per-sample-seed", "seed": seed},
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
    }
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    return st


def _set_rng_state(st: dict, device: torch.device, lead: bool = True) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate(st["python"])
    if device.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state(st["cuda"], device)
    if isinstance(st.get("data"), torch.Tensor) and lead:
        _warn(
            "--resume: checkpoint from the sequential sampler: resuming with per-iteration seeding "
            "(same patch distribution, different patches than the old code would have drawn)"
        )


def _model_config(args: argparse.Namespace) -> SRConfig:
    return SRConfig(
        scale=args.scale,
        channels=args.channels,
        num_blocks=args.blocks,
        upsample=args.upsample,
        norm=args.norm,
        global_skip=args.global_skip,
    )


def _json_args(args: argparse.Namespace) -> str:
    return json.dumps({k: v for k, v in vars(args).items() if not callable(v)}, default=str, sort_keys=True)


class TrainingInterrupted(SystemExit, KeyboardInterrupt):
    """Raised by :func:`main` when Ctrl-C (SIGINT) stopped training, after the checkpoint was written.

    A ``SystemExit`` with status 130, so ``psr train`` and ``python -m psr.train`` exit with 130 and
    no traceback, and also a ``KeyboardInterrupt``, so code that handles interrupts still sees one.
    ``summary`` is :func:`main`'s summary of the run so far (``"interrupted": True``).
    """

    def __init__(self, summary: dict | None = None) -> None:
        super().__init__(130)
        self.summary = dict(summary or {})


def main(args: argparse.Namespace) -> dict:
    """Run (or resume) a training run; returns a summary dict (rank 0 prints it as JSON).

    Raises :class:`TrainingInterrupted` (exit status 130) after Ctrl-C, once the checkpoint of the
    last completed iteration is written; ``--resume`` continues from it.
    """
    # Namespaces not built by add_arguments (older callers) get the defaults of newer options.
    defaults = {"channels": 64, "blocks": 4, "norm": "batch", "workers": 0, "amp": True, "tv_weight": 0.0}
    defaults.update(pixel_weight=0.0)
    defaults.update(vgg_weights=None, stop_at=0, small_images="skip", warmup=0, overwrite=False, init_from=None)
    for name, default in defaults.items():
        if not hasattr(args, name):
            setattr(args, name, default)
    style = getattr(args, "task", "sr") == "style"
    if style:
        _check_style_args(args)
    _check_args(args)
    _check_out(args)  # before loading data or VGG: an earlier run in --out is refused at once
    _absolute_paths(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    rank, world, local_rank = _dist_env()
    device = _resolve_device(args.device, local_rank, world)
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if args.batch_size % world:
            raise ValueError(f"--batch-size ({args.batch_size}) must be a multiple of the {world} processes")
    try:
        result = _fit(args, rank, world, device, _style_job if style else _sr_job)
        if world > 1:
            import torch.distributed as dist

            # Every rank past its last collective before any tears gloo down: a rank that destroys
            # the group while rank 0 still writes its final checkpoint aborted now and then
            # ("terminate called without an active exception").
            dist.barrier()
        return result
    except KeyboardInterrupt as exc:
        if isinstance(exc, TrainingInterrupted):
            raise
        # Ctrl-C during start-up (loading data, VGG, the checkpoint) or while stopping.
        if rank == 0:
            print(
                f"psr train: interrupted; no new checkpoint written (the last complete one in {args.out}, if any, "
                "is kept)",
                file=sys.stderr,
                flush=True,
            )
        raise TrainingInterrupted({"task": getattr(args, "task", "sr"), "interrupted": True}) from None
    finally:
        while _SIGINT_TO_RESTORE:
            signal.signal(signal.SIGINT, _SIGINT_TO_RESTORE.pop())
        if world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# style transfer


def _check_style_args(args: argparse.Namespace) -> None:
    if args.style is None:
        raise ValueError("--task style needs --style IMAGE (e.g. ../shared/data/styles/starry_night.jpg)")
    if not Path(args.style).is_file():
        raise FileNotFoundError(f"--style {str(args.style)!r}: no such file")
    for name in ("style_weight", "content_weight"):
        v = getattr(args, name)
        if not (v >= 0 and math.isfinite(v)):
            raise ValueError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {v}")
    if args.style_weight == 0 and args.content_weight == 0:
        raise ValueError("--style-weight and --content-weight are both 0: nothing to train for")
    if args.image_size < 16:
        raise ValueError(f"--image-size must be >= 16, got {args.image_size}")
    if args.style_size < 0 or 0 < args.style_size < 16:
        raise ValueError(f"--style-size must be 0 (as it is) or >= 16, got {args.style_size}")
    if args.style_channels < 1 or args.style_blocks < 0:
        raise ValueError("--style-channels must be >= 1 and --style-blocks >= 0")


class StyleSampler(PatchSampler):
    """Content images for style training, a pure function of (seed, iteration, sample) like SR patches.

    Each sample is a random square crop, its side uniform between ``size`` and the image's shorter
    side, resized to ``size`` x ``size`` (antialiased bilinear, rounded to 8 bits), and flipped
    left-right with probability 1/2. The paper resized whole COCO images to 256x256; a random
    square keeps the aspect ratio and varies the scale of the content.
    """

    def __init__(self, files: list[Path], *, size: int, small: str = "skip") -> None:
        super().__init__(
            files, patch=size, scale=1, degradation=Degradation.parse("bicubic"), quantize=False, small=small
        )

    def _crop(self, gen: torch.Generator) -> torch.Tensor:
        p = self.patch
        img = self.images[int(torch.multinomial(self.weights, 1, generator=gen))]
        h, w = img.shape[1:]
        side = int(torch.randint(p, min(h, w) + 1, (1,), generator=gen))
        y = int(torch.randint(0, h - side + 1, (1,), generator=gen))
        x = int(torch.randint(0, w - side + 1, (1,), generator=gen))
        crop = img[:, y : y + side, x : x + side]
        if side != p:
            small = F.interpolate(crop[None].float(), size=(p, p), mode="bilinear", antialias=True, align_corners=False)
            crop = small[0].round().clamp(0, 255).to(torch.uint8)
        if int(torch.randint(0, 2, (1,), generator=gen)):
            crop = crop.flip(-1)
        return crop.contiguous()

    def _finish(self, crops: list[torch.Tensor], sigmas: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.stack(crops).float() / 255.0
        return x, x  # (input, content target): the same image


def load_style_image(path: str | os.PathLike, size: int = 512) -> torch.Tensor:
    """The style image as RGB floats (1, 3, H, W) in [0, 1], its longer side resized to ``size`` (0: as is)."""
    img = load_rgb(path).float()[None] / 255.0
    h, w = img.shape[-2:]
    if size and max(h, w) != size:
        f = size / max(h, w)
        hw = (max(1, round(h * f)), max(1, round(w * f)))
        img = F.interpolate(img, size=hw, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    return img.contiguous()


class StyleObjective(torch.nn.Module):
    """Unweighted loss terms of style training on one shared VGG-16 pass.

    ``forward(y, x)`` returns ``{"content": relu2_2 feature MSE of y against x, "style": sum over
    the style layers of ||G(y) - G(style)||_F^2 (batch mean), "tv": TV(y)}``; Gram matrices and
    the style targets are :func:`psr.losses.gram_matrix` / :class:`psr.losses.StyleLoss`'s.
    """

    def __init__(self, style_image: torch.Tensor, vgg_weights: str | os.PathLike | None = None) -> None:
        super().__init__()
        from .losses import StyleLoss, TVLoss, VGGFeatures

        self.vgg = VGGFeatures(STYLE_LAYERS, vgg_weights)
        self.style = StyleLoss(style_image, STYLE_LAYERS, vgg=self.vgg)
        self.tv = TVLoss()

    def gram_distances(self, feats: dict[str, torch.Tensor], layers: Sequence[str]) -> dict[str, torch.Tensor]:
        """Per-image squared Frobenius distances (N,) of the features' Grams to the style's."""
        from .losses import gram_matrix

        return {
            name: (gram_matrix(feats[name]) - self.style.target_gram(name)).pow(2).sum(dim=(1, 2)) for name in layers
        }

    def forward(self, y: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
        fy = self.vgg(y, STYLE_LAYERS)
        with torch.no_grad():
            fx = self.vgg(x, (FEATURE_LAYER,))
        content = F.mse_loss(fy[FEATURE_LAYER].float(), fx[FEATURE_LAYER].float())
        style = sum(d.mean() for d in self.gram_distances(fy, STYLE_LAYERS).values())
        return {"content": content, "style": style, "tv": self.tv(y.float())}  # type: ignore[dict-item]


def _style_total(terms: dict[str, torch.Tensor], args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """Weighted terms; zero-weight terms are left out."""
    w = {"content": args.content_weight, "style": args.style_weight, "tv": args.tv_weight}
    return {k: w[k] * v for k, v in terms.items() if w[k] > 0}


@torch.no_grad()
def validate_style(
    model: torch.nn.Module,
    images: Sequence[torch.Tensor],
    objective: StyleObjective,
    args: argparse.Namespace,
    device: torch.device,
) -> dict[str, float]:
    """Mean content, style and TV terms and the weighted total over uint8 (3, H, W) ``images``.

    Also ``gram_{layer}_ratio`` for the Gram-check layers: the stylised images' Gram distance to the
    style divided by the inputs' (below 1: moved toward the style).
    """
    was_training = model.training
    model.eval()
    acc: dict[str, list[float]] = {}
    for img in images:
        x = (img.float() / 255.0)[None].to(device)
        y = model(x).float()
        terms = objective(y, x)
        rec = {k: float(v) for k, v in terms.items()}
        rec["loss"] = float(sum(_style_total(terms, args).values()))
        d_out = objective.gram_distances(objective.vgg(y, GRAM_CHECK_LAYERS), GRAM_CHECK_LAYERS)
        d_in = objective.gram_distances(objective.vgg(x, GRAM_CHECK_LAYERS), GRAM_CHECK_LAYERS)
        for name in GRAM_CHECK_LAYERS:
            rec[f"gram_{name}_ratio"] = float(d_out[name].sum() / d_in[name].sum().clamp_min(1e-30))
        for k, v in rec.items():
            acc.setdefault(k, []).append(v)
    model.train(was_training)
    return {k: float(np.mean(v)) for k, v in acc.items()}


def _style_config(args: argparse.Namespace) -> StyleConfig:
    return StyleConfig(
        channels=args.style_channels, num_blocks=args.style_blocks, norm=args.style_norm, upsample=args.style_upsample
    )


def _sha256(path: str | os.PathLike) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class _Job:
    """What super-resolution and style training do differently; :func:`_fit` runs the rest
    (optimiser, resume, DDP, the loop, logging, validation, checkpoints) for both."""

    task: str  # "sr" or "style": checkpoints and weights metadata carry it
    model: torch.nn.Module
    cfg: Any  # SRConfig or StyleConfig
    sampler: PatchSampler
    meta_base: dict[str, Any]  # metadata of every weights file the run writes
    resume_keys: tuple[str, ...]  # options whose change on --resume earns a warning
    losses: Callable[[torch.nn.Module, list[torch.Tensor]], dict[str, torch.Tensor]]  # weighted terms of a batch
    validate: Callable[[], dict[str, float]] | None  # rank 0's validation; None: no validation split
    best: Callable[[dict | None], dict]  # a checkpoint's "best validation" record, or the initial one
    better: Callable[[dict, dict], bool]  # (best, validation): is the validation better?
    new_best: Callable[[dict, dict, int], dict]  # (best, validation, iteration) -> the new record
    nan_hint: str  # what to try when the loss turns non-finite
    desc: str  # progress-bar label


def _on_device(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    net = net.to(device)
    return net.to(memory_format=torch.channels_last) if device.type == "cuda" else net


def _sr_job(args: argparse.Namespace, lead: bool, world: int, device: torch.device) -> _Job:
    cuda = device.type == "cuda"
    degradation = Degradation.parse(args.degradation)
    files = find_images(args.data)
    train_files, val_files = split_train_val(files, args.n_val)
    sampler = PatchSampler(
        train_files, patch=args.patch, scale=args.scale, degradation=degradation, small=args.small_images
    )
    val_images = [_centre_crop(load_rgb(f), args.val_crop, args.scale) for f in val_files] if lead else []
    for f, img in zip(val_files, val_images, strict=False):  # found now, not at the first validation
        if not fits_ssim(img.shape[1], img.shape[2], args.scale):
            raise ValueError(
                f"validation image {str(f)!r} ({img.shape[2]}x{img.shape[1]} after the crop) is too small: "
                f"shaving {args.scale} pixels per border leaves less than SSIM's {SSIM_WINDOW}x{SSIM_WINDOW} window; "
                "remove it from --data or change --n-val"
            )

    torch.manual_seed(args.seed)  # the initial weights are a function of --seed
    random.seed(args.seed)
    cfg = _model_config(args)
    model = _on_device(SRNet(cfg), device)

    from .losses import PerceptualLoss, TVLoss

    perceptual = None
    if args.loss == "perceptual":
        perceptual = PerceptualLoss((FEATURE_LAYER,), args.vgg_weights).to(device)
        if cuda:
            perceptual = perceptual.to(memory_format=torch.channels_last)
        vgg_val = perceptual.vgg if lead else None
    else:
        vgg_val = _feature_net(args.vgg_weights, allow_download=False) if lead else None
        if vgg_val is not None:
            vgg_val = vgg_val.to(device)
    tv = TVLoss() if args.tv_weight > 0 else None

    def losses(net: torch.nn.Module, batch: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        lr_img, hr_img = batch
        sr = net(lr_img, clamp=False)
        terms = {}
        if perceptual is not None:
            terms["feature"] = perceptual(sr, hr_img)
            if args.pixel_weight > 0:
                terms["pixel"] = args.pixel_weight * F.mse_loss(sr.float(), hr_img)
        else:
            terms["pixel"] = F.mse_loss(sr.float(), hr_img)
        if tv is not None:
            terms["tv"] = args.tv_weight * tv(sr.float())
        return terms

    name = args.name or f"x{args.scale}-{args.loss}"
    meta_base = {
        "name": name,
        "loss": args.loss,
        "loss_layers": [FEATURE_LAYER] if args.loss == "perceptual" else [],
        "tv_weight": args.tv_weight,
        "pixel_weight": args.pixel_weight,
        "degradation": degradation.name,
        "training_data": str(args.data),
        "n_train_images": len(sampler.images),
        "n_val_images": len(val_files),
        "small_images": args.small_images,
        "n_small_images": len(sampler.skipped) + len(sampler.padded),
        "patch": args.patch,
    }
    return _Job(
        task="sr",
        model=model,
        cfg=cfg,
        sampler=sampler,
        meta_base=meta_base,
        resume_keys=(*_VALIDATION_KEYS, "loss", "degradation", "patch", "batch_size", "seed", "tv_weight", "lr")
        + ("pixel_weight", "warmup", "lr_decay_at"),
        losses=losses,
        validate=(lambda: validate(model, val_images, args.scale, device, vgg_val)) if val_images else None,
        best=lambda b: _normalise_best(b, args.loss),
        better=_better,
        new_best=lambda best, v, it: {"metric": best["metric"], "value": v[best["metric"]], "iteration": it, **v},
        nan_hint="lower --lr or check the data",
        desc=f"train {name}",
    )


def _style_job(args: argparse.Namespace, lead: bool, world: int, device: torch.device) -> _Job:
    cuda = device.type == "cuda"
    files = find_images(args.data)
    train_files, val_files = split_train_val(files, args.n_val)
    sampler = StyleSampler(train_files, size=args.image_size, small=args.small_images)
    val_images = [_centre_crop(load_rgb(f), args.val_crop, 4) for f in val_files] if lead else []
    style_image = load_style_image(args.style, args.style_size)

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    cfg = _style_config(args)
    model = _on_device(StyleNet(cfg), device)
    objective = StyleObjective(style_image, args.vgg_weights).to(device)
    if cuda:
        objective = objective.to(memory_format=torch.channels_last)

    def losses(net: torch.nn.Module, batch: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch[0]  # the content target is the input itself
        return _style_total(objective(net(x), x), args)

    name = args.name or Path(args.style).stem
    meta_base = {
        "name": name,
        "task": "style",
        "style_image": Path(args.style).name,
        "style_sha256": _sha256(args.style),
        "style_size": args.style_size,
        "style_layers": list(STYLE_LAYERS),
        "content_layer": FEATURE_LAYER,
        "style_weight": args.style_weight,
        "content_weight": args.content_weight,
        "tv_weight": args.tv_weight,
        "image_size": args.image_size,
        "training_data": str(args.data),
        "n_train_images": len(sampler.images),
        "n_val_images": len(val_files),
    }
    keys = ("style", "style_size", "style_weight", "content_weight", "tv_weight", "image_size", "batch_size")
    return _Job(
        task="style",
        model=model,
        cfg=cfg,
        sampler=sampler,
        meta_base=meta_base,
        resume_keys=(*_VALIDATION_KEYS, *keys, "seed", "lr", "warmup", "lr_decay_at"),
        losses=losses,
        validate=(lambda: validate_style(model, val_images, objective, args, device)) if val_images else None,
        best=lambda b: dict(b or {"metric": "loss", "value": math.inf, "iteration": 0}),
        better=lambda best, v: math.isfinite(v["loss"]) and v["loss"] < best["value"],
        new_best=lambda best, v, it: {"metric": "loss", "value": v["loss"], "iteration": it},
        nan_hint="lower --lr or the loss weights",
        desc=f"train style {name}",
    )


class _SigintDeferred:
    """While active in the main thread: the first SIGINT only sets ``requested`` (the training loop
    finishes its iteration, writes a checkpoint and stops); a second one raises KeyboardInterrupt.

    Not installed outside the main thread or over a SIGINT handler other than Python's default.
    Forked data workers inherit the handler and ignore SIGINT: the main process stops them.
    """

    def __init__(self, on_first: Callable[[], None]) -> None:
        self.requested = False
        self._on_first = on_first
        self._previous: Any = None
        self._pid = os.getpid()

    def _handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:
            return
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self._on_first()

    def __enter__(self) -> _SigintDeferred:
        if threading.current_thread() is threading.main_thread():
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if self._previous is None:
            return
        if self.requested or (exc_type is not None and issubclass(exc_type, KeyboardInterrupt)):
            # Stopping: a further Ctrl-C during the summary, the workers' shutdown or the exit would
            # only turn a clean stop into a traceback. Ignored until main() raises; it restores.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            _SIGINT_TO_RESTORE.append(self._previous)
        else:
            signal.signal(signal.SIGINT, self._previous)
        self._previous = None


_SIGINT_TO_RESTORE: list[Any] = []  # the handler main() puts back after an interrupted run


def _same_arg(key: str, old: Any, new: Any) -> bool:
    """Is a resumed run's option unchanged? Paths compare by the file they name."""
    if key in _PATH_ARGS and old is not None and new is not None:
        return Path(str(old)).expanduser().resolve() == Path(str(new)).expanduser().resolve()
    return str(old) == str(new)


def _fit(args: argparse.Namespace, rank: int, world: int, device: torch.device, make_job: Callable) -> dict:
    """Train ``make_job(args, lead, world, device)``'s model: the loop both tasks share."""
    cuda = device.type == "cuda"
    if cuda:
        if device.index is not None:  # a bare "cuda" means the current device (torch 2.11 refuses it here)
            torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    lead = rank == 0
    out: Path = Path(args.out)
    ckpt_path = out / "checkpoint.pt"
    job: _Job = make_job(args, lead, world, device)
    model, cfg = job.model, job.cfg
    kind = "style" if job.task == "style" else "super-resolution"

    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    it, elapsed = 0, 0.0
    best = job.best(None)
    rng_to_restore = None
    saved_it: int | None = None  # iteration of the newest complete checkpoint in OUT
    if args.resume:  # main()'s _check_out has made sure the checkpoint exists
        st = load_checkpoint(ckpt_path)
        if st.get("task", "sr") != job.task:
            raise ValueError(f"--resume: {str(ckpt_path)!r} is a {st.get('task', 'sr')!r} run, not a {kind} run")
        if type(cfg).from_dict(st["config"]) != cfg:
            raise ValueError(f"--resume: checkpoint config {st['config']} differs from this run's {cfg.to_dict()}")
        old = checkpoint_args(st)
        if not args.init_from and old.get("init_from"):
            args.init_from = old["init_from"]  # so the next checkpoint's args keep it too
        changed = [k for k in job.resume_keys if k in old and not _same_arg(k, old[k], getattr(args, k))]
        for key in changed:
            if lead:
                _warn(f"--resume: --{key.replace('_', '-')} was {old[key]!r}, now {getattr(args, key)!r}")
        reset_best = any(k in _VALIDATION_KEYS for k in changed)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        rng_to_restore = st["rng"]
        it, elapsed = int(st["iteration"]), float(st.get("elapsed", 0.0))
        saved_it = it
        best = job.best(None if reset_best else st.get("best"))
        if not reset_best:
            best = _newer_best_file(out / "best.safetensors", best, job.meta_base, args.val_crop)
        if reset_best and lead:  # scores on another validation set do not compare
            if job.validate is None:
                _warn("--resume: no validation split now (--n-val 0): best.safetensors stays as it was")
            else:
                _warn(
                    "--resume: the validation set changed: the best so far starts afresh (best.safetensors is replaced)"
                )
        init_desc = args.init_from
    else:
        init_desc = _init_weights(model, args.init_from, job.task) if args.init_from else None
    if lead:
        out.mkdir(parents=True, exist_ok=True)
        if args.overwrite and not args.resume:
            # Only now, with the new run set up (and --init-from read, which may live in OUT).
            gone = _clear_run(out)
            if gone:
                _warn(f"--overwrite: deleted the earlier run's {', '.join(gone)} in {str(out)!r}")

    net: torch.nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if (cuda and args.amp) else nullcontext()

    meta_base = {
        **job.meta_base,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "lr_decay_at": list(args.lr_decay_at),
        "warmup": args.warmup,
        "seed": args.seed,
        "processes": world,
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "train_args": _json_args(args),
    }
    if init_desc:
        meta_base["initialised_from"] = f"{init_desc}; fresh optimiser state"

    def checkpoint() -> None:
        nonlocal saved_it
        save_checkpoint(
            ckpt_path,
            {
                "task": job.task,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "rng": _rng_state(args.seed, device),
                "iteration": it,
                "elapsed": elapsed,
                "best": best,
                "config": cfg.to_dict(),
                "args": _json_args(args),
            },
        )
        saved_it = it

    def to_device(t: torch.Tensor) -> torch.Tensor:
        t = t.to(device, non_blocking=True)
        return t.contiguous(memory_format=torch.channels_last) if cuda else t

    stop = args.iterations if not args.stop_at else min(args.iterations, args.stop_at)
    loader = make_loader(
        job.sampler,
        batch_size=args.batch_size,
        seed=args.seed,
        start=it,
        stop=max(it, stop),
        workers=args.workers,
        rank=rank,
        world_size=world,
        pin_memory=cuda,
    )
    log = open(out / "log.jsonl", "a") if lead else None
    if log is not None:
        log.write(json.dumps({"event": "resume" if args.resume else "start", "it": it, "processes": world}) + "\n")
    from tqdm import tqdm

    bar = tqdm(
        total=args.iterations,
        initial=it,
        disable=args.quiet or not lead,
        dynamic_ncols=True,
        desc=job.desc,
        mininterval=1.0,
    )

    current = it + 1  # the iteration under way (or next), which a first Ctrl-C lets finish

    def on_sigint() -> None:
        if lead:
            bar.write(
                f"psr train: interrupt: finishing iteration {current}, then writing a checkpoint "
                "(Ctrl-C again to stop at once)",
                file=sys.stderr,
            )

    if rng_to_restore is not None:
        # Last, after everything that draws from the global RNG at start-up (e.g. module init).
        _set_rng_state(rng_to_restore, device, lead)
    start = time.perf_counter() - elapsed
    limit = args.max_minutes * 60 if args.max_minutes else math.inf
    model.train()
    stopped_early = False
    # interrupted: None, "saved" (checkpoint written at `it`) or "unsaved" (the one at saved_it is kept)
    interrupted: str | None = None
    torn = False  # mid-iteration: model, optimiser and `it` disagree, no checkpoint can be written
    t_last, it_last = time.perf_counter(), it
    first_done: tuple[float, int] | None = None
    with _SigintDeferred(on_sigint) as sigint:
        try:
            for batch in loader:
                current = it + 1
                lr_now = _lr_at(args, it)
                for grp in opt.param_groups:
                    grp["lr"] = lr_now
                moved: dict[int, torch.Tensor] = {}  # a tensor given twice (style: input = target) moves once
                batch = [moved.setdefault(id(t), to_device(t)) for t in batch]
                torn = True  # from here BN statistics, weights, optimiser and `it` change
                with autocast:
                    terms = job.losses(net, batch)
                    loss = sum(terms.values())
                opt.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[union-attr]
                opt.step()
                it += 1
                elapsed = time.perf_counter() - start
                if first_done is None:  # throughput is timed from the end of the first step (warm-up excluded)
                    first_done = (time.perf_counter(), it)
                loss_value = float(loss.detach())  # type: ignore[union-attr]
                if not math.isfinite(loss_value):
                    raise FloatingPointError(f"iteration {it}: loss is {loss_value}; {job.nan_hint}")
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.5g}", refresh=False)
                if log is not None:
                    rec = {"it": it, "loss": loss_value, "lr": lr_now, "time": round(elapsed, 3)}
                    if len(terms) > 1:
                        rec.update({k: float(v.detach()) for k, v in terms.items()})
                    log.write(json.dumps(rec) + "\n")
                if job.validate is not None and (it % args.val_every == 0 or it == args.iterations):
                    v = job.validate()
                    now = time.perf_counter()
                    rate = (it - it_last) / max(now - t_last, 1e-9)
                    t_last, it_last = now, it
                    rec = {"it": it, **{f"val_{k}": x for k, x in v.items()}, "it_per_s": round(rate, 4)}
                    assert log is not None
                    log.write(json.dumps({**rec, "time": round(elapsed, 2)}) + "\n")
                    bar.write(f"iteration {it}: validation " + ", ".join(f"{k} {x:.4g}" for k, x in v.items()))
                    if job.better(best, v):
                        best = job.new_best(best, v, it)
                        meta = dict(
                            meta_base,
                            iterations=it,
                            wall_time_s=round(elapsed, 1),
                            **{f"val_{k}": round(x, 6) for k, x in v.items()},
                            val_crop=args.val_crop,
                        )
                        save_weights(out / "best.safetensors", model, meta)
                if log is not None:
                    log.flush()
                over, stopping = elapsed > limit, sigint.requested
                if world > 1:
                    import torch.distributed as dist

                    # Every process must stop at the same step: the time limit, or Ctrl-C on any of them.
                    flag = torch.tensor([float(over), float(stopping)], device=device)
                    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                    over, stopping = bool(flag[0].item()), bool(flag[1].item())
                if lead and (it % args.checkpoint_every == 0 or it == stop or over or stopping):
                    checkpoint()
                torn, current = False, it + 1
                if stopping and it < stop:
                    interrupted = "saved"
                    break
                if over and it < stop:
                    stopped_early = True
                    break
        except KeyboardInterrupt:
            # Raised by code rather than by the first SIGINT (our handler not installed, a second
            # Ctrl-C): a checkpoint is written only between iterations, where it is exact.
            interrupted = "unsaved"
            if lead and not torn and not sigint.requested and saved_it != it:
                try:
                    checkpoint()
                    interrupted = "saved"
                except KeyboardInterrupt:
                    pass  # the write is atomic: the previous checkpoint is intact
            elif saved_it == it and not torn:
                interrupted = "saved"
        finally:
            bar.close()
            if log is not None:
                if interrupted:
                    log.write(json.dumps({"event": "interrupted", "it": it, "checkpoint": saved_it}) + "\n")
                log.close()
    summary = {
        "task": job.task,
        "iteration": it,
        "elapsed_s": round(elapsed, 2),
        "best": best,
        "stopped_early": stopped_early or it < args.iterations,
        "out": str(out),
    }
    if first_done is not None and it > first_done[1]:
        # Training steps per second in this session, validation and checkpoint time included.
        summary["it_per_s"] = round((it - first_done[1]) / (time.perf_counter() - first_done[0]), 4)
    if interrupted:
        summary.update(interrupted=True, checkpoint_iteration=saved_it)
    if lead:
        print(json.dumps(summary))
    if interrupted:
        if lead:
            if interrupted == "saved":
                msg = f"interrupted at iteration {it}; checkpoint saved; continue with --resume (--out {out})"
            elif saved_it is not None:
                msg = (
                    f"interrupted mid-iteration; no new checkpoint: the one at iteration {saved_it} is kept; "
                    f"continue with --resume (--out {out})"
                )
            else:
                msg = "interrupted mid-iteration, before the first checkpoint: nothing to resume"
            print(f"psr train: {msg}", file=sys.stderr, flush=True)
        raise TrainingInterrupted(summary)
    return summary


def _checkpoint_meta(st: dict, targs: dict[str, Any]) -> dict[str, Any]:
    """Metadata both tasks take from a last checkpoint and its training arguments."""
    meta = {
        "batch_size": targs.get("batch_size"),
        "lr": targs.get("lr"),
        "seed": targs.get("seed"),
        "iterations": int(st["iteration"]),
        "wall_time_s": round(float(st.get("elapsed", 0.0)), 1),
    }
    if targs.get("init_from"):
        meta["initialised_from"] = f"{targs['init_from']}; fresh optimiser state"
    return meta


def _run_task(run_dir: Path) -> str:
    from .weights import read_metadata

    best, ckpt = run_dir / "best.safetensors", run_dir / "checkpoint.pt"
    if best.is_file():
        return str(read_metadata(best).get("task", "sr"))
    if ckpt.is_file():
        return str(load_checkpoint(ckpt).get("task", "sr"))
    return "sr"


def gram_check(
    model: torch.nn.Module,
    files: Sequence[Path],
    style_image: torch.Tensor,
    *,
    vgg_weights: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    crop: int = 256,
) -> dict[str, Any]:
    """Does ``model`` move Gram statistics toward the style? Per layer of ``GRAM_CHECK_LAYERS``.

    For each image (centre crop of ``crop`` pixels), the squared Frobenius distance of the Gram
    matrix of the stylised image to the style's and of the input's. Returns per layer the mean
    distances, their ratio and the fraction of images whose distance went down, plus ``all_lower``.
    """
    from .losses import StyleLoss, VGGFeatures

    dev = torch.device(device)
    vgg = VGGFeatures(GRAM_CHECK_LAYERS, vgg_weights).to(dev)
    target = StyleLoss(style_image.to(dev), GRAM_CHECK_LAYERS, vgg=vgg)
    from .losses import gram_matrix

    d_in: dict[str, list[float]] = {k: [] for k in GRAM_CHECK_LAYERS}
    d_out: dict[str, list[float]] = {k: [] for k in GRAM_CHECK_LAYERS}
    model = model.to(dev).eval()
    with torch.no_grad():
        for f in files:
            x = (_centre_crop(load_rgb(f), crop, 4).float() / 255.0)[None].to(dev)
            y = model(x).float()
            for img, acc in ((x, d_in), (y, d_out)):
                feats = vgg(img, GRAM_CHECK_LAYERS)
                for name in GRAM_CHECK_LAYERS:
                    acc[name].append(float((gram_matrix(feats[name]) - target.target_gram(name)).pow(2).sum()))
    out: dict[str, Any] = {"images": len(files), "crop": crop}
    for name in GRAM_CHECK_LAYERS:
        a, b = np.array(d_in[name]), np.array(d_out[name])
        out[name] = {
            "input": float(a.mean()),
            "output": float(b.mean()),
            "ratio": float(b.mean() / max(a.mean(), 1e-30)),
            "fraction_lower": float((b < a).mean()),
        }
    out["all_lower"] = all(out[name]["fraction_lower"] == 1.0 for name in GRAM_CHECK_LAYERS)
    return out


def _recorded_path(recorded: Any, run_dir: Path, targs: dict[str, Any], what: str, flag: str) -> Path:
    """A path the run recorded (``--data``, ``--style``), found from here.

    Runs record absolute paths; older ones recorded them as given, relative to the folder training
    ran in. That folder is worked out from the recorded ``--out`` (``runs/train`` in
    ``/work/runs/train`` means ``/work``); the run folder's parent and the run folder are tried
    too. A path found elsewhere than as recorded is said on stderr.
    """
    if recorded in (None, "", "None"):
        raise FileNotFoundError(f"the run does not record its {what}; pass {flag}")
    rec = Path(str(recorded)).expanduser()
    if rec.is_absolute():
        if rec.exists():
            return rec
        raise FileNotFoundError(f"{what} {str(rec)!r} (recorded in the run) does not exist; if it moved, pass {flag}")
    here = run_dir.resolve()
    candidates: list[tuple[Path, str]] = [(rec, "from the current folder")]
    out = Path(str(targs.get("out") or ""))
    if targs.get("out") and not out.is_absolute() and ".." not in out.parts and out.parts:
        n = len(out.parts)
        if here.parts[-n:] == out.parts:  # the run is still where it was trained relative to that folder
            cwd = Path(*here.parts[:-n])
            candidates.append((cwd / rec, f"relative to {str(cwd)!r}, where the run was trained (--out {out})"))
    candidates.append((here.parent / rec, "relative to the run folder's parent"))
    candidates.append((here / rec, "relative to the run folder"))
    for path, how in candidates:
        if path.exists():
            if path is not rec:
                _warn(
                    f"{what} {str(rec)!r} is not found from the current folder; using {str(path)!r} ({how})", "export"
                )
            return path
    raise FileNotFoundError(
        f"{what} {str(rec)!r} (recorded relative to where the run was trained) not found from the current folder "
        f"nor from {str(here.parent)!r}; pass {flag}"
    )


def _export_style(args: argparse.Namespace) -> dict:
    """``psr export`` for a style run: best or last weights, the Gram check on the validation split."""
    from .weights import load_style_model

    run_dir: Path = args.run_dir
    ckpt_path, best_path = run_dir / "checkpoint.pt", run_dir / "best.safetensors"
    st = load_checkpoint(ckpt_path) if ckpt_path.is_file() else None
    targs = checkpoint_args(st) if st is not None else {}
    if args.which == "best" and best_path.is_file():
        model = load_style_model(best_path)
        meta = dict(model.metadata)  # type: ignore[attr-defined]
        if "train_args" in meta:
            targs = {**json.loads(meta.pop("train_args")), **targs}
    else:
        if st is None:
            raise FileNotFoundError(f"run {str(run_dir)!r} has neither best.safetensors nor checkpoint.pt")
        if args.which == "best":
            _warn(f"{str(best_path)!r} missing (no validation yet?): exporting the last checkpoint", "export")
        model = StyleNet(StyleConfig.from_dict(st["config"]))
        model.load_state_dict(st["model"])
        model.eval()
        style_path = targs.get("style")
        meta = {
            "name": targs.get("name") or (Path(style_path).stem if style_path else run_dir.name),
            "task": "style",
            "style_image": Path(style_path).name if style_path else None,
            "style_size": targs.get("style_size"),
            "style_layers": list(STYLE_LAYERS),
            "content_layer": FEATURE_LAYER,
            "style_weight": targs.get("style_weight"),
            "content_weight": targs.get("content_weight"),
            "tv_weight": targs.get("tv_weight"),
            "image_size": targs.get("image_size"),
            "training_data": str(targs.get("data")),
            **_checkpoint_meta(st, targs),
        }
    if getattr(args, "style", None):
        style_path = Path(args.style)
    else:
        style_path = _recorded_path(targs.get("style"), run_dir, targs, "style image", "--style IMAGE")
    if not style_path.is_file():
        raise FileNotFoundError(f"style image {str(style_path)!r} not found; pass --style IMAGE")
    data = args.data or _recorded_path(
        targs.get("data") or meta.get("training_data"), run_dir, targs, "training data folder", "--data FOLDER"
    )
    _, val_files = split_train_val(find_images(data), int(targs.get("n_val", 20)))
    style_image = load_style_image(style_path, int(targs.get("style_size", 512) or 0))
    if val_files:
        check = gram_check(model, val_files, style_image, vgg_weights=args.vgg_weights, device=args.device)
        if not check["all_lower"]:
            _warn(f"Gram check: not every validation image moved toward the style: {check}", "export")
    else:
        check = None
        _warn("the run has no validation split (--n-val 0): no Gram check in the metadata", "export")
    meta = {k: v for k, v in meta.items() if not k.startswith("val_")}
    meta.update(
        name=args.name or meta.get("name") or run_dir.name,
        style_sha256=_sha256(style_path),
        **({"gram_check": check} if check is not None else {}),
        exported_from=str(run_dir),
        exported_which=args.which,
    )
    save_weights(args.output, model, meta)
    print(json.dumps({k: v for k, v in meta.items() if k not in ("config", "train_args")}, indent=1, default=str))
    return meta


# ---------------------------------------------------------------------------------------------
# export


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    """Add ``psr export``'s options to ``p``."""
    p.add_argument("run_dir", type=Path, help="a training run folder (best.safetensors, checkpoint.pt)")
    p.add_argument("-o", "--output", type=Path, required=True, help="weights file to write (.safetensors)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    p.add_argument("--name", default=None, help="model name in the metadata (default: the run's)")
    p.add_argument(
        "--which", default="best", choices=("best", "last"), help="best validation weights, or the last checkpoint"
    )
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="training folder, if moved since training (default: the one the run recorded)",
    )
    p.add_argument(
        "--set5",
        type=Path,
        default=default_shared_dir() / "data" / "Set5",
        help="Set5 folder to report on; a missing folder skips Set5",
    )
    p.add_argument(
        "--match-histogram",
        default="auto",
        choices=("auto", "on", "off"),
        help="default post-processing of super-resolution weights; auto: chosen on the validation split",
    )
    p.add_argument(
        "--vgg-weights",
        type=Path,
        default=None,
        help=f"VGG-16 weights for the relu2_2 distance (default: {_vgg_default_help(False)})",
    )
    p.add_argument("--device", default="cpu", help="'cpu', 'cuda' or 'cuda:N'")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument(
        "--style",
        type=Path,
        default=None,
        help="style runs: the style image, if moved since training (default: the one the run recorded)",
    )
    _show_defaults(p)


def _load_run(run_dir: Path, which: str) -> tuple[SRNet, dict, dict]:
    """(unfused model, training metadata, training args) of a run."""
    from .weights import load_model

    ckpt_path, best_path = run_dir / "checkpoint.pt", run_dir / "best.safetensors"
    st = load_checkpoint(ckpt_path) if ckpt_path.is_file() else None
    targs = checkpoint_args(st) if st is not None else {}
    if which == "best" and best_path.is_file():
        model = load_model(best_path, fuse=False)
        meta = dict(model.metadata)  # type: ignore[attr-defined]
        if "train_args" in meta:
            targs = {**json.loads(meta.pop("train_args")), **targs}
        return model, meta, targs
    if st is None:
        raise FileNotFoundError(f"run {str(run_dir)!r} has neither best.safetensors nor checkpoint.pt")
    if which == "best":
        _warn(f"{str(best_path)!r} missing (no validation yet?): exporting the last checkpoint", "export")
    model = SRNet(SRConfig.from_dict(st["config"]))
    model.load_state_dict(st["model"])
    model.eval()
    meta = {
        "name": targs.get("name") or f"x{model.scale}-{targs.get('loss', 'pixel')}",
        "loss": targs.get("loss", "pixel"),
        "degradation": targs.get("degradation"),
        "training_data": str(targs.get("data")),
        "patch": targs.get("patch"),
        **_checkpoint_meta(st, targs),
    }
    return model, meta, targs


def export_main(args: argparse.Namespace) -> dict:
    """Write a run's weights in the shipped format with full metadata; returns the metadata.

    The default ``match_histogram`` is chosen on the run's validation split (whole images, the
    benchmark protocol of :func:`psr.evaluate.evaluate`): by PSNR for pixel-loss models, by the
    relu2_2 distance for perceptual ones. Set5 is scored with that default and only reported.
    """
    from .evaluate import evaluate

    if args.threads:
        torch.set_num_threads(args.threads)
    run_dir: Path = args.run_dir
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run_dir {str(run_dir)!r} is not a folder")
    if args.output.suffix != ".safetensors":
        raise ValueError(f"--output must end in .safetensors, got {str(args.output)!r}")
    if args.output.is_dir():
        raise ValueError(f"--output {str(args.output)!r} is a folder; name a .safetensors file")
    if args.output.exists() and not getattr(args, "overwrite", False):
        raise ValueError(f"--output {str(args.output)!r} exists; pass --overwrite to replace it, or another name")
    from .cli import UsageError, check_writable_folder

    try:
        check_writable_folder(f"--output {args.output}", args.output.parent)
    except UsageError as exc:  # a ValueError from this Python function, as its other checks
        raise ValueError(str(exc.code)) from None
    if _run_task(run_dir) == "style":
        if args.match_histogram == "on":
            raise ValueError(
                f"--match-histogram on: {str(run_dir)!r} is a style run; histogram matching is a "
                "super-resolution post-processing and style weights have none (leave the option out)"
            )
        return _export_style(args)
    model, meta, targs = _load_run(run_dir, args.which)
    scale = model.scale
    fused = model.fuse()
    fused.name = args.name or meta.get("name") or run_dir.name  # type: ignore[attr-defined]
    loss = meta.get("loss", "pixel")

    data = args.data or _recorded_path(
        targs.get("data") or meta.get("training_data"), run_dir, targs, "training data folder", "--data FOLDER"
    )
    n_val = int(targs.get("n_val", meta.get("n_val_images", 20)))
    _, val_files = split_train_val(find_images(data), n_val)
    if not val_files and args.match_histogram == "auto":
        raise ValueError(
            "the run has no validation split (--n-val 0) to choose match_histogram on: pass --match-histogram on or off"
        )
    cache: dict = {}  # HR features shared by both settings

    def score(files: Any, mh: bool) -> dict:
        r = evaluate(
            files,
            scale,
            fused,
            match_histogram=mh,
            vgg_weights=args.vgg_weights,
            device=args.device,
            _feature_cache=cache,
        )
        out = {"psnr": r["psnr"], "ssim": r["ssim"]}
        if r["perceptual"] is not None:
            out[FEATURE_LAYER] = r["perceptual"]
        return out

    # No validation split (--n-val 0): the user's setting, and no validation scores.
    res = {mh: score(val_files, mh) for mh in (False, True)} if val_files else {}
    by_features = loss == "perceptual" and FEATURE_LAYER in res.get(False, {})
    if args.match_histogram != "auto":
        mh = args.match_histogram == "on"
    elif by_features:
        mh = res[True][FEATURE_LAYER] < res[False][FEATURE_LAYER]
    else:
        mh = res[True]["psnr"] > res[False]["psnr"]

    def rounded(d: dict) -> dict:
        return {k: round(v, 6) for k, v in d.items()}

    meta = {k: v for k, v in meta.items() if not k.startswith("val_")}
    meta.update(
        name=fused.name,  # type: ignore[attr-defined]
        match_histogram=bool(mh),
        match_histogram_chosen_by=(
            f"validation {'relu2_2 distance' if by_features else 'PSNR'}" if args.match_histogram == "auto" else "user"
        ),
        val_images=len(val_files),
        exported_from=str(run_dir),
        exported_which=args.which,
    )
    if res:
        meta.update(
            val_psnr=round(res[mh]["psnr"], 4),
            val_ssim=round(res[mh]["ssim"], 5),
            val_without_matching=rounded(res[False]),
            val_with_matching=rounded(res[True]),
        )
        if FEATURE_LAYER in res[mh]:
            meta["val_relu2_2"] = round(res[mh][FEATURE_LAYER], 4)
    if args.set5 is not None and Path(args.set5).is_dir():
        s5 = score(Path(args.set5), mh)
        meta.update(set5_psnr=round(s5["psnr"], 4), set5_ssim=round(s5["ssim"], 5))
        if FEATURE_LAYER in s5:
            meta["set5_relu2_2"] = round(s5[FEATURE_LAYER], 4)
    elif args.set5 is not None:
        _warn(f"Set5 folder {str(args.set5)!r} not found: no Set5 scores in the metadata", "export")
    from .evaluate import PROTOCOL

    meta["eval_protocol"] = PROTOCOL
    save_weights(args.output, model, meta)
    print(json.dumps({k: v for k, v in meta.items() if k not in ("config", "train_args")}, indent=1, default=str))
    return meta


def _cli(argv: Sequence[str] | None = None) -> int:
    """``python -m psr.train [train options]`` or ``python -m psr.train export RUN_DIR -o FILE``:
    ``psr train`` / ``psr export`` (the same parsers, one-line errors and exit statuses), for
    launchers such as torchrun that start a module."""
    from .cli import main as psr_main

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["export"]:
        return psr_main(argv)
    return psr_main(["train", *argv])


if __name__ == "__main__":
    sys.exit(_cli())
