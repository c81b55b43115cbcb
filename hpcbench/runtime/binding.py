"""The binding a rank actually got, next to the one its plan asked for.

A rank reads its CPU affinity (``sched_getaffinity``), ``CUDA_VISIBLE_DEVICES`` and its memory
policy (``get_mempolicy`` through ctypes; ``/proc/self/status`` ``Mems_allowed_list`` as the
fallback and for the cpuset), records both in its metrics file and warns — or fails under
``--strict-binding`` — when they differ. The launcher side applies a binding without numactl
with :func:`apply_binding` (affinity and ``set_mempolicy`` are inherited across exec).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcbench.cpulist import format_cpulist, parse_cpulist
from hpcbench.plan.launch import cuda_visible_devices
from hpcbench.plan.model import RankPlacement

# (get_mempolicy, set_mempolicy) syscall numbers by machine.
_SYS_MEMPOLICY = {"x86_64": (239, 238), "aarch64": (236, 237), "arm64": (236, 237),
                  "ppc64le": (260, 261), "ppc64": (260, 261), "s390x": (269, 270),
                  "riscv64": (236, 237)}  # fmt: skip
# MPOL_* modes from linux/mempolicy.h; the high bits carry flags (MPOL_F_STATIC_NODES...).
MPOL_NAMES = {0: "default", 1: "preferred", 2: "bind", 3: "interleave", 4: "local",
              5: "preferred_many", 6: "weighted_interleave"}  # fmt: skip
MPOL_BIND = 2
_MPOL_MODE_MASK = 0xFF
_MAX_NODES = 1024


@dataclass(frozen=True, slots=True)
class ActualBinding:
    """What the rank got. ``mem_policy`` is "bind", "local", "default"... or "unknown"."""

    cpus: tuple[int, ...]
    cuda_visible_devices: str | None
    mem_policy: str
    mem_nodes: tuple[int, ...]
    mems_allowed: tuple[int, ...] = ()
    mismatches: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        """The rank file's ``binding_json`` attribute."""
        return {
            "cpus": list(self.cpus),
            "cuda_visible_devices": self.cuda_visible_devices,
            "mem_policy": self.mem_policy,
            "mem_nodes": list(self.mem_nodes),
            "mems_allowed": list(self.mems_allowed),
            "mismatches": list(self.mismatches),
        }


def _nodes_from_mask(words: Iterable[int], bits_per_word: int) -> tuple[int, ...]:
    """Node ids set in a bitmap given as machine words.

    >>> _nodes_from_mask([0b101, 0b1], 64)
    (0, 2, 64)
    """
    nodes = []
    for i, word in enumerate(words):
        for bit in range(bits_per_word):
            if word >> bit & 1:
                nodes.append(i * bits_per_word + bit)
    return tuple(nodes)


def _libc_syscall() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc.syscall


def read_mem_policy() -> tuple[str, tuple[int, ...]]:
    """This thread's memory policy and its node mask (``("unknown", ())`` when unreadable)."""
    numbers = _SYS_MEMPOLICY.get(platform.machine())
    if numbers is None:
        return "unknown", ()
    word_bits = ctypes.sizeof(ctypes.c_ulong) * 8
    mode = ctypes.c_int(0)
    mask = (ctypes.c_ulong * (_MAX_NODES // word_bits))()
    result = _libc_syscall()(
        ctypes.c_long(numbers[0]), ctypes.byref(mode), mask, ctypes.c_ulong(_MAX_NODES),
        ctypes.c_void_p(0), ctypes.c_ulong(0),
    )  # fmt: skip
    if result != 0:
        return "unknown", ()
    name = MPOL_NAMES.get(mode.value & _MPOL_MODE_MASK, f"mode{mode.value & _MPOL_MODE_MASK}")
    return name, _nodes_from_mask(list(mask), word_bits)


def set_mem_bind(nodes: Iterable[int]) -> None:
    """Bind this process's future allocations to ``nodes`` (``numactl --membind`` without numactl).

    Raises OSError when the kernel refuses (e.g. a node that does not exist).
    """
    node_list = tuple(nodes)
    numbers = _SYS_MEMPOLICY.get(platform.machine())
    if numbers is None or not node_list:
        return
    word_bits = ctypes.sizeof(ctypes.c_ulong) * 8
    mask = (ctypes.c_ulong * (_MAX_NODES // word_bits))()
    for node in node_list:
        mask[node // word_bits] |= 1 << (node % word_bits)
    result = _libc_syscall()(
        ctypes.c_long(numbers[1]), ctypes.c_int(MPOL_BIND), mask, ctypes.c_ulong(_MAX_NODES)
    )
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"set_mempolicy(MPOL_BIND, {format_cpulist(node_list)})")


def apply_binding(placement: RankPlacement) -> None:
    """Pin this process as ``placement`` says (run in the child between fork and exec)."""
    os.sched_setaffinity(0, placement.cpus)
    if placement.mem_nodes:
        set_mem_bind(placement.mem_nodes)


def read_mems_allowed(status_path: Path = Path("/proc/self/status")) -> tuple[int, ...]:
    """The cpuset's allowed memory nodes (``Mems_allowed_list``), () when unreadable."""
    try:
        for line in status_path.read_text().splitlines():
            if line.startswith("Mems_allowed_list:"):
                return parse_cpulist(line.split(":", 1)[1].strip())
    except (OSError, ValueError):
        pass
    return ()


def node_of_cpus(sysfs_root: Path = Path("/sys/devices/system/node")) -> dict[int, int]:
    """OS CPU id -> NUMA node, from sysfs ({} when not available)."""
    mapping: dict[int, int] = {}
    try:
        entries = list(sysfs_root.glob("node[0-9]*"))
    except OSError:
        return mapping
    for entry in entries:
        try:
            cpus = parse_cpulist((entry / "cpulist").read_text().strip())
        except (OSError, ValueError):
            continue
        for cpu in cpus:
            mapping[cpu] = int(entry.name[4:])
    return mapping


def read_actual_binding(env: Mapping[str, str]) -> ActualBinding:
    """Read this process's binding (affinity, visible GPUs, memory policy)."""
    policy, nodes = read_mem_policy()
    mems_allowed = read_mems_allowed()
    if policy in ("default", "local", "unknown") and not nodes:
        nodes = mems_allowed
    return ActualBinding(
        cpus=tuple(sorted(os.sched_getaffinity(0))),
        cuda_visible_devices=env.get("CUDA_VISIBLE_DEVICES"),
        mem_policy=policy,
        mem_nodes=tuple(nodes),
        mems_allowed=mems_allowed,
    )


def compare_binding(
    placement: RankPlacement,
    actual: ActualBinding,
    *,
    under_slurm: bool = False,
    cpu_nodes: Mapping[int, int] | None = None,
) -> tuple[str, ...]:
    """Differences between the planned and the actual binding, one sentence each.

    ``cpu_nodes`` maps CPUs to NUMA nodes (to judge a "local"/"default" policy).

    >>> plan = RankPlacement(0, 0, 0, 0, 0, (0, 1), (), (0,))
    >>> compare_binding(plan, ActualBinding((0, 1), None, "bind", (0,)))
    ()
    >>> compare_binding(plan, ActualBinding((0, 1, 2, 3), None, "bind", (1,)))
    ('cpus: planned 0-1, got 0-3', 'memory: planned bind to node 0, got bind to 1')
    """
    problems: list[str] = []
    if set(actual.cpus) != set(placement.cpus):
        problems.append(
            f"cpus: planned {format_cpulist(placement.cpus)}, got {format_cpulist(actual.cpus)}"
        )
    if placement.gpus:
        wanted = cuda_visible_devices(placement)
        got = actual.cuda_visible_devices
        if got is None:
            problems.append(f"gpus: planned CUDA_VISIBLE_DEVICES={wanted}, variable not set")
        elif got != wanted:
            count = len([x for x in got.split(",") if x.strip()])
            # Slurm with cgroup ConstrainDevices renumbers a task's GPUs from 0: only the
            # count can be checked there.
            renumbered = under_slurm and got == ",".join(str(i) for i in range(len(placement.gpus)))
            if not renumbered:
                problems.append(f"gpus: planned CUDA_VISIBLE_DEVICES={wanted}, got {got}")
            elif count != len(placement.gpus):
                problems.append(f"gpus: planned {len(placement.gpus)} GPUs, {count} visible")
    if placement.mem_nodes:
        problems.extend(_memory_mismatch(placement, actual, cpu_nodes))
    return tuple(problems)


def _memory_mismatch(
    placement: RankPlacement, actual: ActualBinding, cpu_nodes: Mapping[int, int] | None
) -> list[str]:
    wanted = set(placement.mem_nodes)
    planned = f"bind to node {format_cpulist(sorted(wanted))}"
    if actual.mem_policy in ("bind", "preferred", "preferred_many", "interleave"):
        if set(actual.mem_nodes) != wanted:
            got = f"{actual.mem_policy} to {format_cpulist(actual.mem_nodes)}"
            return [f"memory: planned {planned}, got {got}"]
        return []
    if actual.mem_policy in ("default", "local"):
        # Local allocation lands on the node of the CPU that touches the page: right exactly
        # when every CPU of the rank sits on a planned node (or the cpuset allows only those).
        if actual.mems_allowed and set(actual.mems_allowed) <= wanted:
            return []
        nodes = {cpu_nodes[c] for c in actual.cpus if c in cpu_nodes} if cpu_nodes else set()
        if nodes and nodes <= wanted:
            return []
        where = f"CPUs on node {format_cpulist(sorted(nodes))}" if nodes else "unknown nodes"
        return [f"memory: planned {planned}, got {actual.mem_policy} allocation ({where})"]
    return [f"memory: planned {planned}, policy could not be read"]


# ------------------------------------------------------------------------- GPU identity
# srun --gpu-bind=verbose writes this into the task's stderr before the task starts, e.g.
# "gpu-bind: usable_gres=0x5; bit_alloc=0xF; local_inx=4; global_list=0,2; local_list=0,1".
# global_list holds the node's GRES indices (gres.conf order), which stay the same under
# cgroup ConstrainDevices while CUDA_VISIBLE_DEVICES is renumbered from 0.
_GPU_BIND_LINE = re.compile(r"^gpu-bind:.*?\bglobal_list=([0-9,]*)", re.MULTILINE)
_STDERR_HEAD_BYTES = 65536


def parse_gpu_bind(text: str) -> tuple[int, ...] | None:
    """The GPUs srun bound the task to (``global_list``); None unless exactly one report.

    >>> parse_gpu_bind("gpu-bind: usable_gres=0x3; bit_alloc=0xF; local_inx=0; "
    ...                "global_list=0,1; local_list=0,1\\nrank 1: INFO ...")
    (0, 1)
    >>> parse_gpu_bind("no report") is None
    True
    """
    found = _GPU_BIND_LINE.findall(text)
    if len(found) != 1:
        # Several tasks writing one file: a line cannot be attributed to this rank.
        return None
    return tuple(int(x) for x in found[0].split(",") if x)


def own_stderr_head(fd: int = 2) -> str | None:
    """The start of the file this process's stderr writes to (None when not a regular file).

    srun's verbose binding reports precede everything the rank writes there.
    """
    try:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if not Path(path).is_file():
            return None
        with open(path, "rb") as stream:
            return stream.read(_STDERR_HEAD_BYTES).decode(errors="replace")
    except OSError:
        return None


def normalise_bus_id(bus_id: str) -> str:
    """A PCI bus id as sysfs writes it (4-digit domain, lower case).

    >>> normalise_bus_id("00000000:1B:00.0")
    '0000:1b:00.0'
    >>> normalise_bus_id("0000:1b:00.0")
    '0000:1b:00.0'
    """
    text = bus_id.strip().lower()
    domain, sep, rest = text.partition(":")
    if sep and rest.count(":") == 1:
        try:
            return f"{int(domain, 16):04x}:{rest}"
        except ValueError:
            pass
    return text


def nvml_visible_bus_ids(cuda_visible: str | None) -> list[str] | None:
    """PCI bus ids of the GPUs ``CUDA_VISIBLE_DEVICES`` names, asked of NVML; None without it.

    An entry is a UUID (``GPU-…``) or an index; an index is taken in NVML's order (PCI bus
    order), which is CUDA's with ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` and on nodes of one GPU model.
    """
    if not cuda_visible:
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no driver, no library: identity comes from elsewhere or not at all
        return None
    try:
        ids = []
        for entry in (e.strip() for e in cuda_visible.split(",") if e.strip()):
            if entry.isdigit():
                handle = pynvml.nvmlDeviceGetHandleByIndex(int(entry))
            else:
                handle = pynvml.nvmlDeviceGetHandleByUUID(entry)
            bus_id = pynvml.nvmlDeviceGetPciInfo(handle).busId
            ids.append(normalise_bus_id(bus_id.decode() if isinstance(bus_id, bytes) else bus_id))
        return ids
    except pynvml.NVMLError:
        return None
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def topology_bus_ids(topology_json: Mapping[str, Any] | None) -> dict[int, str]:
    """GPU index -> PCI bus id from a run's ``topology.json`` (GPUs without one left out).

    >>> topology_bus_ids({"gpus": [{"index": 0, "pci_bus_id": "0000:1b:00.0"},
    ...                            {"index": 1, "pci_bus_id": ""}]})
    {0: '0000:1b:00.0'}
    """
    gpus = (topology_json or {}).get("gpus") or []
    return {
        int(g["index"]): str(g["pci_bus_id"])
        for g in gpus
        if isinstance(g, Mapping) and g.get("pci_bus_id") and "index" in g
    }


def gpu_identity(
    placement: RankPlacement,
    *,
    planned_bus_ids: Mapping[int, str] | None = None,
    nvml_bus_ids: Sequence[str] | None = None,
    gpu_bind_global: Sequence[int] | None = None,
) -> dict[str, Any] | None:
    """Which GPUs the rank really holds, by identity: PCI bus ids (NVML) where they and the
    plan's are known, else the node's global GPU indices from srun's gpu-bind report; None
    when neither is available (only ``CUDA_VISIBLE_DEVICES`` can be compared then).

    >>> plan = RankPlacement(1, 0, 1, 1, 1, (1,), (2, 3), (1,))
    >>> gpu_identity(plan, gpu_bind_global=(0, 1))["actual"]
    [0, 1]
    >>> gpu_identity(plan) is None
    True
    """
    if not placement.gpus:
        return None
    planned_ids = [(planned_bus_ids or {}).get(g) for g in placement.gpus]
    if nvml_bus_ids is not None and all(planned_ids):
        return {
            "source": "nvml",
            "ids": "pci_bus_id",
            "planned": [normalise_bus_id(str(b)) for b in planned_ids],
            "actual": list(nvml_bus_ids),
        }
    if gpu_bind_global is not None:
        return {
            "source": "slurm_gpu_bind",
            "ids": "global_index",
            "planned": list(placement.gpus),
            "actual": list(gpu_bind_global),
        }
    return None


def gpu_identity_mismatch(identity: Mapping[str, Any] | None) -> str | None:
    """A sentence when the GPUs held are not the planned ones (as sets), else None.

    >>> gpu_identity_mismatch({"source": "slurm_gpu_bind", "ids": "global_index",
    ...                        "planned": [2, 3], "actual": [0, 1]})
    'gpus: planned GPUs 2,3, srun bound global GPUs 0,1 (gpu-bind global_list)'
    """
    if not identity or sorted(map(str, identity["planned"])) == sorted(
        map(str, identity["actual"])
    ):
        return None
    planned = ",".join(map(str, identity["planned"]))
    actual = ",".join(map(str, identity["actual"]))
    if identity["source"] == "nvml":
        return f"gpus: planned PCI bus ids {planned}, NVML says the rank holds {actual}"
    return f"gpus: planned GPUs {planned}, srun bound global GPUs {actual} (gpu-bind global_list)"
