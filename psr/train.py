"""Train an SR transformation network (``psr train``).

Defaults follow the paper: Adam lr 1e-3, batch 4, 288x288 HR patches, 200k iterations, no weight
decay, Gaussian-blur-then-bicubic degradation. Checkpoints hold model, optimiser, iteration and every
RNG state, written atomically, so ``--resume`` continues exactly where a run stopped (bit-exact on
the CPU). The best checkpoint by validation PSNR is exported as a shipped-weights file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .data import Degradation, PatchSampler, default_shared_dir, find_images, load_rgb, split_train_val
from .metrics import psnr, rgb_to_y, shave
from .models import SRConfig, SRNet
from .resize import imresize
from .weights import save_weights

__all__ = ["add_arguments", "main", "validate", "save_checkpoint", "load_checkpoint"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    shared = default_shared_dir()
    p.add_argument("--data", type=Path, default=shared / "data" / "train", help="folder of training images")
    p.add_argument("--scale", type=int, default=4, choices=(2, 4, 8))
    p.add_argument("--loss", default="pixel", choices=("pixel",), help="training loss")
    p.add_argument("--iterations", type=int, default=200_000)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--patch", type=int, default=288, help="HR patch size")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-decay-at", type=float, nargs="*", default=[], help="fractions of --iterations where lr *= 0.1")
    p.add_argument("--degradation", default="paper", help="'paper', 'bicubic' or 'blur_range:LO:HI'")
    p.add_argument("--upsample", default="deconv", choices=("deconv", "resize_conv", "pixel_shuffle"))
    p.add_argument("--no-global-skip", dest="global_skip", action="store_false", help="the paper's net, no bicubic skip")
    p.add_argument("--out", type=Path, default=Path("runs/train"), help="run folder (checkpoints, logs)")
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--val-every", type=int, default=500)
    p.add_argument("--n-val", type=int, default=20, help="images held out for validation")
    p.add_argument("--val-crop", type=int, default=256, help="centre crop of validation images (HR pixels)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--max-minutes", type=float, default=0, help="stop (resumably) after this long; 0: no limit")
    p.add_argument("--name", default=None, help="model name written into the exported metadata")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


# ---------------------------------------------------------------------------------------------
# checkpoints


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save to a temp file, fsync, then rename: a crash leaves the previous file intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"checkpoint {str(path)!r} is corrupt or unreadable: {exc}") from None


# ---------------------------------------------------------------------------------------------
# validation


@torch.no_grad()
def validate(model: SRNet, images: list[torch.Tensor], scale: int, device: torch.device) -> dict[str, float]:
    """Mean Y-PSNR (shave = scale) on centre crops, LR by MATLAB bicubic rounded to 8 bits."""
    was_training = model.training
    model.eval()
    scores = []
    for hr in images:
        lr = imresize(hr, 1.0 / scale)  # uint8 in, uint8 out (rounded), as the benchmark
        x = (lr.float() / 255.0)[None].to(device)
        sr = model(x).cpu()[0]
        sr8 = torch.round(sr * 255.0).permute(1, 2, 0).numpy()
        ref = hr.permute(1, 2, 0).numpy()
        scores.append(psnr(shave(rgb_to_y(sr8), scale), shave(rgb_to_y(ref), scale)))
    model.train(was_training)
    return {"psnr": float(np.mean(scores))}


def _centre_crop(img: torch.Tensor, size: int, scale: int) -> torch.Tensor:
    h, w = img.shape[1:]
    ch, cw = min(size, h), min(size, w)
    ch, cw = ch - ch % scale, cw - cw % scale
    y, x = (h - ch) // 2, (w - cw) // 2
    return img[:, y : y + ch, x : x + cw].contiguous()


# ---------------------------------------------------------------------------------------------


def _lr_at(args: argparse.Namespace, it: int) -> float:
    n_decays = sum(it >= math.floor(f * args.iterations) for f in args.lr_decay_at)
    return args.lr * (0.1**n_decays)


def _rng_state(gen: torch.Generator) -> dict:
    return {"data": gen.get_state(), "torch": torch.get_rng_state(), "python": random.getstate()}


def _set_rng_state(gen: torch.Generator, st: dict) -> None:
    gen.set_state(st["data"])
    torch.set_rng_state(st["torch"])
    random.setstate(st["python"])


def main(args: argparse.Namespace) -> dict:
    """Run (or resume) a training run; returns a summary dict."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    degradation = Degradation.parse(args.degradation)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"

    files = find_images(args.data)
    train_files, val_files = split_train_val(files, args.n_val)
    sampler = PatchSampler(train_files, patch=args.patch, scale=args.scale, degradation=degradation)
    val_images = [_centre_crop(load_rgb(f), args.val_crop, args.scale) for f in val_files]

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    cfg = SRConfig(scale=args.scale, upsample=args.upsample, global_skip=args.global_skip)
    model = SRNet(cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    it = 0
    elapsed = 0.0
    best = {"psnr": -math.inf, "iteration": 0}
    if args.resume:
        if not ckpt_path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {str(ckpt_path)!r}")
        st = load_checkpoint(ckpt_path)
        if SRConfig.from_dict(st["config"]) != cfg:
            raise ValueError(f"--resume: checkpoint config {st['config']} differs from this run's {cfg.to_dict()}")
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        _set_rng_state(gen, st["rng"])
        it, elapsed, best = st["iteration"], st["elapsed"], st["best"]

    meta_base = {
        "name": args.name or f"x{args.scale}-{args.loss}",
        "loss": args.loss,
        "degradation": degradation.name,
        "training_data": str(args.data),
        "n_train_images": len(sampler.images),
        "n_val_images": len(val_images),
        "patch": args.patch,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "lr_decay_at": args.lr_decay_at,
        "seed": args.seed,
    }

    def checkpoint() -> None:
        save_checkpoint(
            ckpt_path,
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "rng": _rng_state(gen),
                "iteration": it,
                "elapsed": elapsed,
                "best": best,
                "config": cfg.to_dict(),
                "args": json.dumps({k: str(v) for k, v in vars(args).items()}),
            },
        )

    log = open(out / "log.jsonl", "a")
    from tqdm import tqdm

    bar = tqdm(total=args.iterations, initial=it, disable=args.quiet, dynamic_ncols=True, desc="train")
    start = time.perf_counter() - elapsed
    limit = args.max_minutes * 60 if args.max_minutes else math.inf
    model.train()
    stopped_early = False
    while it < args.iterations:
        for g in opt.param_groups:
            g["lr"] = _lr_at(args, it)
        lr_img, hr_img = sampler.batch(args.batch_size, gen)
        lr_img, hr_img = lr_img.to(device), hr_img.to(device)
        sr = model(lr_img, clamp=False)
        loss = F.mse_loss(sr, hr_img)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        it += 1
        elapsed = time.perf_counter() - start
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.5f}")
        log.write(json.dumps({"it": it, "loss": loss.item(), "lr": _lr_at(args, it - 1), "time": round(elapsed, 2)}) + "\n")
        if it % args.val_every == 0 or it == args.iterations:
            v = validate(model, val_images, args.scale, device)
            log.write(json.dumps({"it": it, "val_psnr": v["psnr"], "time": round(elapsed, 2)}) + "\n")
            bar.write(f"iteration {it}: validation PSNR {v['psnr']:.3f} dB")
            if v["psnr"] > best["psnr"]:
                best = {"psnr": v["psnr"], "iteration": it}
                meta = dict(meta_base, iterations=it, wall_time_s=round(elapsed, 1), val_psnr=round(v["psnr"], 4))
                save_weights(out / "best.safetensors", model, meta)
        log.flush()
        if it % args.checkpoint_every == 0 or it == args.iterations:
            checkpoint()
        if elapsed > limit:
            checkpoint()
            stopped_early = True
            break
    bar.close()
    log.close()
    summary = {"iteration": it, "elapsed_s": elapsed, "best": best, "stopped_early": stopped_early, "out": str(out)}
    print(json.dumps(summary))
    return summary
