"""Explicit layouts in the seed's syntax, and the placement-rule checker.

The seed (DLBS) describes a run by two strings, one item per process separated by ``;``: GPUs
``"0,2;4,6"`` and CPUs ``"0-17;18-35"``. :func:`parse_gpu_layout` and :func:`parse_cpu_layout`
read them; :func:`check_rules` checks any per-node layout (explicit or planned) against the
placement rules of DESIGN.md and returns every broken rule with the reason. The planner turns
those into a :class:`~hpcbench.errors.PlanError`, or into warnings the user accepted.

Facts that make a layout meaningless (a CPU or GPU that does not exist, a rank without CPUs, a
GPU listed twice for one rank) are errors straight away: no flag can accept them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hpcbench.cpulist import CpuListError, format_cpulist, is_decimal, parse_cpulist
from hpcbench.errors import PlanError
from hpcbench.plan.index import Granularity, TopologyIndex
from hpcbench.text import plural

# No node has anywhere near this many GPUs; the bound keeps a typo from expanding forever.
MAX_GPU_INDEX = 4095

RULE_DISJOINT = "rule 1: disjoint cores"
RULE_NO_OVERSUBSCRIPTION = "rule 1: no two ranks on one physical core"
RULE_GPU_SHARED = "rule 1: no oversubscription, a GPU belongs to one rank"
RULE_RESERVED = "site rule: reserved cores stay free for the system"
RULE_GPU_LOCAL = "rule 2: GPUs local to the rank's {domain}"
RULE_SWITCH_SPREAD = "rule 3: spread GPUs across PCIe switches"
RULE_MEMORY_LOCAL = "rule 4: memory local to the rank"


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken placement rule: which (local) rank, which rule, and the one-line reason."""

    rank: int
    rule: str
    reason: str

    @property
    def message(self) -> str:
        """``rank N: <reason> (<rule>)``.

        >>> Violation(1, RULE_DISJOINT, "CPUs 3-4 are also given to rank 0").message
        'rank 1: CPUs 3-4 are also given to rank 0 (rule 1: disjoint cores)'
        """
        return f"rank {self.rank}: {self.reason} ({self.rule})"


# ----------------------------------------------------------------------------- syntax
def _items(text: str, flag: str) -> list[str]:
    if not text.strip():
        raise PlanError(f"{flag}: empty layout; give one item per rank separated by ';'")
    return [item.strip() for item in text.split(";")]


def parse_cpu_layout(text: str, flag: str = "--cpus") -> tuple[tuple[int, ...], ...]:
    """Parse the seed's CPU layout: one Linux CPU list per rank, separated by ``;``.

    >>> parse_cpu_layout("0-17;18-35")[1][:3]
    (18, 19, 20)
    >>> parse_cpu_layout("0-3,8 ; 4-7")
    ((0, 1, 2, 3, 8), (4, 5, 6, 7))
    >>> parse_cpu_layout("0-3;;4-7")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    hpcbench.errors.PlanError: --cpus: rank 1 has no CPUs in '0-3;;4-7' (rule 1: ...)
    """
    layout = []
    for rank, item in enumerate(_items(text, flag)):
        if not item:
            raise PlanError(
                f"{flag}: rank {rank} has no CPUs in {text!r} (rule 1: every rank is pinned)"
            )
        try:
            layout.append(parse_cpulist(item))
        except CpuListError as exc:
            raise PlanError(
                f"{flag}: rank {rank}: {exc} (a CPU list looks like '0-17,36-53')"
            ) from exc
    return tuple(layout)


def parse_gpu_layout(text: str, flag: str = "--gpus") -> tuple[tuple[int, ...], ...]:
    """Parse the seed's GPU layout: GPU indices per rank (``,``; ranges ``a-b``), ranks by ``;``.

    Order within a rank is kept: it becomes the rank's ``CUDA_VISIBLE_DEVICES`` order.

    >>> parse_gpu_layout("0,2;4,6")
    ((0, 2), (4, 6))
    >>> parse_gpu_layout("0;2;4;6")
    ((0,), (2,), (4,), (6,))
    >>> parse_gpu_layout("4-7;0-3")
    ((4, 5, 6, 7), (0, 1, 2, 3))
    >>> parse_gpu_layout("0,0;1")
    Traceback (most recent call last):
    ...
    hpcbench.errors.PlanError: --gpus: rank 0 lists GPU 0 twice in '0,0;1'
    """
    layout = []
    for rank, item in enumerate(_items(text, flag)):
        if not item:
            raise PlanError(
                f"{flag}: rank {rank} has an empty GPU list in {text!r} (drop --gpus for "
                f"CPU-only ranks)"
            )
        gpus: list[int] = []
        seen: set[int] = set()
        for word in item.split(","):
            word = word.strip()
            lo, dash, hi = word.partition("-")
            if not is_decimal(lo) or (dash and not is_decimal(hi)):
                raise PlanError(
                    f"{flag}: rank {rank}: {word!r} is not a GPU index in {text!r} (a GPU layout "
                    f"looks like '0,2;4,6')"
                )
            first, last = int(lo), int(hi) if dash else int(lo)
            if last < first:
                raise PlanError(f"{flag}: rank {rank}: range {word!r} ends before it starts")
            if last > MAX_GPU_INDEX:
                # Refuse before expanding: "0-99999999999" would otherwise never finish.
                raise PlanError(
                    f"{flag}: rank {rank}: GPU {last} in {text!r} is above the largest GPU "
                    f"index {MAX_GPU_INDEX}"
                )
            for gpu in range(first, last + 1):
                if gpu in seen:
                    raise PlanError(f"{flag}: rank {rank} lists GPU {gpu} twice in {text!r}")
                seen.add(gpu)
                gpus.append(gpu)
        layout.append(tuple(gpus))
    return tuple(layout)


def format_cpu_layout(layout: Sequence[Sequence[int]]) -> str:
    """The seed's spelling of per-rank CPU lists.

    >>> format_cpu_layout([range(18), range(18, 36)])
    '0-17;18-35'
    """
    return ";".join(format_cpulist(cpus) for cpus in layout)


def format_gpu_layout(layout: Sequence[Sequence[int]]) -> str:
    """The seed's spelling of per-rank GPU lists (order kept).

    >>> format_gpu_layout([(0, 2), (4, 6)])
    '0,2;4,6'
    >>> format_gpu_layout([(), ()])
    ';'
    """
    return ";".join(",".join(str(g) for g in gpus) for gpus in layout)


def _span(ids: Sequence[int] | set[int]) -> str:
    """A short list of ids: ``0-3,8``."""
    return format_cpulist(ids)


# ----------------------------------------------------------------------------- facts
def validate_layout(
    index: TopologyIndex,
    cpus: Sequence[Sequence[int]] | None,
    gpus: Sequence[Sequence[int]] | None,
) -> None:
    """Raise :class:`PlanError` for CPUs or GPUs that do not exist on the node."""
    if cpus is not None:
        known = index.cpu_core
        for rank, rank_cpus in enumerate(cpus):
            if not rank_cpus:
                raise PlanError(f"rank {rank} has no CPUs (rule 1: every rank is pinned)")
            missing = [c for c in rank_cpus if c not in known]
            if missing:
                raise PlanError(
                    f"--cpus: rank {rank}: CPU {_span(missing)} does not exist on this node "
                    f"(its CPUs are {_span(list(known))})"
                )
    if gpus is not None:
        valid = set(index.gpu_ids)
        for rank, rank_gpus in enumerate(gpus):
            missing = [g for g in rank_gpus if g not in valid]
            if missing:
                have = ",".join(str(g) for g in index.gpu_ids) or "none"
                raise PlanError(
                    f"--gpus: rank {rank}: GPU {','.join(str(g) for g in missing)} does not exist "
                    f"on this node (its GPUs are {have})"
                )


# ----------------------------------------------------------------------------- rules
def check_rules(
    index: TopologyIndex,
    cpus: Sequence[Sequence[int]],
    gpus: Sequence[Sequence[int]],
    granularity: Granularity = "socket",
    reserved_cpus: Sequence[int] = (),
) -> list[Violation]:
    """Every placement rule the per-node layout breaks, in rank order.

    ``cpus[r]`` and ``gpus[r]`` are local rank r's OS CPU ids and physical GPU indices; both
    must exist (see :func:`validate_layout`). GPUs that report no locality and GPUs without
    PCIe switch information never produce a locality or switch warning: nothing is invented
    on flat nodes.
    """
    violations = check_cpu_rules(index, cpus, granularity, reserved_cpus)
    core_domain = index.core_domain[granularity]
    cpu_core, core_numa = index.cpu_core, index.core_numa
    rank_cores = [{cpu_core[cpu] for cpu in rank_cpus} for rank_cpus in cpus]
    violations += check_gpu_rules(
        index,
        gpus,
        [frozenset(core_domain[c] for c in cores) for cores in rank_cores],
        [frozenset(core_numa[c] for c in cores) for cores in rank_cores],
        granularity,
    )
    violations.sort(key=lambda v: v.rank)
    return violations


def check_cpu_rules(
    index: TopologyIndex,
    cpus: Sequence[Sequence[int]],
    granularity: Granularity = "socket",
    reserved_cpus: Sequence[int] = (),
) -> list[Violation]:
    """Rule 1 (disjoint physical cores), the site's reserved cores and rule 4 (memory locality)."""
    violations: list[Violation] = []
    cpu_core = index.cpu_core
    domains = index.domains[granularity]
    core_domain = index.core_domain[granularity]
    nranks = len(cpus)

    rank_cores: list[dict[int, set[int]]] = []  # core id -> the rank's CPUs on it
    for rank_cpus in cpus:
        per_core: dict[int, set[int]] = {}
        for cpu in rank_cpus:
            per_core.setdefault(cpu_core[cpu], set()).add(cpu)
        rank_cores.append(per_core)
    rank_domains = [frozenset(core_domain[c] for c in per_core) for per_core in rank_cores]

    # Rule 1: CPUs and physical cores belong to one rank each.
    core_owners: dict[int, list[int]] = {}
    for rank, per_core in enumerate(rank_cores):
        shared: dict[int, list[int]] = {}  # earlier rank -> cores shared with it
        for core in per_core:
            owners = core_owners.setdefault(core, [])
            for other in owners:
                shared.setdefault(other, []).append(core)
            owners.append(rank)
        for other in sorted(shared):
            cores = shared[other]
            mine = {cpu for core in cores for cpu in per_core[core]}
            theirs = {cpu for core in cores for cpu in rank_cores[other][core]}
            same = mine & theirs
            if same:
                violations.append(
                    Violation(
                        rank, RULE_DISJOINT, f"CPUs {_span(same)} are also given to rank {other}"
                    )
                )
            sibling_cores = [c for c in cores if not (per_core[c] & rank_cores[other][c])]
            if sibling_cores:
                mine_s = {cpu for c in sibling_cores for cpu in per_core[c]}
                theirs_s = {cpu for c in sibling_cores for cpu in rank_cores[other][c]}
                violations.append(
                    Violation(
                        rank,
                        RULE_NO_OVERSUBSCRIPTION,
                        f"CPUs {_span(mine_s)} are hardware threads of the same "
                        f"{plural(len(sibling_cores), 'physical core')} as rank {other}'s "
                        f"CPUs {_span(theirs_s)}",
                    )
                )

    if reserved_cpus:
        reserved_cores = {cpu_core[c] for c in reserved_cpus if c in cpu_core}
        for rank, per_core in enumerate(rank_cores):
            hit = {cpu for core in per_core if core in reserved_cores for cpu in per_core[core]}
            if hit:
                violations.append(
                    Violation(
                        rank,
                        RULE_RESERVED,
                        f"CPUs {_span(hit)} are on cores the site reserves "
                        f"(reserved CPUs {_span(list(reserved_cpus))})",
                    )
                )

    # Rule 4: a rank whose CPUs span domains that other ranks also use cannot keep its memory local.
    for rank in range(nranks):
        spanned = rank_domains[rank]
        if len(spanned) < 2:
            continue
        others = sorted(o for o in range(nranks) if o != rank and rank_domains[o] & spanned)
        if others:
            where = " and ".join(domains[d].label for d in sorted(spanned))
            violations.append(
                Violation(
                    rank,
                    RULE_MEMORY_LOCAL,
                    f"its CPUs span {where}, which it shares with rank "
                    f"{', '.join(str(o) for o in others)}, so part of its memory is remote",
                )
            )
    violations.sort(key=lambda v: v.rank)
    return violations


def check_gpu_rules(
    index: TopologyIndex,
    gpus: Sequence[Sequence[int]],
    rank_domains: Sequence[frozenset[int]],
    rank_numa: Sequence[frozenset[int]],
    granularity: Granularity = "socket",
) -> list[Violation]:
    """One rank per GPU, rule 2 (GPUs local) and rule 3 (switch spread).

    ``rank_domains[r]`` are the positions in ``index.domains[granularity]`` and ``rank_numa[r]``
    the NUMA nodes of rank r's cores.
    """
    violations: list[Violation] = []
    domains = index.domains[granularity]
    gpu_domain = index.gpu_domain[granularity]
    switch = index.gpu_switch

    # Rule 1 for GPUs: one rank per GPU (sharing one needs MPS and is the user's explicit choice).
    gpu_owner: dict[int, int] = {}
    for rank, rank_gpus in enumerate(gpus):
        for gpu in rank_gpus:
            owner = gpu_owner.get(gpu)
            if owner is None:
                gpu_owner[gpu] = rank
            elif owner != rank:
                violations.append(
                    Violation(rank, RULE_GPU_SHARED, f"GPU {gpu} is also used by rank {owner}")
                )

    # Rule 2: each GPU with a known locality sits in one of the rank's domains.
    rule2 = RULE_GPU_LOCAL.format(domain="socket" if granularity == "socket" else "NUMA node")
    for rank, rank_gpus in enumerate(gpus):
        homes = rank_domains[rank]
        for gpu in rank_gpus:
            home = gpu_domain[gpu]
            if home is not None and home not in homes:
                where = " and ".join(domains[d].label for d in sorted(homes))
                violations.append(
                    Violation(
                        rank,
                        rule2,
                        f"GPU {gpu} is attached to {domains[home].label} but the rank's CPUs are "
                        f"on {where}",
                    )
                )

    # Rule 3: a rank's GPUs share a switch uplink only where no unused local GPU avoids it.
    if len(gpu_owner) < len(index.gpu_ids):
        load: dict[str, int] = {}
        for gpu in gpu_owner:
            load[switch[gpu]] = load.get(switch[gpu], 0) + 1
        for rank, rank_gpus in enumerate(gpus):
            found = _switch_violation(
                index,
                rank,
                rank_gpus,
                rank_domains[rank],
                rank_numa[rank],
                granularity,
                gpu_owner,
                load,
            )
            if found is not None:
                violations.append(found)
    violations.sort(key=lambda v: v.rank)
    return violations


def gpu_tier(
    index: TopologyIndex,
    gpu: int,
    numa_nodes: frozenset[int],
    domains: frozenset[int],
    granularity: Granularity,
) -> int:
    """How local a GPU is to a rank: 0 its NUMA node, 1 its domain, 2 unknown, 3 remote."""
    if index.gpu_numa[gpu] in numa_nodes:
        return 0
    home = index.gpu_domain[granularity][gpu]
    if home is None:
        return 2
    return 1 if home in domains else 3


def _switch_violation(
    index: TopologyIndex,
    rank: int,
    rank_gpus: Sequence[int],
    mine_domains: frozenset[int],
    mine_numa: frozenset[int],
    granularity: Granularity,
    gpu_owner: dict[int, int],
    load: dict[str, int],
) -> Violation | None:
    if len(rank_gpus) == 0:
        return None
    switch = index.gpu_switch
    own: dict[str, int] = {}
    for gpu in rank_gpus:
        own[switch[gpu]] = own.get(switch[gpu], 0) + 1
    free = [
        g
        for g in index.gpu_ids
        if g not in gpu_owner and gpu_tier(index, g, mine_numa, mine_domains, granularity) < 3
    ]
    if not free:
        return None
    for gpu in rank_gpus:
        here = switch[gpu]
        tier = gpu_tier(index, gpu, mine_numa, mine_domains, granularity)
        for alt in free:
            there = switch[alt]
            if there == here or gpu_tier(index, alt, mine_numa, mine_domains, granularity) > tier:
                continue
            own_there = own.get(there, 0)
            label = index.gpu_switch_label[gpu]
            if own_there + 1 < own[here]:
                together = ",".join(str(g) for g in rank_gpus if switch[g] == here)
                return Violation(
                    rank,
                    RULE_SWITCH_SPREAD,
                    f"GPUs {together} share PCIe switch {label} while GPU {alt} behind another "
                    f"switch is unused",
                )
            if own_there + 1 <= own[here] and load.get(there, 0) + 1 < load[here]:
                # Name the pair once: on the later rank, which could have avoided the earlier.
                others = sorted(
                    o for o in {gpu_owner[g] for g in gpu_owner if switch[g] == here} if o < rank
                )
                if not others:
                    continue
                return Violation(
                    rank,
                    RULE_SWITCH_SPREAD,
                    f"GPU {gpu} shares PCIe switch {label} with rank "
                    f"{', '.join(str(o) for o in others)} while GPU {alt} behind another switch "
                    f"is unused",
                )
    return None
