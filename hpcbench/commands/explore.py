"""``hpcbench explore``: measure every sensible layout of this node, R times, and say which wins."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from hpcbench.commands.flags import (
    SpecFlags,
    spec_options,
    topology_source_options,
    wait_options,
)
from hpcbench.resources import install_hint
from hpcbench.text import plural
from hpcbench.topology_source import TopologySource

if TYPE_CHECKING:
    from hpcbench.explore import ExploreOutcome, SlurmChoice
    from hpcbench.explore.verdict import Exploration
    from hpcbench.plan.candidates import CandidateSet
    from hpcbench.site import NodeType

# Flags of explore itself; every other flag is a run flag that each point shares.
_EXPLORE_ONLY = frozenset(
    {
        "repeats", "layouts", "slurm", "nodelist", "python", "time_limit_min", "out",
        "archive_dir", "use_numactl", "poll_s", "wait_timeout_s", "dry_run", "hwthreads",
        "accept_warnings",
    }
)  # fmt: skip
_TOPOLOGY = ("sysfs_root", "from_hwloc", "site", "partition")


def _given_flags(ctx: click.Context, names: list[str]) -> list[str]:
    """The command-line spelling of the named parameters the user gave, shell-quoted."""
    flags: list[str] = []
    for param in ctx.command.params:
        name = param.name
        if name not in names or not isinstance(param, click.Option):
            continue
        if ctx.get_parameter_source(name) not in (
            ParameterSource.COMMANDLINE,
            ParameterSource.ENVIRONMENT,
        ):
            continue
        value = ctx.params[name]
        if param.is_flag:
            if value:
                flags.append(param.opts[0])
            elif param.secondary_opts:
                flags.append(param.secondary_opts[0])
            continue
        values = value if param.multiple else (value,)
        for item in values:
            if item is not None:
                flags += [param.opts[0], shlex.quote(str(item))]
    return flags


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


@click.command("explore")
@topology_source_options
@spec_options
@click.option(
    "--repeats",
    type=click.IntRange(min=2),
    default=3,
    show_default=True,
    help="Runs per candidate (at least 2: an interval needs two).",
)
@click.option(
    "--layouts",
    multiple=True,
    metavar="ITEMS",
    help="Add a layout in the seed's syntax ('0,1;2,3': GPUs per rank; CPUs per rank on a node "
    "without GPUs) or remove a candidate with '-LABEL' (e.g. --layouts=-8x1). Repeatable; "
    "items may also be separated by spaces.",
)
@click.option(
    "--hwthreads", is_flag=True, help="Pin every rank to all hardware threads of its cores."
)
@click.option(
    "--accept-warnings", is_flag=True, help="Allow given layouts that break a placement rule."
)
@click.option(
    "--slurm",
    is_flag=True,
    help="Run the points as one Slurm job array on one node, one at a time (needs --site).",
)
@click.option(
    "--nodelist",
    metavar="NODE",
    default=None,
    help="--slurm: the node every run uses [default: an idle node of the partition].",
)
@click.option(
    "--python", default=None, help="--slurm: Python on the compute node [default: this one]."
)
@click.option(
    "--time-min",
    "time_limit_min",
    type=click.IntRange(min=1),
    default=None,
    help="--slurm: time limit per run in minutes [default: the site's].",
)
@wait_options
@click.option(
    "--numactl/--no-numactl",
    "use_numactl",
    default=None,
    help="Local runs: pin with numactl [default: when installed; else sched_setaffinity].",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Exploration folder: one run directory per run (pNNN), explore.json, explore.png. "
    "Run the same command again to resume.",
)
@click.option(
    "--archive",
    "archive_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Add every run that produced a result to this archive.",
)
@click.option("--dry-run", is_flag=True, help="List the candidates and the run order; run nothing.")
@click.pass_context
def explore(
    ctx: click.Context, source: TopologySource, spec_flags: SpecFlags, **kwargs: Any
) -> int:
    """Find the fastest layout of this node: whole node, per socket, per NUMA node, per PCIe
    switch, per GPU (on a node without GPUs: splits of the cores), each run --repeats times,
    interleaved (A B C A B C ...).

    Prints a table (mean common-window throughput, standard deviation, Student's t 95 %
    interval, speedup against one rank on the whole node with its interval), the verdict, and
    the 'hpcbench run' (or, with --slurm, 'hpcbench render') command of the winner; writes
    OUT/explore.json and OUT/explore.png. Exits 1 when a run failed.
    """
    from hpcbench.backends.registry import choose_backend
    from hpcbench.explore import LocalTarget, run_exploration
    from hpcbench.plan.candidates import enumerate_candidates
    from hpcbench.plan.planner import PlanRequest
    from hpcbench.runtime.local_run import preflight
    from hpcbench.units import sample_unit

    _check_flags(source, kwargs)
    topology, node_type, site = source.load_with_site()
    base = PlanRequest(
        use_hwthreads=kwargs["hwthreads"], accept_warnings=kwargs["accept_warnings"]
    ).with_node_type(node_type)
    candidates = enumerate_candidates(topology, base, kwargs["layouts"])
    for line in candidates.skipped:
        _echo(f"explore: not a candidate: {line}")
    for c in candidates.candidates:
        _echo(f"explore: candidate {c.label}: {c.how}; layout {c.layout}")
    if kwargs["dry_run"]:
        order = [c.label for c in candidates.candidates] * kwargs["repeats"]
        click.echo(f"run order ({len(order)} runs): {' '.join(order)}")
        return 0
    # Reject a spec the ranks would reject before the folder is claimed or a rank started.
    choices = spec_flags.choices()
    spec = choices.resolve(choose_backend(len(topology.gpus)))
    if not kwargs["slurm"]:
        for c in candidates.candidates:
            preflight(spec, c.plan)
    outcome = run_exploration(
        candidates,
        out=kwargs["out"],
        repeats=kwargs["repeats"],
        spec=choices,
        local=LocalTarget(topology, node_type, site),
        record=_record(ctx, topology.source, candidates, bool(kwargs["slurm"])),
        command=lambda exploration: _winner_command(ctx, exploration),
        argv=sys.argv,
        slurm=_slurm_choice(source, node_type, kwargs),
        use_numactl=kwargs["use_numactl"],
        echo=_echo,
    )
    _print_outcome(ctx, outcome, sample_unit(spec.model).rate)
    if kwargs["archive_dir"] is not None:
        from hpcbench.launch import archive_runs

        ids = archive_runs([p.run_dir for p in outcome.points], kwargs["archive_dir"])
        _echo(f"archived {plural(len(ids), 'run')} in {kwargs['archive_dir']}")
    return 1 if outcome.failed else 0


def _echo(line: str) -> None:
    click.echo(line, err=True)


def _check_flags(source: TopologySource, kwargs: dict[str, Any]) -> None:
    """The --slurm flags come together: --slurm needs a site, the job flags need --slurm."""
    from hpcbench.errors import UsageError

    if kwargs["slurm"] and not source.site:
        raise UsageError("--slurm needs --site (the site config describes the nodes to use)")
    for flag in ("nodelist", "python", "time_limit_min"):
        if kwargs[flag] is not None and not kwargs["slurm"]:
            raise UsageError(f"--{flag.replace('_limit_min', '-min')} is for --slurm runs")


def _run_flag_names(ctx: click.Context) -> list[str]:
    """The flags every point shares (explore's own flags left out)."""
    return [p.name for p in ctx.command.params if p.name and p.name not in _EXPLORE_ONLY]


def _record(
    ctx: click.Context, topology_source: str, candidates: CandidateSet, slurm: bool
) -> dict[str, Any]:
    """What makes this exploration this one: a resumed run must match it (explore-request.json)."""
    # The flag groups reach the command as typed values; ctx.params keeps every flag's value.
    settings = {n: ctx.params[n] for n in _run_flag_names(ctx)}
    return {
        "topology": topology_source,
        "settings": {n: _jsonable(v) for n, v in settings.items() if v is not None},
        "slurm": slurm,
        "candidates": [
            {"label": c.label, "layout": c.layout, "plan": c.plan.to_json()["ranks"]}
            for c in candidates.candidates
        ],
    }


def _winner_command(ctx: click.Context, exploration: Exploration) -> str:
    """The command that runs the winner again: the user's flags plus the winner's placement."""
    from hpcbench.plan.candidates import request_flags

    if exploration.best is None:
        return ""
    winner = next(r.candidate for r in exploration.results if r.candidate.label == exploration.best)
    spec_flags = _given_flags(ctx, [n for n in _run_flag_names(ctx) if n not in _TOPOLOGY])
    if ctx.params["slurm"]:
        job = _given_flags(ctx, ["site", "partition", "python", "time_limit_min"])
        parts = ["hpcbench", "render", *job, *request_flags(winner.request), *spec_flags]
        return " ".join([*parts, "-o", "job.sbatch"])
    topo = _given_flags(ctx, list(_TOPOLOGY))
    pinning = _given_flags(ctx, ["use_numactl"])
    parts = ["hpcbench", "run", *topo, *request_flags(winner.request), *spec_flags, *pinning]
    return " ".join(parts)


def _slurm_choice(
    source: TopologySource, node_type: NodeType | None, kwargs: dict[str, Any]
) -> SlurmChoice | None:
    """Where and how a --slurm exploration's job array runs; None for a local exploration."""
    from hpcbench.explore import SlurmChoice

    if not kwargs["slurm"] or source.site is None:
        return None
    return SlurmChoice(
        site=str(source.site),
        partition=source.partition,
        slurm_partition=node_type.slurm.partition if node_type is not None else None,
        nodelist=kwargs["nodelist"],
        python=kwargs["python"],
        time_limit_min=kwargs["time_limit_min"],
        poll_s=kwargs["poll_s"],
        timeout_s=kwargs["wait_timeout_s"],
    )


def _print_outcome(ctx: click.Context, outcome: ExploreOutcome, rate: str) -> None:
    """The table and verdict, the picture, the result file and the winner's command."""
    from hpcbench.explore.picture import write_picture
    from hpcbench.explore.verdict import format_exploration

    exploration = outcome.exploration
    click.echo(format_exploration(exploration, rate))
    picture = write_picture(exploration, outcome.result_file.with_name("explore.png"), rate)
    if picture is None:
        _echo(f"explore: no picture: matplotlib is not installed ({install_hint('plot')})")
    else:
        click.echo(f"picture: {picture}")
    click.echo(f"results: {outcome.result_file}")
    best = _winner_command(ctx, exploration)
    if best:
        click.echo(f"run the winner: {best}")
