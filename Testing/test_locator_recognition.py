"""Locator II: the instrument-likelihood network, its state channels, the refinement and the confidence.

Tiny grids (32³) and blob volumes (see ``test_locator``); the recognition network trains for a few
dozen steps. Old points-only ``locator.json`` files must still load.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from test_locator import CROP, GRID, SCALES, _blob_image, _blob_label, _config, _Recorder, _write_blob_dataset

from SemiSupSegLib.cli import main
from SemiSupSegLib.errors import InputError, ModelError, TrainingCancelled
from SemiSupSegLib.locator import load_locator, locate, save_locator
from SemiSupSegLib.locator.agent import QNetwork, QNetworkConfig
from SemiSupSegLib.locator.environment import CropSampler, GridVolume, grid_geometry, prepare_volume
from SemiSupSegLib.locator.recognition import (
    RecognitionConfig,
    RecognitionNet,
    confidence_threshold,
    grid_mask,
    instrument_middle,
    likelihood_levels,
    likelihood_map,
    mask_overlap,
    point_confidence,
    train_recognition,
)
from SemiSupSegLib.locator.train import LocatorTrainer

CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _grids(seed: int, n: int) -> tuple[list[np.ndarray], list[np.ndarray], list[tuple]]:
    """Normalised grids, grid masks and centres (grid index) of ``n`` blob volumes."""
    rng = np.random.default_rng(seed)
    volumes, masks, centres = [], [], []
    for _ in range(n):
        image, centre = _blob_image(rng)
        volume = prepare_volume(image, GRID, (1,))
        volumes.append(volume.levels[0])
        masks.append(grid_mask(_blob_label(image, centre), volume.geometry))
        centres.append(tuple(volume.geometry.to_index(centre)))
    return volumes, masks, centres


# ------------------------------------------------------------------------------------------ recognition


def test_recognition_loss_falls_and_its_mask_overlap_beats_chance():
    volumes, masks, _ = _grids(seed=4, n=6)
    net, losses = train_recognition(
        volumes[:4], masks[:4], config=RecognitionConfig(width=4), steps=50, device=CPU, batch=2, patch=16
    )
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10]), losses
    for volume, mask in zip(volumes[4:], masks[4:], strict=True):
        likelihood = likelihood_map(net, volume, CPU)
        assert likelihood.shape == volume.shape
        chance = mask.mean()  # Dice of a mask drawn at random with the instrument's prevalence
        assert mask_overlap(likelihood, mask) > max(0.15, 20 * chance)


@pytest.mark.parametrize("stride", [1, 2])
def test_the_network_answers_at_the_grid_over_its_stride_and_the_map_on_the_grid(stride):
    """Catches a stride-1 network still halving (its targets would not match) or a map not brought back
    onto a non-cubic grid; a config written before ``stride`` existed must keep the stem (stride 2)."""
    assert RecognitionConfig.from_dict({"width": 8, "inputs": 2}).stride == 2
    config = RecognitionConfig(width=4, stride=stride)
    assert RecognitionConfig.from_dict(config.to_dict()) == config
    net = RecognitionNet(config).eval()
    with torch.no_grad():
        logits = net(torch.zeros(1, 2, 24, 32, 40))
    assert tuple(logits.shape) == (1, 1, 24 // stride, 32 // stride, 40 // stride)
    volumes, masks, _ = _grids(seed=5, n=2)
    assert likelihood_map(net, volumes[0][:, 1:, 3:], CPU).shape == volumes[0][:, 1:, 3:].shape
    trained, losses = train_recognition(volumes, masks, config=config, steps=2, device=CPU, batch=1, patch=16)
    assert len(losses) == 2 and trained.config.stride == stride


def test_grid_mask_keeps_a_thin_instrument_on_a_rotated_anisotropic_image():
    array = np.zeros((20, 30, 40), np.uint8)  # z, y, x
    array[10, 15, 5:35] = 1  # a one-voxel wire along x
    label = sitk.GetImageFromArray(array)
    label.SetSpacing((0.5, 0.7, 1.1))
    label.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))
    geometry = grid_geometry(label, 16)
    mask = grid_mask(label, geometry)
    assert mask.any()
    for z, y, x in np.argwhere(mask):  # every grid voxel marked lies on the wire, in physical space
        point = np.array(
            label.TransformPhysicalPointToContinuousIndex(tuple(geometry.to_physical((z, y, x))))
        )
        assert abs(point[2] - 10) < 1.5 and abs(point[1] - 15) < 1.5 and 2 < point[0] < 38


def test_likelihood_levels_keep_a_thin_line_lit_at_coarse_samples():
    likelihood = np.zeros((27, 27, 27), np.float32)
    likelihood[13, 13, :] = 0.9
    levels = likelihood_levels(likelihood, (9, 3, 1))
    assert levels.shape == (3, 27, 27, 27)
    np.testing.assert_array_equal(levels[2], likelihood)
    assert levels[0][9:18, 9:18, :].min() == pytest.approx(0.9)  # a 9-voxel block around the line is lit
    assert levels[0][0, 0, 0] == 0.0


def test_recognition_channels_are_the_likelihood_at_this_scale_and_one_coarser():
    ramp = np.arange(GRID**3, dtype=np.float32).reshape((GRID,) * 3)
    volume = GridVolume(
        geometry=None, levels=np.stack([ramp, ramp]), recognition=np.stack([ramp * 0, ramp + 0.5])
    )
    sampler = CropSampler([volume], SCALES, CROP, recognition=True)
    positions = np.array([[10, 12, 14]])
    frames = sampler.frames(np.zeros(1, int), np.repeat(positions[:, None], 4, axis=1), np.array([1]))
    states = sampler.add_channels(frames, np.zeros(1, int), positions, np.array([1]))
    assert states.shape == (1, 6, CROP, CROP, CROP)
    np.testing.assert_array_equal(states[0, 4], frames[0, 0] + 0.5)  # scale index 1: the finest
    np.testing.assert_array_equal(states[0, 5], np.zeros_like(frames[0, 0]))  # one coarser: index 0
    with pytest.raises(InputError, match="likelihood"):
        CropSampler(
            [GridVolume(geometry=None, levels=np.stack([ramp, ramp]))], SCALES, CROP, recognition=True
        )


# ------------------------------------------------------------------------------------ refine, confidence


def _curved_tube(shape=(30, 36, 42)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A likelihood map of a 120° circular arc of tube, the point in the middle of its length and one end.

    The arc's centroid lies 2.8 voxels off the tube, inside the bend: only the middle *along* the tube
    is within 1.5 voxels of the annotated centre.
    """
    phi = np.linspace(-np.pi / 3, np.pi / 3, 300)
    curve = np.stack([6 + 16 * np.cos(phi), 18 + 4 * phi, 21 + 16 * np.sin(phi)], axis=1)  # z, y, x
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    nearest = np.min(np.linalg.norm(grid[:, None, :] - curve[None, ::6, :], axis=2), axis=1)
    return (0.9 * (nearest <= 1.5)).reshape(shape).astype(np.float32), curve[150], curve[0]


def test_refinement_moves_the_point_to_the_middle_of_the_nearest_instrument():
    likelihood, middle, end = _curved_tube()
    found = instrument_middle(likelihood, end + 2)  # the search stopped near one end of the tube
    assert found is not None and np.linalg.norm(found - middle) <= 1.5, (found, middle)
    other = likelihood.copy()
    other[24:28, 2:6, 34:38] = 0.9  # a second, nearer bright spot: its component is taken
    assert np.linalg.norm(instrument_middle(other, (25, 4, 35)) - (25.5, 3.5, 35.5)) < 0.5
    assert instrument_middle(likelihood, (29, 35, 0), reach=5.0) is None  # nothing within reach
    assert instrument_middle(np.zeros_like(likelihood), middle) is None


def test_confidence_reads_the_likelihood_near_the_point_and_the_threshold_separates_hits():
    likelihood = np.zeros((20, 20, 20), np.float32)
    likelihood[10, 10, 10] = 0.8
    assert point_confidence(likelihood, (11.6, 9.0, 10.4)) == pytest.approx(0.8)
    assert point_confidence(likelihood, (14, 10, 10)) == 0.0
    assert point_confidence(likelihood, (0, 0, 19)) == 0.0  # at the border
    threshold = confidence_threshold([0.9, 0.8, 0.3, 0.2, 0.7], [True, True, False, False, True])
    assert 0.3 < threshold <= 0.7
    assert confidence_threshold([0.9, 0.8], [True, True]) == 0.5  # no miss: the default


# ------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def labelled_blobs(tmp_path_factory):
    return _write_blob_dataset(tmp_path_factory.mktemp("lblobs"), n=8, seed=5, labelled=5)


def _recognition_config(data, out, **overrides):
    settings = dict(
        recognition=True, recognition_steps=100, recognition_width=4, steps=40, warmup=32, val_every=40
    )
    return _config(data, out, **{**settings, **overrides})


class _SearchStopper(_Recorder):
    """Asks the trainer to stop at step 10 of the DQN search (not of the recognition stage)."""

    def emit(self, event: str, **fields) -> None:
        self.events.append((event, fields))
        if event == "progress" and "stage" not in fields and fields["step"] >= 10:
            self.trainer.request_stop()


@pytest.fixture(scope="module")
def resumed(labelled_blobs, tmp_path_factory):
    """A tiny locator II stopped at step 10 of its search, then resumed: (folder, first and second events)."""
    out = tmp_path_factory.mktemp("loc2") / "run"
    first = _SearchStopper()
    trainer = LocatorTrainer(
        _recognition_config(labelled_blobs, out, checkpoint_every=20, steps=150, val_every=150), first
    )
    first.trainer = trainer
    t0 = time.monotonic()
    with pytest.raises(TrainingCancelled):
        trainer.run()
    first.seconds = time.monotonic() - t0
    assert (out / ".training" / "checkpoint.pt").is_file()
    second = _Recorder()
    folder = LocatorTrainer(LocatorTrainer.stored_config(out), second).run(resume=True)
    return folder, first, second.events


def test_train_stop_resume_locate_with_recognition(resumed, tmp_path, capsys):
    folder, first, second = resumed
    assert any(f.get("stage") == "recognition" for e, f in first.events if e == "progress")
    assert not any(f.get("stage") == "recognition" for _, f in second)  # not trained again
    locator = load_locator(folder)
    assert locator.recognizer is not None and locator.network.config.recognition == 2
    meta = json.loads((folder / "locator.json").read_text())
    assert meta["format"] == 2 and meta["search"]["refine"] is True
    assert {"threshold", "validation"} <= set(meta["confidence"])
    assert meta["timings"]["wall_seconds_total"] >= 0.9 * first.seconds  # both sessions counted
    image, centre = _blob_image(np.random.default_rng(21))
    path = tmp_path / "blob.nrrd"
    sitk.WriteImage(image, str(path))
    assert main(["locate", "--locator", str(folder), "--input", str(path), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert 0.0 <= record["confidence"] <= 1.0 and isinstance(record["low_confidence"], bool)


def test_confidence_is_higher_on_hits_than_on_misses(resumed):
    locator = load_locator(resumed[0])
    rng = np.random.default_rng(33)
    hits, misses = [], []
    for _ in range(3):
        image, centre = _blob_image(rng)
        found = locate(locator, image, starts=3)
        assert np.linalg.norm(np.subtract(found.point_lps, centre)) < 4.0  # mm: a hit
        hits.append(found.confidence)
        empty = sitk.GetImageFromArray(60 + 15 * rng.standard_normal((GRID,) * 3).astype(np.float32))
        empty.CopyInformation(image)  # no instrument: whatever point it finds is a miss
        misses.append(locate(locator, empty, starts=3).confidence)
    assert min(hits) > max(misses), (hits, misses)


def test_old_points_only_locator_json_still_loads_and_a_newer_format_is_refused(tmp_path):
    config = QNetworkConfig(crop=CROP, n_scales=len(SCALES), width=4, dueling=0)
    meta = {"name": "old", "grid_size": GRID, "crop_size": CROP, "scales": list(SCALES)}
    folder = save_locator(tmp_path / "old", QNetwork(config), meta)
    data = json.loads((folder / "locator.json").read_text())
    data["format"] = 1  # as written before locator II: no levels, dueling, recognition, confidence
    data.pop("levels", None)
    for key in ("dueling", "context", "recognition"):
        data["network"].pop(key, None)
    (folder / "locator.json").write_text(json.dumps(data))
    locator = load_locator(folder)
    assert locator.recognizer is None and locator.network.config.recognition == 0
    found = locate(locator, _blob_image(np.random.default_rng(1))[0], starts=1)
    assert found.confidence is None and found.low_confidence is None
    data["format"] = 3
    (folder / "locator.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="format 3"):
        load_locator(folder)


def test_recognition_without_any_labelled_case_is_refused(tmp_path):
    data = _write_blob_dataset(tmp_path / "unlabelled", n=4, seed=2)
    with pytest.raises(InputError, match="--points-only"):
        LocatorTrainer(_recognition_config(data, tmp_path / "never")).run()


class _Captured(Exception):
    pass


@pytest.mark.parametrize(
    "flags, expected",
    [
        ([], {"lr": 1e-2, "patch": 48}),  # stride 2: as the shipped locator II was trained
        (["--recognition-stride", "1"], {"lr": 1e-3, "patch": 32}),  # stride 1: the measured setting
        (["--recognition-stride", "1", "--recognition-lr", "5e-4", "--recognition-patch", "16"], None),
    ],
)
def test_the_recognition_stage_trains_with_the_stride_setting_or_the_flags(
    flags, expected, labelled_blobs, tmp_path, monkeypatch
):
    from SemiSupSegLib.cli import build_parser
    from SemiSupSegLib.cli.locator import _locator_fields
    from SemiSupSegLib.locator import train as locator_train

    args = build_parser().parse_args(["train-locator", "--data", "d.json", "--out", "o", *flags])
    fields = _locator_fields(args)
    captured = {}

    def spy(*args, **kwargs):
        captured.update(lr=kwargs["lr"], patch=kwargs["patch"])
        raise _Captured

    monkeypatch.setattr(locator_train, "train_recognition", spy)
    stride = int(fields.get("recognition_stride", 2))
    overrides = {k: fields[k] for k in ("recognition_lr", "recognition_patch") if k in fields}
    config = _recognition_config(labelled_blobs, tmp_path / "run", recognition_stride=stride, **overrides)
    with pytest.raises(_Captured):
        LocatorTrainer(config).run()
    assert captured == (expected or {"lr": 5e-4, "patch": 16})


def test_a_recognition_patch_that_is_no_multiple_of_8_is_refused(labelled_blobs, tmp_path):
    for patch in (20, 4):
        with pytest.raises(InputError, match="recognition patch"):
            LocatorTrainer(_recognition_config(labelled_blobs, tmp_path / "r", recognition_patch=patch)).run()
