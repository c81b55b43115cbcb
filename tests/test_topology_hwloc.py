"""The hwloc XML reader: hwloc's own exports, and synthetic ones for switches, NVML devices,
CPU-less NUMA nodes and broken files."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hpcbench.errors import TopologyError
from hpcbench.topology.hwloc import parse_hwloc_bitmap, read_hwloc_xml

XMLS = ["24em64t-2n6c2t-pci.xml", "32em64t-2n8c2t-pci-normalio.xml"]


def expected_gpu_numa(path: Path) -> dict[str, int]:
    """GPU bus id → NUMA node, worked out independently of the reader.

    hwloc writes ``<pci_locality domain bus_min bus_max cpuset>`` lines (which CPUs each PCI bus
    range is local to); the NUMA node is the one whose cpuset equals that locality. GPUs are the
    NVIDIA display-class devices and any device with a CUDA/OpenCL OS device.
    """
    root = ET.parse(path).getroot()
    localities = [
        (
            int(p.get("bus_min"), 16),
            int(p.get("bus_max"), 16),
            set(parse_hwloc_bitmap(p.get("cpuset"))),
        )
        for p in root.iter("pci_locality")
    ]
    numa = {
        int(o.get("os_index")): set(parse_hwloc_bitmap(o.get("cpuset")))
        for o in root.iter("object")
        if o.get("type") == "NUMANode"
    }
    out = {}
    for obj in root.iter("object"):
        if obj.get("type") != "PCIDev":
            continue
        pci_type = obj.get("pci_type", "")
        osdevs = [c.get("name", "") for c in obj if c.get("type") == "OSDev"]
        nvidia_display = pci_type.startswith("03") and "[10de:" in pci_type
        if not (nvidia_display or any(re.match(r"(cuda|opencl)\d", n) for n in osdevs)):
            continue
        bus = int(obj.get("pci_busid").split(":")[1], 16)
        cpus = next(c for lo, hi, c in localities if lo <= bus <= hi)
        out[obj.get("pci_busid")] = next(n for n, node_cpus in numa.items() if node_cpus == cpus)
    return out


@pytest.mark.parametrize("name", XMLS)
def test_fixture_gpus_have_the_right_numa_nodes(hwloc_fixtures: Path, name: str) -> None:
    path = hwloc_fixtures / name
    expected = expected_gpu_numa(path)
    assert expected, "the fixture should hold GPUs"
    topo = read_hwloc_xml(path)
    assert {g.pci_bus_id: g.numa_node for g in topo.gpus} == expected
    for gpu in topo.gpus:
        assert set(gpu.cpus) == set(topo.numa_node(gpu.numa_node).cpus)


@pytest.mark.parametrize(
    ("name", "numa", "cores_per_node", "threads"),
    [("24em64t-2n6c2t-pci.xml", 2, 6, 2), ("32em64t-2n8c2t-pci-normalio.xml", 2, 8, 2)],
)
def test_fixture_cpu_shape(
    hwloc_fixtures: Path, name: str, numa: int, cores_per_node: int, threads: int
) -> None:
    # The file names spell the machine: 2 NUMA nodes × N cores × 2 threads.
    topo = read_hwloc_xml(hwloc_fixtures / name)
    assert len(topo.numa_nodes) == numa
    for node in topo.numa_nodes:
        cores = [c for c in topo.cores if c.numa_node == node.id]
        assert len(cores) == cores_per_node
        assert all(len(c.cpus) == threads for c in cores)
    pus = {
        int(o.get("os_index"))
        for o in ET.parse(hwloc_fixtures / name).getroot().iter("object")
        if o.get("type") == "PU"
    }
    assert set(topo.cpus) == pus


def test_k40m_fixture_details(hwloc_fixtures: Path) -> None:
    topo = read_hwloc_xml(hwloc_fixtures / "32em64t-2n8c2t-pci-normalio.xml")
    k40 = topo.gpu(0)  # its OS device is cuda0
    assert (k40.pci_bus_id, k40.model, k40.numa_node) == ("0000:84:00.0", "Tesla K40m", 1)
    assert k40.memory_mb == 11796032 // 1024
    assert k40.pcie_path == ("0000:80:03.0",)
    # The Matrox VGA chip of the board is not a GPU.
    assert "0000:05:03.0" not in {g.pci_bus_id for g in topo.gpus}
    assert topo.hostname == "conan"
    ib = next(n for n in topo.nics if n.kind == "infiniband")
    assert (ib.name, ib.numa_node) == ("ib0", 1)


def test_es1000_server_vga_is_not_a_gpu(hwloc_fixtures: Path) -> None:
    topo = read_hwloc_xml(hwloc_fixtures / "24em64t-2n6c2t-pci.xml")
    assert "0000:01:03.0" not in {g.pci_bus_id for g in topo.gpus}
    assert [g.index for g in topo.gpus] == [0, 1, 2]


# ------------------------------------------------------------------------ synthetic XML
def _pu(i: int, node: int) -> str:
    return f'<object type="PU" os_index="{i}" cpuset="{hex(1 << i)}" nodeset="{hex(1 << node)}"/>'


def _core(i: int, cpus: list[int], node: int) -> str:
    return (
        f'<object type="Core" os_index="{i}">' + "".join(_pu(c, node) for c in cpus) + "</object>"
    )


def _bridge(address: str, inner: str) -> str:
    return (
        f'<object type="Bridge" bridge_type="1-1" pci_busid="{address}" '
        f'pci_type="0604 [10b5:9797] [0000:0000] 00">{inner}</object>'
    )


def _gpu(address: str, osdevs: str = "") -> str:
    return (
        f'<object type="PCIDev" pci_busid="{address}" pci_type="0302 [10de:2330] [10de:16c1] a1">'
        f'<info name="PCIDevice" value="GH100 [H100 SXM5 80GB]"/>{osdevs}</object>'
    )


def dgx_like_xml() -> str:
    """hwloc 2 layout: 2 packages × 2 cores × 2 threads, a CPU-less NUMA node 2, GPUs behind a
    two-level switch in package 0 with NVML OS devices (osdev_type enum of hwloc 2)."""
    pkg0_io = (
        '<object type="Bridge" bridge_type="0-1" bridge_pci="0000:[00-0f]">'
        + _bridge(
            "0000:00:01.0",
            _bridge(
                "0000:01:00.0",
                _bridge(
                    "0000:02:00.0",
                    _bridge(
                        "0000:03:00.0",
                        _bridge(
                            "0000:04:00.0",
                            _gpu(
                                "0000:05:00.0", '<object type="OSDev" name="nvml1" osdev_type="5"/>'
                            ),
                        )
                        + _bridge(
                            "0000:04:01.0",
                            _gpu(
                                "0000:06:00.0", '<object type="OSDev" name="nvml0" osdev_type="5"/>'
                            ),
                        ),
                    ),
                )
                + _bridge(
                    "0000:02:01.0",
                    '<object type="PCIDev" pci_busid="0000:07:00.0" '
                    'pci_type="0207 [15b3:101b] [15b3:0007] 00">'
                    '<object type="OSDev" name="ib0" osdev_type="2"/>'
                    '<object type="OSDev" name="mlx5_0" osdev_type="3"/></object>',
                ),
            ),
        )
        + "</object>"
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE topology SYSTEM "hwloc2.dtd">
<topology version="2.0">
  <object type="Machine" os_index="0" cpuset="0xff" nodeset="0x7">
    <info name="HostName" value="dgx01"/>
    <object type="Package" os_index="0" cpuset="0x33" nodeset="0x1">
      <object type="NUMANode" os_index="0" cpuset="0x33" nodeset="0x1" local_memory="1073741824"/>
      {_core(0, [0, 4], 0)}{_core(1, [1, 5], 0)}
      {pkg0_io}
    </object>
    <object type="Package" os_index="1" cpuset="0xcc" nodeset="0x2">
      <object type="NUMANode" os_index="1" cpuset="0xcc" nodeset="0x2"/>
      {_core(0, [2, 6], 1)}{_core(1, [3, 7], 1)}
    </object>
    <object type="NUMANode" os_index="2" cpuset="0x0" nodeset="0x4" local_memory="2147483648"/>
  </object>
</topology>
"""


def test_synthetic_dgx_like(tmp_path: Path) -> None:
    path = tmp_path / "dgx.xml"
    path.write_text(dgx_like_xml())
    topo = read_hwloc_xml(path)
    assert [(p.id, p.cpus) for p in topo.packages] == [(0, (0, 1, 4, 5)), (1, (2, 3, 6, 7))]
    assert {c.cpus for c in topo.cores} == {(0, 4), (1, 5), (2, 6), (3, 7)}
    assert topo.numa_node(2).cpus == () and topo.numa_node(2).memory_mb == 2048
    assert topo.numa_node(0).memory_mb == 1024
    # NVML indices win over PCI order; both GPUs share the second-level switch's upstream port.
    assert [(g.index, g.pci_bus_id) for g in topo.gpus] == [
        (0, "0000:06:00.0"),
        (1, "0000:05:00.0"),
    ]
    assert {g.pcie_switch for g in topo.gpus} == {"0000:03:00.0"}
    assert topo.gpu(1).pcie_path == (
        "0000:00:01.0",
        "0000:01:00.0",
        "0000:02:00.0",
        "0000:03:00.0",
        "0000:04:00.0",
    )
    assert all(g.numa_node == 0 and g.cpus == (0, 1, 4, 5) for g in topo.gpus)
    assert topo.gpu(0).model == "GH100 [H100 SXM5 80GB]"
    (nic,) = topo.nics
    assert (nic.name, nic.kind, nic.numa_node, nic.pcie_switch) == (
        "ib0",
        "infiniband",
        0,
        "0000:01:00.0",
    )
    assert topo.hostname == "dgx01"


def test_machine_level_io_on_a_two_node_machine_has_no_numa_node(tmp_path: Path) -> None:
    # Move the I/O tree from package 0 to the machine: locality covers both nodes → unknown.
    xml = dgx_like_xml()
    start = xml.index('<object type="Bridge" bridge_type="0-1"')
    end = xml.index('</object>\n    </object>\n    <object type="Package" os_index="1"') + len(
        "</object>"
    )
    io = xml[start:end]
    moved = xml[:start] + xml[end:]
    moved = moved.replace(
        '<object type="NUMANode" os_index="2"', io + '\n    <object type="NUMANode" os_index="2"'
    )
    path = tmp_path / "m.xml"
    path.write_text(moved)
    topo = read_hwloc_xml(path)
    assert len(topo.gpus) == 2 and all(g.numa_node is None for g in topo.gpus)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("<topology><object type='Machine'", "malformed XML at line 1"),
        ("<html></html>", "not an hwloc XML file"),
        (
            "<topology version='2.0'><object type='Machine' os_index='0'/></topology>",
            "no PU objects",
        ),
    ],
)
def test_bad_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.xml"
    path.write_text(content)
    with pytest.raises(TopologyError, match=message):
        read_hwloc_xml(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="hwloc XML not found"):
        read_hwloc_xml(tmp_path / "nope.xml")


def test_packages_without_os_index_are_numbered_in_order(tmp_path: Path) -> None:
    xml = dgx_like_xml().replace('<object type="Package" os_index="1"', '<object type="Package"')
    xml = xml.replace('<object type="Package" os_index="0"', '<object type="Package"')
    path = tmp_path / "vm.xml"
    path.write_text(xml)
    topo = read_hwloc_xml(path)
    assert [(p.id, p.cpus) for p in topo.packages] == [(0, (0, 1, 4, 5)), (1, (2, 3, 6, 7))]


def test_hwloc_1_layout_with_numa_nodes_as_parents(tmp_path: Path) -> None:
    # hwloc 1.x: no version attribute, NUMANode objects contain their packages, and the
    # network OS device type is the enum value 2.
    gpu = _gpu("0000:81:00.0", '<object type="OSDev" name="cuda0" osdev_type="5"/>')
    nic = (
        '<object type="PCIDev" pci_busid="0000:82:00.0" pci_type="0200 [8086:1521] [0:0] 01">'
        '<object type="OSDev" name="eth0" osdev_type="2"/></object>'
    )
    io = f'<object type="Bridge" bridge_type="0-1">{_bridge("0000:80:01.0", gpu + nic)}</object>'
    xml = f"""<?xml version="1.0" encoding="UTF-8"?>
<topology>
  <object type="Machine" os_index="0" cpuset="0xf" nodeset="0x3">
    <object type="NUMANode" os_index="0" cpuset="0x3" nodeset="0x1" local_memory="4294967296">
      <object type="Package" os_index="0" cpuset="0x3">{_core(0, [0], 0)}{_core(1, [1], 0)}</object>
    </object>
    <object type="NUMANode" os_index="1" cpuset="0xc" nodeset="0x2">
      <object type="Package" os_index="1" cpuset="0xc">{_core(0, [2], 1)}{_core(1, [3], 1)}</object>
      {io}
    </object>
  </object>
</topology>
"""
    path = tmp_path / "v1.xml"
    path.write_text(xml)
    topo = read_hwloc_xml(path)
    assert [(n.id, n.package, n.cpus, n.memory_mb) for n in topo.numa_nodes] == [
        (0, 0, (0, 1), 4096),
        (1, 1, (2, 3), None),
    ]
    assert [(g.index, g.numa_node, g.cpus) for g in topo.gpus] == [(0, 1, (2, 3))]
    assert [(n.name, n.kind, n.numa_node) for n in topo.nics] == [("eth0", "ethernet", 1)]
