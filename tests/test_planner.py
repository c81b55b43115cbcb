"""The placement planner: automatic plans, explicit layouts, errors, and the rule invariants."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcbench.commands.flags import PlacementFlags
from hpcbench.cpulist import format_cpulist
from hpcbench.errors import PlanError
from hpcbench.plan.index import topology_index
from hpcbench.plan.launch import cuda_visible_devices, numactl_args, slurm_gpu_bind
from hpcbench.plan.layout import check_rules, format_cpu_layout, format_gpu_layout
from hpcbench.plan.model import Plan
from hpcbench.plan.planner import PlanRequest, make_plan
from hpcbench.resources import site_configs_dir
from hpcbench.site import load_site
from hpcbench.topology.model import Core, Gpu, NumaNode, Topology
from tests.topologies import apollo, apollo_site, cpu_only, flat_vm, nps4

# The shipped site config; tests.topologies.apollo() builds the same node by hand (checked below).
APOLLO = apollo_site()
APOLLO_SWITCH = {g.index: g.pcie_switch for g in APOLLO.gpus}


def layout(plan: Plan) -> list[tuple[str, tuple[int, ...]]]:
    """(CPU list, GPUs) per rank: the compact form the tables below use."""
    return [(format_cpulist(r.cpus), r.gpus) for r in plan.ranks]


def physical_cores(topology: Topology, cpus: tuple[int, ...]) -> set[int]:
    core_of = topology.core_of()
    return {core_of[cpu].cpus[0] for cpu in cpus}


# ----------------------------------------------------------------------------- the cases
def test_apollo_two_ranks_four_gpus_each_socket_with_its_own_gpus() -> None:
    plan = make_plan(APOLLO, PlanRequest(ranks=2, gpus_per_rank=4))
    assert layout(plan) == [("0-17", (0, 1, 2, 3)), ("18-35", (4, 5, 6, 7))]
    assert [(r.socket, r.numa_node, r.mem_nodes) for r in plan.ranks] == [
        (0, 0, (0,)),
        (1, 1, (1,)),
    ]
    assert plan.warnings == ()
    assert plan.source.startswith("site:") and "hpe-apollo6500-gen10.yaml" in plan.source


def test_apollo_two_ranks_two_gpus_one_behind_each_switch() -> None:
    plan = make_plan(APOLLO, PlanRequest(ranks=2, gpus_per_rank=2))
    assert layout(plan) == [("0-17", (0, 2)), ("18-35", (4, 6))]
    for rank in plan.ranks:
        assert len({APOLLO_SWITCH[g] for g in rank.gpus}) == 2
        assert {g // 4 for g in rank.gpus} == {rank.socket}


def test_apollo_four_ranks_one_gpu_own_cores_local_gpu_separate_switches() -> None:
    plan = make_plan(APOLLO, PlanRequest(ranks=4, gpus_per_rank=1))
    cores = [physical_cores(APOLLO, r.cpus) for r in plan.ranks]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not cores[i] & cores[j]
    for rank in plan.ranks:
        (gpu,) = rank.gpus
        assert gpu // 4 == rank.socket
        assert all(APOLLO.core_of()[c].package == rank.socket for c in rank.cpus)
    assert len({APOLLO_SWITCH[r.gpus[0]] for r in plan.ranks}) == 4
    assert layout(plan) == [("0-8", (0,)), ("9-17", (2,)), ("18-26", (4,)), ("27-35", (6,))]
    assert plan.warnings == ()


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (PlanRequest(), [("0-17", (0, 1, 2, 3)), ("18-35", (4, 5, 6, 7))]),
        (PlanRequest(ranks=1), [("0-35", tuple(range(8)))]),
        (
            PlanRequest(ranks=4),
            [("0-8", (0, 2)), ("9-17", (1, 3)), ("18-26", (4, 6)), ("27-35", (5, 7))],
        ),
        (
            PlanRequest(ranks=8, gpus_per_rank=1),
            [
                ("0-3", (0,)),
                ("4-7", (2,)),
                ("8-11", (1,)),
                ("12-15", (3,)),
                ("18-21", (4,)),
                ("22-25", (6,)),
                ("26-29", (5,)),
                ("30-33", (7,)),
            ],
        ),
        (PlanRequest(ranks=2, gpus_per_rank=0), [("0-17", ()), ("18-35", ())]),
        (PlanRequest(ranks=2, cores_per_rank=4, gpus_per_rank=1), [("0-3", (0,)), ("18-21", (4,))]),
        (
            PlanRequest(ranks=2, gpus_per_rank=2, use_hwthreads=True),
            [("0-17,36-53", (0, 2)), ("18-35,54-71", (4, 6))],
        ),
        (
            PlanRequest(ranks=2, gpus_per_rank=1, reserved_cores=(0, 36)),
            [("1-17", (0,)), ("18-35", (4,))],
        ),
        # More ranks than sockets that do not divide: the first socket takes the extra rank.
        (PlanRequest(ranks=3), [("0-8", (0, 2)), ("9-17", (1, 3)), ("18-35", (4, 5, 6, 7))]),
    ],
)
def test_apollo_automatic_plans(request_: PlanRequest, expected: list[object]) -> None:
    plan = make_plan(APOLLO, request_)
    assert layout(plan) == expected
    assert plan.warnings == ()


@pytest.mark.parametrize(
    "request_",
    [
        PlanRequest(),
        PlanRequest(ranks=4, gpus_per_rank=1),
        PlanRequest(ranks=8, use_hwthreads=True),
        PlanRequest(gpus="0,1;4,5", accept_warnings=True),
        PlanRequest(cpus="0-17;36-53;18-35;54-71", accept_warnings=True),
    ],
)
def test_hand_built_apollo_plans_like_the_site_config(request_: PlanRequest) -> None:
    built, shipped = make_plan(apollo(), request_), make_plan(APOLLO, request_)
    assert built.ranks == shipped.ranks
    assert len(built.warnings) == len(shipped.warnings)


def test_one_rank_over_both_sockets_binds_memory_to_both() -> None:
    (rank,) = make_plan(APOLLO, PlanRequest(ranks=1)).ranks
    assert (rank.socket, rank.numa_node, rank.mem_nodes) == (None, None, (0, 1))


def test_reserved_cpu_keeps_its_whole_core_free() -> None:
    plan = make_plan(APOLLO, PlanRequest(ranks=2, reserved_cores=(36,), use_hwthreads=True))
    assert 0 not in plan.ranks[0].cpus and 36 not in plan.ranks[0].cpus
    assert len(plan.ranks[0].cpus) == 34 and len(plan.ranks[1].cpus) == 36


def test_nodes_repeat_the_layout_node_major() -> None:
    plan = make_plan(APOLLO, PlanRequest(ranks=2, gpus_per_rank=2, nodes=3, data_root="/dev/shm/x"))
    assert plan.nodes == 3 and plan.world_size == 6
    assert [(r.rank, r.node, r.local_rank) for r in plan.ranks] == [
        (0, 0, 0),
        (1, 0, 1),
        (2, 1, 0),
        (3, 1, 1),
        (4, 2, 0),
        (5, 2, 1),
    ]
    assert plan.node_ranks(2)[1].gpus == (4, 6)
    assert plan.rank(5).data_dir == "/dev/shm/x/rank00005"


def test_data_dir_is_a_placeholder_without_a_data_root() -> None:
    plan = make_plan(APOLLO, PlanRequest())
    assert [r.data_dir for r in plan.ranks] == ["{data_root}/rank00000", "{data_root}/rank00001"]


def test_launch_settings_follow_the_plan() -> None:
    plan = make_plan(APOLLO, PlanRequest(ranks=2, gpus_per_rank=2))
    assert numactl_args(plan.ranks[1]) == ["numactl", "--physcpubind=18-35", "--membind=1"]
    assert cuda_visible_devices(plan.ranks[1]) == "4,6"
    assert slurm_gpu_bind(plan) == "verbose,mask_gpu:0x5,0x50"


def test_plan_round_trips_through_json() -> None:
    plan = make_plan(APOLLO, PlanRequest(ranks=4, accept_warnings=True, gpus="0;1;4;5"))
    assert Plan.from_json(plan.to_json()) == plan


# ----------------------------------------------------------------------------- other nodes
@pytest.mark.parametrize("ranks", [1, 2, 3, 4, 5, 16, "auto"])
@pytest.mark.parametrize("gpus_per_rank", [None, 0, 1])
def test_flat_vm_any_split_works_without_invented_warnings(
    ranks: int | str, gpus_per_rank: int | None
) -> None:
    topology = flat_vm(gpus=4)
    if gpus_per_rank == 1 and ranks != "auto" and int(ranks) > 4:
        with pytest.raises(PlanError, match="node has 4"):
            make_plan(topology, PlanRequest(ranks=ranks, gpus_per_rank=gpus_per_rank))  # type: ignore[arg-type]
        return
    plan = make_plan(topology, PlanRequest(ranks=ranks, gpus_per_rank=gpus_per_rank))  # type: ignore[arg-type]
    assert plan.warnings == ()
    used = [g for r in plan.ranks for g in r.gpus]
    assert len(used) == len(set(used))
    if gpus_per_rank is None:
        assert all(len(r.gpus) == 4 // len(plan.ranks) for r in plan.ranks)
    assert all(r.mem_nodes == (0,) and r.socket == 0 for r in plan.ranks)


@pytest.mark.parametrize("gpus", ["0,1;2,3", "3;0;2;1", "0,1,2,3"])
def test_flat_vm_explicit_layouts_are_clean(gpus: str) -> None:
    assert make_plan(flat_vm(gpus=4), PlanRequest(gpus=gpus)).warnings == ()


def test_nps4_numa_granularity_one_rank_per_numa_node_with_its_gpu() -> None:
    topology = nps4()
    plan = make_plan(topology, PlanRequest(granularity="numa"))
    assert len(plan.ranks) == 8
    for rank in plan.ranks:
        assert rank.numa_node == rank.local_rank and rank.gpus == (rank.local_rank,)
        assert rank.mem_nodes == (rank.local_rank,)
        assert len(rank.cpus) == 8
    assert make_plan(topology, PlanRequest(granularity="numa", ranks=2)).ranks[1].mem_nodes == (
        4,
        5,
        6,
        7,
    )


def test_nps4_socket_granularity_still_keeps_ranks_on_their_numa_node() -> None:
    plan = make_plan(nps4(), PlanRequest(ranks=8, gpus_per_rank=1))
    for rank in plan.ranks:
        assert rank.mem_nodes == (rank.local_rank,)
        assert rank.gpus == (rank.local_rank,)
    auto = make_plan(nps4(), PlanRequest())
    assert [r.mem_nodes for r in auto.ranks] == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert [r.numa_node for r in auto.ranks] == [None, None]


def test_nps4_reserved_core_does_not_push_ranks_across_numa_nodes() -> None:
    plan = make_plan(nps4(cores_per_numa=20), PlanRequest(ranks=8, reserved_cores=(0,)))
    assert [r.mem_nodes for r in plan.ranks] == [(n,) for n in range(8)]
    assert [len(r.cpus) for r in plan.ranks] == [19] + [20] * 7


def test_cpu_only_node_gets_no_gpus() -> None:
    plan = make_plan(cpu_only(), PlanRequest())
    assert layout(plan) == [("0-7", ()), ("8-15", ())]
    with pytest.raises(PlanError, match="no GPUs"):
        make_plan(cpu_only(), PlanRequest(gpus_per_rank=1))


# ----------------------------------------------------------------------------- explicit layouts
def test_seed_two_process_layout_is_clean() -> None:
    plan = make_plan(APOLLO, PlanRequest(gpus="0,2;4,6", cpus="0-17;18-35"))
    assert layout(plan) == [("0-17", (0, 2)), ("18-35", (4, 6))]
    assert plan.warnings == ()


def test_seed_four_process_layout_shares_physical_cores() -> None:
    request = PlanRequest(gpus="0;2;4;6", cpus="0-17;36-53;18-35;54-71")
    with pytest.raises(PlanError) as info:
        make_plan(APOLLO, request)
    message = str(info.value)
    assert (
        "rank 1: CPUs 36-53 are hardware threads of the same 18 physical cores as rank 0's"
        in message
    )
    assert "rank 3: CPUs 54-71" in message and "rank 2" in message
    assert "no two ranks on one physical core" in message and "--accept-warnings" in message
    assert "\n" not in message
    accepted = make_plan(
        APOLLO, PlanRequest(gpus="0;2;4;6", cpus="0-17;36-53;18-35;54-71", accept_warnings=True)
    )
    assert len(accepted.warnings) == 2
    assert accepted.warnings[0].startswith("rank 1: CPUs 36-53")
    assert layout(accepted)[1] == ("36-53", (2,))  # checked, never rewritten


def test_explicit_gpus_get_cores_on_their_socket() -> None:
    plan = make_plan(APOLLO, PlanRequest(gpus="4,6;0,2"))
    assert layout(plan) == [("18-35", (4, 6)), ("0-17", (0, 2))]
    assert [r.socket for r in plan.ranks] == [1, 0]


def test_explicit_cpus_get_local_gpus_spread_over_switches() -> None:
    plan = make_plan(APOLLO, PlanRequest(cpus="18-35;0-17", gpus_per_rank=2))
    assert layout(plan) == [("18-35", (4, 6)), ("0-17", (0, 2))]


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (
            PlanRequest(ranks=2, gpus_per_rank=5),
            "rank 1 gets only 3 of 5 GPUs: 2 ranks x 5 GPUs need 10 GPUs but the node has 8 "
            "(rule 1",
        ),
        (PlanRequest(ranks=1, gpus_per_rank=9), "node has 8"),
        (
            PlanRequest(cpus="0-8;9-17", gpus_per_rank=3),
            "rank 1 gets only 1 of 3 GPUs: socket 0 has 4 local GPUs for 2 ranks (rule 2",
        ),
        (
            PlanRequest(ranks=37),
            "rank 36 gets no cores: 37 ranks per node need at least 37 physical cores but the "
            "node has 36 free (rule 1",
        ),
        (
            PlanRequest(ranks=2, cores_per_rank=19),
            "gets no cores: 1 ranks x 19 cores do not fit on socket 0",
        ),
        (PlanRequest(gpus="0,2;9"), "--gpus: rank 1: GPU 9 does not exist on this node"),
        (PlanRequest(cpus="0-17;72"), "--cpus: rank 1: CPU 72 does not exist on this node"),
        (
            PlanRequest(cpus="0-17;10-35"),
            "rank 1: CPUs 10-17 are also given to rank 0 (rule 1: disjoint cores)",
        ),
        (PlanRequest(cpus="0-17;;18-35"), "--cpus: rank 1 has no CPUs"),
        (
            PlanRequest(gpus="4;0", cpus="0-17;18-35"),
            "rank 0: GPU 4 is attached to socket 1 but the rank's CPUs are on socket 0 "
            "(rule 2: GPUs local to the rank's socket)",
        ),
        (
            PlanRequest(gpus="0,1;4,6"),
            "rank 0: GPUs 0,1 share PCIe switch cpu0-switch0 while GPU 2 behind another switch "
            "is unused (rule 3",
        ),
        (
            PlanRequest(gpus="0;1;4;6"),
            "rank 1: GPU 1 shares PCIe switch cpu0-switch0 with rank 0 while GPU 2",
        ),
        (PlanRequest(gpus="0;0"), "rank 1: GPU 0 is also used by rank 0"),
        (
            PlanRequest(cpus="0-8,18-26;9-17,27-35"),
            "rank 0: its CPUs span socket 0 and socket 1, which it shares with rank 1",
        ),
        (
            PlanRequest(cpus="0-17;18-35", reserved_cores=(0,)),
            "rank 0: CPUs 0 are on cores the site reserves",
        ),
        (
            PlanRequest(ranks=4, gpus="0;2"),
            "the number of ranks per node disagrees: --gpus gives 2, --ranks gives 4",
        ),
        (PlanRequest(gpus="0;2", cpus="0-17"), "--cpus gives 1, --gpus gives 2"),
        (PlanRequest(granularity="numa", ranks=3), None),
    ],
)
def test_bad_requests_are_one_line_errors(request_: PlanRequest, expected: str | None) -> None:
    with pytest.raises(PlanError) as info:
        make_plan(APOLLO if expected is not None else nps4(), request_)
    message = str(info.value)
    assert "\n" not in message
    if expected is not None:
        assert expected in message
    else:
        assert "3 ranks cannot share the node's 8 NUMA nodes evenly: use 1, 2, 4" in message


def test_remote_gpus_only_with_accepted_warnings() -> None:
    with pytest.raises(PlanError, match="rank 0 gets only 4 of 6 GPUs: socket 0 has 4 local GPUs"):
        make_plan(APOLLO, PlanRequest(cpus="0-17", gpus_per_rank=6))
    plan = make_plan(APOLLO, PlanRequest(cpus="0-17", gpus_per_rank=6, accept_warnings=True))
    assert plan.ranks[0].gpus == (0, 1, 2, 3, 4, 6)
    assert plan.warnings == (
        "rank 0: GPU 4 is attached to socket 1 but the rank's CPUs are on socket 0 (rule 2: GPUs "
        "local to the rank's socket)",
        "rank 0: GPU 6 is attached to socket 1 but the rank's CPUs are on socket 0 (rule 2: GPUs "
        "local to the rank's socket)",
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ranks": 0}, "--ranks: 0"),
        ({"ranks": "many"}, "--ranks: 'many'"),
        ({"gpus_per_rank": -1}, "--gpus-per-rank"),
        ({"cores_per_rank": 0}, "--cores-per-rank"),
        ({"nodes": 0}, "--nodes"),
        ({"granularity": "core"}, "granularity"),
        ({"cpus": "0-3", "cores_per_rank": 2}, "--cores-per-rank cannot"),
        ({"cpus": "0-3", "use_hwthreads": True}, "--hwthreads cannot"),
    ],
)
def test_invalid_requests(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(PlanError, match=message):
        PlanRequest(**kwargs)  # type: ignore[arg-type]


def test_request_from_options_takes_site_values() -> None:
    class NodeTypeStub:
        reserved_cores = (0, 36)
        data_root = "/dev/shm/site"

    request = PlacementFlags(ranks="2", gpus_per_rank=None, numa=False).request(NodeTypeStub())
    assert request == PlanRequest(ranks=2, reserved_cores=(0, 36), data_root="/dev/shm/site")
    assert PlacementFlags(numa=True, hwthreads=True).request().granularity == "numa"


# ----------------------------------------------------------------------------- invariants
@st.composite
def topologies(draw: st.DrawFn) -> Topology:
    """Random nodes: 1-3 sockets, 1-2 NUMA nodes each (ids in order or interleaved across
    sockets), 1-6 cores with 1-2 threads, 0-3 GPUs per NUMA node (by NUMA node, by local CPUs
    only, or with no locality), behind 0-2 switches."""
    sockets = draw(st.integers(1, 3))
    numa_per_socket = draw(st.integers(1, 2))
    cores_per_numa = draw(st.integers(1, 6))
    threads = draw(st.integers(1, 2))
    interleave = draw(st.booleans())
    total = sockets * numa_per_socket * cores_per_numa
    cores, numa, gpus = [], [], []
    for slot in range(sockets * numa_per_socket):
        socket = slot // numa_per_socket
        node = (slot % numa_per_socket) * sockets + socket if interleave else slot
        cpus = []
        for k in range(cores_per_numa):
            first = slot * cores_per_numa + k
            core_cpus = tuple(first + t * total for t in range(threads))
            cores.append(Core(socket, node, core_cpus))
            cpus.extend(core_cpus)
        numa.append(NumaNode(node, socket, tuple(sorted(cpus))))
        for _ in range(draw(st.integers(0, 3))):
            switch = draw(st.sampled_from([None, f"n{node}a", f"n{node}b"]))
            locality = draw(st.sampled_from(["numa", "cpus", "none"]))
            gpus.append(
                Gpu(
                    index=len(gpus),
                    pci_bus_id="",
                    model="gpu",
                    numa_node=node if locality == "numa" else None,
                    cpus=tuple(sorted(cpus)) if locality != "none" else (),
                    pcie_switch=switch,
                )
            )
    return Topology.build(source="hypothesis", cores=cores, numa_nodes=numa, gpus=gpus)


@settings(max_examples=300, deadline=None)
@given(
    topology=topologies(),
    ranks=st.one_of(st.just("auto"), st.integers(1, 8)),
    gpus_per_rank=st.one_of(st.none(), st.integers(0, 3)),
    numa=st.booleans(),
    hwthreads=st.booleans(),
    reserve_first=st.booleans(),
)
def test_automatic_plans_never_break_a_rule(
    topology: Topology,
    ranks: int | str,
    gpus_per_rank: int | None,
    numa: bool,
    hwthreads: bool,
    reserve_first: bool,
) -> None:
    request = PlanRequest(
        ranks=ranks,  # type: ignore[arg-type]
        gpus_per_rank=gpus_per_rank,
        granularity="numa" if numa else "socket",
        use_hwthreads=hwthreads,
        reserved_cores=topology.cores[0].cpus[:1] if reserve_first else (),
    )
    try:
        plan = make_plan(topology, request)
    except PlanError as exc:
        assert "\n" not in str(exc)
        return
    assert plan.warnings == ()
    index = topology_index(topology)
    cpus = [r.cpus for r in plan.ranks]
    gpus = [r.gpus for r in plan.ranks]
    assert check_rules(index, cpus, gpus, request.granularity, request.reserved_cores) == []
    seen: set[int] = set()
    for rank in plan.ranks:
        assert rank.cpus, "every rank is pinned"
        assert list(rank.cpus) == sorted(rank.cpus)
        cores = physical_cores(topology, rank.cpus)
        assert not cores & seen
        seen |= cores
        if gpus_per_rank is not None:
            assert len(rank.gpus) == gpus_per_rank
    # The plan written out in the seed's syntax is accepted unchanged as an explicit layout.
    explicit = PlanRequest(
        cpus=format_cpu_layout(cpus),
        gpus=format_gpu_layout(gpus) if all(gpus) else None,
        gpus_per_rank=None if all(gpus) else gpus_per_rank,
        granularity=request.granularity,
        reserved_cores=request.reserved_cores,
    )
    again = make_plan(topology, explicit)
    assert again.warnings == ()
    assert [r.cpus for r in again.ranks] == cpus
    if all(gpus):
        assert [r.gpus for r in again.ranks] == gpus


def test_gpus_on_cpu_less_numa_nodes_still_go_to_their_socket() -> None:
    cores = [Core(s, s, (s * 4 + k,)) for s in range(2) for k in range(4)]
    numa = [NumaNode(0, 0, (0, 1, 2, 3)), NumaNode(1, 1, (4, 5, 6, 7))]
    numa += [NumaNode(2, None, ()), NumaNode(3, None, ())]
    gpus = [Gpu(0, "a", "GH200", 2, (0, 1, 2, 3)), Gpu(1, "b", "GH200", 3, (4, 5, 6, 7))]
    topology = Topology.build(source="t", cores=cores, numa_nodes=numa, gpus=gpus)
    plan = make_plan(topology, PlanRequest())
    assert layout(plan) == [("0-3", (0,)), ("4-7", (1,))]


def test_numa_domains_follow_sockets_when_numa_ids_interleave() -> None:
    # Socket 0 holds NUMA nodes 0 and 2, socket 1 holds 1 and 3.
    cores = [Core(node % 2, node, (node * 2 + k,)) for node in range(4) for k in range(2)]
    numa = [NumaNode(n, n % 2, (n * 2, n * 2 + 1)) for n in range(4)]
    topology = Topology.build(source="t", cores=cores, numa_nodes=numa)
    plan = make_plan(topology, PlanRequest(granularity="numa", ranks=2))
    assert [(r.socket, r.mem_nodes) for r in plan.ranks] == [(0, (0, 2)), (1, (1, 3))]
    assert plan.warnings == ()


def test_gpus_per_rank_must_match_an_explicit_gpu_layout() -> None:
    with pytest.raises(PlanError, match="--gpus-per-rank 1 disagrees with --gpus '0,2;4,6'"):
        make_plan(APOLLO, PlanRequest(gpus="0,2;4,6", gpus_per_rank=1))
    assert make_plan(APOLLO, PlanRequest(gpus="0,2;4,6", gpus_per_rank=2)).warnings == ()


def test_reserved_cores_are_kept_as_a_tuple() -> None:
    request = PlanRequest(reserved_cores=[0, 36])  # type: ignore[arg-type]
    assert request.reserved_cores == (0, 36)
    assert hash(request) == hash(PlanRequest(reserved_cores=(0, 36)))


def shipped(name: str) -> Topology:
    return load_site(site_configs_dir() / f"{name}.yaml").node_type(None).topology


def test_dgx_a100_ranks_on_gpu_numa_nodes_keep_their_own_gpus() -> None:
    # NPS4, GPUs only on NUMA nodes 1, 3, 5 and 7: rank 0 (NUMA 0) must not take NUMA 3's GPU.
    topology = shipped("nvidia-dgx-a100")
    plan = make_plan(topology, PlanRequest(ranks=8, gpus_per_rank=1))
    for rank in plan.ranks:
        (gpu,) = rank.gpus
        home = topology.gpu(gpu).numa_node
        has_own = any(g.numa_node == rank.numa_node for g in topology.gpus)
        assert (
            home == rank.numa_node if has_own else topology.numa_node(home).package == rank.socket
        )
    assert plan.warnings == ()


@pytest.mark.parametrize("name", sorted(p.stem for p in site_configs_dir().glob("*.yaml")))
@pytest.mark.parametrize(
    "request_",
    [
        PlanRequest(),
        PlanRequest(granularity="numa"),
        PlanRequest(ranks=1),
        PlanRequest(ranks=2, gpus_per_rank=1),
        PlanRequest(ranks=4, gpus_per_rank=1),
        PlanRequest(ranks=8, use_hwthreads=True),
    ],
)
def test_every_shipped_site_config_plans_cleanly(name: str, request_: PlanRequest) -> None:
    topology = shipped(name)
    try:
        plan = make_plan(topology, request_)
    except PlanError as exc:
        assert "\n" not in str(exc) and "rank" in str(exc)
        return
    assert plan.warnings == ()
    index = topology_index(topology)
    cpus, gpus = [r.cpus for r in plan.ranks], [r.gpus for r in plan.ranks]
    assert check_rules(index, cpus, gpus, request_.granularity) == []
