"""Training on several processes with ``torch.distributed`` (issue 18): the process group, DDP, the
rank-dependent random streams, rank-0 I/O and the launcher.

Two ways to start a job, one code path:

* ``semisupseg train ... --nproc N`` starts N processes on this machine through torch's elastic launcher
  (:func:`launch`, the engine behind ``torchrun --standalone``);
* ``torchrun --nnodes M --nproc-per-node N ... -m SemiSupSegLib.cli train ...`` on each machine of a
  cluster. Both set ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``, which :meth:`Distributed.from_environment`
  reads; without them (``WORLD_SIZE`` absent or 1) training runs in one process, as before.

Decisions (issue 18):

* **Backend**: NCCL on CUDA (each process drives the GPU of its local rank), gloo on the CPU.
* **DDP around the method.** ``Method.forward`` is ``compute_losses``, so ``DistributedDataParallel`` wraps
  the whole method with ``find_unused_parameters=True``: every stage of a multi-stage method (the Dual-UNet's
  segmenters then classifier, the adversarial discriminator) is one forward/backward pair through DDP,
  and each stage reaches only its own parameters. Gradients are averaged over the ranks. EMA teachers hold
  no trainable parameter; DDP copies them from rank 0 at the start and every rank then updates them from
  identical students, so they stay identical.
* **BatchNorm: plain, not SyncBatchNorm.** Each process normalises with its own batch's statistics, which is
  what the single-process run at that per-rank batch does and what the seed papers trained with; the
  Monte-Carlo passes (up to 8 × 2 forwards per step) would otherwise all-gather at every BatchNorm layer.
  DDP broadcasts rank 0's running statistics at every forward, so every rank saves the same model.
* **``--batch`` is per process**: the effective global batch is ``batch × world_size`` labelled patches
  (and as many unlabelled), recorded in ``model.json`` with ``world_size``.
* **Random streams**: rank 0 keeps the run's seed (a one-process job is the plain run); rank r > 0 draws
  its patches, augmentations and dropout from :func:`rank_seed`. A resumed job reseeds every rank from
  the seed and the step, so it may resume with another number of processes.
* **Only rank 0 touches the output folder**: it takes the run lock, reads the checkpoint (and sends it to
  the others), validates, reports progress, writes checkpoints and the model. A stop request (SIGINT or
  SIGTERM on any rank) and a diverged loss are agreed on by all ranks at once (one small all-reduce), so
  no rank is left waiting in a collective.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .errors import InputError

MAX_PROCESSES = 64  # per machine; more only exhausts it
LAUNCHED = "SEMISUPSEG_LAUNCHED"  # set in the processes :func:`launch` starts (their --nproc is done)


def rank_seed(seed: int, rank: int) -> int:
    """The random streams' seed of process ``rank`` in a job seeded ``seed``.

    Args:
        seed: the run's seed (``--seed``, or :func:`~SemiSupSegLib.training.resume_seed` on resume).
        rank: the global rank.

    Returns:
        ``seed`` for rank 0 (a one-process job is the plain run), a distinct well-mixed seed otherwise.
    """
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, dtype=np.uint64)[0] % (2**63))


def _environment_int(environ: dict[str, str], key: str, default: int) -> int:
    text = environ.get(key)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise InputError(f"the environment variable {key}={text!r} is not a whole number") from None


@dataclass(frozen=True)
class Distributed:
    """This process's place in a job (world size 1: the plain single-process run)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> Distributed:
        """The job ``torchrun`` (or :func:`launch`) described in ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``.

        Raises:
            InputError: a variable is not a whole number, or the ranks do not fit the world size.
        """
        environ = dict(os.environ if environ is None else environ)
        world = _environment_int(environ, "WORLD_SIZE", 1)
        rank = _environment_int(environ, "RANK", 0)
        local = _environment_int(environ, "LOCAL_RANK", rank)
        if world < 1 or not 0 <= rank < world or local < 0:
            raise InputError(f"RANK={rank}, LOCAL_RANK={local} do not fit WORLD_SIZE={world}")
        return cls(rank=rank, local_rank=local, world_size=world)

    @property
    def active(self) -> bool:
        """Whether there is more than one process (a process group, DDP, collectives)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that reads and writes the output folder and reports."""
        return self.rank == 0

    def device_name(self, device: str) -> str:
        """This process's device for ``--device`` (each process of a CUDA job takes its local rank's GPU).

        Raises:
            InputError: ``cuda:N`` in a job of several processes (they cannot share one GPU).
        """
        if not self.active:
            return device
        if device.startswith("cuda:"):
            raise InputError(
                f"--device {device} names one GPU, but each of the {self.world_size} processes takes the GPU "
                "of its local rank; use --device cuda (or auto)"
            )
        if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
            return f"cuda:{self.local_rank}"
        return device

    def start(self, device: torch.device) -> bool:
        """Join the process group (NCCL on CUDA, gloo on the CPU) unless already in one.

        Returns:
            Whether this call created the group (and :meth:`finish` should destroy it).
        """
        if not self.active or dist.is_initialized():
            return False
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        return True

    @staticmethod
    def finish(created: bool) -> None:
        if created and dist.is_initialized():
            dist.destroy_process_group()

    def wrap(self, method: nn.Module) -> nn.Module:
        """The module the loop calls: ``method`` itself, or DDP around it in a job of several processes."""
        if not self.active:
            return method
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(method, find_unused_parameters=True)

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether ``flag`` is true on any rank (every rank gets the same answer)."""
        if not self.active:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)

    def from_main(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (any picklable object: a message, a checkpoint)."""
        if not self.active:
            return value
        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def check_nproc(nproc: int, device: str = "auto") -> None:
    """Refuse a ``--nproc`` that cannot run, before any process starts.

    Args:
        nproc: processes asked for.
        device: ``--device``: on CUDA each process takes one GPU; on the CPU each needs a core.

    Raises:
        InputError: outside 1..MAX_PROCESSES, more processes than GPUs (CUDA) or cores (CPU), or
            ``--nproc`` inside a job ``torchrun`` already started.
    """
    if not 1 <= nproc <= MAX_PROCESSES:
        raise InputError(f"--nproc must be 1 to {MAX_PROCESSES}, got {nproc}")
    on_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    have = torch.cuda.device_count() if on_gpu else (os.cpu_count() or 1)
    if nproc > max(1, have):
        what = "GPU(s), one per process" if on_gpu else "CPU core(s), one per process at least"
        raise InputError(f"--nproc {nproc} needs more than this machine's {have} {what}")
    if nproc > 1 and Distributed.from_environment().active and not os.environ.get(LAUNCHED):
        raise InputError("--nproc starts processes itself; under torchrun leave it out")


def _quiet_elastic_loggers() -> dict[logging.Logger, int]:
    """Silence torch's elastic loggers (each sets its own level, so the parent's does not reach them); a
    stopped or failed job is then told by its processes' own one line. Returns the levels to restore."""
    names = [n for n in logging.root.manager.loggerDict if n.startswith("torch.distributed")]
    loggers = [logging.getLogger(n) for n in names]
    saved = {logger: logger.level for logger in loggers}
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    return saved


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run ``python -m SemiSupSegLib.cli ARGV`` as ``nproc`` processes of one job on this machine.

    torch's elastic launcher (``torch.distributed.run --standalone``) starts them with a free rendezvous
    port. Rank 0 prints the progress; a failed process's own one-line error is the message, so the
    launcher's traceback and logs are kept quiet.

    Args:
        nproc: processes to start.
        argv: the command line of each (``train ... --nproc N``: the processes see :data:`LAUNCHED` and
            train instead of launching again).

    Returns:
        The exit status: 0, or the first failed process's (2 for bad input, 130 when stopped).
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    threads = str(max(1, (os.cpu_count() or 1) // nproc))  # torchrun's rule would be 1; share the cores
    environment = {
        LAUNCHED: "1",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", threads),
        # DDP's C++ warning that find_unused_parameters found none (single-stage methods) is noise here
        "TORCH_CPP_LOG_LEVEL": os.environ.get("TORCH_CPP_LOG_LEVEL", "ERROR"),
    }
    saved = {key: os.environ.get(key) for key in environment}
    os.environ.update(environment)  # the launcher hands its environment to the processes it starts
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"semisupseg-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.2,
        start_method="spawn",
    )
    quiet = _quiet_elastic_loggers()
    try:
        elastic_launch(config, sys.executable)("-m", "SemiSupSegLib.cli", *argv)
    except ChildFailedError as exc:
        codes = [f.exitcode for f in exc.failures.values()]
        return next((c for c in codes if c and c > 0), 1)
    except SignalException:
        return 130
    finally:
        for logger, level in quiet.items():
            logger.setLevel(level)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return 0
