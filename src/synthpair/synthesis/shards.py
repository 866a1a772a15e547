"""Process-group helpers for sharded generation (``torchrun --nproc_per_node=K -m synthpair generate …``).

:class:`Shards` wraps the ranks of a torchrun job (or a single process: every helper then just calls its
function). Only Python objects travel between ranks (seed blocks' images, masks and records; the progress
state), so the group is always ``gloo``, also on CUDA machines, and a process group that a caller already
opened (e.g. the trainer's NCCL group) is left alone: the helpers then use a gloo sub-group of it.

Errors: a :class:`~synthpair.errors.SynthpairError` raised on one rank inside :meth:`Shards.check`,
:meth:`Shards.on_main` or a :meth:`Shards.gather` payload is raised, with the same one line, on EVERY rank, so
bad input ends every process with the CLI's one-line error instead of leaving the others waiting.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import SynthpairError, fail

# Rank 0 may train the reference segmenter while the others wait; give that room before gloo times out.
TIMEOUT = datetime.timedelta(hours=4)


@dataclass
class Shards:
    """``rank`` of ``world`` processes (``local_rank`` picks the CUDA device); ``group``: the gloo group of the
    collectives (None = the default group, or no group at all when ``world == 1``)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    group: Any = None

    @classmethod
    def start(cls) -> "Shards":
        """The ranks of this torchrun job (joins/opens the process group), or a single process."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        group = None
        if not dist.is_initialized():
            dist.init_process_group(backend="gloo", timeout=TIMEOUT)
        elif dist.get_backend() != "gloo":
            group = dist.new_group(backend="gloo", timeout=TIMEOUT)
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), group)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _all_gather(self, obj: Any) -> list[Any]:
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj, group=self.group)
        return out

    @staticmethod
    def _raise_first(errors: list[str | None]) -> None:
        for msg in errors:
            if msg is not None:
                raise fail(msg)

    def check(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on every rank (validation before anything is written); a one-line error on any rank is
        raised on all. Returns this rank's result."""
        if self.world == 1:
            return fn()
        try:
            value, err = fn(), None
        except SynthpairError as e:
            value, err = None, e
        self._raise_first(self._all_gather(None if err is None else str(err)))
        return value

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on rank 0 only (the writes); the others wait. Returns rank 0's result on every rank (keep it
        small: it is pickled to all); its one-line error is raised on all."""
        if self.world == 1:
            return fn()
        value, err = None, None
        if self.is_main:
            try:
                value = fn()
            except SynthpairError as e:
                err = e
        got = self._all_gather((None if err is None else str(err), value) if self.is_main else None)
        self._raise_first([got[0][0]])
        return got[0][1]

    def gather(self, fn: Callable[[], Any]) -> list[Any] | None:
        """Run ``fn`` on every rank; rank 0 gets ``[result of rank 0, …, result of rank K-1]``, the others None.
        A rank's one-line error comes back in its slot as :class:`ShardError`; hand the list to
        :func:`raise_errors` inside the next :meth:`on_main`, which raises it on every rank."""
        if self.world == 1:
            return [fn()]
        import torch.distributed as dist

        try:
            value: Any = fn()
        except SynthpairError as e:
            value = ShardError(str(e))
        out: list[Any] | None = [None] * self.world if self.is_main else None
        dst = 0 if self.group is None else dist.get_global_rank(self.group, 0)
        dist.gather_object(value, out, dst=dst, group=self.group)
        return out


@dataclass
class ShardError:
    """A one-line error raised on another rank while it computed its part."""

    message: str


def raise_errors(values: list[Any]) -> None:
    """Raise the first :class:`ShardError` among ``values`` as a one-line error."""
    for v in values:
        if isinstance(v, ShardError):
            raise fail(v.message)


__all__ = ["Shards", "ShardError", "raise_errors"]
