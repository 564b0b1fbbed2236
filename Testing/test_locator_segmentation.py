"""The segmentation locator (issue 11): the segmentation model run over the whole volume finds the
instrument. Volumes are non-cubic, anisotropic and rotated, with the instrument off-centre, so an axis
swap or a padding placed on the wrong side moves the answer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage
from stub_networks import ConstantNet, ThresholdNet, halfway_level, stub_model

from SemiSupSegLib import inference
from SemiSupSegLib.cli import main
from SemiSupSegLib.errors import ModelError
from SemiSupSegLib.locator import load_locator, locate
from SemiSupSegLib.locator.by_segmentation import (
    DEFAULT_MIN_VOLUME_MM3,
    LocatorModel,
    SegmentationLocator,
    all_components,
    heaviest_component,
    save_segmentation_locator,
    volume_centre,
    volume_confidence,
)
from SemiSupSegLib.model_store import save_model
from SemiSupSegLib.networks import CompactUNet
from SemiSupSegLib.preprocessing import Preprocessing

SHAPE_ZYX = (30, 44, 58)  # SimpleITK size (x, y, z) = (58, 44, 30)
SPACING = (0.6, 0.9, 1.3)  # (x, y, z) mm
TARGET = (1.0, 1.0, 1.0)  # the stub model's spacing: the volume is resampled
TUBE_INDEX_XYZ = (40.0, 28.0, 20.0)  # the tube's middle, far from the volume's centre


def _rotated(array_zyx: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx, dtype=np.float32))
    image.SetSpacing(SPACING)
    image.SetOrigin((5.0, -12.0, 30.5))
    rotation = sitk.Euler3DTransform()
    rotation.SetRotation(0.4, -0.3, 0.9)
    image.SetDirection(rotation.GetMatrix())
    return image


def _tube_volume(with_speck: bool = True, length_mm: float = 24.0) -> sitk.Image:
    """A bright tube (radius 2.5 mm) along the image's x axis around TUBE_INDEX_XYZ, and a small speck."""
    z, y, x = np.indices(SHAPE_ZYX, dtype=float)
    cx, cy, cz = TUBE_INDEX_XYZ
    radial = np.hypot((y - cy) * SPACING[1], (z - cz) * SPACING[2])
    along = np.abs(x - cx) * SPACING[0]
    array = np.where((radial < 2.5) & (along < length_mm / 2), 100.0, 0.0)
    if with_speck:
        array[4:6, 5:7, 5:8] = 100.0  # a few mm³ near the origin corner: lighter than the tube
    return _rotated(array)


def _member(
    image: sitk.Image, min_volume: float = 100.0, name: str = "tube-finder", net=None
) -> LocatorModel:
    """One locator model: by default a stub that segments exactly the bright voxels of ``image``."""
    model = stub_model({"t": net or ThresholdNet(halfway_level(image, 0.0, 100.0, TARGET))}, 16, TARGET)
    model.meta["name"] = name
    return LocatorModel(model, min_volume)


def _locator(image: sitk.Image, min_volume: float = 100.0) -> SegmentationLocator:
    return SegmentationLocator(path=Path("stub"), meta={}, models=[_member(image, min_volume)])


def test_heaviest_component_is_the_one_with_most_probability_not_most_voxels():
    probability = np.zeros((6, 7, 11))
    probability[1, 1, 0:10] = 0.55  # 10 voxels, summed 5.5: the largest
    probability[4, 5, 2:6] = [0.99, 0.99, 0.9, 0.9]  # with the next line 6 voxels, summed 5.76: the heaviest
    probability[4, 4, 2:4] = 0.99
    middle, volume = heaviest_component(probability, (0.5, 1.0, 1.0))
    assert middle[0] == pytest.approx(4.0) and 4.0 <= middle[1] <= 5.0 and 2.0 <= middle[2] <= 5.0
    assert volume == pytest.approx(6 * 0.5)
    assert heaviest_component(np.full((3, 4, 5), 0.2), (1.0, 1.0, 1.0)) is None


def _arc(shape_zyx, spacing_zyx, radius_mm, centre_mm, tube_mm=1.2) -> np.ndarray:
    """A half circle of tube in the z-x plane (y fixed), bulging towards +x; its middle is at
    ``centre_mm + (0, 0, radius_mm)``, its centroid inside the bend (2r/pi from the circle's centre)."""
    z, y, x = (np.indices(shape_zyx, dtype=float).T * np.asarray(spacing_zyx)).T - np.reshape(
        centre_mm, (3, 1, 1, 1)
    )
    off_circle = np.hypot(np.hypot(z, x) - radius_mm, y)
    return ((off_circle < tube_mm) & (x >= 0)).astype(float) * 0.9


def test_the_middle_of_a_bent_instrument_is_on_it_half_way_along_not_its_centroid():
    """Anisotropic voxels (z 1.5, y 1.0, x 0.5 mm): spacing read in the wrong order bends the arc."""
    spacing = (1.5, 1.0, 0.5)
    probability = _arc((24, 9, 40), spacing, radius_mm=12.0, centre_mm=(17.25, 4.0, 3.0))
    apex_index = (17.25 / 1.5, 4.0, (3.0 + 12.0) / 0.5)
    middle, volume = heaviest_component(probability, spacing)
    centroid = ndimage.center_of_mass(probability)
    mm = lambda index: np.asarray(index) * spacing  # noqa: E731
    assert np.linalg.norm(mm(centroid) - mm(apex_index)) > 4.0  # the centroid is off the tube
    assert np.linalg.norm(mm(middle) - mm(apex_index)) < 1.0
    assert volume == pytest.approx((probability > 0.5).sum() * 0.75)


def test_the_middle_is_measured_in_mm_not_voxels():
    """An L of two arms 20 mm long each: 40 voxels along x (0.5 mm) and 10 along z (2 mm). Counted in
    voxels the middle would lie 15 voxels into the x arm; in mm it is the corner."""
    spacing = (2.0, 1.0, 0.5)
    probability = np.zeros((14, 5, 46))
    probability[2, 2, 2:42] = 0.8  # the x arm, ending at the corner (z 2, x 41)
    probability[2:13, 2, 41] = 0.8  # the z arm, from the corner
    middle, _ = heaviest_component(probability, spacing)
    assert np.linalg.norm((np.asarray(middle) - (2, 2, 41)) * spacing) < 2.0


def test_fragments_of_one_wire_outweigh_a_heavier_false_positive_far_away():
    """Three fragments of one wire, 10 mm apart (20 voxels of 0.5 mm along x), and one false positive
    60 mm away (along z, 2 mm voxels), heavier than any fragment but lighter than the three: the middle
    of the wire is answered; the volume (the confidence's) is every confident voxel. In voxels the gaps
    would be 20, over the 15 mm reach, and the false positive would win."""
    spacing = (2.0, 1.0, 0.5)
    probability = np.zeros((40, 5, 160))
    for start in (10, 60, 110):
        probability[5, 2, start : start + 31] = 0.8  # 31 voxels, mass 24.8 each
    probability[35, 2, 10:61] = 0.9  # 51 voxels, mass 45.9
    (z, y, x), volume = all_components(probability, spacing)
    assert (z, y) == pytest.approx((5.0, 2.0)) and x == pytest.approx(75.0, abs=1.0)
    assert volume == pytest.approx((3 * 31 + 51) * 1.0)


def _l_tube(shape_zyx, spacing_zyx, corner_mm, arm_mm, radius_mm=2.0) -> np.ndarray:
    """Two tubes of ``arm_mm`` meeting at ``corner_mm``: one towards -x, one towards +z (y fixed)."""
    z, y, x = (np.indices(shape_zyx, dtype=float).T * np.asarray(spacing_zyx)).T
    dz, dy, dx = z - corner_mm[0], y - corner_mm[1], x - corner_mm[2]
    x_arm = (np.hypot(dz, dy) < radius_mm) & (dx <= 0) & (dx > -arm_mm)
    z_arm = (np.hypot(dx, dy) < radius_mm) & (dz >= 0) & (dz < arm_mm)
    return (x_arm | z_arm).astype(float)


def test_the_middle_of_fragments_is_found_along_their_axis_in_mm():
    """A half circle of wire (radius 20 mm) broken into three fragments, on a grid of z 2.0, y 1.0, x 0.5
    mm: 40 mm long along z, 20 mm deep along x. In mm its principal axis is z and the median along it
    the apex; from voxel indices (20 voxels along z, 40 along x) the axis would be x, and the middle
    would fall inside the bend, as the centroid does (7.3 mm from the apex)."""
    spacing = (2.0, 1.0, 0.5)
    centre = (24.0, 4.0, 2.0)
    probability = _arc((25, 9, 48), spacing, radius_mm=20.0, centre_mm=centre, tube_mm=2.5)
    along_z = np.abs(np.arange(25) * 2.0 - centre[0])
    probability[(along_z > 8.0) & (along_z < 12.0)] = 0.0  # a gap in each branch, symmetric
    apex = np.asarray(centre) + (0.0, 0.0, 20.0)
    (z, y, x), volume = all_components(probability, spacing)
    centroid = np.asarray(ndimage.center_of_mass(probability)) * spacing
    assert np.linalg.norm(centroid - apex) > 5.0
    assert np.linalg.norm(np.asarray((z, y, x)) * spacing - apex) < 2.0
    assert volume == pytest.approx((probability > 0.5).sum())


def test_a_bent_instrument_is_located_at_its_middle_on_a_rotated_anisotropic_volume():
    """End to end: find_instrument answers the middle of an L (its corner, LPS) on a rotated anisotropic
    volume through an anisotropic model grid, not the L's centroid (5.7 mm inside the bend); the model
    grid's spacing taken in x, y, z order would put it 6 mm or more along one arm."""
    spacing_xyz = (0.6, 0.9, 1.3)
    corner_mm = (12.0, 20.0, 28.0)  # z, y, x
    image = _rotated(100.0 * _l_tube((30, 44, 58), spacing_xyz[::-1], corner_mm, arm_mm=16.0))
    target = (0.7, 1.0, 1.6)  # the model grid (x, y, z mm)
    model = stub_model({"t": ThresholdNet(halfway_level(image, 0.0, 100.0, target))}, 16, target)
    model.meta["name"] = "l-finder"
    locator = SegmentationLocator(path=Path("stub"), meta={}, models=[LocatorModel(model, 100.0)])
    found = locate(locator, image)
    corner = np.asarray(
        image.TransformContinuousIndexToPhysicalPoint(
            [c / s for c, s in zip(corner_mm[::-1], spacing_xyz, strict=True)]
        )
    )
    assert np.linalg.norm(np.asarray(found.point_lps) - corner) < 2.5  # mm; a tube of radius 2 mm


def test_confidence_is_a_half_at_the_minimum_volume():
    assert volume_confidence(0.0, 250.0) == 0.0
    assert volume_confidence(250.0, 250.0) == pytest.approx(0.5)
    assert 0.5 < volume_confidence(600.0, 250.0) < 1.0


def test_volume_probability_is_the_pointwise_net_on_the_whole_resampled_volume():
    image = _tube_volume()
    net = ThresholdNet(halfway_level(image, 0.0, 100.0, TARGET))
    net.size_divisor = 16  # the padding (to 16) must be cut off at the far end of every axis
    model = stub_model({"t": net}, 16, TARGET)
    probability, grid = inference.volume_probability(model, image, precision="fp32")
    prep = Preprocessing(target_spacing=TARGET)
    resampled = sitk.GetArrayFromImage(prep.resample(image))
    normalised = prep.normalize(resampled, prep.intensity_statistics(sitk.GetArrayViewFromImage(image)))
    expected = torch.sigmoid(20.0 * (torch.from_numpy(normalised) - net.level)).numpy()
    assert probability.shape == resampled.shape
    assert any(n % 16 for n in resampled.shape)  # the test needs padding to happen
    np.testing.assert_allclose(probability, expected, atol=1e-5)
    assert grid.GetSpacing() == pytest.approx(TARGET)


def test_it_finds_the_tube_on_a_rotated_anisotropic_volume():
    image = _tube_volume()
    found = locate(_locator(image), image)
    truth = np.asarray(image.TransformContinuousIndexToPhysicalPoint(TUBE_INDEX_XYZ))
    assert np.linalg.norm(np.asarray(found.point_lps) - truth) < 1.0  # mm; the model's voxels are 1 mm
    assert found.index_xyz == pytest.approx(TUBE_INDEX_XYZ, abs=1.5)
    assert found.low_confidence is False and found.confidence > 0.5 and found.found_by == "tube-finder"
    assert math.isnan(found.q_value)
    assert np.linalg.norm(np.asarray(volume_centre(image)) - truth) > 10.0  # the centre would be wrong


def test_a_component_below_the_minimum_volume_gives_the_volume_centre_with_low_confidence():
    image = _tube_volume(with_speck=False, length_mm=3.0)  # about 60 mm³
    found = locate(_locator(image, min_volume=250.0), image)
    assert found.low_confidence is True and 0.0 < found.confidence < 0.5 and found.found_by is None
    assert found.point_lps == pytest.approx(volume_centre(image))
    empty = _rotated(np.zeros(SHAPE_ZYX) + np.random.default_rng(0).normal(0, 1, SHAPE_ZYX))
    nothing = locate(_locator(empty, min_volume=250.0), empty)
    assert nothing.confidence < 0.5 and nothing.low_confidence is True


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    meta = {
        "name": "random",
        "method": "supervised",
        "classes": {"0": "background", "1": "instrument"},
        "patch_size": [16, 16, 16],
        "preprocessing": Preprocessing(target_spacing=(1.5, 1.5, 1.5)).to_dict(),
    }
    return save_model(tmp_path_factory.mktemp("models") / "random", {"net": CompactUNet(width=0.125)}, meta)


def test_a_locator_folder_names_its_model_by_relative_path_and_loads_through_load_locator(
    saved_model, tmp_path
):
    folder = save_segmentation_locator(tmp_path / "loc", str(saved_model), min_volume_mm3=80.0)
    meta = json.loads((folder / "locator.json").read_text())
    assert meta["kind"] == "segmentation-locator" and Path(meta["model"]).is_absolute()
    meta["model"] = str(Path("..") / ".." / saved_model.parent.name / saved_model.name)
    moved = tmp_path.parent / saved_model.parent.name  # the relative path is from the locator folder
    assert moved == saved_model.parent
    (folder / "locator.json").write_text(json.dumps(meta))
    locator = load_locator(folder)
    assert isinstance(locator, SegmentationLocator)
    [member] = locator.models
    assert member.model.path.resolve() == saved_model.resolve() and member.min_volume_mm3 == 80.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": "no-such-model"}, "no-such-model"),
        ({"format": 99}, "update SemiSupSeg"),
        ({"min_volume_mm3": -1}, "min_volume_mm3"),
        ({"kind": "something-else"}, "does not describe a locator"),
        ({"model": None}, "needs a 'model'"),
        ({"format": 2, "models": []}, "non-empty list"),
        ({"format": 2, "models": [{"model": "no-such-model", "min_volume_mm3": 20}]}, "no-such-model"),
        ({"format": 2, "models": [{"model": "..", "min_volume_mm3": "x"}]}, "min_volume_mm3"),
    ],
)
def test_a_bad_locator_json_is_refused_by_name(saved_model, tmp_path, change, message):
    folder = save_segmentation_locator(tmp_path / "loc", str(saved_model))
    meta = {**json.loads((folder / "locator.json").read_text()), **change}
    (folder / "locator.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=message):
        load_locator(folder)


def test_cli_makes_a_locator_and_locate_prints_strict_json(saved_model, tmp_path, capsys):
    image = _tube_volume()
    sitk.WriteImage(image, str(tmp_path / "image.nrrd"))
    out = tmp_path / "seg-locator"
    assert main(["locator-from-model", "--model", str(saved_model), "--out", str(out)]) == 0
    assert json.loads((out / "locator.json").read_text())["min_volume_mm3"] == DEFAULT_MIN_VOLUME_MM3
    capsys.readouterr()
    assert main(["locate", "--locator", str(out), "--input", str(tmp_path / "image.nrrd"), "--json"]) == 0
    record = json.loads(capsys.readouterr().out, parse_constant=lambda name: pytest.fail(f"JSON has {name}"))
    assert record["q_value"] is None and 0.0 <= record["confidence"] < 1.0
    assert isinstance(record["low_confidence"], bool) and len(record["point_lps"]) == 3
    assert "found_by" in record


def test_cli_refuses_a_missing_model_and_a_negative_volume_with_status_2(tmp_path, capsys):
    assert main(["locator-from-model", "--model", "no-such-model", "--out", str(tmp_path / "l")]) == 2
    assert (
        main(["locator-from-model", "--model", "x", "--min-volume", "-3", "--out", str(tmp_path / "l")]) == 2
    )
    assert not (tmp_path / "l" / "locator.json").exists()


# ------------------------------------------------------------------ several instruments, one locator


def test_several_models_a_trusted_find_answers_whatever_the_order():
    """A model that finds nothing (probability 0.1 everywhere) beside one that finds the tube: the tube's
    point, named by its model, in both orders; a model that finds the tube but cannot trust it (its
    minimum volume far above the tube's) gives way to one that can; none trusted: the volume centre."""
    image = _tube_volume()
    blind = _member(image, name="blind", net=ConstantNet(0.1))
    finder = _member(image, name="tube-finder")
    truth = np.asarray(image.TransformContinuousIndexToPhysicalPoint(TUBE_INDEX_XYZ))
    for models in ([blind, finder], [finder, blind]):
        found = locate(SegmentationLocator(Path("stub"), {}, models), image)
        assert found.found_by == "tube-finder" and np.linalg.norm(np.asarray(found.point_lps) - truth) < 1.0
    doubtful = _member(image, min_volume=1e6, name="doubtful")
    found = locate(SegmentationLocator(Path("stub"), {}, [doubtful, finder]), image)
    assert found.found_by == "tube-finder" and found.confidence > 0.5
    alone = locate(SegmentationLocator(Path("stub"), {}, [doubtful, blind]), image)
    assert alone.low_confidence is True and alone.found_by is None
    assert alone.point_lps == pytest.approx(volume_centre(image))


def test_each_model_has_its_own_minimum_volume():
    """A thin instrument (a short tube of about 60 mm³) is trusted by a model whose minimum volume fits it
    (a guide-wire model) and not at the catheter's 250 mm³."""
    image = _tube_volume(with_speck=False, length_mm=3.0)
    thin = locate(SegmentationLocator(Path("stub"), {}, [_member(image, 250.0, "catheter")]), image)
    assert thin.low_confidence is True
    both = [_member(image, 250.0, "catheter"), _member(image, 20.0, "guidewire")]
    found = locate(SegmentationLocator(Path("stub"), {}, both), image)
    assert found.found_by == "guidewire" and found.low_confidence is False


def test_a_two_model_locator_is_written_as_format_2_and_loads_both_with_their_volumes(
    saved_model, tmp_path, capsys
):
    out = tmp_path / "two"
    argv = ["locator-from-model", "--model", str(saved_model), "--model", str(saved_model), "--out", str(out)]
    assert main([*argv, "--min-volume", "250", "--min-volume", "20", "--min-volume", "5"]) == 2
    assert "once per --model (2), not 3 times" in capsys.readouterr().err
    assert not out.exists()
    assert main([*argv, "--min-volume", "250", "--min-volume", "20"]) == 0
    meta = json.loads((out / "locator.json").read_text())
    assert meta["format"] == 2 and "model" not in meta
    assert [e["min_volume_mm3"] for e in meta["models"]] == [250.0, 20.0]
    locator = load_locator(out)
    assert [m.min_volume_mm3 for m in locator.models] == [250.0, 20.0]
    assert all(m.model.path.resolve() == saved_model.resolve() for m in locator.models)


def test_all_components_pick_answers_the_middle_of_a_fragmented_thin_instrument():
    """A thin instrument segmented in fragments (a guide-wire): the heaviest fragment's middle lies
    towards one end, the middle of every confident voxel along their axis in the middle; the volume is
    the total."""
    probability = np.zeros((9, 10, 61))
    probability[4, 5, 2:22] = 0.9  # the heaviest fragment (20 voxels), at one end
    probability[4, 5, 25:40] = 0.9
    probability[4, 5, 43:59] = 0.9
    probability[4, 5, 60] = 0.3  # below the threshold: not part of the instrument
    heaviest, _ = heaviest_component(probability, (1.0, 1.0, 0.5))
    (z, y, x), volume = all_components(probability, (1.0, 1.0, 0.5))
    assert heaviest[2] == pytest.approx(11.5) and (z, y) == pytest.approx((4.0, 5.0))
    assert x == pytest.approx(30.0)  # the 26th of the 51 voxels in order along the wire (x = 30), +-1
    assert volume == pytest.approx(51 * 0.5)
    assert all_components(np.zeros((3, 4, 5)), (1.0, 1.0, 1.0)) is None


def test_a_locator_model_with_the_all_pick_is_saved_loaded_and_used(saved_model, tmp_path, capsys):
    out = tmp_path / "picks"
    argv = ["locator-from-model", "--model", str(saved_model), "--model", str(saved_model), "--out", str(out)]
    assert main([*argv, "--pick", "heaviest", "--pick", "everything"]) == 2
    assert "--pick" in capsys.readouterr().err and not out.exists()
    assert (
        main([*argv, "--min-volume", "250", "--min-volume", "25", "--pick", "heaviest", "--pick", "all"]) == 0
    )
    meta = json.loads((out / "locator.json").read_text())
    assert [e["pick"] for e in meta["models"]] == ["heaviest", "all"]
    assert [m.pick for m in load_locator(out).models] == ["heaviest", "all"]
    z, y, x = np.indices(SHAPE_ZYX, dtype=float)  # the tube in two pieces: 6 mm and 14 mm long
    cx, cy, cz = TUBE_INDEX_XYZ
    along = (x - cx) * SPACING[0]
    radial = np.hypot((y - cy) * SPACING[1], (z - cz) * SPACING[2])
    pieces = (radial < 2.5) & (np.abs(along) < 12.0) & ~((along > -6.0) & (along < -2.0))
    image = _rotated(np.where(pieces, 100.0, 0.0))
    truth = np.asarray(image.TransformContinuousIndexToPhysicalPoint(TUBE_INDEX_XYZ))
    member = _member(image)
    heaviest = locate(SegmentationLocator(Path("stub"), {}, [member]), image)
    member.pick = "all"
    every = locate(SegmentationLocator(Path("stub"), {}, [member]), image)
    assert np.linalg.norm(np.asarray(heaviest.point_lps) - truth) > 3.0  # the long piece's middle
    assert np.linalg.norm(np.asarray(every.point_lps) - truth) < 1.5


class _Counting(torch.nn.Module):
    """A stub network that counts its forward passes."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(x)


def test_the_first_trusted_model_answers_and_the_later_ones_do_not_run():
    """Running every model costs their sum; the models run in order and stop at the first trusted find,
    even when a later one would be more confident."""
    image = _tube_volume()
    level = halfway_level(image, 0.0, 100.0, TARGET)
    first, second = _Counting(ThresholdNet(level)), _Counting(ThresholdNet(level))
    trusted = _member(image, min_volume=100.0, name="first", net=first)
    surer = _member(image, min_volume=1.0, name="second", net=second)
    found = locate(SegmentationLocator(Path("stub"), {}, [trusted, surer]), image)
    assert found.found_by == "first" and first.calls > 0 and second.calls == 0
    reversed_order = locate(SegmentationLocator(Path("stub"), {}, [surer, trusted]), image)
    assert reversed_order.found_by == "second" and reversed_order.confidence > found.confidence
