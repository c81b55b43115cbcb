"""The rank entry point: ``python -m hpcbench.runtime.rank RUN_DIR``.

A rank reads its identity from the environment (Slurm's or the local launcher's variables, see
:mod:`hpcbench.runtime.identity`), ``RUN_DIR/run.json``, ``plan.json`` and ``spec.json``; checks
its binding against the plan; runs the pipeline; writes ``RUN_DIR/rank-NNNNN.h5`` (``.part``
until it finished cleanly); logs to stderr. Exit status: 0 success, 1 run failure (a barrier
timed out, another rank aborted, a binding mismatch under ``--strict-binding``), 2 bad input,
143 when terminated by SIGTERM.
"""

from __future__ import annotations

import logging
import os
import platform
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from hpcbench import __version__
from hpcbench.backends.registry import load_backend
from hpcbench.errors import BarrierError, ConfigError, HpcbenchError, RunError
from hpcbench.jsonfile import read_json
from hpcbench.metrics import RankMetricsWriter
from hpcbench.plan.model import Plan, RankPlacement
from hpcbench.runfiles import RunFiles
from hpcbench.runtime.barrier import barrier_namespace, open_barrier
from hpcbench.runtime.binding import (
    compare_binding,
    gpu_identity,
    gpu_identity_mismatch,
    node_of_cpus,
    nvml_visible_bus_ids,
    own_stderr_head,
    parse_gpu_bind,
    read_actual_binding,
    topology_bus_ids,
)
from hpcbench.runtime.identity import (
    RankIdentity,
    hostname,
    identity_from_env,
    launch_id,
    slurm_info,
)
from hpcbench.runtime.pipeline import Pipeline, PipelineResult
from hpcbench.runtime.rundir import read_run_info
from hpcbench.spec import RunSpec
from hpcbench.telemetry import TelemetrySampler, start_sampler, write_disabled
from hpcbench.units import sample_unit

log = logging.getLogger("hpcbench.rank")

EXIT_TERMINATED = 128 + signal.SIGTERM


class RankTerminated(RunError):
    """The rank received SIGTERM (the launcher or Slurm stops it)."""


def software_versions(extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Versions recorded in ``versions_json``."""
    import h5py
    import numpy as np

    versions: dict[str, Any] = {
        "hpcbench": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
        "kernel": platform.release(),
        "machine": platform.machine(),
    }
    versions.update(extra or {})
    return versions


def check_identity(plan: Plan, identity: RankIdentity, where: str) -> RankPlacement:
    """The rank's placement; ConfigError when the launch does not match the plan."""
    if plan.world_size != identity.world_size:
        raise ConfigError(
            f"{where}: the plan has {plan.world_size} ranks but the launcher started "
            f"{identity.world_size} (world size from the {identity.launcher} launcher)"
        )
    try:
        return plan.rank(identity.rank)
    except KeyError as exc:
        raise ConfigError(f"{where}: rank {identity.rank} is not in the plan") from exc


@dataclass(frozen=True, slots=True)
class _RankRun:
    """What a rank reads from its run directory and environment before it starts, checked."""

    files: RunFiles
    identity: RankIdentity
    run_id: str
    plan: Plan
    spec: RunSpec
    placement: RankPlacement
    host: str


def _read_rank_run(run_dir: Path, env: Mapping[str, str]) -> _RankRun:
    """The rank's identity (from the launcher's or Slurm's variables), its run's plan and spec,
    and its placement in the plan; ConfigError when they do not fit together."""
    files = RunFiles(run_dir)
    identity = identity_from_env(env)
    info = read_run_info(files.root)
    plan = Plan.read(files.plan)
    spec = RunSpec.read(files.spec)
    placement = check_identity(plan, identity, str(files.plan))
    if spec.barrier == "shm" and plan.nodes > 1:
        raise ConfigError(
            f"{files.spec}: barrier 'shm' works within one node, the plan has "
            f"{plan.nodes} nodes; use --barrier file"
        )
    return _RankRun(files, identity, info.run_id, plan, spec, placement, hostname())


def run_rank(run_dir: Path, env: Mapping[str, str]) -> PipelineResult:
    """Run one rank of the run in ``run_dir``; raises HpcbenchError on failure."""
    run = _read_rank_run(run_dir, env)
    files, identity, spec, placement = run.files, run.identity, run.spec, run.placement
    log.info(
        "rank %d/%d (local %d, node %d) on %s, run %s",
        identity.rank,
        identity.world_size,
        identity.local_rank,
        identity.node,
        run.host,
        run.run_id,
    )

    # Opened first, so that any later failure of this rank aborts it and the other ranks stop
    # at once instead of waiting for the barrier timeout (under srun nobody else stops them).
    barrier = open_barrier(
        spec.barrier,
        namespace=barrier_namespace(run.run_id, launch_id(env)),
        rank=identity.rank,
        world_size=identity.world_size,
        timeout_s=spec.barrier_timeout_s,
        run_dir=files.root,
    )
    try:
        binding = _check_binding(files, placement, identity, spec, env)
        backend = load_backend(spec.backend)
        model_info = backend.describe(spec)
        writer = _open_writer(
            files, identity, run.run_id, run.host, placement, spec, env, binding, model_info
        )
        if isinstance(model_info.get("flops_per_image"), int):
            writer.set_attr("flops_per_image", model_info["flops_per_image"])
    except BaseException as exc:
        barrier.abort(f"{type(exc).__name__}: {exc}")
        barrier.close()
        raise

    publish = _StatusPublisher(files, identity.rank)
    data_dir = placement.data_dir.replace("{data_root}", spec.data)
    pipeline = Pipeline(backend, spec, placement, writer, barrier, data_dir, status=publish)
    # GPU telemetry (NVML) for the whole life of the pipeline; written into the rank file.
    sampler, no_telemetry = start_sampler(placement.gpus, spec.telemetry_hz)
    try:
        result = pipeline.run()
    except BaseException as exc:
        _finish_telemetry(writer, sampler, no_telemetry)
        barrier.abort(f"{type(exc).__name__}: {exc}")
        barrier.close()
        _record_devices(writer, pipeline)
        try:
            writer.close(complete=False)
        except HpcbenchError as close_error:
            log.error("%s", close_error)
        publish(_failed_status(exc, identity.rank))
        raise
    _finish_telemetry(writer, sampler, no_telemetry)
    barrier.close()
    _record_devices(writer, pipeline)
    _close_complete(writer, result, publish, spec)
    return result


def _close_complete(
    writer: RankMetricsWriter, result: PipelineResult, publish: _StatusPublisher, spec: RunSpec
) -> None:
    """Close the rank file as complete, publish the rank done and log what it measured."""
    writer.set_attr("num_devices", len(result.devices))
    writer.set_attr("tail_batches", result.tail_batches)
    path = writer.close(complete=True)
    publish(
        {
            "phase": "done",
            "timed_batches": result.timed_batches,
            "timed_images": result.timed_images,
            "images_per_s": result.images_per_s,
        }
    )
    unit = sample_unit(spec.model)
    log.info(
        "done: %d %s in %.3f s = %.1f %s -> %s",
        result.timed_images,
        unit.plural,
        (result.t_finish_ns - result.t_begin_ns) / 1e9,
        result.images_per_s,
        unit.rate,
        path,
    )


def _check_binding(
    files: RunFiles,
    placement: RankPlacement,
    identity: RankIdentity,
    spec: RunSpec,
    env: Mapping[str, str],
) -> dict[str, Any]:
    """The binding this rank got, compared with its placement (``binding_json``); RunError
    under --strict-binding when they differ."""
    actual = read_actual_binding(env)
    mismatches = list(
        compare_binding(
            placement,
            actual,
            under_slurm=identity.launcher == "slurm",
            cpu_nodes=node_of_cpus(),
        )
    )
    if (identity.node, identity.local_rank) != (placement.node, placement.local_rank):
        mismatches.append(
            f"identity: plan puts rank {placement.rank} at node {placement.node} local rank "
            f"{placement.local_rank}, launcher says node {identity.node} local rank "
            f"{identity.local_rank}"
        )
    held = _gpu_identity(files, placement, actual.cuda_visible_devices)
    problem = gpu_identity_mismatch(held)
    if problem:
        mismatches.append(problem)
    for problem in mismatches:
        log.warning("binding differs from the plan: %s", problem)
    if mismatches and spec.strict_binding:
        raise RunError(
            f"rank {identity.rank}: binding differs from the plan (--strict-binding): "
            + "; ".join(mismatches)
        )
    return {**actual.to_json(), "mismatches": mismatches, "gpu_identity": held}


def _open_writer(
    files: RunFiles,
    identity: RankIdentity,
    run_id: str,
    host: str,
    placement: RankPlacement,
    spec: RunSpec,
    env: Mapping[str, str],
    binding: Mapping[str, Any],
    model_info: Mapping[str, Any],
) -> RankMetricsWriter:
    """Create the rank file (``.part``) with every attribute known before the run."""
    return RankMetricsWriter(
        files.root,
        identity.rank,
        identity.world_size,
        run_id,
        host,
        attrs={
            "local_rank": identity.local_rank,
            "node": identity.node,
            "backend": spec.backend,
            "model": spec.model,
            "batch_size": spec.batch_size,
            "precision": spec.precision,
            "launcher": identity.launcher,
            "pid": os.getpid(),
            "plan_json": placement.to_json(),
            "binding_json": dict(binding),
            "config_json": spec.to_json(),
            "versions_json": software_versions({"backend": model_info}),
            "slurm_json": slurm_info(env),
            "identity_json": asdict(identity),
        },
        flush_interval_s=0.5,
        launch_id=launch_id(env),
    )


class _StatusPublisher:
    """Publishes the rank's progress (at most every 0.5 s in the timed phase, every change of
    phase otherwise); a failed write is logged once and never fails the rank."""

    INTERVAL_S = 0.5

    def __init__(self, files: RunFiles, rank: int) -> None:
        self._files = files
        self._rank = rank
        self._last_s = 0.0
        self._failed = False

    def __call__(self, status: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - self._last_s < self.INTERVAL_S and status["phase"].startswith("timed"):
            return
        self._last_s = now
        try:
            self._files.write_status(self._rank, status)
        except OSError as exc:
            # Progress display only: a full disk must fail the rank through its metrics
            # file (MetricsError naming it), not through this side file.
            if not self._failed:
                log.warning("cannot write %s (%s)", self._files.rank_status(self._rank), exc)
            self._failed = True


def _failed_status(exc: BaseException, rank: int) -> dict[str, Any]:
    failed: dict[str, Any] = {"phase": "failed", "error": str(exc)}
    if isinstance(exc, BarrierError):
        # A consequence of other ranks' failure: the launcher blames them, not this rank.
        failed["caused_by"] = [r for r in exc.culprits if r != rank]
        failed["cause"] = exc.cause
    return failed


def _gpu_identity(
    files: RunFiles, placement: RankPlacement, cuda_visible: str | None
) -> dict[str, Any] | None:
    """The GPUs this rank holds, by identity (see :func:`binding.gpu_identity`)."""
    if not placement.gpus:
        return None
    topology_path = files.topology
    topology = read_json(topology_path, "topology file") if topology_path.is_file() else None
    return gpu_identity(
        placement,
        planned_bus_ids=topology_bus_ids(topology if isinstance(topology, dict) else None),
        nvml_bus_ids=nvml_visible_bus_ids(cuda_visible),
        gpu_bind_global=parse_gpu_bind(own_stderr_head() or ""),
    )


def _finish_telemetry(
    writer: RankMetricsWriter, sampler: TelemetrySampler | None, no_telemetry: str
) -> None:
    if sampler is None:
        write_disabled(writer.file, no_telemetry)
        return
    sampler.stop()
    sampler.write(writer.file)


def _record_devices(writer: RankMetricsWriter, pipeline: Pipeline) -> None:
    devices = [asdict(d) for d in pipeline.devices]
    writer.set_attr("devices_json", devices)
    writer.set_attr("num_devices", len(devices))


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise RankTerminated(f"terminated by signal {signal.Signals(signum).name}")


def main(argv: list[str] | None = None) -> int:
    """Run a rank; returns its exit status."""
    args = sys.argv[1:] if argv is None else argv
    rank_label = os.environ.get("HPCBENCH_RANK", os.environ.get("SLURM_PROCID", "?"))
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s rank {rank_label}: %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print("usage: python -m hpcbench.runtime.rank RUN_DIR", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    # Everything the rank creates (rank file, barrier state, status) is owner-only.
    os.umask(0o077)
    try:
        run_rank(Path(args[0]), os.environ)
    except RankTerminated as exc:
        log.error("%s", exc)
        return EXIT_TERMINATED
    except HpcbenchError as exc:
        log.error("%s", exc)
        return exc.exit_code
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except Exception:
        log.exception("rank failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
