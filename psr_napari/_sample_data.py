"""Sample data for the plugin: a CC0 fluorescence crop shipped here, and a photo from scikit-image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["nuclei", "chelsea", "SAMPLES_DIR"]

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
NUCLEI_CREDIT = (
    "Nuclei, 2018 Data Science Bowl: image set BBBC038v1 from the Broad Bioimage Benchmark Collection "
    "(Caicedo et al., Nature Methods 2019), CC0; 160x160 crop of stardist's img2d.tif"
)
CHELSEA_CREDIT = "Chelsea the cat, from scikit-image (skimage.data.chelsea), CC0 by Stefan van der Walt"


def nuclei() -> list[tuple[np.ndarray, dict[str, Any], str]]:
    """160 x 160 uint16 fluorescence image of nuclei (BBBC038 / DSB2018, CC0); see samples/CREDITS.md."""
    import tifffile

    data = tifffile.imread(SAMPLES_DIR / "dsb2018_nuclei_160.tif")
    return [(data, {"name": "nuclei (DSB2018)", "metadata": {"credit": NUCLEI_CREDIT}}, "image")]


def chelsea() -> list[tuple[np.ndarray, dict[str, Any], str]]:
    """Chelsea the cat, 300 x 451 RGB uint8, from ``skimage.data`` (CC0)."""
    from skimage import data

    return [(data.chelsea(), {"name": "chelsea", "rgb": True, "metadata": {"credit": CHELSEA_CREDIT}}, "image")]
