"""The telemetry sampler against a fake NVML module (CI has no driver), and its HDF5 group."""

from __future__ import annotations

import math
import time
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


def test_sampler_samples_at_its_rate_and_writes_the_group(tmp_path: Path) -> None:
    nvml = FakeNvml()
    refs = telemetry.nvml_gpu_refs(nvml, [1, 2])
    sampler = telemetry.TelemetrySampler(refs, 50.0, telemetry.TelemetryReader(nvml)).start()
    time.sleep(0.5)
    sampler.stop()
    per_gpu = sampler.samples / 2
    assert 15 <= per_gpu <= 30  # 50 Hz for 0.5 s, with start-up slack on a busy CI host
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


def test_sampler_survives_a_failing_reader(tmp_path: Path) -> None:
    class Broken(telemetry.TelemetryReader):
        def read(self, handle: Any) -> telemetry.Reading:
            raise RuntimeError("driver went away")

    refs = telemetry.nvml_gpu_refs(FakeNvml(), [0])
    sampler = telemetry.TelemetrySampler(refs, 100.0, Broken(FakeNvml())).start()
    time.sleep(0.05)
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
