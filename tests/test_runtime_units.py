"""Single-process parts of the runtime: identity, spec flags, binding, run dir, CPU model."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click
import numpy as np
import pytest
from click.testing import CliRunner

from hpcbench.backends.base import HostBatch
from hpcbench.backends.cpu import MlpShape, split_cores
from hpcbench.backends.registry import load_backend
from hpcbench.commands.flags import SpecFlags, spec_options
from hpcbench.errors import ConfigError, UsageError
from hpcbench.plan.model import Plan, RankPlacement
from hpcbench.runtime import rundir
from hpcbench.runtime.binding import ActualBinding, compare_binding, read_actual_binding
from hpcbench.runtime.identity import RankIdentity, identity_from_env, launch_id, local_env
from hpcbench.spec import RunSpec, SpecChoices

PLAN = Plan((RankPlacement(0, 0, 0, 0, 0, (0,), (), (0,)),), (), "test")


# ------------------------------------------------------------------------------- identity
@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8", "SLURM_NODEID": "2"},
            RankIdentity(5, 1, 8, 2, "slurm"),
        ),
        (
            {"HPCBENCH_RANK": "1", "HPCBENCH_LOCAL_RANK": "1", "HPCBENCH_WORLD_SIZE": "2",
             "HPCBENCH_NODE": "0", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"},
            RankIdentity(1, 1, 2, 0, "local"),
        ),
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, RankIdentity(0, 0, 1, 0, "slurm")),
    ],
)  # fmt: skip
def test_identity_from_env(env: dict[str, str], expected: RankIdentity) -> None:
    assert identity_from_env(env) == expected


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "neither HPCBENCH_RANK nor SLURM_PROCID is set"),
        ({"SLURM_PROCID": "x", "SLURM_NTASKS": "2"}, "SLURM_PROCID='x' is not an integer"),
        ({"SLURM_PROCID": "2", "SLURM_NTASKS": "2"}, "SLURM_PROCID=2 is outside 0..1"),
        ({"HPCBENCH_RANK": "0"}, "HPCBENCH_WORLD_SIZE is not set"),
    ],
)
def test_identity_errors_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        identity_from_env(env)


def test_local_env_round_trips_and_launch_ids_differ() -> None:
    identity = RankIdentity(3, 1, 4, 0, "local")
    env = local_env(identity, "abc")
    assert identity_from_env(env) == identity
    assert launch_id(env) == "abc"
    first = launch_id({"SLURM_JOB_ID": "9", "SLURM_STEP_ID": "0"})
    requeued = launch_id({"SLURM_JOB_ID": "9", "SLURM_STEP_ID": "0", "SLURM_RESTART_COUNT": "1"})
    assert first != requeued


# ---------------------------------------------------------------------------- spec flags
def _parse(args: list[str]) -> SpecFlags:
    seen: dict[str, SpecFlags] = {}

    @click.command()
    @spec_options
    def command(spec_flags: SpecFlags) -> None:
        seen["flags"] = spec_flags

    result = CliRunner().invoke(command, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return seen["flags"]


def test_spec_flags_defaults_follow_the_backend() -> None:
    assert _parse([]).choices().resolve() == RunSpec(backend="cpu", model="mlp")
    torch = _parse([]).choices().resolve("torch")
    assert (torch.backend, torch.model) == ("torch", "resnet50")


@pytest.mark.parametrize(
    ("args", "on_gpus", "expected"),
    [
        # (precision, channels_last, cuda_graph, batch_size)
        ([], True, ("fp16", True, True, 256)),
        (["--model", "alexnet"], True, ("fp16", True, True, 1024)),
        (["--model", "bert_base"], True, ("fp16", True, True, 256)),
        (["--precision", "bf16", "--batch-size", "64", "--no-cuda-graph", "--no-channels-last"],
         True, ("bf16", False, False, 64)),
        (["--option", "device=cpu"], True, ("fp32", True, False, 64)),
        ([], False, ("fp32", True, False, 64)),  # torch on CPUs keeps the plain defaults
    ],
)  # fmt: skip
def test_gpu_defaults_are_a_performance_engineers_and_overridable(
    args: list[str], on_gpus: bool, expected: tuple[Any, ...]
) -> None:
    spec = _parse(args).choices().resolve("torch", on_gpus=on_gpus)
    assert (spec.precision, spec.channels_last, spec.cuda_graph, spec.batch_size) == expected


def test_gpu_defaults_leave_the_cpu_backend_and_base_specs_alone(tmp_path: Path) -> None:
    assert _parse(["--backend", "cpu"]).choices().resolve(on_gpus=True) == RunSpec()
    base = RunSpec(backend="torch", model="resnet50", batch_size=32)
    base.write(tmp_path / "spec.json")
    spec = _parse(["--spec", str(tmp_path / "spec.json")]).choices().resolve(on_gpus=True)
    assert spec == base


def test_spec_flags_override_the_defaults() -> None:
    flags = _parse(
        ["--num-batches", "40", "--batch-size", "8", "--barrier", "file", "--strict-binding",
         "--option", "hidden=256", "--option", "layers=2", "--no-channels-last"]
    )  # fmt: skip
    spec = flags.choices().resolve()
    assert (spec.num_batches, spec.duration_s, spec.batch_size) == (40, None, 8)
    assert (spec.barrier, spec.strict_binding, spec.channels_last) == ("file", True, False)
    assert dict(spec.options) == {"hidden": 256, "layers": 2}
    # --compile is the spec's compile, whatever click calls the value.
    assert _parse(["--compile"]).choices().resolve("torch").compile is True
    assert _parse(["--no-compile"]).choices().resolve("torch").compile is False


@pytest.mark.parametrize(
    ("changes", "duration_s", "num_batches"),
    [({}, 5.0, None), ({"duration_s": 2.0}, 2.0, None), ({"num_batches": 7}, None, 7)],
)
def test_spec_choices_pick_one_phase_length(
    changes: dict[str, Any], duration_s: float | None, num_batches: int | None
) -> None:
    spec = SpecChoices(changes=changes).resolve()
    assert (spec.duration_s, spec.num_batches) == (duration_s, num_batches)


def test_spec_choices_refuse_an_unknown_setting() -> None:
    # The library never drops a key it does not know (it used to ignore other flags' keys).
    with pytest.raises(ConfigError, match=r"unknown setting 'batch_sise'.*'batch_size'"):
        SpecChoices(changes={"batch_sise": 8})


def test_spec_flags_read_a_base_spec(tmp_path: Path) -> None:
    base = RunSpec(backend="cpu", batch_size=3, warmup_batches=0)
    base.write(tmp_path / "spec.json")
    spec = _parse(["--spec", str(tmp_path / "spec.json"), "--batch-size", "4"]).choices().resolve()
    assert (spec.batch_size, spec.warmup_batches) == (4, 0)


def test_spec_flags_reject_two_phase_lengths() -> None:
    with pytest.raises(UsageError, match="--duration-s or --num-batches, not both"):
        _parse(["--duration-s", "2", "--num-batches", "3"]).choices()


# ------------------------------------------------------------------------------- binding
@pytest.mark.parametrize(
    ("placement", "actual", "under_slurm", "expected"),
    [
        (RankPlacement(0, 0, 0, 0, 0, (0, 1), (4, 6), (0,)),
         ActualBinding((0, 1), "4,6", "bind", (0,)), False, ()),
        (RankPlacement(0, 0, 0, 0, 0, (0, 1), (4, 6), (0,)),
         ActualBinding((0, 1), "0,1", "bind", (0,)), True, ()),
        (RankPlacement(0, 0, 0, 0, 0, (0, 1), (4, 6), (0,)),
         ActualBinding((0, 1), "0,1", "bind", (0,)), False,
         ("gpus: planned CUDA_VISIBLE_DEVICES=4,6, got 0,1",)),
        (RankPlacement(0, 0, 0, 0, 0, (0,), (2,), (0,)),
         ActualBinding((0,), None, "bind", (0,)), False,
         ("gpus: planned CUDA_VISIBLE_DEVICES=2, variable not set",)),
        (RankPlacement(0, 0, 0, 0, 1, (8,), (), (1,)),
         ActualBinding((8,), None, "default", (0, 1), mems_allowed=(0, 1)), False,
         ("memory: planned bind to node 1, got default allocation (unknown nodes)",)),
        (RankPlacement(0, 0, 0, 0, 0, (0,), (), (0,)),
         ActualBinding((0,), None, "local", (0,), mems_allowed=(0,)), False, ()),
    ],
)  # fmt: skip
def test_compare_binding(
    placement: RankPlacement, actual: ActualBinding, under_slurm: bool, expected: tuple[str, ...]
) -> None:
    assert compare_binding(placement, actual, under_slurm=under_slurm) == expected


def test_local_policy_judged_by_the_cpus_numa_node() -> None:
    placement = RankPlacement(0, 0, 0, 1, 1, (8, 9), (), (1,))
    actual = ActualBinding((8, 9), None, "default", (0, 1), mems_allowed=(0, 1))
    assert compare_binding(placement, actual, cpu_nodes={8: 1, 9: 1}) == ()
    assert compare_binding(placement, actual, cpu_nodes={8: 0, 9: 0}) == (
        "memory: planned bind to node 1, got default allocation (CPUs on node 0)",
    )


def test_read_actual_binding_reads_this_process() -> None:
    actual = read_actual_binding({"CUDA_VISIBLE_DEVICES": "3"})
    assert actual.cpus == tuple(sorted(os.sched_getaffinity(0)))
    assert actual.cuda_visible_devices == "3"
    assert actual.mem_policy in ("default", "local", "bind", "preferred", "interleave")
    assert json.loads(json.dumps(actual.to_json()))["cpus"] == list(actual.cpus)


# ------------------------------------------------------------------------- run directory
def test_create_run_dir_is_owner_only_and_complete(tmp_path: Path) -> None:
    run_dir, info = rundir.create_run_dir(
        tmp_path / "r", plan=PLAN, spec=RunSpec(), argv=["hpcbench", "run"]
    )
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((run_dir / "logs").stat().st_mode) == 0o700
    for name in ("run.json", "plan.json", "spec.json"):
        assert stat.S_IMODE((run_dir / name).stat().st_mode) == 0o600
    assert rundir.read_run_info(run_dir) == info
    assert Plan.read(run_dir / "plan.json") == PLAN
    assert json.loads((run_dir / "run.json").read_text())["argv"] == ["hpcbench", "run"]


def test_create_run_dir_copies_the_site_config_owner_only(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("name: x\n")
    old_umask = os.umask(0)
    try:
        run_dir, _ = rundir.create_run_dir(
            tmp_path / "r", plan=PLAN, spec=RunSpec(), argv=[], site_config=site
        )
    finally:
        os.umask(old_umask)
    copy = run_dir / rundir.SITE_COPY
    assert copy.read_text() == "name: x\n"
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    site.write_text("name: edited later\n")
    assert copy.read_text() == "name: x\n"


def test_create_run_dir_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "old.txt").write_text("x")
    with pytest.raises(UsageError, match="exists and is not an empty folder"):
        rundir.create_run_dir(tmp_path / "r", plan=PLAN, spec=RunSpec(), argv=[])


def test_create_run_dir_under_a_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is not a directory"):
        rundir.create_run_dir(tmp_path / "file" / "r", plan=PLAN, spec=RunSpec(), argv=[])


def test_two_runs_cannot_claim_the_same_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "r"
    real_check = rundir.check_writable

    def other_run_claims_in_the_window(parent: Path, *args: int) -> None:
        real_check(parent, *args)
        # The other run passed its emptiness check too and creates the folder first.
        monkeypatch.setattr(rundir, "check_writable", real_check)
        rundir.create_run_dir(target, plan=PLAN, spec=RunSpec(), argv=["first"])

    monkeypatch.setattr(rundir, "check_writable", other_run_claims_in_the_window)
    with pytest.raises(UsageError, match="claimed by another run"):
        rundir.create_run_dir(target, plan=PLAN, spec=RunSpec(), argv=["second"])
    assert json.loads((target / "run.json").read_text())["argv"] == ["first"]


def test_out_of_inodes_and_overlong_names_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(UsageError, match=r"File name too long"):
        rundir.create_run_dir(tmp_path / ("x" * 300), plan=PLAN, spec=RunSpec(), argv=[])
    full = SimpleNamespace(f_bavail=1 << 30, f_frsize=4096, f_files=1000, f_favail=3)
    monkeypatch.setattr(rundir.os, "statvfs", lambda path: full)
    with pytest.raises(UsageError, match="has 3 free inodes"):
        rundir.create_run_dir(tmp_path / "r", plan=PLAN, spec=RunSpec(), argv=[])
    assert not (tmp_path / "r").exists()


def test_full_disk_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        rundir.os, "statvfs", lambda path: SimpleNamespace(f_bavail=10, f_frsize=4096)
    )
    with pytest.raises(UsageError, match="has 0 MiB free, a run needs at least 16 MiB"):
        rundir.create_run_dir(tmp_path / "r", plan=PLAN, spec=RunSpec(), argv=[])
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------- CPU backend
def test_cpu_backend_computes_the_declared_model() -> None:
    spec = RunSpec(batch_size=4, options={"input": 12, "hidden": 8, "layers": 3, "classes": 5})
    backend = load_backend("cpu")
    placement = RankPlacement(0, 0, 0, 0, 0, tuple(sorted(os.sched_getaffinity(0))), (), (0,))
    devices = backend.devices(placement, spec)
    assert [d.cpus for d in devices] == [(c,) for c in placement.cpus]  # one device per core
    engine: Any = backend.make_engine(devices[0], spec)
    source = backend.make_source(spec, placement, "")
    batch = source.next_batch(0)
    assert batch.data.shape == (4, 12) and batch.images == 4
    before = engine.checksum
    t_end_ns = engine.submit(batch).wait()
    assert t_end_ns >= batch.ready_ns
    # Recompute the forward pass independently and compare the first output.
    x = batch.data
    for i, (w, b) in enumerate(zip(engine.weights, engine.biases)):
        x = x @ w + b
        if i < len(engine.weights) - 1:
            x = np.maximum(x, 0)
    assert engine.checksum == pytest.approx(float(x[0, 0]), rel=1e-5)
    assert engine.checksum != before
    shape = MlpShape(12, 8, 3, 5)
    assert [w.shape for w in engine.weights] == [(12, 8), (8, 8), (8, 8), (8, 5)]
    assert shape.flops_per_image == 2 * (12 * 8 + 8 * 8 + 8 * 8 + 8 * 5)
    assert backend.describe(spec)["flops_per_image"] == shape.flops_per_image


def test_cpu_backend_short_batch_uses_a_prefix_of_its_buffers() -> None:
    spec = RunSpec(batch_size=4, options={"input": 6, "hidden": 4, "layers": 1, "classes": 3})
    engine: Any = load_backend("cpu").make_engine(
        load_backend("cpu").devices(RankPlacement(0, 0, 0, 0, 0, (0,), (), ()), spec)[0], spec
    )
    engine.submit(HostBatch(0, 2, np.ones((2, 6), dtype=np.float32), 0)).wait()
    assert np.isfinite(engine.checksum)
    assert engine.buffers[-1].shape == (4, 3)  # buffers keep the full batch size


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"precision": "fp16"}, "computes in fp32"),
        ({"model": "resnet50"}, "runs mlp, not 'resnet50'"),
        ({"options": {"hiden": 3}}, "did you mean 'hidden'"),
        ({"options": {"layers": 0}}, "options.layers: expected an integer >= 1"),
    ],
)
def test_cpu_backend_rejects_what_it_cannot_run(changes: dict[str, Any], message: str) -> None:
    spec = RunSpec().replace(**changes)
    with pytest.raises(ConfigError, match=message):
        load_backend("cpu").devices(RankPlacement(0, 0, 0, 0, 0, (0,), (), ()), spec)


def test_split_cores_groups_and_limits() -> None:
    assert split_cores((0, 1, 2, 3), 2) == [(0, 1), (2, 3)]
    with pytest.raises(ConfigError, match="3 devices need at least 3 cores"):
        split_cores((0, 1), 3)


def test_a_device_that_reaches_a_passed_deadline_still_times_one_batch() -> None:
    # A device thread scheduled after the shared deadline (a loaded node, --duration-s 0.0005)
    # used to record no timed batch: t_finish_ns 0, rank files the reader refuses.
    import queue
    import threading
    import time

    from hpcbench.backends.base import HostBatch
    from hpcbench.runtime.pipeline import Pipeline, _DeviceState

    recorded: list[tuple[Any, ...]] = []

    class Ticket:
        def wait(self) -> int:
            return time.time_ns()

    class Engine:
        def submit(self, batch: HostBatch) -> Ticket:
            return Ticket()

    pipeline = Pipeline.__new__(Pipeline)
    pipeline.spec = RunSpec(duration_s=0.0005)
    pipeline.placement = PLAN.ranks[0]
    pipeline.writer = SimpleNamespace(add_batch=lambda *row: recorded.append(row))  # type: ignore[assignment]
    pipeline._states = [_DeviceState()]
    pipeline._stop = threading.Event()
    pipeline._queue = queue.Queue()
    for sequence in range(3):
        pipeline._queue.put(HostBatch(sequence, 4, None, time.time_ns()))
    passed = time.monotonic_ns() - 1_000_000
    pipeline._deadline_mono_ns = passed
    pipeline._run_phase(0, Engine(), "timed", deadline_mono_ns=passed)  # type: ignore[arg-type]
    assert len(recorded) == 1 and recorded[0][0] == "timed"
    assert pipeline._states[0].timed_batches == 1 and pipeline._states[0].last_t_end_ns > 0
