"""GPU telemetry: a sampler thread per rank that reads NVML for the rank's GPUs.

At ``telemetry_hz`` samples per second (``RunSpec.telemetry_hz``, default 10; 0 turns it off)
the thread reads, for every GPU of the rank: power, total energy, SM and memory clocks,
temperature, GPU and memory utilisation, memory used and the clock throttle reasons. Samples
are kept in memory (a few kB per GPU per minute at 10 Hz) and written once, at the end, into
the ``telemetry`` group of the rank file; see docs/metrics-format.md.

A quantity the GPU does not report is stored as NaN (throttle reasons: 0 with the
``throttle_known`` flag false) rather than failing the run. Without an NVML driver the sampler
is not started and the rank file says why (``telemetry`` group attribute ``disabled``).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger("hpcbench.telemetry")

# Column name -> (numpy dtype, unit); the order is the order of TelemetryReader.read's tuple.
FIELDS: dict[str, tuple[str, str]] = {
    "power_w": ("float32", "W"),
    "energy_j": ("float64", "J since driver load"),
    "sm_clock_mhz": ("float32", "MHz"),
    "mem_clock_mhz": ("float32", "MHz"),
    "temperature_c": ("float32", "degree C"),
    "util_gpu_pct": ("float32", "%"),
    "util_mem_pct": ("float32", "%"),
    "mem_used_mb": ("float32", "MiB"),
    "throttle_reasons": ("uint64", "NVML clocks-event reason bit mask"),
}
GROUP = "telemetry"
Reading = tuple[float, float, float, float, float, float, float, float, int]

# NVML clocks-event (throttle) reason bits, for readers of the mask.
THROTTLE_BITS: dict[int, str] = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}


def throttle_names(mask: int) -> list[str]:
    """Names of the reasons set in an NVML throttle mask.

    >>> throttle_names(0x4 | 0x1)
    ['gpu_idle', 'sw_power_cap']
    >>> throttle_names(0)
    []
    """
    return [name for bit, name in sorted(THROTTLE_BITS.items()) if mask & bit]


@dataclass(frozen=True, slots=True)
class GpuRef:
    """A GPU to sample: the rank's local index and the NVML handle behind it."""

    local_index: int
    nvml_index: int
    uuid: str
    name: str
    handle: Any


class TelemetryReader:
    """Reads one sample from one GPU through ``pynvml`` (injectable for tests)."""

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml

    def _try(self, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except self.nvml.NVMLError:
            return None

    def read(self, handle: Any) -> Reading:
        n = self.nvml
        power = self._try(lambda: n.nvmlDeviceGetPowerUsage(handle))  # mW
        energy = self._try(lambda: n.nvmlDeviceGetTotalEnergyConsumption(handle))  # mJ
        sm = self._try(lambda: n.nvmlDeviceGetClockInfo(handle, n.NVML_CLOCK_SM))
        mem = self._try(lambda: n.nvmlDeviceGetClockInfo(handle, n.NVML_CLOCK_MEM))
        temp = self._try(lambda: n.nvmlDeviceGetTemperature(handle, n.NVML_TEMPERATURE_GPU))
        util = self._try(lambda: n.nvmlDeviceGetUtilizationRates(handle))
        memory = self._try(lambda: n.nvmlDeviceGetMemoryInfo(handle))
        reasons = self._try(lambda: n.nvmlDeviceGetCurrentClocksThrottleReasons(handle))
        return (
            _num(power, 1e-3),
            _num(energy, 1e-3),
            _num(sm),
            _num(mem),
            _num(temp),
            _num(None if util is None else util.gpu),
            _num(None if util is None else util.memory),
            _num(None if memory is None else memory.used, 1.0 / (1 << 20)),
            -1 if reasons is None else int(reasons),
        )


def _num(value: Any, scale: float = 1.0) -> float:
    return math.nan if value is None else float(value) * scale


def nvml_gpu_refs(nvml: Any, physical: Sequence[int]) -> list[GpuRef]:
    """NVML handles for the rank's GPUs (physical indices as nvidia-smi numbers them).

    Where a cgroup hides the node's other GPUs (Slurm ``ConstrainDevices``), NVML renumbers the
    visible ones from 0 in bus order; when the physical indices do not fit but the count does,
    the visible GPUs are taken in that order. The UUIDs are recorded so the match can be checked.
    """
    count = int(nvml.nvmlDeviceGetCount())
    indices = list(physical)
    if indices and max(indices) >= count:
        if count != len(indices):
            raise ValueError(f"NVML sees {count} GPUs; cannot find physical GPUs {indices}")
        ordered = sorted(physical)
        indices = [ordered.index(p) for p in physical]
    refs = []
    for local, index in enumerate(indices):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        uuid = nvml.nvmlDeviceGetUUID(handle)
        name = nvml.nvmlDeviceGetName(handle)
        refs.append(
            GpuRef(
                local_index=local,
                nvml_index=index,
                uuid=uuid.decode() if isinstance(uuid, bytes) else str(uuid),
                name=name.decode() if isinstance(name, bytes) else str(name),
                handle=handle,
            )
        )
    return refs


def next_tick_s(next_s: float, now_s: float, period_s: float) -> float:
    """When the sampler reads next: a fixed-rate schedule that skips the ticks a stall missed.

    >>> next_tick_s(1.0, 1.125, 0.25)  # on time: one period after the last tick
    1.25
    >>> next_tick_s(1.0, 2.0, 0.25)  # late by three ticks: one period from now, no burst
    2.25
    """
    scheduled = next_s + period_s
    return scheduled if scheduled >= now_s else now_s + period_s


class TelemetrySampler:
    """A daemon thread sampling every GPU of ``refs`` at ``hz`` until :meth:`stop`.

    ``monotonic_s`` and ``wait_s`` (sleep that many seconds; True means stop) are the sampler's
    clock and sleep, injectable so a test can count the samples a schedule must produce.
    """

    def __init__(
        self,
        refs: Sequence[GpuRef],
        hz: float,
        reader: TelemetryReader,
        clock_ns: Callable[[], int] = time.time_ns,
        monotonic_s: Callable[[], float] = time.monotonic,
        wait_s: Callable[[float], bool] | None = None,
    ) -> None:
        if hz <= 0:
            raise ValueError(f"telemetry rate must be positive, got {hz}")
        self.refs = tuple(refs)
        self.hz = hz
        self._reader = reader
        self._clock_ns = clock_ns
        self._stop = threading.Event()
        self._monotonic_s = monotonic_s
        self._wait_s = wait_s if wait_s is not None else self._stop.wait
        self._t_ns: list[int] = []
        self._device: list[int] = []
        self._rows: list[Reading] = []
        self._read_ns = 0
        self._error: str | None = None
        self._thread = threading.Thread(target=self._loop, name="telemetry", daemon=True)

    def start(self) -> TelemetrySampler:
        self._thread.start()
        return self

    def _loop(self) -> None:
        period_s = 1.0 / self.hz
        next_s = self._monotonic_s()
        try:
            while not self._stop.is_set():
                t0 = time.perf_counter_ns()
                for ref in self.refs:
                    reading = self._reader.read(ref.handle)
                    self._t_ns.append(self._clock_ns())
                    self._device.append(ref.local_index)
                    self._rows.append(reading)
                self._read_ns += time.perf_counter_ns() - t0
                now = self._monotonic_s()
                next_s = next_tick_s(next_s, now, period_s)
                if self._wait_s(next_s - now):
                    break
        except Exception as exc:  # a telemetry failure must not kill the benchmark
            self._error = f"{type(exc).__name__}: {exc}"
            log.error("telemetry stopped: %s", self._error)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop sampling; raise if the thread does not end within ``timeout_s``."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                raise TimeoutError(f"telemetry thread did not stop within {timeout_s:g} s")

    @property
    def samples(self) -> int:
        return len(self._rows)

    def columns(self) -> dict[str, np.ndarray]:
        """All samples so far as numpy columns (``t_ns``, ``device`` and every FIELDS name)."""
        n = len(self._rows)
        out: dict[str, np.ndarray] = {
            "t_ns": np.asarray(self._t_ns[:n], dtype=np.int64),
            "device": np.asarray(self._device[:n], dtype=np.int16),
        }
        rows = self._rows[:n]
        for i, (name, (dtype, _)) in enumerate(FIELDS.items()):
            values = [row[i] for row in rows]
            if name == "throttle_reasons":
                out["throttle_known"] = np.asarray([v >= 0 for v in values], dtype=bool)
                values = [max(v, 0) for v in values]
            out[name] = np.asarray(values, dtype=dtype)
        return out

    def write(self, h5file: Any) -> None:
        """Write the ``telemetry`` group into an open h5py file (replacing an earlier one)."""
        if GROUP in h5file:
            del h5file[GROUP]
        group = h5file.create_group(GROUP)
        for name, values in self.columns().items():
            dataset = group.create_dataset(name, data=values)
            if name in FIELDS:
                dataset.attrs["unit"] = FIELDS[name][1]
        group.attrs["hz"] = self.hz
        group.attrs["source"] = "nvml"
        group.attrs["gpus_json"] = _json(
            [{"local_index": r.local_index, "nvml_index": r.nvml_index, "uuid": r.uuid,
              "name": r.name} for r in self.refs]
        )  # fmt: skip
        # Time spent inside NVML calls: the sampler's own cost on the host.
        group.attrs["read_s"] = self._read_ns / 1e9
        if self._error is not None:
            group.attrs["error"] = self._error


def write_disabled(h5file: Any, reason: str) -> None:
    """Record in the rank file why there is no telemetry."""
    if GROUP in h5file:
        del h5file[GROUP]
    h5file.create_group(GROUP).attrs["disabled"] = reason


def start_sampler(physical_gpus: Sequence[int], hz: float) -> tuple[TelemetrySampler | None, str]:
    """Start sampling the rank's GPUs, or say why not (rate 0, no GPUs, no NVML driver)."""
    if hz <= 0:
        return None, "telemetry_hz is 0"
    if not physical_gpus:
        return None, "the rank has no GPUs"
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:  # no driver, no library: the run goes on without telemetry
        return None, f"NVML unavailable: {exc}"
    try:
        refs = nvml_gpu_refs(pynvml, physical_gpus)
    except (ValueError, pynvml.NVMLError) as exc:
        return None, f"NVML: {exc}"
    log.info(
        "telemetry: %g Hz on NVML GPUs %s (pid %d)",
        hz,
        ",".join(str(r.nvml_index) for r in refs),
        os.getpid(),
    )
    return TelemetrySampler(refs, hz, TelemetryReader(pynvml)).start(), ""


def read_telemetry(h5file: Any) -> dict[str, np.ndarray] | None:
    """The telemetry columns of an open rank file, or None when it has none."""
    group = h5file.get(GROUP)
    if group is None or "t_ns" not in group:
        return None
    return {name: group[name][()] for name in group}


def _json(value: Any) -> str:
    import json

    return json.dumps(value)
