"""One rank's benchmark: engines, prefetchers, warm-up, start barrier, timed phase, end barrier.

Threads of a rank:

- ``prefetchers`` threads call ``source.next_batch`` and put host batches into one bounded
  queue (``queue_depth``), as a data loader would;
- one thread per device drives its engine with the depth-2 submit/wait pipeline described in
  :mod:`hpcbench.backends.base` and records every batch (start, completion, images, device,
  time spent waiting for input);
- the main thread waits for every device to finish warm-up, passes the start barrier, lets the
  devices run the timed phase, passes the end barrier and flushes metrics meanwhile.

With ``duration_s`` the timed phase ends at a deadline shared by all ranks: the start barrier's
``common_release_ns`` (identical on every rank) plus the duration, so every rank keeps its
devices loaded until the common window closes. With ``num_batches`` each device runs that many
timed batches, then keeps running unrecorded "tail" batches until the end barrier releases, so
ranks that finish early still load the node while the others finish.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hpcbench.backends.base import Backend, BatchSource, DeviceInfo, Engine, HostBatch
from hpcbench.cpulist import format_cpulist
from hpcbench.errors import HpcbenchError, RunError
from hpcbench.metrics import RankMetricsWriter
from hpcbench.plan.model import RankPlacement
from hpcbench.runtime.barrier import Barrier, BarrierEvent
from hpcbench.spec import RunSpec

log = logging.getLogger("hpcbench.rank")

_POLL_S = 0.1
_JOIN_S = 10.0

StatusCallback = Callable[[dict[str, Any]], None]


@dataclass(slots=True)
class _DeviceState:
    """Counters of one device thread (written only by that thread)."""

    warm: threading.Event = field(default_factory=threading.Event)
    timed_done: threading.Event = field(default_factory=threading.Event)
    timed_batches: int = 0
    timed_images: int = 0
    tail_batches: int = 0
    last_t_end_ns: int = 0
    # (t_start_ns, t_end_ns, images) of the timed batches, kept only for --until-stable.
    timed_log: list[tuple[int, int, int]] = field(default_factory=list)
    last_progress: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class PipelineResult:
    """What a rank did, for its log and its metrics attributes."""

    devices: tuple[DeviceInfo, ...]
    timed_batches: int
    timed_images: int
    tail_batches: int
    t_begin_ns: int
    t_finish_ns: int
    start: BarrierEvent
    end: BarrierEvent

    @property
    def images_per_s(self) -> float:
        seconds = (self.t_finish_ns - self.t_begin_ns) / 1e9
        return self.timed_images / seconds if seconds > 0 else 0.0


def thread_census() -> dict[str, Any]:
    """The threads of this process and the CPUs each may run on, for the rank's record.

    Python threads by name (``MainThread``, ``prefetch-N``, ``device-N``, a backend's workers);
    ``native_threads`` counts the others (a BLAS or OpenMP pool, CUDA's own threads), which
    wait in the library unless it gives them work.
    """
    named = []
    for thread in threading.enumerate():
        tid = thread.native_id
        if tid is None or not thread.is_alive():
            continue
        try:
            cpus = format_cpulist(sorted(os.sched_getaffinity(tid)))
        except OSError:  # the thread ended between the listing and the query
            continue
        named.append({"name": thread.name, "cpus": cpus})
    try:
        tasks = len(os.listdir(f"/proc/{os.getpid()}/task"))
    except OSError:
        tasks = len(named)
    return {
        "python": named,
        "native_threads": max(tasks - len(named), 0),
        # Under sched_autogroup, processes of one session share one CPU share (launcher.py).
        "session_id": os.getsid(0),
    }


class Pipeline:
    """Runs the lifecycle of one rank; :meth:`run` returns when the end barrier released."""

    def __init__(
        self,
        backend: Backend,
        spec: RunSpec,
        placement: RankPlacement,
        writer: RankMetricsWriter,
        barrier: Barrier,
        data_dir: str = "",
        status: StatusCallback | None = None,
    ) -> None:
        self.backend = backend
        self.spec = spec
        self.placement = placement
        self.writer = writer
        self.barrier = barrier
        self.data_dir = data_dir
        self._status = status or (lambda info: None)
        self._queue: queue.Queue[HostBatch] = queue.Queue(maxsize=spec.queue_depth)
        self._sequence = itertools.count()
        self._sequence_lock = threading.Lock()
        self._stop = threading.Event()
        self._timed_go = threading.Event()
        self._end_released = threading.Event()
        # The shared deadline on this node's CLOCK_MONOTONIC: a step of the wall clock (NTP, an
        # administrator) during the timed phase neither ends it early nor stretches it.
        self._deadline_mono_ns: int | None = None
        self._error: BaseException | None = None
        self._error_lock = threading.Lock()
        self._states: list[_DeviceState] = []
        self.devices: tuple[DeviceInfo, ...] = ()
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------------- main thread
    def run(self) -> PipelineResult:
        """Warm up, synchronise, measure; raises RunError (or the backend's error) on failure."""
        spec = self.spec
        self.devices = tuple(self.backend.devices(self.placement, spec))
        if not self.devices:
            raise RunError(f"rank {self.placement.rank}: the backend found no device")
        log.info("devices: %s", "; ".join(d.label for d in self.devices))
        source = self.backend.make_source(spec, self.placement, self.data_dir)
        engines = [self.backend.make_engine(device, spec) for device in self.devices]
        self._states = [_DeviceState() for _ in self.devices]
        try:
            self._start_threads(source, engines)
            self._phase("warmup")
            warm = [s.warm for s in self._states]
            self._wait_all("warm-up", warm, time.monotonic() + spec.barrier_timeout_s, "warmup")
            # Every thread the timed phase will run with exists (and is pinned) by now.
            self.writer.set_attr("threads_json", thread_census())
            self._phase("barrier start")
            start = self.barrier.wait("start")
            self.writer.barrier(start.name, start.arrive_ns, start.release_ns)
            real0_ns, mono0_ns = time.time_ns(), time.monotonic_ns()
            if spec.duration_s is not None:
                # --until-stable: devices run to the longest allowed; the search may move it.
                length_s = spec.stable_limit_s or spec.duration_s
                deadline_ns = start.common_release_ns + int(length_s * 1e9)
                self._deadline_mono_ns = mono0_ns + (deadline_ns - real0_ns)
            self._timed_go.set()
            self._phase("timed")
            if spec.until_stable:
                deadline_ns = self._until_stable(start.common_release_ns)
                self._deadline_mono_ns = mono0_ns + (deadline_ns - real0_ns)
                self.writer.set_attr("deadline_ns", deadline_ns)
            self._wait_timed()
            t_finish_ns = max(s.last_t_end_ns for s in self._states)
            # CLOCK_REALTIME aligns ranks, CLOCK_MONOTONIC measures: a difference between
            # the two over the timed phase is a step of the wall clock (the reader judges it).
            step_ns = (time.time_ns() - real0_ns) - (time.monotonic_ns() - mono0_ns)
            self.writer.set_phase_bounds(start.release_ns, t_finish_ns, clock_step_ns=step_ns)
            self._phase("barrier end")
            end = self.barrier.wait("end")
            self._end_released.set()
            self.writer.barrier(end.name, end.arrive_ns, end.release_ns)
            self._raise_thread_error()
        finally:
            self._stop.set()
            self._end_released.set()
            self._join()
            for engine in engines:
                engine.close()
            source.close()
        self._raise_thread_error()
        return PipelineResult(
            devices=self.devices,
            timed_batches=sum(s.timed_batches for s in self._states),
            timed_images=sum(s.timed_images for s in self._states),
            tail_batches=sum(s.tail_batches for s in self._states),
            t_begin_ns=start.release_ns,
            t_finish_ns=t_finish_ns,
            start=start,
            end=end,
        )

    def _phase(self, phase: str) -> None:
        log.info("phase: %s", phase)
        self._report(phase)

    def _report(self, phase: str) -> None:
        self._status(
            {
                "phase": phase,
                "timed_batches": sum(s.timed_batches for s in self._states),
                "timed_images": sum(s.timed_images for s in self._states),
                "time_ns": time.time_ns(),
            }
        )

    def _wait_all(
        self, what: str, events: Sequence[threading.Event], deadline: float, phase: str
    ) -> None:
        """Wait for every event, flushing metrics; name the devices that never got there."""
        last_report = time.monotonic()
        while True:
            self._raise_thread_error()
            if all(e.is_set() for e in events):
                return
            now = time.monotonic()
            if now >= deadline:
                late = [self.devices[i].label for i, e in enumerate(events) if not e.is_set()]
                raise RunError(
                    f"rank {self.placement.rank}: {what} did not finish on {', '.join(late)} "
                    f"within {self.spec.barrier_timeout_s:g} s"
                )
            events[[e.is_set() for e in events].index(False)].wait(_POLL_S)
            self.writer.maybe_flush()
            if now - last_report >= 0.5:
                self._report(phase)
                last_report = now

    def _until_stable(self, start_ns: int) -> int:
        """The timed phase's deadline found by the stability search (see runtime/stable.py)."""
        from hpcbench.aggregate.validity import rules_named
        from hpcbench.runtime import stable

        def wait_past(t_ns: int) -> None:
            # A device's batches up to t_ns are all complete once one ended after it.
            timeout_s = self.spec.barrier_timeout_s
            give_up = time.monotonic() + max(t_ns - time.time_ns(), 0) / 1e9 + timeout_s
            while not all(s.last_t_end_ns >= t_ns or s.timed_done.is_set() for s in self._states):
                self._raise_thread_error()
                if time.monotonic() >= give_up:
                    late = [d.label for d, s in zip(self.devices, self._states, strict=True)
                            if s.last_t_end_ns < t_ns]  # fmt: skip
                    raise RunError(
                        f"rank {self.placement.rank}: no batch ended after the stability "
                        f"window on {', '.join(late)} within {timeout_s:g} s"
                    )
                time.sleep(_POLL_S)
                self.writer.maybe_flush()
                self._report("timed")

        return stable.search(
            run_dir=self.writer.final_path.parent,
            rank=self.placement.rank,
            world_size=self.barrier.world_size,
            barrier=self.barrier,
            writer=self.writer,
            start_ns=start_ns,
            window_s=float(self.spec.duration_s or 0.0),
            limit_s=float(self.spec.stable_limit_s or 0.0),
            max_ratio=rules_named(self.spec.validity).max_steady_ratio,
            wait_past=wait_past,
            batches=lambda: [b for s in self._states for b in list(s.timed_log)],
        )

    def _wait_timed(self) -> None:
        timeout_s = self.spec.barrier_timeout_s
        events = [s.timed_done for s in self._states]
        if self._deadline_mono_ns is not None:
            # A device may finish its last batch after the deadline, but not much later.
            remaining_s = (self._deadline_mono_ns - time.monotonic_ns()) / 1e9
            deadline = time.monotonic() + remaining_s + timeout_s
            self._wait_all("timed phase", events, deadline, "timed")
            return
        # A batch count has no deadline: fail when a device makes no progress for timeout_s.
        while not all(e.is_set() for e in events):
            stalled = [
                self.devices[i].label
                for i, s in enumerate(self._states)
                if not s.timed_done.is_set() and time.monotonic() - s.last_progress > timeout_s
            ]
            if stalled:
                raise RunError(
                    f"rank {self.placement.rank}: no batch completed on {', '.join(stalled)} "
                    f"for {timeout_s:g} s"
                )
            self._raise_thread_error()
            events[[e.is_set() for e in events].index(False)].wait(_POLL_S)
            self.writer.maybe_flush()
            self._report("timed")

    def _raise_thread_error(self) -> None:
        error = self._error
        if error is None:
            return
        if isinstance(error, HpcbenchError):
            raise error
        raise RunError(f"rank {self.placement.rank}: {type(error).__name__}: {error}") from error

    def _join(self) -> None:
        deadline = time.monotonic() + _JOIN_S
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0.0))
        stuck = [t.name for t in self._threads if t.is_alive()]
        if stuck:
            log.warning("threads still running at exit: %s", ", ".join(stuck))

    # ------------------------------------------------------------------------- worker threads
    def _start_threads(self, source: BatchSource, engines: Sequence[Engine]) -> None:
        for i in range(self.spec.prefetchers):
            self._threads.append(
                threading.Thread(
                    target=self._guard,
                    args=(self._prefetch, source),
                    name=f"prefetch-{i}",
                    daemon=True,
                )
            )
        for i, engine in enumerate(engines):
            self._threads.append(
                threading.Thread(
                    target=self._guard,
                    args=(self._drive, i, engine),
                    name=f"device-{i}",
                    daemon=True,
                )
            )
        for thread in self._threads:
            thread.start()

    def _guard(self, target: Callable[..., None], *args: Any) -> None:
        try:
            target(*args)
        except BaseException as exc:
            with self._error_lock:
                if self._error is None:
                    self._error = exc
            self._stop.set()

    def _prefetch(self, source: BatchSource) -> None:
        while not self._stop.is_set():
            with self._sequence_lock:
                sequence = next(self._sequence)
            batch = source.next_batch(sequence)
            while not self._stop.is_set():
                try:
                    self._queue.put(batch, timeout=_POLL_S)
                    break
                except queue.Full:
                    continue

    def _get(self, device: int) -> tuple[HostBatch, int] | None:
        """The next host batch and the ns spent waiting for it; None when stopping."""
        t0 = time.monotonic_ns()
        started = time.monotonic()
        while not self._stop.is_set():
            try:
                batch = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                if time.monotonic() - started > self.spec.barrier_timeout_s:
                    raise RunError(
                        f"rank {self.placement.rank}: device {device} got no input batch for "
                        f"{self.spec.barrier_timeout_s:g} s (prefetchers stalled)"
                    ) from None
                continue
            return batch, time.monotonic_ns() - t0  # a duration: never the wall clock
        return None

    def _drive(self, index: int, engine: Engine) -> None:
        device = self.devices[index]
        state = self._states[index]
        if device.cpus:
            # Pin the feeding thread (only this thread: pid 0 = the calling thread on Linux).
            os.sched_setaffinity(0, device.cpus)
        self._run_phase(index, engine, "warmup", count=self.spec.warmup_batches)
        state.warm.set()
        while not self._timed_go.wait(_POLL_S):
            if self._stop.is_set():
                return
        if self._deadline_mono_ns is not None:
            self._run_phase(index, engine, "timed", deadline_mono_ns=self._deadline_mono_ns)
        else:
            self._run_phase(index, engine, "timed", count=self.spec.num_batches)
        state.timed_done.set()
        if self._deadline_mono_ns is None:
            # Keep the device loaded (unrecorded) until every rank has finished.
            self._run_phase(index, engine, None, until=self._end_released)

    def _run_phase(
        self,
        index: int,
        engine: Engine,
        phase: str | None,
        *,
        count: int | None = None,
        deadline_mono_ns: int | None = None,
        until: threading.Event | None = None,
    ) -> None:
        state = self._states[index]
        record = self.writer.add_batch
        pending: tuple[Any, int, int, int] | None = None
        done = 0
        keep_log = self.spec.until_stable

        def more() -> bool:
            if self._stop.is_set():
                return False
            if count is not None:
                return done < count
            if deadline_mono_ns is not None:
                # The shared deadline, read each time: --until-stable moves it earlier. Every
                # device times at least one batch, so a phase shorter than a batch (or one the
                # thread reached late) still has a measured end.
                return done == 0 or time.monotonic_ns() < (
                    self._deadline_mono_ns or deadline_mono_ns
                )
            return until is not None and not until.is_set()

        def finish(item: tuple[Any, int, int, int]) -> None:
            ticket, t_start_ns, wait_ns, images = item
            t_end_ns = ticket.wait()
            if phase is None:
                state.tail_batches += 1
            else:
                record(phase, t_start_ns, t_end_ns, images, index, wait_ns)
                if phase == "timed":
                    state.timed_batches += 1
                    state.timed_images += images
                    state.last_t_end_ns = t_end_ns
                    if keep_log:
                        state.timed_log.append((t_start_ns, t_end_ns, images))
            state.last_progress = time.monotonic()

        while more():
            got = self._get(index)
            if got is None:
                break
            batch, wait_ns = got
            t_start_ns = time.time_ns()
            if (
                deadline_mono_ns is not None
                and done > 0
                and time.monotonic_ns() >= (self._deadline_mono_ns or deadline_mono_ns)
            ):
                break  # the input arrived after the deadline: the phase is over
            ticket = engine.submit(batch)
            done += 1
            if pending is not None:
                finish(pending)
            pending = (ticket, t_start_ns, wait_ns, batch.images)
        if pending is not None:
            finish(pending)
