"""The layouts worth comparing on a node, as plans made by the planner. Pure.

``hpcbench explore`` asks which layout is fastest on a node. The candidates come from the
topology alone: one rank on the whole node (the baseline), one per socket, one per NUMA node,
one per PCIe switch and one per GPU; on a node without GPUs, splits of the cores (whole node,
per socket, per NUMA node, a middle split, one per core). Every candidate is a plan made by
:func:`~hpcbench.plan.planner.make_plan`, so it obeys the placement rules, and candidates that
place ranks identically collapse into one (on a one-socket node "per socket" is "whole node").
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from hpcbench.cpulist import format_cpulist
from hpcbench.errors import PlanError, UsageError
from hpcbench.plan.index import Granularity, TopologyIndex, topology_index
from hpcbench.plan.model import Plan
from hpcbench.plan.planner import PlanRequest, make_plan
from hpcbench.topology.model import Topology


@dataclass(frozen=True, slots=True)
class Candidate:
    """One layout to measure: how it was found, the request that makes it, and its plan."""

    label: str
    how: str
    request: PlanRequest
    plan: Plan

    @property
    def ranks(self) -> int:
        return self.plan.ranks_per_node

    @property
    def gpus_per_rank(self) -> int | list[int]:
        """GPUs of each rank: one number when every rank has the same count, else a list."""
        return _uniform([len(r.gpus) for r in self.plan.node_ranks(0)])

    @property
    def cpus_per_rank(self) -> int | list[int]:
        """OS CPUs each rank is pinned to: one number when all are equal, else a list."""
        return _uniform([len(r.cpus) for r in self.plan.node_ranks(0)])

    @property
    def layout(self) -> str:
        """The seed's syntax: GPUs per rank (``0,1;2,3``), or CPUs on a node without GPUs."""
        ranks = self.plan.node_ranks(0)
        if any(r.gpus for r in ranks):
            return ";".join(",".join(str(g) for g in r.gpus) for r in ranks)
        return ";".join(format_cpulist(r.cpus) for r in ranks)


@dataclass(frozen=True, slots=True)
class CandidateSet:
    """The candidates (the baseline first) and why some kinds of split were not possible."""

    candidates: tuple[Candidate, ...]
    skipped: tuple[str, ...]

    @property
    def baseline(self) -> Candidate:
        return self.candidates[0]

    def by_label(self, label: str) -> Candidate:
        for candidate in self.candidates:
            if candidate.label == label:
                return candidate
        raise KeyError(label)


def _uniform(counts: list[int]) -> int | list[int]:
    return counts[0] if len(set(counts)) == 1 else counts


def placement_key(plan: Plan) -> frozenset[tuple[tuple[int, ...], ...]]:
    """What makes two plans the same placement: each rank's CPUs, GPUs and memory nodes.

    Rank order does not matter: ranks are interchangeable processes.
    """
    return frozenset((r.cpus, r.gpus, r.mem_nodes) for r in plan.node_ranks(0))


def shape_label(plan: Plan) -> str:
    """``RANKSxGPUS`` (``2x4``), or ``RANKSxCPUS`` on a node without GPUs; ``3x2+2+4`` if uneven.

    >>> from hpcbench.plan.model import RankPlacement
    >>> p = Plan((RankPlacement(0, 0, 0, 0, 0, (0, 1), (0, 1), (0,)),
    ...           RankPlacement(1, 0, 1, 1, 1, (2, 3), (2, 3), (1,))), (), "t")
    >>> shape_label(p)
    '2x2'
    """
    ranks = plan.node_ranks(0)
    gpu_node = any(r.gpus for r in ranks)
    counts = [len(r.gpus) if gpu_node else len(r.cpus) for r in ranks]
    per = str(counts[0]) if len(set(counts)) == 1 else "+".join(str(c) for c in counts)
    return f"{len(ranks)}x{per}"


def display_label(label: str) -> str:
    """A label as a sentence shows it: ``2x4`` -> ``2 × 4``.

    >>> display_label("2x4"), display_label("4x2[0,2;1,3]")
    ('2 × 4', '4 × 2[0,2;1,3]')
    """
    ranks, sep, rest = label.partition("x")
    if sep and ranks.isdigit():
        return f"{ranks} × {rest}"
    return label


def _middle_split(cores: int, sockets: int, taken: set[int]) -> int | None:
    """The rank count between one and one per core, nearest the geometric middle.

    It must divide the cores, be a multiple of the sockets (so the planner splits every socket
    evenly) and not repeat a rank count already tried; None when no such count exists.

    >>> _middle_split(8, 1, {1, 8}), _middle_split(2, 1, {1, 2}), _middle_split(36, 2, {1, 2, 36})
    (2, None, 6)
    """
    options = [d for d in range(2, cores) if cores % d == 0 and d % sockets == 0 and d not in taken]
    if not options:
        return None
    # log(d² / cores) is exact where two divisors are equally far from the middle (2, 4 of 8).
    return min(options, key=lambda d: (abs(math.log(d * d / cores)), d))


def _automatic(
    index: TopologyIndex, base: PlanRequest
) -> list[tuple[str, tuple[PlanRequest, ...]]]:
    """(how, requests to try in turn) of every automatic kind of split, the baseline first."""
    whole = replace(base, ranks=1, granularity="socket", gpus=None, cpus=None, gpus_per_rank=None)
    wanted: list[tuple[str, tuple[PlanRequest, ...]]] = [("one rank on the whole node", (whole,))]
    gpu_ids = index.gpu_ids
    splits: tuple[tuple[Granularity, str], ...] = (("socket", "socket"), ("numa", "NUMA node"))
    for granularity, kind in splits:
        domains = index.domains[granularity]
        if gpu_ids and not index.gpus_unattached:
            # A rank on a domain without GPUs would idle: count only domains that have some.
            count = sum(1 for d in domains if d.gpus) or 1
        else:
            count = len(domains)
        wanted.append(
            (f"one rank per {kind}", (replace(whole, ranks=count, granularity=granularity),))
        )
    if gpu_ids:
        switches: dict[str, list[int]] = {}
        for gpu in gpu_ids:
            switches.setdefault(index.gpu_switch[gpu], []).append(gpu)
        if any(label is not None for label in index.gpu_switch_label.values()):
            groups = sorted(switches.values())
            layout = ";".join(",".join(str(g) for g in group) for group in groups)
            by_switch = replace(whole, ranks="auto", gpus=layout)
            wanted.append(("one rank per PCIe switch", _finest_first(by_switch)))
        flat = (
            len({index.gpu_domain["socket"][g] for g in gpu_ids}) == 1
            and len({index.gpu_domain["numa"][g] for g in gpu_ids}) == 1
            and len(switches) in (1, len(gpu_ids))
        )
        middle = _middle_split(len(gpu_ids), 1, {1, len(gpu_ids)}) if flat else None
        if middle is not None:
            # Nothing in a flat node (a cloud VM: one NUMA node, GPUs without locality or
            # shared switches) separates its GPUs, so the splits above give only 1 x all and
            # one per GPU; the middle split is the layout between them.
            per = len(gpu_ids) // middle
            by_share = replace(whole, ranks=middle, gpus_per_rank=per)
            wanted.append(("a middle split of the GPUs", (by_share,)))
        by_gpu = replace(whole, ranks=len(gpu_ids), gpus_per_rank=1)
        wanted.append(("one rank per GPU", _finest_first(by_gpu)))
        return wanted
    reserved = {index.cpu_core[c] for c in base.reserved_cores if c in index.cpu_core}
    cores = len(index.core_cpus) - len(reserved)
    sockets = len(index.domains["socket"])
    taken = {1, sockets, len(index.domains["numa"]), cores}
    middle = _middle_split(cores, sockets, taken)
    if middle is not None:
        wanted.append(("a middle split of the cores", (replace(whole, ranks=middle),)))
    wanted.append(("one rank per core", (replace(whole, ranks=cores),)))
    return wanted


def _finest_first(request: PlanRequest) -> tuple[PlanRequest, ...]:
    """Place by NUMA node first, so that a rank's cores sit on its GPUs' NUMA node where the
    planner can (DGX A100 NPS4: GPUs 0,1 with the cores of NUMA nodes 2-3, not 0-1); by socket
    when that breaks a rule (a NUMA node without GPUs of its own)."""
    return (replace(request, granularity="numa"), request)


def _first_plan(
    topology: Topology, requests: Sequence[PlanRequest]
) -> tuple[PlanRequest, Plan] | PlanError:
    """The first request the planner can place, with its plan; else the last request's error."""
    error = PlanError("no request")
    for request in requests:
        try:
            return request, make_plan(topology, request)
        except PlanError as exc:
            error = exc
    return error


def parse_layout_items(items: Sequence[str]) -> tuple[list[str], list[str]]:
    """``--layouts`` values: (layouts to add, labels to remove); items split on white space.

    >>> parse_layout_items(["0,1;2,3 -8x1", "-4x2"])
    (['0,1;2,3'], ['8x1', '4x2'])
    """
    add: list[str] = []
    remove: list[str] = []
    for value in items:
        for item in value.split():
            if item.startswith("-"):
                if len(item) == 1:
                    raise UsageError("--layouts: '-' must be followed by a candidate's label")
                remove.append(item[1:])
            else:
                add.append(item)
    return add, remove


def enumerate_candidates(
    topology: Topology, base: PlanRequest | None = None, layouts: Sequence[str] = ()
) -> CandidateSet:
    """Every layout worth measuring on ``topology``, the baseline (whole node) first.

    ``base`` carries what every candidate shares (reserved cores, data root, ``use_hwthreads``,
    ``accept_warnings``); its rank and layout fields are replaced. ``layouts`` are ``--layouts``
    items: a layout in the seed's syntax adds a candidate (GPUs per rank, or CPUs per rank on a
    node without GPUs); ``-LABEL`` removes one. A kind of split the node cannot make is left
    out and named in ``skipped``; a bad explicit layout is an error.
    """
    base = base or PlanRequest()
    index = topology_index(topology)
    add, remove = parse_layout_items(layouts)
    found: list[Candidate] = []
    keys: dict[frozenset[tuple[tuple[int, ...], ...]], int] = {}
    skipped: list[str] = []

    def keep(how: str, request: PlanRequest, plan: Plan) -> None:
        key = placement_key(plan)
        if key in keys:
            same = found[keys[key]]
            found[keys[key]] = replace(same, how=f"{same.how}; {how}")
            return
        label = shape_label(plan)
        if any(c.label == label for c in found):
            label = f"{label}[{Candidate(label, how, request, plan).layout}]"
        keys[key] = len(found)
        found.append(Candidate(label, how, request, plan))

    for how, requests in _automatic(index, base):
        made = _first_plan(topology, requests)
        if isinstance(made, PlanError):
            if not found:  # the baseline must exist: a node the planner cannot place at all
                raise made
            skipped.append(f"{how}: {made}")
            continue
        request, plan = made
        if index.gpu_ids and not all(r.gpus for r in plan.ranks):
            idle = next(r.rank for r in plan.ranks if not r.gpus)
            skipped.append(f"{how}: rank {idle} would get no GPU")
            continue
        keep(how, request, plan)
    for layout in add:
        request = replace(
            base,
            ranks="auto",
            granularity="socket",
            gpus_per_rank=None,
            gpus=layout if index.gpu_ids else None,
            cpus=None if index.gpu_ids else layout,
        )
        try:
            plan = make_plan(topology, request)
        except PlanError as exc:
            raise UsageError(f"--layouts {layout!r}: {exc}") from None
        keep(f"given layout {layout}", request, plan)
    labels = [c.label for c in found]
    for label in remove:
        if label not in labels:
            raise UsageError(
                f"--layouts -{label}: no candidate is labelled {label!r} (candidates: "
                f"{', '.join(labels)})"
            )
        if label == labels[0]:
            raise UsageError(
                f"--layouts -{label}: {label} is the baseline (one rank on the whole node), "
                f"which every other candidate is compared with; it cannot be removed"
            )
    kept = tuple(c for c in found if c.label not in remove)
    return CandidateSet(candidates=kept, skipped=tuple(skipped))


def request_options(request: PlanRequest) -> dict[str, Any]:
    """The placement flags (as ``plan_request_options`` keyword arguments) that remake a request.

    Reserved cores and the data root come from the site, as for any ``run``.

    >>> request_options(PlanRequest(ranks=2, granularity="numa"))["numa"]
    True
    """
    return {
        "ranks": request.ranks,
        "gpus_per_rank": request.gpus_per_rank,
        "cores_per_rank": request.cores_per_rank,
        "hwthreads": request.use_hwthreads,
        "numa": request.granularity == "numa",
        "gpus": request.gpus,
        "cpus": request.cpus,
        "accept_warnings": request.accept_warnings,
    }


def request_flags(request: PlanRequest) -> list[str]:
    """The command-line placement flags that remake a request, shell-quoted.

    >>> request_flags(PlanRequest(ranks=2, gpus="0,1;2,3"))
    ['--ranks', '2', '--gpus', "'0,1;2,3'"]
    """
    options = request_options(request)
    flags: list[str] = []
    if options["ranks"] != "auto":
        flags += ["--ranks", str(options["ranks"])]
    for name in ("gpus_per_rank", "cores_per_rank", "gpus", "cpus"):
        if options[name] is not None:
            flags += [f"--{name.replace('_', '-')}", shlex.quote(str(options[name]))]
    for name in ("hwthreads", "numa", "accept_warnings"):
        if options[name]:
            flags.append(f"--{name.replace('_', '-')}")
    return flags
