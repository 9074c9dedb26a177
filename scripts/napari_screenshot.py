"""Screenshot of the "Upscale (psr)" widget next to an upscaled microscopy layer, for the README.

Opens a napari viewer, loads the plugin's nuclei sample (CC0), docks the widget from the plugin's
manifest, upscales the sample x4 through the widget (the shipped ``x4-pixel`` model when there is
one, else bicubic), shows input and result side by side in napari's grid mode, and saves the window.

Needs a display; on a headless machine run it under a virtual X server:

    xvfb-run -a python scripts/napari_screenshot.py            # writes docs/napari_screenshot.png
    xvfb-run -a python scripts/napari_screenshot.py --model path/to/weights.safetensors -o shot.png
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "docs" / "napari_screenshot.png")
    parser.add_argument(
        "--model", default=None, help="model for the widget (default: x4-pixel if shipped, else bicubic)"
    )
    parser.add_argument("--size", type=int, nargs=2, default=(1500, 820), metavar=("W", "H"), help="window size")
    args = parser.parse_args(argv)
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        parser.error("no display: run under a virtual X server, e.g. `xvfb-run -a python scripts/napari_screenshot.py`")

    import napari
    from qtpy.QtWidgets import QApplication

    import psr

    model = args.model or ("x4-pixel" if "x4-pixel" in psr.list_models() else "bicubic")
    viewer = napari.Viewer(title="psr in napari", show=True)
    viewer.window.resize(*args.size)
    viewer.open_sample("psr", "nuclei")
    src = viewer.layers[0]
    src.scale = (0.5, 0.5)  # a physical pixel size, to show the result keeps the geometry
    _, widget = viewer.window.add_plugin_dock_widget("psr", "Upscale")
    if model not in widget._model.choices:  # a weights file given by path
        widget._model.choices = [*widget._model.choices, model]
    widget._model.value = model
    widget._scale.value = 4
    widget._run.native.click()
    widget.wait(600)
    if len(viewer.layers) != 2:
        print(f"upscaling failed: {widget._status.value}", file=sys.stderr)
        return 1
    out = viewer.layers[1]
    # Side by side with the same physical extent: the input's 160 pixels against the result's 640.
    grid = viewer.canvas.grid if hasattr(viewer, "canvas") else viewer.grid  # moved in napari 0.9
    grid.enabled = True
    grid.shape = (1, 2)
    grid.spacing = 0.02
    viewer.layers.selection.active = out
    viewer.reset_view()
    for _ in range(20):
        QApplication.processEvents()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(args.output), canvas_only=False, flash=False)
    print(f"wrote {args.output} (model {model}: {out.name}, {out.data.shape[1]} x {out.data.shape[0]} px)")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
