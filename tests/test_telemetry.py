"""The telemetry sampler against a fake NVML module (CI has no driver), and its HDF5 group."""

from __future__ import annotations

import math
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import h5py
import numpy as np
import pytest

from hpcbench import telemetry


class FakeNvmlError(Exception):
    pass


class FakeNvml:
    """Four GPUs; GPU 2 does not report power; every call is counted."""

    NVMLError = FakeNvmlError
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2
    NVML_TEMPERATURE_GPU = 0

    def __init__(self, count: int = 4) -> None:
        self.count = count
        self.calls = 0

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetUUID(self, handle: int) -> bytes:
        return f"GPU-{handle:04d}".encode()

    def nvmlDeviceGetName(self, handle: int) -> str:
        return "Fake H200"

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        self.calls += 1
        if handle == 2:
            raise FakeNvmlError("not supported")
        return 350_000 + handle  # mW

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        return 5_000_000  # mJ

    def nvmlDeviceGetClockInfo(self, handle: int, kind: int) -> int:
        return 1980 if kind == self.NVML_CLOCK_SM else 3201

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        return 41

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        return SimpleNamespace(gpu=97, memory=40)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        return SimpleNamespace(used=3 << 30, total=141 << 30)

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: int) -> int:
        if handle == 2:
            raise FakeNvmlError("not supported")
        return 0x4


def test_refs_use_physical_indices_when_nvml_sees_the_node() -> None:
    refs = telemetry.nvml_gpu_refs(FakeNvml(8), [4, 6])
    assert [(r.local_index, r.nvml_index, r.uuid) for r in refs] == [
        (0, 4, "GPU-0004"),
        (1, 6, "GPU-0006"),
    ]


def test_refs_renumber_when_a_cgroup_hides_other_gpus() -> None:
    # Slurm ConstrainDevices: NVML shows only the job's 2 GPUs, numbered 0 and 1 in bus order.
    refs = telemetry.nvml_gpu_refs(FakeNvml(2), [6, 4])
    assert [r.nvml_index for r in refs] == [1, 0]
    with pytest.raises(ValueError, match="NVML sees 2 GPUs"):
        telemetry.nvml_gpu_refs(FakeNvml(2), [4, 6, 7])


class FakeClock:
    """The sampler's monotonic clock and sleep: sleeping advances the clock, until ``end_s``."""

    def __init__(self, end_s: float) -> None:
        self.now_s = 0.0
        self.end_s = end_s
        self.waits_s: list[float] = []
        self.done = threading.Event()

    def monotonic_s(self) -> float:
        return self.now_s

    def wait_s(self, seconds: float) -> bool:
        self.waits_s.append(seconds)
        self.now_s += seconds
        if self.now_s >= self.end_s:
            self.done.set()
        return self.done.is_set()


def test_sampler_samples_on_its_schedule_and_writes_the_group(tmp_path: Path) -> None:
    nvml = FakeNvml()
    refs = telemetry.nvml_gpu_refs(nvml, [1, 2])
    clock = FakeClock(end_s=0.5)
    sampler = telemetry.TelemetrySampler(
        refs,
        50.0,
        telemetry.TelemetryReader(nvml),
        monotonic_s=clock.monotonic_s,
        wait_s=clock.wait_s,
    ).start()
    assert clock.done.wait(10), "the sampler did not reach the end of its schedule"
    sampler.stop()
    # 50 Hz for 0.5 s of the sampler's clock: ticks at 0, 20, ..., 480 ms, each reading both GPUs.
    assert sampler.samples == 2 * 25
    assert clock.waits_s == pytest.approx([0.02] * 25)
    cols = sampler.columns()
    assert list(cols["device"][:4]) == [0, 1, 0, 1]
    assert np.all(np.diff(cols["t_ns"]) >= 0)
    gpu0 = cols["device"] == 0
    assert np.allclose(cols["power_w"][gpu0], 350.001)
    assert np.isnan(cols["power_w"][~gpu0]).all()  # GPU 2 reports no power
    assert cols["throttle_known"][gpu0].all() and not cols["throttle_known"][~gpu0].any()
    assert set(cols["throttle_reasons"][gpu0]) == {4}
    assert cols["mem_used_mb"][0] == 3072.0 and cols["energy_j"][0] == 5000.0

    path = tmp_path / "rank.h5"
    with h5py.File(path, "w") as f:
        sampler.write(f)
    with h5py.File(path, "r") as f:
        back = telemetry.read_telemetry(f)
        assert back is not None
        assert f["telemetry"].attrs["hz"] == 50.0
        assert f["telemetry/power_w"].attrs["unit"] == "W"
        assert '"uuid": "GPU-0002"' in f["telemetry"].attrs["gpus_json"]
    assert set(back) == {"t_ns", "device", "throttle_known", *telemetry.FIELDS}
    assert np.array_equal(back["sm_clock_mhz"], cols["sm_clock_mhz"])


def test_sampler_skips_the_ticks_a_slow_read_missed() -> None:
    nvml = FakeNvml()
    clock = FakeClock(end_s=0.2)

    class Slow(telemetry.TelemetryReader):
        def read(self, handle: Any) -> telemetry.Reading:
            if clock.now_s == 0.0:
                clock.now_s = 0.07  # the first read stalls 3.5 periods
            return super().read(handle)

    refs = telemetry.nvml_gpu_refs(nvml, [0])
    sampler = telemetry.TelemetrySampler(
        refs, 50.0, Slow(nvml), monotonic_s=clock.monotonic_s, wait_s=clock.wait_s
    ).start()
    assert clock.done.wait(10), "the sampler did not reach the end of its schedule"
    sampler.stop()
    # Ticks at 0, then 0.09, 0.11, ..., 0.19: the missed ticks are not made up in a burst.
    assert sampler.samples == 7
    assert clock.waits_s == pytest.approx([0.02] * 7)


def test_sampler_survives_a_failing_reader(tmp_path: Path) -> None:
    tried = threading.Event()

    class Broken(telemetry.TelemetryReader):
        def read(self, handle: Any) -> telemetry.Reading:
            tried.set()
            raise RuntimeError("driver went away")

    refs = telemetry.nvml_gpu_refs(FakeNvml(), [0])
    sampler = telemetry.TelemetrySampler(refs, 100.0, Broken(FakeNvml())).start()
    assert tried.wait(10), "the sampler never read"
    sampler.stop()
    with h5py.File(tmp_path / "r.h5", "w") as f:
        sampler.write(f)
        assert f["telemetry"].attrs["error"] == "RuntimeError: driver went away"


def test_start_sampler_says_why_it_did_not_start() -> None:
    assert telemetry.start_sampler([0], 0) == (None, "telemetry_hz is 0")
    assert telemetry.start_sampler([], 10) == (None, "the rank has no GPUs")


def test_write_disabled_and_read_back(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "r.h5", "w") as f:
        telemetry.write_disabled(f, "NVML unavailable: no driver")
        assert telemetry.read_telemetry(f) is None
        assert f["telemetry"].attrs["disabled"] == "NVML unavailable: no driver"


def test_nan_helper() -> None:
    assert math.isnan(telemetry._num(None)) and telemetry._num(2000, 1e-3) == 2.0
