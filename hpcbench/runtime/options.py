"""The benchmark-spec flags shared by ``run``, ``render``, ``submit`` and ``sweep``.

``@spec_options`` adds the flags; ``spec_from_options(**kwargs)`` turns the parsed values into
one :class:`~hpcbench.spec.RunSpec`. Flags left out keep the value of ``--spec FILE`` when given,
else the RunSpec default, so a command can pass all its keyword arguments (plan and topology
flags included: unrelated keys are ignored).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from hpcbench.errors import ConfigError, UsageError
from hpcbench.spec import BACKENDS, BARRIERS, PRECISIONS, VALIDITY_RULES, RunSpec

F = TypeVar("F", bound=Callable[..., Any])

# The model each backend runs when --model is not given.
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

# click parameter name -> RunSpec field, for the flags that map one to one.
_FIELDS = {
    "model": "model",
    "batch_size": "batch_size",
    "precision": "precision",
    "warmup_batches": "warmup_batches",
    "prefetchers": "prefetchers",
    "queue_depth": "queue_depth",
    "barrier": "barrier",
    "barrier_timeout_s": "barrier_timeout_s",
    "strict_binding": "strict_binding",
    "data": "data",
    "stage_data": "stage_data",
    "telemetry_hz": "telemetry_hz",
    "channels_last": "channels_last",
    "cuda_graph": "cuda_graph",
    "compile_model": "compile",
    "until_stable": "until_stable",
    "max_duration_s": "max_duration_s",
    "validity": "validity",
}


def spec_options(func: F) -> F:
    """Add the benchmark-spec flags to a click command (values default to None = not given)."""
    options = [
        click.option("--spec", "spec_file", type=click.Path(dir_okay=False, path_type=Path),
                     help="Base spec (a spec.json from an earlier run); flags override it."),
        click.option("--backend", type=click.Choice(BACKENDS),
                     help="Inference backend [default: torch on a node with GPUs, else cpu; "
                     "run: cpu when PyTorch is not installed]."),
        click.option("--model", help="Model name [default: mlp (cpu), resnet50 (torch)]."),
        click.option("--batch-size", type=click.IntRange(min=1), help="Batch size per device."),
        click.option("--precision", type=click.Choice(PRECISIONS), help="Numeric precision."),
        click.option("--duration-s", type=click.FloatRange(min=0, min_open=True),
                     help="Timed phase length, shared by all ranks [default: 5]."),
        click.option("--num-batches", type=click.IntRange(min=1),
                     help="Timed phase as a batch count per device (instead of --duration-s)."),
        click.option("--until-stable/--no-until-stable", default=None,
                     help="Keep timing in windows of --duration-s until the throughput is "
                          "steady (3 windows within 10 %), at most --max-duration-s."),
        click.option("--max-duration-s", type=click.FloatRange(min=0, min_open=True),
                     help="Longest timed phase with --until-stable [default: 10 × duration]."),
        click.option("--validity", type=click.Choice(VALIDITY_RULES),
                     help="Rules the result is judged by: default, or strict (MLPerf Offline: "
                          "≥ 600 s, ≥ 24 576 samples) [default: default]."),
        click.option("--warmup-batches", type=click.IntRange(min=0),
                     help="Untimed batches per device before the start barrier."),
        click.option("--prefetchers", type=click.IntRange(min=1),
                     help="Threads producing host batches per rank."),
        click.option("--queue-depth", type=click.IntRange(min=1),
                     help="Host batches queued ahead per rank."),
        click.option("--barrier", type=click.Choice(BARRIERS),
                     help="Rank barrier: shm (one node) or file (shared run directory)."),
        click.option("--barrier-timeout-s", type=click.FloatRange(min=0, min_open=True),
                     help="Give up when a rank has not arrived at a barrier after this long."),
        click.option("--strict-binding/--no-strict-binding", default=None,
                     help="Fail (not warn) when a rank's binding differs from the plan."),
        click.option("--data", help="'synthetic' or a folder of data shards."),
        click.option("--stage-data/--no-stage-data", default=None,
                     help="Copy each rank's data shard into its NUMA node's memory first."),
        click.option("--telemetry-hz", type=click.FloatRange(min=0),
                     help="Device telemetry samples per second (0: off)."),
        click.option("--channels-last/--no-channels-last", default=None,
                     help="torch: NHWC memory format."),
        click.option("--cuda-graph/--no-cuda-graph", default=None,
                     help="torch: capture a CUDA graph."),
        click.option("--compile/--no-compile", "compile_model", default=None,
                     help="torch: torch.compile the model."),
        click.option("--option", "backend_options", multiple=True, metavar="KEY=VALUE",
                     help="Backend option (repeatable), e.g. --option hidden=2048."),
    ]  # fmt: skip
    for option in reversed(options):
        func = option(func)
    return func


def parse_backend_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as JSON when it parses (numbers, true), else a string.

    >>> parse_backend_option("hidden=2048")
    ('hidden', 2048)
    >>> parse_backend_option("act=relu")
    ('act', 'relu')
    """
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"--option: expected KEY=VALUE, got {text!r}")
    try:
        parsed: Any = json.loads(value)
    except ValueError:
        parsed = value
    return key.strip(), parsed


def spec_from_options(
    *, default_backend: str | None = None, on_gpus: bool = False, **kwargs: Any
) -> RunSpec:
    """Build the RunSpec from ``@spec_options`` values; keys of other decorators are ignored.

    ``default_backend`` is used when ``--backend`` was not given and the base spec does not fix
    one (commands pass :func:`choose_backend` of their topology); otherwise "cpu".
    ``on_gpus`` (the plan gives ranks GPUs) makes :data:`GPU_DEFAULTS` and the model's
    :data:`GPU_BATCH_SIZES` the torch backend's defaults for what the flags leave out.
    """
    spec_file = kwargs.get("spec_file")
    base = RunSpec.read(Path(spec_file)) if spec_file else None
    changes: dict[str, Any] = {}
    backend = kwargs.get("backend")
    if backend is None:
        backend = base.backend if base is not None else (default_backend or "cpu")
    changes["backend"] = backend
    if kwargs.get("model") is None and base is None:
        changes["model"] = DEFAULT_MODELS.get(backend, "mlp")
    backend_options = kwargs.get("backend_options") or ()
    options = dict(parse_backend_option(text) for text in backend_options)
    if base is None and on_gpus and backend == "torch" and options.get("device") != "cpu":
        model = kwargs.get("model") or changes["model"]
        changes.update(GPU_DEFAULTS)
        changes["batch_size"] = GPU_BATCH_SIZES.get(model, RunSpec().batch_size)
    for key, field_name in _FIELDS.items():
        if kwargs.get(key) is not None:
            changes[field_name] = kwargs[key]
    duration_s, num_batches = kwargs.get("duration_s"), kwargs.get("num_batches")
    if duration_s is not None and num_batches is not None:
        raise UsageError("give --duration-s or --num-batches, not both")
    if duration_s is not None:
        changes.update(duration_s=duration_s, num_batches=None)
    if num_batches is not None:
        changes.update(num_batches=num_batches, duration_s=None)
    if backend_options:
        merged = dict(base.options) if base is not None else {}
        merged.update(options)
        changes["options"] = merged
    try:
        return (base or RunSpec()).replace(**changes)
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc


def node_backend(num_gpus: int) -> str:
    """The backend a node type runs by default: "torch" when it has GPUs, else "cpu".

    A function of the node being planned only, so ``render`` gives the same script on a login
    node with or without PyTorch.

    >>> node_backend(8), node_backend(0)
    ('torch', 'cpu')
    """
    return "torch" if num_gpus > 0 else "cpu"


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


def gpu_defaults_in_use(spec: RunSpec, **kwargs: Any) -> list[str]:
    """The GPU defaults ``spec`` took because no flag set them, with the flag that overrides each.

    >>> spec = RunSpec(backend="torch", model="resnet50", batch_size=256, precision="fp16",
    ...                cuda_graph=True)
    >>> gpu_defaults_in_use(spec, batch_size=None, precision="bf16", cuda_graph=True)
    ['batch 256 (--batch-size)', 'channels_last (--no-channels-last)']
    """
    if spec.backend != "torch" or kwargs.get("spec_file"):
        return []
    shown = {"precision": spec.precision, "channels_last": "channels_last",
             "cuda_graph": "CUDA graph", "batch_size": f"batch {spec.batch_size}"}  # fmt: skip
    wanted = {**GPU_DEFAULTS, "batch_size": GPU_BATCH_SIZES.get(spec.model)}
    return [
        f"{shown[key]} ({_GPU_FLAGS[key]})"
        for key in ("batch_size", "precision", "channels_last", "cuda_graph")
        if kwargs.get(key) is None and getattr(spec, key) == wanted[key]
    ]


def choose_backend(num_gpus: int) -> str:
    """For a run on this host: :func:`node_backend`, but "cpu" when PyTorch is not importable."""
    import importlib.util

    backend = node_backend(num_gpus)
    if backend == "torch" and importlib.util.find_spec("torch") is None:
        return "cpu"
    return backend
