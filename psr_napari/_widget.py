"""The "Upscale" dock widget (plugin "psr super-resolution"): pick an image layer and settings, upscale it in a worker thread.

A magicgui ``Container``: importable and constructible without a running viewer (tests build it
with a plain :class:`napari.components.ViewerModel`). The work runs in napari's ``thread_worker``;
progress goes to a bar in the widget and to napari's activity dock, either of which can cancel;
errors become viewer notifications, never tracebacks.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from magicgui.widgets import ComboBox, Container, Label, ProgressBar, PushButton, SpinBox
from superqt.utils import ensure_main_thread

from ._layer import MAX_DISPLAY_SIZE, UpscaleJob, is_perceptual, plan_upscale

if TYPE_CHECKING:
    import napari
    import napari.layers

__all__ = ["UpscaleWidget"]

_log = logging.getLogger(__name__)

BICUBIC = "bicubic"
_HISTOGRAM = {"model default": None, "on": True, "off": False}


class _Cancelled(Exception):
    """Raised from psr's progress callback to stop the upscaling between two tiles."""


def _shipped_models() -> dict[str, dict[str, Any]]:
    import psr

    try:
        return psr.list_models()
    except (OSError, ValueError) as exc:  # a broken weights file must not take the widget down
        _log.warning("psr: cannot list shipped models: %s", exc)
        return {}


def _devices() -> list[str]:
    import torch

    out = ["auto", "cpu"]
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        out += ["cuda"] if n == 1 else [f"cuda:{i}" for i in range(n)]
    return out


class _JobRunner:
    """Worker-thread plumbing shared by the psr dock widgets (upscale, stylize).

    The widget (a magicgui ``Container`` after this class in its bases) provides ``_viewer``,
    ``_plan``, ``_update_note`` and ``_added_message``, builds itself with :meth:`_assemble`, and
    names its work in ``_VERB`` and ``_MEMORY_HINT``; it plans a job with :meth:`_plan_or_report`
    and runs it with :meth:`_start_worker`.
    """

    _VERB = "upscaling"
    _MEMORY_HINT = "not enough memory for this output; try a smaller scale or layer"

    def _assemble(self, inputs: tuple[Any, ...], run_text: str) -> None:
        """Lay out ``inputs`` above the note, progress bar, run/cancel buttons and status line, and
        connect the buttons and the viewer's layer events."""
        self._inputs = inputs
        self._note = Label(label="")
        self._progress = ProgressBar(label="progress", min=0, max=1, value=0)
        self._run = PushButton(text=run_text)
        self._cancel = PushButton(text="Cancel", enabled=False)
        self._status = Label(label="", value="")
        buttons = Container(widgets=[self._run, self._cancel], layout="horizontal", labels=False)
        super().__init__(widgets=[*inputs, self._note, self._progress, buttons, self._status])  # type: ignore[call-arg]
        for lab in (self._note, self._status):
            if hasattr(lab.native, "setWordWrap"):
                lab.native.setWordWrap(True)
        self._worker: Any = None
        self._job: Any = None
        self._pbar: Any = None
        self._cancel_event = threading.Event()
        self._started = 0.0
        # napari also connects these when it docks the widget; connecting here keeps the layer
        # list current on a bare ViewerModel too (napari holds bound methods weakly).
        layer_events = self._viewer.layers.events
        for name in ("inserted", "removed", "reordered", "renamed"):
            emitter = getattr(layer_events, name, None)
            if emitter is not None:
                emitter.connect(self.reset_choices)
        self._run.changed.connect(self._on_run)
        self._cancel.changed.connect(self._on_cancel)
        # Closing the viewer (or the dock) deletes the Qt widgets while a job may still run: stop
        # it at the next tile, and let the worker's late signals find a dead widget (see _alive),
        # since PyQt6 aborts the process on an exception in a slot.
        self.native.destroyed.connect(self._on_destroyed)

    def _on_destroyed(self, *_: Any) -> None:
        self._cancel_event.set()

    def _alive(self) -> bool:
        """Whether the widget's Qt objects still exist (not deleted with a closed viewer)."""
        try:
            self._progress.native.objectName()
            return True
        except RuntimeError:  # "wrapped C/C++ object ... has been deleted"
            return False

    def _set_running(self, running: bool) -> None:
        for w in (*self._inputs, self._run):
            w.enabled = not running
        self._cancel.enabled = running

    def _plan_or_report(self) -> Any:
        """The widget's job, or None after telling the user why there is none."""
        from napari.utils.notifications import show_error

        try:
            return self._plan()
        except (TypeError, ValueError) as exc:
            self._status.value = str(exc)
            show_error(f"psr: {exc}")
            return None

    def _start_worker(self, job: Any, *, desc: str, status: str) -> None:
        """Run ``job`` in a worker thread with napari progress ``desc`` and the status line ``status``."""
        from napari.qt.threading import create_worker
        from napari.utils import cancelable_progress

        self._job = job
        self._cancel_event = threading.Event()
        self._pbar = cancelable_progress(total=job.steps, desc=desc)
        self._progress.max = max(1, job.steps)
        self._progress.value = 0
        self._status.value = status
        self._set_running(True)
        self._started = time.perf_counter()

        cancel, pbar = self._cancel_event, self._pbar
        report = self._show_progress
        verb, memory_hint = self._VERB, self._MEMORY_HINT
        worker_ref: list[Any] = []

        def work() -> tuple[str, Any, Any]:
            def progress(done: int, total: int) -> None:
                report(pbar, done, total)
                # Our Cancel button, the activity dock's, or napari quitting the worker on close.
                if cancel.is_set() or pbar.is_canceled or (worker_ref and worker_ref[0].abort_requested):
                    raise _Cancelled

            try:
                out, info = job.run(progress)
            except _Cancelled:
                return "cancelled", None, None
            except MemoryError:
                return "error", memory_hint, None
            except (TypeError, ValueError, FileNotFoundError, RuntimeError) as exc:
                return "error", str(exc), None
            except Exception as exc:  # anything else is a bug, but must not take the viewer down
                _log.exception("psr: %s failed", verb)
                return "error", f"{type(exc).__name__}: {exc}", None
            return "ok", out, info

        self._worker = create_worker(work, _start_thread=False)
        worker_ref.append(self._worker)
        self._worker.returned.connect(self._on_returned)
        self._worker.finished.connect(self._on_finished)
        self._worker.start()

    def _on_cancel(self, *_: Any) -> None:
        if self._worker is not None:
            self._cancel_event.set()
            self._status.value = "cancelling after the current tile..."

    # Called from the worker thread; Qt widgets may only be touched from the main thread, so the
    # call is queued there.
    @ensure_main_thread
    def _show_progress(self, pbar: Any, done: int, total: int) -> None:
        if pbar is not self._pbar or pbar is None or not self._alive():  # a finished run or a closed viewer
            return
        self._progress.max = max(1, total)
        self._progress.value = min(done, total)
        if pbar.total != total:
            pbar.total = total
        pbar.update(done - pbar.n)

    def _on_returned(self, result: tuple[str, Any, Any]) -> None:
        from napari.utils.notifications import show_error, show_info

        status, out, info = result
        job = self._job
        if not self._alive():  # the viewer was closed during the run: nothing to show it in
            return
        if status == "ok" and job is not None:
            try:
                layer = job.make_layer(out, info)
                self._viewer.add_layer(layer)
            except Exception as exc:  # e.g. napari refusing the data
                _log.exception("psr: adding the result layer failed")
                self._status.value = f"error: {exc}"
                show_error(f"psr: could not add the result layer: {exc}")
                return
            self._status.value = self._added_message(layer, job, time.perf_counter() - self._started)
            show_info(f"psr: {self._status.value}")
        elif status == "cancelled":
            self._status.value = "cancelled"
            show_info(f"psr: {self._VERB} cancelled")
        else:
            self._status.value = f"error: {out}"
            show_error(f"psr: {out}")

    def _on_finished(self) -> None:
        if self._pbar is not None:
            self._pbar.close()
        self._pbar = None
        self._worker = None
        self._job = None
        if not self._alive():
            return
        self._set_running(False)
        self._update_note_keep_status()

    def _update_note_keep_status(self) -> None:
        status = self._status.value
        self._update_note()
        self._status.value = status

    def wait(self, timeout: float = 60.0) -> None:
        """Block (processing Qt events) until the running job ends; for scripts and tests."""
        from qtpy.QtWidgets import QApplication

        end = time.monotonic() + timeout
        while self._worker is not None:
            if time.monotonic() > end:
                raise TimeoutError(f"psr: {self._VERB} still running after {timeout} s")
            QApplication.processEvents()
            time.sleep(0.01)


def _model_kind(name: Any) -> str | None:
    """``"pixel"`` for x4-pixel, ``"perceptual"`` for x8-perceptual, ``"bicubic"`` for bicubic."""
    if not isinstance(name, str):
        return None
    head, _, kind = name.partition("-")
    return kind if kind and head[:1] == "x" and head[1:].isdigit() else name


class UpscaleWidget(_JobRunner, Container):
    """Dock widget: upscale an image layer with psr and add the result to the viewer.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer or napari.components.ViewerModel
        The viewer whose image layers are offered and which receives the result.
    """

    def __init__(self, napari_viewer: napari.viewer.ViewerModel) -> None:
        self._viewer = napari_viewer
        self._models: dict[str, dict[str, Any]] = _shipped_models()
        self._layer = ComboBox(label="image", choices=self._layer_choices, nullable=True)
        self._scale = ComboBox(label="scale", choices=list(range(2, 9)), value=4)
        self._model = ComboBox(label="model", choices=self._model_choices)
        self._histogram = ComboBox(label="match histogram", choices=list(_HISTOGRAM), value="model default")
        self._tile = SpinBox(label="tile size", min=32, max=4096, step=32, value=256)
        self._device = ComboBox(label="device", choices=_devices(), value="auto")
        self._precision = ComboBox(label="precision", choices=["float32", "bfloat16"], value="float32")
        inputs = (self._layer, self._scale, self._model, self._histogram, self._tile, self._device, self._precision)
        self._assemble(inputs, "Upscale")
        self._confirmed_large = False  # the user clicked once past the too-large warning

        self._choosing_model = False
        self._default_model()
        self._wanted_kind = _model_kind(self._model.value)  # updated when the user picks a model
        self._select_active_layer()
        self._model.changed.connect(self._on_model)
        self._scale.changed.connect(self._on_scale)
        for w in (self._layer, self._model, self._tile):
            w.changed.connect(self._update_note)
        self._update_note()

    # ------------------------------------------------------------------ choices

    def _layer_choices(self, _widget: Any = None) -> list[tuple[str, napari.layers.Image]]:
        from napari.layers import Image

        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Image)]

    def _model_choices(self, _widget: Any = None) -> list[str]:
        scale = self._scale.value if hasattr(self, "_scale") else 4
        names = [n for n, m in self._models.items() if m.get("scale") == scale]
        return [*names, BICUBIC]

    def reset_choices(self, *_: Any) -> None:
        """Refresh the layer and model lists (napari calls this when layers change)."""
        self._models = _shipped_models()
        self._choosing_model = True  # a model the refreshed list forces is not the user's choice
        try:
            super().reset_choices()
        finally:
            self._choosing_model = False
        if self._layer.value is None:  # e.g. opened before any image: take the first one that appears
            self._select_active_layer()
        self._update_note()

    def _default_model(self) -> None:
        choices = self._model_choices()
        # Prefer the plain pixel-loss model: the one whose numbers can be trusted.
        preferred = [c for c in choices if c.endswith("-pixel")] or choices
        self._model.value = preferred[0]

    def _select_active_layer(self) -> None:
        from napari.layers import Image

        active = self._viewer.layers.selection.active
        images = [layer for _, layer in self._layer_choices()]
        if isinstance(active, Image):
            self._layer.value = active
        elif images:
            self._layer.value = images[-1]  # the topmost image layer

    def _on_model(self, *_: Any) -> None:
        if not self._choosing_model:  # the user's choice, not one made for a new scale
            self._wanted_kind = _model_kind(self._model.value)

    def _on_scale(self, *_: Any) -> None:
        # Keep the kind of model the user chose last (x4-perceptual -> x8-perceptual; bicubic stays
        # bicubic) where the new scale has it, else the default (the pixel-loss model); never
        # whatever reset_choices leaves first in the list.
        self._choosing_model = True
        try:
            self._model.reset_choices()
            same = [c for c in self._model_choices() if _model_kind(c) == self._wanted_kind]
            if same:
                self._model.value = same[0]
            else:
                self._default_model()
        finally:
            self._choosing_model = False
        self._update_note()

    # ------------------------------------------------------------------ state

    def _plan(self) -> UpscaleJob:
        layer = self._layer.value
        if layer is None:
            raise ValueError("no image layer: open or add an image first")
        return plan_upscale(
            layer,
            self._scale.value,
            model=self._model.value,
            match_histogram=_HISTOGRAM[self._histogram.value],
            tile=int(self._tile.value),
            device=self._device.value,
            precision=self._precision.value,
        )

    def _update_note(self, *_: Any) -> None:
        """Output size, and the warnings a user should read before clicking Upscale."""
        self._confirmed_large = False
        self._run.text = "Upscale"
        lines = []
        try:
            job = self._plan()
        except (TypeError, ValueError) as exc:
            lines.append(str(exc))
            job = None
        if job is not None:
            h, w = job.output_plane
            lines.append(f"output: {h} x {w} px" + (f", {job.planes} planes" if job.planes > 1 else ""))
            if job.too_large:
                lines.append(
                    f"Warning: larger than napari can display ({MAX_DISPLAY_SIZE} px on a side); "
                    "it will be shown downsampled."
                )
        model = self._model.value or ""
        if is_perceptual(model, self._models.get(model)):
            lines.append(f"{model} invents plausible detail: look, but do not measure on it.")
        self._note.value = "\n".join(lines)

    # ------------------------------------------------------------------ actions

    def _on_run(self, *_: Any) -> None:
        from napari.utils.notifications import show_warning

        if self._worker is not None:
            return
        job = self._plan_or_report()
        if job is None:
            return
        if job.too_large and not self._confirmed_large:
            h, w = job.output_plane
            msg = (
                f"psr: the result would be {h} x {w} px per plane, larger than napari can display "
                f"({MAX_DISPLAY_SIZE} px on a side). Click 'Upscale anyway' to make it."
            )
            show_warning(msg)
            self._status.value = msg
            self._confirmed_large = True
            self._run.text = "Upscale anyway"
            return

        self._start_worker(
            job,
            desc=f"psr x{job.scale}: {job.source_name}",
            status=f"upscaling {job.source_name!r} x{job.scale} with {self._model.value}...",
        )

    def _added_message(self, layer: Any, job: UpscaleJob, seconds: float) -> str:
        h, w = job.output_plane
        return f"added {layer.name!r} ({h} x {w} px) in {seconds:.1f} s"
