"""The semisupseg command line, end to end on tiny phantom data."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SemiSupSegLib.cli import main
from SemiSupSegLib.dataset import load_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_model(tiny_phantom, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "tiny"
    argv = [
        "train",
        "--data",
        str(tiny_phantom),
        "--out",
        str(out),
        "--steps",
        "4",
        "--patch",
        "16",
        "--width",
        "0.125",
        "--val-cases",
        "1",
        "--val-every",
        "4",
        "--progress",
        "none",
    ]
    assert main(argv) == 0
    return out


def _first_test_case(dataset_json):
    return load_dataset(dataset_json).test[0]


def test_phantom_command_writes_a_valid_dataset(tmp_path, capsys):
    assert main(["phantom", str(tmp_path / "d"), "--cases", "1", "--test", "1", "--size", "48"]) == 0
    assert "dataset.json" in capsys.readouterr().out
    ds = load_dataset(tmp_path / "d" / "dataset.json")
    assert len(ds.training) == 1 and len(ds.test) == 1 and ds.training[0].center is not None


def test_segment_writes_outputs_on_the_input_grid(tiny_model, tiny_phantom, tmp_path, capsys):
    case = _first_test_case(tiny_phantom)
    center = ",".join(str(c) for c in case.center)
    out = tmp_path / "seg.nrrd"
    argv = [
        "segment",
        "--model",
        str(tiny_model),
        "--input",
        str(case.image),
        "--center",
        center,
        "--output",
        str(out),
        "--probability",
        str(tmp_path / "p.nii.gz"),
        "--uncertainty",
        str(tmp_path / "u.mha"),
        "--mc-samples",
        "2",
    ]
    assert main(argv) == 0
    assert "roi" in capsys.readouterr().out
    image = sitk.ReadImage(str(case.image))
    for path in (out, tmp_path / "p.nii.gz", tmp_path / "u.mha"):
        written = sitk.ReadImage(str(path))
        assert written.GetSize() == image.GetSize()
        np.testing.assert_allclose(written.GetOrigin(), image.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(written.GetSpacing(), image.GetSpacing(), atol=1e-6)


def test_segment_accepts_ras_points(tiny_model, tiny_phantom, tmp_path):
    case = _first_test_case(tiny_phantom)
    x, y, z = case.center
    outputs = []
    for flag, point in (([], (x, y, z)), (["--ras"], (-x, -y, z))):
        out = tmp_path / f"seg{len(outputs)}.nrrd"
        argv = [
            "segment",
            "--model",
            str(tiny_model),
            "--input",
            str(case.image),
            "--output",
            str(out),
            "--center",
            ",".join(map(str, point)),
            *flag,
        ]
        assert main(argv) == 0
        outputs.append(sitk.GetArrayFromImage(sitk.ReadImage(str(out))))
    assert np.array_equal(outputs[0], outputs[1])


@pytest.mark.parametrize(
    "problem, expected",
    [
        ("outside", "outside the volume"),
        ("missing_model", "not found"),
        ("two_d", "2D"),
        ("missing_input", "does not exist|not found|missing"),
    ],
)
def test_segment_bad_input_gives_one_clear_line(
    problem, expected, tiny_model, tiny_phantom, tmp_path, capsys
):
    case = _first_test_case(tiny_phantom)
    model, image, center = str(tiny_model), str(case.image), "0,0,0"
    if problem == "outside":
        center = "1000,1000,1000"
    elif problem == "missing_model":
        model = str(tmp_path / "no-model")
    elif problem == "two_d":
        image = str(tmp_path / "flat.nrrd")
        sitk.WriteImage(sitk.Image(20, 20, sitk.sitkUInt8), image)
    elif problem == "missing_input":
        image = str(tmp_path / "nothing.nii.gz")
    out = tmp_path / "seg.nrrd"
    code = main(["segment", "--model", model, "--input", image, "--center", center, "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("semisupseg: error:") and len(err.strip().splitlines()) == 1
    assert __import__("re").search(expected, err), err
    assert not out.exists()


def test_evaluate_prints_mean_std_and_writes_json(tiny_model, tiny_phantom, tmp_path, capsys):
    out = tmp_path / "eval.json"
    preds = tmp_path / "preds"
    args = ["evaluate", "--model", str(tiny_model), "--data", str(tiny_phantom), "--json", str(out)]
    assert main([*args, "--predictions", str(preds)]) == 0
    printed = capsys.readouterr().out
    assert "dice" in printed and "±" in printed
    result = json.loads(out.read_text())
    assert len(result["cases"]) == 2
    dice = [c["dice"] for c in result["cases"]]
    assert result["summary"]["dice"] == pytest.approx({"mean": np.mean(dice), "std": np.std(dice), "n": 2})
    # each row is the metrics of the written prediction against the case's label, on its own grid
    from SemiSupSegLib.dataset import load_dataset
    from SemiSupSegLib.metrics import segmentation_metrics

    for row, case in zip(result["cases"], load_dataset(tiny_phantom).test, strict=True):
        label = sitk.ReadImage(str(case.label))
        pred = sitk.GetArrayFromImage(sitk.ReadImage(str(preds / f"{case.name}.nii.gz"))) > 0
        expected = segmentation_metrics(pred, sitk.GetArrayFromImage(label) > 0, label.GetSpacing()[::-1])
        assert row["case"] == case.name
        assert {k: row[k] for k in expected} == pytest.approx(expected)


def test_models_list_shows_models_in_the_home_folder(tiny_model, capsys):
    home_models = Path(os.environ["SEMISUPSEG_HOME"]) / "models"
    home_models.mkdir(parents=True, exist_ok=True)
    (home_models / "copy").symlink_to(tiny_model, target_is_directory=True)
    assert main(["models", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert any(m["path"].endswith("copy") and m["origin"] == "user" for m in listed)
    assert main(["models", "list"]) == 0  # the human listing says what each model covers
    shipped = next(m for m in listed if m["name"] == "phantom-catheter")
    assert f"    {shipped['description']}" in capsys.readouterr().out.splitlines()


def test_methods_lists_the_registry(capsys):
    assert main(["methods", "--json"]) == 0
    names = [m["name"] for m in json.loads(capsys.readouterr().out)]
    assert "supervised" in names


def test_demo_with_a_given_model(tiny_model, tmp_path, capsys):
    argv = [
        "demo",
        "--out",
        str(tmp_path / "demo"),
        "--cases",
        "1",
        "--size",
        "48",
        "--model",
        str(tiny_model),
    ]
    assert main(argv) == 0
    assert "Dice" in capsys.readouterr().out
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert len(results["cases"]) == 1 and (tmp_path / "demo" / "segmentations").is_dir()


class _ClosedPipe:
    """stdout whose reader has gone (``semisupseg models list | head -1``)."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    def fileno(self) -> int:
        raise OSError("no descriptor")


def test_a_reader_that_closes_the_pipe_ends_the_command_quietly(monkeypatch, capsys):
    """Catches 'semisupseg: error: BrokenPipeError' (status 2) when output is piped into ``head``: a closed
    pipe is the reader's choice, not a bad input; shell tools end silently with 128 + SIGPIPE."""
    monkeypatch.setattr("sys.stdout", _ClosedPipe())
    assert main(["methods"]) == 141
    assert capsys.readouterr().err == ""
