"""What every barrier kind shares: the event a wait returns, the namespace, the base class."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from hpcbench.errors import BarrierTimeout, ConfigError, RunError

KINDS = ("shm", "file")
SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "hpcbench-"


@dataclass(frozen=True, slots=True)
class BarrierEvent:
    """One rank's passage through one barrier (times in ns since the epoch, CLOCK_REALTIME)."""

    name: str
    generation: int
    arrive_ns: int
    release_ns: int
    # The same on every rank: when the last rank arrived. Deadlines are computed from it.
    common_release_ns: int


def barrier_namespace(run_id: str, launch_id: str) -> str:
    """The name of one launch's barrier state (a /dev/shm segment or a directory).

    >>> barrier_namespace("20261128-1200-n1-ab12", "j77.0.1")
    'hpcbench-20261128-1200-n1-ab12-j77.0.1'
    >>> barrier_namespace("a/b c", "x")
    'hpcbench-a_b_c-x'
    """
    raw = f"{SHM_PREFIX}{run_id}-{launch_id}"
    return re.sub(r"[^A-Za-z0-9._-]", "_", raw)[:200]


class Barrier(ABC):
    """A reusable barrier among ``world_size`` ranks; use as a context manager or call close()."""

    kind: str

    def __init__(self, namespace: str, rank: int, world_size: int, timeout_s: float) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"barrier: rank {rank} is outside 0..{world_size - 1}")
        if timeout_s <= 0:
            raise ConfigError(f"barrier_timeout_s: must be positive, got {timeout_s}")
        self.namespace = namespace
        self.rank = rank
        self.world_size = world_size
        self.timeout_s = timeout_s
        self.generation = 0
        self.events: list[BarrierEvent] = []
        self._aborted = False
        self._closed = False

    def wait(self, name: str) -> BarrierEvent:
        """Arrive, block until every rank arrived, return the times.

        Raises BarrierTimeout (naming the missing ranks) after ``timeout_s``, or BarrierAborted
        (naming the rank) when another rank aborted the barrier.
        """
        if self._closed:
            raise RunError(f"barrier {name!r}: already closed")
        self.generation += 1
        event = self._wait(name, self.generation)
        self.events.append(event)
        return event

    @abstractmethod
    def _wait(self, name: str, generation: int) -> BarrierEvent: ...

    def abort(self, reason: str) -> None:
        """Tell the other ranks this rank gave up (they fail at once instead of timing out)."""
        if self._closed or self._aborted:
            return
        self._aborted = True
        self._mark_aborted("error", reason)

    @abstractmethod
    def _mark_aborted(self, kind: str, reason: str) -> None: ...

    @abstractmethod
    def close(self) -> None:
        """Release this rank's handle; the last rank (or any rank after an abort) removes state."""

    def __enter__(self) -> Barrier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            self.abort(f"{type(exc).__name__}: {exc}")
        self.close()

    def _timeout_error(self, name: str, missing: list[int], by_rank: int | None) -> BarrierTimeout:
        who = f"ranks {missing}" if len(missing) != 1 else f"rank {missing[0]}"
        if not missing:
            who = "no rank was missing but the release was not seen;"
        noticed = "" if by_rank is None or by_rank == self.rank else f" (noticed by rank {by_rank})"
        return BarrierTimeout(
            f"barrier {name!r} ({self.kind}, {self.namespace}): {who} did not arrive within "
            f"{self.timeout_s:g} s{noticed}",
            culprits=tuple(missing),
        )
