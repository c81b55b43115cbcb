"""The human views of a plan: the table and the socket picture."""

from __future__ import annotations

from hpcbench.plan.picture import draw_plan, format_picture, format_plan_table
from hpcbench.plan.planner import PlanRequest, make_plan
from tests.topologies import apollo, flat_vm, nps4

APOLLO = apollo()


def test_apollo_picture_marks_cores_and_gpus_by_switch() -> None:
    plan = make_plan(APOLLO, PlanRequest(ranks=4, gpus_per_rank=1))
    assert format_picture(plan, APOLLO).splitlines()[:8] == [
        "socket 0",
        "  NUMA 0  cores 000000000111111111",
        "                switch 0000:02:00.0: GPU 0 [rank 0]  GPU 1 [free]",
        "                switch 0000:08:00.0: GPU 2 [rank 1]  GPU 3 [free]",
        "socket 1",
        "  NUMA 1  cores 222222222333333333",
        "                switch 0000:82:00.0: GPU 4 [rank 2]  GPU 5 [free]",
        "                switch 0000:88:00.0: GPU 6 [rank 3]  GPU 7 [free]",
    ]


def test_reserved_free_and_shared_cores() -> None:
    plan = make_plan(APOLLO, PlanRequest(ranks=2, cores_per_rank=4, reserved_cores=(0,)))
    lines = format_picture(plan, APOLLO, reserved_cpus=(0,)).splitlines()
    assert lines[1] == "  NUMA 0  cores r0000............."
    shared = make_plan(APOLLO, PlanRequest(cpus="0-3;36-39", accept_warnings=True))
    assert format_picture(shared, APOLLO).splitlines()[1] == "  NUMA 0  cores !!!!.............."


def test_nps4_rows_per_numa_node() -> None:
    topology = nps4(cores_per_numa=4)
    plan = make_plan(topology, PlanRequest(granularity="numa"))
    lines = format_picture(plan, topology).splitlines()
    assert lines[:5] == [
        "socket 0",
        "  NUMA 0  cores 0000",
        "                switch sw0: GPU 0 [rank 0]",
        "  NUMA 1  cores 1111",
        "                switch sw1: GPU 1 [rank 1]",
    ]


def test_flat_node_lists_gpus_without_locality() -> None:
    topology = flat_vm(gpus=4, cores=8)
    plan = make_plan(topology, PlanRequest(ranks=3))
    lines = format_picture(plan, topology).splitlines()
    assert lines[1] == "  NUMA 0  cores 001122.."  # 8 cores // 3 ranks: 2 each, 2 left free
    assert lines[2] == "GPUs that report no locality (any rank may use them)"
    assert lines[3] == "  GPU 0 [rank 0]  GPU 1 [rank 1]  GPU 2 [rank 2]  GPU 3 [free]"


def test_long_sockets_wrap_and_many_ranks_use_hash() -> None:
    topology = flat_vm(gpus=0, cores=100)
    plan = make_plan(topology, PlanRequest(ranks=100))
    lines = format_picture(plan, topology).splitlines()
    head = "  NUMA 0  cores "
    assert lines[1] == head + "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ##"
    assert lines[2] == " " * len(head) + "#" * 36


def test_table_and_render_for_several_nodes_and_warnings() -> None:
    plan = make_plan(
        APOLLO,
        PlanRequest(gpus="0,1;4,6", nodes=3, accept_warnings=True, data_root="/scratch/d"),
    )
    table = format_plan_table(plan).splitlines()
    assert len(table) == 4  # header, node 0's two ranks, the note
    assert table[1].split() == ["0", "0", "0", "0", "0", "0-17", "0,1", "0", "/scratch/d/rank00000"]
    assert table[3] == "(nodes 1-2 repeat this layout: rank = node x 2 + local rank)"
    text = draw_plan(plan, APOLLO)
    assert text.startswith("plan: 2 ranks per node x 3 nodes on test:apollo")
    assert "warnings (accepted, 1):\n  - rank 0: GPUs 0,1 share PCIe switch 0000:02:00.0" in text


def test_a_plan_without_data_root_shows_no_placeholder() -> None:
    """The planner's {data_root} placeholder is the runtime's business, not the reader's."""
    plan = make_plan(APOLLO, PlanRequest(ranks=2))
    text = draw_plan(plan, APOLLO)
    assert "{data_root}" not in text
    table = format_plan_table(plan).splitlines()
    assert table[1].split()[-1] == "-"
    assert table[3].startswith("data dir -: no data root (--data-root DIR")
