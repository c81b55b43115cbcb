"""Human views of a plan: a table per rank and a small text picture of the node.

The picture shows each socket and NUMA node with one character per physical core (the rank
that owns it; ``.`` free, ``r`` reserved for the system, ``!`` shared by several ranks) and the
GPUs grouped by PCIe switch with the rank using each. Every node of a plan has the same layout,
so node 0 stands for all of them.
"""

from __future__ import annotations

from collections.abc import Sequence

from hpcbench.cpulist import format_cpulist
from hpcbench.plan.index import topology_index
from hpcbench.plan.model import Plan
from hpcbench.plan.planner import DATA_ROOT_PLACEHOLDER
from hpcbench.text import format_table
from hpcbench.topology.model import Topology

RANK_CHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
# Below the table when the plan has no data root (the planner's "{data_root}" placeholder).
DATA_NOTE = (
    "data dir -: no data root (--data-root DIR, or the site's data_root); with --stage-data "
    "each rank stages its data shard in /dev/shm instead"
)
CORES_PER_LINE = 64


def rank_char(local_rank: int) -> str:
    """The character that marks a rank's cores in the picture.

    >>> rank_char(3), rank_char(10), rank_char(70)
    ('3', 'a', '#')
    """
    return RANK_CHARS[local_rank] if local_rank < len(RANK_CHARS) else "#"


def _cell(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


def _data_dir(data_dir: str | None) -> str:
    """A data dir as the table shows it: ``-`` while its root is the planner's placeholder.

    >>> _data_dir("{data_root}/rank00001"), _data_dir("/dev/shm/x/rank00001")
    ('-', '/dev/shm/x/rank00001')
    """
    return "-" if data_dir is None or DATA_ROOT_PLACEHOLDER in data_dir else _cell(data_dir)


def format_plan_table(plan: Plan) -> str:
    """One row per rank of node 0 (the others repeat it), aligned columns.

    >>> from hpcbench.plan.model import RankPlacement
    >>> p = Plan((RankPlacement(0, 0, 0, 0, 0, (0, 1, 2), (0, 2), (0,), "/d/rank00000"),), (), "t")
    >>> print(format_plan_table(p))
    rank  node  local  socket  numa  cpus  gpus  mem  data dir
       0     0      0       0     0  0-2   0,2   0    /d/rank00000
    """
    header = ("rank", "node", "local", "socket", "numa", "cpus", "gpus", "mem", "data dir")
    rows = [
        (
            str(r.rank),
            str(r.node),
            str(r.local_rank),
            _cell(r.socket),
            _cell(r.numa_node),
            format_cpulist(r.cpus),
            _cell(",".join(str(g) for g in r.gpus)),
            _cell(format_cpulist(r.mem_nodes)),
            _data_dir(r.data_dir),
        )
        for r in plan.node_ranks(0)
    ]
    # rank..numa are right-aligned numbers; the rest read left to right.
    right = [True] * 5 + [False] * 4
    lines = format_table(header, rows, right=right, rule=False).splitlines()
    if any(DATA_ROOT_PLACEHOLDER in (r.data_dir or "") for r in plan.ranks):
        lines.append(DATA_NOTE)
    if plan.nodes > 1:
        per_node = plan.ranks_per_node
        others = "node 1 repeats" if plan.nodes == 2 else f"nodes 1-{plan.nodes - 1} repeat"
        lines.append(f"({others} this layout: rank = node x {per_node} + local rank)")
    return "\n".join(lines)


def format_picture(plan: Plan, topology: Topology, reserved_cpus: Sequence[int] = ()) -> str:
    """Sockets, NUMA nodes, cores and GPUs of node 0 with the ranks placed on them."""
    ranks = plan.node_ranks(0)
    cpu_rank: dict[int, set[int]] = {}
    gpu_rank: dict[int, list[int]] = {}
    for r in ranks:
        for cpu in r.cpus:
            cpu_rank.setdefault(cpu, set()).add(r.local_rank)
        for gpu in r.gpus:
            gpu_rank.setdefault(gpu, []).append(r.local_rank)
    reserved = set(reserved_cpus)
    # The index also places GPUs that give only a local CPU list (numa_node unknown).
    gpu_numa = topology_index(topology).gpu_numa

    def core_char(cpus: Sequence[int]) -> str:
        owners = {rank for cpu in cpus for rank in cpu_rank.get(cpu, ())}
        if len(owners) > 1:
            return "!"
        if owners:
            return rank_char(owners.pop())
        return "r" if reserved & set(cpus) else "."

    def gpu_text(index: int) -> str:
        users = gpu_rank.get(index)
        who = "free" if not users else "rank " + ",".join(str(u) for u in users)
        return f"GPU {index} [{who}]"

    def gpu_lines(indices: list[int], indent: str) -> list[str]:
        by_switch: dict[str | None, list[int]] = {}
        for index in indices:
            by_switch.setdefault(topology.gpu(index).pcie_switch, []).append(index)
        out = []
        for switch, members in by_switch.items():
            label = f"switch {switch}: " if switch is not None else ""
            out.append(indent + label + "  ".join(gpu_text(g) for g in members))
        return out

    lines: list[str] = []
    for package in topology.packages:
        lines.append(f"socket {package.id}")
        for node_id in package.numa_nodes:
            cores = [
                c for c in topology.cores if c.package == package.id and c.numa_node == node_id
            ]
            chars = "".join(core_char(c.cpus) for c in cores)
            head = f"  NUMA {node_id}  cores "
            chunks = [chars[i : i + CORES_PER_LINE] for i in range(0, len(chars), CORES_PER_LINE)]
            lines.append(head + (chunks[0] if chunks else ""))
            lines.extend(" " * len(head) + chunk for chunk in chunks[1:])
            local = [g.index for g in topology.gpus if gpu_numa[g.index] == node_id]
            lines.extend(gpu_lines(local, " " * len(head)))
    placed = {n for p in topology.packages for n in p.numa_nodes}
    elsewhere = [g.index for g in topology.gpus if gpu_numa[g.index] not in placed]
    if elsewhere:
        lines.append("GPUs that report no locality (any rank may use them)")
        lines.extend(gpu_lines(elsewhere, "  "))
    lines.append(
        "(one character per physical core: the rank using it; . free, r reserved, ! several ranks)"
    )
    return "\n".join(lines)


def draw_plan(plan: Plan, topology: Topology, reserved_cpus: Sequence[int] = ()) -> str:
    """Table, picture and warnings: what ``hpcbench plan`` prints."""
    parts = [
        f"plan: {plan.ranks_per_node} rank{'s' if plan.ranks_per_node != 1 else ''} per node "
        f"x {plan.nodes} node{'s' if plan.nodes != 1 else ''} on {plan.source}",
        "",
        format_plan_table(plan),
        "",
        format_picture(plan, topology, reserved_cpus),
    ]
    if plan.warnings:
        parts.append("")
        parts.append(f"warnings (accepted, {len(plan.warnings)}):")
        parts.extend(f"  - {w}" for w in plan.warnings)
    return "\n".join(parts)
