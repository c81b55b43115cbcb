"""Planning speed: 10 000 plans of a realistic sweep, with and without the per-topology index cache.

A sweep plans every point before it submits anything, so planning must stay cheap. The sweep
here crosses three nodes (the shipped HPE Apollo 6500 config: 2 x 18 cores with HT and 8 GPUs
behind 4 PCIe switches; a flat 4 x H200 VM; a 2-socket NPS4 node with 128 cores, 256 threads and
8 GPUs) with ranks (auto, 1, 2, 4, 8), GPUs per rank (all, 1, 2), socket or NUMA granularity,
hardware threads on or off, 1, 2 or 4 nodes, and the seed's explicit layouts. Points the planner
rejects (e.g. 8 ranks x 2 GPUs on 8 GPUs) are left out of the timed set and counted.

Each repeat plans PLANS points in order (cycling over the valid ones) twice, side by side: with
the per-topology index cache (what hpcbench does) and with the cache cleared before every plan
(what it would cost without it). Prints one line per repeat and a summary; ``--json`` for machines.

    .venv/bin/python benchmarks/bench_plan.py                    # 10 000 plans, 5 repeats
    .venv/bin/python benchmarks/bench_plan.py --plans 2000 --repeat 3 --json
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hpcbench.errors import PlanError  # noqa: E402
from hpcbench.plan import index as plan_index  # noqa: E402
from hpcbench.plan.planner import PlanRequest, make_plan  # noqa: E402
from hpcbench.topology.model import Topology  # noqa: E402
from tests.topologies import apollo_site, flat_vm, nps4  # noqa: E402

SEED_LAYOUTS = [
    ("0,1,2,3;4,5,6,7", "0-17;18-35"),
    ("0,2;4,6", "0-17;18-35"),
    ("0;2;4;6", "0-8;9-17;18-26;27-35"),
    ("0,1;2,3;4,5;6,7", "0-8,36-44;9-17,45-53;18-26,54-62;27-35,63-71"),
]


def sweep() -> tuple[list[tuple[str, Topology, PlanRequest]], int]:
    """The valid (name, topology, request) points of the sweep, and how many were rejected."""
    nodes = [("apollo", apollo_site()), ("flat-4xH200", flat_vm(4, 96)), ("nps4-128c", nps4(16))]
    points: list[tuple[str, Topology, PlanRequest]] = []
    rejected = 0
    grid = itertools.product(
        nodes, ["auto", 1, 2, 4, 8], [None, 1, 2], ["socket", "numa"], [False, True], [1, 2, 4]
    )
    for (name, topology), ranks, gpus, granularity, hwthreads, node_count in grid:
        request = PlanRequest(
            ranks=ranks,  # type: ignore[arg-type]
            gpus_per_rank=gpus,
            granularity=granularity,  # type: ignore[arg-type]
            use_hwthreads=hwthreads,
            nodes=node_count,
        )
        try:
            make_plan(topology, request)
        except PlanError:
            rejected += 1
            continue
        points.append((name, topology, request))
    apollo = nodes[0][1]
    for gpus, cpus in SEED_LAYOUTS:
        points.append(("apollo-explicit", apollo, PlanRequest(gpus=gpus, cpus=cpus)))
        points.append(("apollo-explicit", apollo, PlanRequest(gpus=gpus)))
    return points, rejected


def time_plans(
    points: list[tuple[str, Topology, PlanRequest]], plans: int, cold: bool
) -> tuple[float, float]:
    """Wall-clock and CPU seconds to make ``plans`` plans, cycling over ``points``.

    CPU time is reported beside wall time because other work on a shared 2-core machine
    stretches wall time but barely changes the CPU time the planner itself needs.
    """
    order = list(itertools.islice(itertools.cycle(points), plans))
    cache = plan_index._CACHE
    w0, c0 = time.perf_counter(), time.process_time()
    for _, topology, request in order:
        if cold:
            cache.clear()
        make_plan(topology, request)
    return time.perf_counter() - w0, time.process_time() - c0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plans", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    points, rejected = sweep()
    ranks_total = sum(len(make_plan(t, r).ranks) for _, t, r in points)
    warm: list[tuple[float, float]] = []
    cold: list[tuple[float, float]] = []
    for i in range(args.repeat):
        warm.append(time_plans(points, args.plans, cold=False))
        cold.append(time_plans(points, args.plans, cold=True))
        if not args.json:
            print(
                f"repeat {i + 1}: {args.plans} plans in {warm[-1][0]:.3f} s wall "
                f"({warm[-1][1]:.3f} s CPU) with the index cache; {cold[-1][0]:.3f} s wall "
                f"({cold[-1][1]:.3f} s CPU) rebuilding it every plan"
            )
    wall = [w for w, _ in warm]
    cpu = [c for _, c in warm]
    result = {
        "plans": args.plans,
        "repeat": args.repeat,
        "distinct_points": len(points),
        "rejected_points": rejected,
        "mean_ranks_per_plan": ranks_total / len(points),
        "cached_wall_s_min": min(wall),
        "cached_wall_s_median": statistics.median(wall),
        "cached_cpu_s_median": statistics.median(cpu),
        "uncached_wall_s_median": statistics.median(w for w, _ in cold),
        "uncached_cpu_s_median": statistics.median(c for _, c in cold),
        "cached_us_per_plan_median": statistics.median(wall) / args.plans * 1e6,
        "uncached_over_cached_cpu_median": statistics.median(
            c[1] / w[1] for c, w in zip(cold, warm, strict=True)
        ),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"sweep: {len(points)} distinct valid points ({rejected} rejected by the planner), "
        f"{result['mean_ranks_per_plan']:.1f} ranks per plan on average"
    )
    per_plan_us = result["cached_us_per_plan_median"]
    print(
        f"{args.plans} plans: median {result['cached_wall_s_median']:.3f} s wall "
        f"({per_plan_us:.0f} us/plan), min {result['cached_wall_s_min']:.3f} s, median CPU "
        f"{result['cached_cpu_s_median']:.3f} s; rebuilding the per-topology tables every plan "
        f"takes x{result['uncached_over_cached_cpu_median']:.1f} the CPU time"
    )


if __name__ == "__main__":
    main()
