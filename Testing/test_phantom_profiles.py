"""Phantom scanner profiles: the default is the original phantom, every profile is reproducible, the
profiles differ in speckle grain and instrument contrast, ``random`` draws per case, and the docs table is
generated from the dataclass."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from SemiSupSegLib.cli import main
from SemiSupSegLib.phantom import (
    PROFILES,
    RANDOM,
    RANDOM_BOUNDS,
    PhantomCase,
    PhantomProfile,
    case_seed,
    draw_random_profile,
    generate_phantom,
    profile_names,
    write_phantom_dataset,
)

REPO = Path(__file__).resolve().parents[1]
SIZE = 32
SEEDS = (1, 2)

# sha256 of image, label, spacing, origin and centre (see _digest), computed before profiles existed.
PINNED_DEFAULT = {
    ((40, 36, 32), "catheter", 3, None): "e09a2221e050070d27075508db53ac0dbf678f65b4e44bfa5f8e56df1aa9bed8",
    ((32, 32, 34), "guidewire", 5, (0.5, 0.6, 0.7)): (
        "01b1e31a2e83c43782d90148ddf97271d1c113d2d6b2f3b2ba110995613215fd"
    ),
}


@functools.lru_cache(maxsize=16)
def _case(profile: str, seed: int) -> PhantomCase:
    return generate_phantom(SIZE, "catheter", seed, profile=profile)


def _digest(case: PhantomCase) -> str:
    digest = hashlib.sha256()
    for image in (case.image, case.label):
        digest.update(sitk.GetArrayViewFromImage(image).tobytes())
        digest.update(repr([round(v, 9) for v in image.GetSpacing() + image.GetOrigin()]).encode())
    digest.update(repr([round(c, 6) for c in case.center]).encode())
    return digest.hexdigest()


def _parameters(profile: PhantomProfile) -> list[str]:
    return [f.name for f in fields(profile) if f.name not in ("name", "description")]


def _grain_mm(case: PhantomCase, axis: int) -> float:
    """Speckle grain: lag (mm) where the autocorrelation of the high-passed image falls to 0.5 along
    ``axis`` (numpy z, y, x), over voxels whose 5^3 neighbourhood is neither clipped nor outside the FOV."""
    image = sitk.GetArrayFromImage(case.image)
    detail = image.astype(np.float32) - ndimage.uniform_filter(image.astype(np.float32), 5)
    usable = (ndimage.minimum_filter(image, 5) > 1) & (ndimage.maximum_filter(image, 5) < 255)
    previous = 1.0
    for lag in range(1, 8):
        n = image.shape[axis] - lag
        a, b = np.take(detail, range(n), axis=axis), np.take(detail, range(lag, lag + n), axis=axis)
        both = np.take(usable, range(n), axis=axis) & np.take(usable, range(lag, lag + n), axis=axis)
        corr = float(np.corrcoef(a[both], b[both])[0, 1])
        if corr < 0.5:
            return (lag - 1 + (previous - 0.5) / (previous - corr)) * case.image.GetSpacing()[0]
        previous = corr
    return 8.0 * case.image.GetSpacing()[0]


def _contrast(case: PhantomCase) -> float:
    """Mean grey value on the instrument minus the mean on the rest of the field of view."""
    image = sitk.GetArrayFromImage(case.image).astype(np.float32)
    label = sitk.GetArrayFromImage(case.label) > 0
    fov = image > 0
    return float(image[fov & label].mean() - image[fov & ~label].mean())


def _mean(measure, profile: str, **kw) -> float:
    return float(np.mean([measure(_case(profile, seed), **kw) for seed in SEEDS]))


@pytest.mark.parametrize("args", list(PINNED_DEFAULT))
def test_the_default_profile_is_the_original_phantom_bit_for_bit(args):
    size, kind, seed, spacing = args
    assert _digest(generate_phantom(size, kind, seed, spacing)) == PINNED_DEFAULT[args]
    assert _digest(generate_phantom(size, kind, seed, spacing, profile="default")) == PINNED_DEFAULT[args]


@pytest.mark.parametrize("profile", profile_names())
def test_each_profile_is_deterministic_for_a_seed(profile):
    first, again = _case(profile, SEEDS[0]), generate_phantom(SIZE, "catheter", SEEDS[0], profile=profile)
    assert _digest(first) == _digest(again)
    assert again.profile == first.profile and again.profile.name == profile


def test_profiles_differ_in_speckle_grain():
    # fine < default < coarse along the beam (z) and across it (x); measured about
    # z 0.39 / 0.47 / 0.89 mm and x 0.46 / 0.71 / 1.17 mm at 32^3 (grain in mm, each at its own spacing)
    for axis in (0, 2):
        fine, default, coarse = (_mean(_grain_mm, p, axis=axis) for p in ("fine", "default", "coarse"))
        assert 1.15 * fine < default and 1.3 * default < coarse, (axis, fine, default, coarse)


def test_profiles_differ_in_instrument_contrast():
    # measured about 69 grey levels on default, 46 on cluttered (bright tissue, high gain, dimmer catheter)
    default, cluttered = _mean(_contrast, "default"), _mean(_contrast, "cluttered")
    assert cluttered < default - 12, (default, cluttered)


def test_random_bounds_cover_every_parameter_and_every_named_profile():
    names = _parameters(PROFILES["default"])
    assert sorted(RANDOM_BOUNDS) == sorted(names)
    for profile in PROFILES.values():
        for name in names:
            value = getattr(profile, name)
            low, high = (value, value) if not isinstance(value, tuple) else value
            assert RANDOM_BOUNDS[name][0] <= low <= high <= RANDOM_BOUNDS[name][1], (profile.name, name)


def test_random_profile_differs_between_cases_and_is_reproducible():
    first, second = draw_random_profile(case_seed(0, 0)), draw_random_profile(case_seed(0, 1))
    assert first == draw_random_profile(case_seed(0, 0))
    for name in _parameters(first):
        assert getattr(first, name) != getattr(second, name), name
        drawn = getattr(first, name)
        low, high = RANDOM_BOUNDS[name]
        assert all(low <= v <= high for v in (drawn if isinstance(drawn, tuple) else (drawn,))), name
    case = _case(RANDOM, SEEDS[0])
    assert case.profile == draw_random_profile(SEEDS[0]) and case.profile.name == RANDOM


def test_the_dataset_records_each_random_case_profile(tmp_path):
    path = write_phantom_dataset(tmp_path, cases=1, test=1, seed=3, size=SIZE, profile=RANDOM)
    data = json.loads(path.read_text())
    assert data["generator"]["profile"]["name"] == RANDOM
    for section, index in (("training", 0), ("test", 0)):
        record = data[section][index]["profile"]
        expected = draw_random_profile(case_seed(3, index, section))
        assert record == {"name": RANDOM, **json.loads(json.dumps(expected.parameters()))}
    spacing = sitk.ReadImage(str(tmp_path / data["test"][0]["image"])).GetSpacing()
    assert spacing[0] == pytest.approx(data["test"][0]["profile"]["spacing_mm"][0])


def test_a_named_profile_is_recorded_once_in_the_generator(tmp_path):
    path = write_phantom_dataset(tmp_path, cases=1, seed=0, size=SIZE, profile="coarse")
    data = json.loads(path.read_text())
    expected = {"name": "coarse", **json.loads(json.dumps(PROFILES["coarse"].parameters()))}
    assert data["generator"]["profile"] == expected
    assert "profile" not in data["training"][0]


def test_an_unknown_profile_is_one_line_listing_the_known_ones(tmp_path, capsys):
    assert main(["phantom", str(tmp_path / "out"), "--profile", "siemens"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'siemens'" in err
    assert all(name in err for name in profile_names())
    assert not (tmp_path / "out").exists()


def test_the_profiles_doc_is_generated_from_the_dataclass():
    spec = importlib.util.spec_from_file_location("profiles_tool", REPO / "tools" / "phantom_profiles.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert (REPO / "docs" / "PHANTOM_PROFILES.md").read_text() == tool.markdown(), (
        "docs/PHANTOM_PROFILES.md is stale: run python tools/phantom_profiles.py"
    )
    assert (REPO / "docs" / "images" / "phantom_profiles.png").stat().st_size < 200_000
