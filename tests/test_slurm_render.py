"""Rendering sbatch scripts (pure): golden files for several site configs and layouts."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from hpcbench.errors import ConfigError, PlanError, UsageError
from hpcbench.plan.model import Plan, RankPlacement
from hpcbench.site import NodeType, SlurmSettings
from hpcbench.slurm.render import ArrayPoint, JobRequest, render_array, render_job
from hpcbench.spec import RunSpec
from hpcbench.topology.model import Core, Gpu, NumaNode, Topology

PY = "/opt/venv/bin/python"


def two_socket_node(cores_per_socket: int, gpus_per_socket: int, numa_per_socket: bool = True):
    """A node of 2 sockets; GPUs split evenly, numbered socket by socket."""
    cores, numa = [], []
    for s in range(2):
        cpus = tuple(range(s * cores_per_socket, (s + 1) * cores_per_socket))
        node = s if numa_per_socket else 0
        cores += [Core(s, node, (c,)) for c in cpus]
    if numa_per_socket:
        numa = [
            NumaNode(s, s, tuple(range(s * cores_per_socket, (s + 1) * cores_per_socket)))
            for s in range(2)
        ]
    else:
        numa = [NumaNode(0, None, tuple(range(2 * cores_per_socket)))]
    gpus = []
    for g in range(2 * gpus_per_socket):
        s = g // gpus_per_socket
        cpus = tuple(range(s * cores_per_socket, (s + 1) * cores_per_socket))
        gpus.append(Gpu(g, f"0000:{g + 1:02x}:00.0", "fake", s if numa_per_socket else 0, cpus))
    return Topology.build(source="test", cores=cores, numa_nodes=numa, gpus=gpus)


def socket_plan(
    cores_per_socket: int,
    gpus: list[tuple[int, ...]],
    nodes: int = 1,
    mem_node_per_socket: bool = True,
) -> Plan:
    ranks = []
    for n in range(nodes):
        for local, gpu_set in enumerate(gpus):
            cpus = tuple(range(local * cores_per_socket, (local + 1) * cores_per_socket))
            mem = (local,) if mem_node_per_socket else (0,)
            ranks.append(
                RankPlacement(n * len(gpus) + local, n, local, local, mem[0], cpus, gpu_set, mem)
            )
    return Plan(tuple(ranks), (), "test", nodes)


LOCAL = two_socket_node(1, 2, numa_per_socket=False)
DGX = two_socket_node(18, 4)

CASES = {
    # The test cluster: 2 real cores as 2 fake sockets, 4 fake GPUs, one NUMA node.
    "local-2ranks": (
        NodeType("local", LOCAL, slurm=SlurmSettings(partition="debug", time_limit_min=10)),
        socket_plan(1, [(0, 1), (2, 3)], mem_node_per_socket=False),
        RunSpec(),
    ),
    "local-2nodes": (
        NodeType("local", LOCAL, slurm=SlurmSettings(partition="debug")),
        socket_plan(1, [(0,), (2,)], nodes=2, mem_node_per_socket=False),
        RunSpec(barrier="file"),
    ),
    # A DGX-like node on Slurm 23.11 (map:/mask: spellings), account, QoS, site setup lines.
    "dgx-2311": (
        NodeType(
            "gpu",
            DGX,
            setup=("module load cuda/12.4", 'export NCCL_DEBUG="WARN"'),
            slurm=SlurmSettings(
                partition="gpu",
                account="proj 42",
                qos="normal",
                slurm_version="23.11.4",
                time_limit_min=30,
                extra_sbatch=("--constraint=h100",),
            ),
        ),
        socket_plan(18, [(0, 2), (4, 6)]),
        RunSpec(),
    ),
    "dgx-one-gpu-per-rank-2205": (
        NodeType("gpu", DGX, slurm=SlurmSettings(partition="gpu", slurm_version="22.05.8")),
        socket_plan(18, [(0,), (4,)]),
        RunSpec(),
    ),
    # srun binding off: every rank goes through the numactl wrapper; not exclusive.
    "dgx-numactl": (
        NodeType(
            "gpu",
            DGX,
            data_root="/local/scratch",
            slurm=SlurmSettings(srun_binding=False, exclusive=False),
        ),
        socket_plan(18, [(0, 1, 2, 3), (4, 5, 6, 7)]),
        RunSpec(data="/shared/imagenet shards", stage_data=True),
    ),
    "cpu-only": (
        NodeType("cpu", two_socket_node(18, 0), slurm=SlurmSettings(partition="cpu")),
        socket_plan(18, [(), ()]),
        RunSpec(),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_render_matches_golden(name: str, golden) -> None:  # type: ignore[no-untyped-def]
    node_type, plan, spec = CASES[name]
    request = JobRequest(
        plan,
        spec,
        node_type,
        f"/runs/{name}",
        job_name=f"hb-{name}",
        site_name="testsite",
        python=PY,
    )
    text = render_job(request)
    assert text == render_job(request)  # pure: same inputs, same script
    golden(f"{name}.sbatch", text)
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)


def test_array_matches_golden(golden) -> None:  # type: ignore[no-untyped-def]
    node_type = NodeType("local", LOCAL, slurm=SlurmSettings(partition="debug"))
    points = [
        ArrayPoint(0, "/runs/sweep/p000/job.sbatch", socket_plan(1, [(0, 1), (2, 3)], 1, False)),
        ArrayPoint(
            1,
            "/runs/sweep/p001/job.sbatch",
            Plan((RankPlacement(0, 0, 0, 0, 0, (0, 1), (0, 1, 2, 3), (0,)),), (), "t"),
        ),
    ]
    text = render_array(points, node_type, "/runs/sweep", max_parallel=1)
    golden("sweep-array.sbatch", text)
    assert "#SBATCH --array=0,1%1\n" in text
    assert "#SBATCH --ntasks-per-node=2\n" in text  # the widest point sets the allocation


def test_user_values_are_shell_quoted() -> None:
    node_type = NodeType("local", LOCAL, slurm=SlurmSettings(partition="debug; rm -rf ~"))
    plan = socket_plan(1, [(0, 1), (2, 3)], mem_node_per_socket=False)
    text = render_job(JobRequest(plan, RunSpec(), node_type, "/runs/$(reboot)", job_name="a b"))
    assert "#SBATCH --partition='debug; rm -rf ~'\n" in text
    assert "RUN_DIR='/runs/$(reboot)'\n" in text
    assert "#SBATCH --job-name='a b'\n" in text


def test_line_breaks_in_values_are_refused() -> None:
    node_type = NodeType("local", LOCAL, slurm=SlurmSettings(partition="debug"))
    plan = socket_plan(1, [(0, 1), (2, 3)], mem_node_per_socket=False)
    with pytest.raises(UsageError, match="line break"):
        render_job(JobRequest(plan, RunSpec(), node_type, "/runs/x", job_name="a\n#SBATCH -N 9"))


def test_site_templates_override_packaged(tmp_path: Path) -> None:
    (tmp_path / "srun_launch.j2").write_text("mpirun -np {{ job.world_size }} site-launcher\n")
    node_type = NodeType("local", LOCAL, slurm=SlurmSettings())
    plan = socket_plan(1, [(0, 1), (2, 3)], mem_node_per_socket=False)
    text = render_job(JobRequest(plan, RunSpec(), node_type, "/runs/x"), tmp_path)
    assert "mpirun -np 2 site-launcher\n" in text
    assert "#SBATCH --nodes=1\n" in text  # the packaged header is still used


def test_site_template_with_unknown_variable_fails(tmp_path: Path) -> None:
    (tmp_path / "srun_launch.j2").write_text("srun {{ job.no_such_field }}\n")
    node_type = NodeType("local", LOCAL, slurm=SlurmSettings())
    plan = socket_plan(1, [(0, 1), (2, 3)], mem_node_per_socket=False)
    with pytest.raises(ConfigError, match="no_such_field"):
        render_job(JobRequest(plan, RunSpec(), node_type, "/runs/x"), tmp_path)


def test_uneven_cpu_split_is_refused() -> None:
    node_type = NodeType("gpu", DGX, slurm=SlurmSettings())
    ranks = tuple(RankPlacement(i, 0, i, 0, 0, (i,), (), (0,)) for i in range(5))
    with pytest.raises(PlanError, match="cannot split the node's 36 CPUs evenly"):
        render_job(JobRequest(Plan(ranks, (), "t"), RunSpec(), node_type, "/runs/x"))


def test_gpu_beyond_node_is_refused() -> None:
    node_type = NodeType("local", LOCAL, slurm=SlurmSettings())
    plan = socket_plan(1, [(0, 1), (2, 7)], mem_node_per_socket=False)
    with pytest.raises(PlanError, match="uses GPU 7 but node type 'local' has 4"):
        render_job(JobRequest(plan, RunSpec(), node_type, "/runs/x"))


def test_relative_run_dir_is_refused() -> None:
    node_type = NodeType("local", LOCAL, slurm=SlurmSettings())
    plan = socket_plan(1, [(0, 1), (2, 3)], mem_node_per_socket=False)
    with pytest.raises(UsageError, match="absolute"):
        render_job(JobRequest(plan, RunSpec(), node_type, "runs/x"))


# The shipped Apollo 6500 config through the command line: planner + site config + templates.
CLI_CASES = {
    "apollo-2x2gpus": ["--ranks", "2", "--gpus-per-rank", "2"],
    "apollo-4x1gpu": ["--ranks", "4", "--gpus-per-rank", "1"],
    "apollo-2x4gpus-hwthreads": ["--ranks", "2", "--hwthreads", "--time-min", "45"],
}
CLI_COMMON = [
    "--site", "hpe-apollo6500-gen10", "--backend", "torch", "--model", "resnet50",
    "--batch-size", "256", "--precision", "fp16", "--python", PY,
]  # fmt: skip


def _cli(*args: str) -> str:
    """What a command prints on stdout (its notes on stderr are left out)."""
    from click.testing import CliRunner

    from hpcbench.cli import cli

    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.parametrize("name", sorted(CLI_CASES))
def test_render_command_matches_golden(name: str, golden, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run_dir = tmp_path / name
    args = [*CLI_COMMON, *CLI_CASES[name], "--job-name", name, "--out", str(run_dir)]
    text = _cli("render", *args)
    assert (run_dir / "job.sbatch").read_text() == text
    # The run directory is the one part that differs between hosts; the golden says /runs.
    golden(f"cli-{name}.sbatch", text.replace(str(tmp_path), "/runs"))


def test_submit_dry_run_prints_what_render_prints(tmp_path: Path) -> None:
    args = [*CLI_COMMON, "--ranks", "2", "--out", str(tmp_path / "run")]
    dry = _cli("submit", "--dry-run", *args)
    assert not (tmp_path / "run").exists()  # a dry run writes nothing
    assert _cli("render", *args) == dry
    out = tmp_path / "job.sbatch"
    _cli("render", *args[:-1], str(tmp_path / "run2"), "-o", str(out))
    assert out.read_text() == dry.replace(str(tmp_path / "run"), str(tmp_path / "run2"))


def test_submit_dry_run_shows_the_run_directory_prepare_makes(tmp_path: Path) -> None:
    """--out through a symbolic link: the script names the resolved folder, dry run or not."""
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    args = [*CLI_COMMON, "--ranks", "2", "--out", str(tmp_path / "link" / "run")]
    dry = _cli("submit", "--dry-run", *args)
    assert _cli("render", *args) == dry
    assert f"RUN_DIR={tmp_path / 'real' / 'run'}" in dry


def test_render_creates_the_run_directory_its_script_uses(tmp_path: Path) -> None:
    """Everything a plain sbatch needs is there: plan, spec, logs/ for --output, the script."""
    from hpcbench.plan.model import Plan
    from hpcbench.runtime.rundir import read_run_info

    run_dir = tmp_path / "run"
    args = [*CLI_COMMON, "--ranks", "2", "--batch-size", "32", "--precision", "bf16"]
    text = _cli("render", *args, "--out", str(run_dir))
    assert (run_dir / "logs").is_dir()
    assert f"#SBATCH --output={run_dir}/logs/slurm-%j.out" in text
    assert RunSpec.read(run_dir / "spec.json").batch_size == 32
    assert Plan.from_json(json.loads((run_dir / "plan.json").read_text())).world_size == 2
    assert read_run_info(run_dir).run_id
    # The settings are in the script, and it aggregates once the ranks are done.
    assert "batch_size=32 precision=bf16" in text
    assert text.rstrip().endswith(f'{PY} -m hpcbench aggregate "$RUN_DIR"')


def test_each_render_gets_its_own_run_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = [*CLI_COMMON, "--ranks", "2"]
    first, second = _cli("render", *args), _cli("render", *args)
    dirs = sorted((tmp_path / "hpcbench-runs").iterdir())
    assert len(dirs) == 2
    assert f"RUN_DIR={dirs[0]}" in first + second
    assert f"RUN_DIR={dirs[1]}" in first + second


def test_render_refuses_an_output_in_a_missing_folder_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    from tests.test_fuzz import assert_refused_in_one_line, run_cli

    args = [*CLI_COMMON, "--out", str(tmp_path / "run"), "-o", str(tmp_path / "no" / "j.sbatch")]
    code, _, stderr = run_cli(["render", *args])
    assert "does not exist" in assert_refused_in_one_line(code, stderr)
    assert not (tmp_path / "run").exists()


def test_default_backend_comes_from_the_node_type_not_this_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GPU node type renders the torch job whether or not PyTorch is installed here."""
    import importlib.util

    args = ["--site", "hpe-apollo6500-gen10", "--ranks", "2", "--python", PY]
    with_torch = _cli("render", *args, "--out", str(tmp_path / "run"))
    find_spec = importlib.util.find_spec

    def no_torch(name: str, *rest: object) -> object:
        return None if name == "torch" else find_spec(name, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", no_torch)
    (tmp_path / "run").rename(tmp_path / "with-torch")
    without_torch = _cli("render", *args, "--out", str(tmp_path / "run"))
    assert "#SBATCH --job-name=hpcbench-resnet50" in without_torch
    assert "backend=torch model=resnet50" in without_torch
    assert without_torch == with_torch
