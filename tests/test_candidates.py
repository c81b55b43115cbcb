"""Candidate layouts for explore: a pure function of the topology, on shipped site configs and
on sysfs and hwloc fixtures."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from hpcbench.errors import UsageError
from hpcbench.plan.candidates import enumerate_candidates, placement_key, request_flags
from hpcbench.plan.planner import PlanRequest, make_plan
from hpcbench.site import load_site
from hpcbench.topology.hwloc import read_hwloc_xml
from hpcbench.topology.model import Topology
from hpcbench.topology.sysfs import read_sysfs
from tests.sysfs_tree import make_sysfs, smt_cpus
from tests.topologies import flat_vm

SYSFS_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "sysfs"


def _site(name: str) -> Topology:
    return load_site(name).node_type(None).topology


def _shapes(topology: Topology, **kwargs: object) -> list[tuple[str, str]]:
    found = enumerate_candidates(topology, **kwargs)  # type: ignore[arg-type]
    return [(c.label, c.layout) for c in found.candidates]


def _check_valid(topology: Topology, base: PlanRequest | None = None) -> None:
    """Every candidate is the planner's plan of its request, breaks no rule, and is unique."""
    found = enumerate_candidates(topology, base)
    keys = set()
    for c in found.candidates:
        assert make_plan(topology, c.request) == c.plan
        assert c.plan.warnings == ()
        keys.add(placement_key(c.plan))
    assert len(keys) == len(found.candidates)
    assert found.baseline.ranks == 1


@pytest.mark.parametrize(
    ("site", "expected"),
    [
        (
            "hpe-apollo6500-gen10",
            [
                ("1x8", "0,1,2,3,4,5,6,7"),
                ("2x4", "0,1,2,3;4,5,6,7"),
                ("4x2", "0,1;2,3;4,5;6,7"),  # one rank per PCIe switch: the seed's 4 processes
                ("8x1", "0;2;1;3;4;6;5;7"),
            ],
        ),
        (
            "nvidia-dgx-a100",
            [
                ("1x8", "0,1,2,3,4,5,6,7"),
                ("2x4", "0,1,2,3;4,5,6,7"),
                ("4x2", "2,3;0,1;6,7;4,5"),  # NPS4: a rank per NUMA node pair holding GPUs
                ("8x1", "1;2;3;0;5;6;7;4"),
            ],
        ),
        ("nvidia-dgx-h100", [("1x8", "0,1,2,3,4,5,6,7"), ("2x4", "0,1,2,3;4,5,6,7"),
                             ("8x1", "0;1;2;3;4;5;6;7")]),
        # A flat VM: nothing separates its GPUs, so the middle split is added.
        ("cloud-vm-4xh200", [("1x4", "0,1,2,3"), ("2x2", "0,1;2,3"), ("4x1", "0;1;2;3")]),
    ],
)  # fmt: skip
def test_shipped_site_configs(site: str, expected: list[tuple[str, str]]) -> None:
    topology = _site(site)
    assert _shapes(topology) == expected
    _check_valid(topology)


def test_apollo_candidates_say_how_they_were_found() -> None:
    found = enumerate_candidates(_site("hpe-apollo6500-gen10"))
    assert [c.how for c in found.candidates] == [
        "one rank on the whole node",
        "one rank per socket; one rank per NUMA node",  # a NUMA node per socket: the same
        "one rank per PCIe switch",
        "one rank per GPU",
    ]
    four = found.by_label("4x2")
    assert (four.ranks, four.gpus_per_rank, four.cpus_per_rank) == (4, 2, 9)


def test_dgx_a100_numa_split_keeps_each_rank_on_its_gpus_numa_nodes() -> None:
    topology = _site("nvidia-dgx-a100")
    gpu_numa = {g.index: g.numa_node for g in topology.gpus}
    split = enumerate_candidates(topology).by_label("4x2")
    assert split.how == "one rank per NUMA node; one rank per PCIe switch"
    for rank in split.plan.ranks:
        assert {gpu_numa[g] for g in rank.gpus} <= set(rank.mem_nodes)
        assert len(rank.mem_nodes) == 2  # NPS4: 8 NUMA nodes, 4 of them with GPUs


def test_sysfs_cpu_only_node_splits_its_cores(tmp_path: Path) -> None:
    # 2 sockets x 2 NUMA nodes (SNC) x 4 cores x 2 threads, no GPU.
    cpus = smt_cpus(2, 8)
    numa = {n: [c for c in range(32) if (c % 16) // 4 == n] for n in range(4)}
    topology = read_sysfs(make_sysfs(tmp_path, cpus, numa))
    found = enumerate_candidates(topology)
    assert [(c.label, c.how) for c in found.candidates] == [
        ("1x16", "one rank on the whole node"),
        ("2x8", "one rank per socket"),
        ("4x4", "one rank per NUMA node"),
        ("8x2", "a middle split of the cores"),
        ("16x1", "one rank per core"),
    ]
    assert found.by_label("4x4").layout == "0-3;4-7;8-11;12-15"
    _check_valid(topology)
    hw = enumerate_candidates(topology, PlanRequest(use_hwthreads=True)).by_label("1x32")
    assert hw.cpus_per_rank == 32


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # 4 sockets x 2 cores: no middle split (8 = 4 x 2 has no other multiple of 4 below 8).
        ("16em64t-4s2c2t", ["1x8", "4x2", "8x1"]),
        ("8em64t-2s2ca2c", ["1x8", "2x4", "4x2", "8x1"]),
    ],
)
def test_hwloc_sysfs_snapshots(
    hwloc_fixtures: Path, tmp_path: Path, name: str, expected: list[str]
) -> None:
    with tarfile.open(hwloc_fixtures / f"{name}.tar.bz2") as tar:
        tar.extractall(tmp_path, filter="tar")
    topology = read_sysfs(tmp_path / name)
    assert [label for label, _ in _shapes(topology)] == expected
    _check_valid(topology)


def test_h200_vm_snapshot(tmp_path: Path) -> None:
    with tarfile.open(SYSFS_FIXTURES / "h200-vm-4gpu.tar.gz") as tar:
        tar.extractall(tmp_path, filter="tar")
    topology = read_sysfs(tmp_path / "snapshot")
    assert _shapes(topology) == [("1x4", "0,1,2,3"), ("2x2", "0,1;2,3"), ("4x1", "0;1;2;3")]
    assert enumerate_candidates(topology).by_label("2x2").how == "a middle split of the GPUs"
    _check_valid(topology)


@pytest.mark.parametrize(
    ("gpus", "labels"),
    [
        (1, ["1x1"]),  # one GPU: the only layout the rules allow
        (2, ["1x2", "2x1"]),
        (8, ["1x8", "2x4", "8x1"]),  # 2 and 4 are as near the middle; the fewer ranks win
    ],
)
def test_flat_vm_candidates(gpus: int, labels: list[str]) -> None:
    topology = flat_vm(gpus=gpus, cores=16)
    assert [c.label for c in enumerate_candidates(topology).candidates] == labels
    _check_valid(topology)


def test_hwloc_xml_with_gpus_on_one_socket(hwloc_fixtures: Path) -> None:
    topology = read_hwloc_xml(hwloc_fixtures / "24em64t-2n6c2t-pci.xml")
    found = enumerate_candidates(topology)
    assert [(c.label, c.layout) for c in found.candidates] == [("1x3", "0,1,2"), ("2x1+2", "0;1,2")]
    assert found.by_label("2x1+2").gpus_per_rank == [1, 2]
    # Three GPUs, two on one socket: a rank per GPU would put two ranks' GPUs on one socket's
    # share; the planner says why and the kind is left out.
    assert len(found.skipped) == 1 and found.skipped[0].startswith("one rank per GPU: rank 1")
    _check_valid(topology)


def test_given_layouts_add_collapse_and_remove() -> None:
    topology = _site("hpe-apollo6500-gen10")
    found = enumerate_candidates(
        topology, layouts=["0,2;4,6", "0,1,2,3;4,5,6,7 0,2;1,3;4,6;5,7", "-8x1"]
    )
    assert [(c.label, c.how) for c in found.candidates] == [
        ("1x8", "one rank on the whole node"),
        # the same placement as one rank per socket: collapses into it
        ("2x4", "one rank per socket; one rank per NUMA node; given layout 0,1,2,3;4,5,6,7"),
        ("4x2", "one rank per PCIe switch"),
        ("2x2", "given layout 0,2;4,6"),
        # the same shape as 4x2 but another placement: its label names its layout
        ("4x2[0,2;1,3;4,6;5,7]", "given layout 0,2;1,3;4,6;5,7"),
    ]


def test_cpu_layouts_on_a_node_without_gpus(tmp_path: Path) -> None:
    cpus = smt_cpus(1, 4, threads=1)
    topology = read_sysfs(make_sysfs(tmp_path, cpus, {0: range(4)}))
    found = enumerate_candidates(topology, layouts=["0-2;3"])
    assert [c.label for c in found.candidates] == ["1x4", "2x2", "4x1", "2x3+1"]


@pytest.mark.parametrize(
    ("layouts", "message"),
    [
        (["-1x8"], "--layouts -1x8: 1x8 is the baseline"),
        (["-3x3"], "--layouts -3x3: no candidate is labelled '3x3' (candidates: 1x8, 2x4, 4x2"),
        (["0,1;0,2"], "--layouts '0,1;0,2': "),
        (["0,4;1,5"], "--layouts '0,4;1,5': the layout breaks placement rules"),
        (["-"], "'-' must be followed by a candidate's label"),
    ],
)
def test_bad_layouts_are_one_line(layouts: list[str], message: str) -> None:
    with pytest.raises(UsageError) as info:
        enumerate_candidates(_site("hpe-apollo6500-gen10"), layouts=layouts)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("site", ["hpe-apollo6500-gen10", "nvidia-dgx-a100"])
def test_flags_of_a_candidate_make_its_plan_through_the_cli(site: str) -> None:
    for c in enumerate_candidates(_site(site)).candidates:
        flags = [f.strip("'") for f in request_flags(c.request)]
        done = subprocess.run(
            [sys.executable, "-m", "hpcbench", "plan", "--site", site, *flags, "--json"],
            capture_output=True,
            text=True,
            check=True,
        )
        got = {(tuple(r["cpus"]), tuple(r["gpus"])) for r in json.loads(done.stdout)["ranks"]}
        assert got == {(r.cpus, r.gpus) for r in c.plan.ranks}, c.label
