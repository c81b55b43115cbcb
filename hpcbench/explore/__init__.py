"""``hpcbench explore``: which layout is fastest on this node, and by how much.

* :mod:`hpcbench.plan.candidates` finds the layouts worth measuring (pure);
* :mod:`hpcbench.explore.runs` runs each of them R times, interleaved, locally or as one job
  array on one node;
* :mod:`hpcbench.explore.verdict` turns the runs' own ``summary.json`` headlines into means,
  intervals, speedups, the verdict and ``explore.json`` (pure);
* :mod:`hpcbench.explore.picture` draws the bars.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcbench.explore.runs import (
    RESULT_FILE,
    Point,
    check_same_exploration,
    collect,
    pick_node,
    points,
    run_local_points,
    run_slurm_points,
)
from hpcbench.explore.verdict import Exploration, explore_json, judge
from hpcbench.jsonfile import write_json_atomic
from hpcbench.plan.candidates import CandidateSet
from hpcbench.runfiles import RunFiles
from hpcbench.site import NodeType, SiteConfig
from hpcbench.spec import SpecChoices
from hpcbench.text import plural
from hpcbench.topology.model import Topology

__all__ = ["ExploreOutcome", "LocalTarget", "SlurmChoice", "run_exploration"]


@dataclass(frozen=True, slots=True)
class LocalTarget:
    """The node the points run on without Slurm: its topology, and its site config if any."""

    topology: Topology
    node_type: NodeType | None = None
    site: SiteConfig | None = None


@dataclass(frozen=True, slots=True)
class SlurmChoice:
    """How to run the points as a job array (``--slurm``)."""

    site: str
    partition: str | None  # the site config's node type (``--partition``)
    slurm_partition: str | None  # the Slurm partition its nodes are in (to pick a node)
    nodelist: str | None
    python: str | None
    time_limit_min: int | None
    poll_s: float = 1.0
    timeout_s: float | None = None


@dataclass(frozen=True, slots=True)
class ExploreOutcome:
    """A finished exploration: its statistics, the run points and the files written."""

    exploration: Exploration
    points: tuple[Point, ...]
    failed: int
    result_file: Path


def run_exploration(
    candidates: CandidateSet,
    *,
    out: Path,
    repeats: int,
    spec: SpecChoices,
    local: LocalTarget,
    record: Mapping[str, Any],
    command: Callable[[Exploration], str],
    argv: Sequence[str] = (),
    slurm: SlurmChoice | None = None,
    use_numactl: bool | None = None,
    echo: Callable[[str], None] = print,
) -> ExploreOutcome:
    """Run every candidate ``repeats`` times, interleaved; write and return the verdict.

    ``spec`` is the benchmark every point runs; ``local`` the node a point runs on without
    Slurm (``slurm`` None); ``record`` describes the exploration for resuming
    (a folder holding another one is refused); ``command`` builds the winner's command line.
    """
    out = out.resolve()
    old_node = check_same_exploration(out, record)
    all_points = points(candidates, repeats, out)
    todo = [p for p in all_points if not RunFiles(p.run_dir).summary.is_file()]
    echo(
        f"explore: {plural(len(candidates.candidates), 'candidate')} x "
        f"{plural(repeats, 'run')}, interleaved; "
        f"{len(all_points) - len(todo)} done earlier, {len(todo)} to run, in {out}"
    )
    failures: dict[int, str] = {}
    if todo and slurm is None:
        failures = run_local_points(
            candidates,
            todo,
            spec=spec,
            local=local,
            argv=argv,
            use_numactl=use_numactl,
            echo=echo,
        )
    elif todo and slurm is not None:
        node = slurm.nodelist or old_node or pick_node(slurm.slurm_partition)
        check_same_exploration(out, record, node=node)
        echo(f"explore: every run on node {node}, one at a time")
        failures = run_slurm_points(
            candidates,
            all_points,
            out=out,
            site=slurm.site,
            partition=slurm.partition,
            spec=spec,
            nodelist=node,
            python=slurm.python,
            time_limit_min=slurm.time_limit_min,
            argv=argv,
            poll_s=slurm.poll_s,
            timeout_s=slurm.timeout_s,
            echo=echo,
        )
    records = collect(failures, all_points)
    exploration = judge(candidates, records)
    result_file = out / RESULT_FILE
    write_json_atomic(result_file, explore_json(exploration, command(exploration)))
    failed = sum(1 for r in records if r.common_window_img_s is None)
    return ExploreOutcome(exploration, tuple(all_points), failed, result_file)
