"""Synthesise rank files whose figures are known by construction (reusable by any test).

``write_rank`` writes one ``rank-NNNNN.h5`` through the real :class:`RankMetricsWriter` from
arrays of batches; ``iteration_batches`` builds DLBS-style synchronous iterations (every device's
batch of iteration k starts when iteration k-1 ended and ends when iteration k ends), which is
how DESIGN.md's worked example is phrased. ``worked_example`` writes that example.

Example::

    from tests.rankfiles import iteration_batches, write_rank
    batches = iteration_batches(T0, [47.0] * 200, num_devices=4, batch_size=128)
    write_rank(run_dir, 0, 2, batches, num_devices=4, batch_size=128)
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpcbench.metrics import BATCH_FIELDS, PhaseData, RankMetricsWriter

NS_PER_MS = 1_000_000
# 2026-01-01T00:00:00Z: realistic epoch nanoseconds, so int64 overflow or float rounding shows.
T0_NS = 1_767_225_600 * 1_000_000_000


@dataclass(frozen=True)
class Batches(PhaseData):
    """A phase's batches to write: the columns a rank file's phase group reads back as."""

    @classmethod
    def of(
        cls,
        t_start_ns: Sequence[int] | np.ndarray,
        t_end_ns: Sequence[int] | np.ndarray,
        images: Sequence[int] | np.ndarray | int,
        device: Sequence[int] | np.ndarray | int = 0,
    ) -> Batches:
        """Batches from columns; a scalar ``images``/``device`` applies to every batch."""
        t_end = np.asarray(t_end_ns, dtype=np.int64)
        n = t_end.shape[0]
        return cls(
            t_start_ns=np.asarray(t_start_ns, dtype=np.int64),
            t_end_ns=t_end,
            images=np.broadcast_to(np.asarray(images, dtype=np.int32), (n,)).copy(),
            device=np.broadcast_to(np.asarray(device, dtype=np.int16), (n,)).copy(),
            data_wait_ns=np.zeros(n, dtype=np.int64),
        )

    @property
    def finish_ns(self) -> int:
        return int(self.t_end_ns.max())


def iteration_batches(
    t_begin_ns: int, iteration_ms: Sequence[float] | np.ndarray, num_devices: int, batch_size: int
) -> Batches:
    """DLBS-style iterations: each of ``num_devices`` devices runs one batch per iteration.

    Iteration k's batches start at the end of iteration k-1 (the first at ``t_begin_ns``) and
    all end together after ``iteration_ms[k]``.
    """
    durations_ns = np.round(np.asarray(iteration_ms, dtype=np.float64) * NS_PER_MS).astype(np.int64)
    ends = t_begin_ns + np.cumsum(durations_ns)
    starts = np.concatenate(([t_begin_ns], ends[:-1])).astype(np.int64)
    return Batches.of(
        t_start_ns=np.repeat(starts, num_devices),
        t_end_ns=np.repeat(ends, num_devices),
        images=batch_size,
        device=np.tile(np.arange(num_devices, dtype=np.int16), len(ends)),
    )


def write_rank(
    run_dir: Path,
    rank: int,
    world_size: int,
    timed: Batches,
    *,
    t_begin_ns: int | None = None,
    t_finish_ns: int | None = None,
    num_devices: int = 1,
    batch_size: int | None = None,
    start_barrier: tuple[int, int] | None = None,
    end_barrier: tuple[int, int] | None = None,
    gpus: Sequence[int] | None = None,
    cpus: Sequence[int] | None = None,
    host: str = "node001",
    run_id: str = "synthetic-run",
    launch_id: str = "L0",
    attrs: Mapping[str, Any] | None = None,
    complete: bool = True,
    warmup: Batches | None = None,
    telemetry: Mapping[str, Any] | None = None,
    binding: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``rank-NNNNN.h5`` (or ``.h5.part`` when not ``complete``); return its path.

    Defaults: the timed phase begins at the first batch start and finishes at the last batch
    end; the start barrier is arrived 1 ms before and released at ``t_begin_ns``; the end
    barrier is arrived at ``t_finish_ns`` and released 1 ms later (pass ``(arrive, release)``
    to place them). ``gpus``/``cpus`` default to ``num_devices`` GPUs and 4 cores per rank.
    ``telemetry`` holds the columns of a ``telemetry`` group (``t_ns``, ``device``, ``power_w``...;
    see :func:`telemetry_columns`); ``binding`` entries replace those of ``binding_json``.
    """
    begin = int(timed.t_start_ns.min()) if t_begin_ns is None else int(t_begin_ns)
    finish = timed.finish_ns if t_finish_ns is None else int(t_finish_ns)
    gpu_list = (
        list(gpus) if gpus is not None else [rank * num_devices + d for d in range(num_devices)]
    )
    cpu_list = list(cpus) if cpus is not None else list(range(4 * rank, 4 * rank + 4))
    base_attrs: dict[str, Any] = {
        "local_rank": rank,
        "node": 0,
        "backend": "synthetic",
        "model": "resnet50",
        "batch_size": batch_size if batch_size is not None else int(timed.images[0]),
        "num_devices": num_devices,
        "precision": "fp16",
        "plan_json": json.dumps(
            {
                "rank": rank,
                "node": 0,
                "local_rank": rank,
                "socket": 0,
                "numa_node": 0,
                "cpus": cpu_list,
                "gpus": gpu_list,
                "mem_nodes": [0],
                "data_dir": "",
            }
        ),
        "binding_json": json.dumps(
            {
                "cpus": cpu_list,
                "cuda_visible_devices": ",".join(str(g) for g in gpu_list),
                "mem_policy": "bind",
                "mem_nodes": [0],
                "mismatches": [],
                **(binding or {}),
            }
        ),
        "slurm_json": "null",
    }
    base_attrs.update(attrs or {})
    writer = RankMetricsWriter(Path(run_dir), rank, world_size, run_id, host, launch_id=launch_id)
    # Attributes set directly: JSON strings stay strings, numbers stay numbers.
    for key, value in base_attrs.items():
        writer.file.attrs[key] = value
    _append_phase(writer, "timed", timed)
    if warmup is not None:
        _append_phase(writer, "warmup", warmup)
    writer.barrier("start", *(start_barrier or (begin - NS_PER_MS, begin)))
    writer.barrier("end", *(end_barrier or (finish, finish + NS_PER_MS)))
    writer.set_phase_bounds(begin, finish)
    if telemetry is not None:
        group = writer.file.create_group("telemetry")
        for name, values in telemetry.items():
            group.create_dataset(name, data=np.asarray(values))
        group.attrs["source"] = "synthetic"
    else:
        writer.file.create_group("telemetry").attrs["disabled"] = "the rank has no GPUs"
    return writer.close(complete=complete)


def telemetry_columns(
    t_ns: Sequence[int] | np.ndarray,
    *,
    device: Sequence[int] | np.ndarray | int = 0,
    power_w: Sequence[float] | np.ndarray | float = 300.0,
    energy_j: Sequence[float] | np.ndarray | None = None,
    sm_clock_mhz: Sequence[float] | np.ndarray | float = 1980.0,
    throttle_reasons: Sequence[int] | np.ndarray | int = 0,
) -> dict[str, np.ndarray]:
    """Telemetry columns as the NVML sampler writes them; scalars apply to every sample.

    ``energy_j`` defaults to the integral of ``power_w`` (a counter starting at 1 MJ).
    """
    t = np.asarray(t_ns, dtype=np.int64)
    n = t.shape[0]

    def full(value: Any, dtype: Any) -> np.ndarray:
        return np.broadcast_to(np.asarray(value, dtype=dtype), (n,)).copy()

    power = full(power_w, np.float32)
    if energy_j is None:
        steps = np.diff(t, prepend=t[:1]) / 1e9 * power.astype(np.float64)
        energy = 1e6 + np.cumsum(steps)
    else:
        energy = full(energy_j, np.float64)
    return {
        "t_ns": t,
        "device": full(device, np.int16),
        "power_w": power,
        "energy_j": energy,
        "sm_clock_mhz": full(sm_clock_mhz, np.float32),
        "throttle_reasons": full(throttle_reasons, np.uint64),
        "throttle_known": np.ones(n, dtype=bool),
    }


def _append_phase(writer: RankMetricsWriter, phase: str, batches: Batches) -> None:
    # Bulk write (the writer's add_batch is per batch; 100 000 batches a rank would be slow).
    group = writer.file[phase]
    for name, dtype in BATCH_FIELDS.items():
        values = np.asarray(getattr(batches, name), dtype=dtype)
        dataset = group[name]
        start = dataset.shape[0]
        dataset.resize((start + values.shape[0],))
        dataset[start:] = values


# DESIGN.md's worked example: 2 ranks × 4 GPUs, B = 128, K = 200.
WORKED_ITERATIONS_MS = (
    [47.0] * 50 + [49.0] * 100 + [54.0] * 50,
    [52.0] * 50 + [54.0] * 100 + [65.0] * 50,
)


def worked_example(run_dir: Path, t_begin_ns: int = T0_NS) -> list[Path]:
    """Write DESIGN.md's worked example (both ranks begin together); return the rank files.

    Both ranks leave the start barrier at ``t_begin_ns`` (arrived 1 ms before) and the end
    barrier 1 ms after the slower rank arrived there, as a real barrier would release them.
    """
    batches = [
        iteration_batches(t_begin_ns, iterations, num_devices=4, batch_size=128)
        for iterations in WORKED_ITERATIONS_MS
    ]
    end_release_ns = max(b.finish_ns for b in batches) + NS_PER_MS
    return [
        write_rank(
            run_dir,
            rank,
            2,
            rank_batches,
            t_begin_ns=t_begin_ns,
            num_devices=4,
            batch_size=128,
            end_barrier=(rank_batches.finish_ns, end_release_ns),
        )
        for rank, rank_batches in enumerate(batches)
    ]
