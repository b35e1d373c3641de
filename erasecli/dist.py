"""Several processes: `accelerate launch -m erasecli ...` (or torchrun) on GPUs, or on CPUs with gloo.

One `World` per process says who it is. Single-process runs get `World(0, 1)` and every call below is a
no-op, so the library reads the same either way:

- sampling (`sampling.generate`, so `sample`, `evaluate` and training-data sampling) splits its (prompt, seed)
  jobs round-robin, each process makes its share, and every process gets all images back in order;
- critic-rl rolls out its share of each step's chains (noise drawn for the whole batch) and gathers them back,
  so every process holds every trajectory and reward; its PPO update then splits the rows like the others;
- training splits each step's batch by rows after all random draws (every process draws the same numbers
  from the same seeded generator), sums each process's share of the batch mean, and all-reduces the
  gradients, so every process takes the same optimiser step as one process with the whole batch;
- only the main process writes files (outputs, caches, checkpoints) and prints.

Results equal a one-process run up to float rounding: a batch split differently sums in another order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

_WORLD = None


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    device: object = None  # this process's device under a launcher; None: the caller's choice

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rows(self, n: int) -> list[int]:
        """This process's share of n jobs or batch rows: rank, rank + size, ..."""
        return list(range(self.rank, n, self.size))

    def local(self, t):
        """This process's rows of a per-row tensor (first dim = batch)."""
        return t if self.size == 1 else t[self.rank :: self.size]

    def gather(self, items: list, n: int) -> list:
        """Every process's `items` (its rows of n, in `rows(n)` order) back in one list of n, on every process."""
        if self.size == 1:
            return list(items)
        import torch.distributed as dist

        parts: list = [None] * self.size
        dist.all_gather_object(parts, list(items))
        out: list = [None] * n
        for rank, part in enumerate(parts):
            for i, item in zip(range(rank, n, self.size), part):
                out[i] = item
        return out

    def gather_rows(self, t, n: int):
        """Every process's rows of a per-row tensor (its `rows(n)`, first dim) back in one (n, ...) tensor, on
        every process, on t's device."""
        if self.size == 1:
            return t
        import torch

        parts = self.gather([t.detach().cpu()], self.size)  # one part per process, in rank order
        out = torch.empty((n, *t.shape[1:]), dtype=t.dtype)
        for rank, part in enumerate(parts):
            out[rank :: self.size] = part
        return out.to(t.device)

    def sum_(self, tensors) -> None:
        """All-reduce (sum) a list of tensors in place, in one flat message."""
        if self.size == 1:
            return
        import torch
        import torch.distributed as dist

        tensors = [t for t in tensors if t is not None]
        flat = torch.cat([t.reshape(-1).float() for t in tensors])
        if flat.device.type == "cpu" or dist.get_backend() == "gloo":
            flat = flat.cpu()
        dist.all_reduce(flat)
        i = 0
        for t in tensors:
            t.copy_(flat[i : i + t.numel()].view_as(t).to(t.device, t.dtype))
            i += t.numel()

    def total(self, *scalars):
        """Sum of each process's partial scalar (0-d tensors), returned as new tensors."""
        if self.size == 1:
            return scalars if len(scalars) > 1 else scalars[0]
        import torch

        v = torch.stack([s.detach().float().reshape(()) for s in scalars])
        self.sum_([v])
        out = tuple(v[i] for i in range(len(scalars)))
        return out if len(out) > 1 else out[0]


def launched() -> bool:
    """True under accelerate launch / torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def world() -> World:
    """This process's World; joins the process group (gloo on CPUs, nccl on GPUs) on first use."""
    global _WORLD
    if _WORLD is None:
        if not launched():
            _WORLD = World()
        else:
            import torch
            from accelerate import PartialState

            state = PartialState(cpu=not torch.cuda.is_available())
            _WORLD = World(state.process_index, state.num_processes, state.device)
    return _WORLD


def rank_env() -> int:
    """This process's rank from the launcher's environment, without joining the group (for the CLI's output)."""
    return int(os.environ.get("RANK", "0"))
