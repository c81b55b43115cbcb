"""Flags shared by ``render``, ``submit`` and ``sweep``: site, job, plan and spec in one place.

A job is fully described by files a user can read (the site config) and flags; nothing here
looks at the machine it runs on, so ``render`` prints the same script on a laptop as on the
cluster's login node.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from hpcbench.backends.spec_check import check_spec
from hpcbench.errors import UsageError
from hpcbench.plan.model import Plan
from hpcbench.plan.planner import make_plan, plan_request_from_options, plan_request_options
from hpcbench.runtime.options import node_backend, spec_from_options, spec_options
from hpcbench.site import NodeType, SiteConfig, load_site
from hpcbench.slurm.render import JobRequest
from hpcbench.spec import RunSpec

F = TypeVar("F", bound=Callable[..., Any])


def site_options(func: F) -> F:
    """``--site`` (required: rendering never probes) and ``--partition``."""
    options = [
        click.option(
            "--site",
            "site_path",
            metavar="FILE",
            required=True,
            help="Site config (a YAML path or a shipped config's name) describing the nodes.",
        ),
        click.option(
            "--partition",
            metavar="NAME",
            default=None,
            help="Node type or Slurm partition of the site config (default: its only/default one).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def job_options(func: F) -> F:
    """Job-level flags: name, interpreter on the compute nodes, time limit."""
    options = [
        click.option("--job-name", default=None, help="Slurm job name [default: hpcbench-MODEL]."),
        click.option(
            "--python",
            default=None,
            help="Python interpreter on the compute nodes [default: this one, sys.executable].",
        ),
        click.option(
            "--time-min",
            "time_limit_min",
            type=click.IntRange(min=1),
            default=None,
            help="Job time limit in minutes [default: the site's time_limit_min].",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def all_job_options(func: F) -> F:
    """Site, job, placement and spec flags, in that order in ``--help``."""
    return site_options(job_options(plan_request_options(spec_options(func))))


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


def wait_options(func: F) -> F:
    """``--poll-s`` and ``--wait-timeout-s``: how ``submit`` and ``sweep`` follow their jobs."""
    func = click.option(
        "--wait-timeout-s",
        type=click.FloatRange(min=1),
        default=None,
        help="Stop waiting after this long (the job keeps running; run again or aggregate "
        "later) [default: submit: the time limit + 10 min, else 24 h; sweep: 24 h].",
    )(func)
    return click.option(
        "--poll-s",
        type=click.FloatRange(min=0.1),
        default=1.0,
        show_default=True,
        help="Seconds between state checks while waiting.",
    )(func)


def inputs_from_options(**kwargs: Any) -> JobInputs:
    """Resolve every flag of :func:`all_job_options` into :class:`JobInputs`."""
    site = load_site(kwargs["site_path"])
    node_type = site.node_type(kwargs.get("partition"))
    request = plan_request_from_options(**{**kwargs, "node_type": node_type})
    plan = make_plan(node_type.topology, request)
    # The node type decides the default backend, never this host: the job runs over there.
    spec = spec_from_options(
        default_backend=node_backend(len(node_type.topology.gpus)),
        on_gpus=any(r.gpus for r in plan.ranks),
        **kwargs,
    )
    # What the ranks' backend would refuse is refused here, before a run directory exists.
    check_spec(spec, plan)
    if plan.nodes > 1 and spec.barrier == "shm":
        # A shared-memory barrier cannot span nodes; the file barrier lives in the run directory.
        if kwargs.get("barrier") == "shm":
            raise UsageError("--barrier shm cannot synchronise ranks on several nodes; use file")
        spec = spec.replace(barrier="file")
    return JobInputs(
        site=site,
        node_type=node_type,
        plan=plan,
        spec=spec,
        job_name=kwargs.get("job_name") or f"hpcbench-{spec.model}",
        python=kwargs.get("python") or sys.executable,
        time_limit_min=kwargs.get("time_limit_min"),
    )
