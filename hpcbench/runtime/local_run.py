"""What ``hpcbench run`` does, as a library: topology → plan → run directory → ranks → result."""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import click

from hpcbench.backends.registry import choose_backend
from hpcbench.backends.spec_check import check_spec
from hpcbench.cpulist import CpuListError, format_cpulist, parse_cpulist
from hpcbench.errors import ConfigError, HpcbenchError, RunError, UsageError
from hpcbench.follow import progress_phases
from hpcbench.launch import RunOutcome, follow
from hpcbench.plan.model import Plan
from hpcbench.plan.planner import PlanRequest, make_plan
from hpcbench.resources import install_hint
from hpcbench.runtime.launcher import LocalLaunch
from hpcbench.runtime.rundir import RunInfo, create_run_dir, site_record
from hpcbench.site import NodeType, SiteConfig
from hpcbench.spec import RunSpec, SpecChoices, describe_spec, gpu_defaults_in_use
from hpcbench.text import plural
from hpcbench.topology.model import Topology

# In a log (not a terminal), a progress line at least this often while no phase changes.
_LOG_PROGRESS_EVERY_S = 5.0


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
    # The GPU defaults the spec took because the user chose nothing there (for the header).
    gpu_defaults: tuple[str, ...] = ()

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


def plan_local(
    topology: Topology,
    request: PlanRequest,
    spec_choices: SpecChoices,
    *,
    site: SiteConfig | None = None,
    node_type: NodeType | None = None,
) -> LocalInputs:
    """Topology, plan and spec for a run on this host, with every check made before anything
    is written: the backend accepts the spec, and the plan fits this host.

    ``hpcbench run``, ``hpcbench sweep --local`` and ``explore`` share it, so they share its
    defaults: the default backend is torch on a node with GPUs when PyTorch is installed here,
    else cpu; one rank per socket, two on a one-socket machine. ``site`` and ``node_type`` name
    the site config the topology came from (recorded and copied into the run directory); the
    request should already carry the node type's reserved cores and data root.
    """
    request = default_rank_count(topology, request)
    plan = make_plan(topology, request)
    on_gpus = any(r.gpus for r in plan.ranks)
    spec = spec_choices.resolve(choose_backend(len(topology.gpus)), on_gpus=on_gpus)
    preflight(spec, plan)
    check_plan_fits_host(plan, os.sched_getaffinity(0), host_numa_nodes())
    keys = (
        {}
        if site is None or node_type is None
        else site_record(site.name, site.path, node_type.name)
    )
    defaults = gpu_defaults_in_use(spec, spec_choices) if on_gpus else []
    return LocalInputs(
        topology, plan, spec, None if site is None else site.path, keys, tuple(defaults)
    )


def run_local(
    *,
    topology: Topology,
    request: PlanRequest,
    spec: SpecChoices,
    out: Path | None,
    argv: Sequence[str],
    use_numactl: bool | None = None,
    quiet: bool = False,
    site: SiteConfig | None = None,
    node_type: NodeType | None = None,
) -> RunOutcome:
    """Plan (:func:`plan_local`) and run on this machine through the launch protocol
    (:class:`~hpcbench.runtime.launcher.LocalLaunch`); the aggregated outcome. Raises
    HpcbenchError on bad input, a failed rank or a run that cannot be aggregated."""
    local = plan_local(topology, request, spec, site=site, node_type=node_type)
    plan = local.plan
    tty = sys.stderr.isatty()
    progress = None if quiet else _progress_printer(tty)
    launch = LocalLaunch(
        plan,
        out,
        create=lambda: local.create_run_dir(out, argv),
        progress=progress,
        use_numactl=use_numactl,
    )
    prepared = launch.prepare()
    for warning in plan.warnings:
        click.echo(f"hpcbench: warning: {warning}", err=True)
    click.echo(
        f"hpcbench: {plural(plan.world_size, 'rank')}, {describe_spec(local.spec)}",
        err=True,
    )
    if local.gpu_defaults:
        click.echo(
            f"hpcbench: GPU defaults (flag to change): {', '.join(local.gpu_defaults)}", err=True
        )
    try:
        (outcome,) = follow(launch)
    except KeyboardInterrupt:
        click.echo(
            f"\nhpcbench: stopped every rank; unfinished rank files in {prepared.run_dirs[0]}",
            err=True,
        )
        raise
    except HpcbenchError:
        if progress is not None and tty:
            click.echo("", err=True)  # the error goes below the progress line, not over it
        raise
    if isinstance(outcome.error, RunError) and progress is not None and tty:
        click.echo("", err=True)  # a rank failed: its error goes below the progress line
    return outcome.raise_if_failed()


def preflight(spec: RunSpec, plan: Plan) -> None:
    """Reject a spec the ranks would reject, before any folder is made or rank started."""
    import importlib.util

    if spec.backend == "torch" and importlib.util.find_spec("torch") is None:
        raise ConfigError(
            "backend 'torch' needs PyTorch, which is not installed; install it with "
            f"{install_hint('torch')} or use --backend cpu"
        )
    check_spec(spec, plan)


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


def _progress_printer(tty: bool) -> Callable[[str, bool], None]:
    """Progress lines on stderr: redrawn in place on a terminal; in a log, a line at every
    change of phase, at most every 5 s otherwise, and always the last (with the true counts)."""
    last_phases, last_at = "", -math.inf

    def show(line: str, final: bool) -> None:
        nonlocal last_phases, last_at
        if tty:
            # Erase to the end of the line: the previous one may have been longer.
            click.echo("\r\x1b[K" + line[:200], err=True, nl=final)
            return
        now = time.monotonic()
        phases = progress_phases(line)
        if final or phases != last_phases or now - last_at >= _LOG_PROGRESS_EVERY_S:
            last_phases, last_at = phases, now
            click.echo(line, err=True)

    return show


def print_result(outcome: RunOutcome) -> None:
    """The aggregate (with any binding that differed from the plan), then the run directory."""
    from hpcbench.aggregate import format_summary

    assert outcome.summary is not None
    click.echo(format_summary(outcome.summary).rstrip("\n"))
    click.echo(f"run directory: {outcome.run_dir}")
