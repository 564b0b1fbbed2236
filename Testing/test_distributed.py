"""Training on several processes (issue 18): torch.distributed, DDP around every method, rank-0 I/O.

* every method steps through DistributedDataParallel exactly as it steps alone (a one-process gloo group
  is enough for DDP's hooks, bucket reduction and unused-parameter search to run), two iterations, so a
  stage whose parameters DDP expects but never sees, or a gradient DDP zeroes where the plain loop leaves
  none, shows;
* the rank-dependent random streams and the environment a launcher describes;
* one supervised step on two processes (gloo) equals one process stepping with the mean of the two halves'
  gradients;
* end to end, a Dual-UNet run stopped in one process resumes on two (``train --resume --nproc 2``: torch's
  elastic launcher, gloo), is stopped there by SIGTERM (status 130, a checkpoint, one line) and finishes in
  one; rank 0 alone reports and writes;
* bad input is one line, once (rank 0's), and the launcher hands on the failed process's status 2.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from test_loss_composition import make_batch
from test_training import _StopAt  # asks the trainer to stop at a progress step

from SemiSupSegLib.checkpoints import checkpoint_path, read_checkpoint
from SemiSupSegLib.distributed import Distributed, check_nproc, rank_seed
from SemiSupSegLib.errors import InputError, TrainingCancelled
from SemiSupSegLib.methods import METHODS, get_method
from SemiSupSegLib.networks import NetworkConfig
from SemiSupSegLib.training import TrainConfig, Trainer

OPTIONS = {
    "ua-mt": {"mc_samples": 2},
    "dual-unet": {"mc_samples": 2},
    "embedding-matching": {"mc_samples": 2},
}


@pytest.fixture(scope="module")
def one_process_group():
    """A gloo process group of this one process (DDP needs a group; one member suffices)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()
    torch.set_num_threads(threads)


def _stages(trainer: Trainer, method) -> list:
    return [
        (spec, opt := trainer._optimizer(spec), trainer._scheduler(spec, opt)) for spec in method.optimizers()
    ]


def _two_iterations(trainer: Trainer, name: str, wrapped: bool) -> dict[str, torch.Tensor]:
    """The method's state after two iterations from a fixed seed, called alone or through DDP."""
    torch.manual_seed(5)
    network = NetworkConfig(width=0.0625, dropout=get_method(name).default_dropout)
    method = get_method(name)(network, 4, **OPTIONS.get(name, {}))
    stages = _stages(trainer, method)
    model = Distributed(world_size=2).wrap(method) if wrapped else method  # wraps in DDP over the group
    assert isinstance(model, torch.nn.parallel.DistributedDataParallel) == wrapped
    for step in range(2):
        trainer._iteration(model, method, stages, make_batch(seed=step), step + 1)
    return {k: v.detach().clone() for k, v in method.state_dict().items()}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_steps_through_ddp_exactly_as_alone(one_process_group, name, tmp_path):
    """Catches a method whose stages DDP cannot wrap (Method.forward not compute_losses, a stage's
    parameters missed by the unused-parameter search) and DDP changing what a step computes."""
    trainer = Trainer(TrainConfig(data="unused", out=str(tmp_path), device="cpu", method=name))
    alone = _two_iterations(trainer, name, wrapped=False)
    through_ddp = _two_iterations(trainer, name, wrapped=True)
    assert alone.keys() == through_ddp.keys()
    for key in alone:
        torch.testing.assert_close(through_ddp[key], alone[key], rtol=1e-5, atol=1e-6, msg=key)


def _supervised_sgd(seed: int = 0):
    """A tiny supervised method without dropout and one plain-SGD stage (SGD, unlike Adam's first step,
    shows a gradient summed instead of averaged over the ranks)."""
    from SemiSupSegLib.methods import OptimizerSpec

    torch.manual_seed(seed)
    method = get_method("supervised")(NetworkConfig(width=0.0625, dropout=0.0), 4)
    spec = OptimizerSpec("main", list(method.parameters()), kind="sgd", lr=0.5, momentum=0.0)
    optimizer = torch.optim.SGD(spec.parameters, lr=spec.lr)
    return method, [(spec, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0))]


def _rank_step(rank: int, store_path: str, out: str) -> None:
    """One rank of a 2-process gloo job: one step on its half of the batch through DDP; saves the weights."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store_path, 2), rank=rank, world_size=2)
    try:
        method, stages = _supervised_sgd()
        full = make_batch(seed=0)
        half = type(full)(full.labeled_image[rank : rank + 1], full.labeled_label[rank : rank + 1])
        trainer = Trainer(TrainConfig(data="unused", out=out, device="cpu"))
        trainer._iteration(Distributed(rank=rank, world_size=2).wrap(method), method, stages, half, 1)
        torch.save(method.state_dict(), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_one_step_on_two_processes_averages_the_two_halves_of_the_batch(tmp_path):
    """Catches gradients not all-reduced (the ranks drift apart), summed instead of averaged, or weights not
    starting equal. The reference is one process stepping with the mean of the two halves' gradients:
    plain BatchNorm normalises each rank's half with its own statistics, so that is what a 2-process step
    equals (one process on the whole batch would pool the statistics; see distributed.py)."""
    torch.multiprocessing.spawn(_rank_step, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    method, [(_, optimizer, _)] = _supervised_sgd()
    full = make_batch(seed=0)
    grads = []
    for r in range(2):
        optimizer.zero_grad()
        half = type(full)(full.labeled_image[r : r + 1], full.labeled_label[r : r + 1])
        method.compute_losses("main", half, 1)["loss"].backward()
        grads.append([p.grad.clone() for p in method.parameters()])
    with torch.no_grad():
        for p, g0, g1 in zip(method.parameters(), *grads, strict=True):
            p.grad = (g0 + g1) / 2
    optimizer.step()
    expected = method.state_dict()
    for key, value in expected.items():
        if "running" in key or "num_batches" in key:
            continue  # buffers: DDP keeps rank 0's, the reference saw both halves
        torch.testing.assert_close(ranks[0][key], ranks[1][key], rtol=0, atol=0, msg=key)
        torch.testing.assert_close(ranks[0][key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_rank_zero_keeps_the_seed_and_other_ranks_draw_their_own():
    """Catches every rank drawing the same patches (a batch N times over) or rank 0 leaving the plain run."""
    assert rank_seed(11, 0) == 11
    seeds = [rank_seed(11, r) for r in range(8)]
    assert len(set(seeds)) == 8
    assert rank_seed(12, 1) != rank_seed(11, 1)
    assert seeds == [rank_seed(11, r) for r in range(8)]  # reproducible


def test_the_environment_names_the_rank_and_a_wrong_one_is_refused():
    job = Distributed.from_environment({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert (job.rank, job.local_rank, job.world_size, job.active, job.is_main) == (3, 1, 4, True, False)
    alone = Distributed.from_environment({})
    assert (alone.world_size, alone.active, alone.is_main) == (1, False, True)
    for environ in ({"WORLD_SIZE": "two"}, {"WORLD_SIZE": "2", "RANK": "2"}, {"WORLD_SIZE": "0"}):
        with pytest.raises(InputError):
            Distributed.from_environment(environ)
    assert job.device_name("cpu") == "cpu"
    with pytest.raises(InputError, match="local rank"):
        job.device_name("cuda:1")  # four processes cannot share one named GPU
    with pytest.raises(InputError, match="--nproc"):
        check_nproc(0)
    with pytest.raises(InputError, match="CPU core"):
        check_nproc((os.cpu_count() or 1) + 1, "cpu")  # 64 torch processes on 2 cores exhaust memory
    check_nproc(min(2, os.cpu_count() or 1), "cpu")


# ------------------------------------------------------------------------------------ end to end


def _launch(*args: str) -> subprocess.Popen:
    """``python -m SemiSupSegLib.cli ARGS`` as a new process (not inside any job), JSON lines on stdout."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "SEMISUPSEG_LAUNCHED"):
        environment.pop(key, None)
    command = [sys.executable, "-m", "SemiSupSegLib.cli", *args]
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment
    )


def test_a_job_resumes_across_process_counts_and_stops_on_sigterm(tiny_phantom, tmp_path):
    """One process stops at step 2; two processes resume it (through the launcher) and are stopped by
    SIGTERM to the launcher; one process finishes it. Catches every rank reporting (two started events),
    a stop that leaves a rank waiting (no exit) or no checkpoint, the launcher's status lost, the world
    size not recorded, and a resume that cannot change the number of processes."""
    out = tmp_path / "m"
    config = TrainConfig(
        data=str(tiny_phantom),
        out=str(out),
        method="dual-unet",  # two networks, a second optimiser stage, Monte-Carlo passes, unlabelled batches
        method_options={"mc_samples": 2},
        steps=400,
        batch=1,
        patch_size=(16, 16, 20),
        width=0.0625,
        val_cases=0,
        checkpoint_every=1000,
        translation=4,
        seed=3,
        device="cpu",
    )
    reporter = _StopAt(2)  # progress comes every steps // 200 = 2 steps
    reporter.trainer = Trainer(config, reporter)
    with pytest.raises(TrainingCancelled):
        reporter.trainer.run()

    job = _launch("train", "--out", str(out), "--resume", "--nproc", "2", "--progress", "json")
    events = []
    for line in job.stdout:
        events.append(json.loads(line))
        if events[-1]["event"] == "progress":
            job.send_signal(signal.SIGTERM)  # the launcher: torch's elastic agent hands it to both ranks
            break
    rest, errors = job.communicate(timeout=120)
    events += [json.loads(line) for line in rest.splitlines() if line.startswith("{")]
    kinds = [e["event"] for e in events]
    assert job.returncode == 130, errors[-2000:]
    assert kinds.count("started") == 1 and kinds.count("cancelled") == 1 and kinds[-1] == "cancelled"
    started = events[kinds.index("started")]["summary"]
    assert (started["start_step"], started["world_size"], started["global_batch"]) == (2, 2, 2)
    stopped = events[-1]["step"]
    lines = [line for line in errors.splitlines() if line.strip()]
    assert lines == [f"semisupseg: training stopped at step {stopped}; the checkpoint is usable"], lines
    checkpoint = read_checkpoint(checkpoint_path(out))
    assert (checkpoint["step"], checkpoint["world_size"]) == (stopped, 2)

    finished = Trainer(dataclasses.replace(config, steps=stopped + 2)).run(resume=True)
    meta = json.loads((finished / "model.json").read_text())
    assert meta["training"]["world_size"] == 1 and meta["training"]["config"]["steps"] == stopped + 2
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["model.json", "weights.pt"]


def test_bad_input_is_reported_by_rank_zero_alone(tiny_phantom, tmp_path, monkeypatch, capsys):
    """Every rank reads the same input and meets the same problem: catches N copies of the one line."""
    from SemiSupSegLib.cli import main

    bad = ["train", "--data", str(tiny_phantom), "--out", str(tmp_path / "m"), "--patch", "16,16,18"]
    bad += ["--steps", "1", "--width", "0.0625", "--device", "cpu"]
    for rank, lines in (("1", 0), ("0", 1)):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setattr(Trainer, "_run_locked", lambda *a: pytest.fail("trained on bad input"))
        assert main(bad) == 2
        printed = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(printed) == lines and all("divisible by 4" in line for line in printed)


def test_the_launcher_returns_the_failed_process_status_without_a_traceback(monkeypatch, capsys):
    """Catches the launcher's ChildFailedError escaping (a traceback) and a bad input turned into 1."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure
    from torch.distributed.launcher import api

    from SemiSupSegLib.distributed import LAUNCHED, launch

    seen = {}

    def fake_launch(config, entrypoint):
        def run(*args):
            seen.update(nproc=config.nproc_per_node, args=args, launched=os.environ.get(LAUNCHED))
            failure = ProcessFailure(local_rank=1, pid=1, exitcode=2, error_file="/nonexistent")
            raise ChildFailedError("SemiSupSegLib.cli", {1: failure})

        return run

    monkeypatch.delenv(LAUNCHED, raising=False)
    monkeypatch.setattr(api, "elastic_launch", fake_launch)
    assert launch(3, ["train", "--nproc", "3"]) == 2
    assert seen == {"nproc": 3, "args": ("-m", "SemiSupSegLib.cli", "train", "--nproc", "3"), "launched": "1"}
    assert LAUNCHED not in os.environ  # the launcher's own environment is restored
    assert capsys.readouterr().err == ""
