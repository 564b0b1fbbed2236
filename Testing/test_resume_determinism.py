"""Resume is bitwise: a run killed or stopped and then resumed ends exactly as the run that never stopped.

Every method runs at tiny size (width 0.0625, non-cubic 16x16x20 patches, batch 1, 5 steps) on the CPU,
with MONAI augmentation, dropout, input noise, EMA teachers and MC passes all drawing random numbers.
A resume that forgets any of them (network weights, optimiser moments, a random stream) changes the
final weights. The locator's resume is checked against its checkpoint.

A SIGKILL right after the periodic checkpoint of step k leaves exactly the checkpoint file an
uninterrupted run writes at step k, so the kill is simulated by copying that file out of the
uninterrupted run (no run is repeated to step k). A SIGINT-style stop writes its own checkpoint.
"""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import torch

from SemiSupSegLib.checkpoints import checkpoint_path, read_checkpoint
from SemiSupSegLib.errors import TrainingCancelled
from SemiSupSegLib.locator.train import LocatorTrainer
from SemiSupSegLib.methods import METHODS, Method, OptimizerSpec
from SemiSupSegLib.networks import build_network
from SemiSupSegLib.patches import PatchSampler, PreparedCase
from SemiSupSegLib.progress import Reporter
from SemiSupSegLib.training import TrainConfig, Trainer

STEPS = 5
OPTIONS = {"supervised": {}, "mean-teacher": {}, "ua-mt": {"mc_samples": 2}, "dual-unet": {"mc_samples": 2}}
# Where each method's run is killed, and where the supervised run is stopped: seeded random choices.
KILL_AT = {method: random.Random(f"kill {method}").randrange(1, STEPS) for method in OPTIONS}
STOP_AT = random.Random("stop").randrange(1, STEPS)


@pytest.fixture(scope="module", autouse=True)
def _fast(tmp_path_factory):
    """One torch thread (tiny networks on a busy machine run several times faster), and each case
    prepared once for the whole file: preparation is deterministic and draws no random number, so the
    cache can only make a test fail, never pass."""
    threads, prepared, original = torch.get_num_threads(), {}, Trainer._prepare

    def cached(self, cases, preprocessing, labeled):
        key = (tuple(c.name for c in cases), labeled, preprocessing.target_spacing)
        if key not in prepared:
            prepared[key] = original(self, cases, preprocessing, labeled)
        return prepared[key]

    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "_prepare", cached)
        yield
    torch.set_num_threads(threads)


def _config(data, out, method: str, checkpoint_every: int = STEPS) -> TrainConfig:
    return TrainConfig(
        data=str(data),
        out=str(out),
        method=method,
        steps=STEPS,
        batch=1,
        patch_size=(16, 16, 20),
        width=0.0625,
        val_cases=0,
        checkpoint_every=checkpoint_every,
        translation=6,
        lr=1e-3,
        seed=11,
        device="cpu",
        method_options=OPTIONS[method],
    )


def _weights(folder) -> dict[str, torch.Tensor]:
    return torch.load(folder / "weights.pt", weights_only=True)


def _assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        if isinstance(a[name], dict):
            _assert_bitwise_equal(a[name], b[name])
        else:
            assert torch.equal(a[name], b[name]), f"{name} differs"


class _CopyCheckpoint(Reporter):
    """Keeps a copy of the checkpoint written at ``step``: what a process killed right after it leaves."""

    def __init__(self, step: int, to) -> None:
        super().__init__()
        self.step, self.to = step, to

    def emit(self, event: str, **fields) -> None:
        if event == "checkpoint" and fields["step"] == self.step:
            shutil.copy(fields["path"], self.to)


class _StopAt(Reporter):
    """Asks the trainer to stop after ``step``, as SIGINT does."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step, self.trainer = step, None

    def emit(self, event: str, **fields) -> None:
        if event == "progress" and fields["step"] == self.step:
            self.trainer.request_stop()


class _Killed(Exception):
    pass


@pytest.fixture(scope="module")
def uninterrupted(tiny_phantom, tmp_path_factory):
    """Per method (run once): the final weights of the run that never stopped, and a copy of its periodic
    checkpoint of step ``KILL_AT[method]``."""
    done: dict[str, tuple[dict, object]] = {}

    def run(method: str) -> tuple[dict, object]:
        if method not in done:
            folder = tmp_path_factory.mktemp("uninterrupted")
            snapshot = folder / f"checkpoint_{KILL_AT[method]}.pt"
            config = _config(tiny_phantom, folder / "m", method, checkpoint_every=KILL_AT[method])
            weights = _weights(Trainer(config, _CopyCheckpoint(KILL_AT[method], snapshot)).run())
            done[method] = (weights, snapshot)
        return done[method]

    return run


@pytest.mark.parametrize("method", list(OPTIONS))
def test_a_run_killed_after_a_periodic_checkpoint_resumes_bit_for_bit(
    tiny_phantom, tmp_path, uninterrupted, method
):
    expected, snapshot = uninterrupted(method)
    config = _config(tiny_phantom, tmp_path / "m", method, checkpoint_every=KILL_AT[method])
    checkpoint_path(config.out).parent.mkdir(parents=True)
    shutil.copy(snapshot, checkpoint_path(config.out))
    resumed = Trainer(config).run(resume=True)
    _assert_bitwise_equal(_weights(resumed), expected)


def test_a_stopped_run_resumes_bit_for_bit(tiny_phantom, tmp_path, uninterrupted):
    expected, _ = uninterrupted("supervised")
    config = _config(tiny_phantom, tmp_path / "m", "supervised")
    reporter = _StopAt(STOP_AT)
    reporter.trainer = Trainer(config, reporter)
    with pytest.raises(TrainingCancelled):
        reporter.trainer.run()
    assert read_checkpoint(checkpoint_path(config.out))["step"] == STOP_AT
    _assert_bitwise_equal(_weights(Trainer(Trainer.stored_config(config.out)).run(resume=True)), expected)


def test_a_checkpoint_without_random_states_still_resumes(tiny_phantom, tmp_path, uninterrupted):
    """Checkpoints written before random states were stored fall back to reseeding from (seed, step)."""
    _, snapshot = uninterrupted("supervised")
    config = _config(tiny_phantom, tmp_path / "m", "supervised")
    state = torch.load(snapshot, weights_only=True)
    del state["random"]
    checkpoint_path(config.out).parent.mkdir(parents=True)
    torch.save(state, checkpoint_path(config.out))
    assert (Trainer(config).run(resume=True) / "weights.pt").is_file()


def test_the_patch_sampler_continues_its_patches_and_augmentation_from_a_saved_state():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(24, 20, 28)).astype(np.float32)
    case = PreparedCase("c", image, (image > 1).astype(np.uint8), np.array([12.0, 10.0, 14.0]), 0.0)
    first = PatchSampler([case], [], (8, 12, 16), seed=1, translation=4)
    first.labeled_batch(2)
    state = json.loads(json.dumps(first.random_state()))  # as stored in a checkpoint
    expected = first.labeled_batch(3)
    second = PatchSampler([case], [], (8, 12, 16), seed=99, translation=4)
    second.set_random_state(state)
    for got, want in zip(second.labeled_batch(3), expected, strict=True):
        assert torch.equal(got, want)


# ------------------------------------------------------------------------------------------ locator


def test_a_resumed_locator_holds_the_checkpointed_networks_and_optimiser(tmp_path, monkeypatch):
    from test_locator import _config as locator_config
    from test_locator import _write_blob_dataset

    data = _write_blob_dataset(tmp_path / "blobs", n=4, seed=3)
    config = locator_config(data, tmp_path / "loc", steps=20, warmup=16, val_cases=1, checkpoint_every=100)
    reporter = _StopAt(8)
    reporter.trainer = LocatorTrainer(config, reporter)
    with pytest.raises(TrainingCancelled):
        reporter.trainer.run()
    saved = read_checkpoint(checkpoint_path(config.out))
    resumed = {}

    def capture(self, agent, *args):  # the state the loop would continue from
        resumed.update(
            online=agent.online.state_dict(),
            target=agent.target.state_dict(),
            optimizer=agent.optimizer.state_dict()["state"],
        )
        raise _Killed

    monkeypatch.setattr(LocatorTrainer, "_loop", capture)
    with pytest.raises(_Killed):
        LocatorTrainer(config).run(resume=True)
    assert saved["optimizer"]["state"], "the optimiser had taken steps before the stop"
    expected = {"online": saved["online"], "target": saved["target"]}
    _assert_bitwise_equal(resumed, {**expected, "optimizer": saved["optimizer"]["state"]})


class _PolySGD(Method):
    """A one-network method on SGD with the poly schedule: its learning rate depends on the restored step."""

    name = "poly-probe"
    uses_unlabeled = False

    def __init__(self, network, total_steps, **options):
        super().__init__(network, total_steps, **options)
        self.net = build_network(network)

    def networks(self):
        return {"net": self.net}

    def optimizers(self):
        return [OptimizerSpec("main", list(self.net.parameters()), kind="sgd", lr=0.5, schedule="poly")]

    def compute_losses(self, stage, batch, step):
        loss = self.net(batch.labeled_image).float().pow(2).mean()
        return {"loss": loss}


def test_a_stopped_run_resumes_its_learning_rate_schedule_bit_for_bit(tiny_phantom, tmp_path, monkeypatch):
    """Every shipped method uses a constant schedule; a poly schedule catches a scheduler left unrestored."""
    monkeypatch.setitem(METHODS, _PolySGD.name, _PolySGD)
    monkeypatch.setitem(OPTIONS, _PolySGD.name, {})
    expected = _weights(Trainer(_config(tiny_phantom, tmp_path / "a", _PolySGD.name)).run())
    config = _config(tiny_phantom, tmp_path / "b", _PolySGD.name)
    reporter = _StopAt(2)
    reporter.trainer = Trainer(config, reporter)
    with pytest.raises(TrainingCancelled):
        reporter.trainer.run()
    _assert_bitwise_equal(_weights(Trainer(config).run(resume=True)), expected)
