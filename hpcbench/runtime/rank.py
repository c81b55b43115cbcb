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
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Any

from hpcbench import __version__
from hpcbench.backends.registry import load_backend
from hpcbench.errors import BarrierError, ConfigError, HpcbenchError, RunError
from hpcbench.jsonfile import read_json, write_json_atomic
from hpcbench.metrics import RankMetricsWriter
from hpcbench.plan.model import Plan, RankPlacement
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
from hpcbench.runtime.rundir import LOGS_DIR, PLAN_FILE, SPEC_FILE, TOPOLOGY_FILE, read_run_info
from hpcbench.spec import RunSpec
from hpcbench.telemetry import TelemetrySampler, start_sampler, write_disabled
from hpcbench.units import sample_unit

log = logging.getLogger("hpcbench.rank")

EXIT_TERMINATED = 128 + signal.SIGTERM


class RankTerminated(RunError):
    """The rank received SIGTERM (the launcher or Slurm stops it)."""


def status_path(run_dir: Path, rank: int) -> Path:
    """Where a rank publishes its progress for the launcher."""
    return Path(run_dir) / LOGS_DIR / f"rank-{rank:05d}.status.json"


def read_status(run_dir: Path, rank: int) -> dict[str, Any]:
    """A rank's last published status; {} before its first one or when it cannot be read.

    Progress only (the metrics file is the record), so an unreadable status is not an error.
    """
    try:
        data = read_json(status_path(run_dir, rank), "rank status file")
    except HpcbenchError:
        return {}
    return data if isinstance(data, dict) else {}


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


def run_rank(run_dir: Path, env: Mapping[str, str]) -> PipelineResult:
    """Run one rank of the run in ``run_dir``; raises HpcbenchError on failure."""
    run_dir = Path(run_dir)
    identity = identity_from_env(env)
    info = read_run_info(run_dir)
    plan = Plan.read(run_dir / PLAN_FILE)
    spec = RunSpec.read(run_dir / SPEC_FILE)
    placement = check_identity(plan, identity, str(run_dir / PLAN_FILE))
    if spec.barrier == "shm" and plan.nodes > 1:
        raise ConfigError(
            f"{run_dir / SPEC_FILE}: barrier 'shm' works within one node, the plan has "
            f"{plan.nodes} nodes; use --barrier file"
        )
    host = hostname()
    log.info(
        "rank %d/%d (local %d, node %d) on %s, run %s",
        identity.rank,
        identity.world_size,
        identity.local_rank,
        identity.node,
        host,
        info.run_id,
    )

    # Opened first, so that any later failure of this rank aborts it and the other ranks stop
    # at once instead of waiting for the barrier timeout (under srun nobody else stops them).
    barrier = open_barrier(
        spec.barrier,
        namespace=barrier_namespace(info.run_id, launch_id(env)),
        rank=identity.rank,
        world_size=identity.world_size,
        timeout_s=spec.barrier_timeout_s,
        run_dir=run_dir,
    )
    try:
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
        held = _gpu_identity(run_dir, placement, actual.cuda_visible_devices)
        problem = gpu_identity_mismatch(held)
        if problem:
            mismatches.append(problem)
        binding = {**actual.to_json(), "mismatches": mismatches, "gpu_identity": held}
        for problem in mismatches:
            log.warning("binding differs from the plan: %s", problem)
        if mismatches and spec.strict_binding:
            raise RunError(
                f"rank {identity.rank}: binding differs from the plan (--strict-binding): "
                + "; ".join(mismatches)
            )

        backend = load_backend(spec.backend)
        model_info = backend.describe(spec)
        writer = RankMetricsWriter(
            run_dir,
            identity.rank,
            identity.world_size,
            info.run_id,
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
                "binding_json": binding,
                "config_json": spec.to_json(),
                "versions_json": software_versions({"backend": model_info}),
                "slurm_json": slurm_info(env),
                "identity_json": asdict(identity),
            },
            flush_interval_s=0.5,
            launch_id=launch_id(env),
        )
        if isinstance(model_info.get("flops_per_image"), int):
            writer.set_attr("flops_per_image", model_info["flops_per_image"])
    except BaseException as exc:
        barrier.abort(f"{type(exc).__name__}: {exc}")
        barrier.close()
        raise

    status_file = status_path(run_dir, identity.rank)
    last_status = [0.0]
    status_failed: list[bool] = []

    def publish(status: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - last_status[0] >= 0.5 or not status["phase"].startswith("timed"):
            last_status[0] = now
            try:
                write_json_atomic(status_file, {"rank": identity.rank, **status})
            except OSError as exc:
                # Progress display only: a full disk must fail the rank through its metrics
                # file (MetricsError naming it), not through this side file.
                if not status_failed:
                    log.warning("cannot write %s (%s)", status_file, exc)
                status_failed.append(True)

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
        failed: dict[str, Any] = {"phase": "failed", "error": str(exc)}
        if isinstance(exc, BarrierError):
            # A consequence of other ranks' failure: the launcher blames them, not this rank.
            failed["caused_by"] = [r for r in exc.culprits if r != identity.rank]
            failed["cause"] = exc.cause
        publish(failed)
        raise
    _finish_telemetry(writer, sampler, no_telemetry)
    barrier.close()
    _record_devices(writer, pipeline)
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
    return result


def _gpu_identity(
    run_dir: Path, placement: RankPlacement, cuda_visible: str | None
) -> dict[str, Any] | None:
    """The GPUs this rank holds, by identity (see :func:`binding.gpu_identity`)."""
    if not placement.gpus:
        return None
    topology_path = run_dir / TOPOLOGY_FILE
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
