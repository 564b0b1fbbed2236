"""The second, independent ultrasound generator (benchmarks/other_generator.py) writes what the benchmark
reads: a dataset the product accepts, a label on the image's rotated grid, and a centre on the label.
A slip in its geometry would make every "other generator" Dice meaningless."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SemiSupSegLib.dataset import labelled_cases, load_dataset

REPO = Path(__file__).resolve().parents[1]


def _generator():
    spec = importlib.util.spec_from_file_location(
        "other_generator", REPO / "benchmarks" / "other_generator.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kind", ["catheter", "guidewire"])
def test_the_centre_lies_on_the_label_of_a_rotated_grid_and_the_instrument_is_bright(kind):
    image, label, centre = _generator().render_case(seed=3, size=40, kind=kind)
    assert image.GetSize() == label.GetSize() == (40, 40, 40)
    assert image.GetDirection() == label.GetDirection() and not np.allclose(
        np.array(image.GetDirection()).reshape(3, 3), np.eye(3)
    )
    pixels, mask = sitk.GetArrayFromImage(image).astype(float), sitk.GetArrayFromImage(label)
    assert mask.sum() > 20
    index_xyz = np.array(label.TransformPhysicalPointToContinuousIndex(centre))
    labelled_xyz = np.argwhere(mask)[:, ::-1]
    assert np.min(np.linalg.norm(labelled_xyz - index_xyz, axis=1)) <= 1.0  # the centre is on the tube
    assert pixels[mask > 0].mean() > pixels[mask == 0].mean() + 20  # an echogenic instrument


def test_the_dataset_is_read_by_the_product_and_reproducible_for_a_seed(tmp_path):
    generator = _generator()
    first = generator.write_dataset(tmp_path / "a", cases=2, size=32, seed=5)
    again = generator.write_dataset(tmp_path / "b", cases=2, size=32, seed=5)
    cases = labelled_cases(load_dataset(first), "test", "evaluation")
    assert len(cases) == 2 and all(c.center is not None for c in cases)
    for name in ("images/other_catheter_000.nii.gz", "labels/other_catheter_001.nii.gz"):
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(first.parent / name)))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(again.parent / name)))
        assert np.array_equal(a, b)


def test_an_ablation_changes_only_the_image_and_unknown_ones_are_refused():
    """A probe must compare the same case with one difference removed: same label and centre."""
    generator = _generator()
    image, label, centre = generator.render_case(seed=4, size=32)
    for ablation in generator.ABLATIONS:
        probe_image, probe_label, probe_centre = generator.render_case(
            4, 32, "catheter", frozenset({ablation})
        )
        assert probe_centre == centre
        assert np.array_equal(sitk.GetArrayFromImage(probe_label), sitk.GetArrayFromImage(label))
        assert not np.array_equal(sitk.GetArrayFromImage(probe_image), sitk.GetArrayFromImage(image)), (
            ablation
        )
    with pytest.raises(ValueError, match="unknown ablation"):
        generator.render_case(4, 32, "catheter", frozenset({"shiny"}))
