"""Case figures (SemiSupSegLib.figures): PNGs of the expected size, contours drawn where the label is on
anisotropic, rotated, non-cubic volumes, and ``evaluate --figures`` writing one per case."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from SemiSupSegLib.cli import main
from SemiSupSegLib.dataset import load_dataset
from SemiSupSegLib.figures import (
    VIEWS,
    figure_pixels,
    render_case_figure,
    slice_centre,
    write_case_figure,
)
from SemiSupSegLib.model_store import save_model
from SemiSupSegLib.networks import CompactUNet

SIZE_XYZ = (40, 30, 20)
SPACING_XYZ = (0.5, 0.8, 1.2)
BOX_ZYX = (slice(5, 14), slice(4, 11), slice(20, 35))  # the label: a box off the volume's centre
ROTATED = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # 90 degrees about z


def _volume(array_zyx: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing(SPACING_XYZ)
    image.SetOrigin((3.0, -7.0, 11.0))
    image.SetDirection(ROTATED)
    return image


def _label() -> sitk.Image:
    mask = np.zeros(SIZE_XYZ[::-1], np.uint8)
    mask[BOX_ZYX] = 1
    return _volume(mask)


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def test_the_slice_centre_is_the_point_voxel_on_a_rotated_grid():
    image = _volume(np.zeros(SIZE_XYZ[::-1], np.float32))
    point = image.TransformIndexToPhysicalPoint((33, 7, 4))
    assert slice_centre(image, point, ()) == (4, 7, 33)
    label = sitk.GetArrayFromImage(_label())
    assert slice_centre(image, None, (None, label)) == (9, 7, 27)  # the box's centroid, rounded


def test_a_figure_is_a_png_of_the_announced_size(tmp_path):
    # the size with an uncertainty row is checked by the evaluate test below
    image, label = _volume(np.random.default_rng(0).random(SIZE_XYZ[::-1]).astype(np.float32)), _label()
    plain = write_case_figure(tmp_path / "new folder" / "plain.png", image, truth=label, prediction=label)
    assert _png_size(plain) == figure_pixels(False)
    assert figure_pixels(True)[1] > figure_pixels(False)[1]


def _rgb_at(rgba: np.ndarray, ax, point_hv: tuple[float, float]) -> np.ndarray:
    """Pixels (3x3) of the drawn figure at a point (horizontal, vertical mm) of an axis."""
    x, y = ax.transData.transform(point_hv)
    row, col = int(round(rgba.shape[0] - y)), int(round(x))
    return rgba[row - 1 : row + 2, col - 1 : col + 2, :3].reshape(-1, 3).astype(int)


def _is_truth_green(pixels: np.ndarray) -> bool:
    return bool(np.any((pixels[:, 1] > 180) & (pixels[:, 0] < 120) & (pixels[:, 2] < 120)))


def test_the_truth_contour_is_drawn_on_the_label_border_in_each_view():
    label = _label()
    image = sitk.Cast(label, sitk.sitkFloat32)  # the box is white in the image too
    fig = render_case_figure(image, truth=label, center_lps=label.TransformIndexToPhysicalPoint((27, 7, 9)))
    rgba = np.asarray(fig.canvas.buffer_rgba())
    spacing_zyx = SPACING_XYZ[::-1]
    for ax, (name, _, (vertical, horizontal)) in zip(fig.axes, VIEWS, strict=True):
        box_v, box_h = BOX_ZYX[vertical], BOX_ZYX[horizontal]
        mid_v = 0.5 * (box_v.start + box_v.stop - 1) * spacing_zyx[vertical]
        mid_h = 0.5 * (box_h.start + box_h.stop - 1) * spacing_zyx[horizontal]
        left_edge = (box_h.start - 0.5) * spacing_zyx[horizontal]
        top_edge = (box_v.start - 0.5) * spacing_zyx[vertical]
        assert _is_truth_green(_rgb_at(rgba, ax, (left_edge, mid_v))), name
        assert _is_truth_green(_rgb_at(rgba, ax, (mid_h, top_edge))), name
        near_left = (box_h.start + 1.5) * spacing_zyx[horizontal]  # inside, away from the centre cross
        inside, outside = _rgb_at(rgba, ax, (near_left, mid_v)), _rgb_at(rgba, ax, (left_edge - 2.0, mid_v))
        assert inside.min() > 200 and outside.max() < 60, name  # the image lies under the contour


def test_a_mask_off_the_image_grid_is_refused():
    from SemiSupSegLib.errors import InputError

    image = _volume(np.zeros(SIZE_XYZ[::-1], np.float32))
    with pytest.raises(InputError, match="prediction"):
        render_case_figure(image, prediction=sitk.Image(8, 8, 8, sitk.sitkUInt8))


@pytest.fixture(scope="module")
def untrained_model(tmp_path_factory) -> Path:
    """An untrained width-0.0625 model with 16^3 patches at 0.8 mm: enough to run evaluate."""
    torch.manual_seed(0)
    meta = {
        "name": "untrained",
        "method": "supervised",
        "classes": {"0": "background", "1": "instrument"},
        "patch_size": [16, 16, 16],
        "preprocessing": {"target_spacing": [0.8, 0.8, 0.8]},
    }
    folder = tmp_path_factory.mktemp("model") / "untrained"
    return save_model(folder, {"net": CompactUNet(width=0.0625, dropout=0.2)}, meta)


def test_evaluate_writes_one_figure_per_case(untrained_model, tiny_phantom, tmp_path):
    figures = tmp_path / "figures"
    argv = ["evaluate", "--model", str(untrained_model), "--data", str(tiny_phantom)]
    assert main([*argv, "--figures", str(figures), "--mc-samples", "1", "--device", "cpu"]) == 0
    names = {f"{case.name}.png" for case in load_dataset(tiny_phantom).test}
    assert {p.name for p in figures.iterdir()} == names
    assert all(_png_size(figures / name) == figure_pixels(True) for name in names)


def test_the_demo_writes_a_figure_per_case(untrained_model, tmp_path):
    argv = ["demo", "--out", str(tmp_path), "--cases", "1", "--size", "40", "--model", str(untrained_model)]
    assert main([*argv, "--true-center", "--device", "cpu"]) == 0
    assert [p.name for p in (tmp_path / "figures").iterdir()] == ["phantom_catheter_t000.png"]
    assert _png_size(tmp_path / "figures" / "phantom_catheter_t000.png") == figure_pixels(False)


def test_the_uncertainty_row_says_what_fraction_of_the_predicted_instrument_is_uncertain():
    """Catches the line missing, counted over the whole image instead of the prediction, or on the truth."""
    from SemiSupSegLib.figures import render_case_figure

    image = _volume(np.random.default_rng(0).random(SIZE_XYZ[::-1]).astype(np.float32))
    prediction = _label()
    instrument = np.flatnonzero(sitk.GetArrayFromImage(prediction) > 0)
    entropy = np.full(SIZE_XYZ[::-1], 0.6, np.float32)  # uncertain everywhere but on the instrument...
    entropy.flat[instrument] = 0.0
    quarter = len(instrument) // 4
    entropy.flat[instrument[:quarter]] = 0.6  # ...except a quarter of its voxels
    truth = sitk.Image(prediction.GetSize(), sitk.sitkUInt8)  # empty: a line from the truth would differ
    truth.CopyInformation(prediction)
    fig = render_case_figure(image, truth=truth, prediction=prediction, uncertainty=_volume(entropy))
    lines = [t.get_text() for t in fig.texts if "of the instrument" in t.get_text()]
    share = 100 * quarter / len(instrument)
    expected = f"{share:.1f} % of the instrument ({quarter} of {len(instrument)} voxels) is uncertain"
    assert len(lines) == 1 and lines[0].startswith(expected)
    without = render_case_figure(image, prediction=prediction)  # no uncertainty row, no line
    assert not any("of the instrument" in t.get_text() for t in without.texts)
