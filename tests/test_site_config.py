"""Site configs: every shipped one validates; every kind of mistake gives one clear line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from hpcbench.errors import ConfigError, UsageError
from hpcbench.resources import site_configs_dir
from hpcbench.site import load_site, site_config_text, site_from_dict
from hpcbench.topology.hwloc import read_hwloc_xml
from hpcbench.topology.sysfs import read_sysfs
from hpcbench.topology_source import TopologySource, load_topology
from tests.sysfs_tree import PciFunction, make_sysfs, smt_cpus

SHIPPED = sorted(site_configs_dir().glob("*.yaml"))


def test_the_shipped_schema_is_a_valid_json_schema() -> None:
    import jsonschema

    from hpcbench.site import site_schema

    jsonschema.Draft202012Validator.check_schema(site_schema())


def test_the_required_site_configs_are_shipped() -> None:
    names = {p.stem for p in SHIPPED}
    assert {"hpe-apollo6500-gen10", "nvidia-dgx-a100", "nvidia-dgx-h100"} <= names
    assert len(names) >= 5


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_site_config_validates(path: Path) -> None:
    site = load_site(path)
    assert site.name == path.stem
    assert "Where the numbers come from" in path.read_text()
    for name, node_type in site.node_types.items():
        topo = node_type.topology
        assert node_type.name == name
        assert topo.cpus and topo.gpus
        assert set(node_type.reserved_cores) <= set(topo.cpus)
    assert site.node_type(None) is not None


def _node(site_name: str):
    return load_site(site_name).node_type(None)


def test_apollo_matches_the_seed() -> None:
    node = _node("hpe-apollo6500-gen10")
    topo = node.topology
    assert topo.package(0).cpus == (*range(18), *range(36, 54))
    assert topo.package(1).cpus == (*range(18, 36), *range(54, 72))
    assert next(c for c in topo.cores if 0 in c.cpus).cpus == (0, 36)
    assert [g.numa_node for g in topo.gpus] == [0, 0, 0, 0, 1, 1, 1, 1]
    switches = [g.pcie_switch for g in topo.gpus]
    # 4:1 layout, two switches per socket: 0,1 | 2,3 | 4,5 | 6,7.
    assert switches[0] == switches[1] != switches[2] == switches[3]
    assert switches[4] == switches[5] != switches[6] == switches[7]
    assert len(set(switches)) == 4
    assert node.slurm.partition == "gpu" and node.slurm.gres_name == "gpu"


def test_dgx_a100_is_nps4_with_gpus_on_odd_nodes() -> None:
    topo = _node("nvidia-dgx-a100").topology
    assert len(topo.numa_nodes) == 8 and len(topo.cores) == 128 and len(topo.cpus) == 256
    assert topo.package(0).numa_nodes == (0, 1, 2, 3)
    assert [g.numa_node for g in topo.gpus] == [3, 3, 1, 1, 7, 7, 5, 5]
    assert topo.gpu(0).cpus == (*range(48, 64), *range(176, 192))


def test_h200_vm_is_flat() -> None:
    topo = _node("cloud-vm-4xh200").topology
    assert len(topo.numa_nodes) == 1 and len(topo.gpus) == 4
    assert topo.flat


# ------------------------------------------------------------------------ node type lookup
MINIMAL = {
    "name": "x",
    "node_types": {
        "gpu": {
            "topology": {
                "threads_per_core": 2,
                "numa_nodes": [
                    {"id": 0, "package": 0, "cpus": "0-3,8-11"},
                    {"id": 1, "package": 1, "cpus": "4-7,12-15"},
                ],
                "gpus": [
                    {"index": 0, "numa_node": 0},
                    {"index": 1, "numa_node": 1, "cpus": [4, 5]},
                ],
            },
            "slurm": {"partition": "gpu-long", "slurm_version": "22.05"},
        },
        "cpu": {"topology": {"numa_nodes": [{"id": 0, "package": 0, "cpus": [0, 1]}]}},
    },
}


def test_node_type_by_name_or_partition(tmp_path: Path) -> None:
    site = site_from_dict(MINIMAL, tmp_path / "x.yaml")
    assert site.node_type("gpu").name == "gpu"
    assert site.node_type("gpu-long").name == "gpu"
    with pytest.raises(ConfigError, match="no default_node_type"):
        site.node_type(None)
    with pytest.raises(ConfigError, match=r"named 'gpx' \(did you mean 'gpu'\?\)"):
        site.node_type("gpx")
    gpu = site.node_type("gpu").topology
    assert gpu.gpu(0).cpus == (0, 1, 2, 3, 8, 9, 10, 11)
    assert gpu.gpu(1).cpus == (4, 5)
    assert site.node_type("gpu").slurm.slurm_version == "22.05"


def test_explicit_cores_and_adjacent_numbering(tmp_path: Path) -> None:
    data = {
        "name": "y",
        "node_types": {
            "a": {
                "topology": {
                    "threads_per_core": 2,
                    "thread_numbering": "adjacent",
                    "numa_nodes": [{"id": 0, "package": 0, "cpus": "0-7"}],
                }
            },
            "b": {
                "topology": {
                    "numa_nodes": [{"id": 0, "package": 0, "cores": ["0,4", "1,5", "2", "3"]}]
                }
            },
        },
        "default_node_type": "b",
    }
    site = site_from_dict(data, tmp_path / "y.yaml")
    assert [c.cpus for c in site.node_type("a").topology.cores] == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert [c.cpus for c in site.node_type(None).topology.cores] == [(0, 4), (1, 5), (2,), (3,)]


def test_hwloc_xml_node_type(tmp_path: Path, hwloc_fixtures: Path) -> None:
    xml = tmp_path / "node.xml"
    xml.write_bytes((hwloc_fixtures / "32em64t-2n8c2t-pci-normalio.xml").read_bytes())
    (tmp_path / "site.yaml").write_text(
        "name: s\nnode_types:\n  gpu:\n    topology: {hwloc_xml: node.xml}\n"
    )
    topo = load_site(tmp_path / "site.yaml").node_type(None).topology
    assert topo.gpu(0).model == "Tesla K40m"
    assert topo.source.startswith("site:")


# ------------------------------------------------------------------------ bad input
def write(tmp_path: Path, text: str, name: str = "x.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def mutated(tmp_path: Path, change) -> Path:
    data = yaml.safe_load(yaml.safe_dump(MINIMAL))
    change(data)
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d["node_types"]["gpu"]["topology"]["gpus"][1].update(numa_nod=1),
            r"x\.yaml: node_types\.gpu\.topology\.gpus\[1\]\.numa_nod: unknown key 'numa_nod' "
            r"\(did you mean 'numa_node'\?\)",
        ),
        (
            lambda d: d["node_types"]["gpu"]["slurm"].update(partiton="a"),
            r"node_types\.gpu\.slurm\.partiton: unknown key 'partiton' "
            r"\(did you mean 'partition'\?\)",
        ),
        (
            lambda d: d.update(nodetypes={}),
            r"x\.yaml: nodetypes: unknown key 'nodetypes' \(did you mean 'node_types'\?\)",
        ),
        (
            lambda d: d["node_types"]["gpu"]["topology"]["gpus"][1].update(numa_node="one"),
            r"node_types\.gpu\.topology\.gpus\[1\]\.numa_node: expected integer or null, got 'one'",
        ),
        (
            lambda d: d["node_types"]["gpu"]["slurm"].update(slurm_version=22.05),
            r"node_types\.gpu\.slurm\.slurm_version: expected string or null, got 22\.05 .*quote",
        ),
        (
            lambda d: d["node_types"]["gpu"]["slurm"].update(slurm_version="latest"),
            r"node_types\.gpu\.slurm\.slurm_version: 'latest' is not a Slurm version like "
            r"\"22\.05\"",
        ),
        (
            lambda d: d["node_types"]["gpu"]["topology"]["gpus"][1].update(numa_node=7),
            r"node_types\.gpu\.topology\.gpus\[1\]\.numa_node: NUMA node 7 does not exist "
            r"\(NUMA nodes: 0, 1\)",
        ),
        (
            lambda d: d["node_types"]["gpu"]["topology"]["numa_nodes"][1].update(cpus="3-7,12-15"),
            r"node_types\.gpu\.topology\.numa_nodes\[1\]\.cpus: CPU 3 is listed twice \(also in "
            r"numa_nodes\[0\]\)",
        ),
        (
            lambda d: d["node_types"]["cpu"]["topology"].update(
                numa_nodes=[{"id": 0, "package": 0, "cores": ["0,1", "1"]}]
            ),
            r"node_types\.cpu\.topology\.numa_nodes\[0\]\.cores: CPU 1 is listed twice \(also "
            r"elsewhere in this node\)",
        ),
        (
            lambda d: d["node_types"]["cpu"]["topology"]["numa_nodes"][0].update(cpus=[0, 1, 1]),
            r"node_types\.cpu\.topology\.numa_nodes\[0\]\.cpus: CPU 1 is listed twice",
        ),
        (
            lambda d: d["node_types"]["gpu"]["topology"]["gpus"][1].update(index=0),
            r"gpus\[1\]\.index: GPU index 0 is also gpus\[0\]",
        ),
        (
            lambda d: d["node_types"]["gpu"]["topology"]["numa_nodes"][0].update(cpus="0-4"),
            r"numa_nodes\[0\]\.cpus: 5 CPUs do not split into cores of threads_per_core=2",
        ),
        (
            lambda d: d["node_types"]["gpu"]["topology"].update(thread_numbering="blocky"),
            r"thread_numbering: 'blocky' is not allowed \(did you mean 'blocked'\?\)",
        ),
        (
            lambda d: d["node_types"]["gpu"].update(reserved_cores="99"),
            r"node_types\.gpu\.reserved_cores: CPU 99 does not exist",
        ),
        (
            lambda d: d["node_types"]["gpu"].pop("topology"),
            r"node_types\.gpu: 'topology' is missing",
        ),
        (
            lambda d: d["node_types"]["gpu"]["topology"]["numa_nodes"][0].pop("package"),
            r"numa_nodes\[0\]: a NUMA node with CPUs needs 'package'",
        ),
        (
            lambda d: d["node_types"]["gpu"]["topology"]["numa_nodes"][0].update(cpus="0-3,x"),
            r"numa_nodes\[0\]\.cpus: 'x' is not a non-negative integer",
        ),
        (
            lambda d: d.update(default_node_type="gpus"),
            r"default_node_type: 'gpus' is not a node type \(did you mean 'gpu'\?\)",
        ),
    ],
)
def test_mistakes_name_file_and_key_path(tmp_path: Path, change, message: str) -> None:
    path = mutated(tmp_path, change)
    with pytest.raises(ConfigError, match=message) as error:
        load_site(path)
    assert "\n" not in str(error.value)
    assert str(error.value).startswith(str(path))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\nnode_types: {a: [1, 2\n", r"malformed YAML at line 3 column 1"),
        ("name: x\nname: y\nnode_types: {}\n", r"line 2 column 1: key 'name' appears twice"),
        ("", r"must be a YAML mapping, this file is empty"),
        ("- a\n- b\n", r"must be a YAML mapping, this file is a list"),
        ("name: x\nnode_types: {}\n", r"node_types: .*(non-empty|too few|should be non-empty)"),
    ],
)
def test_malformed_files(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_site(write(tmp_path, text))


def test_missing_file_suggests_shipped_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"site config not found: .*nope\.yaml"):
        load_site(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"did you mean 'nvidia-dgx-a100'\?"):
        load_site("nvidia-dgx-a10")


def test_missing_hwloc_file(tmp_path: Path) -> None:
    path = write(tmp_path, "name: s\nnode_types:\n  g:\n    topology: {hwloc_xml: gone.xml}\n")
    with pytest.raises(ConfigError, match=r"node_types\.g\.topology\.hwloc_xml: file not found"):
        load_site(path)


# ------------------------------------------------------------------------ writing
def _round_trip(topology, tmp_path: Path):
    path = tmp_path / "written.yaml"
    path.write_text(site_config_text(topology, name="written"))
    back = load_site(path).node_type(None).topology
    assert back.packages == topology.packages
    assert back.cores == topology.cores
    assert [(n.id, n.package, n.cpus, n.memory_mb) for n in back.numa_nodes] == [
        (n.id, n.package, n.cpus, n.memory_mb) for n in topology.numa_nodes
    ]
    fields = ("index", "pci_bus_id", "model", "numa_node", "cpus", "pcie_switch", "pcie_path")
    for a, b in zip(back.gpus, topology.gpus, strict=True):
        assert [getattr(a, f) for f in fields] == [getattr(b, f) for f in fields]
    assert back.nics == topology.nics
    return back


def test_write_round_trips_a_sysfs_node(tmp_path: Path) -> None:
    s1 = [4, 5, 6, 7, 12, 13, 14, 15]
    usp = ("0000:80:01.0", "0000:81:00.0")
    pci = [
        PciFunction(
            "0000:83:00.0",
            (*usp, "0000:82:00.0"),
            numa_node=1,
            local_cpus=s1,
            domain_root="pci0000:80",
        ),
        PciFunction(
            "0000:84:00.0",
            (*usp, "0000:82:01.0"),
            numa_node=None,
            local_cpus=range(16),
            domain_root="pci0000:80",
        ),
    ]
    cpus = smt_cpus(2, 4)
    numa = {0: [0, 1, 2, 3, 8, 9, 10, 11], 1: s1, 2: []}
    topo = read_sysfs(
        make_sysfs(tmp_path / "root", cpus, numa, online=[c for c in range(16) if c != 9], pci=pci)
    )
    back = _round_trip(topo, tmp_path)
    # Core 1 lost its sibling CPU 9: the writer must fall back to explicit cores.
    assert (1,) in {c.cpus for c in back.cores}


def test_write_round_trips_hwloc_fixtures(tmp_path: Path, hwloc_fixtures: Path) -> None:
    for name in ("24em64t-2n6c2t-pci.xml", "32em64t-2n8c2t-pci-normalio.xml"):
        _round_trip(read_hwloc_xml(hwloc_fixtures / name), tmp_path)


# ------------------------------------------------------------------------ sources
def test_sources_pick_exactly_one(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="give one topology source, not --sysfs-root and --site"):
        load_topology(sysfs_root=tmp_path, site="x")
    with pytest.raises(UsageError, match="--partition needs --site"):
        load_topology(partition="gpu")
    topo, node_type = TopologySource(site="hpe-apollo6500-gen10", partition="gpu").load()
    assert node_type is not None and node_type.topology is topo
    topo, node_type = TopologySource().load()  # this host
    assert node_type is None and topo.cpus


def test_the_documented_example_validates(tmp_path: Path, hwloc_fixtures: Path) -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "site-config.md").read_text()
    block = doc.split("A complete example with every key:", 1)[1].split("```yaml\n", 1)[1]
    (tmp_path / "mycluster.yaml").write_text(block.split("```", 1)[0])
    (tmp_path / "templates").mkdir()
    (tmp_path / "cpu-node.xml").write_bytes(
        (hwloc_fixtures / "24em64t-2n6c2t-pci.xml").read_bytes()
    )
    site = load_site(tmp_path / "mycluster.yaml")
    gpu = site.node_type(None)
    assert gpu.name == "gpu" and site.node_type("gpu").slurm.extra_sbatch == ("--constraint=v100",)
    assert gpu.topology.numa_node(2).cpus == () and gpu.reserved_cores == (0, 36)
    assert site.templates_dir == (tmp_path / "templates").resolve()
    assert len(site.node_type("cpu").topology.numa_nodes) == 2


def test_a_gpu_index_beyond_what_the_command_line_accepts_is_refused(tmp_path: Path) -> None:
    # The command line caps GPU indices at 4 095 (plan.layout.MAX_GPU_INDEX); a site config
    # accepted 10^20 and the index then reached CUDA_VISIBLE_DEVICES.
    path = tmp_path / "big.yaml"
    path.write_text(
        "name: x\nnode_types:\n  a:\n    topology:\n"
        '      numa_nodes: [{id: 0, package: 0, cpus: "0-3"}]\n'
        f"      gpus: [{{index: {10**20}, numa_node: 0}}]\n"
    )
    with pytest.raises(
        ConfigError, match=r"gpus\[0\]\.index: 1+0+ is greater than the maximum of 4095"
    ):
        load_site(path)
