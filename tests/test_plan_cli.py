"""``hpcbench plan`` end to end: site configs, hwloc XML, sysfs snapshots, JSON and bad input."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from hpcbench.cli import main
from hpcbench.topology.hwloc import read_hwloc_xml
from hpcbench.topology.model import Topology
from hpcbench.topology.sysfs import read_sysfs
from tests.sysfs_tree import PciFunction, make_sysfs, smt_cpus

APOLLO = ["--site", "hpe-apollo6500-gen10"]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main(["plan", *argv])
    out, err = capsys.readouterr()
    code = exit_.value.code
    return (code if isinstance(code, int) else 1), out, err


def plan_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    code, out, err = run([*argv, "--json"], capsys)
    assert code == 0, err
    return json.loads(out)


def core_key(topology: Topology) -> dict[int, int]:
    """OS CPU -> first CPU of its physical core."""
    return {cpu: core.cpus[0] for core in topology.cores for cpu in core.cpus}


def assert_rules_hold(topology: Topology, data: dict) -> None:
    """Every rank pinned, no physical core shared, GPUs on the rank's own NUMA nodes."""
    cores_of = core_key(topology)
    seen: set[int] = set()
    for rank in data["ranks"]:
        assert rank["cpus"]
        cores = {cores_of[c] for c in rank["cpus"]}
        assert not cores & seen
        seen |= cores
        numa = {c.numa_node for c in topology.cores if c.cpus[0] in cores}
        assert rank["mem_nodes"] == sorted(numa)
        for gpu in rank["gpus"]:
            home = topology.gpu(gpu).numa_node
            assert home is None or home in numa


# ----------------------------------------------------------------------------- output
def test_json_contract_on_the_apollo_site_config(capsys: pytest.CaptureFixture[str]) -> None:
    data = plan_json([*APOLLO, "--ranks", "2", "--gpus-per-rank", "2"], capsys)
    assert [
        (
            r["rank"],
            r["node"],
            r["local_rank"],
            r["socket"],
            r["numa_node"],
            r["gpus"],
            r["mem_nodes"],
        )
        for r in data["ranks"]
    ] == [(0, 0, 0, 0, 0, [0, 2], [0]), (1, 0, 1, 1, 1, [4, 6], [1])]
    assert data["ranks"][1]["cpus"] == list(range(18, 36))
    assert data["ranks"][1]["data_dir"] == "/dev/shm/hpcbench/rank00001"  # the site's data_root
    assert data["warnings"] == []
    assert "hpe-apollo6500-gen10.yaml" in data["source"]


def test_human_output_has_table_and_picture(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run([*APOLLO, "--ranks", "4", "--gpus-per-rank", "1"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[2].split() == [
        "rank",
        "node",
        "local",
        "socket",
        "numa",
        "cpus",
        "gpus",
        "mem",
        "data",
        "dir",
    ]
    assert lines[4].split()[:7] == ["1", "0", "1", "0", "0", "9-17", "2"]
    assert "  NUMA 0  cores 000000000111111111" in lines
    assert any("switch cpu0-switch1: GPU 2 [rank 1]  GPU 3 [free]" in line for line in lines)


def test_accepted_warnings_are_printed_and_kept(capsys: pytest.CaptureFixture[str]) -> None:
    seed = ["--cpus", "0-17;36-53;18-35;54-71", "--gpus", "0;2;4;6", "--accept-warnings"]
    code, out, _ = run([*APOLLO, *seed], capsys)
    assert code == 0
    assert "warnings (accepted, 2):" in out
    assert "  NUMA 0  cores !!!!!!!!!!!!!!!!!!" in out.splitlines()
    data = plan_json([*APOLLO, *seed], capsys)
    assert len(data["warnings"]) == 2 and data["warnings"][0].startswith("rank 1: CPUs 36-53")


def test_nodes_and_hwthreads(capsys: pytest.CaptureFixture[str]) -> None:
    data = plan_json([*APOLLO, "--nodes", "2", "--hwthreads"], capsys)
    assert [(r["rank"], r["node"], r["local_rank"]) for r in data["ranks"]] == [
        (0, 0, 0),
        (1, 0, 1),
        (2, 1, 0),
        (3, 1, 1),
    ]
    assert data["ranks"][2]["cpus"] == [*range(18), *range(36, 54)]


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--ranks", "1", "--gpus-per-rank", "9"], "rank 0 gets only 8 of 9 GPUs"),
        (["--ranks", "40"], "rank 36 gets no cores: 40 ranks per node"),
        (["--gpus", "0;8"], "--gpus: rank 1: GPU 8 does not exist on this node"),
        (
            ["--cpus", "0-17;10-35"],
            "rank 1: CPUs 10-17 are also given to rank 0 (rule 1: disjoint cores)",
        ),
        (
            ["--cpus", "0-17;;18-35"],
            "--cpus: rank 1 has no CPUs in '0-17;;18-35' (rule 1: every rank is pinned)",
        ),
        (["--cpus", "0-17;18-35", "--gpus", "4;0"], "rank 0: GPU 4 is attached to socket 1"),
        (["--cpus", "0-17;18-35", "--gpus", "4;0"], "(rule 2: GPUs local to the rank's socket)"),
        (["--ranks", "3", "--gpus", "0;4"], "--gpus gives 2, --ranks gives 3"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run([*APOLLO, *argv], capsys)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("hpcbench: error: ")
    assert expected in err
    assert "rank" in err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["--ranks", "many"],
            "Invalid value for '--ranks': 'many' is not a positive number or 'auto'",
        ),
        (["--gpus-per-rank", "some"], "'some' is not a number of GPUs or 'all'"),
        (["--cores-per-rank", "0"], "--cores-per-rank"),
    ],
)
def test_bad_flag_values_exit_2(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run([*APOLLO, *argv], capsys)
    assert code == 2 and expected in err


# ----------------------------------------------------------------------------- other sources
def test_topology_json_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["topo", *APOLLO, "--json"])
    path = tmp_path / "topology.json"
    path.write_text(capsys.readouterr().out)
    data = plan_json(["--topology", str(path), "--ranks", "2", "--gpus-per-rank", "2"], capsys)
    assert [r["gpus"] for r in data["ranks"]] == [[0, 2], [4, 6]]
    code, _, err = run(["--topology", str(path), *APOLLO], capsys)
    assert code == 2 and "give one topology source" in err
    code, _, err = run(["--topology", str(tmp_path / "missing.json")], capsys)
    assert code == 2 and "file not found" in err
    # A folder or a binary file: one line naming it, not an OSError/UnicodeDecodeError traceback.
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe")
    for bad in (tmp_path, tmp_path / "binary.json"):
        code, _, err = run(["--topology", str(bad)], capsys)
        assert code == 2, err
        assert err.startswith(f"hpcbench: error: {bad}: cannot read the --topology file"), err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["24em64t-2n6c2t-pci.xml", "32em64t-2n8c2t-pci-normalio.xml"])
@pytest.mark.parametrize(
    "extra", [[], ["--ranks", "4"], ["--numa", "--hwthreads"], ["--ranks", "1"]]
)
def test_hwloc_machines(
    hwloc_fixtures: Path, name: str, extra: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    path = hwloc_fixtures / name
    data = plan_json(["--from-hwloc", str(path), *extra], capsys)
    assert data["warnings"] == []
    assert_rules_hold(read_hwloc_xml(path), data)


def test_hwloc_gpus_go_to_their_own_numa_node(
    hwloc_fixtures: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = hwloc_fixtures / "32em64t-2n8c2t-pci-normalio.xml"
    topology = read_hwloc_xml(path)
    data = plan_json(["--from-hwloc", str(path)], capsys)
    for rank in data["ranks"]:
        expected = sorted(g.index for g in topology.gpus if g.numa_node == rank["numa_node"])
        assert rank["gpus"] == expected


def test_sysfs_snapshot_of_a_four_socket_machine(
    hwloc_fixtures: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with tarfile.open(hwloc_fixtures / "16em64t-4s2c2t.tar.bz2") as tar:
        tar.extractall(tmp_path, filter="tar")
    root = tmp_path / "16em64t-4s2c2t"
    topology = read_sysfs(root)
    data = plan_json(["--sysfs-root", str(root)], capsys)
    assert len(data["ranks"]) == len(topology.packages) == 4
    for rank in data["ranks"]:
        assert set(rank["cpus"]) <= set(topology.package(rank["socket"]).cpus)
    assert_rules_hold(topology, data)
    code, _, err = run(["--sysfs-root", str(root), "--ranks", "9"], capsys)
    assert code == 2 and "rank 8 gets no cores" in err


def apollo_like_sysfs(root: Path) -> Path:
    """2 sockets x 4 cores x 2 threads; per socket two PCIe switches with two GPUs each."""
    cpus = smt_cpus(2, 4)
    numa = {0: [0, 1, 2, 3, 8, 9, 10, 11], 1: [4, 5, 6, 7, 12, 13, 14, 15]}
    pci = []
    for socket, (bus, domain) in enumerate([(0x00, "pci0000:00"), (0x80, "pci0000:80")]):
        for switch in range(2):
            root_port = f"0000:{bus:02x}:{switch + 1:02x}.0"
            upstream = f"0000:{bus + 0x10 * (switch + 1):02x}:00.0"
            for slot in range(2):
                downstream = f"0000:{bus + 0x10 * (switch + 1) + 1:02x}:{slot:02x}.0"
                gpu = f"0000:{bus + 0x10 * (switch + 1) + 2 + slot:02x}:00.0"
                pci.append(
                    PciFunction(
                        gpu,
                        (root_port, upstream, downstream),
                        numa_node=socket,
                        local_cpus=numa[socket],
                        domain_root=domain,
                    )
                )
    return make_sysfs(root, cpus, numa, pci=pci)


def test_sysfs_switches_are_spread(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = apollo_like_sysfs(tmp_path)
    topology = read_sysfs(root)
    switches = {g.index: g.pcie_switch for g in topology.gpus}
    assert len(set(switches.values())) == 4
    data = plan_json(["--sysfs-root", str(root), "--ranks", "2", "--gpus-per-rank", "2"], capsys)
    for rank in data["ranks"]:
        assert len({switches[g] for g in rank["gpus"]}) == 2
    assert_rules_hold(topology, data)
    four = plan_json(["--sysfs-root", str(root), "--ranks", "4", "--gpus-per-rank", "1"], capsys)
    assert len({switches[r["gpus"][0]] for r in four["ranks"]}) == 4
    assert_rules_hold(topology, four)
    # The same layout done by hand, badly: two GPUs of one switch for rank 0.
    assert switches[0] == switches[1] and switches[4] != switches[6]
    code, _, err = run(["--sysfs-root", str(root), "--gpus", "0,1;4,6"], capsys)
    assert code == 2 and "rank 0: GPUs 0,1 share PCIe switch" in err and "rule 3" in err


def test_plan_is_listed_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "plan" in capsys.readouterr().out
