from __future__ import annotations

# Import triton (if torch ships it) before any napari viewer exists: importing it after a Mesa GL
# context is created segfaults the process, and some tests import torchvision, which loads it.
try:  # noqa: SIM105
    import triton  # noqa: F401
except ImportError:
    pass

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from psr.data import default_shared_dir
from psr.models import SRConfig, SRNet, StyleConfig, StyleNet, _InstanceNorm
from psr.weights import save_weights

SHARED = default_shared_dir()
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]


@pytest.fixture
def rng() -> np.random.Generator:
    # Fresh random inputs every run; the seed is printed on failure through the test id if needed.
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"numpy seed {seed}")
    return np.random.default_rng(seed)


def make_tiny_model(path: Path, scale: int = 4, match_histogram: bool = False, seed: int = 0) -> Path:
    """A small random SRNet with non-trivial BN statistics, saved in the shipped format."""
    torch.manual_seed(seed)
    model = SRNet(SRConfig(scale=scale, channels=8, num_blocks=1))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
        torch.nn.init.normal_(model.tail.weight, std=0.05)
    save_weights(path, model, {"name": path.stem, "loss": "pixel", "match_histogram": match_histogram})
    return path


def random_style_net(cfg: StyleConfig, seed: int = 0) -> StyleNet:
    """A StyleNet whose norms have non-trivial affine parameters (and BN statistics), in eval mode."""
    torch.manual_seed(seed)
    net = StyleNet(cfg)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (_InstanceNorm, torch.nn.BatchNorm2d)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("weights") / "tiny-x4.safetensors")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "data").is_dir():
        pytest.skip(f"shared data not found at {SHARED}")
    return SHARED


def write_png16(path: Path, a: np.ndarray, colour: int) -> None:
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit colour PNGs)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    h, w = a.shape[:2]
    raw = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )
