"""The benchmark specification: what every rank runs, merged once from defaults, files and flags.

A :class:`RunSpec` is written to ``spec.json`` in the run directory and read back by every rank,
so a rank's behaviour depends on nothing but that file, the plan and its identity.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcbench.errors import ConfigError, closest, excerpt
from hpcbench.jsonfile import read_json, write_json_atomic

BACKENDS = ("cpu", "torch")
PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
BARRIERS = ("shm", "file")
# Validity rule sets (hpcbench.aggregate.validity.RULES): how the run's result is judged.
VALIDITY_RULES = ("default", "strict")
# The longest timed phase or wait a spec may ask for: 30 days (no batch job runs longer).
MAX_DURATION_S = 30 * 86400.0


@dataclass(frozen=True, slots=True)
class RunSpec:
    """Everything a rank needs to know about the workload and the measurement."""

    backend: str = "cpu"
    model: str = "mlp"
    batch_size: int = 64
    precision: str = "fp32"
    # Exactly one of duration_s / num_batches drives the timed phase.
    duration_s: float | None = 5.0
    num_batches: int | None = None
    # Keep timing, window after window of duration_s, until the throughput is steady (the
    # steady_state check passes), at most max_duration_s (default 10 × duration_s).
    until_stable: bool = False
    max_duration_s: float | None = None
    validity: str = "default"
    warmup_batches: int = 5
    prefetchers: int = 2
    queue_depth: int = 8
    barrier: str = "shm"
    barrier_timeout_s: float = 120.0
    strict_binding: bool = False
    # "synthetic" or a folder of shards written by ``hpcbench data make``.
    data: str = "synthetic"
    stage_data: bool = False
    telemetry_hz: float = 10.0
    channels_last: bool = True
    cuda_graph: bool = False
    compile: bool = False
    # Backend-specific knobs (e.g. the CPU backend's hidden size), kept as plain JSON values.
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_choice("backend", self.backend, BACKENDS)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("barrier", self.barrier, BARRIERS)
        _check_choice("validity", self.validity, VALIDITY_RULES)
        if self.batch_size < 1:
            raise ConfigError(f"batch_size: must be at least 1, got {self.batch_size}")
        if (self.duration_s is None) == (self.num_batches is None):
            raise ConfigError("give exactly one of duration_s and num_batches")
        if self.duration_s is not None:
            _check_seconds("duration_s", self.duration_s, MAX_DURATION_S)
        if self.num_batches is not None and self.num_batches < 1:
            raise ConfigError(f"num_batches: must be at least 1, got {self.num_batches}")
        if self.until_stable and self.duration_s is None:
            raise ConfigError("until_stable: needs duration_s (the window length), not num_batches")
        if self.max_duration_s is not None and (
            self.duration_s is None or self.max_duration_s < self.duration_s
        ):
            raise ConfigError(
                f"max_duration_s: must be at least duration_s ({self.duration_s}), "
                f"got {self.max_duration_s}"
            )
        if self.warmup_batches < 0:
            raise ConfigError(f"warmup_batches: must be 0 or more, got {self.warmup_batches}")
        if self.prefetchers < 1:
            raise ConfigError(f"prefetchers: must be at least 1, got {self.prefetchers}")
        if self.queue_depth < 1:
            raise ConfigError(f"queue_depth: must be at least 1, got {self.queue_depth}")
        if self.max_duration_s is not None:
            _check_seconds("max_duration_s", self.max_duration_s, MAX_DURATION_S)
        _check_seconds("barrier_timeout_s", self.barrier_timeout_s, MAX_DURATION_S)
        if not _is_number(self.telemetry_hz) or not 0 <= self.telemetry_hz <= 1000:
            raise ConfigError(
                f"telemetry_hz: must be 0 (off) to 1000, got {excerpt(self.telemetry_hz)}"
            )

    @property
    def stable_limit_s(self) -> float | None:
        """The longest timed phase ``until_stable`` may run (None when it is off)."""
        if not self.until_stable or self.duration_s is None:
            return None
        return self.max_duration_s if self.max_duration_s is not None else 10 * self.duration_s

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["options"] = dict(self.options)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "spec") -> RunSpec:
        names = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in names:
                raise ConfigError(f"{where}: unknown key {key!r}{closest(key, names)}")
        try:
            return cls(**dict(data))
        except TypeError as exc:
            raise ConfigError(f"{where}: {exc}") from exc

    def replace(self, **changes: Any) -> RunSpec:
        return dataclasses.replace(self, **changes)

    def write(self, path: Path) -> None:
        """Write ``spec.json`` atomically."""
        write_json_atomic(path, self.to_json())

    @classmethod
    def read(cls, path: Path) -> RunSpec:
        return cls.from_json(read_json(path, "spec file"), where=str(path))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_seconds(name: str, value: object, high: float) -> None:
    """A time in seconds: a finite number in (0, high]; NaN, inf and 1e300 reach here from
    the command line (click's FloatRange lets NaN through) and crash ranks later.

    >>> _check_seconds("duration_s", float("nan"), 86400)
    Traceback (most recent call last):
    ...
    hpcbench.errors.ConfigError: duration_s: must be a number of seconds in (0, 86400], got nan
    """
    if not _is_number(value) or not 0 < value <= high:  # type: ignore[operator]
        raise ConfigError(f"{name}: must be a number of seconds in (0, {high:g}], got {value!r}")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(
            f"{name}: {value!r} is not one of {', '.join(choices)}{closest(str(value), choices)}"
        )
