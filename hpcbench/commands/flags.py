"""The command-line flags that several commands share, and how they become library values.

Each decorator adds one group of flags to a click command and hands the command one typed value
instead of the group's keyword arguments: ``@topology_source_options`` a
:class:`~hpcbench.topology_source.TopologySource` (``source``), ``@plan_request_options`` a
:class:`PlacementFlags` (``placement``), ``@spec_options`` a :class:`SpecFlags` (``spec_flags``),
``@site_options``/``@job_options`` a :class:`~hpcbench.slurm.inputs.JobSettings` (``job``). The
library never sees a flag: it takes ``PlanRequest``, ``SpecChoices``/``RunSpec`` and
``JobSettings``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from hpcbench.cpulist import is_decimal
from hpcbench.errors import UsageError
from hpcbench.plan.planner import NodeTypeLike, PlanRequest
from hpcbench.slurm.inputs import JobSettings
from hpcbench.spec import BACKENDS, BARRIERS, PRECISIONS, VALIDITY_RULES, RunSpec, SpecChoices
from hpcbench.topology_source import TopologySource

F = TypeVar("F", bound=Callable[..., Any])


def _flag_group(
    options: Sequence[Callable[[Any], Any]], name: str, build: Callable[[dict[str, Any]], Any]
) -> Callable[[F], F]:
    """A decorator adding ``options`` and passing ``build(their values)`` as ``name``.

    The flags keep their order in ``--help``; the values the options parse are taken out of the
    command's keyword arguments, so the command sees only the built value.
    """
    keys = [_param_name(option) for option in options]

    def decorator(func: F) -> F:
        @functools.wraps(func)
        def command(*args: Any, **kwargs: Any) -> Any:
            values = {key: kwargs.pop(key) for key in keys}
            return func(*args, **kwargs, **{name: build(values)})

        wrapped: Any = command
        for option in reversed(options):
            wrapped = option(wrapped)
        return wrapped

    return decorator


def _param_name(option: Callable[[Any], Any]) -> str:
    """The keyword name a click.option decorator gives its value (e.g. ``spec_file``)."""

    def probe() -> None: ...

    option(probe)
    params: list[click.Parameter] = probe.__click_params__  # type: ignore[attr-defined]
    name = params[-1].name
    assert name is not None  # every option here has a name
    return name


# ------------------------------------------------------------------------------ topology source
topology_source_options = _flag_group(
    [
        click.option(
            "--sysfs-root",
            metavar="DIR",
            default=None,
            help="Read the topology from a sysfs snapshot rooted at DIR (DIR/sys/...).",
        ),
        click.option(
            "--from-hwloc",
            metavar="FILE",
            default=None,
            help="Read the topology from an hwloc XML file (lstopo --of xml).",
        ),
        click.option(
            "--site",
            metavar="FILE",
            default=None,
            help="Take the topology from a site config (a YAML path or a shipped config's name).",
        ),
        click.option(
            "--partition",
            metavar="NAME",
            default=None,
            help="Node type or Slurm partition of the site config (default: its only/default one).",
        ),
    ],
    "source",
    lambda v: TopologySource(v["sysfs_root"], v["from_hwloc"], v["site"], v["partition"]),
)
"""Add ``--sysfs-root``, ``--from-hwloc``, ``--site`` and ``--partition``; pass ``source``."""


# ------------------------------------------------------------------------------ placement
class _RanksType(click.ParamType):
    name = "N|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int) or value == "auto":
            return value
        text = str(value).strip().lower()
        if text == "auto":
            return "auto"
        if is_decimal(text) and int(text) >= 1:
            return int(text)
        self.fail(f"{value!r} is not a positive number or 'auto'", param, ctx)


class _GpusPerRankType(click.ParamType):
    name = "G|all"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is None or isinstance(value, int):
            return value
        text = str(value).strip().lower()
        if text == "all":
            return None
        if is_decimal(text):
            return int(text)
        self.fail(f"{value!r} is not a number of GPUs or 'all'", param, ctx)


@dataclass(frozen=True, slots=True)
class PlacementFlags:
    """The placement flags as given; :meth:`request` makes the :class:`PlanRequest`."""

    ranks: int | str = "auto"
    gpus_per_rank: int | None = None
    cores_per_rank: int | None = None
    hwthreads: bool = False
    numa: bool = False
    gpus: str | None = None
    cpus: str | None = None
    nodes: int = 1
    accept_warnings: bool = False

    def request(
        self, node_type: NodeTypeLike | None = None, *, data_root: str | None = None
    ) -> PlanRequest:
        """The plan request; a site's ``node_type`` supplies reserved cores and data root.

        >>> PlacementFlags(ranks="4", gpus_per_rank=1, numa=True).request()
        ... # doctest: +ELLIPSIS
        PlanRequest(ranks=4, gpus_per_rank=1, cores_per_rank=None, ..., granularity='numa', ...)
        """
        ranks = self.ranks
        if isinstance(ranks, str) and is_decimal(ranks.strip()):
            ranks = int(ranks)
        request = PlanRequest(
            ranks=ranks,  # type: ignore[arg-type]
            gpus_per_rank=self.gpus_per_rank,
            cores_per_rank=self.cores_per_rank,
            use_hwthreads=self.hwthreads,
            granularity="numa" if self.numa else "socket",
            gpus=self.gpus,
            cpus=self.cpus,
            nodes=self.nodes,
            accept_warnings=self.accept_warnings,
            data_root=data_root,
        )
        return request.with_node_type(node_type)


plan_request_options = _flag_group(
    [
        click.option(
            "--ranks",
            type=_RanksType(),
            default="auto",
            show_default=True,
            help="Ranks per node: a number, or 'auto' (one per socket; per NUMA node with --numa).",
        ),
        click.option(
            "--gpus-per-rank",
            type=_GpusPerRankType(),
            default=None,
            help="GPUs per rank, or 'all' (default: an equal share of the rank's local GPUs).",
        ),
        click.option(
            "--cores-per-rank",
            type=click.IntRange(min=1),
            default=None,
            help="Physical cores per rank (default: an equal share of the domain's free cores).",
        ),
        click.option(
            "--hwthreads",
            is_flag=True,
            help="Pin to every hardware thread of the rank's cores (default: one per core).",
        ),
        click.option(
            "--numa",
            is_flag=True,
            help="Place by NUMA node instead of by socket (e.g. AMD NPS4 nodes).",
        ),
        click.option(
            "--gpus", default=None, help="Explicit GPU layout, one item per rank: '0,2;4,6'."
        ),
        click.option(
            "--cpus", default=None, help="Explicit CPU layout, one item per rank: '0-17;18-35'."
        ),
        click.option(
            "--nodes",
            type=click.IntRange(min=1),
            default=1,
            show_default=True,
            help="Nodes; every node gets the same layout, ranks numbered node-major.",
        ),
        click.option(
            "--accept-warnings",
            is_flag=True,
            help="Run a layout that breaks a placement rule; the plan records the warnings.",
        ),
    ],
    "placement",
    lambda v: PlacementFlags(**v),
)
"""The placement flags shared by plan/run/render/submit; the command gets ``placement``."""


# ------------------------------------------------------------------------------ benchmark spec
# flag value name -> RunSpec field, for the flags that map one to one.
_SPEC_FIELDS = {
    "backend": "backend",
    "model": "model",
    "batch_size": "batch_size",
    "precision": "precision",
    "duration_s": "duration_s",
    "num_batches": "num_batches",
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
    "compile": "compile",
    "until_stable": "until_stable",
    "max_duration_s": "max_duration_s",
    "validity": "validity",
}


@dataclass(frozen=True, slots=True)
class SpecFlags:
    """The benchmark-spec flags as given (None: not given); :meth:`choices` reads them."""

    spec_file: Path | None = None
    values: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    backend_options: tuple[str, ...] = ()

    def choices(self) -> SpecChoices:
        """The user's choices: the ``--spec`` file as the base, the flags as changes."""
        base = RunSpec.read(Path(self.spec_file)) if self.spec_file else None
        if self.values.get("duration_s") is not None and self.values.get("num_batches") is not None:
            raise UsageError("give --duration-s or --num-batches, not both")
        changes = {_SPEC_FIELDS[k]: v for k, v in self.values.items() if v is not None}
        if self.backend_options:
            changes["options"] = dict(parse_backend_option(t) for t in self.backend_options)
        return SpecChoices(base=base, changes=changes)


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


def _spec_flags(values: dict[str, Any]) -> SpecFlags:
    spec_file = values.pop("spec_file")
    backend_options = tuple(values.pop("backend_options") or ())
    return SpecFlags(spec_file=spec_file, values=values, backend_options=backend_options)


spec_options = _flag_group(
    [
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
        click.option("--compile/--no-compile", "compile", default=None,
                     help="torch: torch.compile the model."),
        click.option("--option", "backend_options", multiple=True, metavar="KEY=VALUE",
                     help="Backend option (repeatable), e.g. --option hidden=2048."),
    ],
    "spec_flags",
    _spec_flags,
)  # fmt: skip
"""The benchmark-spec flags (None: not given); the command gets ``spec_flags``."""


# ------------------------------------------------------------------------------ Slurm jobs
_SITE_OPTIONS = [
    click.option(
        "--site",
        "site_path",
        metavar="FILE",
        required=True,
        help="Site config (a YAML path or a shipped config's name) describing the nodes.",
    ),
    click.option(
        "--partition",
        metavar="NAME",
        default=None,
        help="Node type or Slurm partition of the site config (default: its only/default one).",
    ),
]
_JOB_OPTIONS = [
    click.option("--job-name", default=None, help="Slurm job name [default: hpcbench-MODEL]."),
    click.option(
        "--python",
        default=None,
        help="Python interpreter on the compute nodes [default: this one, sys.executable].",
    ),
    click.option(
        "--time-min",
        "time_limit_min",
        type=click.IntRange(min=1),
        default=None,
        help="Job time limit in minutes [default: the site's time_limit_min].",
    ),
]

job_options = _flag_group(
    [*_SITE_OPTIONS, *_JOB_OPTIONS],
    "job",
    lambda v: JobSettings(
        site=v["site_path"],
        partition=v["partition"],
        job_name=v["job_name"],
        python=v["python"],
        time_limit_min=v["time_limit_min"],
    ),
)
"""``--site`` (required: rendering never probes), ``--partition`` and the job-level flags
(name, interpreter on the compute nodes, time limit); the command gets ``job``."""


def all_job_options(func: F) -> F:
    """Site, job, placement and spec flags, in that order in ``--help``."""
    return job_options(plan_request_options(spec_options(func)))


def wait_options(func: F) -> F:
    """``--poll-s`` and ``--wait-timeout-s``: how ``submit`` and ``sweep`` follow their jobs."""
    func = click.option(
        "--wait-timeout-s",
        type=click.FloatRange(min=1),
        default=None,
        help="Stop waiting after this long (the job keeps running; run again or aggregate "
        "later) [default: submit: the time limit + 10 min, else 24 h; sweep: 24 h].",
    )(func)
    return click.option(
        "--poll-s",
        type=click.FloatRange(min=0.1),
        default=1.0,
        show_default=True,
        help="Seconds between state checks while waiting.",
    )(func)
