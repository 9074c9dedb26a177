"""The "Stylize" dock widget (plugin "psr super-resolution"): real-time style transfer of an image layer in a worker thread.

Built like the "Upscale" widget (:mod:`psr_napari._widget`): a magicgui ``Container`` usable on a
plain :class:`napari.components.ViewerModel`; the work runs in napari's ``thread_worker``; progress
goes to a bar here and to napari's activity dock, either of which can cancel; errors become viewer
notifications.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSlider,
    SpinBox,
)

from ._style import StylizeJob, plan_stylize
from ._widget import _devices, _JobRunner

if TYPE_CHECKING:
    import napari

__all__ = ["StylizeWidget"]

_log = logging.getLogger(__name__)
FROM_FILE = "weights file..."


def _shipped_styles() -> dict[str, dict[str, Any]]:
    import psr

    try:
        return psr.list_models(task="style")
    except (OSError, ValueError) as exc:  # a broken weights file must not take the widget down
        _log.warning("psr: cannot list shipped styles: %s", exc)
        return {}


class StylizeWidget(_JobRunner, Container):
    """Dock widget: stylise an image layer with a psr style network and add the result to the viewer.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer or napari.components.ViewerModel
        The viewer whose image layers are offered and which receives the result.
    """

    _VERB = "stylising"
    _MEMORY_HINT = "not enough memory for this layer; try a smaller tile or layer"

    def __init__(self, napari_viewer: napari.viewer.ViewerModel) -> None:
        self._viewer = napari_viewer
        self._styles = _shipped_styles()
        self._layer = ComboBox(label="image", choices=self._layer_choices, nullable=True)
        self._style = ComboBox(label="style", choices=self._style_choices)
        self._file = FileEdit(label="weights file", mode="r", filter="*.safetensors", visible=False)
        self._strength = FloatSlider(label="strength", min=0.0, max=1.0, step=0.05, value=1.0)
        self._preserve = CheckBox(text="preserve colours (luminance only)", value=False)
        self._tile = SpinBox(label="tile size", min=64, max=4096, step=64, value=512)
        self._device = ComboBox(label="device", choices=_devices(), value="auto")
        inputs = (self._layer, self._style, self._file, self._strength, self._preserve, self._tile, self._device)
        self._assemble(inputs, "Stylize")
        self._select_active_layer()
        for w in (self._layer, self._style, self._file, self._tile):
            w.changed.connect(self._update_note)
        self._update_note()

    # ------------------------------------------------------------------ choices

    def _layer_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        from napari.layers import Image

        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Image)]

    def _style_choices(self, _widget: Any = None) -> list[str]:
        styles = getattr(self, "_styles", {})
        return [*styles, FROM_FILE]

    def reset_choices(self, *_: Any) -> None:
        """Refresh the layer and style lists (napari calls this when layers change)."""
        self._styles = _shipped_styles()
        super().reset_choices()
        if self._layer.value is None:  # e.g. opened before any image: take the first one that appears
            self._select_active_layer()
        self._update_note()

    def _select_active_layer(self) -> None:
        from napari.layers import Image

        active = self._viewer.layers.selection.active
        images = [layer for _, layer in self._layer_choices()]
        if isinstance(active, Image):
            self._layer.value = active
        elif images:
            self._layer.value = images[-1]

    def _chosen_style(self) -> str | Path:
        if self._style.value == FROM_FILE:
            path = Path(self._file.value)
            if not path.is_file():
                hint = "" if self._styles else " (no styles are shipped yet: train one with `psr train --task style`)"
                raise ValueError(f"choose a style weights file (.safetensors){hint}")
            return path
        return str(self._style.value)

    # ------------------------------------------------------------------ state

    def _plan(self) -> StylizeJob:
        layer = self._layer.value
        if layer is None:
            raise ValueError("no image layer: open or add an image first")
        return plan_stylize(
            layer,
            self._chosen_style(),
            strength=float(self._strength.value),
            preserve_color=bool(self._preserve.value),
            tile=int(self._tile.value),
            device=self._device.value,
        )

    def _update_note(self, *_: Any) -> None:
        self._file.visible = self._style.value == FROM_FILE
        try:
            job = self._plan()
        except (TypeError, ValueError) as exc:
            self._note.value = str(exc)
            return
        h, w = job.plane
        self._note.value = f"output: {h} x {w} px" + (f", {job.planes} planes" if job.planes > 1 else "")

    # ------------------------------------------------------------------ actions

    def _on_run(self, *_: Any) -> None:
        if self._worker is not None:
            return
        job = self._plan_or_report()
        if job is None:
            return
        self._start_worker(job, desc=f"psr stylize: {job.source_name}", status=f"stylising {job.source_name!r}...")

    def _added_message(self, layer: Any, job: StylizeJob, seconds: float) -> str:
        return f"added {layer.name!r} in {seconds:.1f} s"
