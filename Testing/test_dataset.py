"""Tests of SemiSupSegLib.dataset: parsing, validation messages, saving and upsert."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from SemiSupSegLib import dataset as dsmod
from SemiSupSegLib.dataset import load_dataset, save_dataset, upsert_case, validate_dataset
from SemiSupSegLib.errors import DatasetError, InputError

SIZE = 12  # voxels per axis of the test volumes


def write_volume(path, array, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def write_case(root, name, *, label=True, **label_kwargs):
    """An image (float ramp) and, if ``label``, a {0, 1} label with a cube in the middle."""
    write_volume(root / "images" / f"{name}.nii.gz", np.random.default_rng(0).random((SIZE,) * 3, np.float32))
    if label:
        array = np.zeros((SIZE,) * 3, np.uint8)
        array[4:8, 4:8, 4:8] = 1
        write_volume(root / "labels" / f"{name}.nii.gz", array, **label_kwargs)


@pytest.fixture
def root(tmp_path):
    """A valid dataset: 3 training cases, 1 unlabeled, 1 test (MSD-style string entry)."""
    for i in range(3):
        write_case(tmp_path, f"case_{i:03d}")
    write_case(tmp_path, "unl_000", label=False)
    write_case(tmp_path, "test_000", label=False)
    raw = {
        "name": "tiny",
        "description": "test data",
        "reference": "kept as is",
        "modality": {"0": "US"},
        "labels": {"0": "background", "1": "instrument"},
        "training": [
            {"image": f"images/case_{i:03d}.nii.gz", "label": f"labels/case_{i:03d}.nii.gz", "fold": i}
            for i in range(3)
        ],
        "unlabeled": [{"image": "images/unl_000.nii.gz", "center": [5.0, 6.0, 7.0]}],
        "test": ["images/test_000.nii.gz"],
    }
    raw["training"][0]["center"] = [5.5, 5.5, 5.5]
    (tmp_path / "dataset.json").write_text(json.dumps(raw))
    return tmp_path


def edit_json(root, change):
    path = root / "dataset.json"
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw))


def problems_of(root):
    return validate_dataset(load_dataset(root / "dataset.json", validate=False))


def test_load_valid_dataset(root):
    ds = load_dataset(root / "dataset.json")
    assert ds.name == "tiny" and ds.num_classes == 2 and ds.labels == {0: "background", 1: "instrument"}
    assert [c.name for c in ds.training] == ["case_000", "case_001", "case_002"]
    first = ds.training[0]
    assert first.image == root / "images" / "case_000.nii.gz" and first.image.is_absolute()
    assert first.label == root / "labels" / "case_000.nii.gz"
    assert first.center == (5.5, 5.5, 5.5) and ds.training[1].center is None
    assert (first.section, ds.training[2].index) == ("training", 2)
    assert ds.unlabeled[0].label is None and ds.unlabeled[0].center == (5.0, 6.0, 7.0)
    assert ds.test[0].name == "test_000" and ds.test[0].section == "test"
    assert load_dataset(root).path == root / "dataset.json"  # a folder is accepted


def test_default_labels_and_absolute_paths(root):
    absolute = str(root / "images" / "case_001.nii.gz")
    edit_json(root, lambda raw: (raw.pop("labels"), raw["training"][1].update(image=absolute)))
    ds = load_dataset(root / "dataset.json")
    assert ds.labels == {0: "background", 1: "foreground"}
    assert str(ds.training[1].image) == absolute


def test_missing_json(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "dataset.json")


def test_invalid_json(tmp_path):
    (tmp_path / "dataset.json").write_text('{"training": [')
    with pytest.raises(DatasetError, match="is not valid JSON"):
        load_dataset(tmp_path / "dataset.json")


def test_a_dataset_json_with_a_byte_order_mark_is_read(root):
    """Windows editors save UTF-8 with a BOM; json.loads refused it ("Unexpected UTF-8 BOM")."""
    path = root / "dataset.json"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert [c.name for c in load_dataset(path).training] == ["case_000", "case_001", "case_002"]


def test_no_section_at_all(tmp_path):
    (tmp_path / "dataset.json").write_text('{"name": "x"}')
    with pytest.raises(DatasetError, match="none of the lists 'training', 'unlabeled', 'test' is present"):
        load_dataset(tmp_path / "dataset.json")


def test_entry_without_image(root):
    edit_json(root, lambda raw: raw["training"][1].pop("image"))
    with pytest.raises(DatasetError) as info:
        load_dataset(root / "dataset.json", validate=False)
    assert info.value.problems == ["training[1] has no 'image' path"]


def test_valid_dataset_has_no_problems(root):
    assert problems_of(root) == []


def _remove(path):
    path.unlink()


def _corrupt(path):
    path.write_bytes(os.urandom(500))


def _flat_image(path):
    write_volume(path, np.zeros((1, SIZE, SIZE), np.float32))


@pytest.mark.parametrize(
    ("target", "damage", "expected"),
    [
        ("images", _remove, "image file '{path}' does not exist"),
        ("labels", _remove, "label file '{path}' does not exist"),
        ("images", _corrupt, "image file '{path}' cannot be read"),
        ("labels", _corrupt, "label file '{path}' cannot be read"),
        ("images", _flat_image, "image file '{path}' is 2D (size 1 along axis 2"),
    ],
)
def test_file_problems_name_case(root, target, damage, expected):
    path = root / target / "case_001.nii.gz"
    damage(path)
    problems = problems_of(root)
    assert len(problems) == 1, problems
    assert problems[0].startswith("training[1] 'case_001': ")
    assert expected.format(path=path) in problems[0]


def test_nan_image(root):
    # NRRD: ITK's NIfTI reader turns NaN into 0, so a NIfTI file cannot carry NaN into the engine.
    array = np.zeros((SIZE,) * 3, np.float32)
    array[0, 0, :2] = np.nan
    path = write_volume(root / "images" / "case_001.nrrd", array)
    edit_json(root, lambda raw: raw["training"][1].update(image="images/case_001.nrrd"))
    assert problems_of(root) == [
        f"training[1] 'case_001': image file '{path}' has 2 non-finite voxel(s) (2 NaN, 0 infinite); "
        "fix or mask them before use"
    ]


@pytest.mark.parametrize(
    ("label_kwargs", "expected"),
    [
        ({"spacing": (1.0, 1.0, 2.0)}, "label spacing (1, 1, 2) differs from image spacing (1, 1, 1)"),
        ({"origin": (0.0, 3.0, 0.0)}, "label origin (0, 3, 0) differs from image origin (0, 0, 0)"),
    ],
)
def test_label_geometry_differs(root, label_kwargs, expected):
    write_case(root, "case_002", **label_kwargs)
    assert problems_of(root) == [f"training[2] 'case_002': {expected}"]


def test_label_size_differs(root):
    write_volume(root / "labels" / "case_002.nii.gz", np.zeros((SIZE - 2, SIZE, SIZE), np.uint8))
    assert problems_of(root) == [
        "training[2] 'case_002': label size (12, 12, 10) differs from image size (12, 12, 12)"
    ]


def test_label_direction_differs(root):
    label = sitk.ReadImage(str(root / "labels" / "case_000.nii.gz"))
    label.SetDirection((0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0))
    sitk.WriteImage(label, str(root / "labels" / "case_000.nii.gz"))
    problems = problems_of(root)
    assert len(problems) == 1 and problems[0].startswith("training[0] 'case_000': label direction")


def test_label_values_outside_classes(root):
    array = np.zeros((SIZE,) * 3, np.uint8)
    array[1, 1, 1] = 3
    array[2, 2, 2] = 1
    write_volume(root / "labels" / "case_001.nii.gz", array)
    assert problems_of(root) == [
        "training[1] 'case_001': label has values [3] outside the declared classes [0, 1]"
    ]


def test_training_without_label(root):
    edit_json(root, lambda raw: raw["training"][2].pop("label"))
    assert problems_of(root) == ["training[2] 'case_002' has no label; put it under 'unlabeled'"]


@pytest.mark.parametrize("center", [[1.0, 2.0], ["a", 1, 2], [1.0, None, 2.0], "1,2,3", 5])
def test_center_not_three_numbers(root, center):
    edit_json(root, lambda raw: raw["unlabeled"][0].update(center=center))
    problems = problems_of(root)
    assert len(problems) == 1 and problems[0].startswith("unlabeled[0] 'unl_000': center ")
    assert "is not 3 finite numbers" in problems[0]


def test_center_outside_image(root):
    edit_json(root, lambda raw: raw["training"][1].update(center=[5.0, 40.0, 5.0]))
    problems = problems_of(root)
    assert len(problems) == 1
    assert problems[0].startswith("training[1] 'case_001': center (5, 40, 5) mm is outside the volume")


def test_duplicate_names(root):
    edit_json(root, lambda raw: raw["training"].append(dict(raw["training"][0])))
    problems = problems_of(root)
    assert problems == ["training[3] 'case_000': duplicate case name (also training[0])"]


def test_check_images_false_skips_reading(root):
    _corrupt(root / "images" / "case_000.nii.gz")
    ds = load_dataset(root / "dataset.json", validate=False)
    assert validate_dataset(ds, check_images=False) == []
    assert len(validate_dataset(ds)) == 1


def test_load_raises_with_all_problems_listed(root):
    edit_json(
        root,
        lambda raw: raw["training"].extend(
            {"image": f"images/missing_{i:02d}.nii.gz", "label": "labels/x.nii.gz"} for i in range(12)
        ),
    )
    with pytest.raises(DatasetError) as info:
        load_dataset(root / "dataset.json")
    assert len(info.value.problems) == 24  # missing image and missing label for each
    message = str(info.value)
    assert "has 24 problem(s)" in message and "... and 14 more" in message
    assert "training[3] 'missing_00': image file" in message


def test_save_is_readable_by_monai(root, tmp_path):
    from monai.data import load_decathlon_datalist

    ds = load_dataset(root / "dataset.json")
    out = root / "copy.json"
    save_dataset(ds, out)
    saved = json.loads(out.read_text())
    assert saved["reference"] == "kept as is" and saved["training"][1]["fold"] == 1
    assert saved["training"][0]["image"] == "images/case_000.nii.gz"  # relative to the json
    assert saved["test"] == ["images/test_000.nii.gz"]

    items = load_decathlon_datalist(str(out), True, "training")
    assert len(items) == 3
    assert items[0]["image"] == str(root / "images" / "case_000.nii.gz")
    assert items[0]["label"] == str(root / "labels" / "case_000.nii.gz")
    assert items[0]["center"] == [5.5, 5.5, 5.5]
    assert load_decathlon_datalist(str(out), True, "test")[0]["image"] == str(
        root / "images" / "test_000.nii.gz"
    )
    assert load_dataset(out).training[0].center == (5.5, 5.5, 5.5)


def test_save_raw_dict(tmp_path):
    save_dataset({"training": [], "custom": 1}, tmp_path / "d.json")
    assert json.loads((tmp_path / "d.json").read_text()) == {"training": [], "custom": 1}


def test_upsert_creates_and_does_not_duplicate(tmp_path):
    write_case(tmp_path, "a")
    path = tmp_path / "dataset.json"
    image, label = tmp_path / "images" / "a.nii.gz", tmp_path / "labels" / "a.nii.gz"
    case = upsert_case(path, "training", image, label, center=(5.0, 5.0, 5.0))
    assert (case.name, case.section, case.index, case.image, case.label) == ("a", "training", 0, image, label)
    case = upsert_case(path, "training", image, label, center=(6.0, 6.0, 6.0))
    raw = json.loads(path.read_text())
    assert raw["training"] == [
        {"image": "images/a.nii.gz", "label": "labels/a.nii.gz", "center": [6.0, 6.0, 6.0]}
    ]
    assert raw["labels"] == dsmod.DEFAULT_LABELS
    assert case.center == (6.0, 6.0, 6.0)
    assert load_dataset(path).training[0].name == "a"


def test_upsert_moves_unlabeled_to_training(root):
    write_volume(root / "labels" / "unl_000.nii.gz", np.zeros((SIZE,) * 3, np.uint8))
    case = upsert_case(
        root / "dataset.json",
        "training",
        root / "images" / "unl_000.nii.gz",
        root / "labels" / "unl_000.nii.gz",
    )
    ds = load_dataset(root / "dataset.json")
    assert ds.unlabeled == []
    assert [c.name for c in ds.training] == ["case_000", "case_001", "case_002", "unl_000"]
    assert case.index == 3 and case.center == (5.0, 6.0, 7.0)  # the center came along
    assert ds.raw["reference"] == "kept as is"


def test_upsert_matches_by_name_and_updates_in_place(root):
    other = root / "elsewhere" / "case_001.nii.gz"
    write_volume(other, np.zeros((SIZE,) * 3, np.float32))
    upsert_case(root / "dataset.json", "training", other, root / "labels" / "case_001.nii.gz")
    ds = load_dataset(root / "dataset.json")
    assert len(ds.training) == 3 and ds.training[1].image == other and ds.training[1].index == 1


def test_upsert_test_section_with_string_entries(root):
    upsert_case(root / "dataset.json", "test", root / "images" / "case_000.nii.gz")
    raw = json.loads((root / "dataset.json").read_text())
    assert raw["test"] == [{"image": "images/test_000.nii.gz"}, {"image": "images/case_000.nii.gz"}]


def test_upsert_rejects_bad_input(tmp_path):
    write_case(tmp_path, "a")
    image = tmp_path / "images" / "a.nii.gz"
    with pytest.raises(InputError, match="needs a label"):
        upsert_case(tmp_path / "dataset.json", "training", image)
    with pytest.raises(InputError, match="does not exist"):
        upsert_case(tmp_path / "dataset.json", "unlabeled", tmp_path / "nope.nii.gz")
    with pytest.raises(InputError, match="not 3 finite numbers"):
        upsert_case(tmp_path / "dataset.json", "unlabeled", image, center=(1.0, 2.0))
    with pytest.raises(InputError, match="unknown dataset section"):
        upsert_case(tmp_path / "dataset.json", "validation", image)
    assert not (tmp_path / "dataset.json").exists()


def test_upsert_refuses_malformed_json(tmp_path):
    write_case(tmp_path, "a")
    (tmp_path / "dataset.json").write_text('{"training": [5]}')
    with pytest.raises(DatasetError, match="training\\[0\\] is not an object"):
        upsert_case(tmp_path, "unlabeled", tmp_path / "images" / "a.nii.gz")
    assert (tmp_path / "dataset.json").read_text() == '{"training": [5]}'
