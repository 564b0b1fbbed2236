"""The clinician's segmentation on scene nodes: locate, prepare, run (here or in a child process), import.

No Qt: a background segmentation is polled by its owner (the panel's ``QTimer`` calls
:meth:`BackgroundSegmentation.poll`; scripts and tests call :meth:`SegmentationLogic.wait`).
"""

from __future__ import annotations

import logging
import os
import pathlib
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from SemiSupSegLib import childprocess
from SemiSupSegLib import slicer_bridge as bridge
from SemiSupSegLib.errors import InputError

from .markups import centers_lps, set_center_lps
from .segments import import_results
from .volumes import check_volume, volume_to_image

MODULE_DIR = pathlib.Path(__file__).resolve().parents[1]  # holds SemiSupSegLib and SemiSupSegMRML


class Cancelled(Exception):
    """The user cancelled a background segmentation."""


@dataclass
class SegmentationRequest:
    """One segmentation as prepared from the scene: the image (LPS, the volume's own frame), the centre
    point, the model, the device and where to run it."""

    volume_node: object = None
    image: sitk.Image | None = None
    centers_lps: tuple = ()  # LPS points; several: the region at each, merged by the maximum (issue 19)
    model_path: str = ""
    device: str = "cpu"
    probability: bool = False
    uncertainty: bool = False
    execution: str = "in-process"
    outputs: dict = field(default_factory=dict)


def read_outputs(request: SegmentationRequest, finished: dict) -> dict:
    """Read a child segmentation's output files back into an outcome.

    Args:
        request: the request whose ``outputs`` name the files the child wrote.
        finished: the child's ``finished`` protocol event (``seconds``, ``mode``, ``precision``).

    Returns:
        ``{"label", "probability", "uncertainty", "summary", "classes"}`` (images or None, one line of text,
        the model's classes).
    """
    from SemiSupSegLib.imageio import read_image

    outcome = {
        "label": read_image(request.outputs["label"], what="segmentation"),
        "probability": None,
        "uncertainty": None,
        "summary": bridge.result_summary(
            finished.get("seconds", 0.0),
            finished.get("mode", ""),
            request.device,
            finished.get("precision", ""),
        ),
    }
    for key in ("probability", "uncertainty"):
        if key in request.outputs and os.path.exists(request.outputs[key]):
            outcome[key] = read_image(request.outputs[key], what=key)
    outcome["classes"] = _model_classes(request.model_path)
    return outcome


def _model_classes(model_path: str) -> dict:
    """The model's ``classes`` from its ``model.json`` ({} when it cannot be read: one segment)."""
    from SemiSupSegLib.errors import ModelError
    from SemiSupSegLib.model_index import read_model_json

    try:
        classes = read_model_json(model_path).get("classes")
    except ModelError:  # the segmentation is already made; naming its segments is secondary
        return {}
    return dict(classes) if isinstance(classes, dict) else {}


class BackgroundSegmentation:
    """A segmentation running in a child process (:class:`~SemiSupSegLib.childprocess.ChildProcess`)
    that prints JSON-lines progress.

    :meth:`poll` (called by the owner's timer) reports progress and, once the child ended, reads the
    result files and calls ``on_done(request, outcome, error)``.
    """

    def __init__(self, request, args, env, temp_dir, on_progress=None, on_done=None) -> None:
        self.request, self.temp_dir = request, temp_dir
        self.on_progress, self.on_done = on_progress, on_done
        self.finished: dict | None = None
        self.error: BaseException | None = None
        self.cancelled = False
        self.done = False
        self.child = childprocess.ChildProcess(args, env=env, log=self._log).start()

    @staticmethod
    def _log(line: str) -> None:
        logging.info("SemiSupSeg worker: %s", line.rstrip())

    def poll(self) -> bool:
        """Handle the events read so far; returns True while the child runs."""
        if self.done:
            return False
        running = self.child.running  # read before poll(): its events are then all in poll()'s answer
        for event in self.child.poll():
            self._handle(event)
        if not running:
            self._finish()
        return not self.done

    def _handle(self, event: dict) -> None:
        kind = event["event"]
        if kind == "progress" and self.on_progress:
            self.on_progress(event.get("stage", ""), event.get("fraction"))
        elif kind == "finished":
            self.finished = event
        elif kind == "error" and self.error is None:
            self.error = InputError(event.get("message", "the segmentation process failed"))

    def _finish(self) -> None:
        outcome, error = None, self.error
        try:
            if self.cancelled:
                error = Cancelled()
            elif error is None and self.finished is None:
                error = RuntimeError(
                    f"the segmentation process ended without a result (exit status {self.child.returncode})"
                )
            elif error is None:
                outcome = read_outputs(self.request, self.finished)
        except Exception as exc:  # noqa: BLE001 - handed to on_done, which shows it
            error = exc
        finally:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        self.done = True
        if self.on_done:
            self.on_done(self.request, outcome, error)

    def cancel(self) -> None:
        """Kill the child's whole process tree; the next :meth:`poll` reports :class:`Cancelled`."""
        self.cancelled = True
        self.child.stop(grace=0)

    def is_running(self) -> bool:
        return not self.done


class SegmentationLogic:
    """Converts between scene nodes and the engine's images and calls the engine.

    Args:
        log: receives one status line at a time (default: :func:`logging.info`).
    """

    def __init__(self, log: Callable[[str], None] | None = None) -> None:
        self.log = log or logging.info
        self._models: dict = {}
        self.job: BackgroundSegmentation | None = None

    # --- locate -------------------------------------------------------------------------------------
    @staticmethod
    def resolve_device(choice: str) -> str:
        """ "Auto", "GPU", "GPU i: ..." (:func:`~SemiSupSegLib.slicer_bridge.device_choices`) or "CPU" ->
        the torch device string (imports torch)."""
        import torch

        return bridge.choose_device(choice, torch.cuda.is_available(), torch.cuda.device_count())

    def locate(self, volume_node, point_node, locator_folder, device_choice: str = "Auto"):
        """Run the locator (segmentation or DQN) and make its point the point list's only point.

        Args:
            volume_node: the volume to search.
            point_node: the point list that receives the point.
            locator_folder: a locator folder (or a folder of locators; see ``resolve_locator_folder``).
            device_choice: "Auto", "GPU" or "CPU".

        Returns:
            The engine's ``LocateResult`` (``point_lps`` in the volume's own frame, ``confidence``,
            ``low_confidence``, ``q_value``, ``seconds``).
        """
        from SemiSupSegLib.locator import load_locator, locate

        if point_node is None:
            raise InputError("choose or create a point list for the centre point first")
        image = volume_to_image(volume_node)
        folder = bridge.resolve_locator_folder(locator_folder)
        device = self.resolve_device(device_choice)
        self.log(f"Finding the instrument with locator '{folder.name}' on {device}...")
        found = locate(load_locator(folder, device), image)
        set_center_lps(point_node, volume_node, found.point_lps)
        self.log(f"Instrument found in {found.seconds:.1f} s")
        return found

    # --- segment ------------------------------------------------------------------------------------
    def prepare(
        self,
        volume_node,
        point_node,
        model_path: str,
        device_choice: str = "Auto",
        *,
        probability: bool = False,
        uncertainty: bool = False,
        force_background: bool = False,
    ) -> SegmentationRequest:
        """Everything a segmentation needs from the scene, checked (3D volume, model, point inside).

        Returns:
            The :class:`SegmentationRequest`; ``execution`` is "in-process" or "background".
        """
        check_volume(volume_node)  # named before the point is read in the volume's frame
        return self.prepare_at(
            volume_node,
            centers_lps(point_node, volume_node),
            model_path,
            device_choice,
            probability=probability,
            uncertainty=uncertainty,
            force_background=force_background,
        )

    def prepare_at(
        self,
        volume_node,
        centers: tuple | list | None,
        model_path: str,
        device_choice: str = "Auto",
        *,
        probability: bool = False,
        uncertainty: bool = False,
        force_background: bool = False,
    ) -> SegmentationRequest:
        """:meth:`prepare` for centres given as LPS points in the volume's own frame: one ``(x, y, z)``,
        a list of them, or None / empty for the whole volume."""
        from SemiSupSegLib.imageio import check_point_inside
        from SemiSupSegLib.model_store import resolve_model

        image = volume_to_image(volume_node)
        if not model_path:
            raise InputError("no model is chosen; pick one in the Model section (or choose its folder)")
        model_folder = resolve_model(model_path)
        points = _as_points(centers)
        for i, point in enumerate(points):
            what = "the centre point" if len(points) == 1 else f"centre point {i + 1}"
            check_point_inside(image, point, what=what)
        voxels = int(np.prod(image.GetSize()))
        execution = bridge.choose_execution(voxels, bool(points), 1 if uncertainty else 0, force_background)
        return SegmentationRequest(
            volume_node=volume_node,
            image=image,
            centers_lps=points,
            model_path=str(model_folder),
            device=self.resolve_device(device_choice),
            probability=probability,
            uncertainty=uncertainty,
            execution=execution,
        )

    def _load_model(self, model_path: str, device: str):
        from SemiSupSegLib.model_store import load_model

        weights = pathlib.Path(model_path) / "weights.pt"
        key = (str(model_path), device, weights.stat().st_mtime if weights.exists() else 0)
        if key not in self._models:
            self._models.clear()  # keep one model in memory
            self._models[key] = load_model(model_path, device)
        return self._models[key]

    def loaded_model(self, model_path: str, device_choice: str = "Auto"):
        """The model, loaded once and kept for the next call (segmentation, ranking, refine)."""
        from SemiSupSegLib.model_store import resolve_model

        return self._load_model(str(resolve_model(model_path)), self.resolve_device(device_choice))

    def run(self, request: SegmentationRequest, progress=None) -> dict:
        """Segment in this process.

        Returns:
            The outcome for :func:`~SemiSupSegMRML.segments.import_results` (plus ``summary``).
        """
        from SemiSupSegLib.inference import DEFAULT_UNCERTAINTY, segment

        self.log(f"Segmenting with '{pathlib.Path(request.model_path).name}' on {request.device}...")
        model = self._load_model(request.model_path, request.device)
        result = segment(
            model,
            request.image,
            centers=request.centers_lps or None,
            uncertainty_method=DEFAULT_UNCERTAINTY if request.uncertainty else None,
            progress=progress,
        )
        return {
            "label": result.label,
            "probability": result.probability if request.probability else None,
            "uncertainty": result.uncertainty,
            "summary": bridge.result_summary(result.seconds, result.mode, request.device, result.precision),
            "classes": dict(model.meta.get("classes") or {}),
        }

    @staticmethod
    def python_executable() -> str:
        """Slicer's ``PythonSlicer`` when on the PATH, else this interpreter."""
        return shutil.which("PythonSlicer") or shutil.which("PythonSlicer.exe") or sys.executable

    def start_background(self, request: SegmentationRequest, on_progress=None, on_done=None):
        """Start the child process; the owner polls the returned :class:`BackgroundSegmentation`."""
        if self.job is not None and self.job.is_running():
            raise InputError("a segmentation is already running; wait for it or cancel it")
        temp_dir = tempfile.mkdtemp(prefix="SemiSupSeg-")
        input_path = os.path.join(temp_dir, "input.nrrd")
        sitk.WriteImage(request.image, input_path, False)
        request.outputs = {"label": os.path.join(temp_dir, "label.nrrd")}
        for key in ("probability", "uncertainty"):
            if getattr(request, key):
                request.outputs[key] = os.path.join(temp_dir, f"{key}.nrrd")
        args = bridge.segment_command(
            self.python_executable(),
            model=request.model_path,
            input_path=input_path,
            output_path=request.outputs["label"],
            centers_lps=request.centers_lps,
            probability_path=request.outputs.get("probability"),
            uncertainty_path=request.outputs.get("uncertainty"),
            mc_samples=0,  # the default estimator's own passes
            device=request.device,
        )
        env = os.environ.copy()
        env["PYTHONPATH"] = os.pathsep.join(x for x in (str(MODULE_DIR), env.get("PYTHONPATH", "")) if x)
        if request.device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = "-1"
        self.log(f"Segmenting in a background process with '{pathlib.Path(request.model_path).name}'...")
        logging.info("SemiSupSeg worker command: %s", args)
        self.job = BackgroundSegmentation(request, args, env, temp_dir, on_progress, on_done)
        return self.job

    @staticmethod
    def wait(job: BackgroundSegmentation, timeout_seconds: float = 600, process_events=None) -> bool:
        """Poll ``job`` until it ends (scripts and tests); False on timeout (it is then cancelled)."""
        deadline = time.monotonic() + timeout_seconds
        while job.poll():
            if time.monotonic() > deadline:
                job.cancel()
                return False
            if process_events:
                process_events()
            time.sleep(0.02)
        return True

    def import_results(
        self, request, outcome, segmentation_node=None, probability_node=None, uncertainty_node=None
    ) -> dict:
        """Put an outcome into the scene (see :func:`~SemiSupSegMRML.segments.import_results`)."""
        nodes = import_results(
            outcome, request.volume_node, segmentation_node, probability_node, uncertainty_node
        )
        self.log(outcome["summary"])
        return nodes

    def segment(
        self,
        volume_node,
        point_node,
        model_path,
        device_choice="Auto",
        *,
        probability=False,
        uncertainty=False,
        segmentation_node=None,
        background=False,
        timeout_seconds=600,
    ):
        """Prepare, run and import in one blocking call (scripts and tests).

        Returns:
            The nodes of :meth:`import_results` plus ``execution`` and ``summary``.
        """
        request = self.prepare(
            volume_node,
            point_node,
            model_path,
            device_choice,
            probability=probability,
            uncertainty=uncertainty,
            force_background=background,
        )
        if request.execution == "in-process":
            outcome = self.run(request)
        else:
            done: dict = {}
            job = self.start_background(
                request, on_done=lambda req, out, err: done.update(outcome=out, error=err)
            )
            if not self.wait(job, timeout_seconds):
                raise InputError(
                    f"the background segmentation took more than {timeout_seconds} s and was stopped"
                )
            if done.get("error") is not None:
                raise done["error"]
            outcome = done["outcome"]
        nodes = self.import_results(request, outcome, segmentation_node)
        return {**nodes, "execution": request.execution, "summary": outcome["summary"]}


def _as_points(centers) -> tuple:
    """``centers`` as a tuple of ``(x, y, z)`` float points: one point, a list of points, or None."""
    if centers is None or len(centers) == 0:
        return ()
    if np.ndim(centers) == 1:
        centers = [centers]
    return tuple(tuple(float(v) for v in point) for point in centers)
