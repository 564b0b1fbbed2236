"""The training augmentation levels: ``standard`` (seed 000's rotation, mirroring, intensity),
``scanner`` (what another ultrasound scanner changes: speckle grain, SNR, gain/TGC, log compression,
voxel size, a dimmer instrument) and ``contrast`` (standard plus a dimmer instrument), applied
identically to image and label, reproducible for a seed, and chosen per run."""

import json

import numpy as np
import pytest
import torch

from SemiSupSegLib.augmentation import augmentation_level, build_augmentation
from SemiSupSegLib.cli import main
from SemiSupSegLib.patches import PatchSampler, PreparedCase
from SemiSupSegLib.training import TrainConfig

SHAPE = (20, 24, 28)  # non-cubic: an axis-order slip in a geometric transform shows


def _tube_case(seed: int = 0) -> dict:
    """A bright tube along x near a corner (label 1) in weak noise, in MONAI's channel-first dict form.

    Off-centre, so that a zoom or rotation applied to one key only moves the tube away from its label.
    """
    rng = np.random.default_rng(seed)
    label = np.zeros(SHAPE, np.float32)
    label[3:7, 3:7, :] = 1
    image = 0.3 * rng.normal(size=SHAPE).astype(np.float32) + 12 * label  # bright even when dimmed
    return {"image": image[None], "label": label[None]}


def _apply(level: str, seed: int, case: dict) -> tuple[np.ndarray, np.ndarray]:
    out = build_augmentation(seed, level)({k: v.copy() for k, v in case.items()})
    return np.asarray(out["image"][0]), np.asarray(out["label"][0])


@pytest.mark.parametrize("level", ["standard", "scanner"])
def test_each_level_is_reproducible_for_a_seed_and_differs_between_seeds(level):
    case = _tube_case()
    first, again, other = _apply(level, 3, case), _apply(level, 3, case), _apply(level, 4, case)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


@pytest.mark.parametrize("level", ["standard", "scanner"])
def test_the_label_follows_the_image_through_every_geometric_change(level):
    """Zoom, rotation and flips move image and label together: the label stays binary, and the brightest
    voxels (as many as the label holds: blind to any monotone intensity change) lie under it in every
    draw. A transform applied to one key only breaks this."""
    case = _tube_case()
    for seed in range(16):
        image, label = _apply(level, seed, case)
        assert image.shape == label.shape == SHAPE
        assert set(np.unique(label)) <= {0.0, 1.0}
        count = int(label.sum())
        brightest = np.zeros(image.size, bool)
        brightest[np.argsort(image, axis=None)[-count:]] = True
        overlap = (brightest & (label.ravel() > 0.5)).sum() / count
        assert overlap > 0.65, (seed, overlap)  # 0.72 at worst; 0.57 with a one-key zoom


def _lag_correlation(image: np.ndarray) -> float:
    """Correlation of neighbouring voxels along x: the speckle grain of the patch."""
    a, b = image[..., :-1].ravel(), image[..., 1:].ravel()
    return float(np.corrcoef(a, b)[0, 1])


def test_the_scanner_level_varies_speckle_grain_and_contrast_beyond_the_standard_level():
    """On white noise the standard level leaves the grain nearly untouched (rotation is its only blur);
    the scanner level must coarsen it (another probe's point-spread function and voxel size: blur and
    zoom) and spread the intensity range (another gain and log compression)."""
    rng = np.random.default_rng(0)
    noise = {
        "image": rng.normal(size=(1, *SHAPE)).astype(np.float32),
        "label": np.zeros((1, *SHAPE), np.float32),
    }
    images = {lvl: [_apply(lvl, s, noise)[0] for s in range(40)] for lvl in ("standard", "scanner")}
    grains = {lvl: [_lag_correlation(image) for image in drawn] for lvl, drawn in images.items()}
    spreads = {lvl: np.std([image.std() for image in drawn]) for lvl, drawn in images.items()}
    assert max(grains["scanner"]) > max(grains["standard"]) + 0.2  # blurred speckle
    assert spreads["scanner"] > 1.5 * spreads["standard"]


def test_no_augmentation_leaves_the_patch_as_cut():
    image = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    case = PreparedCase("c", image, np.zeros(SHAPE, np.uint8), np.array([10.0, 12.0, 14.0]), 0.0)
    sampler = PatchSampler([case], [], (8, 8, 8), seed=0, translation=0, random_fraction=0.0, augment="none")
    images, _ = sampler.labeled_batch(1)
    assert torch.equal(images[0, 0], torch.from_numpy(image[6:14, 8:16, 10:18]))


@pytest.mark.parametrize(
    "stored, level", [(True, "standard"), (False, "none"), ("scanner", "scanner"), ("none", "none")]
)
def test_configs_stored_before_the_levels_still_load(stored, level):
    """Checkpoints and model.json files written when ``augment`` was a bool keep their meaning."""
    text = json.dumps({"data": "d.json", "out": "o", "augment": stored})
    assert TrainConfig.from_json(text).augment == level
    assert augmentation_level(stored) == level


def test_an_unknown_level_is_refused():
    with pytest.raises(ValueError, match="unknown augmentation 'heavy'"):
        augmentation_level("heavy")


def test_the_cli_takes_the_level_and_no_augment_still_means_none(tiny_phantom, tmp_path, monkeypatch, capsys):
    from SemiSupSegLib import training

    runs = []
    monkeypatch.setattr(training.Trainer, "run", lambda self, resume=False: runs.append(self.config))
    base = ["train", "--data", str(tiny_phantom), "--steps", "2"]
    assert main([*base, "--out", str(tmp_path / "a"), "--augment", "scanner"]) == 0
    assert main([*base, "--out", str(tmp_path / "b"), "--no-augment"]) == 0
    assert main([*base, "--out", str(tmp_path / "c")]) == 0
    assert [c.augment for c in runs] == ["scanner", "none", "standard"]
    assert main([*base, "--out", str(tmp_path / "d"), "--augment", "heavy"]) == 2
    assert "heavy" in capsys.readouterr().err


def _instrument_contrast(image: np.ndarray, label: np.ndarray) -> float:
    """How far the instrument stands above the tissue: median inside minus median outside the label."""
    return float(np.median(image[label > 0.5]) - np.median(image[label < 0.5]))


def test_the_instrument_contrast_level_dims_the_instrument_and_never_brightens_it():
    """The ``contrast`` level draws a dimmer instrument relative to its tissue in some patches (models
    that key on an absolute brightness miss a dim catheter: docs/BENCHMARKS.md, the other generator's
    ablation probe); the label and the tissue stay as they are."""
    from SemiSupSegLib.augmentation import RandInstrumentContrastd

    case = _tube_case()
    before = _instrument_contrast(case["image"][0], case["label"][0])
    transform = RandInstrumentContrastd(prob=1.0, factor=(0.3, 1.0))
    transform.set_random_state(seed=0)
    ratios = []
    for _ in range(30):
        out = transform({k: v.copy() for k, v in case.items()})
        image, label = np.asarray(out["image"][0]), np.asarray(out["label"][0])
        assert np.array_equal(label, case["label"][0])
        assert np.array_equal(
            image[label < 0.5], case["image"][0][case["label"][0] < 0.5]
        )  # tissue untouched
        ratios.append(_instrument_contrast(image, label) / before)
    assert min(ratios) < 0.45 and max(ratios) <= 1.0 + 1e-6


def test_a_patch_without_instrument_is_left_as_it_is():
    from SemiSupSegLib.augmentation import RandInstrumentContrastd

    rng = np.random.default_rng(0)
    case = {
        "image": rng.normal(size=(1, *SHAPE)).astype(np.float32),
        "label": np.zeros((1, *SHAPE), np.float32),
    }
    out = RandInstrumentContrastd(prob=1.0)({k: v.copy() for k, v in case.items()})
    assert np.array_equal(np.asarray(out["image"]), case["image"])


def test_the_contrast_level_dims_the_instrument_where_the_standard_level_does_not():
    """Over the same 30 draws the contrast level brings the instrument down to about half its contrast
    (0.48 here), the standard level's intensity scaling and gamma no lower than 0.9; reproducible."""
    case = _tube_case()
    before = _instrument_contrast(case["image"][0], case["label"][0])
    lowest = {
        level: min(_instrument_contrast(*_apply(level, seed, case)) / before for seed in range(30))
        for level in ("standard", "contrast")
    }
    assert lowest["contrast"] < 0.7 and lowest["standard"] > 0.85, lowest
    first, again = _apply("contrast", 5, case), _apply("contrast", 5, case)
    assert np.array_equal(first[0], again[0])
