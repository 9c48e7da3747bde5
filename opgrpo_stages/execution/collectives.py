"""The collectives data-parallel stages use (:class:`DataParallel`): this process's share of the
work, gathers, gradient sums. Which one a stage gets is decided in ``execution/distributed.py``."""

from __future__ import annotations

import numpy as np


def processes(cfg: dict) -> int:
    """Ranks of a data-parallel stage: ``distributed.nodes`` x ``distributed.processes``."""
    return int(cfg["distributed"].get("nodes", 1)) * int(cfg["distributed"]["processes"])


class DataParallel:
    """This process's place among the stage's processes, and the collectives the stages use."""

    def __init__(self, rank: int = 0, world: int = 1, object_group=None):
        self.rank, self.world = rank, world
        self._objects = object_group  # a gloo group: gathered objects travel through host memory

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This process's contiguous block of ``n`` items (blocks differ in size by at most one,
        earlier processes take the larger ones; some may be empty when n < world)."""
        sizes = [len(b) for b in np.array_split(np.arange(n), self.world)]
        lo = sum(sizes[: self.rank])
        return slice(lo, lo + sizes[self.rank])

    def gather_cat(self, *parts):
        """Concatenate each argument (torch tensor or numpy array, batch-first) over processes in
        rank order. Returns the full arrays on the main process, ``None`` for each elsewhere.
        Tensors travel by tensor collectives (``gather`` of row blocks padded to the largest),
        only their shapes and dtypes as objects; numpy arrays of objects (strings) as objects."""
        if self.world == 1:
            return parts
        return tuple(self._gather_one(p) for p in parts)

    def _gather_one(self, part):
        import torch
        import torch.distributed as dist

        is_numpy = not hasattr(part, "detach")
        if is_numpy and part.dtype == object:  # strings: small, pickled
            got = [None] * self.world if self.is_main else None
            dist.gather_object(part, got, dst=0, group=self._objects)
            return np.concatenate(got) if self.is_main else None
        t = torch.from_numpy(np.ascontiguousarray(part)) if is_numpy else part.detach().cpu().contiguous()
        shapes = [None] * self.world
        dist.all_gather_object(shapes, (tuple(t.shape), str(t.dtype)), group=self._objects)
        rows = max(s[0] for s, _ in shapes)
        if rows > t.shape[0] or t.shape[0] == 0:
            pad = torch.zeros((rows, *t.shape[1:]), dtype=t.dtype)
            pad[: t.shape[0]] = t
            t = pad
        blocks = [torch.empty_like(t) for _ in range(self.world)] if self.is_main else None
        dist.gather(t, blocks, dst=0, group=self._objects)
        if not self.is_main:
            return None
        out = torch.cat([b[: s[0]] for b, (s, _) in zip(blocks, shapes)])
        return out.numpy() if is_numpy else out

    def all_reduce_grads(self, params) -> None:
        """Sum the gradients over processes (in place). A parameter without a gradient in some
        process (its share of the minibatch was empty) counts as zero there; one without a
        gradient in every process keeps none, as in a single process (AdamW then skips it)."""
        if self.world == 1:
            return
        import torch
        import torch.distributed as dist

        params = list(params)
        has = self.sum(*(float(p.grad is not None) for p in params))
        for p, n in zip(params, has):
            if n == 0:
                continue
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)

    def sum(self, *values):
        """Sums of Python floats over processes (float64), in argument order."""
        if self.world == 1:
            return values
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self._objects)
        return tuple(float(v) for v in t)

    def sum_(self, *tensors) -> None:
        """Sum CPU tensors over processes in place (each holds its rows, zeros elsewhere)."""
        if self.world == 1:
            return
        import torch.distributed as dist

        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self._objects)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier(group=self._objects)


SINGLE = DataParallel()
