"""Barriers that start and stop every rank's timed phase together.

Two kinds, chosen per run with ``--barrier``:

``shm``
    Ranks on one node. A small segment in ``/dev/shm`` holds an arrival counter, a release
    word and one slot per rank. A rank writes its slot, adds one to the counter with an atomic
    instruction executed by the kernel (``FUTEX_WAKE_OP``, which also orders the slot write
    before the counter), and the rank that sees the counter complete stores the generation in
    the release word and wakes every waiter with one ``FUTEX_WAKE``. Waiters spin briefly on
    the release word, then sleep in ``FUTEX_WAIT``, so no core is burnt while a slow rank is
    still warming up; when only one rank is missing they spin again for a bounded time (its
    arrival is often near), so they leave within microseconds instead of after the kernel's
    wake-up latency.
``file``
    Ranks on several nodes sharing the run directory. A rank creates its arrival file by
    writing a temporary file and renaming it (atomic on local filesystems and NFS, no lock
    service, no ``flock``), then polls the generation's directory with a short back-off until
    all ``world_size`` arrival files are listed. Listing the directory (``opendir``) makes an
    NFS client revalidate it, so stale attribute caches do not hide arrivals for long.

Both kinds: every wait has a timeout after which the rank raises :class:`BarrierTimeout`
naming the ranks that never arrived and marks the barrier aborted, so every other waiting rank
fails at once with the same names; state is named after the run id and the launch id (see
:func:`barrier_namespace`), so state left by a killed earlier launch is never mistaken for this
one; the same object serves the start and end barriers (generations 1, 2, ...); the last rank
to close removes the state, and a rank closing after an error removes it at once. Files and
segments are created owner-only (0600, directories 0700).

Every wait returns a :class:`BarrierEvent` with the rank's arrive and release times and a
``common_release_ns`` that is identical on every rank (the arrival time of the last rank), from
which ranks compute a shared deadline.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from hpcbench.errors import ConfigError
from hpcbench.runfiles import BARRIER_DIR
from hpcbench.runtime.barrier.base import (
    KINDS,
    SHM_DIR,
    SHM_PREFIX,
    Barrier,
    BarrierEvent,
    barrier_namespace,
)
from hpcbench.runtime.barrier.file import FileBarrier
from hpcbench.runtime.barrier.shm import ShmBarrier, segment_pids, sweep_stale_segments

__all__ = [
    "KINDS",
    "SHM_DIR",
    "SHM_PREFIX",
    "Barrier",
    "BarrierEvent",
    "FileBarrier",
    "ShmBarrier",
    "barrier_namespace",
    "open_barrier",
    "remove_barrier_state",
    "segment_pids",
    "sweep_stale_segments",
]


def open_barrier(
    kind: str,
    *,
    namespace: str,
    rank: int,
    world_size: int,
    timeout_s: float,
    run_dir: Path | None = None,
    spin_s: float | None = None,
    last_spin_s: float | None = None,
) -> Barrier:
    """Open (creating when first) the barrier ``namespace`` of kind "shm" or "file".

    ``spin_s`` and ``last_spin_s`` tune the shm barrier (see :class:`ShmBarrier`).
    """
    if kind == "shm":
        return ShmBarrier(
            namespace, rank, world_size, timeout_s, spin_s=spin_s, last_spin_s=last_spin_s
        )
    if kind == "file":
        if run_dir is None:
            raise ConfigError("barrier 'file' needs the run directory")
        return FileBarrier(namespace, rank, world_size, timeout_s, run_dir=Path(run_dir))
    raise ConfigError(f"barrier: unknown kind {kind!r} (valid: {', '.join(KINDS)})")


def remove_barrier_state(namespace: str, run_dir: Path | None = None) -> list[Path]:
    """Remove what any barrier of ``namespace`` left (launchers call this on exit and Ctrl-C).

    Returns the paths removed.
    """
    removed: list[Path] = []
    segment = SHM_DIR / namespace
    try:
        segment.unlink()
        removed.append(segment)
    except FileNotFoundError:
        pass
    if run_dir is not None:
        directory = Path(run_dir) / BARRIER_DIR / namespace
        if directory.exists():
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(directory)
        parent = Path(run_dir) / BARRIER_DIR
        with contextlib.suppress(OSError):
            parent.rmdir()
    return removed
