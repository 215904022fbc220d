"""Online DPO on N ranks: which prompts a rank samples, with which seeds, and how the rows meet again.

Under ``accelerate launch`` with N processes (``stage.dpo_r1.accelerate=cpu_ddp``, ``ddp``), a round

    shards the pool:   rank r samples prompts r, r + N, r + 2N, ... (strided by global index)
    seeds per prompt:  prompt i draws from prompt_seed(round seed, i): the global index, never the
                       rank, so no two ranks (and no two prompts) share a stream, and a 1-process
                       run with ``prompt_seeds: true`` draws exactly the same samples
    gathers:           every rank receives every rank's rows (all_gather_object) and puts them
                       back in global prompt order, so the frontier selection and the pairs are
                       computed identically on every rank; rank 0 alone writes files and publishes

The DPO step then trains under the same launch (TRL's DPOTrainer under DDP, every rank holding
every pair; the trainer splits them). With one process (no ``WORLD_SIZE`` > 1), :func:`current`
returns the trivial shard and nothing here touches torch.distributed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

T = TypeVar("T")

# Odd, so i -> i * _SEED_STRIDE is a bijection modulo 2**31: distinct prompts never share a seed.
_SEED_STRIDE = 2_654_435_761  # Knuth's multiplicative-hash constant


def prompt_seed(round_seed: int, index: int) -> int:
    """The sampling seed of the prompt at global ``index`` of the pool in a round seeded ``round_seed``."""
    return (round_seed + (index + 1) * _SEED_STRIDE) % 2**31


@dataclass(frozen=True)
class Shard:
    """This process's place in the launch: ``rank`` of ``world`` (``world == 1``: one process)."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def indices(self, n: int) -> list[int]:
        """Global indices of this rank's prompts among ``n`` (strided, so ranks get equal shares +-1)."""
        return list(range(self.rank, n, self.world))

    def gather(self, local: Sequence[T]) -> list[list[T]]:
        """Every rank's ``local`` list, in rank order, on every rank."""
        if self.world == 1:
            return [list(local)]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, list(local))
        return out

    def gather_indexed(self, local: Sequence[tuple[int, T]], n: int) -> list[T]:
        """Merge ``(global index, value)`` pairs from every rank into one list in global order;
        fails unless every index in ``range(n)`` came exactly once."""
        merged: dict[int, T] = {}
        for part in self.gather(local):
            for i, value in part:
                if i in merged:
                    raise RuntimeError(f"online DPO shards: prompt {i} came from two ranks")
                merged[i] = value
        if sorted(merged) != list(range(n)):
            raise RuntimeError(f"online DPO shards: gathered {len(merged)} of {n} prompts")
        return [merged[i] for i in range(n)]

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` on every rank."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


def current() -> Shard:
    """The launch this process is part of; starts torch.distributed (through accelerate, which picks
    gloo on CPU and NCCL on GPUs) when a launcher set ``WORLD_SIZE`` > 1 and nothing has yet."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Shard()
    import torch.distributed as dist

    if not dist.is_initialized():
        from accelerate import PartialState

        PartialState()  # the same state the DPO step's Trainer will find and reuse
    return Shard(rank=dist.get_rank(), world=dist.get_world_size())
