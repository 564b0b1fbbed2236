"""Faults while writing: a full disk or a refused write leaves the previous version intact and is named.

The faults are injected (``OSError(ENOSPC)`` / ``EACCES`` from the writer or the rename, torch's
``RuntimeError`` for a full disk) so the tests run anywhere, as any user. Two real processes adding to
one pool at once lose no entry (the ``dataset.json`` lock).
"""

from __future__ import annotations

import errno
import hashlib
import json
import multiprocessing
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from SemiSupSegLib import atomic, dataset
from SemiSupSegLib.atomic import WriteError
from SemiSupSegLib.checkpoints import read_checkpoint, write_checkpoint
from SemiSupSegLib.errors import InputError
from SemiSupSegLib.model_store import load_model, save_model
from SemiSupSegLib.networks import CompactUNet
from SemiSupSegLib.progress import Reporter

DIRECTION = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
FULL = OSError(errno.ENOSPC, "No space left on device")
DENIED = PermissionError(errno.EACCES, "Permission denied")


def folder_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def fail_with(error: BaseException):
    def fail(*args, **kwargs):
        raise error

    return fail


def meta(name: str = "m") -> dict:
    return {
        "name": name,
        "method": "supervised",
        "classes": {"0": "background", "1": "instrument"},
        "patch_size": [16, 16, 16],
        "preprocessing": {"target_spacing": None},
    }


def net(width: float, seed: int) -> CompactUNet:
    torch.manual_seed(seed)
    return CompactUNet(width=width)


# ------------------------------------------------------------------------------------------ checkpoint


@pytest.mark.parametrize(
    "where, error",
    [("torch.save", RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")),
     ("os.replace", FULL), ("os.replace", DENIED)],
)  # fmt: skip
def test_a_failed_checkpoint_write_keeps_the_previous_checkpoint(where, error, tmp_path, monkeypatch):
    path = tmp_path / "run" / ".training" / "checkpoint.pt"
    write_checkpoint(path, {"step": 4, "config": "{}", "w": torch.arange(3.0)}, Reporter())
    before = folder_hashes(tmp_path)
    module, name = where.split(".")
    monkeypatch.setattr({"torch": torch, "os": os}[module], name, fail_with(error))
    with pytest.raises(WriteError, match=r"cannot write '.*checkpoint\.pt': .*previous version.*unchanged"):
        write_checkpoint(path, {"step": 8, "config": "{}", "w": torch.zeros(3)}, Reporter())
    monkeypatch.undo()
    assert folder_hashes(tmp_path) == before  # no temporary file left either
    assert read_checkpoint(path)["step"] == 4


# ------------------------------------------------------------------------------------------ model


@pytest.mark.parametrize("failing", ["weights", "model.json"])
def test_a_failed_model_write_keeps_the_previous_model_whole(failing, tmp_path, monkeypatch):
    folder = save_model(tmp_path / "m", {"net": net(0.0625, 0)}, meta())
    before = folder_hashes(tmp_path)
    if failing == "weights":
        monkeypatch.setattr(torch, "save", fail_with(RuntimeError("file write failed")))
    else:
        real = atomic.atomic_write_text

        def text_fails(target, text):
            if Path(target).name == "model.json":
                raise atomic.write_failed(target, FULL)
            real(target, text)

        monkeypatch.setattr(atomic, "atomic_write_text", text_fails)
    with pytest.raises(WriteError, match=rf"cannot write .*{failing}"):
        save_model(folder, {"net": net(0.125, 1)}, meta("wider"))  # another architecture
    monkeypatch.undo()
    assert folder_hashes(tmp_path) == before
    loaded = load_model(folder)  # weights and description still belong together
    assert loaded.name == "m" and loaded.networks["net"].config.width == 0.0625


# ------------------------------------------------------------------------------------------ pool entry


def case_volume(seed: int) -> tuple[sitk.Image, sitk.Image]:
    rng = np.random.default_rng(seed)
    image = sitk.GetImageFromArray(rng.random((8, 10, 12), np.float32))
    image.SetSpacing((0.7, 0.5, 0.9))
    image.SetDirection(DIRECTION)
    array = np.zeros((8, 10, 12), np.uint8)
    array[2:5, 3:6, 4 + seed % 3 : 8] = 1
    label = sitk.GetImageFromArray(array)
    label.CopyInformation(image)
    return image, label


@pytest.mark.parametrize("fault", ["label write", "labels folder refused", "dataset.json rename"])
def test_a_failed_pool_update_keeps_the_previous_entry(fault, tmp_path, monkeypatch):
    pool = tmp_path / "pool"
    dataset.add_to_pool(pool, "case", *case_volume(0))
    before = folder_hashes(pool)
    real_replace, real_write, real_mkstemp = os.replace, sitk.WriteImage, tempfile.mkstemp

    def replace(src, dst):
        if fault == "dataset.json rename" and str(dst).endswith("dataset.json"):
            raise FULL
        real_replace(src, dst)

    def mkstemp(*args, dir=None, **kwargs):
        if fault == "labels folder refused" and Path(dir).name == "labels":
            raise DENIED
        return real_mkstemp(*args, dir=dir, **kwargs)

    def write_image(image, name, *args):
        if fault == "label write" and image.GetPixelID() == sitk.sitkUInt8:
            raise RuntimeError("ITK ERROR: ImageFileWriter(0x1): No space left on device")
        real_write(image, name, *args)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(sitk, "WriteImage", write_image)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    with pytest.raises((WriteError, InputError), match="cannot write"):
        dataset.add_to_pool(pool, "case", *case_volume(1))
    monkeypatch.undo()
    if fault == "dataset.json rename":  # documented: the new image and label are in place, together
        assert folder_hashes(pool)["dataset.json"] == before["dataset.json"]
    else:
        assert folder_hashes(pool) == before
    dataset.load_dataset(pool)  # still valid, images and labels on one grid


# ------------------------------------------------------------------------------------------ the lock


def add_cases(pool: str, first: int, count: int, start) -> None:
    """One process: add ``count`` unlabelled cases to the pool's dataset.json, one call each."""
    start.wait()
    image = Path(pool) / "images" / "shared.nii.gz"
    for i in range(first, first + count):
        other = image.with_name(f"case_{i:03d}.nii.gz")
        os.link(image, other)
        dataset.upsert_case(Path(pool) / "dataset.json", "unlabeled", other, center=None)


def test_two_processes_adding_to_one_pool_lose_no_entry(tmp_path):
    (tmp_path / "images").mkdir()
    image, _ = case_volume(0)
    sitk.WriteImage(image, str(tmp_path / "images" / "shared.nii.gz"))
    context = multiprocessing.get_context("fork" if hasattr(os, "fork") else "spawn")
    start = context.Barrier(2)
    workers = [context.Process(target=add_cases, args=(str(tmp_path), k * 20, 20, start)) for k in (0, 1)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [w.exitcode for w in workers] == [0, 0]
    raw = json.loads((tmp_path / "dataset.json").read_text())
    names = sorted(entry["image"] for entry in raw["unlabeled"])
    assert names == [f"images/case_{i:03d}.nii.gz" for i in range(40)]
    assert not list(tmp_path.glob(".*"))  # the lock file and temporary files are gone


# ------------------------------------------------------------------------------------------ locator


@pytest.mark.parametrize("fail", ["weights", "locator.json"])
def test_a_failed_locator_write_keeps_the_previous_locator(fail, tmp_path, monkeypatch):
    from SemiSupSegLib.locator import load_locator, save_locator
    from SemiSupSegLib.locator.agent import QNetwork, QNetworkConfig

    described = {"name": "loc", "grid_size": 32, "crop_size": 9, "scales": [3, 1]}
    torch.manual_seed(0)
    folder = save_locator(tmp_path / "loc", QNetwork(QNetworkConfig(crop=9, width=4, n_scales=2)), described)
    before = folder_hashes(tmp_path)
    if fail == "weights":
        monkeypatch.setattr(torch, "save", fail_with(RuntimeError("file write failed")))
    else:
        replace = os.replace

        def full_for_json(src, dst):
            if str(dst).endswith("locator.json"):
                raise FULL
            replace(src, dst)

        monkeypatch.setattr(os, "replace", full_for_json)
    other = QNetwork(QNetworkConfig(crop=9, width=4, n_scales=2))
    with pytest.raises(WriteError, match="previous version"):
        save_locator(folder, other, {**described, "name": "b"})
    monkeypatch.undo()
    assert folder_hashes(tmp_path) == before
    assert load_locator(folder).meta["name"] == "loc"
