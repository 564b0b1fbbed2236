"""The method-agnostic training loop: progress, validation, checkpoints, resume, cancellation."""

import io
import json

import pytest
import torch

from SemiSupSegLib.dataset import load_dataset
from SemiSupSegLib.errors import InputError, ModelError, TrainingCancelled, TrainingDiverged
from SemiSupSegLib.imageio import read_image
from SemiSupSegLib.methods import METHODS, Method, OptimizerSpec
from SemiSupSegLib.model_store import load_model
from SemiSupSegLib.networks import build_network
from SemiSupSegLib.preprocessing import median_spacing
from SemiSupSegLib.progress import JsonLinesReporter, Reporter
from SemiSupSegLib.training import TrainConfig, Trainer


def _config(data, out, **kw):
    base = dict(
        data=str(data),
        out=str(out),
        steps=6,
        batch=2,
        patch_size=(16, 16, 16),
        width=0.125,
        val_cases=1,
        val_every=3,
        checkpoint_every=2,
        translation=6,
        lr=1e-3,
    )
    base.update(kw)
    return TrainConfig(**base)


def _events(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_supervised_run_reports_validates_and_writes_a_loadable_model(tiny_phantom, tmp_path):
    stream = io.StringIO()
    folder = Trainer(_config(tiny_phantom, tmp_path / "m"), JsonLinesReporter(stream)).run()
    events = _events(stream)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "preparing" and "started" in kinds and kinds[-1] == "finished"
    progress = [e for e in events if e["event"] == "progress"]
    assert [e["step"] for e in progress] == [1, 2, 3, 4, 5, 6]
    assert all(e["total"] == 6 and "loss" in e["losses"] for e in progress)
    for e in progress:  # rounded to 6 decimals; exact values on a fake clock: test_progress_eta.py
        assert e["eta_seconds"] == pytest.approx(e["seconds_per_step"] * (6 - e["step"]), abs=1e-5)
    validations = [e for e in events if e["event"] == "validation"]
    assert [v["step"] for v in validations] == [3, 6]
    assert [e["step"] for e in events if e["event"] == "checkpoint"] == [2, 4]
    model = load_model(folder)
    meta = model.meta
    assert meta["method"] == "supervised" and meta["patch_size"] == [16, 16, 16]
    assert meta["training"]["validation_cases"] and len(meta["training"]["labeled_cases"]) == 3
    assert meta["metrics"]["validation"]["dice"] == validations[-1]["metrics"]["dice"]
    training_images = [read_image(c.image) for c in load_dataset(tiny_phantom).training[:3]]
    assert meta["preprocessing"]["target_spacing"] == pytest.approx(list(median_spacing(training_images)))
    assert not (folder / ".training" / "checkpoint.pt").exists()


def test_same_seed_gives_the_same_weights(tiny_phantom, tmp_path):
    weights = []
    for name in ("a", "b"):
        folder = Trainer(_config(tiny_phantom, tmp_path / name, steps=3, val_cases=0)).run()
        weights.append(torch.load(folder / "weights.pt", weights_only=True)["net"])
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


class _StopAt(Reporter):
    def __init__(self, step: int):
        super().__init__()
        self.step, self.trainer, self.events = step, None, []

    def emit(self, event, **fields):
        self.events.append((event, fields))
        if event == "progress" and fields["step"] == self.step:
            self.trainer.request_stop()


def test_stop_writes_a_checkpoint_and_resume_finishes(tiny_phantom, tmp_path):
    config = _config(tiny_phantom, tmp_path / "m", steps=8, val_every=4, checkpoint_every=100)
    reporter = _StopAt(5)
    trainer = Trainer(config, reporter)
    reporter.trainer = trainer
    with pytest.raises(TrainingCancelled):
        trainer.run()
    assert reporter.events[-1][0] == "cancelled"
    assert (tmp_path / "m" / ".training" / "checkpoint.pt").is_file()
    assert not (tmp_path / "m" / "model.json").exists()
    assert Trainer.stored_config(tmp_path / "m") == config
    resumed = Reporter()
    events = []
    resumed.emit = lambda e, **f: events.append((e, f))
    folder = Trainer(config, resumed).run(resume=True)
    started = next(f for e, f in events if e == "started")
    assert started["step"] == 5
    assert [f["step"] for e, f in events if e == "progress"] == [6, 7, 8]
    history = load_model(folder).meta["training"]["history"]
    assert [h["step"] for h in history] == [4, 8]  # the validation before the stop is kept


def test_resume_errors_are_clear(tiny_phantom, tmp_path):
    config = _config(tiny_phantom, tmp_path / "m")
    with pytest.raises(InputError, match="no checkpoint"):
        Trainer(config).run(resume=True)
    bad = tmp_path / "m" / ".training" / "checkpoint.pt"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"garbage")
    with pytest.raises(ModelError, match="unreadable|corrupt"):
        Trainer.stored_config(tmp_path / "m")
    with pytest.raises(ModelError, match="corrupt"):
        Trainer(config).run(resume=True)


def test_bad_settings_are_refused(tiny_phantom, tmp_path):
    with pytest.raises(InputError, match="divisible by 4"):
        Trainer(_config(tiny_phantom, tmp_path / "m", patch_size=(18, 16, 16))).run()
    with pytest.raises(InputError, match="validation"):
        Trainer(_config(tiny_phantom, tmp_path / "m", val_cases=4)).run()


class _TwoStageProbe(Method):
    """A fake method with two optimisation stages that records what the loop asks of it."""

    name = "probe"
    uses_unlabeled = True
    calls: list = []

    def __init__(self, network, total_steps, **options):
        super().__init__(network, total_steps, **options)
        self.a, self.b = build_network(network), build_network(network)

    def networks(self):
        return {"a": self.a, "b": self.b}

    def inference_network_names(self):
        return ["a"]

    def optimizers(self):
        return [
            OptimizerSpec("first", list(self.a.parameters()), lr=1e-3),
            OptimizerSpec("second", list(self.b.parameters()), kind="sgd", lr=1e-3, schedule="poly"),
        ]

    def compute_losses(self, stage, batch, step):
        assert batch.unlabeled_image is not None and batch.unlabeled_image.shape == batch.labeled_image.shape
        self.calls.append((stage, step))
        net = self.a if stage == "first" else self.b
        loss = net(batch.unlabeled_image).mean() ** 2
        return {"loss": loss, "probe": loss.detach()}

    def after_iteration(self, step):
        self.calls.append(("after", step))


def test_the_loop_runs_any_method_through_the_interface(tiny_phantom, tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "probe", _TwoStageProbe)
    _TwoStageProbe.calls = []
    stream = io.StringIO()
    folder = Trainer(
        _config(tiny_phantom, tmp_path / "m", method="probe", steps=2, val_cases=0), JsonLinesReporter(stream)
    ).run()
    assert _TwoStageProbe.calls == [
        ("first", 0),
        ("second", 0),
        ("after", 0),
        ("first", 1),
        ("second", 1),
        ("after", 1),
    ]
    losses = [e for e in _events(stream) if e["event"] == "progress"][-1]["losses"]
    assert set(losses) == {"first/loss", "first/probe", "second/loss", "second/probe"}
    model = load_model(folder)
    assert set(model.networks) == {"a", "b"} and model.meta["inference_networks"] == ["a"]


def test_fine_tuning_starts_from_the_given_model(tiny_phantom, tmp_path):
    parent = Trainer(_config(tiny_phantom, tmp_path / "parent", steps=2, val_cases=0)).run()
    child_config = _config(tiny_phantom, tmp_path / "child", steps=1, val_cases=0, lr=1e-12, init=str(parent))
    child = Trainer(child_config).run()
    a = torch.load(parent / "weights.pt", weights_only=True)["net"]
    b = torch.load(child / "weights.pt", weights_only=True)["net"]
    conv = "enc3.1.1.weight"
    assert torch.allclose(a[conv], b[conv], atol=1e-6)
    assert load_model(child).meta["preprocessing"] == load_model(parent).meta["preprocessing"]


def test_a_loss_that_becomes_nan_stops_with_a_clear_error(tiny_phantom, tmp_path, monkeypatch):
    from SemiSupSegLib.methods.supervised import Supervised

    monkeypatch.setattr(
        Supervised, "compute_losses", lambda self, s, b, t: {"loss": torch.tensor(float("nan"))}
    )
    with pytest.raises(TrainingDiverged, match="loss became nan at step 0"):
        Trainer(_config(tiny_phantom, tmp_path / "m", val_cases=0)).run()


def test_an_unknown_device_string_is_a_named_input_error():
    from SemiSupSegLib.training import resolve_device

    with pytest.raises(InputError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    assert resolve_device("cpu").type == "cpu"


def test_a_gpu_index_beyond_the_gpus_torch_sees_is_a_named_error(monkeypatch):
    from SemiSupSegLib.training import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(InputError, match=r"GPU 'cuda:2' does not exist: torch sees 2 GPU\(s\)"):
        resolve_device("cuda:2")


def test_a_dataset_without_labelled_cases_is_refused_by_name(tiny_phantom, tmp_path):
    raw = json.loads(tiny_phantom.read_text())
    only_unlabelled = tiny_phantom.parent / "only_unlabelled.json"
    only_unlabelled.write_text(json.dumps({"name": "u", "unlabeled": raw["unlabeled"]}))
    with pytest.raises(InputError, match="no labelled"):
        Trainer(_config(only_unlabelled, tmp_path / "m", val_cases=None)).run()
    assert not (tmp_path / "m" / "weights.pt").exists()


def test_loader_workers_train_the_same_run_twice_and_may_change_on_resume(tiny_phantom, tmp_path):
    """--loader-workers N: patches cut in N processes, reproducible for one N; --resume may change N."""
    import argparse

    from SemiSupSegLib.cli.train import _resumed_config

    weights = []
    for run in ("a", "b"):
        config = _config(tiny_phantom, tmp_path / run, steps=2, val_cases=0, loader_workers=1)
        folder = Trainer(config).run()
        weights.append(torch.load(folder / "weights.pt", weights_only=True)["net"])
    assert load_model(folder).meta["training"]["config"]["loader_workers"] == 1
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    stored = _config(tiny_phantom, tmp_path / "a", steps=2, loader_workers=1)
    args = argparse.Namespace(out=str(tmp_path / "a"))
    assert _resumed_config(args, stored, {"loader_workers": 3}).loader_workers == 3
    with pytest.raises(InputError, match="--width 0.5"):
        _resumed_config(args, stored, {"loader_workers": 3, "width": 0.5})


@pytest.mark.parametrize(("modality", "recorded"), [("US", "US"), ({"0": "MR"}, "MR"), (["CT"], "")])
def test_the_dataset_modality_may_be_a_string_or_a_decathlon_mapping(
    tiny_phantom, tmp_path, modality, recorded
):
    """A user's ``"modality": "US"`` (not the Decathlon's ``{"0": "US"}``) once crashed the run at its
    first validation, after the training steps; every form now reaches ``model.json``."""
    raw = json.loads(tiny_phantom.read_text())
    raw["modality"] = modality
    data = tiny_phantom.parent / f"modality-{len(str(modality))}.json"
    data.write_text(json.dumps(raw))
    assert load_dataset(data).modality == recorded
    folder = Trainer(_config(data, tmp_path / "m", steps=3), Reporter()).run()
    assert load_model(folder).meta["modality"] == recorded


def test_fine_tuning_may_change_the_normalisation_and_records_it(tiny_phantom, tmp_path):
    """``--normalization`` with ``--init``: the parent's spacing is kept, the new normalisation is used
    and recorded (without it, the parent's is kept: the test above)."""
    parent = Trainer(_config(tiny_phantom, tmp_path / "parent", steps=1, val_cases=0)).run()
    child = Trainer(
        _config(
            tiny_phantom,
            tmp_path / "child",
            steps=1,
            val_cases=0,
            init=str(parent),
            normalization="fov-percentile-zscore",
        )
    ).run()
    before, after = (load_model(m).meta["preprocessing"] for m in (parent, child))
    assert before["normalization"] == "percentile-zscore"
    assert after == {**before, "normalization": "fov-percentile-zscore"}
    fresh = Trainer(
        _config(tiny_phantom, tmp_path / "fresh", steps=1, val_cases=0, normalization="fov-percentile-zscore")
    ).run()
    assert load_model(fresh).meta["preprocessing"]["normalization"] == "fov-percentile-zscore"
