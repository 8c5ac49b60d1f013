"""``Ranks``: who reads (rank, world size, ranks per node) and ``drop_last``, detected from torch.distributed or
torchrun's environment (read here, not in ``Config``: it describes the process).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class Ranks:
    """The readers of a run: ``rank`` of ``world_size``, ``local_world_size`` per node (None: detected when the
    stream is built), and ``drop_last`` (even out an epoch by leaving row groups out, else by repeating)."""

    rank: int | None = None
    world_size: int | None = None
    local_world_size: int | None = None
    drop_last: bool = True

    def resolved(self) -> Ranks:
        """These ranks with every None detected (torch.distributed, else torchrun's environment, else one
        rank), checked. torchrun's LOCAL_WORLD_SIZE is used only with its own world size."""
        env_rank, env_world = _detected()
        rank = env_rank if self.rank is None else self.rank
        world = env_world if self.world_size is None else self.world_size
        local = self.local_world_size if self.local_world_size is not None else _local(rank, world)
        check_rank(rank, world)
        if local < 1 or world % local:
            raise ConfigError(f"local_world_size {local} does not divide world_size {world}: every node must run "
                              "the same number of ranks (and DataLoader workers)")
        return Ranks(rank, world, local, bool(self.drop_last))


def check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is not in 0..world_size-1 (world_size={world_size})")


def worker_stride(rank: int, world_size: int, worker_id: int, num_workers: int) -> tuple[int, int]:
    """Fold DataLoader workers into ranks: worker ``w`` of rank ``r`` is ``r*k + w`` of ``world*k``."""
    check_rank(rank, world_size)
    k = max(1, num_workers)
    check_rank(worker_id, k)
    return rank * k + worker_id, world_size * k


def _detected() -> tuple[int, int]:
    """(rank, world_size) from torch.distributed if initialised, else RANK/WORLD_SIZE, else (0, 1)."""
    dist = sys.modules.get("torch.distributed")  # never import torch here
    if dist is not None and dist.is_available() and dist.is_initialized():
        return int(dist.get_rank()), int(dist.get_world_size())
    try:
        return int(os.environ.get("RANK") or 0), int(os.environ.get("WORLD_SIZE") or 1)
    except ValueError as exc:
        raise ConfigError(f"RANK/WORLD_SIZE must be integers ({exc})") from exc


def _local(rank: int, world: int) -> int:
    """torchrun's LOCAL_WORLD_SIZE when ``world`` is its WORLD_SIZE, checked against LOCAL_RANK and GROUP_RANK;
    else ``world`` (one node)."""
    try:
        env = {k: int(os.environ[k]) for k in ("LOCAL_WORLD_SIZE", "LOCAL_RANK", "GROUP_RANK", "WORLD_SIZE")
               if os.environ.get(k)}
    except ValueError as exc:
        raise ConfigError(f"LOCAL_WORLD_SIZE/LOCAL_RANK/GROUP_RANK must be integers ({exc})") from exc
    local = env.get("LOCAL_WORLD_SIZE")
    if local is None or env.get("WORLD_SIZE", world) != world:
        return world
    node, local_rank = divmod(rank, local) if local > 0 else (0, 0)
    if env.get("LOCAL_RANK", local_rank) != local_rank or env.get("GROUP_RANK", node) != node:
        raise ConfigError(
            f"RANK={rank} is not local rank LOCAL_RANK={env.get('LOCAL_RANK')} of node GROUP_RANK="
            f"{env.get('GROUP_RANK')} with LOCAL_WORLD_SIZE={local}: nanostream needs ranks numbered node by "
            "node and the same number per node; pass Ranks(local_world_size=...) explicitly")
    return local


def agent_store() -> tuple[str, int] | None:
    """(host, port) of the key-value store torchrun's agent hosts for its workers (TORCHELASTIC_USE_AGENT_STORE,
    MASTER_ADDR, MASTER_PORT), or None outside torchrun."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not host or not port:
        return None
    try:
        return host, int(port)
    except ValueError as exc:
        raise ConfigError(f"MASTER_PORT must be an integer ({exc})") from exc
