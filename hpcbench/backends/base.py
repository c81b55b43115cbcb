"""The contract between the rank pipeline and an inference backend.

The pipeline (hpcbench.runtime) owns threads, queues, timing and metrics; a backend owns the
model and the device. Per rank: ``backend.devices(...)`` lists the local devices (GPUs, or
groups of the rank's cores for the CPU backend); ``backend.make_source(...)`` produces host
batches (called from several prefetcher threads at once); ``backend.make_engine(...)`` builds one
engine per device. A device thread then drives its engine with a depth-2 pipeline::

    pending = None
    while phase_running:
        batch = queue.get()                 # filled by prefetchers
        t_start_ns = time.time_ns()
        ticket = engine.submit(batch)       # may return before the device finished
        if pending is not None:
            record(pending, pending_ticket.wait())  # t_end_ns: completion on the device
        pending = ...

so a GPU engine can copy batch n+1 to the device while batch n computes. ``Ticket.wait``
returns the CLOCK_REALTIME nanosecond time at which the batch's results were complete on the
device (after an event/stream synchronisation), never the time its kernels were launched.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hpcbench.plan.model import RankPlacement
from hpcbench.spec import RunSpec


@dataclass(frozen=True)
class DeviceInfo:
    """A local device of a rank: ``local_index`` is what metrics record in ``device``."""

    local_index: int
    label: str  # e.g. "cuda:0 (GPU 4, H200)" or "cpu cores 0-8"
    physical: str  # physical GPU index or CPU list, for the record
    cpus: tuple[int, ...] = ()  # cores the device's feeding thread should run on, if any


@dataclass(frozen=True)
class HostBatch:
    """A batch ready on the host: ``data`` is backend-specific (numpy array, pinned tensor)."""

    sequence: int
    images: int
    data: Any
    ready_ns: int  # when the prefetcher finished producing it


class Ticket(ABC):
    """A submitted batch."""

    @abstractmethod
    def wait(self) -> int:
        """Block until the batch is complete on the device; return that time in ns (epoch)."""


class DoneTicket(Ticket):
    """A batch already complete when submitted (computed synchronously)."""

    def __init__(self, t_end_ns: int) -> None:
        self._t_end_ns = t_end_ns

    def wait(self) -> int:
        return self._t_end_ns


class Engine(ABC):
    """One model instance on one device."""

    device: DeviceInfo

    @abstractmethod
    def submit(self, batch: HostBatch) -> Ticket:
        """Start inference on ``batch``; may return before it completes."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release device resources."""


class BatchSource(ABC):
    """Produces host batches; ``next_batch`` is called concurrently by prefetcher threads."""

    @abstractmethod
    def next_batch(self, sequence: int) -> HostBatch:
        """Produce batch number ``sequence``."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (files, pinned buffers)."""


class Backend(ABC):
    """A family of engines (``cpu``, ``torch``)."""

    name: str

    @abstractmethod
    def devices(self, placement: RankPlacement, spec: RunSpec) -> Sequence[DeviceInfo]:
        """The rank's local devices, in local-index order."""

    @abstractmethod
    def make_source(self, spec: RunSpec, placement: RankPlacement, data_dir: str) -> BatchSource:
        """The rank's batch source (synthetic, or its shard of a dataset)."""

    @abstractmethod
    def make_engine(self, device: DeviceInfo, spec: RunSpec) -> Engine:
        """Build (and allocate) one engine for ``device``."""

    def describe(self, spec: RunSpec) -> dict[str, Any]:
        """Facts to store in the metrics file (model FLOPs per image, library versions...)."""
        return {}
