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

from hpcbench.errors import ConfigError, UsageError, closest, excerpt
from hpcbench.jsonfile import read_json, write_json_atomic

BACKENDS = ("cpu", "torch")
PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
BARRIERS = ("shm", "file")
# Validity rule sets (hpcbench.aggregate.validity.RULES): how the run's result is judged.
VALIDITY_RULES = ("default", "strict")
# The longest timed phase or wait a spec may ask for: 30 days (no batch job runs longer).
MAX_DURATION_S = 30 * 86400.0
# The model each backend runs when the user names none.
DEFAULT_MODELS = {"cpu": "mlp", "torch": "resnet50"}

# What a performance engineer runs on GPUs unless told otherwise (torch backend, ranks with
# GPUs): reduced precision (fp16: 1.07x bf16 and 5.2x fp32 for ResNet-50 on H200), NHWC
# activations, one CUDA-graph launch per batch, and a batch per model that keeps an H200 busy.
# Every one is overridden by its flag or by a base --spec file.
GPU_DEFAULTS: dict[str, Any] = {"precision": "fp16", "channels_last": True, "cuda_graph": True}
GPU_BATCH_SIZES = {
    "resnet50": 256,
    "resnet152": 256,
    "vgg16": 256,
    "alexnet": 1024,
    "inception_v3": 256,
    "mobilenet_v2": 512,
    "bert_base": 256,
}
_GPU_FLAGS = {"precision": "--precision", "channels_last": "--no-channels-last",
              "cuda_graph": "--no-cuda-graph", "batch_size": "--batch-size"}  # fmt: skip


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


@dataclass(frozen=True, slots=True)
class SpecChoices:
    """What a user chose for a :class:`RunSpec`; :meth:`resolve` fills the rest for a node.

    ``base`` is an earlier run's spec (``--spec FILE``) or None; ``changes`` maps RunSpec field
    names to the values the user set (a None value counts as not set). An unknown field is a
    :class:`ConfigError` naming the closest valid one, never silently dropped.

    >>> SpecChoices(changes={"batch_sise": 8})
    Traceback (most recent call last):
    ...
    hpcbench.errors.ConfigError: unknown setting 'batch_sise' (did you mean 'batch_size'?)
    """

    base: RunSpec | None = None
    changes: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [f.name for f in dataclasses.fields(RunSpec)]
        for key in self.changes:
            if key not in names:
                raise ConfigError(f"unknown setting {key!r}{closest(str(key), names)}")
        given = {k: v for k, v in self.changes.items() if v is not None}
        object.__setattr__(self, "changes", given)

    def resolve(
        self, default_backend: str | None = None, *, nodes: int = 1, on_gpus: bool = False
    ) -> RunSpec:
        """The spec: base (or defaults) with the changes; backend and model follow the node.

        ``default_backend`` applies when neither the changes nor the base spec fix a backend;
        the model then defaults to that backend's (:data:`DEFAULT_MODELS`). ``on_gpus`` (the
        plan gives ranks GPUs) makes :data:`GPU_DEFAULTS` and the model's
        :data:`GPU_BATCH_SIZES` the torch backend's defaults for what the changes leave out.
        On several nodes the shared-memory barrier, unless asked for explicitly, becomes the
        file barrier.
        """
        base, given = self.base, self.changes
        options = given.get("options", {})
        if not isinstance(options, Mapping):
            raise ConfigError(f"options: expected a mapping of backend options, got {options!r}")
        changes: dict[str, Any] = {}
        backend = given.get("backend")
        if backend is None:
            backend = base.backend if base is not None else (default_backend or "cpu")
        changes["backend"] = backend
        if "model" not in given and base is None:
            changes["model"] = DEFAULT_MODELS.get(backend, "mlp")
        if base is None and on_gpus and backend == "torch" and options.get("device") != "cpu":
            model = given.get("model") or changes["model"]
            changes.update(GPU_DEFAULTS)
            changes["batch_size"] = GPU_BATCH_SIZES.get(model, RunSpec().batch_size)
        changes.update(given)
        if "duration_s" in changes and "num_batches" in changes:
            raise ConfigError("give duration_s or num_batches, not both")
        if "duration_s" in changes:
            changes["num_batches"] = None
        elif "num_batches" in changes:
            changes["duration_s"] = None
        if "options" in changes:
            merged = dict(base.options) if base is not None else {}
            changes["options"] = {**merged, **changes["options"]}
        spec = (base or RunSpec()).replace(**changes)
        if nodes > 1 and spec.barrier == "shm":
            # A shared-memory barrier cannot span nodes; the file barrier lives in the run dir.
            if self.changes.get("barrier") == "shm":
                raise UsageError(
                    "--barrier shm cannot synchronise ranks on several nodes; use file"
                )
            spec = spec.replace(barrier="file")
        return spec


def describe_spec(spec: RunSpec) -> str:
    """The workload settings in a few words, for a run's header.

    >>> describe_spec(RunSpec())
    'backend cpu, model mlp, batch 64'
    >>> describe_spec(RunSpec(backend="torch", model="resnet50", precision="fp16", cuda_graph=True))
    'backend torch, model resnet50, batch 64, fp16, channels_last, CUDA graph'
    """
    words = [f"backend {spec.backend}", f"model {spec.model}", f"batch {spec.batch_size}"]
    if spec.backend == "torch":
        words.append(spec.precision)
        words.append("channels_last" if spec.channels_last else "NCHW")
        words += ["CUDA graph"] if spec.cuda_graph else []
        words += ["torch.compile"] if spec.compile else []
    return ", ".join(words)


def gpu_defaults_in_use(spec: RunSpec, choices: SpecChoices) -> list[str]:
    """The GPU defaults ``spec`` took because no choice set them, with the flag for each.

    >>> spec = RunSpec(backend="torch", model="resnet50", batch_size=256, precision="fp16",
    ...                cuda_graph=True)
    >>> gpu_defaults_in_use(spec, SpecChoices(changes={"precision": "bf16", "cuda_graph": True}))
    ['batch 256 (--batch-size)', 'channels_last (--no-channels-last)']
    """
    if spec.backend != "torch" or choices.base is not None:
        return []
    shown = {"precision": spec.precision, "channels_last": "channels_last",
             "cuda_graph": "CUDA graph", "batch_size": f"batch {spec.batch_size}"}  # fmt: skip
    wanted = {**GPU_DEFAULTS, "batch_size": GPU_BATCH_SIZES.get(spec.model)}
    return [
        f"{shown[key]} ({_GPU_FLAGS[key]})"
        for key in ("batch_size", "precision", "channels_last", "cuda_graph")
        if key not in choices.changes and getattr(spec, key) == wanted[key]
    ]


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(
            f"{name}: {value!r} is not one of {', '.join(choices)}{closest(str(value), choices)}"
        )
