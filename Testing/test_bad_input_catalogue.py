# ruff: noqa: E501  (the catalogue is a table: one kind per entry, kept on its lines)
"""The catalogue of bad input: one table, one test. Every kind is refused with exit status 2 (CLI) or a
named exception (engine API, the panels' Qt-free halves), in one line that names the problem, without a
traceback, and with nothing already on disk changed.

Each kind builds its own small, non-cubic, anisotropic, rotated data in a fresh folder, whose every file
is hashed before and after. ``KINDS`` is the single list docs/RELIABILITY.md counts.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from SemiSupSegLib import dataset, imageio, slicer_bridge
from SemiSupSegLib.checkpoints import checkpoint_path, write_checkpoint
from SemiSupSegLib.cli import main
from SemiSupSegLib.distributed import Distributed
from SemiSupSegLib.errors import DatasetError, InputError, ModelError
from SemiSupSegLib.locator import load_locator, locate
from SemiSupSegLib.model_store import load_model, save_model
from SemiSupSegLib.networks import CompactUNet
from SemiSupSegLib.preprocessing import check_resampled_size
from SemiSupSegLib.progress import Reporter
from SemiSupSegLib.training import TrainConfig

SHAPE = (10, 12, 14)  # z, y, x
SPACING = (0.7, 0.5, 0.9)
DIRECTION = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # 90 degrees about z
CLI = None  # the expectation of a command line: exit status 2


# ------------------------------------------------------------------------------------------ data


RAMP = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)  # any non-constant volume


def volume(array: np.ndarray, spacing=SPACING, direction=DIRECTION) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((3.0, -2.0, 1.0))
    image.SetDirection(direction)
    return image


def volume_at(array: np.ndarray, origin: tuple[float, float, float]) -> sitk.Image:
    image = volume(array)
    image.SetOrigin(origin)
    return image


def write(root: Path, rel: str, image: sitk.Image) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def random_image(seed: int = 0) -> sitk.Image:
    return volume(np.random.default_rng(seed).random(SHAPE, np.float32))


def box_label(shape=SHAPE, dtype=np.uint8, value=1, **geometry) -> sitk.Image:
    array = np.zeros(shape, dtype)
    array[3:6, 4:8, 5:9] = value
    return volume(array, **geometry)


def centre(image: sitk.Image, index=(6.5, 5.5, 4.5)) -> list[float]:
    return list(image.TransformContinuousIndexToPhysicalPoint(index))


def pool(root: Path, entries: list[dict] | None = None, raw: dict | None = None) -> Path:
    """A dataset folder: images/a, labels/a (valid), and ``dataset.json`` from ``raw`` or ``entries``."""
    image = random_image()
    write(root, "images/a.nii.gz", image)
    write(root, "labels/a.nii.gz", box_label())
    good = {"image": "images/a.nii.gz", "label": "labels/a.nii.gz", "center": centre(image)}
    raw = raw if raw is not None else {"training": entries if entries is not None else [good]}
    (root / "dataset.json").write_text(json.dumps(raw))
    return root / "dataset.json"


def with_label(root: Path, label: sitk.Image) -> Path:
    write(root, "labels/b.nii.gz", label)
    return pool(root, [{"image": "images/a.nii.gz", "label": "labels/b.nii.gz"}])


def tiny_model(root: Path, width: float = 0.0625) -> Path:
    torch.manual_seed(0)
    meta = {
        "name": "tiny",
        "method": "supervised",
        "classes": {"0": "background", "1": "instrument"},
        "patch_size": [16, 16, 16],
        "preprocessing": {"target_spacing": [0.8, 0.8, 0.8]},
    }
    return save_model(root / "model", {"net": CompactUNet(width=width)}, meta)


def segment(root: Path, image: str | Path, model: Path | None = None) -> list:
    model = model or tiny_model(root)
    return ["segment", "--model", model, "--input", root / image, "--output", root / "seg.nii.gz"]


def segment_image(root: Path, image: sitk.Image, name: str = "in.nrrd") -> list:
    write(root, name, image)
    return segment(root, name)


def evaluate(root: Path, *extra) -> list:
    """``evaluate`` of a tiny model on a dataset whose test case is images/a, labels/a."""
    data = pool(root, raw={"test": [{"image": "images/a.nii.gz", "label": "labels/a.nii.gz"}]})
    return ["evaluate", "--model", tiny_model(root), "--data", data, *extra]


def train(root: Path, data: Path, *extra) -> list:
    return ["train", "--data", data, "--out", root / "run", "--steps", "1", "--width", "0.0625", *extra]


def mha_with(root: Path, field: str, value: str) -> Path:
    """A MetaImage whose header line ``field`` is replaced by ``value`` (spacing, direction)."""
    path = write(root, "in.mha", random_image())
    text = re.sub(rf"{field} = [^\n]*".encode(), f"{field} = {value}".encode(), path.read_bytes())
    path.write_bytes(text)
    return path


class RunsCode:
    """A pickle that runs code when loaded unsafely (``weights_only=False``)."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def malicious_weights(root: Path) -> Path:
    folder = tiny_model(root)
    (folder / "weights.pt").write_bytes(pickle.dumps({"net": RunsCode()}))
    return folder


def unreadable_image(root: Path) -> Path:
    """A file nobody may read, or (as root, who reads anyway) a folder where the image should be."""
    path = root / "in.nii.gz"
    if os.geteuid() == 0:
        path.mkdir()
    else:
        sitk.WriteImage(random_image(), str(path))
        path.chmod(0)
    return path


def interrupted_run(root: Path, method: str = "supervised") -> Path:
    config = TrainConfig(data=str(pool(root)), out=str(root / "run"), steps=10, method=method)
    write_checkpoint(checkpoint_path(root / "run"), {"step": 3, "config": config.to_json()}, Reporter())
    return root / "run"


# ------------------------------------------------------------------------------------------ the table


@dataclass(frozen=True)
class Kind:
    """One kind of bad input: ``build(folder)`` gives a CLI argv (list) or an API call (callable)."""

    name: str
    build: Callable[[Path], list | Callable[[], object]]
    expect: type[Exception] | None  # None: a command line, exit status 2
    words: str  # a regular expression the one line must match


def api(call: Callable, setup: Callable[[Path], object] | None = None) -> Callable[[Path], Callable[[], object]]:
    """An API kind: ``setup(folder)`` writes the data (before the snapshot), then ``call`` gets what it gave
    (or the folder, without ``setup``)."""

    def build(root: Path) -> Callable[[], object]:
        given = setup(root) if setup is not None else root
        return lambda: call(given)

    return build


KINDS = [
    # --- images
    Kind("image 2D", lambda r: segment_image(r, volume(np.ones((12, 14), np.float32), (0.5, 0.9), (0, 1, -1, 0))),
         CLI, r"is 2D .*expected a scalar 3D volume"),
    Kind("image 4D", api(imageio.read_image, lambda r: write(r, "in.nii.gz", sitk.Image([4, 5, 6, 2], sitk.sitkFloat32))),
         InputError, r"is 4D"),
    Kind("image vector", api(imageio.read_image, lambda r: write(r, "in.nrrd", sitk.Image([4, 5, 6], sitk.sitkVectorFloat32, 3))),
         InputError, r"3 components per voxel"),
    Kind("image NaN", lambda r: segment_image(r, volume(np.where(np.arange(1680).reshape(SHAPE) == 7, np.nan, 1.0).astype(np.float32))),
         CLI, r"1 non-finite voxel\(s\) \(1 NaN, 0 infinite\)"),
    Kind("image Inf", api(imageio.read_image, lambda r: write(r, "in.mha", volume(np.full(SHAPE, np.inf, np.float32)))),
         InputError, r"1680 non-finite voxel\(s\) \(0 NaN, 1680 infinite\)"),
    Kind("image of 1 voxel", api(imageio.read_image, lambda r: write(r, "in.nrrd", sitk.Image([1, 1, 1], sitk.sitkFloat32))),
         InputError, r"is 2D \(size 1 along axis 0"),
    Kind("image size-1 axis", api(imageio.read_image, lambda r: write(r, "in.nrrd", volume(np.ones((1, 12, 14), np.float32)))),
         InputError, r"size 1 along axis 2 \(z\)"),
    Kind("zero spacing", api(imageio.read_image, lambda r: mha_with(r, "ElementSpacing", "0 0.5 0.9")),
         InputError, r"Zero-valued spacing .*\[0, 0\.5, 0\.9\]"),
    Kind("image complex", api(imageio.read_image, lambda r: write(r, "in.nrrd", volume((RAMP + 1j * RAMP).astype(np.complex64)))),
         InputError, r"has complex voxels \(complex of 32-bit float\); expected real numbers"),
    Kind("image values beyond float32", api(imageio.read_image, lambda r: write(r, "in.nrrd", volume(RAMP.astype(np.float64) * 1e300))),
         InputError, r"values from 0 to 1\.679e\+303, a range beyond what float32 holds"),
    Kind("origin too far for double precision", api(imageio.read_image, lambda r: write(r, "in.nrrd", volume_at(RAMP, (3.0, -2.0, 1e300)))),
         InputError, r"has origin \(3, -2, 1e\+300\) mm, more than 1e\+12 voxels from 0"),
    Kind("image constant", lambda r: segment_image(r, volume(np.full(SHAPE, 7.0, np.float32))),
         CLI, r"image is constant \(every voxel is 7\)"),
    Kind("locate on a constant image", api(lambda r: locate(load_locator("phantom-locator"), sitk.Image([40, 36, 30], sitk.sitkInt16))),
         InputError, r"image is constant \(every voxel is 0\); there is nothing to find"),
    Kind("locate on a constant image (DQN locator)", api(lambda r: locate(load_locator("phantom-locator-dqn"), sitk.Image([40, 36, 30], sitk.sitkInt16))),
         InputError, r"image is constant \(every voxel is 0\); there is nothing to find"),
    Kind("huge spacing (too big after resampling)", lambda r: segment_image(r, volume(RAMP, (1e6, 1e6, 1e6))),
         CLI, r"would need .* voxels \(.* GB as float32\).*check the image's spacing"),
    Kind("tiny spacing (a point after resampling)", lambda r: segment_image(r, volume(RAMP, (1e-9, 1e-9, 1e-9))),
         CLI, r"to 0\.8,0\.8,0\.8 mm leaves 1 voxel along x: the volume is thinner than 2 voxels"),
    Kind("too big after resampling (API)", api(lambda r: check_resampled_size(random_image(), (0.001, 0.001, 0.001))),
         InputError, r"would need 9\.8e\+03x6e\+03x9e\+03 = 5\.29e\+11 voxels"),
    Kind("non-orthonormal direction", lambda r: segment(r, mha_with(r, "TransformMatrix", "1 0.3 0 0 1 0 0 0 1")),
         CLI, r"direction matrix \(1, 0, 0, 0\.3, 1, .*not orthonormal"),
    Kind("singular direction", api(imageio.read_image, lambda r: mha_with(r, "TransformMatrix", "1 1 0 0 0 0 0 0 1")),
         InputError, r"Bad direction, determinant is 0"),
    Kind("truncated image", lambda r: segment(r, truncated(r)),
         CLI, r"cannot be read"),
    Kind("empty image file", lambda r: segment(r, empty_file(r, "in.nii.gz")),
         CLI, r"not a readable image file"),
    Kind("wrong extension", lambda r: segment(r, empty_file(r, "in.png")),
         CLI, r"unsupported extension; expected one of \.nii\.gz"),
    Kind("unreadable image", lambda r: segment(r, unreadable_image(r)),
         CLI, r"(is not a file|cannot be read)"),
    Kind("image a symbolic link loop", lambda r: segment(r, link_loop(r, "in.nrrd")),
         CLI, r"in\.nrrd' is a symbolic link to nothing \(broken, or a loop\)"),
    Kind("missing image", lambda r: segment(r, "nothing.nrrd"),
         CLI, r"nothing\.nrrd' does not exist"),
    Kind("panel: 4D volume array", api(lambda r: slicer_bridge.image_from_array(np.zeros((4, 5, 6, 3)), np.eye(4))),
         InputError, r"3 components per voxel"),
    Kind("panel: NaN in the volume", api(lambda r: slicer_bridge.image_from_array(np.full((4, 5, 6), np.nan), np.eye(4))),
         InputError, r"120 NaN or infinite voxel"),
    Kind("panel: singular IJKToRAS", api(lambda r: slicer_bridge.image_from_array(np.ones((4, 5, 6)), np.diag([1, 0, 1, 1]))),
         InputError, r"IJKToRAS matrix is singular"),
    # --- labels
    Kind("label of another size", api(dataset.load_dataset, lambda r: with_label(r, box_label(shape=(10, 12, 13)))),
         DatasetError, r"label size \(13, 12, 10\) differs from image size \(14, 12, 10\)"),
    Kind("label of another geometry", lambda r: train(r, with_label(r, box_label(spacing=(0.7, 0.5, 1.0)))),
         CLI, r"label spacing \(0\.7, 0\.5, 1\) differs from image spacing \(0\.7, 0\.5, 0\.9\)"),
    Kind("label values outside the classes", lambda r: train(r, with_label(r, box_label(value=3))),
         CLI, r"label has values \[3\] outside the declared classes \[0, 1\]"),
    Kind("float label", api(dataset.load_dataset, lambda r: with_label(r, box_label(dtype=np.float32, value=0.5))),
         DatasetError, r"label has values \[0\.5\] outside the declared classes"),
    Kind("panel: segmentation on another grid", api(lambda r: dataset.add_to_pool(
        r, "a", random_image(), box_label(spacing=(0.7, 0.5, 1.0)))),
         InputError, r"segmentation does not match the volume's grid: spacing"),
    Kind("panel: empty (constant) segmentation", api(lambda r: dataset.add_to_pool(
        r, "a", random_image(), box_label(value=0))),
         InputError, r"instrument segment is empty"),
    # --- dataset.json
    Kind("broken JSON", lambda r: train(r, text_file(r, "dataset.json", '{"training": [')),
         CLI, r"is not valid JSON: Expecting value: line 1 column 15"),
    Kind("JSON nested beyond the recursion limit", api(dataset.load_dataset, lambda r: text_file(r, "dataset.json", "[" * 100_000 + "]" * 100_000)),
         DatasetError, r"is not valid JSON: maximum recursion depth exceeded"),
    Kind("JSON integer of 5000 digits", api(dataset.load_dataset, lambda r: text_file(r, "dataset.json", '{"training": [], "n": ' + "9" * 5000 + "}")),
         DatasetError, r"is not valid JSON: Exceeds the limit \(4300 digits\)"),
    Kind("JSON not an object", api(dataset.load_dataset, lambda r: text_file(r, "dataset.json", "[1, 2]")),
         DatasetError, r"does not hold a JSON object"),
    Kind("section of the wrong type", api(dataset.load_dataset, lambda r: pool(r, raw={"training": {"a": 1}})),
         DatasetError, r"'training' is not a list"),
    Kind("image path of the wrong type", lambda r: train(r, pool(r, [{"image": 5, "label": "labels/a.nii.gz"}])),
         CLI, r"training\[0\] has no 'image' path"),
    Kind("labels keys not integers", api(dataset.load_dataset, lambda r: pool(r, raw={"training": [], "labels": {"x": "bg"}})),
         DatasetError, r"'labels' key 'x' is not an integer"),
    Kind("labels keys naming one class twice", api(dataset.load_dataset, lambda r: pool(r, raw={"training": [], "labels": {"0": "bg", "00": "x", "1": "fg"}})),
         DatasetError, r"'labels' keys '0' and '00' both name class 0"),
    Kind("no section at all", api(dataset.load_dataset, lambda r: pool(r, raw={"name": "x"})),
         DatasetError, r"none of the lists 'training', 'unlabeled', 'test' is present"),
    Kind("missing image file", lambda r: train(r, pool(r, [{"image": "images/z.nii.gz", "label": "labels/a.nii.gz"}])),
         CLI, r"image file '.*images/z\.nii\.gz' does not exist"),
    Kind("missing label file", api(dataset.load_dataset, lambda r: pool(r, [{"image": "images/a.nii.gz", "label": "l/z.nrrd"}])),
         DatasetError, r"label file '.*l/z\.nrrd' does not exist"),
    Kind("path escaping the dataset folder", lambda r: train(r, pool(r, [{"image": "../../etc/a.nii.gz", "label": "labels/a.nii.gz"}])),
         CLI, r"image path '\.\./\.\./etc/a\.nii\.gz' leaves the dataset folder"),
    Kind("duplicate case names", api(dataset.load_dataset, lambda r: pool(r, [{"image": "images/a.nii.gz", "label": "labels/a.nii.gz"}] * 2)),
         DatasetError, r"training\[1\] 'a': duplicate case name \(also training\[0\]\)"),
    Kind("centre outside the volume", lambda r: train(r, pool(r, [{"image": "images/a.nii.gz", "label": "labels/a.nii.gz", "center": [500, 0, 0]}])),
         CLI, r"center \(500, 0, 0\) mm is outside the volume"),
    Kind("centre not 3 numbers", api(dataset.load_dataset, lambda r: pool(r, [{"image": "images/a.nii.gz", "label": "labels/a.nii.gz", "center": [1, 2]}])),
         DatasetError, r"center \[1, 2\] is not 3 finite numbers"),
    Kind("centre beyond a float", api(dataset.load_dataset, lambda r: pool(r, [{"image": "images/a.nii.gz", "label": "labels/a.nii.gz", "center": [10**400, 0, 0]}])),
         DatasetError, r"center \[1000.* is not 3 finite numbers"),
    Kind("0 labelled cases", lambda r: train(r, pool(r, raw={"unlabeled": [{"image": "images/a.nii.gz"}]})),
         CLI, r"no labelled cases in its 'training' list to train on"),
    Kind("training case without label", api(dataset.load_dataset, lambda r: pool(r, [{"image": "images/a.nii.gz"}])),
         DatasetError, r"'a' has no label; put it under 'unlabeled'"),
    Kind("adding to a malformed dataset.json", api(lambda p: dataset.upsert_case(p, "unlabeled", p.parent / "images/a.nii.gz"),
             lambda r: pool(r, raw={"training": "x"})),
         DatasetError, r"'training' is not a list"),
    Kind("panel: case name without letters", api(lambda r: dataset.add_to_pool(r, "#?!", random_image())),
         InputError, r"case name '#\?!' has no letters or digits"),
    Kind("panel: case name of non-ASCII letters only", api(lambda r: dataset.add_to_pool(r, "病例", random_image())),
         InputError, r"case name '病例' has no letters or digits of A-Z, a-z, 0-9"),
    # --- options
    Kind("patch not divisible by the network stride", lambda r: train(r, pool(r), "--patch", "18,16,16"),
         CLI, r"divisible by 4"),
    Kind("patch beyond an integer", lambda r: train(r, pool(r), "--patch", "16,16,1e30"),
         CLI, r"argument --patch: must be 3 positive integers \(z,y,x\); got '16,16,1e30'"),
    Kind("loader workers that exhaust the machine", lambda r: train(r, pool(r), "--loader-workers", "100000"),
         CLI, r"--loader-workers must be 0 to 64, got 100000"),
    Kind("more training processes than cores", lambda r: train(r, pool(r), "--nproc", str((os.cpu_count() or 1) + 1), "--device", "cpu"),
         CLI, r"--nproc \d+ needs more than this machine's \d+ CPU core\(s\)"),
    Kind("more training processes than any machine", lambda r: train(r, pool(r), "--nproc", "65"),
         CLI, r"--nproc must be 1 to 64, got 65"),
    Kind("a torchrun environment that is not a number", api(lambda r: Distributed.from_environment({"WORLD_SIZE": "two"})),
         InputError, r"WORLD_SIZE='two' is not a whole number"),
    Kind("a rank outside the torchrun world", api(lambda r: Distributed.from_environment({"WORLD_SIZE": "2", "RANK": "2"})),
         InputError, r"RANK=2, LOCAL_RANK=2 do not fit WORLD_SIZE=2"),
    Kind("batch no computer holds", lambda r: train(r, pool(r), "--batch", "100000000", "--patch", "16"),
         CLI, r"--batch 100000000 of 16x16x16 patches is 4\.1e\+11 voxels per step, above 2\.68e\+08"),
    Kind("train --out onto an existing file", lambda r: train(r, pool(r))[:4] + [r / "dataset.json", "--steps", "1"],
         CLI, r"cannot use '.*dataset\.json/.*': Not a directory"),
    Kind("phantom of no cases at all", lambda r: ["phantom", r / "ph", "--cases", "0"],
         CLI, r"no cases to write: give --cases, --unlabeled or --test"),
    Kind("zero steps", lambda r: train(r, pool(r), "--steps", "0"),
         CLI, r"argument --steps: .*'0'"),
    Kind("locator recognition crop not a multiple of 8", lambda r: ["train-locator", "--data", pool(r), "--out", r / "loc", "--recognition-patch", "12"],
         CLI, r"recognition patch 12 must be a positive multiple of 8"),
    Kind("locator recognition learning rate above 1", lambda r: ["train-locator", "--data", pool(r), "--out", r / "loc", "--recognition-lr", "5"],
         CLI, r"recognition learning rate 5\.0 must be in \(0, 1\]"),
    Kind("new-labels with a folder that is no model", lambda r: ["new-labels", "--model", pool(r).parent / "images", "--data", pool(r)],
         CLI, r"has no model\.json"),
    Kind("unknown method option", lambda r: train(r, pool(r), "--method", "supervised", "--option", "foo=bar"),
         CLI, r"\bfoo\b"),
    Kind("method option not a number", lambda r: train(r, pool(r), "--method", "dual-unet", "--option", "alpha=abc"),
         CLI, r"method option alpha must be a number"),
    Kind("segment output onto its input", lambda r: segment_image(r, random_image())[:-1] + [r / "in.nrrd"],
         CLI, r"--output '.*in\.nrrd' is the input image \(--input\); writing it would destroy the input"),
    Kind("segment two outputs on one file", lambda r: segment_image(r, random_image()) + ["--probability", r / "./seg.nii.gz"],
         CLI, r"--probability and --output both name '.*seg\.nii\.gz'; give each output its own file"),
    Kind("evaluate --json onto dataset.json", lambda r: evaluate(r, "--json", r / "dataset.json"),
         CLI, r"--json '.*dataset\.json' is the dataset file \(--data\); writing it would destroy the input"),
    Kind("evaluate predictions into the images folder", lambda r: evaluate(r, "--predictions", r / "images"),
         CLI, r"prediction of case 'a' '.*images/a\.nii\.gz' is the image of case 'a'"),
    Kind("segment uncertainty options without --uncertainty", lambda r: segment_image(r, random_image()) + ["--uncertainty-method", "flips"],
         CLI, r"--uncertainty-method shape the uncertainty map: give --uncertainty FILE too"),
    Kind("evaluate --json under a file", lambda r: evaluate(r, "--json", r / "dataset.json" / "metrics.json"),
         CLI, r"--json '.*dataset\.json/metrics\.json' cannot be written: '.*dataset\.json' is a file, not a folder"),
    Kind("segment --center with --locator", lambda r: segment_image(r, random_image()) + ["--center", ",".join(map(str, centre(random_image()))), "--locator", "phantom-locator"],
         CLI, r"--center and --locator exclude each other"),
    Kind("method option beyond a float", lambda r: train(r, pool(r), "--method", "dual-unet", "--option", "alpha=1" + "0" * 400),
         CLI, r"method option alpha must be a number .*got 1000"),
    Kind("segment threshold 1 (an empty label)", lambda r: segment_image(r, random_image()) + ["--threshold", "1"],
         CLI, r"argument --threshold: must be a number in \[0, 1\), got '1'"),
    Kind("unknown device", lambda r: segment(r, "a.nrrd") + ["--device", "tpu"],
         CLI, r"argument --device: .*'tpu'"),
    # --- models and checkpoints
    Kind("missing model.json", lambda r: segment(r, write(r, "a.nrrd", random_image()), model_without(r, "model.json")),
         CLI, r"is not a model: it has no model\.json"),
    Kind("corrupt model.json", lambda r: segment(r, write(r, "a.nrrd", random_image()), damaged(r, "model.json", b"{\"networks\": ")),
         CLI, r"model\.json is corrupt"),
    Kind("model.json nested too deep", lambda r: segment(r, write(r, "a.nrrd", random_image()), damaged(r, "model.json", b"[" * 100000 + b"]" * 100000)),
         CLI, r"model\.json is corrupt: RecursionError"),
    Kind("model.json of a newer format", api(load_model, lambda r: edited_model(r, format=2)),
         ModelError, r"has model format 2; this SemiSupSeg reads format 1 to 1: update SemiSupSeg"),
    Kind("model classes unlike its network", api(load_model, lambda r: edited_model(r, classes={"0": "bg", "1": "a", "2": "b"})),
         ModelError, r"network 'net' has 2 output classes but 'classes' names 3"),
    Kind("model patch size not an integer", api(load_model, lambda r: edited_model(r, patch_size=[16.5, 16, 16])),
         ModelError, r"patch_size must be an integer in \[4, 1024\], got 16\.5"),
    Kind("model target spacing of zero", lambda r: segment(r, write(r, "a.nrrd", random_image()), edited_model(r, preprocessing={"target_spacing": [0, 0.8, 0.8]})),
         CLI, r"preprocessing target_spacing \[0, 0\.8, 0\.8\] is not 3 numbers > 0 \(mm\)"),
    Kind("model clip percentiles reversed", api(load_model, lambda r: edited_model(r, preprocessing={"clip_percentiles": [99.5, 0.5]})),
         ModelError, r"clip_percentiles \[99\.5, 0\.5\] are not increasing"),
    Kind("model local window of a kilometre", lambda r: segment(r, write(r, "a.nrrd", random_image()), edited_model(r, preprocessing={"normalization": "fov-local-zscore", "local_sigma_mm": 1e6})),
         CLI, r"preprocessing local_sigma_mm must be .*100.*, got 1000000\.0"),
    Kind("missing weights", api(load_model, lambda r: model_without(r, "weights.pt")),
         ModelError, r"weights\.pt are missing"),
    Kind("weights of another architecture", lambda r: segment(r, write(r, "a.nrrd", random_image()), other_architecture(r)),
         CLI, r"network 'net' of .* does not match its weights"),
    Kind("malicious weights.pt", api(load_model, lambda r: malicious_weights(r)),
         ModelError, r"holds more than plain tensors .*refused without running it"),
    Kind("corrupt checkpoint", lambda r: ["train", "--out", damaged_checkpoint(r), "--resume"],
         CLI, r"checkpoint .* is corrupt"),
    Kind("checkpoint from another method", lambda r: ["train", "--out", interrupted_run(r), "--resume", "--method", "dual-unet"],
         CLI, r"--method dual-unet \(stored: supervised\)"),
    Kind("resume without a checkpoint", lambda r: ["train", "--out", r / "none", "--resume"],
         CLI, r"no checkpoint at"),
]  # fmt: skip


def truncated(root: Path) -> Path:
    path = write(root, "in.nrrd", random_image())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def empty_file(root: Path, name: str) -> Path:
    (root / name).write_bytes(b"")
    return root / name


def link_loop(root: Path, name: str) -> Path:
    """``name`` -> ``name.other`` -> ``name``: a symbolic link loop."""
    (root / name).symlink_to(root / f"{name}.other")
    (root / f"{name}.other").symlink_to(root / name)
    return root / name


def text_file(root: Path, name: str, text: str) -> Path:
    (root / name).write_text(text)
    return root / name


def model_without(root: Path, name: str) -> Path:
    folder = tiny_model(root)
    (folder / name).unlink()
    return folder


def damaged(root: Path, name: str, content: bytes) -> Path:
    folder = tiny_model(root)
    (folder / name).write_bytes(content)
    return folder


def edited_model(root: Path, **changes) -> Path:
    """A tiny model whose ``model.json`` has the top-level ``changes`` (a hand-edited or damaged file)."""
    folder = tiny_model(root)
    meta = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**meta, **changes}))
    return folder


def other_architecture(root: Path) -> Path:
    """A model whose weights are those of a network twice as wide as its model.json describes."""
    folder = tiny_model(root)
    wide = tiny_model(root / "wide", width=0.125)
    (folder / "weights.pt").write_bytes((wide / "weights.pt").read_bytes())
    return folder


def damaged_checkpoint(root: Path) -> Path:
    path = checkpoint_path(root / "run")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PK\x03\x04 not a checkpoint")
    return root / "run"


# ------------------------------------------------------------------------------------------ the test


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with the hash of its content ("dir" for a folder)."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_dir():
            found[str(path.relative_to(root))] = "dir"
        elif os.access(path, os.R_OK):
            found[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            found[str(path.relative_to(root))] = "unreadable"
    return found


def refusal_line(kind: Kind, action, capsys) -> str:
    """The one line that refuses ``action``, checked to be one line without a traceback."""
    if kind.expect is CLI:
        code = main([str(a) for a in action])
        out, err = capsys.readouterr()
        assert code == 2, (code, out, err)
        assert out == "" and "Traceback" not in err, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("semisupseg: error: "), err
        return lines[0]
    with pytest.raises(kind.expect) as info:
        action()
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message, message
    return message


def test_the_catalogue_has_at_least_40_distinct_kinds():
    names = [k.name for k in KINDS]
    assert len(set(names)) == len(names) >= 40


@pytest.mark.parametrize("kind", KINDS, ids=[k.name for k in KINDS])
def test_bad_input_is_refused_in_one_line_naming_it_and_nothing_changes(kind, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "data"
    root.mkdir()
    action = kind.build(root)
    capsys.readouterr()
    before = snapshot(tmp_path)
    line = refusal_line(kind, action, capsys)
    assert re.search(kind.words, line), line
    assert snapshot(tmp_path) == before
