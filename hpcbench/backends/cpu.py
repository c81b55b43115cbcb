"""The CPU backend: a real numpy MLP inference workload with a known FLOP count.

A "device" is a group of the rank's cores: by default one device per core of the rank, so a
rank on N cores runs N engines that each take whole batches from the rank's queue, as GPUs do
(``--option devices=N`` splits the rank's cores into N groups instead). Each engine holds its
own copy of the weights and runs ``relu(x @ W1) ... @ Wout`` on every batch.

Threads: exactly one compute thread per core, pinned to that core, and BLAS single-threaded
in every one of them (threadpoolctl). A device of several cores splits each batch's rows over
its cores' threads, which sleep (never spin) while they wait. OpenBLAS's own thread pool is
not used: its threads synchronise inside every matrix product by busy-waiting, so when any one
of them loses its core (to a prefetcher, the rank's main thread or another process) the others
spin instead of computing, and a rank on two cores fell to a tenth of its speed
(docs/performance.md, "CPU backend"). The synthetic source hands out a few pre-made batches
without copying them (engines only read their input), so prefetchers cost next to nothing.

Options (``--option KEY=VALUE``): ``input`` features per image (3072 = 3x32x32), ``hidden``
width (1024), ``layers`` hidden layers (4), ``classes`` outputs (1000), ``devices`` per rank (0:
one per core, the default), ``seed`` (0). FLOPs per image = 2 (input·hidden +
(layers-1)·hidden² + hidden·classes).
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hpcbench.backends.base import (
    Backend,
    BatchSource,
    DeviceInfo,
    DoneTicket,
    Engine,
    HostBatch,
    Ticket,
)
from hpcbench.cpulist import format_cpulist, row_ranges, split_cpus
from hpcbench.errors import ConfigError, RunError, closest
from hpcbench.plan.model import RankPlacement
from hpcbench.spec import RunSpec

MODELS = ("mlp",)
_DEFAULTS: dict[str, int] = {
    "input": 3072,
    "hidden": 1024,
    "layers": 4,
    "classes": 1000,
    "devices": 0,  # 0: one device per core of the rank
    "seed": 0,
}
# Options for which 0 is a valid value.
_ZERO_OK = ("devices", "seed")
_POOL_BATCHES = 4


@dataclass(frozen=True, slots=True)
class MlpShape:
    """Layer sizes of the MLP."""

    input: int
    hidden: int
    layers: int
    classes: int

    @property
    def flops_per_image(self) -> int:
        """Multiply-adds of one forward pass, counted as 2 FLOPs each (ReLU not counted).

        >>> MlpShape(3072, 1024, 4, 1000).flops_per_image
        14630912
        """
        dims = self.dims()
        return sum(2 * a * b for a, b in itertools.pairwise(dims))

    @property
    def parameters(self) -> int:
        dims = self.dims()
        return sum(a * b + b for a, b in itertools.pairwise(dims))

    def dims(self) -> list[int]:
        return [self.input] + [self.hidden] * self.layers + [self.classes]


def _options(spec: RunSpec) -> dict[str, int]:
    values = dict(_DEFAULTS)
    for key, value in spec.options.items():
        if key not in _DEFAULTS:
            raise ConfigError(
                f"options.{key}: unknown option of the cpu backend{closest(key, list(_DEFAULTS))} "
                f"(valid: {', '.join(_DEFAULTS)})"
            )
        lowest = 0 if key in _ZERO_OK else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < lowest:
            raise ConfigError(f"options.{key}: expected an integer >= {lowest}, got {value!r}")
        values[key] = value
    return values


def _check_spec(spec: RunSpec) -> dict[str, int]:
    if spec.model not in MODELS:
        raise ConfigError(f"model: the cpu backend runs {', '.join(MODELS)}, not {spec.model!r}")
    if spec.precision != "fp32":
        raise ConfigError(
            f"precision: the cpu backend computes in fp32, not {spec.precision} "
            "(use --backend torch for reduced precision)"
        )
    if spec.data != "synthetic":
        raise ConfigError(f"data: the cpu backend reads synthetic data only, not {spec.data!r}")
    return _options(spec)


def shape_of(spec: RunSpec) -> MlpShape:
    """The MLP a spec describes."""
    opts = _check_spec(spec)
    return MlpShape(opts["input"], opts["hidden"], opts["layers"], opts["classes"])


def split_cores(cpus: Sequence[int], groups: int) -> list[tuple[int, ...]]:
    """Split a rank's cores into ``groups`` contiguous, near-equal groups.

    The backend's devices are these groups, so each must have a core (unlike torch's GPUs,
    whose feeding threads may share).
    """
    if groups > len(cpus):
        raise ConfigError(
            f"options.devices: {groups} devices need at least {groups} cores, the rank has "
            f"{len(cpus)} ({format_cpulist(cpus)})"
        )
    return split_cpus(cpus, groups)


class _SplitTicket(Ticket):
    """A batch whose rows are computed by several core threads; done when every one is."""

    def __init__(self, label: str, cores: Sequence[int], timeout_s: float) -> None:
        self._label = label
        self._pending = set(cores)
        self._timeout_s = timeout_s
        self._t_end_ns = 0
        self._error: BaseException | None = None
        self._done = threading.Condition()

    def part_done(self, core: int, error: BaseException | None) -> None:
        with self._done:
            self._pending.discard(core)
            self._t_end_ns = max(self._t_end_ns, time.time_ns())
            if error is not None and self._error is None:
                self._error = error
            if not self._pending:
                self._done.notify_all()

    def wait(self) -> int:
        with self._done:
            # Sleeps on a condition variable: a waiting thread takes no CPU from the workers.
            if not self._done.wait_for(lambda: not self._pending, self._timeout_s):
                raise RunError(
                    f"{self._label}: the threads of cores {format_cpulist(sorted(self._pending))} "
                    f"did not finish their rows of a batch within {self._timeout_s:g} s"
                )
        if self._error is not None:
            raise RunError(
                f"{self._label}: {type(self._error).__name__}: {self._error}"
            ) from self._error
        return self._t_end_ns


class MlpEngine(Engine):
    """One MLP on one group of cores.

    On one core ``submit`` computes in the calling (device) thread. On several, the engine owns
    one worker thread per core, pinned to it; ``submit`` hands each its contiguous rows of the
    batch and returns at once, and the ticket's ``wait`` sleeps until all rows are done.
    """

    def __init__(
        self,
        device: DeviceInfo,
        shape: MlpShape,
        batch_size: int,
        seed: int,
        timeout_s: float = 120.0,
    ) -> None:
        self.device = device
        self.shape = shape
        rng = np.random.default_rng(seed)
        dims = shape.dims()
        # He-scaled weights keep activations finite through many ReLU layers.
        self.weights = [
            (rng.standard_normal((a, b), dtype=np.float32) * np.float32(np.sqrt(2.0 / a)))
            for a, b in itertools.pairwise(dims)
        ]
        self.biases = [np.zeros(b, dtype=np.float32) for b in dims[1:]]
        # One array per layer for the whole batch; each core thread writes only its rows.
        self.buffers = [np.empty((batch_size, b), dtype=np.float32) for b in dims[1:]]
        self.checksum = 0.0
        self._rows = row_ranges(batch_size, len(device.cpus)) if len(device.cpus) > 1 else []
        self._timeout_s = timeout_s
        self._inboxes: list[queue.SimpleQueue[tuple[Any, _SplitTicket] | None]] = []
        self.workers: list[threading.Thread] = []
        if self._rows:
            for i, core in enumerate(device.cpus):
                inbox: queue.SimpleQueue[tuple[Any, _SplitTicket] | None] = queue.SimpleQueue()
                worker = threading.Thread(
                    target=self._work,
                    args=(core, inbox, *self._rows[i]),
                    name=f"cpu-core-{core}",
                    daemon=True,
                )
                self._inboxes.append(inbox)
                self.workers.append(worker)
                worker.start()

    def _forward(self, x: Any, start: int, stop: int) -> None:
        """Rows ``start:stop`` of the batch through every layer, into their rows of the buffers."""
        last = len(self.weights) - 1
        x = x[start:stop]
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            out = self.buffers[i][start:stop]
            np.matmul(x, w, out=out)
            out += b
            if i != last:
                np.maximum(out, 0, out=out)
            x = out

    def _work(
        self,
        core: int,
        inbox: queue.SimpleQueue[tuple[Any, _SplitTicket] | None],
        start: int,
        stop: int,
    ) -> None:
        os.sched_setaffinity(0, (core,))  # this thread only (pid 0 = the caller on Linux)
        while True:
            item = inbox.get()  # blocks in the kernel: an idle worker takes no CPU
            if item is None:
                return
            x, ticket = item
            error: BaseException | None = None
            try:
                n = x.shape[0]
                if start < n:
                    self._forward(x, start, min(stop, n))
            except BaseException as exc:  # reported through the ticket to the device thread
                error = exc
            ticket.part_done(core, error)

    def submit(self, batch: HostBatch) -> Ticket:
        x = batch.data
        if not self._rows:
            self._forward(x, 0, x.shape[0])
            self.checksum = self._first_output()
            return DoneTicket(time.time_ns())
        ticket = _SplitTicket(self.device.label, self.device.cpus, self._timeout_s)
        for inbox in self._inboxes:
            inbox.put((x, ticket))
        return _ChecksumTicket(ticket, self)

    def _first_output(self) -> float:
        # Keep a value that depends on the result so no layer could be skipped unnoticed.
        return float(self.buffers[-1][0, 0])

    def close(self) -> None:
        for inbox in self._inboxes:
            inbox.put(None)
        for worker in self.workers:
            worker.join(self._timeout_s)
        self._inboxes = []


class _ChecksumTicket(Ticket):
    """Waits for a split batch, then reads the engine's checksum from its complete output."""

    def __init__(self, inner: _SplitTicket, engine: MlpEngine) -> None:
        self._inner = inner
        self._engine = engine

    def wait(self) -> int:
        t_end_ns = self._inner.wait()
        self._engine.checksum = self._engine._first_output()
        return t_end_ns


class SyntheticSource(BatchSource):
    """Random images: a few batches made once and handed out in turn, never copied.

    Engines only read their input (the arrays are made read-only to keep it so), so one array
    may be in use by several devices at once, and producing a batch costs a prefetcher a few
    microseconds instead of a 768 KB copy on the cores the engines compute on.
    """

    def __init__(self, shape: MlpShape, batch_size: int, seed: int) -> None:
        rng = np.random.default_rng(seed + 1)
        self.batch_size = batch_size
        self._pool = []
        for _ in range(_POOL_BATCHES):
            data = rng.standard_normal((batch_size, shape.input), dtype=np.float32)
            data.flags.writeable = False
            self._pool.append(data)

    def next_batch(self, sequence: int) -> HostBatch:
        data = self._pool[sequence % _POOL_BATCHES]
        return HostBatch(sequence, self.batch_size, data, time.time_ns())


class CpuBackend(Backend):
    """numpy MLP inference on groups of the rank's cores."""

    name = "cpu"

    def __init__(self) -> None:
        self._limiter: Any = None
        self._lock = threading.Lock()

    def devices(self, placement: RankPlacement, spec: RunSpec) -> Sequence[DeviceInfo]:
        opts = _check_spec(spec)
        cpus = tuple(placement.cpus) or tuple(sorted(os.sched_getaffinity(0)))
        groups = split_cores(cpus, opts["devices"] or len(cpus))
        return [
            DeviceInfo(i, f"cpu cores {format_cpulist(g)}", format_cpulist(g), g)
            for i, g in enumerate(groups)
        ]

    def make_source(self, spec: RunSpec, placement: RankPlacement, data_dir: str) -> BatchSource:
        opts = _check_spec(spec)
        return SyntheticSource(shape_of(spec), spec.batch_size, opts["seed"] + placement.rank)

    def make_engine(self, device: DeviceInfo, spec: RunSpec) -> Engine:
        opts = _check_spec(spec)
        self.limit_blas()
        return MlpEngine(
            device, shape_of(spec), spec.batch_size, opts["seed"], spec.barrier_timeout_s
        )

    def limit_blas(self) -> None:
        """BLAS single-threaded in this process: parallelism comes from one thread per core."""
        with self._lock:
            if self._limiter is None:
                from threadpoolctl import threadpool_limits

                self._limiter = threadpool_limits(limits=1, user_api="blas")

    def describe(self, spec: RunSpec) -> dict[str, Any]:
        """Model facts and the BLAS pools, recorded after limiting them as the engines will."""
        shape = shape_of(spec)
        info: dict[str, Any] = {
            "model": spec.model,
            "flops_per_image": shape.flops_per_image,
            "parameters": shape.parameters,
            "layers": shape.dims(),
            "numpy": np.__version__,
        }
        self.limit_blas()
        from threadpoolctl import threadpool_info

        info["blas"] = [_blas_entry(x) for x in threadpool_info()]
        return info


def _blas_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("internal_api", "version", "num_threads", "threading_layer", "architecture")
    return {k: entry.get(k) for k in keys}
