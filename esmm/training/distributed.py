"""The process group of a training run: ranks from the launcher's environment, the default
group (keyed by torchrun's restart round), the collectives the training loop needs, and
its release at the end (issue 24).

Launchers: torchrun (or anything that sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``) and TorchDistributor; one process without them.
"""

from __future__ import annotations

import datetime as dt
import inspect
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

# Imported here, before any process group exists, on purpose (issue 24). This module binds
# ``group=group.WORLD`` as the default argument of ten functions when it is first imported,
# and DDP's constructor imports it. Imported after init_process_group it captures the
# default group in those defaults, so destroy_process_group cannot free it: gloo's threads
# (gloo_tcp_loop, pt_gloo_runloop) then outlive train() into interpreter finalisation, where
# a rank intermittently aborted with "terminate called without an active exception"
# (SIGABRT) after a successful run. Imported first, the defaults hold None (= the default
# group at call time). :func:`release_group_defaults` covers a caller that imported it late.
import torch.distributed.nn.functional as _dist_nn_functional

from esmm.config.schema import Config


@dataclass
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(cfg: Config) -> Dist:
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    want = cfg.train.device
    if want == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but torch sees no GPU; use train.device=cpu or auto")
    use_cuda = want == "cuda" or (want == "auto" and torch.cuda.is_available())
    device = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if cfg.train.torch_threads:
        torch.set_num_threads(cfg.train.torch_threads)
    if world > 1 and not dist.is_initialized():
        init_group("nccl" if use_cuda else "gloo", rank, world, dt.timedelta(minutes=30))
    return Dist(rank, world, local, device)


def init_group(backend: str, rank: int, world: int, timeout: dt.timedelta) -> None:
    """The default process group; under torchrun, keyed by the restart round.

    Why: torchrun's agent keeps one store across ``--max-restarts`` rounds, so the keys a
    killed round left (its rank 0's address) are still there when the restarted ranks
    meet; a rank that read the old address first failed with "Gloo connectFullMesh
    failed ... Connection refused" (about every other restart here). A prefix per round
    makes each round see only its own keys.
    """
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if restart is None or "MASTER_ADDR" not in os.environ:
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=timeout)
        return
    hosts_store = rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=hosts_store, timeout=timeout
    )
    dist.init_process_group(
        backend, store=dist.PrefixStore(f"esmm/restart_{restart}", store), rank=rank, world_size=world, timeout=timeout
    )


def any_has_batch(have: bool, d: Dist) -> bool:
    if d.world_size == 1:
        return have
    flag = torch.tensor([1 if have else 0], dtype=torch.int32, device=d.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def gather_counts(n: int, d: Dist) -> list[int]:
    """``n`` of every rank, in rank order (a collective: all ranks call it together)."""
    if d.world_size == 1:
        return [n]
    got = [torch.zeros(1, dtype=torch.long, device=d.device) for _ in range(d.world_size)]
    dist.all_gather(got, torch.tensor([n], dtype=torch.long, device=d.device))
    return [int(x.item()) for x in got]


def shutdown(d: Dist) -> None:
    """Destroy the default group this run used, and free it now (:func:`release_group_defaults`)."""
    if d.world_size > 1 and dist.is_initialized():
        group = dist.group.WORLD
        dist.destroy_process_group()
        release_group_defaults(group)


def release_group_defaults(group: Any) -> int:
    """Drop references to the destroyed ``group`` that ``torch.distributed.nn.functional``'s
    default arguments hold (see the import at the top), so the group and its threads are
    freed now rather than during interpreter finalisation. ``None`` is what those defaults
    hold when the module is imported before a group exists. Returns how many were dropped."""
    dropped = 0
    for fn in vars(_dist_nn_functional).values():
        defaults = getattr(fn, "__defaults__", None)
        if inspect.isfunction(fn) and defaults and any(v is group for v in defaults):
            fn.__defaults__ = tuple(None if v is group else v for v in defaults)
            dropped += 1
    return dropped
