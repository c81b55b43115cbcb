"""The sysfs reader: hwloc's real snapshots (checked against lstopo's own output) and synthetic
trees for what real clusters have and the snapshots lack."""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path

import pytest

from hpcbench.cli import main
from hpcbench.cpulist import parse_cpulist
from hpcbench.errors import TopologyError
from hpcbench.topology.sysfs import normalize_bus_id, read_sysfs
from tests.sysfs_tree import (
    PciFunction,
    add_virtual_netdev,
    make_sysfs,
    set_port_type,
    smt_cpus,
)

SNAPSHOTS = ["16em64t-4s2c2t", "8em64t-2s2ca2c"]


# ------------------------------------------------------------------------ lstopo's answer
def parse_console(text: str) -> dict[str, dict[int, set[int]] | set[frozenset[int]]]:
    """Packages, NUMA nodes and cores (OS CPU numbers) from an ``lstopo`` console listing.

    The listing is an indented tree: a PU belongs to every object above it; a NUMANode is a
    memory child of the object it is listed under, so its CPUs are that object's PUs.
    """
    lines = [ln for ln in text.splitlines() if re.match(r"\s*\w+ L#\d+", ln)]
    parsed = []
    for line in lines:
        match = re.match(r"(\s*)(\w+) L#\d+ \(P#(\d+)", line)
        kind_match = re.match(r"(\s*)(\w+) L#\d+", line)
        assert kind_match is not None
        indent, kind = len(kind_match.group(1)), kind_match.group(2)
        os_index = int(match.group(3)) if match else None
        parsed.append((indent, kind, os_index))

    def subtree_pus(i: int) -> set[int]:
        indent = parsed[i][0]
        pus = set()
        for j in range(i + 1, len(parsed)):
            if parsed[j][0] <= indent:
                break
            if parsed[j][1] == "PU":
                pus.add(parsed[j][2])
        return pus

    def parent(i: int) -> int | None:
        for j in range(i - 1, -1, -1):
            if parsed[j][0] < parsed[i][0]:
                return j
        return None

    packages: dict[int, set[int]] = {}
    numa: dict[int, set[int]] = {}
    cores: set[frozenset[int]] = set()
    all_pus = {p[2] for p in parsed if p[1] == "PU"}
    for i, (_, kind, os_index) in enumerate(parsed):
        if kind == "Package":
            packages[os_index] = subtree_pus(i)
        elif kind == "Core":
            cores.add(frozenset(subtree_pus(i)))
        elif kind == "NUMANode":
            up = parent(i)
            numa[os_index] = all_pus if up is None else subtree_pus(up)
    return {"packages": packages, "numa": numa, "cores": cores}


@pytest.fixture(params=SNAPSHOTS)
def snapshot(request: pytest.FixtureRequest, hwloc_fixtures: Path, tmp_path: Path) -> tuple:
    name = request.param
    with tarfile.open(hwloc_fixtures / f"{name}.tar.bz2") as tar:
        tar.extractall(tmp_path, filter="tar")
    root = tmp_path / name
    assert (root / "sys").is_dir()
    expected = parse_console((hwloc_fixtures / f"{name}.console").read_text())
    return root, expected


def test_snapshot_matches_lstopo_through_cli(
    snapshot: tuple, capsys: pytest.CaptureFixture
) -> None:
    root, expected = snapshot
    with pytest.raises(SystemExit) as exit_:
        main(["topo", "--sysfs-root", str(root), "--json"])
    assert exit_.value.code == 0
    data = json.loads(capsys.readouterr().out)
    assert {p["id"]: set(p["cpus"]) for p in data["packages"]} == expected["packages"]
    assert {n["id"]: set(n["cpus"]) for n in data["numa_nodes"]} == expected["numa"]
    assert {frozenset(c["cpus"]) for c in data["cores"]} == expected["cores"]
    for package in data["packages"]:
        assert package["numa_nodes"] == sorted(
            n for n, cpus in expected["numa"].items() if cpus & set(package["cpus"])
        )


def test_console_parser_reads_a_nested_numa_listing() -> None:
    # The parser itself must handle hwloc 2's NUMA-under-package listing, not only one node.
    text = """Machine (P#0 total=64GiB)
  Package L#0 (P#0)
    NUMANode L#0 (P#0 local=32GiB)
    Core L#0 (P#0)
      PU L#0 (P#0)
      PU L#1 (P#2)
  Package L#1 (P#1)
    NUMANode L#1 (P#1 local=32GiB)
    Core L#1 (P#0)
      PU L#2 (P#1)
      PU L#3 (P#3)
"""
    parsed = parse_console(text)
    assert parsed["packages"] == {0: {0, 2}, 1: {1, 3}}
    assert parsed["numa"] == {0: {0, 2}, 1: {1, 3}}
    assert parsed["cores"] == {frozenset({0, 2}), frozenset({1, 3})}


# ------------------------------------------------------------------------ synthetic trees
def two_socket(tmp_path: Path, **kwargs) -> Path:
    cpus = smt_cpus(2, 4)  # package 0: 0-3 + 8-11, package 1: 4-7 + 12-15
    numa = {0: [0, 1, 2, 3, 8, 9, 10, 11], 1: [4, 5, 6, 7, 12, 13, 14, 15]}
    return make_sysfs(tmp_path, cpus, numa, **kwargs)


def test_two_sockets_with_hyperthreads(tmp_path: Path) -> None:
    topo = read_sysfs(two_socket(tmp_path))
    assert [(p.id, p.cpus) for p in topo.packages] == [
        (0, (0, 1, 2, 3, 8, 9, 10, 11)),
        (1, (4, 5, 6, 7, 12, 13, 14, 15)),
    ]
    assert [c.cpus for c in topo.cores if c.package == 1] == [(4, 12), (5, 13), (6, 14), (7, 15)]
    assert [(n.id, n.package, n.memory_mb) for n in topo.numa_nodes] == [
        (0, 0, 16384),
        (1, 1, 16384),
    ]
    assert topo.threads_per_core == 2
    assert topo.source == f"sysfs:{tmp_path}"


def test_offline_cpus_are_left_out(tmp_path: Path) -> None:
    # CPU 13 (second thread of core 5) and all of core 2 (CPUs 2, 10) are offline.
    topo = read_sysfs(two_socket(tmp_path, online=[c for c in range(16) if c not in (2, 10, 13)]))
    assert 13 not in topo.cpus and 2 not in topo.cpus and 10 not in topo.cpus
    core5 = next(c for c in topo.cores if 5 in c.cpus)
    assert core5.cpus == (5,)
    assert len(topo.cores) == 7
    assert topo.numa_node(0).cpus == (0, 1, 3, 8, 9, 11)


def test_offline_cpus_without_the_online_list(tmp_path: Path) -> None:
    # Older kernels: no cpu/online, only cpuN/online files.
    topo = read_sysfs(
        two_socket(tmp_path, online=[c for c in range(16) if c != 7], write_online_file=False)
    )
    assert topo.cpus == tuple(c for c in range(16) if c != 7)


def test_sparse_and_interleaved_numbering(tmp_path: Path) -> None:
    # Even CPUs on socket 0, odd on socket 1 (like hwloc's 24em64t), with gaps (no 8-11).
    present = [0, 1, 2, 3, 4, 5, 6, 7, 12, 13, 14, 15]
    cpus = {c: (c % 2, c // 2, (c,)) for c in present}
    numa = {0: [c for c in present if c % 2 == 0], 1: [c for c in present if c % 2 == 1]}
    topo = read_sysfs(make_sysfs(tmp_path, cpus, numa))
    assert topo.package(0).cpus == (0, 2, 4, 6, 12, 14)
    assert topo.package(1).cpus == (1, 3, 5, 7, 13, 15)
    assert topo.numa_node(1).package == 1
    assert topo.threads_per_core == 1


def test_several_numa_nodes_per_package(tmp_path: Path) -> None:
    # One 8-core package in NPS4-like mode: 4 NUMA nodes of 2 cores (4 CPUs) each.
    cpus = smt_cpus(1, 8)
    numa = {n: [2 * n, 2 * n + 1, 2 * n + 8, 2 * n + 9] for n in range(4)}
    topo = read_sysfs(make_sysfs(tmp_path, cpus, numa))
    assert topo.package(0).numa_nodes == (0, 1, 2, 3)
    assert topo.numa_node(2).cpus == (4, 5, 12, 13)
    assert {c.numa_node for c in topo.cores if 5 in c.cpus} == {2}


def test_numa_node_without_cpus(tmp_path: Path) -> None:
    cpus = smt_cpus(1, 2)
    topo = read_sysfs(
        make_sysfs(tmp_path, cpus, {0: [0, 1, 2, 3], 1: []}, node_memory_kb={1: 1024**2 * 96})
    )
    node = topo.numa_node(1)
    assert node.cpus == () and node.package is None and node.memory_mb == 96 * 1024
    assert topo.package(0).numa_nodes == (0,)


def test_no_node_folder_means_one_numa_node(tmp_path: Path) -> None:
    topo = read_sysfs(make_sysfs(tmp_path, smt_cpus(2, 2), None))
    assert [(n.id, n.cpus) for n in topo.numa_nodes] == [(0, tuple(range(8)))]
    assert any("one NUMA node assumed" in n for n in topo.notes)


def test_siblings_from_masks_when_lists_are_missing(tmp_path: Path) -> None:
    topo = read_sysfs(two_socket(tmp_path, sibling_lists=False))
    assert {c.cpus for c in topo.cores} == {(i, i + 8) for i in range(8)}


def test_missing_package_id_counts_as_package_zero(tmp_path: Path) -> None:
    root = make_sysfs(tmp_path, {0: (0, 0, (0,)), 1: (0, 1, (1,))}, {0: [0, 1]})
    (root / "sys/devices/system/cpu/cpu1/topology/physical_package_id").unlink()
    topo = read_sysfs(root)
    assert topo.package(0).cpus == (0, 1)
    assert any("no physical package id" in n for n in topo.notes)


def test_not_a_sysfs_root(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="no sys/devices/system/cpu"):
        read_sysfs(tmp_path)


def test_cpu_in_two_numa_nodes_is_an_error(tmp_path: Path) -> None:
    root = make_sysfs(tmp_path, smt_cpus(1, 2), {0: [0, 1, 2, 3], 1: [3]})
    with pytest.raises(TopologyError, match="CPU 3 is in NUMA nodes 0 and 1"):
        read_sysfs(root)


# ------------------------------------------------------------------------ GPUs and PCIe
RP0, RP1 = "0000:00:01.0", "0000:80:01.0"


def gpu(address: str, bridges: tuple[str, ...], numa: int | None, cpus, **kw) -> PciFunction:
    return PciFunction(address=address, bridges=bridges, numa_node=numa, local_cpus=cpus, **kw)


def test_gpus_with_numa_nodes_and_local_cpus(tmp_path: Path) -> None:
    s0 = [0, 1, 2, 3, 8, 9, 10, 11]
    s1 = [4, 5, 6, 7, 12, 13, 14, 15]
    pci = [
        gpu("0000:81:00.0", (RP1,), 1, s1, domain_root="pci0000:80"),
        gpu("0000:01:00.0", (RP0,), 0, s0),
        # The BMC's VGA chip (ASPEED) is a display controller but not a GPU.
        PciFunction("0000:02:00.0", ("0000:00:1c.0",), 0x030000, 0x1A03, 0x2000, 0, s0),
    ]
    topo = read_sysfs(two_socket(tmp_path, pci=pci))
    assert [(g.index, g.pci_bus_id, g.numa_node) for g in topo.gpus] == [
        (0, "0000:01:00.0", 0),
        (1, "0000:81:00.0", 1),
    ]
    assert topo.gpu(1).cpus == tuple(sorted(s1))
    assert topo.gpu(0).model == "NVIDIA [10de:2335]"
    assert topo.gpu(0).pcie_path == (RP0,) and topo.gpu(0).pcie_switch is None


def test_gpu_numa_node_minus_one(tmp_path: Path) -> None:
    all_cpus = list(range(16))
    pci = [
        gpu("0000:01:00.0", (RP0,), None, all_cpus),  # no locality at all
        gpu("0000:02:00.0", ("0000:00:02.0",), None, [4, 5, 6, 7, 12, 13, 14, 15]),
        gpu("0000:03:00.0", ("0000:00:03.0",), None, None),  # no local_cpulist file
    ]
    topo = read_sysfs(two_socket(tmp_path, pci=pci))
    assert topo.gpu(0).numa_node is None
    # local_cpulist inside one node → that node, and a note says it was inferred.
    assert topo.gpu(1).numa_node == 1
    assert any("NUMA node 1 from its local CPUs" in n for n in topo.notes)
    assert topo.gpu(2).numa_node is None and topo.gpu(2).cpus == ()


def test_vm_with_one_node_and_no_gpu_locality_is_flat(tmp_path: Path) -> None:
    cpus = {c: (0, c, (c,)) for c in range(8)}
    pci = [gpu(f"0000:0{i + 1}:00.0", (f"0000:00:0{i + 1}.0",), None, range(8)) for i in range(4)]
    topo = read_sysfs(make_sysfs(tmp_path, cpus, {0: range(8)}, pci=pci))
    assert len(topo.gpus) == 4 and topo.flat


def test_two_level_pcie_switch(tmp_path: Path) -> None:
    # root port → switch A (usp 01:00.0, dsps 02:00.0 / 02:01.0) → switch B below dsp 02:00.0
    # (usp 03:00.0, dsps 04:00.0 / 04:01.0) → GPUs 05:00.0, 06:00.0; GPU 07:00.0 sits on switch
    # A's other downstream port; GPU 09:00.0 on a separate switch C.
    s0 = [0, 1, 2, 3, 8, 9, 10, 11]
    top = (RP0, "0000:01:00.0")
    pci = [
        gpu("0000:05:00.0", (*top, "0000:02:00.0", "0000:03:00.0", "0000:04:00.0"), 0, s0),
        gpu("0000:06:00.0", (*top, "0000:02:00.0", "0000:03:00.0", "0000:04:01.0"), 0, s0),
        gpu("0000:07:00.0", (*top, "0000:02:01.0"), 0, s0),
        gpu(
            "0000:09:00.0",
            ("0000:00:02.0", "0000:08:00.0", "0000:09:00.0".replace("09", "0a")),
            0,
            s0,
        ),
    ]
    topo = read_sysfs(two_socket(tmp_path, pci=pci))
    g = {x.pci_bus_id: x for x in topo.gpus}
    # GPUs under different downstream ports of one switch share its upstream port ...
    assert g["0000:05:00.0"].pcie_switch == g["0000:06:00.0"].pcie_switch == "0000:03:00.0"
    # ... and the GPU on switch A's other downstream port hangs off switch A.
    assert g["0000:07:00.0"].pcie_switch == "0000:01:00.0"
    assert g["0000:09:00.0"].pcie_switch == "0000:08:00.0"
    assert g["0000:05:00.0"].pcie_path == (*top, "0000:02:00.0", "0000:03:00.0", "0000:04:00.0")
    # The bridges themselves (class 0x0604) are not GPUs.
    assert len(topo.gpus) == 4


def test_port_types_from_config_space_beat_the_chain_shape(tmp_path: Path) -> None:
    # As root, config space says which bridge is a switch's upstream port. Two chains the
    # shape rule gets wrong: a PCIe-to-PCI bridge below a switch, and a VM that hides the root
    # port (the chain starts at the upstream port).
    s0 = [0, 1, 2, 3, 8, 9, 10, 11]
    legacy = (RP0, "0000:01:00.0", "0000:02:00.0", "0000:03:00.0")
    hidden = ("0000:00:05.0", "0000:06:00.0")
    pci = [gpu("0000:04:00.0", legacy, 0, s0), gpu("0000:07:00.0", hidden, 0, s0)]
    root = two_socket(tmp_path, pci=pci)
    assert {g.pci_bus_id: g.pcie_switch for g in read_sysfs(root).gpus} == {
        "0000:04:00.0": "0000:02:00.0",  # shape rule: wrong (a downstream port)
        "0000:07:00.0": None,  # shape rule: no switch seen
    }
    for address, port_type in [
        (RP0, 4),
        ("0000:01:00.0", 5),
        ("0000:02:00.0", 6),
        ("0000:03:00.0", 7),  # PCIe-to-PCI bridge
        ("0000:00:05.0", 5),
        ("0000:06:00.0", 6),
    ]:
        set_port_type(root, address, port_type)
    assert {g.pci_bus_id: g.pcie_switch for g in read_sysfs(root).gpus} == {
        "0000:04:00.0": "0000:01:00.0",
        "0000:07:00.0": "0000:00:05.0",
    }


def test_nics(tmp_path: Path) -> None:
    s1 = [4, 5, 6, 7, 12, 13, 14, 15]
    pci = [
        PciFunction(
            "0000:81:00.0", (RP1,), 0x020700, 0x15B3, 0x101B, 1, s1, "pci0000:80", "ib0", 32
        ),
        PciFunction("0000:01:00.0", (RP0,), 0x020000, 0x8086, 0x1521, 0, None, netdev="eno1"),
    ]
    root = two_socket(tmp_path, pci=pci)
    add_virtual_netdev(root, "lo")
    topo = read_sysfs(root)
    assert sorted((n.name, n.kind, n.pci_bus_id, n.numa_node) for n in topo.nics) == [
        ("eno1", "ethernet", "0000:01:00.0", 0),
        ("ib0", "infiniband", "0000:81:00.0", 1),
    ]


def test_cli_tree_names_gpus_and_switch_groups(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    s0 = [0, 1, 2, 3, 8, 9, 10, 11]
    usp = (RP0, "0000:01:00.0")
    pci = [
        gpu("0000:03:00.0", (*usp, "0000:02:00.0"), 0, s0),
        gpu("0000:04:00.0", (*usp, "0000:02:01.0"), 0, s0),
    ]
    root = two_socket(tmp_path, pci=pci)
    with pytest.raises(SystemExit) as exit_:
        main(["topo", "--sysfs-root", str(root)])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "Package 1: CPUs 4-7,12-15" in out
    assert "GPU 0: NVIDIA [10de:2335], 0000:03:00.0, switch A" in out
    assert "GPU 1: NVIDIA [10de:2335], 0000:04:00.0, switch A" in out
    assert "PCIe switches: A = 0000:01:00.0" in out


# ------------------------------------------------------------------------ the H200 VM
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "sysfs"


def test_h200_vm_snapshot_matches_what_the_vm_reported(tmp_path: Path) -> None:
    with tarfile.open(FIXTURES / "h200-vm-4gpu.tar.gz") as tar:
        tar.extractall(tmp_path, filter="tar")
    report = (FIXTURES / "h200-vm-4gpu.txt").read_text()

    def field(name: str) -> str:
        match = re.search(rf"^{re.escape(name)}:\s+(\S+)", report, re.MULTILINE)
        assert match, name
        return match.group(1)

    topo = read_sysfs(tmp_path / "snapshot")
    assert len(topo.packages) == int(field("Socket(s)"))
    assert len(topo.cores) == int(field("Core(s) per socket")) * len(topo.packages)
    assert topo.threads_per_core == int(field("Thread(s) per core"))
    assert topo.cpus == parse_cpulist(field("On-line CPU(s) list"))
    assert len(topo.numa_nodes) == int(field("NUMA node(s)"))
    assert topo.numa_node(0).cpus == parse_cpulist(field("NUMA node0 CPU(s)"))
    gpus = re.findall(r"^GPU(\d+)\t.*\t(\S+)\t\d+\t\t(\S+)$", report, re.MULTILINE)
    bus_ids = dict(re.findall(r"^GPU (\d+): .*bus id (\S+)\)$", report, re.MULTILINE))
    assert len(topo.gpus) == len(gpus) == 4
    for index, affinity, numa in gpus:
        gpu = topo.gpu(int(index))
        assert gpu.pci_bus_id == normalize_bus_id(bus_ids[index])
        assert gpu.cpus == parse_cpulist(affinity)
        assert gpu.numa_node is None and numa == "N/A"
    assert topo.flat
    assert [(n.name, n.kind, n.pci_bus_id) for n in topo.nics] == [
        ("eth0", "ethernet", "0000:00:03.0")
    ]
