"""The CPU backend: a real numpy MLP inference workload with a known FLOP count.

A "device" is a group of the rank's cores (``--option devices=N`` splits the rank's cores into
N groups, default 1). Each engine holds its own copy of the weights (allocated by the thread
that builds it, so first-touch puts them on the rank's NUMA node) and runs
``relu(x @ W1) ... @ Wout`` on every batch with BLAS limited to the device's core count
(threadpoolctl), so ranks pinned to disjoint cores do not oversubscribe each other.

Options (``--option KEY=VALUE``): ``input`` features per image (3072 = 3x32x32), ``hidden``
width (1024), ``layers`` hidden layers (4), ``classes`` outputs (1000), ``devices`` per rank (1),
``seed`` (0). FLOPs per image = 2 (input·hidden + (layers-1)·hidden² + hidden·classes).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hpcbench.backends.base import Backend, BatchSource, DeviceInfo, Engine, HostBatch, Ticket
from hpcbench.cpulist import format_cpulist
from hpcbench.errors import ConfigError, closest
from hpcbench.plan.model import RankPlacement
from hpcbench.spec import RunSpec

MODELS = ("mlp",)
_DEFAULTS: dict[str, int] = {
    "input": 3072,
    "hidden": 1024,
    "layers": 4,
    "classes": 1000,
    "devices": 1,
    "seed": 0,
}
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
        lowest = 0 if key == "seed" else 1
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

    >>> split_cores((0, 1, 2, 3, 4), 2)
    [(0, 1, 2), (3, 4)]
    """
    if groups > len(cpus):
        raise ConfigError(
            f"options.devices: {groups} devices need at least {groups} cores, the rank has "
            f"{len(cpus)} ({format_cpulist(cpus)})"
        )
    size, extra = divmod(len(cpus), groups)
    out, start = [], 0
    for i in range(groups):
        end = start + size + (1 if i < extra else 0)
        out.append(tuple(cpus[start:end]))
        start = end
    return out


class _DoneTicket(Ticket):
    def __init__(self, t_end_ns: int) -> None:
        self._t_end_ns = t_end_ns

    def wait(self) -> int:
        return self._t_end_ns


class MlpEngine(Engine):
    """One MLP on one group of cores; ``submit`` computes synchronously."""

    def __init__(self, device: DeviceInfo, shape: MlpShape, batch_size: int, seed: int) -> None:
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
        self.buffers = [np.empty((batch_size, b), dtype=np.float32) for b in dims[1:]]
        self.checksum = 0.0

    def submit(self, batch: HostBatch) -> Ticket:
        x = batch.data
        n = x.shape[0]
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            out = self.buffers[i][:n]
            np.matmul(x, w, out=out)
            out += b
            if i != last:
                np.maximum(out, 0, out=out)
            x = out
        # Keep a value that depends on the result so no layer could be skipped unnoticed.
        self.checksum = float(x[0, 0])
        return _DoneTicket(time.time_ns())


class SyntheticSource(BatchSource):
    """Random images, from a small pool of pre-made batches copied per request (host work)."""

    def __init__(self, shape: MlpShape, batch_size: int, seed: int) -> None:
        rng = np.random.default_rng(seed + 1)
        self.batch_size = batch_size
        self._pool = [
            rng.standard_normal((batch_size, shape.input), dtype=np.float32)
            for _ in range(_POOL_BATCHES)
        ]

    def next_batch(self, sequence: int) -> HostBatch:
        data = self._pool[sequence % _POOL_BATCHES].copy()
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
        groups = split_cores(cpus, opts["devices"])
        return [
            DeviceInfo(i, f"cpu cores {format_cpulist(g)}", format_cpulist(g), g)
            for i, g in enumerate(groups)
        ]

    def make_source(self, spec: RunSpec, placement: RankPlacement, data_dir: str) -> BatchSource:
        opts = _check_spec(spec)
        return SyntheticSource(shape_of(spec), spec.batch_size, opts["seed"] + placement.rank)

    def make_engine(self, device: DeviceInfo, spec: RunSpec) -> Engine:
        opts = _check_spec(spec)
        self._limit_blas(max(len(device.cpus), 1))
        return MlpEngine(device, shape_of(spec), spec.batch_size, opts["seed"])

    def _limit_blas(self, threads: int) -> None:
        # BLAS pools are per process: the limit is the cores of one device, so N devices
        # (one thread each, pinned to their group) use the rank's cores without oversubscribing.
        with self._lock:
            if self._limiter is None:
                from threadpoolctl import threadpool_limits

                self._limiter = threadpool_limits(limits=threads, user_api="blas")

    def describe(self, spec: RunSpec) -> dict[str, Any]:
        shape = shape_of(spec)
        info: dict[str, Any] = {
            "model": spec.model,
            "flops_per_image": shape.flops_per_image,
            "parameters": shape.parameters,
            "layers": shape.dims(),
            "numpy": np.__version__,
        }
        try:
            from threadpoolctl import threadpool_info

            info["blas"] = [_blas_entry(x) for x in threadpool_info()]
        except ImportError:  # pragma: no cover - threadpoolctl is a dependency
            pass
        return info


def _blas_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("internal_api", "version", "num_threads", "threading_layer", "architecture")
    return {k: entry.get(k) for k in keys}
