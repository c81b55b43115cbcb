"""Render the sbatch script of a run from its plan, spec and node type. Pure.

Nothing here calls Slurm, reads ``/sys`` or looks at the machine it runs on: the same inputs
give the same script anywhere, which is what ``hpcbench render`` prints and what
``hpcbench submit`` writes into the run directory and submits unchanged.

Which CPUs, GPUs and NUMA nodes a rank gets is decided by the planner; this module only turns
the plan into Slurm's spellings (:mod:`hpcbench.plan.launch`) and hands plain values to the
Jinja templates in ``templates/`` (a site's ``templates_dir`` overrides any of them).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from hpcbench import __version__
from hpcbench.errors import ConfigError, PlanError, UsageError
from hpcbench.plan.launch import (
    cuda_visible_devices,
    numactl_args,
    slurm_cpu_bind,
    slurm_gpu_bind,
    slurm_mem_bind,
)
from hpcbench.plan.model import Plan
from hpcbench.resources import templates_dir
from hpcbench.runfiles import LOGS_DIR, template_names
from hpcbench.site import NodeType
from hpcbench.spec import RunSpec
from hpcbench.text import plural

JOB_TEMPLATE = "job.sbatch.j2"
ARRAY_TEMPLATE = "array.sbatch.j2"


@dataclass(frozen=True, slots=True)
class JobRequest:
    """Everything one job script depends on.

    ``run_dir`` must be an absolute path on a file system every node of the job sees (ranks
    meet at a file barrier there and write their results into it).
    """

    plan: Plan
    spec: RunSpec
    node_type: NodeType
    run_dir: str
    job_name: str = "hpcbench"
    site_name: str = ""
    python: str = "python3"
    time_limit_min: int | None = None


def shquote(value: object) -> str:
    """Quote one value for the shell (and for sbatch's ``#SBATCH`` line parser).

    >>> shquote("debug")
    'debug'
    >>> shquote("my job; rm -rf /")
    "'my job; rm -rf /'"
    >>> shquote(4)
    '4'
    """
    text = str(value)
    if "\n" in text or "\r" in text:
        # A newline would end an #SBATCH line or a command early, whatever the quoting.
        raise UsageError(f"value {text!r} contains a line break, which a job script cannot hold")
    return shlex.quote(text)


def single_line(text: str, what: str) -> str:
    """``text`` unchanged; UsageError when it holds a line break (it would end a line).

    >>> single_line("apollo", "site name")
    'apollo'
    """
    if "\n" in text or "\r" in text:
        raise UsageError(f"{what} {text!r} contains a line break, which a job script cannot hold")
    return text


def environment(site_templates_dir: Path | None = None) -> jinja2.Environment:
    """The Jinja environment: site templates first, then the packaged ones."""
    loaders: list[jinja2.BaseLoader] = []
    if site_templates_dir is not None:
        if not Path(site_templates_dir).is_dir():
            raise ConfigError(f"templates_dir: {site_templates_dir} is not a directory")
        loaders.append(jinja2.FileSystemLoader(str(site_templates_dir)))
    loaders.append(jinja2.FileSystemLoader(str(templates_dir())))
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # shell, not HTML: every user value goes through | shquote instead
    )
    env.filters["shquote"] = shquote
    return env


def _render(template: str, job: Mapping[str, Any], site_templates_dir: Path | None) -> str:
    env = environment(site_templates_dir)
    try:
        return env.get_template(template).render(job=job)
    except jinja2.TemplateNotFound as exc:
        raise ConfigError(f"job template {exc.name!r} not found (site or packaged)") from exc
    except jinja2.UndefinedError as exc:
        raise ConfigError(f"job template {template}: {exc.message}") from exc
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"job template {exc.filename}:{exc.lineno}: {exc.message}") from exc


def cpus_per_task(plan: Plan, node_cpus: int) -> int:
    """CPUs per task so that the job step holds every CPU of the node.

    Slurm refuses a ``mask_cpu`` that names a CPU outside the job step ("CPU binding outside
    of job step allocation"), and a step gets only ntasks x cpus-per-task CPUs; so the step
    asks for the whole node, split evenly over the node's tasks.

    >>> from hpcbench.plan.model import RankPlacement
    >>> p = Plan((RankPlacement(0, 0, 0, 0, 0, (0,), (), ()),
    ...           RankPlacement(1, 0, 1, 1, 0, (1,), (), ())), (), "t")
    >>> cpus_per_task(p, 36)
    18
    """
    per_node = plan.ranks_per_node
    if per_node < 1:
        raise PlanError("the plan has no ranks")
    if node_cpus % per_node:
        used = sorted({c for r in plan.node_ranks(0) for c in r.cpus})
        raise PlanError(
            f"{per_node} ranks per node cannot split the node's {node_cpus} CPUs evenly, so the "
            f"job step cannot hold every CPU that explicit binding names (CPUs used: {used}); "
            f"use a rank count that divides {node_cpus}"
        )
    return node_cpus // per_node


def gres_request(plan: Plan, node_type: NodeType) -> str | None:
    """``--gres`` value: every GPU of the node when any rank uses a GPU.

    map_gpu/mask_gpu name the node's global GPU indices, and Slurm falls back to "the first
    device in the allocation" for an index the job did not allocate, so the job takes them all.
    """
    if not any(r.gpus for r in plan.ranks):
        return None
    count = len(node_type.topology.gpus)
    highest = max(g for r in plan.ranks for g in r.gpus)
    if highest >= count:
        raise PlanError(
            f"the plan uses GPU {highest} but node type {node_type.name!r} has "
            f"{plural(count, 'GPU')}"
        )
    return f"{node_type.slurm.gres_name}:{count}"


def spec_lines(spec: RunSpec, width: int = 96) -> list[str]:
    """The spec as shell-quoted ``key=value`` words, packed into lines of about ``width``.

    >>> lines = spec_lines(RunSpec(model="resnet50", data="/data/a b"), width=40)
    >>> lines[0]
    'backend=cpu model=resnet50 batch_size=64'
    >>> "data='/data/a b'" in " ".join(lines), max(map(len, lines)) <= 40
    (True, True)
    """
    lines: list[str] = []
    for key, value in spec.to_json().items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        word = f"{key}={shquote(text)}"
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def job_context(request: JobRequest) -> dict[str, Any]:
    """The plain values the templates see as ``job``."""
    plan, node_type, settings = request.plan, request.node_type, request.node_type.slurm
    if not Path(request.run_dir).is_absolute():
        raise UsageError(f"run directory {request.run_dir!r} must be an absolute path")
    node_cpus = len(node_type.topology.cpus)
    version = settings.slurm_version
    time_min = request.time_limit_min or settings.time_limit_min
    stage = bool(
        request.spec.stage_data and node_type.data_root and request.spec.data != "synthetic"
    )
    local_tasks = []
    for placement in plan.node_ranks(0):
        local_tasks.append(
            {
                "local_rank": placement.local_rank,
                "numactl": [shquote(a) for a in numactl_args(placement)],
                "cuda_visible_devices": cuda_visible_devices(placement) if placement.gpus else None,
            }
        )
    return {
        "hpcbench_version": __version__,
        "job_name": request.job_name,
        # Shown in comment lines too, where a line break would start a command.
        "site_name": single_line(request.site_name, "site name"),
        "node_type": single_line(node_type.name, "node type"),
        "run_dir": single_line(request.run_dir, "run directory"),
        "files": template_names(),
        "spec_lines": spec_lines(request.spec),
        "python": request.python,
        "nodes": plan.nodes,
        "world_size": plan.world_size,
        "ranks_per_node": plan.ranks_per_node,
        "cpus_per_task": cpus_per_task(plan, node_cpus),
        "gres": gres_request(plan, node_type),
        "exclusive": settings.exclusive,
        "time": time_min,
        "partition": settings.partition,
        "account": settings.account,
        "qos": settings.qos,
        "array": None,
        "nodelist": None,
        "output": f"{request.run_dir}/{LOGS_DIR}/slurm-%j.out",
        "error": f"{request.run_dir}/{LOGS_DIR}/slurm-%j.err",
        "extra_sbatch": list(settings.extra_sbatch),
        "setup": list(node_type.setup),
        "stage_data": stage,
        "data_root": node_type.data_root,
        "data": request.spec.data,
        "srun_binding": settings.srun_binding,
        "cpu_bind": slurm_cpu_bind(plan, 0),
        "gpu_bind": slurm_gpu_bind(plan, 0, version),
        "mem_bind": slurm_mem_bind(plan, 0),
        "local_tasks": local_tasks,
    }


def render_job(request: JobRequest, site_templates_dir: Path | None = None) -> str:
    """The sbatch script of one run."""
    return _render(JOB_TEMPLATE, job_context(request), site_templates_dir)


@dataclass(frozen=True, slots=True)
class ArrayPoint:
    """One sweep point inside a job array: its array index and its own job script."""

    index: int
    script: str
    plan: Plan


def render_array(
    points: Sequence[ArrayPoint],
    node_type: NodeType,
    sweep_dir: str,
    *,
    job_name: str = "hpcbench-sweep",
    max_parallel: int | None = None,
    time_limit_min: int | None = None,
    site_templates_dir: Path | None = None,
    nodelist: str | None = None,
) -> str:
    """One job array running every point's own job script, one point per array task.

    The array's allocation is the same for every task, so it asks for the most nodes and tasks
    any point needs; each point's srun then names its own node and task counts. ``nodelist``
    puts every task on the same node(s).
    """
    if not points:
        raise UsageError("a sweep needs at least one point to submit")
    if not Path(sweep_dir).is_absolute():
        raise UsageError(f"sweep directory {sweep_dir!r} must be an absolute path")
    settings = node_type.slurm
    node_cpus = len(node_type.topology.cpus)
    widest = max(points, key=lambda p: (p.plan.ranks_per_node, p.plan.nodes))
    gres = [g for g in (gres_request(p.plan, node_type) for p in points) if g]
    indices = ",".join(str(p.index) for p in points)
    if max_parallel is not None:
        if max_parallel < 1:
            raise UsageError(f"--max-parallel must be at least 1, got {max_parallel}")
        indices += f"%{max_parallel}"
    job = {
        "hpcbench_version": __version__,
        "job_name": job_name,
        "nodes": max(p.plan.nodes for p in points),
        "ranks_per_node": widest.plan.ranks_per_node,
        "cpus_per_task": cpus_per_task(widest.plan, node_cpus),
        "gres": gres[0] if gres else None,
        "exclusive": settings.exclusive,
        "time": time_limit_min or settings.time_limit_min,
        "partition": settings.partition,
        "account": settings.account,
        "qos": settings.qos,
        "array": indices,
        "nodelist": None if nodelist is None else single_line(nodelist, "node list"),
        "output": f"{sweep_dir}/{LOGS_DIR}/slurm-%A_%a.out",
        "error": f"{sweep_dir}/{LOGS_DIR}/slurm-%A_%a.err",
        "extra_sbatch": list(settings.extra_sbatch),
        "points": [{"index": p.index, "script": p.script} for p in points],
    }
    return _render(ARRAY_TEMPLATE, job, site_templates_dir)
