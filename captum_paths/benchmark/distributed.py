"""torch.distributed for the benchmark: who am I, which device, and the few collectives it needs.

The benchmark runs as one process (``python -m captum_paths.benchmark``) or as K processes started by
``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous variables).
:func:`setup` joins the process group when those variables say there is more than one process:
gloo when the device is the CPU, NCCL when it is a GPU (``--device cuda`` becomes ``cuda:LOCAL_RANK``,
so every rank has its own GPU). Python objects (the finished per-image records, the done keys, the
settings verdict) always travel over a gloo group, so that they never occupy GPU memory.
"""

import datetime
import os
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, TypeVar

import torch

__all__ = ["DistInfo", "setup", "env_world_size"]

T = TypeVar("T")


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when the process was not started by torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


@dataclass
class DistInfo:
    """This process's place in the run.

    Attributes:
        rank (int): global rank, 0 in a single-process run.
        world_size (int): number of processes.
        local_rank (int): rank on this node (selects the GPU).
        device (torch.device): where this rank computes.
        owns_group (bool): this object initialised the default process group and tears it down.
        object_group: a gloo process group for Python-object collectives (None in one process).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False
    object_group: Any = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (no-op in one process)."""
        if self.distributed:
            torch.distributed.barrier(group=self.object_group)

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (pickled over gloo).

        Args:
            obj: any picklable object (ignored on ranks other than 0).
        """
        if not self.distributed:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0, group=self.object_group)
        return box[0]

    def gather(self, obj: Any) -> Optional[List[Any]]:
        """Every rank's ``obj``, in rank order, on rank 0; ``None`` on the other ranks.

        Args:
            obj: any picklable object.
        """
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size if self.is_main else None
        torch.distributed.gather_object(obj, out, dst=0, group=self.object_group)
        return out

    def rank0_first(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0, then (after a barrier) on the other ranks: rank 0 trains and caches,
        the others find the cached copy and load it.

        Args:
            fn (callable): called with no arguments on every rank, rank 0 first.
        """
        if not self.distributed:
            return fn()
        if self.is_main:
            out = fn()
            self.barrier()
            return out
        self.barrier()
        return fn()

    def teardown(self) -> None:
        """Leave the process group if :func:`setup` created it."""
        if self.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self.owns_group = False


def _resolve_device(device: str, local_rank: int, world_size: int) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        # one GPU per rank: torchrun's LOCAL_RANK selects it (cuda:0 in a single process)
        dev = torch.device("cuda", local_rank if world_size > 1 else torch.cuda.current_device())
    return dev


def setup(device: str = "cpu", timeout_seconds: float = 6 * 3600) -> DistInfo:
    """Join torchrun's process group when ``WORLD_SIZE > 1`` (or use one the caller created).

    Args:
        device (str): the requested torch device; ``"cuda"`` without an index becomes
            ``cuda:LOCAL_RANK`` under torchrun.
        timeout_seconds (float): how long a collective (the end-of-run gather, the barrier around
            training) waits for the slowest rank before failing. Ranks finish their shares at
            different times, so this must exceed the imbalance of a run, not its length.

    Returns:
        DistInfo for this process.
    """
    if not isinstance(timeout_seconds, (int, float)) or isinstance(timeout_seconds, bool) or timeout_seconds <= 0:
        raise ValueError(f"`timeout_seconds` must be a positive number, got {timeout_seconds!r}")
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():  # the caller (e.g. a notebook or script) set it up
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = _env_int("LOCAL_RANK", rank)
        dev = _resolve_device(device, local_rank, world)
        group = dist.new_group(backend="gloo") if world > 1 and dist.get_backend() != "gloo" else None
        return DistInfo(rank, world, local_rank, dev, False, group)
    world = env_world_size()
    local_rank = _env_int("LOCAL_RANK", 0)
    dev = _resolve_device(device, local_rank, world)
    if world <= 1:
        return DistInfo(0, 1, 0, dev)
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    timeout = datetime.timedelta(seconds=float(timeout_seconds))
    dist.init_process_group(backend=backend, timeout=timeout)
    group = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else None
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev, True, group)
