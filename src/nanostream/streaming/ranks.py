"""Who this reader is: rank, world size and node, from torch.distributed or torchrun, with workers folded in.

Readers are ranks, with DataLoader workers folded in below them (``worker_stride``:
worker ``w`` of ``k`` on rank ``r`` is reader ``r*k + w`` of ``world*k``; a node of ``L``
ranks then has ``L*k`` readers). Ranks are numbered node by node, as torchrun does:
rank ``r`` is local reader ``r % L`` of node ``r // L``, with ``N = world // L`` nodes.
``default_layout`` reads torch.distributed, else torchrun's RANK, WORLD_SIZE,
LOCAL_WORLD_SIZE, LOCAL_RANK and GROUP_RANK (read here, next to where they are used,
never through ``Config``: they describe the process, not the user's settings). Who
reads which row group is ``nanostream.streaming.order``.
"""

from __future__ import annotations

import os
import sys

from ..errors import ConfigError


def check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is not in 0..world_size-1 (world_size={world_size})")


def worker_stride(rank: int, world_size: int, worker_id: int, num_workers: int) -> tuple[int, int]:
    """Fold DataLoader workers into ranks: worker ``w`` of rank ``r`` is ``r*k + w`` of ``world*k``."""
    check_rank(rank, world_size)
    k = max(1, num_workers)
    check_rank(worker_id, k)
    return rank * k + worker_id, world_size * k


def check_layout(rank: int, world_size: int, local_world_size: int) -> None:
    """Raise ConfigError unless ``rank`` is in the world and the nodes hold equal numbers of ranks."""
    check_rank(rank, world_size)
    if local_world_size < 1 or world_size % local_world_size:
        raise ConfigError(f"local_world_size {local_world_size} does not divide world_size {world_size}: "
                          "every node must run the same number of ranks (and DataLoader workers)")


def default_rank() -> tuple[int, int]:
    """(rank, world_size) from torch.distributed if initialised, else RANK/WORLD_SIZE, else (0, 1)."""
    dist = sys.modules.get("torch.distributed")  # never import torch here
    if dist is not None and dist.is_available() and dist.is_initialized():
        return int(dist.get_rank()), int(dist.get_world_size())
    try:
        return int(os.environ.get("RANK") or 0), int(os.environ.get("WORLD_SIZE") or 1)
    except ValueError as exc:
        raise ConfigError(f"RANK/WORLD_SIZE must be integers ({exc})") from exc


def default_layout(rank: int | None = None, world_size: int | None = None,
                   local_world_size: int | None = None) -> tuple[int, int, int]:
    """(rank, world_size, local_world_size), the given ones kept, the others from ``default_rank`` and
    torchrun's LOCAL_WORLD_SIZE. That is used only when world_size is torchrun's own (not given, or
    equal to WORLD_SIZE); otherwise local_world_size defaults to world_size: one node. Where torchrun
    also sets LOCAL_RANK and GROUP_RANK, they must agree with ``rank`` being numbered node by node."""
    env_rank, env_world = default_rank()
    rank = env_rank if rank is None else rank
    world_size = env_world if world_size is None else world_size
    if local_world_size is None:
        try:
            env = {k: int(os.environ[k]) for k in ("LOCAL_WORLD_SIZE", "LOCAL_RANK", "GROUP_RANK", "WORLD_SIZE")
                   if os.environ.get(k)}
        except ValueError as exc:
            raise ConfigError(f"LOCAL_WORLD_SIZE/LOCAL_RANK/GROUP_RANK must be integers ({exc})") from exc
        local = env.get("LOCAL_WORLD_SIZE")
        if local is None or env.get("WORLD_SIZE", world_size) != world_size:
            local_world_size = world_size
        else:
            local_world_size = local
            node, local_rank = divmod(rank, local) if local > 0 else (0, 0)
            if env.get("LOCAL_RANK", local_rank) != local_rank or env.get("GROUP_RANK", node) != node:
                raise ConfigError(
                    f"RANK={rank} is not local rank LOCAL_RANK={env.get('LOCAL_RANK')} of node "
                    f"GROUP_RANK={env.get('GROUP_RANK')} with LOCAL_WORLD_SIZE={local}: nanostream needs ranks "
                    "numbered node by node and the same number per node; pass local_world_size= explicitly")
    return rank, world_size, local_world_size


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
