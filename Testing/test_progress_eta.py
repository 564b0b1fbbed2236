"""ETA and seconds per step of both trainers, against a fake clock that advances a known time per step.

A wrong ETA (counting the steps done instead of the steps left, or the rate over the steps since 0
instead of since the resumed step) passes any "ETA >= 0" check; exact values on a controlled clock do not.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from SemiSupSegLib import training
from SemiSupSegLib.errors import TrainingCancelled
from SemiSupSegLib.locator import train as locator_train
from SemiSupSegLib.locator.train import LocatorTrainConfig, LocatorTrainer
from SemiSupSegLib.progress import Reporter
from SemiSupSegLib.training import TrainConfig, Trainer

SECONDS_PER_STEP = 2.5


class _Clock:
    """A monotonic clock that moves only when a step runs."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class _Recorder(Reporter):
    def __init__(self, stop_at: int | None = None) -> None:
        super().__init__()
        self.events: list[tuple[str, dict]] = []
        self.stop_at, self.trainer = stop_at, None

    def emit(self, event: str, **fields) -> None:
        self.events.append((event, fields))
        if event == "progress" and fields["step"] == self.stop_at:
            self.trainer.request_stop()

    def progress(self) -> list[dict]:
        return [f for e, f in self.events if e == "progress"]


def _install_clock(monkeypatch, module, cls, step_method: str) -> None:
    """Replace ``module.time`` by the fake clock, advanced by SECONDS_PER_STEP in ``cls.step_method``."""
    clock = _Clock()
    monkeypatch.setattr(module, "time", SimpleNamespace(monotonic=clock.monotonic))
    original = getattr(cls, step_method)

    def timed(self, *args, **kwargs):
        clock.now += SECONDS_PER_STEP
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, step_method, timed)


def _segmentation_config(data, out, steps: int) -> TrainConfig:
    return TrainConfig(
        data=str(data), out=str(out), steps=steps, batch=1, patch_size=(16, 16, 24), width=0.0625,
        val_cases=0, checkpoint_every=100, translation=4, augment=False,
    )


def _expected(steps: range, total: int) -> list[tuple[int, float, float]]:
    return [(s, SECONDS_PER_STEP, SECONDS_PER_STEP * (total - s)) for s in steps]


def _observed(recorder: _Recorder) -> list[tuple[int, float, float]]:
    return [(p["step"], p["seconds_per_step"], p["eta_seconds"]) for p in recorder.progress()]


def _assert_rows(observed: list, expected: list) -> None:
    assert len(observed) == len(expected)
    np.testing.assert_allclose(np.asarray(observed, float), np.asarray(expected, float), rtol=1e-9)


def test_training_eta_is_the_rate_times_the_steps_left_also_after_resume(tiny_phantom, tmp_path, monkeypatch):
    _install_clock(monkeypatch, training, Trainer, "_iteration")
    first = _Recorder(stop_at=2)
    trainer = Trainer(_segmentation_config(tiny_phantom, tmp_path / "m", steps=5), first)
    first.trainer = trainer
    with pytest.raises(TrainingCancelled):
        trainer.run()
    _assert_rows(_observed(first), _expected(range(1, 3), 5))

    second = _Recorder()
    resumed = Trainer(_segmentation_config(tiny_phantom, tmp_path / "m", steps=5), second)
    second.trainer = resumed
    resumed.run(resume=True)
    # The rate is measured over the steps this process ran (3 of them), not since step 0.
    _assert_rows(_observed(second), _expected(range(3, 6), 5))


def _blob_dataset(folder) -> str:
    """Four 24^3 anisotropic noise volumes with a bright blob and its centre point."""
    rng = np.random.default_rng(3)
    (folder / "images").mkdir(parents=True)
    entries = []
    for i in range(4):
        array = (50 + 10 * rng.standard_normal((24, 24, 24))).astype(np.float32)
        array[10:14, 8:12, 12:16] = 200
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((0.7, 0.9, 1.1))
        sitk.WriteImage(image, str(folder / "images" / f"b{i}.nii.gz"))
        centre = image.TransformContinuousIndexToPhysicalPoint((13.5, 9.5, 11.5))
        entries.append({"image": f"images/b{i}.nii.gz", "center": list(centre)})
    path = folder / "dataset.json"
    path.write_text(json.dumps({"name": "blobs", "training": [], "unlabeled": entries}))
    return str(path)


def test_locator_training_eta_is_the_rate_times_the_steps_left(tmp_path, monkeypatch):
    _install_clock(monkeypatch, locator_train, LocatorTrainer, "_act")
    config = LocatorTrainConfig(
        data=[_blob_dataset(tmp_path)], out=str(tmp_path / "loc"), steps=4, agents=2, batch=4, grid=16,
        crop=5, scales=(3, 1), width=4, memory=100, warmup=4, target_every=2, episode_steps=4,
        val_cases=0, checkpoint_every=100, device="cpu", seed=0, recognition=False,
    )
    recorder = _Recorder()
    LocatorTrainer(config, recorder).run()
    _assert_rows(_observed(recorder), _expected(range(1, 5), 4))
