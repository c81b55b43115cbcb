"""Pure functions from a plan to launch settings: numactl, CUDA_VISIBLE_DEVICES, srun binding.

Slurm's per-task binding lists (``mask_cpu:``, ``map_gpu:``, ``map_mem:``) are applied per node
by local task id, so they are built from the ranks of one node.
"""

from __future__ import annotations

from hpcbench.cpulist import format_cpulist, format_hex_mask
from hpcbench.plan.model import Plan, RankPlacement


def numactl_args(placement: RankPlacement, localalloc: bool = False) -> list[str]:
    """The ``numactl`` prefix that pins a rank's CPUs and memory.

    >>> r = RankPlacement(0, 0, 0, 0, 0, (0, 1, 2, 3), (0, 2), (0,))
    >>> numactl_args(r)
    ['numactl', '--physcpubind=0-3', '--membind=0']
    >>> numactl_args(r, localalloc=True)
    ['numactl', '--physcpubind=0-3', '--localalloc']
    """
    args = ["numactl", f"--physcpubind={format_cpulist(placement.cpus)}"]
    if localalloc or not placement.mem_nodes:
        args.append("--localalloc")
    else:
        args.append(f"--membind={format_cpulist(placement.mem_nodes)}")
    return args


def cuda_visible_devices(placement: RankPlacement) -> str:
    """``CUDA_VISIBLE_DEVICES`` for a rank: its physical GPU indices, in plan order.

    >>> cuda_visible_devices(RankPlacement(0, 0, 0, 0, 0, (0,), (4, 6), (1,)))
    '4,6'
    """
    return ",".join(str(g) for g in placement.gpus)


def _uses_new_spelling(slurm_version: str | None) -> bool:
    """Slurm 23.11 renamed ``map_gpu:``/``mask_gpu:`` to ``map:``/``mask:`` (old kept as alias).

    >>> _uses_new_spelling("22.05.8"), _uses_new_spelling("23.11.1"), _uses_new_spelling(None)
    (False, True, False)
    """
    if not slurm_version:
        return False
    try:
        major, minor = (int(x) for x in slurm_version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (23, 11)


def slurm_cpu_bind(plan: Plan, node: int = 0) -> str:
    """``--cpu-bind`` value: one hex mask of OS CPU ids per local task.

    mask_cpu takes OS CPU ids; gres.conf ``Cores=`` takes Slurm's logical core index, a
    different numbering, so masks are never derived from gres.conf.

    >>> p = Plan((RankPlacement(0, 0, 0, 0, 0, tuple(range(18)), (0,), (0,)),
    ...           RankPlacement(1, 0, 1, 1, 1, tuple(range(18, 36)), (4,), (1,))), (), "t")
    >>> slurm_cpu_bind(p)
    'verbose,mask_cpu:0x3FFFF,0xFFFFC0000'
    """
    masks = ",".join(format_hex_mask(r.cpus) for r in plan.node_ranks(node))
    return f"verbose,mask_cpu:{masks}"


def slurm_gpu_bind(plan: Plan, node: int = 0, slurm_version: str | None = None) -> str | None:
    """``--gpu-bind`` value, or None when no rank has a GPU.

    One GPU per task uses ``map_gpu`` (global index list); several use ``mask_gpu`` (one hex
    mask per task). Indices are the node's global GPU indices: under cgroup ConstrainDevices
    each task then sees its GPUs renumbered from 0, which the rank records.

    >>> p = Plan((RankPlacement(0, 0, 0, 0, 0, (0,), (0, 2), (0,)),
    ...           RankPlacement(1, 0, 1, 1, 1, (1,), (4, 6), (1,))), (), "t")
    >>> slurm_gpu_bind(p)
    'verbose,mask_gpu:0x5,0x50'
    >>> slurm_gpu_bind(p, slurm_version="23.11.4")
    'verbose,mask:0x5,0x50'
    >>> one = Plan((RankPlacement(0, 0, 0, 0, 0, (0,), (3,), (0,)),), (), "t")
    >>> slurm_gpu_bind(one)
    'verbose,map_gpu:3'
    """
    ranks = plan.node_ranks(node)
    if not any(r.gpus for r in ranks):
        return None
    new = _uses_new_spelling(slurm_version)
    if all(len(r.gpus) == 1 for r in ranks):
        prefix = "map:" if new else "map_gpu:"
        return "verbose," + prefix + ",".join(str(r.gpus[0]) for r in ranks)
    prefix = "mask:" if new else "mask_gpu:"
    return "verbose," + prefix + ",".join(format_hex_mask(r.gpus) for r in ranks)


def slurm_mem_bind(plan: Plan, node: int = 0) -> str | None:
    """``--mem-bind`` value: the NUMA node of each local task, or None when any rank has none.

    >>> p = Plan((RankPlacement(0, 0, 0, 0, 0, (0,), (), (0,)),
    ...           RankPlacement(1, 0, 1, 1, 1, (1,), (), (1,))), (), "t")
    >>> slurm_mem_bind(p)
    'verbose,map_mem:0,1'
    >>> two = Plan((RankPlacement(0, 0, 0, 0, 0, (0,), (), (0, 1)),), (), "t")
    >>> slurm_mem_bind(two)
    'verbose,mask_mem:0x3'
    """
    ranks = plan.node_ranks(node)
    if not ranks or any(not r.mem_nodes for r in ranks):
        return None
    if all(len(r.mem_nodes) == 1 for r in ranks):
        return "verbose,map_mem:" + ",".join(str(r.mem_nodes[0]) for r in ranks)
    return "verbose,mask_mem:" + ",".join(format_hex_mask(r.mem_nodes) for r in ranks)
