"""Retrain when enough new labels arrived (issue 19): which labelled cases are new, and when the
training panel's logic starts a fine-tuning by itself (a child-process double; no torch, no Slicer)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
from SemiSupSegMRML.auto_retrain import AutoRetrain
from SemiSupSegMRML.training import TrainingLogic

from SemiSupSegLib.cli import build_parser
from SemiSupSegLib.run_data import new_labelled_cases, trained_case_names


class _Child:
    """A training child that runs until the test ends it."""

    def __init__(self, args, env) -> None:
        self.args, self.env = list(args), env
        self.stderr_tail, self.returncode = [], None

    def start(self):
        return self

    def poll(self):
        return []

    @property
    def running(self) -> bool:
        return self.returncode is None

    def request_stop(self, grace=60.0) -> None:
        self.returncode = 130


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMISUPSEG_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _add_labelled(pool_json, *names) -> None:
    """Write small image + label files and list them in the pool's ``training`` section."""
    folder = pool_json.parent
    raw = json.loads(pool_json.read_text()) if pool_json.is_file() else {"training": [], "unlabeled": []}
    for name in names:
        array = np.zeros((6, 7, 8), np.float32)
        array[2:4, 3, 2:6] = 1.0
        sitk.WriteImage(sitk.GetImageFromArray(array + 0.1), str(folder / f"{name}.nrrd"))
        sitk.WriteImage(sitk.GetImageFromArray(array.astype(np.uint8)), str(folder / f"{name}_label.nrrd"))
        raw["training"].append({"image": f"{name}.nrrd", "label": f"{name}_label.nrrd"})
    pool_json.write_text(json.dumps(raw))
    os.utime(pool_json, ns=(0, pool_json.stat().st_mtime_ns + 10**9))  # a later time, whatever the clock


def _model(folder, labeled, validation=()):
    folder.mkdir(parents=True)
    meta = {"name": folder.name, "networks": {"model": {}}}
    meta["training"] = {"labeled_cases": list(labeled), "validation_cases": list(validation)}
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


def test_trained_cases_come_from_model_json_and_new_cases_keep_the_pool_order(tmp_path):
    model = _model(tmp_path / "m", ["a", "b"], ["c"])
    assert trained_case_names(model) == {"a", "b", "c"}
    assert trained_case_names(tmp_path / "not-a-model") == set()
    (tmp_path / "m" / "model.json").write_text(json.dumps({"networks": {"model": {}}, "training": "?"}))
    assert trained_case_names(model) == set()  # a model that lists no case knows none of the pool's
    pool = tmp_path / "pool" / "dataset.json"
    pool.parent.mkdir()
    _add_labelled(pool, "d", "a", "e", "c")
    assert new_labelled_cases(pool, {"a", "b", "c"}) == ["d", "e"]


def test_a_fine_tuning_of_the_model_starts_once_per_batch_of_new_labels(home, tmp_path):
    pool = tmp_path / "pool" / "dataset.json"
    pool.parent.mkdir()
    _add_labelled(pool, "a", "b")
    model = _model(tmp_path / "default", ["a"], ["b"])
    children = []
    logic = TrainingLogic(process_factory=lambda *args: children.append(_Child(*args)) or children[-1])
    auto = AutoRetrain(logic, every=2)
    settings = dict(method="supervised", steps=7, device="cpu", check_images=False)

    assert auto.check(pool, model, **settings) is None and "0 of 2" in auto.message
    _add_labelled(pool, "c")
    assert auto.check(pool, model, **settings) is None and "1 of 2" in auto.message
    _add_labelled(pool, "d")
    out = auto.check(pool, model, **settings)
    assert out is not None and len(children) == 1 and "c, d" in auto.message
    parsed = build_parser().parse_args(children[0].args[3:])
    assert parsed.init == str(model) and parsed.method == "supervised" and parsed.steps == 7
    run_cases = [c["image"] for c in json.loads(open(parsed.data).read())["training"]]
    assert len(run_cases) == 4  # the run learns from the whole pool, not only the new cases

    _add_labelled(pool, "e", "f")
    assert auto.check(pool, model, **settings) is None  # one run at a time
    children[0].returncode = 0
    logic.poll()
    assert auto.check(pool, model, **settings) is not None and len(children) == 2  # e and f were new
    children[1].returncode = 0
    logic.poll()
    assert auto.check(pool, model, **settings) is None and len(children) == 2  # nothing new since
    _add_labelled(pool, "g")
    assert auto.check(pool, model, **settings) is None and "1 of 2" in auto.message  # e and f covered


def test_it_is_off_by_default_and_a_pool_it_cannot_read_starts_nothing(home, tmp_path):
    pool = tmp_path / "pool" / "dataset.json"
    pool.parent.mkdir()
    _add_labelled(pool, "a", "b", "c")
    children = []
    logic = TrainingLogic(process_factory=lambda *args: children.append(_Child(*args)) or children[-1])
    assert AutoRetrain(logic).check(pool, "") is None and not children
    pool.write_text("{not json")
    auto = AutoRetrain(logic, every=1)
    assert auto.check(pool, "") is None and "cannot be read" in auto.message and not children


def test_cli_new_labels_lists_them_and_its_status_says_whether_a_retraining_is_due(tmp_path, capsys):
    from SemiSupSegLib.cli import main

    pool = tmp_path / "pool" / "dataset.json"
    pool.parent.mkdir()
    _add_labelled(pool, "a", "b", "c")
    model = _model(tmp_path / "m", ["a"])
    base = ["new-labels", "--model", str(model), "--data", str(pool)]
    assert main([*base, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["new"] == ["b", "c"]
    assert main([*base, "--every", "2"]) == 0 and "2 labelled case(s)" in capsys.readouterr().out
    assert main([*base, "--every", "3"]) == 1
    capsys.readouterr()
    (tmp_path / "empty").mkdir()
    assert main(["new-labels", "--model", str(tmp_path / "empty"), "--data", str(pool)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "model.json" in error[0]  # a folder that is no model is refused
