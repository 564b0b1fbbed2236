"""No loader ever runs pickled code: every ``torch.load`` of the engine refuses a malicious file.

Each file holds an object whose unpickling touches a marker file. A loader passes only if it raises
the project's error with a one-line message naming the file AND the marker does not exist afterwards
(an error raised after unpickling would be too late: the payload would already have run).
"""

from __future__ import annotations

import json
import pathlib

import pytest
import SimpleITK as sitk
import torch

from SemiSupSegLib.checkpoints import checkpoint_path, read_checkpoint
from SemiSupSegLib.cli import main
from SemiSupSegLib.errors import ModelError
from SemiSupSegLib.locator import load_locator
from SemiSupSegLib.locator.agent import QNetworkConfig
from SemiSupSegLib.locator.store import KIND, LOCATOR_JSON
from SemiSupSegLib.model_index import MODEL_JSON
from SemiSupSegLib.model_store import load_model
from SemiSupSegLib.networks import NetworkConfig

MODEL_META = {
    "name": "evil",
    "method": "supervised",
    "classes": {"0": "background", "1": "instrument"},
    "patch_size": [16, 16, 16],
    "preprocessing": {"target_spacing": None},
}
LOCATOR_META = {"name": "evil", "kind": KIND, "grid_size": 16, "crop_size": 9, "scales": [3, 1]}


class TouchOnLoad:
    """Unpickling this object creates ``marker`` (a stand-in for arbitrary code)."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _folder(path: pathlib.Path, description: str, meta: dict, weights: dict) -> pathlib.Path:
    """A folder with a valid description (written by hand, as the store writes it) and ``weights``."""
    path.mkdir()
    (path / description).write_text(json.dumps({"format": 1, **meta}), encoding="utf-8")
    torch.save(weights, path / "weights.pt")
    return path


def _model_folder(tmp_path: pathlib.Path, marker: pathlib.Path) -> pathlib.Path:
    """A model whose model.json is valid and whose weights.pt carries the payload."""
    meta = {**MODEL_META, "networks": {"net": NetworkConfig(width=0.0625).to_dict()}}
    return _folder(tmp_path / "model", MODEL_JSON, meta, {"net": TouchOnLoad(marker)})


def _locator_folder(tmp_path: pathlib.Path, marker: pathlib.Path) -> pathlib.Path:
    meta = {**LOCATOR_META, "network": QNetworkConfig(crop=9, n_scales=2, width=4).to_dict()}
    return _folder(tmp_path / "locator", LOCATOR_JSON, meta, {"q_network": TouchOnLoad(marker)})


def _run_folder(tmp_path: pathlib.Path, marker: pathlib.Path) -> pathlib.Path:
    """A run folder whose checkpoint would pass every check once unpickled."""
    out = tmp_path / "run"
    path = checkpoint_path(out)
    path.parent.mkdir(parents=True)
    torch.save({"step": 3, "config": "{}", "extra": TouchOnLoad(marker)}, path)
    return out


def _assert_one_line_naming(exc: pytest.ExceptionInfo, path: pathlib.Path) -> None:
    message = str(exc.value)
    assert "\n" not in message and "\x1b" not in message and len(message) < 400, message
    assert str(path) in message


def test_the_payload_really_runs_when_unpickled_unsafely(tmp_path):
    """Control: without ``weights_only=True`` the file does create the marker."""
    marker = tmp_path / "ran"
    torch.save({"x": TouchOnLoad(marker)}, tmp_path / "payload.pt")
    torch.load(tmp_path / "payload.pt", weights_only=False)
    assert marker.exists()


def test_model_weights_with_code_are_refused_before_it_runs(tmp_path):
    marker = tmp_path / "ran"
    folder = _model_folder(tmp_path, marker)
    with pytest.raises(ModelError, match="cannot load model weights") as exc:
        load_model(folder)
    _assert_one_line_naming(exc, folder / "weights.pt")
    assert not marker.exists()


def test_locator_weights_with_code_are_refused_before_it_runs(tmp_path):
    marker = tmp_path / "ran"
    folder = _locator_folder(tmp_path, marker)
    with pytest.raises(ModelError, match="cannot load locator weights") as exc:
        load_locator(folder)
    _assert_one_line_naming(exc, folder / "weights.pt")
    assert not marker.exists()


def test_a_checkpoint_with_code_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "ran"
    path = checkpoint_path(_run_folder(tmp_path, marker))
    with pytest.raises(ModelError, match="checkpoint") as exc:
        read_checkpoint(path)
    _assert_one_line_naming(exc, path)
    assert not marker.exists()


def _image_file(tmp_path: pathlib.Path) -> pathlib.Path:
    image = sitk.Image([24, 20, 16], sitk.sitkFloat32)
    path = tmp_path / "image.nrrd"
    sitk.WriteImage(image, str(path))
    return path


@pytest.mark.parametrize("command", ["segment", "locate", "train --resume"])
def test_the_cli_refuses_a_malicious_file_in_one_line_without_running_it(tmp_path, capsys, command):
    marker = tmp_path / "ran"
    image, output = _image_file(tmp_path), tmp_path / "label.nrrd"
    argv = {
        "segment": ["segment", "--model", str(_model_folder(tmp_path, marker)), "--input", str(image)]
        + ["--output", str(output)],
        "locate": ["locate", "--locator", str(_locator_folder(tmp_path, marker)), "--input", str(image)],
        "train --resume": ["train", "--resume", "--out", str(_run_folder(tmp_path, marker))],
    }[command]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("semisupseg: error:"), err
    assert not marker.exists() and not output.exists()
