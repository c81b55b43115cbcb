"""What a Slurm job is made of: a site's node type, a plan, a spec and the job-level settings.

``render``, ``submit`` and ``sweep`` build the same :class:`JobInputs` with :func:`job_inputs`
from typed parts: a :class:`JobSettings`, a :class:`~hpcbench.plan.planner.PlanRequest` and a
:class:`~hpcbench.spec.SpecChoices`. A job is fully described by files a user can read (the site
config) and those values; nothing here looks at the machine it runs on, so ``render`` prints the
same script on a laptop as on the cluster's login node.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from hpcbench.backends.registry import node_backend
from hpcbench.backends.spec_check import check_spec
from hpcbench.plan.model import Plan
from hpcbench.plan.planner import PlanRequest, make_plan
from hpcbench.site import NodeType, SiteConfig, load_site
from hpcbench.slurm.render import JobRequest
from hpcbench.spec import RunSpec, SpecChoices


@dataclass(frozen=True, slots=True)
class JobSettings:
    """Where and how a job runs, beside its plan and spec.

    ``site`` is a site config path or a shipped config's name; ``partition`` one of its node
    types or Slurm partitions (None: its only or default one). ``job_name`` None means
    ``hpcbench-MODEL``; ``python`` None means this interpreter; ``time_limit_min`` None means
    the site's time limit.
    """

    site: str | os.PathLike[str]
    partition: str | None = None
    job_name: str | None = None
    python: str | None = None
    time_limit_min: int | None = None


@dataclass(frozen=True, slots=True)
class JobInputs:
    """A site's node type, the plan and spec for it, and the job-level choices."""

    site: SiteConfig
    node_type: NodeType
    plan: Plan
    spec: RunSpec
    job_name: str
    python: str
    time_limit_min: int | None

    def request(self, run_dir: Path | str) -> JobRequest:
        """The render request for this job in ``run_dir`` (made absolute)."""
        return JobRequest(
            plan=self.plan,
            spec=self.spec,
            node_type=self.node_type,
            run_dir=os.path.abspath(run_dir),
            job_name=self.job_name,
            site_name=self.site.name,
            python=self.python,
            time_limit_min=self.time_limit_min,
        )


def job_inputs(job: JobSettings, request: PlanRequest, spec: SpecChoices) -> JobInputs:
    """Load the site, plan ``request`` on its node type and resolve ``spec`` for it.

    The node type supplies the request's reserved cores and data root, and the spec's default
    backend (torch on GPU nodes, else cpu).
    """
    site = load_site(job.site)
    node_type = site.node_type(job.partition)
    plan = make_plan(node_type.topology, request.with_node_type(node_type))
    # The node type decides the default backend, never this host: the job runs over there.
    resolved = spec.resolve(
        node_backend(len(node_type.topology.gpus)),
        nodes=plan.nodes,
        on_gpus=any(r.gpus for r in plan.ranks),
    )
    # What the ranks' backend would refuse is refused here, before a run directory exists.
    check_spec(resolved, plan)
    return JobInputs(
        site=site,
        node_type=node_type,
        plan=plan,
        spec=resolved,
        job_name=job.job_name or f"hpcbench-{resolved.model}",
        python=job.python or sys.executable,
        time_limit_min=job.time_limit_min,
    )
