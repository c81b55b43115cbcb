"""Build real run directories (rank files → ``aggregate_run``) whose figures are known.

Every rank runs ``iterations`` DLBS-style iterations of ``iteration_ms`` on its GPUs, all ranks
starting together, so the common-window throughput is exactly
``sum(len(gpus) for gpus in layout) * batch * 1000 / iteration_ms`` img/s.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hpcbench.aggregate import aggregate_run
from hpcbench.plan.model import Plan, RankPlacement
from hpcbench.spec import RunSpec
from tests.rankfiles import T0_NS, iteration_batches, write_rank

SITE_YAML = """\
name: {site}
description: test cluster
node_types:
  gpu:
    topology: {{}}
"""


def expected_img_s(layout: Sequence[Sequence[int]], batch: int, iteration_ms: float) -> float:
    """The common-window throughput of a run built by :func:`make_run`."""
    return sum(len(g) for g in layout) * batch * 1000.0 / iteration_ms


def make_run(
    root: Path,
    run_id: str,
    *,
    model: str = "resnet50",
    batch: int = 128,
    layout: Sequence[Sequence[int]] = ((0, 1), (2, 3)),
    iteration_ms: float = 50.0,
    iterations: int = 60,
    complete: bool = True,
    site: str = "testsite",
    partition: str = "gpu",
    spec: dict[str, Any] | None = None,
    nodes: int = 1,
) -> Path:
    """A run directory as ``hpcbench run``/``submit`` leave it, aggregated.

    ``layout`` is one node's; with ``nodes`` > 1 every node runs it (ranks node-major).
    """
    run_dir = root / run_id
    run_dir.mkdir(parents=True)
    ranks = [gpus for _ in range(nodes) for gpus in layout]
    world_size = len(ranks)
    slurm = {"job_id": "1234", "partition": partition, "cluster": site}
    for rank, gpus in enumerate(ranks):
        batches = iteration_batches(
            T0_NS, [iteration_ms] * iterations, num_devices=len(gpus), batch_size=batch
        )
        write_rank(
            run_dir,
            rank,
            world_size,
            batches,
            num_devices=len(gpus),
            batch_size=batch,
            gpus=list(gpus),
            run_id=run_id,
            complete=complete or rank < world_size - 1,
            attrs={"model": model, "backend": "torch", "slurm_json": json.dumps(slurm)},
        )
    (run_dir / "run.json").write_text(
        json.dumps({"run_id": run_id, "created": "2026-11-28T20:00:00+00:00", "host": "node001"})
    )
    per_node = len(layout)
    Plan(
        ranks=tuple(
            RankPlacement(
                rank,
                rank // per_node,
                rank % per_node,
                0,
                0,
                tuple(range(4 * (rank % per_node), 4 * (rank % per_node) + 4)),
                tuple(g),
                (0,),
            )
            for rank, g in enumerate(ranks)
        ),
        warnings=(),
        source="test",
        nodes=nodes,
    ).write(run_dir / "plan.json")
    # A duration the ranks do not overshoot (the validity check compares them); the same for
    # every run, so that runs differing only in speed stay repeats of one another.
    timing = {} if "num_batches" in (spec or {}) else {"duration_s": 30.0}
    RunSpec(backend="torch", model=model, batch_size=batch, **{**timing, **(spec or {})}).write(
        run_dir / "spec.json"
    )
    (run_dir / "site.yaml").write_text(SITE_YAML.format(site=site))
    (run_dir / "job.sbatch").write_text("#!/bin/bash\n#SBATCH --partition=gpu\nsrun true\n")
    aggregate_run(run_dir, allow_partial=not complete)
    return run_dir
