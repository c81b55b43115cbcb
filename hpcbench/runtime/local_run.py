"""What ``hpcbench run`` does, as a library: topology → plan → run directory → ranks → result."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import click

from hpcbench.backends.base import load_backend
from hpcbench.cpulist import CpuListError, format_cpulist, parse_cpulist
from hpcbench.errors import ConfigError, MetricsError, UsageError
from hpcbench.metrics import rank_file_name, read_rank_file
from hpcbench.plan.model import Plan
from hpcbench.plan.planner import PlanRequest, make_plan, plan_request_from_options
from hpcbench.runtime.launcher import LaunchResult, launch_local
from hpcbench.runtime.options import (
    choose_backend,
    describe_spec,
    gpu_defaults_in_use,
    spec_from_options,
)
from hpcbench.runtime.rundir import RunInfo, create_run_dir, site_record
from hpcbench.site import resolve_site_path
from hpcbench.spec import RunSpec
from hpcbench.topology.model import Topology
from hpcbench.topology.sources import topology_from_options


@dataclass(frozen=True, slots=True)
class RankThroughput:
    """One rank's own throughput, read from its rank file."""

    rank: int
    images: int
    seconds: float
    devices: int

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True, slots=True)
class LocalRunOutcome:
    """A finished local run."""

    run_dir: Path
    plan: Plan
    spec: RunSpec
    launch: LaunchResult
    ranks: tuple[RankThroughput, ...]
    summary: dict[str, Any] | None
    summary_text: str | None


def default_rank_count(topology: Topology, request: PlanRequest) -> PlanRequest:
    """The embedded default: one rank per socket, two on a one-socket machine.

    Only when the user left ``--ranks auto`` by socket with no explicit layout, and the socket
    can feed two ranks (at least two cores, and no GPUs or at least two).
    """
    if request.ranks != "auto" or request.granularity != "socket":
        return request
    if request.cpus is not None or request.gpus is not None or len(topology.packages) != 1:
        return request
    free_cores = [c for c in topology.cores if not set(c.cpus) & set(request.reserved_cores)]
    if len(free_cores) < 2 or len(topology.gpus) == 1:
        return request
    return replace(request, ranks=2)


@dataclass(frozen=True, slots=True)
class LocalInputs:
    """A run on this host, checked: its topology, plan and spec, and where its site came from."""

    topology: Topology
    plan: Plan
    spec: RunSpec
    site_config: Path | None = None
    site_keys: Mapping[str, str] = field(default_factory=dict)

    def create_run_dir(self, out: Path | None, argv: Sequence[str]) -> tuple[Path, RunInfo]:
        """The run directory of this run (see :func:`~hpcbench.runtime.rundir.create_run_dir`)."""
        return create_run_dir(
            out,
            plan=self.plan,
            spec=self.spec,
            argv=argv,
            topology=self.topology,
            extra=dict(self.site_keys),
            site_config=self.site_config,
        )


def plan_local(**kwargs: Any) -> LocalInputs:
    """Topology, plan and spec for a run on this host, with every check made before anything
    is written: the backend accepts the spec, and the plan fits this host.

    ``hpcbench run`` and ``hpcbench sweep --local`` share it, so they share its defaults: no
    topology source probes this host; the default backend is torch on a node with GPUs when
    PyTorch is installed here, else cpu; one rank per socket, two on a one-socket machine.
    """
    topology, node_type = topology_from_options(
        kwargs.get("sysfs_root"), kwargs.get("from_hwloc"), kwargs.get("site"),
        kwargs.get("partition"),
    )  # fmt: skip
    request = plan_request_from_options(node_type=node_type, **kwargs)
    request = default_rank_count(topology, request)
    plan = make_plan(topology, request)
    on_gpus = any(r.gpus for r in plan.ranks)
    spec = spec_from_options(
        default_backend=choose_backend(len(topology.gpus)), on_gpus=on_gpus, **kwargs
    )
    preflight(spec, plan)
    check_plan_fits_host(plan, os.sched_getaffinity(0), host_numa_nodes())
    site = kwargs.get("site")
    return LocalInputs(
        topology,
        plan,
        spec,
        None if site is None else resolve_site_path(site),
        _site_extra(kwargs),
    )


def run_local(
    *,
    out: Path | None,
    argv: Sequence[str],
    use_numactl: bool | None = None,
    quiet: bool = False,
    **kwargs: Any,
) -> LocalRunOutcome:
    """Plan and run on this machine; raises HpcbenchError on bad input or a failed rank."""
    local = plan_local(**kwargs)
    plan, spec = local.plan, local.spec
    run_dir, info = local.create_run_dir(out, argv)
    for warning in plan.warnings:
        click.echo(f"hpcbench: warning: {warning}", err=True)
    click.echo(
        f"hpcbench: {plan.world_size} ranks, {describe_spec(spec)}, run directory {run_dir}",
        err=True,
    )
    on_gpus = any(r.gpus for r in plan.ranks)
    defaults = gpu_defaults_in_use(spec, **kwargs) if on_gpus else []
    if defaults:
        click.echo(f"hpcbench: GPU defaults (flag to change): {', '.join(defaults)}", err=True)
    progress = None if quiet else _progress_printer()
    try:
        launch = launch_local(run_dir, plan, info, progress=progress, use_numactl=use_numactl)
    except KeyboardInterrupt:
        click.echo(f"\nhpcbench: stopped every rank; unfinished rank files in {run_dir}", err=True)
        raise
    if progress is not None and sys.stderr.isatty():
        click.echo("", err=True)
    ranks = tuple(rank_throughput(run_dir, r.rank) for r in plan.ranks)
    summary, text = _aggregate(run_dir)
    return LocalRunOutcome(run_dir, plan, spec, launch, ranks, summary, text)


def _site_extra(kwargs: Mapping[str, Any]) -> dict[str, str]:
    """run.json's site keys when the topology came from ``--site`` (the site's name is its id)."""
    if kwargs.get("site") is None:
        return {}
    from hpcbench.site import load_site

    site = load_site(kwargs["site"])
    return site_record(site.name, site.path, site.node_type(kwargs.get("partition")).name)


def preflight(spec: RunSpec, plan: Plan) -> None:
    """Reject a spec the ranks would reject, before any folder is made or rank started."""
    import importlib.util

    if spec.backend == "torch" and importlib.util.find_spec("torch") is None:
        raise ConfigError(
            "backend 'torch' needs PyTorch, which is not installed; install it with "
            "pip install 'hpcbench[torch]' or use --backend cpu"
        )
    if spec.backend == "torch":
        from hpcbench.backends.torch_models import TorchSettings

        TorchSettings.from_spec(spec)  # the model's name and the options, without import torch
    if spec.backend == "cpu":
        backend = load_backend("cpu")
        for placement in plan.ranks:
            backend.devices(placement, spec)


def host_numa_nodes(sysfs_root: Path = Path("/")) -> set[int]:
    """The NUMA nodes this host has online (node 0 alone on a kernel without NUMA)."""
    try:
        text = (sysfs_root / "sys/devices/system/node/online").read_text()
        return set(parse_cpulist(text))
    except (OSError, CpuListError):
        return {0}


def check_plan_fits_host(
    plan: Plan, allowed_cpus: Iterable[int], numa_nodes: Iterable[int]
) -> None:
    """Refuse, before any rank starts, a plan made for another node than this one.

    A plan read from a site config describes that site's nodes; run here, numactl would fail
    with its usage text and sched_setaffinity with EINVAL, hiding the cause.

    >>> from hpcbench.plan.model import RankPlacement
    >>> p = Plan((RankPlacement(0, 0, 0, 0, 0, (0,), (), (0,)),
    ...           RankPlacement(1, 0, 1, 1, 1, (1,), (), (1,))), (), "site.yaml")
    >>> check_plan_fits_host(p, {0, 1}, {0})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    hpcbench.errors.UsageError: rank 1: the plan binds its memory to NUMA node 1, which this ...
    """
    allowed = set(allowed_cpus)
    nodes = set(numa_nodes)
    advice = (
        f"the plan comes from {plan.source}: plan for this host (no --site) or run it on such "
        f"a node"
    )
    for placement in plan.ranks:
        missing = sorted(set(placement.cpus) - allowed)
        if missing:
            raise UsageError(
                f"rank {placement.rank}: the plan pins it to CPUs {format_cpulist(missing)}, which "
                f"this process may not use (allowed here: {format_cpulist(allowed)}); {advice}"
            )
        absent = sorted(set(placement.mem_nodes) - nodes)
        if absent:
            raise UsageError(
                f"rank {placement.rank}: the plan binds its memory to NUMA node "
                f"{format_cpulist(absent)}, which this host does not have (NUMA nodes here: "
                f"{format_cpulist(nodes)}); {advice}"
            )


def rank_throughput(run_dir: Path, rank: int) -> RankThroughput:
    """Images and timed-phase length of one rank (its own throughput)."""
    data = read_rank_file(Path(run_dir) / rank_file_name(rank))
    if data.t_begin_ns is None or data.t_finish_ns is None:
        raise MetricsError(f"{data.path}: the timed phase has no bounds")
    return RankThroughput(
        rank=rank,
        images=int(data.timed.images.sum()),
        seconds=(data.t_finish_ns - data.t_begin_ns) / 1e9,
        devices=int(data.attrs.get("num_devices", 1)),
    )


def _aggregate(run_dir: Path) -> tuple[dict[str, Any] | None, str | None]:
    try:
        from hpcbench.aggregate import aggregate_run, format_summary
    except ImportError:  # pragma: no cover - the aggregation package ships with hpcbench
        return None, None
    summary = aggregate_run(run_dir)
    return summary, format_summary(summary)


def _progress_printer() -> Any:
    tty = sys.stderr.isatty()
    state = {"printed": 0.0}

    def show(line: str) -> None:
        if tty:
            click.echo("\r" + line[:200], err=True, nl=False)
            return
        # Not a terminal (a log file): one line every 5 s is enough.
        import time

        now = time.monotonic()
        if now - state["printed"] >= 5.0:
            state["printed"] = now
            click.echo(line, err=True)

    return show


def print_result(outcome: LocalRunOutcome) -> None:
    """Per-rank throughput, the aggregate summary when available, and the run directory."""
    click.echo(f"run directory: {outcome.run_dir}")
    total = 0.0
    for r in outcome.ranks:
        total += r.images_per_s
        click.echo(
            f"rank {r.rank}: {r.images} images in {r.seconds:.3f} s = "
            f"{r.images_per_s:,.1f} images/s ({r.devices} device{'s' if r.devices != 1 else ''})"
        )
    click.echo(f"sum of per-rank throughput: {total:,.1f} images/s")
    if outcome.summary_text:
        click.echo(outcome.summary_text.rstrip("\n"))
