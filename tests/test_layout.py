"""Explicit layouts in the seed's syntax, and the rule checker on its own."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcbench.errors import PlanError
from hpcbench.plan.index import topology_index
from hpcbench.plan.layout import (
    RULE_DISJOINT,
    RULE_GPU_SHARED,
    RULE_MEMORY_LOCAL,
    RULE_NO_OVERSUBSCRIPTION,
    RULE_RESERVED,
    RULE_SWITCH_SPREAD,
    check_rules,
    format_cpu_layout,
    format_gpu_layout,
    parse_cpu_layout,
    parse_gpu_layout,
    validate_layout,
)
from hpcbench.topology.model import Core, Gpu, NumaNode, Topology
from tests.topologies import apollo, flat_vm, nps4

APOLLO = topology_index(apollo())
R2_SOCKET = "rule 2: GPUs local to the rank's socket"
R2_NUMA = "rule 2: GPUs local to the rank's NUMA node"


# ----------------------------------------------------------------------------- syntax
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0-17;18-35", (tuple(range(18)), tuple(range(18, 36)))),
        (
            "0-17;36-53;18-35;54-71",
            (tuple(range(18)), tuple(range(36, 54)), tuple(range(18, 36)), tuple(range(54, 72))),
        ),
        ("0,2,4", ((0, 2, 4),)),
        (" 0-1 ; 2-3 ", ((0, 1), (2, 3))),
        ("0-7:2;1-7:2", ((0, 2, 4, 6), (1, 3, 5, 7))),
    ],
)
def test_parse_cpu_layout(text: str, expected: tuple[tuple[int, ...], ...]) -> None:
    assert parse_cpu_layout(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "--cpus: empty layout"),
        ("0-3;", "--cpus: rank 1 has no CPUs"),
        ("0-3;a", "--cpus: rank 1: 'a' is not a non-negative integer"),
        ("5-2", "--cpus: rank 0: range '5-2' ends before it starts"),
    ],
)
def test_parse_cpu_layout_errors(text: str, message: str) -> None:
    with pytest.raises(PlanError, match=message):
        parse_cpu_layout(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0,2;4,6", ((0, 2), (4, 6))),
        ("0,1,2,3;4,5,6,7", ((0, 1, 2, 3), (4, 5, 6, 7))),
        ("6,4;2,0", ((6, 4), (2, 0))),
        ("0-3", ((0, 1, 2, 3),)),
    ],
)
def test_parse_gpu_layout_keeps_order(text: str, expected: tuple[tuple[int, ...], ...]) -> None:
    assert parse_gpu_layout(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0;;1", "--gpus: rank 1 has an empty GPU list"),
        ("0,x", "--gpus: rank 0: 'x' is not a GPU index"),
        ("-1", "--gpus: rank 0: '-1' is not a GPU index"),
        ("3-1", "--gpus: rank 0: range '3-1' ends before it starts"),
        ("0,1;1-2,2", "--gpus: rank 1 lists GPU 2 twice"),
    ],
)
def test_parse_gpu_layout_errors(text: str, message: str) -> None:
    with pytest.raises(PlanError, match=message):
        parse_gpu_layout(text)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sets(st.integers(0, 200), min_size=1), min_size=1, max_size=8))
def test_cpu_layout_round_trips(layout: list[set[int]]) -> None:
    ranks = [tuple(sorted(cpus)) for cpus in layout]
    assert parse_cpu_layout(format_cpu_layout(ranks)) == tuple(ranks)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.integers(0, 15), min_size=1, unique=True), min_size=1, max_size=8))
def test_gpu_layout_round_trips(layout: list[list[int]]) -> None:
    assert parse_gpu_layout(format_gpu_layout(layout)) == tuple(tuple(g) for g in layout)


# ----------------------------------------------------------------------------- facts
def test_validate_layout_rejects_what_does_not_exist() -> None:
    with pytest.raises(
        PlanError,
        match=r"--cpus: rank 0: CPU 72-73 does not exist on this node \(its CPUs are 0-71\)",
    ):
        validate_layout(APOLLO, [(0, 72, 73)], None)
    with pytest.raises(PlanError, match="--gpus: rank 1: GPU 8 does not exist on this node"):
        validate_layout(APOLLO, None, [(0,), (8,)])
    with pytest.raises(PlanError, match="its GPUs are none"):
        validate_layout(topology_index(flat_vm(gpus=0)), None, [(0,)])


# ----------------------------------------------------------------------------- rules
def rules(
    cpus: str, gpus: str, index=APOLLO, granularity="socket", reserved=()
) -> list[tuple[int, str]]:
    found = check_rules(
        index, parse_cpu_layout(cpus), parse_gpu_layout(gpus), granularity, reserved
    )
    return [(v.rank, v.rule) for v in found]


@pytest.mark.parametrize(
    ("cpus", "gpus", "expected"),
    [
        # The seed's own layouts.
        ("0-17;18-35", "0,1,2,3;4,5,6,7", []),
        ("0-17;18-35", "0,2;4,6", []),
        (
            "0-17;36-53;18-35;54-71",
            "0;2;4;6",
            [(1, RULE_NO_OVERSUBSCRIPTION), (3, RULE_NO_OVERSUBSCRIPTION)],
        ),
        (
            "0-17;36-53;18-35;54-71",
            "0,1;2,3;4,5;6,7",
            [(1, RULE_NO_OVERSUBSCRIPTION), (3, RULE_NO_OVERSUBSCRIPTION)],
        ),
        # What the seed should have written for four processes.
        ("0-8;9-17;18-26;27-35", "0;2;4;6", []),
        ("0-8,36-44;9-17,45-53;18-26,54-62;27-35,63-71", "0,1;2,3;4,5;6,7", []),
        # Rule 1.
        ("0-17;17-35", "0;4", [(1, RULE_DISJOINT), (1, RULE_MEMORY_LOCAL)]),
        ("0-9;9-17", "0;2", [(1, RULE_DISJOINT)]),
        ("0-8;44", "0;2", [(1, RULE_NO_OVERSUBSCRIPTION)]),
        ("0-8;9-17", "0;0", [(1, RULE_GPU_SHARED)]),
        # Rule 2.
        ("0-17;18-35", "4;0", [(0, R2_SOCKET), (1, R2_SOCKET)]),
        ("0-17;18-35", "0,1,2,3,4;5,6,7", [(0, R2_SOCKET)]),
        # Rule 3: only where an unused GPU on another switch would avoid the sharing.
        ("0-17;18-35", "0,1;4,6", [(0, RULE_SWITCH_SPREAD)]),
        ("0-17;18-35", "0,1,2;4,5,6", []),
        ("0-8;9-17;18-26;27-35", "0;1;4;6", [(1, RULE_SWITCH_SPREAD)]),
        ("0-8;9-17;18-26;27-35", "0,1;2,3;4,5;6,7", []),
        ("0-4;5-8;9-12;13-17", "0;1;2;3", []),
        # Rule 4: a rank straddling sockets that other ranks use.
        ("0-8,18-26;9-17,27-35", "0;4", [(0, RULE_MEMORY_LOCAL), (1, RULE_MEMORY_LOCAL)]),
        ("0-35", "0,1,2,3,4,5,6,7", []),
    ],
)
def test_rules_on_apollo(cpus: str, gpus: str, expected: list[tuple[int, str]]) -> None:
    assert rules(cpus, gpus) == expected


def test_reserved_cores_are_checked_per_physical_core() -> None:
    # The site reserves CPU 0; its sibling 36 sits on the same physical core.
    assert rules("36-53;18-35", "0;4", reserved=(0,)) == [(0, RULE_RESERVED)]
    assert rules("1-17;18-35", "0;4", reserved=(0,)) == []


def test_numa_granularity_checks_gpus_per_numa_node() -> None:
    index = topology_index(nps4(cores_per_numa=2, threads=1))
    # CPUs 0-1 are NUMA node 0, GPU 1 is on NUMA node 1 (same socket).
    assert rules("0-1;2-3", "1;0", index, "numa") == [(0, R2_NUMA), (1, R2_NUMA)]
    assert rules("0-1;2-3", "1;0", index, "socket") == []


def test_messages_name_rank_rule_and_reason() -> None:
    found = check_rules(APOLLO, parse_cpu_layout("0-17;36-53"), parse_gpu_layout("0;4"))
    assert [v.message for v in found] == [
        "rank 1: CPUs 36-53 are hardware threads of the same 18 physical cores as rank 0's CPUs "
        "0-17 (rule 1: no two ranks on one physical core)",
        "rank 1: GPU 4 is attached to socket 1 but the rank's CPUs are on socket 0 (rule 2: GPUs "
        "local to the rank's socket)",
    ]


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(1, 4), min_size=1, max_size=4),
    st.permutations(range(4)),
    st.integers(0, 3),
)
def test_flat_node_never_gets_an_invented_warning(
    cores_per_rank: list[int], gpu_order: list[int], gpus_each: int
) -> None:
    index = topology_index(flat_vm(gpus=4, cores=16))
    cpus, start = [], 0
    for count in cores_per_rank:
        cpus.append(tuple(range(start, start + count)))
        start += count
    gpus = [tuple(gpu_order[: min(gpus_each, 4)]) if r == 0 else () for r in range(len(cpus))]
    assert check_rules(index, cpus, gpus) == []


def test_gpu_locality_from_local_cpus_when_numa_node_is_unknown() -> None:
    cores = [Core(0, 0, (0,)), Core(0, 0, (1,)), Core(1, 1, (2,)), Core(1, 1, (3,))]
    numa = [NumaNode(0, 0, (0, 1)), NumaNode(1, 1, (2, 3))]
    gpus = [
        Gpu(0, "a", "g", None, (2, 3)),  # local CPUs of socket 1 only
        Gpu(1, "b", "g", None, (0, 1, 2, 3)),  # every CPU: no information
        Gpu(2, "c", "g", None, ()),
    ]
    index = topology_index(Topology.build(source="t", cores=cores, numa_nodes=numa, gpus=gpus))
    assert index.gpu_numa == {0: 1, 1: None, 2: None}
    assert rules("0-1;2-3", "0;1,2", index) == [(0, R2_SOCKET)]


def test_gpu_on_a_cpu_less_numa_node_is_placed_by_its_local_cpus() -> None:
    # GH200-style: each GPU's memory is a NUMA node without CPUs (2, 3).
    cores = [Core(0, 0, (0,)), Core(0, 0, (1,)), Core(1, 1, (2,)), Core(1, 1, (3,))]
    numa = [
        NumaNode(0, 0, (0, 1)),
        NumaNode(1, 1, (2, 3)),
        NumaNode(2, None, ()),
        NumaNode(3, None, ()),
    ]
    gpus = [Gpu(0, "a", "g", 2, (0, 1)), Gpu(1, "b", "g", 3, (2, 3))]
    index = topology_index(Topology.build(source="t", cores=cores, numa_nodes=numa, gpus=gpus))
    assert index.gpu_numa == {0: 0, 1: 1}
    assert rules("0-1;2-3", "1;0", index) == [(0, R2_SOCKET), (1, R2_SOCKET)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sets(st.integers(0, 71), min_size=1, max_size=6), min_size=1, max_size=5))
def test_rule_1_matches_a_brute_force_oracle(layout: list[set[int]]) -> None:
    cpus = [tuple(sorted(r)) for r in layout]
    core = {cpu: cpu % 36 for cpu in range(72)}  # Apollo: CPU n and n + 36 share a core
    expected = set()
    for b in range(len(cpus)):
        for a in range(b):
            shared_cpus = set(cpus[a]) & set(cpus[b])
            if shared_cpus:
                expected.add((b, RULE_DISJOINT))
            mine = {core[c] for c in cpus[b]}
            theirs = {core[c] for c in cpus[a]}
            siblings = [
                k
                for k in mine & theirs
                if not {c for c in cpus[b] if core[c] == k} & {c for c in cpus[a] if core[c] == k}
            ]
            if siblings:
                expected.add((b, RULE_NO_OVERSUBSCRIPTION))
    found = check_rules(APOLLO, cpus, [() for _ in cpus])
    rule1 = {(v.rank, v.rule) for v in found if v.rule.startswith("rule 1")}
    assert rule1 == expected
