"""The shipped-weights format: round trip, metadata, and refusal of damaged files."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import psr
from psr.models import SR_SCALES
from psr.weights import FORMAT, read_metadata

from .conftest import make_tiny_model


def test_round_trip_keeps_outputs_and_metadata(tmp_path: Path) -> None:
    path = make_tiny_model(tmp_path / "m.safetensors")
    meta = read_metadata(path)
    assert meta["format"] == FORMAT and meta["scale"] == 4 and meta["config"]["channels"] == 8
    fused = psr.load_model(path)
    plain = psr.load_model(path, fuse=False)
    x = torch.rand(1, 3, 9, 7)
    torch.testing.assert_close(fused(x), plain(x), atol=1e-5, rtol=0)
    assert fused.metadata["loss"] == "pixel" and fused.name == "m"
    # The usual umask-based mode (safetensors.save_file alone would make it owner-only), no temp left.
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_shipped_models_listed_with_metadata() -> None:
    models = psr.list_models()
    for name, meta in models.items():
        assert meta["name"] == name
        assert meta["scale"] in SR_SCALES
        for key in ("loss", "degradation", "iterations", "patch", "match_histogram", "config"):
            assert key in meta, (name, key)
        assert psr.load_model(name).scale == meta["scale"]


def _header(path: Path) -> tuple[int, dict]:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return n, json.loads(raw[8 : 8 + n])


def test_truncated_file_refused(tmp_path: Path) -> None:
    path = make_tiny_model(tmp_path / "t.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt, truncated|corrupt or truncated"):
        psr.load_model(path)


def test_garbage_and_empty_files_refused(tmp_path: Path) -> None:
    p = tmp_path / "garbage.safetensors"
    p.write_bytes(b"\x00\x01not a safetensors file at all" * 10)
    with pytest.raises(ValueError, match="corrupt|not a safetensors"):
        psr.load_model(p)
    p.write_bytes(b"")
    with pytest.raises(ValueError):
        psr.load_model(p)


def test_missing_metadata_and_mismatched_tensors_refused(tmp_path: Path) -> None:
    p = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(p))
    with pytest.raises(ValueError, match="no psr metadata"):
        psr.load_model(p)
    # Metadata says 64 channels, tensors are the tiny model's 8: a shape mismatch, not a crash.
    good = make_tiny_model(tmp_path / "good.safetensors")
    from safetensors.torch import load_file

    meta = read_metadata(good)
    meta["config"]["channels"] = 64
    save_file(load_file(str(good)), str(tmp_path / "bad.safetensors"), metadata={"psr": json.dumps(meta)})
    with pytest.raises(ValueError, match="does not match"):
        psr.load_model(tmp_path / "bad.safetensors")
    meta["config"] = {"scale": 5}
    save_file(load_file(str(good)), str(tmp_path / "bad2.safetensors"), metadata={"psr": json.dumps(meta)})
    with pytest.raises(ValueError, match="invalid model config"):
        psr.load_model(tmp_path / "bad2.safetensors")
    for config in ([1, 2], "x4", None, {"scale": "4"}):
        meta["config"] = config
        save_file(load_file(str(good)), str(tmp_path / "bad3.safetensors"), metadata={"psr": json.dumps(meta)})
        with pytest.raises(ValueError, match="config"):
            psr.load_model(tmp_path / "bad3.safetensors")
    # Valid JSON that is not an object.
    for raw in ("[1, 2]", "null", "4", '"x4-pixel"'):
        save_file(load_file(str(good)), str(tmp_path / "bad4.safetensors"), metadata={"psr": raw})
        with pytest.raises(ValueError, match="not a JSON object"):
            psr.load_model(tmp_path / "bad4.safetensors")


def test_non_finite_weights_refused(tmp_path: Path) -> None:
    good = make_tiny_model(tmp_path / "good.safetensors")
    from safetensors.torch import load_file

    state = load_file(str(good))
    state["head.weight"][0, 0, 0, 0] = float("nan")
    save_file(state, str(tmp_path / "nan.safetensors"), metadata={"psr": json.dumps(read_metadata(good))})
    with pytest.raises(ValueError, match="non-finite"):
        psr.load_model(tmp_path / "nan.safetensors")


def test_unknown_name_and_missing_path() -> None:
    with pytest.raises(ValueError, match="unknown model 'x3-nothing'"):
        psr.load_model("x3-nothing")
    with pytest.raises(FileNotFoundError):
        psr.load_model("/nonexistent/dir/m.safetensors")
