"""The shipped-weights format: safetensors with psr's metadata, and loading by name or path.

A weights file holds the model's (unfused) state dict and, in the safetensors header, the key
``"psr"`` with a JSON object: ``format``, ``task``, ``config`` (:class:`~psr.models.SRConfig` fields),
``scale``, ``loss``, ``degradation``, training data, iterations, patch size, wall time, validation
and Set5 scores and ``match_histogram`` (the default post-processing, chosen on validation).

Style-transfer weights (``task: "style"``, :class:`~psr.models.StyleNet`) use the same format with
``config`` holding :class:`~psr.models.StyleConfig` fields, no ``scale``, and the style image, loss
weights and Gram check in the metadata; :func:`load_style_model` loads them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from .models import SRConfig, SRNet, StyleConfig, StyleNet

__all__ = ["WEIGHTS_DIR", "FORMAT", "save_weights", "read_metadata", "load_model", "load_style_model", "list_models"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
FORMAT = "psr-weights-1"


def save_weights(path: str | os.PathLike, model: SRNet | StyleNet, metadata: dict[str, Any]) -> None:
    """Write ``model``'s state dict and ``metadata`` atomically (temp file, fsync, rename)."""
    from safetensors.torch import save

    meta = dict(metadata)
    meta["format"] = FORMAT
    meta["config"] = model.cfg.to_dict()
    if isinstance(model, StyleNet):
        meta["task"] = "style"
        meta.pop("scale", None)
    else:
        meta.setdefault("task", "sr")
        meta["scale"] = model.cfg.scale
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    data = save(state, metadata={"psr": json.dumps(meta, sort_keys=True)})
    # Written by us rather than safetensors.save_file, which creates files readable by their owner
    # only: weights files are meant to be shared, so they get the usual umask-based mode.
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _has_separator(text: str) -> bool:
    return any(sep in text for sep in {os.sep, "/", os.altsep} - {None})


def _is_plain_name(name_or_path: str | os.PathLike) -> bool:
    """A string with no path separator and no .safetensors suffix: a shipped name, if one exists."""
    return (
        isinstance(name_or_path, str) and not _has_separator(name_or_path) and not name_or_path.endswith(".safetensors")
    )


def _shipped_file(name_or_path: str | os.PathLike) -> Path | None:
    """The shipped weights file a plain name names, else None.

    A shipped name wins over a file or folder of that name in the working directory (a run folder
    called "x4-pixel" must not shadow the default model): "./x4-pixel" or a ``Path`` is the local one.
    """
    if not _is_plain_name(name_or_path):
        return None
    shipped = WEIGHTS_DIR / f"{name_or_path}.safetensors"
    return shipped if shipped.is_file() else None


def _weights_key(name_or_path: str | os.PathLike) -> str:
    """The string for ``name_or_path`` that keeps its meaning: a PathLike is a path, never a shipped
    name (``str(Path("./x4-pixel"))`` is ``"x4-pixel"``, which names the shipped model)."""
    key = os.fsdecode(os.fspath(name_or_path))
    if not isinstance(name_or_path, str) and not _has_separator(key):
        key = os.path.join(os.curdir, key)
    return key


def _file_version(path: Path) -> tuple[str, int, int, int]:
    """A cache key for a weights file: its absolute path, inode, modification time and size, so
    that a rewritten file (a training run's ``best.safetensors``, replaced by rename: a new inode)
    or a relative path read from another working directory is loaded afresh."""
    path = path.resolve()
    st = path.stat()
    return str(path), st.st_ino, st.st_mtime_ns, st.st_size


def _resolve(name_or_path: str | os.PathLike, task: str = "sr") -> Path:
    shipped_file = _shipped_file(name_or_path)
    if shipped_file is not None:
        return shipped_file
    p = Path(name_or_path)
    if p.suffix == ".safetensors" or p.exists() or _has_separator(os.fsdecode(os.fspath(name_or_path))):
        if p.is_dir():
            raise ValueError(
                f"weights file {str(p)!r} is a folder; expected a .safetensors file (`psr export RUN -o FILE` "
                "makes one from a training run)"
            )
        if not p.is_file():
            raise FileNotFoundError(f"weights file {str(p)!r} does not exist")
        return p
    shipped = WEIGHTS_DIR / f"{name_or_path}.safetensors"
    if not shipped.is_file():
        names = ", ".join(sorted(list_models(task=task))) or "none"
        what = "style" if task == "style" else "model"
        raise ValueError(
            f"unknown {what} {str(name_or_path)!r}; shipped {what}s: {names}, or give a path to a .safetensors file"
        )
    return shipped


def _meta_scale(meta: dict[str, Any]) -> Any:
    """The upscaling factor a weights file's metadata records (None for styles)."""
    return meta.get("scale", (meta.get("config") or {}).get("scale"))


def read_metadata(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """The ``psr`` metadata of a weights file, validated; no tensors are read."""
    from safetensors import safe_open

    path = _resolve(name_or_path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get("psr")
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise ValueError(f"weights file {str(path)!r} is corrupt, truncated or not a safetensors file: {exc}") from None
    if raw is None:
        raise ValueError(f"weights file {str(path)!r} has no psr metadata; was it written by psr.save_weights?")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"weights file {str(path)!r} has unreadable psr metadata: {exc}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"weights file {str(path)!r} has psr metadata that is not a JSON object: {raw[:80]!r}")
    if meta.get("format") != FORMAT:
        raise ValueError(f"weights file {str(path)!r} has format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def _load_checked(path: Path, task: str, config_cls: type, net_cls: type) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build ``net_cls`` from a weights file of ``task``, refusing anything damaged or mismatched."""
    from safetensors.torch import load_file

    meta = read_metadata(path)
    if meta.get("task", "sr") != task:
        kind = "super-resolution" if task == "sr" else task
        raise ValueError(f"weights file {str(path)!r} holds a {meta.get('task', 'sr')!r} model, not a {kind} model")
    try:
        cfg = config_cls.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"weights file {str(path)!r} has an invalid model config: {exc}") from None
    try:
        state = load_file(str(path))
    except Exception as exc:
        raise ValueError(f"weights file {str(path)!r} is corrupt or truncated: {exc}") from None
    model = net_cls(cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"weights file {str(path)!r} does not match its config: {exc}") from None
    for k, v in state.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise ValueError(f"weights file {str(path)!r} has non-finite values in {k!r}")
    model.metadata = meta
    model.name = meta.get("name", path.stem)
    return model, meta


def load_model(name_or_path: str | os.PathLike, *, device: str | torch.device = "cpu", fuse: bool = True) -> SRNet:
    """Load a shipped model by name (see :func:`list_models`) or a weights file by path.

    Returns an eval-mode :class:`~psr.models.SRNet` (BatchNorm folded when ``fuse``) with
    ``.metadata`` and ``.name`` attributes. Corrupt, truncated or mismatched files raise ValueError.
    """
    model, meta = _load_checked(_resolve(name_or_path), "sr", SRConfig, SRNet)
    assert isinstance(model, SRNet)
    if fuse:
        name = model.name
        model = model.fuse()  # a copy: carry the attributes over
        model.metadata, model.name = meta, name  # type: ignore[attr-defined]
    return model.eval().to(device)


def load_style_model(name_or_path: str | os.PathLike, *, device: str | torch.device = "cpu") -> StyleNet:
    """Load a shipped style (see ``list_models(task="style")``) by name or a style weights file by path.

    Returns an eval-mode :class:`~psr.models.StyleNet` with ``.metadata`` and ``.name``. Corrupt,
    truncated or mismatched files, and files of another task, raise ValueError.
    """
    model, _ = _load_checked(_resolve(name_or_path, task="style"), "style", StyleConfig, StyleNet)
    assert isinstance(model, StyleNet)
    return model.eval().to(device)


def list_models(task: str | None = "sr") -> dict[str, dict[str, Any]]:
    """Shipped models by name, each with its metadata.

    Parameters
    ----------
    task : {"sr", "style"} or None
        Only super-resolution models (the default), only style-transfer models, or all.
    """
    if task not in ("sr", "style", None):
        raise ValueError(f"task must be 'sr', 'style' or None, got {task!r}")
    out = {}
    for p in sorted(WEIGHTS_DIR.glob("*.safetensors")):
        meta = read_metadata(p)
        if task is None or meta.get("task", "sr") == task:
            out[p.stem] = meta
    return out
