"""The placement planner: a request and a node's topology in, a :class:`Plan` out.

Pure and fast (a sweep plans thousands of times): every topology-only table comes from
:func:`hpcbench.plan.index.topology_index`, cached per topology, and so do the pure
sub-results a sweep repeats (core slots, facts of a set of cores, GPU candidates by tier).

How an automatic plan is made (docs/placement.md explains it for users):

* Domains are the sockets, or the NUMA nodes with CPUs when ``granularity == "numa"``.
  ``ranks="auto"`` gives one rank per domain. More ranks than domains are dealt out block-wise
  (the first domains take one more when they do not divide evenly); fewer ranks than domains
  must divide them, and each rank then takes a run of whole domains.
* Cores: each rank gets ``cores_per_rank`` physical cores, by default an equal share of the free
  cores of its domain (cores holding a reserved CPU are never used), in contiguous blocks so
  that a block stays inside a NUMA node where it can. Only the first hardware thread of each
  core is listed unless ``use_hwthreads``: a rank still owns its whole physical core (no other
  rank is put on the sibling), but OpenMP/MKL pools sized from the affinity mask get one thread
  per core, which is what compute-bound inference wants.
* GPUs: every rank takes GPUs local to its NUMA node first, then (in a second round, so that
  no rank takes another rank's NUMA-local GPU) local to its domain, then GPUs that report no
  locality; within that, the PCIe switch where the rank has fewest GPUs, then the
  switch fewest ranks use, then the GPU sharing fewest PCIe bridges (root port, upper switch)
  with the rank's other GPUs, then the lowest index (Apollo 2 x 2 -> 0,2 and 4,6). ``None`` GPUs
  per rank means an equal share of the local ones.
* Memory: the NUMA nodes of the rank's cores. Data dir: ``{data_root}/rankNNNNN``.

The result is checked against the rules (:mod:`hpcbench.plan.layout`): explicit CPUs against
all of them, planned core slots (disjoint and off reserved cores by construction, which the
property tests verify with the full checker) against the GPU rules. A broken rule is a
:class:`PlanError` unless ``accept_warnings``, when it becomes a plan warning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol

from hpcbench.errors import PlanError
from hpcbench.plan.index import GRANULARITIES, Granularity, TopologyIndex, topology_index
from hpcbench.plan.layout import (
    RULE_GPU_SHARED,
    RULE_NO_OVERSUBSCRIPTION,
    check_cpu_rules,
    check_gpu_rules,
    gpu_tier,
    parse_cpu_layout,
    parse_gpu_layout,
    validate_layout,
)
from hpcbench.plan.model import Plan, RankPlacement
from hpcbench.topology.model import Topology

DATA_ROOT_PLACEHOLDER = "{data_root}"


class NodeTypeLike(Protocol):
    """The parts of a site's ``NodeType`` that a plan request takes."""

    @property
    def reserved_cores(self) -> tuple[int, ...]: ...

    @property
    def data_root(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class PlanRequest:
    """What the user asked for; :func:`make_plan` turns it into a :class:`Plan`.

    ``ranks`` are per node. ``gpus_per_rank`` None means an equal share of the GPUs local to
    the rank's domain (0 on CPU-only nodes). ``cores_per_rank`` None means an equal share of
    the domain's free cores. ``gpus``/``cpus`` are explicit layouts in the seed's syntax
    (``"0,2;4,6"``, ``"0-17;18-35"``), checked and never rewritten. ``reserved_cores`` are
    OS CPU ids the site keeps for the system.
    """

    ranks: int | Literal["auto"] = "auto"
    gpus_per_rank: int | None = None
    cores_per_rank: int | None = None
    use_hwthreads: bool = False
    granularity: Granularity = "socket"
    gpus: str | None = None
    cpus: str | None = None
    nodes: int = 1
    reserved_cores: tuple[int, ...] = ()
    accept_warnings: bool = False
    data_root: str | None = None

    def __post_init__(self) -> None:
        # A list from YAML or a caller would make the request unhashable and mutable.
        object.__setattr__(self, "reserved_cores", tuple(int(c) for c in self.reserved_cores))
        if self.ranks != "auto" and (
            isinstance(self.ranks, bool) or not isinstance(self.ranks, int) or self.ranks < 1
        ):
            raise PlanError(f"--ranks: {self.ranks!r} is not a positive number or 'auto'")
        if self.gpus_per_rank is not None and self.gpus_per_rank < 0:
            raise PlanError(f"--gpus-per-rank: {self.gpus_per_rank} is negative")
        if self.cores_per_rank is not None and self.cores_per_rank < 1:
            raise PlanError(f"--cores-per-rank: {self.cores_per_rank} must be at least 1")
        if self.granularity not in GRANULARITIES:
            raise PlanError(
                f"granularity: {self.granularity!r} is not one of {', '.join(GRANULARITIES)}"
            )
        if self.nodes < 1:
            raise PlanError(f"--nodes: {self.nodes} must be at least 1")
        if self.cpus is not None and self.cores_per_rank is not None:
            raise PlanError("--cores-per-rank cannot be combined with an explicit --cpus layout")
        if self.cpus is not None and self.use_hwthreads:
            raise PlanError(
                "--hwthreads cannot be combined with an explicit --cpus layout (list the "
                "hardware threads in --cpus instead)"
            )

    def with_node_type(self, node_type: NodeTypeLike | None) -> PlanRequest:
        """The request with a site node type's ``reserved_cores`` and ``data_root``.

        Values the request sets itself win; no node type leaves it as it is.

        >>> class Node:
        ...     reserved_cores, data_root = (0,), "/scratch"
        >>> PlanRequest(ranks=2).with_node_type(Node()).reserved_cores
        (0,)
        """
        if node_type is None:
            return self
        return replace(
            self,
            reserved_cores=self.reserved_cores or tuple(node_type.reserved_cores),
            data_root=self.data_root if self.data_root is not None else node_type.data_root,
        )


def make_plan(topology: Topology, request: PlanRequest) -> Plan:
    """Place ``request.ranks`` ranks per node on ``topology``, following DESIGN.md's rules.

    Raises :class:`PlanError` (exit 2, one line naming the rank and the rule) when the request
    cannot be met or a layout breaks a rule and ``request.accept_warnings`` is false.
    """
    index = topology_index(topology)
    granularity = request.granularity
    cpu_layout = None if request.cpus is None else parse_cpu_layout(request.cpus)
    gpu_layout = None if request.gpus is None else parse_gpu_layout(request.gpus)
    validate_layout(index, cpu_layout, gpu_layout)
    nranks = _rank_count(index, request, cpu_layout, gpu_layout)
    if gpu_layout is not None and request.gpus_per_rank is not None:
        for rank, rank_gpus in enumerate(gpu_layout):
            if len(rank_gpus) != request.gpus_per_rank:
                raise PlanError(
                    f"--gpus-per-rank {request.gpus_per_rank} disagrees with --gpus "
                    f"{request.gpus!r}: rank {rank} has {len(rank_gpus)} GPUs (give one of them)"
                )

    rank_cores: Sequence[tuple[int, ...]]
    if cpu_layout is None:
        rank_cores = _core_slots(index, nranks, request)
        if gpu_layout is not None:
            rank_cores = _match_slots_to_gpus(index, rank_cores, gpu_layout, granularity)
    else:
        rank_cores = [index.cores_of(c) for c in cpu_layout]
    shapes = [index.core_set(cores, granularity) for cores in rank_cores]
    if cpu_layout is not None:
        cpus = list(cpu_layout)
    elif request.use_hwthreads:
        cpus = [shape.all_cpus for shape in shapes]
    else:
        cpus = [shape.first_cpus for shape in shapes]
    rank_domains = [shape.domains for shape in shapes]
    rank_numa = [shape.numa_nodes for shape in shapes]
    if gpu_layout is None:
        gpus = _choose_gpus(index, rank_domains, rank_numa, request)
    else:
        gpus = list(gpu_layout)

    # Planned core slots are disjoint, skip reserved cores and never straddle a shared domain
    # by construction (tests check them with the full checker); explicit CPUs get every rule.
    violations = (
        []
        if cpu_layout is None
        else check_cpu_rules(index, cpus, granularity, request.reserved_cores)
    )
    violations += check_gpu_rules(index, gpus, rank_domains, rank_numa, granularity)
    if violations and not request.accept_warnings:
        violations.sort(key=lambda v: v.rank)
        broken = "; ".join(v.message for v in violations)
        raise PlanError(
            f"the layout breaks placement rules: {broken}; pass --accept-warnings to run it anyway"
        )
    violations.sort(key=lambda v: v.rank)
    warnings = tuple(v.message for v in violations)

    per_node = [
        (local, cpus[local], tuple(gpus[local]), shape.socket, shape.numa_node, shape.mem_nodes)
        for local, shape in enumerate(shapes)
    ]
    root = request.data_root or DATA_ROOT_PLACEHOLDER
    ranks = []
    for node in range(request.nodes):
        for local, rank_cpus, rank_gpus, socket, numa_node, mem_nodes in per_node:
            rank = node * nranks + local
            ranks.append(
                RankPlacement(
                    rank=rank,
                    node=node,
                    local_rank=local,
                    socket=socket,
                    numa_node=numa_node,
                    cpus=rank_cpus,
                    gpus=rank_gpus,
                    mem_nodes=mem_nodes,
                    data_dir=f"{root}/rank{rank:05d}",
                )
            )
    return Plan(ranks=tuple(ranks), warnings=warnings, source=topology.source, nodes=request.nodes)


# ----------------------------------------------------------------------------- ranks and cores
def _rank_count(
    index: TopologyIndex,
    request: PlanRequest,
    cpu_layout: Sequence[Sequence[int]] | None,
    gpu_layout: Sequence[Sequence[int]] | None,
) -> int:
    counts = []
    if cpu_layout is not None:
        counts.append(("--cpus", len(cpu_layout)))
    if gpu_layout is not None:
        counts.append(("--gpus", len(gpu_layout)))
    if request.ranks != "auto":
        counts.append(("--ranks", request.ranks))
    if counts:
        if len({n for _, n in counts}) > 1:
            said = ", ".join(f"{flag} gives {n}" for flag, n in counts)
            raise PlanError(f"the number of ranks per node disagrees: {said}")
        return counts[0][1]
    return len(index.domains[request.granularity])


def _core_slots(
    index: TopologyIndex, nranks: int, request: PlanRequest
) -> tuple[tuple[int, ...], ...]:
    """Core ids per local rank, in rank order (cached per topology: a sweep repeats them)."""
    key = (request.granularity, nranks, request.cores_per_rank, request.reserved_cores)
    slots = index.slot_cache.get(key)
    if slots is None:
        slots = index.slot_cache[key] = _compute_core_slots(index, nranks, request)
    return slots


def _compute_core_slots(
    index: TopologyIndex, nranks: int, request: PlanRequest
) -> tuple[tuple[int, ...], ...]:
    domains = index.domains[request.granularity]
    kind = "socket" if request.granularity == "socket" else "NUMA node"
    reserved = {index.cpu_core[c] for c in request.reserved_cores if c in index.cpu_core}
    free_total = len(index.core_cpus) - len(reserved)
    if nranks > free_total:
        raise PlanError(
            f"rank {free_total} gets no cores: {nranks} ranks per node need at least {nranks} "
            f"physical cores but the node has {free_total} free ({RULE_NO_OVERSUBSCRIPTION})"
        )
    ndomains = len(domains)
    groups: list[tuple[tuple[int, ...], int]]
    if nranks >= ndomains:
        base, extra = divmod(nranks, ndomains)
        groups = [((d,), base + (1 if d < extra else 0)) for d in range(ndomains)]
    else:
        if ndomains % nranks:
            divisors = [str(n) for n in range(1, ndomains) if ndomains % n == 0]
            raise PlanError(
                f"{nranks} ranks cannot share the node's {ndomains} {kind}s evenly: use "
                f"{', '.join(divisors)} or at least {ndomains} ranks per node"
            )
        size = ndomains // nranks
        groups = [(tuple(range(j * size, (j + 1) * size)), 1) for j in range(nranks)]
    # A socket with several NUMA nodes (SNC, NPS2/4) whose ranks divide evenly over them gets
    # its ranks per NUMA node, so that no rank straddles two nodes when cores are reserved.
    parts: list[tuple[list[int], str, int]] = []
    for group, k in groups:
        if k == 0:
            continue
        free = [c for d in group for c in domains[d].cores if c not in reserved]
        label = " and ".join(domains[d].label for d in group)
        nodes = sorted({index.core_numa[c] for d in group for c in domains[d].cores})
        if len(group) == 1 and len(nodes) > 1 and k % len(nodes) == 0:
            for node in nodes:
                node_free = [c for c in free if index.core_numa[c] == node]
                parts.append((node_free, f"{label} (NUMA node {node})", k // len(nodes)))
        else:
            parts.append((free, label, k))
    slots: list[tuple[int, ...]] = []
    for free, label, k in parts:
        note = f", {len(reserved)} reserved on the node" if reserved else ""
        per_rank = request.cores_per_rank or len(free) // k
        if per_rank == 0:
            raise PlanError(
                f"rank {len(slots) + len(free)} gets no cores: {label} has {len(free)} free "
                f"physical cores for {k} ranks{note} (rule 1: every rank is pinned)"
            )
        if per_rank * k > len(free):
            raise PlanError(
                f"rank {len(slots) + len(free) // per_rank} gets no cores: {k} ranks x "
                f"{per_rank} cores do not fit on {label}, which has {len(free)} free physical "
                f"cores{note} (rule 1: disjoint cores)"
            )
        slots.extend(tuple(free[j * per_rank : (j + 1) * per_rank]) for j in range(k))
    return tuple(slots)


def _match_slots_to_gpus(
    index: TopologyIndex,
    slots: Sequence[tuple[int, ...]],
    gpu_layout: Sequence[Sequence[int]],
    granularity: Granularity,
) -> list[tuple[int, ...]]:
    """Give each rank of an explicit GPU layout the core slot on its GPUs' domain."""
    slot_domains = [set(index.domains_of_cores(granularity, s)) for s in slots]
    gpu_domain = index.gpu_domain[granularity]
    left = list(range(len(slots)))
    ordered: list[tuple[int, ...]] = []
    for rank_gpus in gpu_layout:
        homes = {gpu_domain[g] for g in rank_gpus} - {None}
        choice = next((s for s in left if homes <= slot_domains[s]), None)
        if choice is None:
            choice = next((s for s in left if homes & slot_domains[s]), left[0])
        left.remove(choice)
        ordered.append(slots[choice])
    return ordered


# ----------------------------------------------------------------------------- GPUs
def _choose_gpus(
    index: TopologyIndex,
    rank_domains: Sequence[frozenset[int]],
    rank_numa: Sequence[frozenset[int]],
    request: PlanRequest,
) -> list[tuple[int, ...]]:
    """Pick each rank's GPUs: local first, then spread over PCIe switches (rule 2, rule 3)."""
    nranks = len(rank_domains)
    wanted = request.gpus_per_rank
    if not index.gpu_ids:
        if wanted:
            raise PlanError(
                f"rank 0 gets no GPUs: --gpus-per-rank {wanted} but this node has no GPUs (use "
                f"--gpus-per-rank 0)"
            )
        return [() for _ in rank_domains]
    _check_enough_gpus(len(index.gpu_ids), nranks, wanted)
    max_tier = 3 if request.accept_warnings else 2
    counts = [
        _gpu_count(index, rank_domains, mine, wanted, request.granularity) for mine in rank_domains
    ]
    candidates = [
        _gpu_candidates(index, rank_numa[rank], rank_domains[rank], request.granularity, max_tier)
        for rank in range(nranks)
    ]
    picks = _pick_by_tier(index, counts, candidates, max_tier)
    for rank in range(nranks):
        if len(picks[rank]) < counts[rank]:
            raise _too_few_local_gpus(index, rank_domains, rank, picks[rank], counts[rank], request)
    return [tuple(sorted(p)) for p in picks]


def _check_enough_gpus(available: int, nranks: int, wanted: int | None) -> None:
    if wanted is not None and wanted * nranks > available:
        short = available // wanted
        raise PlanError(
            f"rank {short} gets only {available - short * wanted} of {wanted} GPUs: {nranks} "
            f"ranks x {wanted} GPUs need {wanted * nranks} GPUs but the node has "
            f"{available} ({RULE_GPU_SHARED})"
        )


def _gpu_count(
    index: TopologyIndex,
    rank_domains: Sequence[frozenset[int]],
    mine: frozenset[int],
    wanted: int | None,
    granularity: Granularity,
) -> int:
    """How many GPUs a rank takes: as asked, else an equal share (of the node, or of its domains
    among the ranks that share them)."""
    if wanted is not None:
        return wanted
    if index.gpus_unattached:
        return len(index.gpu_ids) // len(rank_domains)
    domains = index.domains[granularity]
    local = sum(len(domains[d].gpus) for d in mine)
    peers = sum(1 for other in rank_domains if other & mine)
    return local // peers


def _gpu_candidates(
    index: TopologyIndex,
    numa: frozenset[int],
    mine: frozenset[int],
    granularity: Granularity,
    max_tier: int,
) -> list[tuple[int, int]]:
    """The GPUs a rank may take with their locality tier (cached: ranks often share domains)."""
    cache_key = (granularity, numa, mine, max_tier)
    tiers = index.tier_cache.get(cache_key)
    if tiers is None:
        tiers = [
            (gpu, tier)
            for gpu in index.gpu_ids
            if (tier := gpu_tier(index, gpu, numa, mine, granularity)) <= max_tier
        ]
        index.tier_cache[cache_key] = tiers
    return tiers


def _pick_by_tier(
    index: TopologyIndex,
    counts: Sequence[int],
    candidates: Sequence[Sequence[tuple[int, int]]],
    max_tier: int,
) -> list[list[int]]:
    """Each rank's GPUs, taken tier by tier and spread over PCIe switches (rule 3)."""
    switch = index.gpu_switch
    neighbours = index.gpu_path_neighbours
    taken: set[int] = set()
    load: dict[str, int] = {}
    picks: list[list[int]] = [[] for _ in counts]
    owns: list[dict[str, int]] = [{} for _ in counts]
    # Tier by tier, so that a rank without a GPU on its own NUMA node never takes the GPU of a
    # later rank's NUMA node (DGX A100: GPUs on NUMA nodes 1, 3, 5, 7 only).
    for level in range(max_tier + 1):
        for rank in range(len(counts)):
            mine_picks, own, tiers = picks[rank], owns[rank], candidates[rank]
            while len(mine_picks) < counts[rank]:
                best: tuple[int, int, int, int] | None = None
                for gpu, tier in tiers:
                    if tier != level or gpu in taken:
                        continue
                    sw = switch[gpu]
                    near = len(neighbours[gpu].intersection(mine_picks)) if mine_picks else 0
                    key = (own.get(sw, 0), load.get(sw, 0), near, gpu)
                    if best is None or key < best:
                        best = key
                if best is None:
                    break
                gpu = best[3]
                sw = switch[gpu]
                taken.add(gpu)
                mine_picks.append(gpu)
                own[sw] = own.get(sw, 0) + 1
                load[sw] = load.get(sw, 0) + 1
    return picks


def _too_few_local_gpus(
    index: TopologyIndex,
    rank_domains: Sequence[frozenset[int]],
    rank: int,
    picked: Sequence[int],
    count: int,
    request: PlanRequest,
) -> PlanError:
    granularity = request.granularity
    domains = index.domains[granularity]
    mine = rank_domains[rank]
    where = " and ".join(domains[d].label for d in sorted(mine))
    local_count = sum(len(domains[d].gpus) for d in mine)
    peers = sum(1 for other in rank_domains if other & mine)
    kind = "socket" if granularity == "socket" else "NUMA node"
    return PlanError(
        f"rank {rank} gets only {len(picked)} of {count} GPUs: {where} has "
        f"{local_count} local GPUs for {peers} rank{'s' if peers > 1 else ''} (rule 2: "
        f"GPUs local to the rank's {kind}); ask for fewer with --gpus-per-rank, or "
        f"pass --accept-warnings to use remote GPUs"
    )
