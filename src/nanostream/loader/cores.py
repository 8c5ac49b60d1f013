"""How a host's cores are split between torch's intra-op pool and the loader: ``threads_for``, ``ThreadPlan``.

Any training script can call it (the demo trainer does): ``plan = threads_for("cuda");
plan.apply()`` sets torch's intra-op pool to ``plan.torch`` and pyarrow's pool to
``plan.loader``; pass ``plan.loader`` as the tokenizer's ``num_threads``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..text.tokenizer import usable_cpus
from .threads import set_loader_idle

__all__ = ["ThreadPlan", "threads_for"]


@dataclass(frozen=True)
class ThreadPlan:
    """How to split the cores: ``torch`` intra-op threads and ``loader`` threads (the stream's
    reader, the tokenizer's encoding threads, pyarrow's decode pool)."""

    device: str
    cores: int
    torch: int
    loader: int
    loader_idle: bool = False  # loader threads under SCHED_IDLE (see nanostream.loader.threads)

    def apply(self) -> None:
        """Set torch's intra-op pool, pyarrow's CPU pool and the loader threads' priority to this plan."""
        import pyarrow

        torch.set_num_threads(self.torch)
        pyarrow.set_cpu_count(self.loader)
        set_loader_idle(self.loader_idle)


def threads_for(device: str | torch.device = "cpu", torch_threads: int = 0, cores: int = 0,
                loader_idle: bool = False) -> ThreadPlan:
    """The thread split for training on ``device`` with ``cores`` cores (0: this process's).

    * CPU: the model is the work. The loader's work is light but latency-bound, so it gets one
      core's share and torch the rest (1 + 1 on 2 cores, 15 + 1 on 16): oversubscribed OpenMP
      threads spin and stall each other.
    * CUDA: the model runs on the GPU and torch's intra-op pool only launches kernels and
      runs small host ops, so torch gets 1 thread (2 from 8 cores) and the loader the rest
      (14 + 2 on 16 cores), where tokenizing is the CPU work that matters.

    ``torch_threads`` > 0 overrides torch's share (the loader's stays as planned).
    ``loader_idle``: run the loader's threads under ``SCHED_IDLE``, so that the training thread
    never waits for a core they hold (for hosts whose spare CPU the loader can rely on).
    """
    dev = torch.device(device)
    n = cores if cores > 0 else usable_cpus()
    if dev.type == "cpu":
        loader = 1
        torch_n = max(1, n - loader)
    else:
        torch_n = 2 if n >= 8 else 1
        loader = max(1, n - torch_n)
    return ThreadPlan(dev.type, n, torch_threads if torch_threads > 0 else torch_n, loader, loader_idle)
