"""Bad input on the command line: exit status 2, one line naming the problem, nothing on disk changed.

Every case is refused before any data is read or any network is built, so each costs milliseconds; the
few that need a model use a random width-0.0625 network on small anisotropic, rotated volumes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from SemiSupSegLib import training
from SemiSupSegLib.checkpoints import checkpoint_path, write_checkpoint
from SemiSupSegLib.cli import build_parser, main
from SemiSupSegLib.dataset import load_dataset
from SemiSupSegLib.errors import DatasetError, InputError
from SemiSupSegLib.locator.train import LocatorTrainConfig
from SemiSupSegLib.methods import METHODS
from SemiSupSegLib.model_store import save_model
from SemiSupSegLib.networks import CompactUNet, NetworkConfig
from SemiSupSegLib.preprocessing import check_resampled_size, resample_to_spacing
from SemiSupSegLib.progress import Reporter

TINY = NetworkConfig(width=0.0625)
DIRECTION = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # 90 degrees about z


def run(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(code: int, out: str, err: str) -> str:
    """The single stderr line of a refused command (and nothing on stdout)."""
    assert code == 2, (code, out, err)
    assert out == "" and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("semisupseg: error: "), err
    return lines[0]


def json_error_event(code: int, out: str, err: str) -> str:
    """The message of the single protocol ``error`` event of a refused ``--progress json`` command."""
    assert code == 2 and err == "", (code, out, err)
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    event = json.loads(lines[0])
    assert event["protocol"] == 1 and event["event"] == "error"
    return event["message"]


def write_volume(path: Path, array: np.ndarray, spacing=(0.7, 0.5, 0.9)) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((3.0, -2.0, 1.0))
    image.SetDirection(DIRECTION)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def write_case(root: Path, name: str, shape=(14, 18, 22), label_shape=None) -> dict:
    """An anisotropic, rotated, non-cubic image (z, y, x) and a label with a box in it; its test entry."""
    rng = np.random.default_rng(0)
    write_volume(root / "images" / f"{name}.nii.gz", rng.random(shape, np.float32))
    label = np.zeros(label_shape or shape, np.uint8)
    label[5:9, 6:10, 8:12] = 1
    write_volume(root / "labels" / f"{name}.nii.gz", label)
    image = sitk.ReadImage(str(root / "images" / f"{name}.nii.gz"))
    center = image.TransformContinuousIndexToPhysicalPoint((9.5, 7.5, 6.5))
    return {"image": f"images/{name}.nii.gz", "label": f"labels/{name}.nii.gz", "center": list(center)}


@pytest.fixture(scope="module")
def random_model(tmp_path_factory) -> Path:
    """An untrained width-0.0625 model with 16^3 patches at 0.8 mm (enough to exercise the CLI)."""
    folder = tmp_path_factory.mktemp("model") / "random"
    torch.manual_seed(0)
    meta = {
        "name": "random",
        "method": "supervised",
        "classes": {"0": "background", "1": "instrument"},
        "patch_size": [16, 16, 16],
        "preprocessing": {"target_spacing": [0.8, 0.8, 0.8]},
    }
    return save_model(folder, {"net": CompactUNet(width=0.0625)}, meta)


def typed_flags() -> list[tuple[str, str]]:
    """(command, flag) of every option that converts its value: all of them check it."""
    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    return [
        (name, action.option_strings[0])
        for name, parser in commands.items()
        for action in parser.populated()._actions
        if action.type is not None and action.option_strings
    ]


def test_every_typed_flag_is_found():
    found = set(typed_flags())
    some = {("train", "--steps"), ("train-locator", "--gamma"), ("segment", "--mc-samples")}
    assert some | {("demo", "--cases")} <= found and len(found) > 40


# ----------------------------------------------------------------------------------- numeric flags


@pytest.mark.parametrize("command, flag", typed_flags())
def test_every_typed_flag_refuses_negative_nan_and_text(command, flag, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a wrongly accepted value must not write anything into the repository
    for bad in ("-1", "nan", "abc"):
        line = one_error_line(*run([command, flag, bad], capsys))
        assert f"argument {flag}:" in line and repr(bad) in line, line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "argv, named",
    [
        (["train", "--checkpoint-every", "0"], "--checkpoint-every"),
        (["train", "--val-every", "0"], "--val-every"),
        (["train", "--batch", "0"], "--batch"),
        (["train", "--steps", "-5"], "--steps"),
        (["train", "--steps", "0"], "--steps"),
        (["train", "--width", "0"], "--width"),
        (["train", "--dropout", "1"], "--dropout"),
        (["train", "--steps", "2.5"], "--steps"),
        (["train", "--patch", "0"], "--patch"),
        (["train", "--target-spacing", "0.5,0,0.5"], "--target-spacing"),
        (["train-locator", "--steps", "0"], "--steps"),
        (["train-locator", "--starts", "10"], "--starts"),
        (["train-locator", "--gamma", "1.5"], "--gamma"),
        (["segment", "--mc-samples", "0"], "--mc-samples"),
        (["segment", "--threshold", "1.5"], "--threshold"),
        (["segment", "--center", "1,inf,2"], "--center"),
        (["segment", "--device", "tpu"], "--device"),
        (["segment", "--device", "cuda:x"], "--device"),
        (["demo", "--cases", "0"], "--cases"),
        (["phantom", "--spacing", "0"], "--spacing"),
        (["train", "--steps", "1e20"], "--steps"),  # beyond a C integer: numpy and torch overflow
        (["train", "--seed", "1e30"], "--seed"),
        (["phantom", "--cases", str(2**31)], "--cases"),
        (["train", "--patch", "16,16,1e30"], "--patch"),
        (["train-locator", "--memory", "2000000000"], "--memory"),  # 72 GB of replay
    ],
)
def test_out_of_range_values_are_refused(argv, named, capsys):
    line = one_error_line(*run(argv, capsys))
    assert f"argument {named}:" in line, line


def test_running_out_of_memory_is_one_line_naming_the_command(tmp_path, capsys, monkeypatch):
    """An absurd size (``phantom --size 1000000000``) ends in an allocation failure: status 2, one line."""
    import SemiSupSegLib.phantom as phantom

    def allocate(*args, **kwargs):
        raise MemoryError("Unable to allocate 33.1 GiB for an array with shape (4441661102,)")

    monkeypatch.setattr(phantom, "write_phantom_dataset", allocate)
    line = one_error_line(*run(["phantom", tmp_path / "p", "--cases", "1", "--size", "64"], capsys))
    assert re.search(r"out of memory in 'phantom' \(Unable to allocate 33\.1 GiB.*check the sizes", line)


def test_patch_order_is_z_y_x_in_help_and_error(capsys):
    train = next(a for a in build_parser()._actions if a.dest == "command").choices["train"].populated()
    patch = next(a for a in train._actions if a.dest == "patch")
    assert "z,y,x" in patch.help
    assert "(z,y,x)" in one_error_line(*run(["train", "--patch", "16,16"], capsys))
    assert "(x,y,z)" in one_error_line(*run(["segment", "--center", "1,2"], capsys))


def test_help_and_other_commands_bad_arguments_do_not_load_torch_or_monai():
    """``semisupseg --help`` and a bad argument to a command whose parser needs no engine module answer
    without importing torch, MONAI or SimpleITK (5-8 s here, where the answer takes 0.2 s): only the
    parser of the command used is completed (``arguments._Parser``'s ``populate``)."""
    import subprocess
    import sys

    script = (
        "import contextlib, io, sys; from SemiSupSegLib.cli import main\n"
        "codes = [main(['segment', '--bogus']), main(['evaluate', '--model'])]\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n        main(['--help'])\n    except SystemExit as exc:\n        codes.append(exc.code)\n"
        "print(codes, sorted(m for m in ('torch', 'monai', 'SimpleITK') if m in sys.modules))"
    )
    package = Path(__file__).resolve().parents[1] / "SemiSupSeg"
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=package, capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip().splitlines()[-1] == "[2, 2, 0] []"


def test_usage_errors_are_one_line(capsys):
    assert "invalid choice" in one_error_line(*run(["trian"], capsys))
    assert "--bogus" in one_error_line(*run(["train", "--bogus"], capsys))
    assert "required" in one_error_line(*run(["segment", "--model", "m"], capsys))


# ----------------------------------------------------------------------------------- method options


@pytest.mark.parametrize(
    "method, option, named",
    [
        ("supervised", "lr=abc", "lr"),
        ("mean-teacher", "ramp_steps=abc", "ramp_steps"),
        ("ua-mt", "mc_samples=0", "mc_samples"),
        ("dual-unet", "alpha=abc", "alpha"),
        ("dual-unet", "tau1=NaN", "tau1"),
        *[(m, "foo=bar", "foo") for m in sorted(METHODS)],
    ],
)
def test_bad_method_options_are_refused_before_the_data_is_read(method, option, named, tmp_path, capsys):
    argv = ["train", "--data", tmp_path / "missing.json", "--out", tmp_path / "m", "--method", method]
    line = one_error_line(*run([*argv, "--option", option], capsys))
    assert re.search(rf"\b{named}\b", line) and "missing.json" not in line, line
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("name", sorted(METHODS))
def test_each_method_converts_every_option_with_its_parser(name):
    cls = METHODS[name]
    with pytest.raises(InputError, match="no option"):
        cls(TINY, 10, foo=1)
    for option in cls.option_parsers:
        with pytest.raises(InputError, match=rf"\b{option}\b"):
            cls(TINY, 10, **{option: "abc"})  # text is no number, no boolean, no choice
        with pytest.raises(InputError, match=rf"\b{option}\b"):
            cls.parse_options({option: "abc"})


def test_options_are_converted_by_their_parsers():
    parsed = METHODS["dual-unet"].parse_options({"lr": "1e-3", "ramp_steps": 100.0, "intra": "false"})
    assert parsed == {"lr": 1e-3, "ramp_steps": 100, "intra": False}
    du = METHODS["dual-unet"](TINY, 10, **parsed)
    assert du.lr == 1e-3 and du.ramp_steps == 100 and du.terms["intra"] is False


# ----------------------------------------------------------------------------------- segment


def test_segment_refuses_bad_options_before_writing_anything(random_model, tmp_path, capsys):
    case = write_case(tmp_path, "a")
    output = tmp_path / "seg.nrrd"
    output.write_bytes(b"an earlier result")
    base = ["segment", "--model", random_model, "--input", tmp_path / case["image"], "--output", output]
    for extra in (
        ["--uncertainty", tmp_path / "u.nrrd", "--mc-samples", "0"],
        ["--device", "tpu"],
        ["--probability", tmp_path / "p.txt"],
    ):
        line = one_error_line(*run([*base, *extra], capsys))
        assert extra[-2] in line or "p.txt" in line, line
        assert output.read_bytes() == b"an earlier result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "labels", "seg.nrrd"]


def test_huge_spacing_is_refused_with_the_size_it_would_need(random_model, tmp_path, capsys):
    ramp = np.arange(960, dtype=np.float32).reshape(12, 10, 8)  # not constant: that is refused first
    path = write_volume(tmp_path / "huge.nrrd", ramp, spacing=(1e6, 1e6, 1e6))
    argv = ["segment", "--model", random_model, "--input", path, "--output", tmp_path / "seg.nrrd"]
    line = one_error_line(*run(argv, capsys))
    assert "would need 1e+07x1.25e+07x1.5e+07 = 1.88e+21 voxels (7.5e+12 GB as float32)" in line, line
    assert not (tmp_path / "seg.nrrd").exists()


def test_check_resampled_size_gives_the_size_resampling_makes():
    image = sitk.Image(12, 10, 8, sitk.sitkFloat32)
    image.SetSpacing((1.0, 0.5, 2.0))
    target = (0.5, 0.25, 1.0)  # x, y, z
    assert check_resampled_size(image, target) == resample_to_spacing(image, target).GetSize() == (24, 20, 16)
    with pytest.raises(InputError, match=r"24x20x16 = 7\.68e\+03 voxels \(3\.07e-05 GB"):
        check_resampled_size(image, target, limit_voxels=7679)


# ----------------------------------------------------------------------------------- datasets


def test_test_label_of_another_size_is_named(tmp_path):
    entry = write_case(tmp_path, "t", label_shape=(14, 18, 20))
    (tmp_path / "dataset.json").write_text(json.dumps({"test": [entry]}))
    with pytest.raises(DatasetError) as info:
        load_dataset(tmp_path / "dataset.json")
    expected = "test[0] 't': label size (20, 18, 14) differs from image size (22, 18, 14)"
    assert info.value.problems == [expected]


def test_a_test_only_dataset_is_evaluated_and_refused_for_training(random_model, tmp_path, capsys):
    (tmp_path / "dataset.json").write_text(json.dumps({"test": [write_case(tmp_path, "t")]}))
    result = tmp_path / "eval.json"
    argv = ["evaluate", "--model", random_model, "--data", tmp_path, "--json", result]
    assert main([str(a) for a in argv]) == 0
    assert [c["case"] for c in json.loads(result.read_text())["cases"]] == ["t"]
    capsys.readouterr()
    argv = ["train", "--data", tmp_path / "dataset.json", "--out", tmp_path / "m"]
    line = one_error_line(*run(argv, capsys))
    assert "no labelled cases in its 'training' list to train on" in line
    assert not (tmp_path / "m").exists()


def test_errors_inside_the_trainer_are_printed_once(tmp_path, capsys):
    (tmp_path / "dataset.json").write_text(json.dumps({"training": [{"image": "a.nrrd", "label": "b.nrrd"}]}))
    argv = ["train", "--data", tmp_path / "dataset.json", "--out", tmp_path / "m", "--patch", "18"]
    line = one_error_line(*run([*argv, "--progress", "human"], capsys))
    assert "divisible by 4" in line


# ----------------------------------------------------------------------------------- progress json


def test_every_error_is_one_json_event_in_json_mode(tmp_path, capsys):
    corrupt = checkpoint_path(tmp_path / "corrupt")
    corrupt.parent.mkdir(parents=True)
    corrupt.write_bytes(b"not a checkpoint")
    cases = {
        "needs --data": ["train", "--out", tmp_path / "new"],
        "no checkpoint": ["train", "--out", tmp_path / "none", "--resume"],
        "is corrupt": ["train", "--out", tmp_path / "corrupt", "--resume"],
        "argument --steps": ["train", "--steps", "0"],
        "method option lr": ["train", "--data", "d.json", "--option", "lr=abc"],
        "model 'nothing' not found": ["train", "--data", "d.json", "--init", "nothing"],
        "no checkpoint ": ["train-locator", "--out", tmp_path / "none", "--resume"],
    }
    for expected, argv in cases.items():
        for progress in (["--progress", "json"], ["--progress=json"]):
            assert expected.strip() in json_error_event(*run([*argv, *progress], capsys))
    assert corrupt.read_bytes() == b"not a checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt"]


# ----------------------------------------------------------------------------------- --resume


@pytest.fixture
def interrupted(tmp_path) -> Path:
    """A run folder, moved since it was written, whose checkpoint stands at step 6 of 10 (only the
    configuration is read from it)."""
    out = tmp_path / "run"
    config = training.TrainConfig(data=str(tmp_path / "dataset.json"), out="moved/run", steps=10, batch=2)
    write_checkpoint(checkpoint_path(out), {"step": 6, "config": config.to_json()}, Reporter())
    return out


@pytest.fixture
def started_runs(monkeypatch) -> list:
    """The (config, resume) of every run the CLI starts; the runs themselves do nothing."""
    runs = []

    def fake_run(self, resume=False):
        runs.append((self.config, resume))
        return Path(self.config.out)

    monkeypatch.setattr(training.Trainer, "run", fake_run)
    return runs


@pytest.mark.parametrize("steps, expected", [(["--steps", "20"], 20), (["--steps", "6"], 6), ([], 10)])
def test_resume_honours_steps(steps, expected, interrupted, started_runs, capsys):
    assert main(["train", "--out", str(interrupted), "--resume", "--batch", "2", *steps]) == 0
    ((config, resume),) = started_runs
    assert resume and config.steps == expected and config.batch == 2 and config.out == str(interrupted)


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--steps", "5"], "--steps 5 is below step 6"),
        (["--batch", "4"], "--batch 4 (stored: 2)"),
        (["--width", "0.5", "--steps", "20"], "--width 0.5 (stored: 1.0)"),
        (["--patch", "32"], "--patch 32,32,32 (stored: 48,48,48)"),
        (["--no-augment"], "--augment none (stored: standard)"),
        (["--augment", "scanner"], "--augment scanner (stored: standard)"),
        (["--option", "lr=0.1"], '--option {"lr": 0.1} (stored: {})'),
        (["--data", "other.json"], "--data other.json"),
        (["--method", "dual-unet"], "--method dual-unet (stored: supervised)"),
    ],
)
def test_resume_refuses_flags_that_differ_from_the_stored_run(argv, named, interrupted, started_runs, capsys):
    before = checkpoint_path(interrupted).read_bytes()
    line = one_error_line(*run(["train", "--out", interrupted, "--resume", *argv], capsys))
    assert named in line, line
    assert started_runs == [] and checkpoint_path(interrupted).read_bytes() == before


def test_a_new_run_into_an_interrupted_runs_folder_is_refused_and_its_checkpoint_kept(
    interrupted, tiny_phantom, started_runs, capsys
):
    """Without --resume, a new run used to start over silently and overwrite the interrupted run's
    checkpoint at its first checkpoint step (hours of training lost to a repeated command)."""
    before = checkpoint_path(interrupted).read_bytes()
    line = one_error_line(
        *run(["train", "--data", tiny_phantom, "--out", interrupted, "--steps", "3"], capsys)
    )
    assert "interrupted run (step 6 of 10)" in line and "--resume" in line, line
    assert started_runs == [] and checkpoint_path(interrupted).read_bytes() == before


def test_a_new_locator_run_into_an_interrupted_runs_folder_is_refused(tmp_path, tiny_phantom, capsys):
    out = tmp_path / "loc"
    config = LocatorTrainConfig(data=[str(tiny_phantom)], out=str(out), steps=50)
    write_checkpoint(checkpoint_path(out), {"step": 3, "config": config.to_json()}, Reporter())
    line = one_error_line(*run(["train-locator", "--data", tiny_phantom, "--out", out], capsys))
    assert "interrupted run (step 3 of 50)" in line and "--resume" in line, line


def test_resume_of_a_locator_refuses_a_different_crop(tmp_path, capsys):
    out = tmp_path / "loc"
    config = LocatorTrainConfig(data=[str(tmp_path / "d.json")], out=str(out), crop=21)
    write_checkpoint(checkpoint_path(out), {"step": 3, "config": config.to_json()}, Reporter())
    line = one_error_line(*run(["train-locator", "--out", out, "--resume", "--crop", "31"], capsys))
    assert "--crop 31 (stored: 21)" in line


# ----------------------------------------------------------------------------------- the README


def test_readme_quick_start_centre_is_the_phantom_case_centre():
    from SemiSupSegLib.phantom import case_seed, generate_phantom

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    quick_start = readme.split("## Quick start on the command line", 1)[1].split("## ", 1)[0]
    phantom = re.search(r"semisupseg phantom \S+ .*--seed (\d+)", quick_start)
    case = re.search(r"--input \S+/phantom_catheter_t(\d{3})\.nii\.gz", quick_start)
    center = re.search(r"--center (\S+)", quick_start)
    assert phantom and case and center, quick_start
    true = generate_phantom(160, "catheter", case_seed(int(phantom[1]), int(case[1]), "test")).center
    given = [float(v) for v in center[1].split(",")]
    np.testing.assert_allclose(given, true, atol=0.05 + 1e-9)  # written to 0.1 mm


def test_an_unknown_normalisation_is_refused_in_one_line(tiny_phantom, tmp_path, capsys):
    line = one_error_line(
        *run(["train", "--data", tiny_phantom, "--out", tmp_path / "m", "--normalization", "minmax"], capsys)
    )
    assert "--normalization" in line and "minmax" in line, line
