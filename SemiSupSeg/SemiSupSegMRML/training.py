"""The training panel's logic: start, poll and stop the child processes, and adopt the new model.

Every child is ``semisupseg <command> --progress json`` run by an injected process factory (default:
:class:`SemiSupSegLib.childprocess.ChildProcess`); its protocol events update a
:class:`SemiSupSegLib.train_process.RunState` per job. No Qt: the panel's timer calls :meth:`poll`.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from collections.abc import Callable

from SemiSupSegLib import childprocess, model_index
from SemiSupSegLib import train_process as engine

# The panel's choice, which differs from ``semisupseg train``'s default (``TrainConfig.method``): the
# panel offers the semi-supervised method first. Every other training default is TrainConfig's.
PANEL_METHOD = "dual-unet"
# Listed before torch is installed (the real list and descriptions come from the method registry).
FALLBACK_METHODS = [
    {"name": "dual-unet", "description": "(install the dependencies to see the descriptions)"},
    {"name": "mean-teacher", "description": ""},
    {"name": "supervised", "description": ""},
    {"name": "ua-mt", "description": ""},
]
LOGGED_EVENTS = ("started", "checkpoint", "finished", "cancelled", "error")


def default_process_factory(args, env):
    """The real child: a ``ChildProcess`` (own process group, reader threads; stopped as a tree)."""
    return childprocess.ChildProcess(args, env=env, log=lambda line: logging.info(f"[training] {line}"))


def methods() -> list[dict]:
    """The engine's method registry (name + one-line description); imports torch, so call it late."""
    try:
        from SemiSupSegLib.methods import describe_methods

        return describe_methods()
    except ImportError:
        logging.warning("SemiSupSegTraining: torch is not installed yet; listing the known methods")
        return list(FALLBACK_METHODS)


def path_or_empty(path) -> str:
    """``str(path)``, with None and the parameter node's empty path (".") as ""."""
    text = str(path) if path is not None else ""
    return "" if text in ("", ".") else text


class Job:
    """One child process (training, locator training, estimate or comparison) and its run state."""

    def __init__(self, kind: str, process, state) -> None:
        self.kind = kind
        self.process = process
        self.state = state
        self.ended = False
        self.reported = False  # the panel has shown how it ended


class TrainingLogic:
    """Starts, polls and stops the training processes; usable from scripts.

    Args:
        process_factory: ``(args, env) -> process`` with ``start()``, ``poll()`` (new protocol events),
            ``running``, ``returncode``, ``stderr_tail`` and ``request_stop(grace)``.
        on_models_changed: called after a new model or a new default (the segmentation panel's
            public ``refreshModels``).
    """

    def __init__(self, process_factory=None, on_models_changed: Callable[[], None] | None = None) -> None:
        self.process_factory = process_factory or default_process_factory
        self.on_models_changed = on_models_changed
        self.jobs: dict[str, Job] = {}  # "train", "tool", "suggest" -> Job
        self.log: Callable[[str], None] | None = None

    @staticmethod
    def python_executable() -> str:
        """Slicer's ``PythonSlicer`` (on the PATH inside Slicer), else this interpreter."""
        return shutil.which("PythonSlicer") or sys.executable

    # --- data -------------------------------------------------------------------------------------
    @staticmethod
    def labelled_case_names(pool: str) -> list[str]:
        """Names of the pool's labelled cases (for the validation choice); [] without a pool."""
        if not path_or_empty(pool) or not os.path.isfile(pool):
            return []
        from SemiSupSegLib.dataset import load_dataset

        return [c.name for c in load_dataset(pool, validate=False).training]

    @staticmethod
    def data_summary(pool, unlabeled_folders=(), validation=None, check_images=True):
        """The engine's :class:`~SemiSupSegLib.train_process.DataSummary` of the run's data."""
        if not path_or_empty(pool):
            raise ValueError("Choose the labelled pool's dataset.json first.")
        return engine.summarize_data(pool, list(unlabeled_folders), validation, check_images)

    # --- starting ---------------------------------------------------------------------------------
    def _start(self, slot: str, kind: str, args, device: str, keep_history: bool = False) -> Job:
        if self.is_active(slot):
            raise RuntimeError(f"a {self.jobs[slot].kind} is already running in this panel; stop it first")
        previous = self.jobs.get(slot)
        state = previous.state if (keep_history and previous is not None) else engine.RunState()
        state.begin(kind, keep_history=keep_history)
        process = self.process_factory(list(args), engine.child_environment(device))
        process.start()
        self.jobs[slot] = Job(kind, process, state)
        return self.jobs[slot]

    def start_training(
        self,
        pool,
        unlabeled_folders=(),
        validation=None,
        method=PANEL_METHOD,
        init_model=None,
        steps=None,
        patch=None,
        batch=None,
        width=None,
        device="auto",
        name=None,
        check_images=True,
        augment=None,
        val_every=None,
        checkpoint_every=None,
    ) -> str:
        """Build the run's dataset.json in a new model folder and start ``semisupseg train``.

        A setting left None is ``semisupseg train``'s default (:class:`SemiSupSegLib.training.TrainConfig`);
        ``augment`` is a level of ``semisupseg train --augment`` (``scanner`` for another scanner's data).

        Returns:
            The new model folder (in the models folder).

        Raises:
            ValueError: the data has problems (listed); nothing is left behind.
        """
        if self.is_active("train"):
            raise RuntimeError("a training is already running in this panel; stop it first")
        out = engine.new_run_folder(name or f"{method}-{time.strftime('%Y%m%d-%H%M%S')}")
        summary = engine.build_run_dataset(
            pool, list(unlabeled_folders), engine.run_dataset_path(out), validation, check_images
        )
        if not summary.ok:
            shutil.rmtree(out, ignore_errors=True)
            raise ValueError("The data has problems; nothing was started.\n\n" + summary.text())
        origin = "fine-tuned" if init_model else "trained"
        request = engine.TrainRequest(
            data=summary.dataset,
            out=str(out),
            method=method,
            steps=steps,
            batch=batch,
            patch=patch,
            width=width,
            device=device,
            augment=augment or None,
            init=init_model or None,
            val_cases=len(summary.validation),
            val_every=val_every,
            checkpoint_every=checkpoint_every,
            name=out.name,
            description=f"{origin} in Slicer from {pool}",
        )
        self._start("train", "training", engine.training_command(request, self.python_executable()), device)
        return str(out)

    def start_locator_training(self, pool, steps=8000, device="auto", name=None, points_only=False) -> str:
        """Train the locator (recognition from the pool's masks, search from its centre points; with
        ``points_only`` from the centre points alone); returns the locator folder."""
        summary = engine.summarize_data(pool, (), None, check_images=False)
        if summary.with_center < 2:
            raise ValueError(
                f"The locator learns from centre points: the pool has {summary.with_center} case(s) with one."
            )
        out = engine.new_run_folder(
            name or f"locator-{time.strftime('%Y%m%d-%H%M%S')}", engine.locators_folder()
        )
        args = engine.locator_command(
            [pool],
            out,
            steps=int(steps),
            device=device,
            python=self.python_executable(),
            points_only=points_only,
        )
        self._start("train", "locator training", args, device)
        return str(out)

    def resume(self, out, locator=False, device="auto") -> None:
        """Continue an interrupted run from its checkpoint (the plot keeps the earlier history)."""
        if not out or not engine.checkpoint_path(out).is_file():
            raise ValueError(f"No interrupted run to resume in '{out}'.")
        from SemiSupSegLib.runlock import is_locked

        holder = is_locked(out)
        if holder is not None:
            raise ValueError(f"'{out}' is being written by another training (pid {holder.get('pid', '?')}).")
        args = engine.resume_command(out, self.python_executable(), locator=locator)
        previous = self.jobs.get("train")
        keep = previous is not None and previous.state.done
        self._start("train", "locator training" if locator else "training", args, device, keep_history=keep)

    def latest_resumable_run(self) -> tuple[str, str]:
        """``(folder, task)`` of the most recently written unlocked interrupted run."""
        runs = [(r, "training") for r in engine.resumable_runs(engine.models_folder())]
        runs += [(r, "locator training") for r in engine.resumable_runs(engine.locators_folder())]
        runs = [(r, task) for r, task in runs if not r["locked"]]
        if not runs:
            raise ValueError("There is no interrupted run to resume.")
        run, task = max(runs, key=lambda pair: pair[0]["modified"])
        return run["out"], task

    def can_resume(self, out) -> bool:
        """True when ``out`` or any run in the models/locators folders can be resumed."""
        try:
            if out and engine.checkpoint_path(out).is_file():
                return True
            self.latest_resumable_run()
            return True
        except Exception:  # noqa: BLE001 - a button state: unreadable folders mean "no"
            return False

    def start_estimate(self, method, patch, batch, width, device) -> None:
        """Measure a few steps in a child (``semisupseg estimate``)."""
        args = ["--method", method, "--patch", str(int(patch)), "--batch", str(int(batch))]
        args += ["--width", str(float(width)), "--device", device]
        self._start(
            "tool", "estimate", engine.tool_command("estimate", args, self.python_executable()), device
        )

    def start_comparison(self, new, current=None, device="auto") -> None:
        """Compare the new model with the current one on the validation cases (``semisupseg compare``)."""
        args = ["--new", str(new), "--device", device] + (["--current", str(current)] if current else [])
        self._start(
            "tool", "comparison", engine.tool_command("compare", args, self.python_executable()), device
        )

    def start_suggestion(self, pool, model, device="auto") -> None:
        """Rank the pool's unlabelled cases by the model's doubt in a child (``semisupseg suggest``);
        :meth:`ranking` reads the result once it finished."""
        from SemiSupSegLib.train_commands import suggest_command

        if not path_or_empty(pool):
            raise ValueError("Choose the pool's dataset.json first.")
        if not model:
            raise ValueError("Choose the model that ranks the cases (the current model).")
        args = suggest_command(model, pool, device, python=self.python_executable())
        self._start("suggest", "suggestion", args, device)

    def ranking(self) -> list[dict]:
        """The last finished ranking, best first (``semisupseg suggest --json``'s objects); [] if none."""
        job = self.jobs.get("suggest")
        if job is None or job.state.status != "finished" or not isinstance(job.state.result, dict):
            return []
        return list(job.state.result.get("ranking") or [])

    # --- polling and stopping ---------------------------------------------------------------------
    def is_active(self, slot: str) -> bool:
        job = self.jobs.get(slot)
        return job is not None and not job.ended

    def active(self) -> bool:
        return any(not job.ended for job in self.jobs.values())

    def poll(self) -> list[str]:
        """Read every job's new events into its state; returns the slots whose process just ended."""
        ended = []
        for slot, job in self.jobs.items():
            if job.ended:
                continue
            for event in job.process.poll():
                job.state.update(event)
                if self.log and event.get("event") in LOGGED_EVENTS:
                    self.log(f"{job.kind}: {event.get('event')} {event.get('message', '')}".strip())
            if not job.process.running:
                job.state.process_ended(job.process.returncode, list(job.process.stderr_tail))
                job.ended = True
                ended.append(slot)
        return ended

    def stop(self, slot: str = "train") -> None:
        """Stop the whole process tree; a training writes a checkpoint first (killed after the grace)."""
        job = self.jobs.get(slot)
        if job is None or job.ended:
            return
        job.process.request_stop(childprocess.DEFAULT_STOP_GRACE)
        job.state.stopping()

    def stop_all(self) -> None:
        for slot in list(self.jobs):
            self.stop(slot)

    def wait(self, timeout: float = 600.0, process_events=None) -> None:
        """Poll until every job ended (scripts and tests); stops them all and raises on timeout."""
        deadline = time.monotonic() + timeout
        while self.active():
            if time.monotonic() > deadline:
                self.stop_all()
                raise RuntimeError(f"the training processes did not end within {timeout} s")
            self.poll()
            if process_events:
                process_events()
            time.sleep(0.05)

    # --- adopting a model -------------------------------------------------------------------------
    def set_default_model(self, model) -> str:
        """Make ``model`` the segmentation panel's default and tell that panel; returns the folder."""
        if not model:
            raise ValueError("No new model: train one first.")
        folder = model_index.set_default_model(model)
        self.notify_models_changed()
        return str(folder)

    def notify_models_changed(self) -> None:
        """Tell the segmentation panel (if it is listening) to re-read its models."""
        if self.on_models_changed is None:
            return
        try:
            self.on_models_changed()
        except Exception:  # noqa: BLE001 - the other panel's refresh must not break this one
            logging.exception("SemiSupSeg panel: refreshing the models failed")
