"""Sweeps: spec validation (pure), a 4-point job array on the local cluster, local runs, resume."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpcbench.errors import ConfigError, RunError, UsageError
from hpcbench.slurm.sweep import format_sweep, load_sweep, run_sweep


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("site: s\ngird:\n  model: [a]\n", "unknown key 'gird' (did you mean 'grid'?)"),
        ("site: s\ngrid:\n  batch_sise: [1]\n", "grid: unknown setting 'batch_sise' (did you mean"),
        ("site: s\ngrid: {model: [a]}\nbase: {modle: a}\n", "base: unknown setting 'modle'"),
        ("site: s\ngrid:\n  model: []\n", "grid.model: [] should be non-empty"),
        ("site: s\ngrid:\n  model: a\n", "grid.model: expected array, got 'a' (str)"),
        ("grid:\n  model: [a]\n", "no site"),
        ("site: s\ngrid:\n  model: [[a, b]]\n", "grid.model: ['a', 'b'] is not a single value"),
        ("site: s\nmax_parallel: 0\ngrid: {model: [a]}\n", "max_parallel: 0 is less than"),
    ],
)
def test_bad_sweep_specs_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        load_sweep(_write(tmp_path / "s.yaml", text))
    assert message in str(info.value)
    assert str(info.value).startswith(str(tmp_path / "s.yaml"))


def test_command_line_overrides_spec(tmp_path: Path) -> None:
    spec_path = _write(tmp_path / "s.yaml", "site: a.yaml\nmax_parallel: 3\ngrid: {model: [a]}\n")
    spec = load_sweep(spec_path, site="b.yaml", out=tmp_path / "o", max_parallel=1)
    assert (spec.site, spec.out, spec.max_parallel, spec.name) == ("b.yaml", tmp_path / "o", 1, "s")
    assert "validity" not in spec.base
    assert load_sweep(spec_path, validity="strict").base["validity"] == "strict"


def _this_machine_site(tmp_path: Path) -> Path:
    """A site config of this machine as it really is: one NUMA node with every CPU, no GPU."""
    cpus = sorted(os.sched_getaffinity(0))
    text = (
        "name: here\nnode_types:\n  cpu:\n    topology:\n      numa_nodes:\n"
        f'        - {{id: 0, package: 0, cpus: "{",".join(map(str, cpus))}"}}\n'
    )
    return _write(tmp_path / "here.yaml", text)


def test_local_sweep_runs_points_in_turn_and_resumes(tmp_path: Path) -> None:
    site = _this_machine_site(tmp_path)
    spec_path = _write(
        tmp_path / "local.yaml",
        f"site: {site}\nbase: {{backend: cpu, num_batches: 2, warmup_batches: 0, ranks: 1}}\n"
        "grid:\n  batch_size: [4, 8]\n",
    )
    spec = load_sweep(spec_path, out=tmp_path / "out")
    points = run_sweep(spec, local=True, echo=lambda _: None)
    assert [p.status for p in points] == ["done", "done"], format_sweep(spec, points)
    batch = [json.loads((p.run_dir / "spec.json").read_text())["batch_size"] for p in points]
    assert batch == [4, 8]
    again = run_sweep(spec, local=True, echo=lambda _: None)
    assert [p.status for p in again] == ["done (earlier)"] * 2
    table = format_sweep(spec, again)
    assert table.splitlines()[0].split()[:5] == [
        "point", "batch_size", "status", "img/s", "validity"
    ]  # fmt: skip
    # Two timed batches per point: a number, judged too little work to publish. Read the
    # column where its header starts: the status ("done (earlier)") and a grouped figure
    # ("1 274.6") both hold spaces.
    header, first = table.splitlines()[:2]
    assert first[header.index("validity") :].split()[0] == "INVALID"
    assert "p000: enough_work: 2 timed batches on the least-used device < 50" in table


def _other_node_site(tmp_path: Path) -> Path:
    """A site config of a node with a second NUMA node, which this machine does not have."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or Path("/sys/devices/system/node/node1").exists():
        pytest.skip("needs a machine with one NUMA node and at least two CPUs")
    half = len(cpus) // 2
    nodes = "".join(
        f'        - {{id: {i}, package: {i}, cpus: "{",".join(map(str, part))}"}}\n'
        for i, part in enumerate((cpus[:half], cpus[half:]))
    )
    text = f"name: there\nnode_types:\n  cpu:\n    topology:\n      numa_nodes:\n{nodes}"
    return _write(tmp_path / "there.yaml", text)


@pytest.mark.parametrize(
    ("site_kind", "base", "message"),
    [
        # The plan's rank 1 binds its memory to NUMA node 1: numactl would fail in every point.
        ("other-node", "backend: cpu, ranks: 2", "the plan binds its memory to NUMA node 1"),
        # The CPU backend refuses bf16; 'run' says so before anything starts, so must sweep.
        ("this-host", "backend: cpu, ranks: 1, precision: bf16", "computes in fp32, not bf16"),
    ],
)
def test_local_sweep_checks_every_point_before_any_starts(
    tmp_path: Path, site_kind: str, base: str, message: str
) -> None:
    site = _other_node_site(tmp_path) if site_kind == "other-node" else _this_machine_site(tmp_path)
    spec_path = _write(
        tmp_path / "s.yaml",
        f"site: {site}\nbase: {{{base}, num_batches: 2, warmup_batches: 0}}\n"
        "grid:\n  batch_size: [4, 8]\n",
    )
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "hpcbench", "sweep", str(spec_path), "--local", "--out", str(out)],
        capture_output=True, text=True, timeout=200,
    )  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert (
        lines[0].startswith("hpcbench: error: sweep point 0 batch_size=4: ") and message in lines[0]
    )
    assert not out.exists()


def test_local_sweep_without_a_site_probes_this_host(tmp_path: Path) -> None:
    spec_path = _write(
        tmp_path / "s.yaml",
        "base: {backend: cpu, num_batches: 2, warmup_batches: 0, ranks: 1}\n"
        "grid:\n  batch_size: [4]\n",
    )
    spec = load_sweep(spec_path, out=tmp_path / "out", local=True)
    points = run_sweep(spec, local=True, echo=lambda _: None)
    assert [p.status for p in points] == ["done"], format_sweep(spec, points)
    topology = json.loads((points[0].run_dir / "topology.json").read_text())
    assert topology["source"] == "sysfs"  # this host, probed
    with pytest.raises(ConfigError, match="no site"):
        load_sweep(spec_path)  # a Slurm sweep still needs one


def test_local_sweep_archives_its_points(tmp_path: Path) -> None:
    site = _this_machine_site(tmp_path)
    spec_path = _write(
        tmp_path / "local.yaml",
        f"site: {site}\nbase: {{backend: cpu, num_batches: 2, warmup_batches: 0, ranks: 1}}\n"
        "grid:\n  batch_size: [4, 8]\n",
    )
    archive = tmp_path / "archive"
    argv = ["sweep", str(spec_path), "--local", "--out", str(tmp_path / "out")]
    for _ in range(2):  # the second, resumed sweep archives the same runs again: harmless
        done = subprocess.run(
            [sys.executable, "-m", "hpcbench", *argv, "--archive", str(archive)],
            capture_output=True, text=True, timeout=200,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "archived 2 runs" in done.stderr
    listed = subprocess.run(
        [sys.executable, "-m", "hpcbench", "archive", "list", "-a", str(archive), "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    runs = json.loads(listed.stdout)
    assert sorted(r["spec"]["batch_size"] for r in runs) == [4, 8], runs


def test_resume_refuses_a_different_grid(tmp_path: Path) -> None:
    site = _this_machine_site(tmp_path)
    first = _write(tmp_path / "a.yaml", f"site: {site}\ngrid: {{batch_size: [4]}}\n")
    run_sweep(load_sweep(first, out=tmp_path / "out"), local=True, echo=lambda _: None)
    other = _write(tmp_path / "b.yaml", f"name: a\nsite: {site}\ngrid: {{batch_size: [8]}}\n")
    with pytest.raises(UsageError, match="holds another sweep"):
        run_sweep(load_sweep(other, out=tmp_path / "out"), local=True, echo=lambda _: None)


def test_resume_over_damaged_records_is_one_line_and_keeps_them(tmp_path: Path) -> None:
    """A damaged sweep.json or an earlier point's summary.json: one line naming the file,
    exit 2, and the damaged file left as it was (it is evidence, not ours to overwrite)."""
    site = _this_machine_site(tmp_path)
    spec_path = _write(
        tmp_path / "s.yaml",
        f"site: {site}\nbase: {{backend: cpu, num_batches: 2, warmup_batches: 0, ranks: 1}}\n"
        "grid: {batch_size: [4]}\n",
    )
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "hpcbench", "sweep", str(spec_path), "--local", "--out", str(out)]
    assert subprocess.run(argv, capture_output=True, timeout=200).returncode == 0
    sweep_json = out / "sweep.json"
    good = sweep_json.read_text()
    summary = next(out.glob("p*/summary.json"))
    for damaged, text, message in [
        (sweep_json, "{half", f"{sweep_json}: sweep record is not valid JSON"),
        (sweep_json, "[1]", f"{sweep_json}: sweep record is not a JSON object"),
        (summary, "{half", f"{summary}: summary is not valid JSON"),
    ]:
        sweep_json.write_text(good)
        damaged.write_text(text)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=200)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(f"hpcbench: error: {message}"), done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert damaged.read_text() == text


@pytest.mark.slurm
@pytest.mark.timeout(240)
def test_four_point_sweep_is_one_job_array(slurm_site: Path, tmp_path: Path) -> None:
    spec_path = _write(
        tmp_path / "grid.yaml",
        f"name: grid\nsite: {slurm_site}\nmax_parallel: 2\n"
        "base: {backend: cpu, num_batches: 3, warmup_batches: 1}\n"
        "grid:\n  batch_size: [4, 8]\n  layout: ['0,1;2,3', '0;2']\n",
    )
    spec = load_sweep(spec_path, out=tmp_path / "out")
    lines: list[str] = []
    points = run_sweep(spec, poll_s=0.5, timeout_s=200, echo=lines.append)
    assert [p.status for p in points] == ["done"] * 4, format_sweep(spec, points)
    records = [json.loads((p.run_dir / "slurm.json").read_text()) for p in points]
    assert len({r["job_id"] for r in records}) == 1, records  # one array job
    assert [r["array_task_id"] for r in records] == [0, 1, 2, 3]
    assert sum("submitted job array" in line for line in lines) == 1
    for point in points:
        summary = json.loads((point.run_dir / "summary.json").read_text())
        assert summary["run"]["batch_size"] == point.params["batch_size"]
        assert summary["run"]["gpu_layout"] == point.params["layout"]
        for rank in summary["ranks"]:
            assert rank["cpus"] == rank["cpus_actual"]
            assert rank["gpus_visible"] == ",".join(map(str, rank["gpus"]))
    # Resume: nothing left to submit.
    lines.clear()
    again = run_sweep(spec, poll_s=0.5, timeout_s=60, echo=lines.append)
    assert [p.status for p in again] == ["done (earlier)"] * 4
    assert not any("submitted" in line for line in lines)


@pytest.mark.slurm
@pytest.mark.timeout(240)
def test_failed_array_point_is_reported_and_rerun(slurm_site: Path, tmp_path: Path) -> None:
    spec_path = _write(
        tmp_path / "fail.yaml",
        f"name: fail\nsite: {slurm_site}\n"
        "base: {backend: cpu, num_batches: 2, warmup_batches: 0, ranks: 2}\n"
        # A point only the ranks can find wrong (a misspelt model is now refused before anything
        # is submitted): on this cluster rank 1's planned NUMA node 1 is one of the two fake
        # sockets' and does not exist, so --strict-binding fails it at start (docs/slurm.md).
        "grid:\n  strict_binding: [false, true]\n",
    )
    spec = load_sweep(spec_path, out=tmp_path / "out")
    points = run_sweep(spec, poll_s=0.5, timeout_s=200, echo=lambda _: None)
    assert [p.status for p in points] == ["done", "failed"]
    assert re.search(
        r"ended FAILED.*; rank 1 on node\d: Exited with exit code 1", points[1].message
    )
    # The rank's own error, from its stderr.
    assert "binding differs from the plan (--strict-binding)" in points[1].message
    assert "p001: job " in format_sweep(spec, points)
    again = run_sweep(spec, poll_s=0.5, timeout_s=200, echo=lambda _: None)
    assert [p.status for p in again] == ["done (earlier)", "failed"]
    assert (tmp_path / "out" / "p001.incomplete-1").is_dir()


@pytest.mark.slurm
@pytest.mark.timeout(240)
def test_array_left_running_is_collected_with_its_records_when_run_again(
    slurm_site: Path, tmp_path: Path
) -> None:
    """A sweep that stopped following its array (here: past its wait) leaves every task's
    slurm.json PENDING; once the tasks ended, the same sweep collects them, records and all."""
    spec_path = _write(
        tmp_path / "left.yaml",
        f"name: left\nsite: {slurm_site}\n"
        "base: {backend: cpu, duration_s: 3, warmup_batches: 0, ranks: 1}\n"
        "grid:\n  batch_size: [4, 8]\n",
    )
    spec = load_sweep(spec_path, out=tmp_path / "out")
    lines: list[str] = []
    with pytest.raises(RunError, match=r"not finished after 1 s .* the same command run again"):
        run_sweep(spec, poll_s=0.2, timeout_s=1, echo=lines.append)
    runs = [tmp_path / "out" / f"p{i:03d}" for i in range(2)]
    records = [json.loads((run / "slurm.json").read_text()) for run in runs]
    assert [(r["state"], r["array_task_id"]) for r in records] == [("PENDING", 0), ("PENDING", 1)]
    array_id = records[0]["job_id"]
    deadline = time.monotonic() + 120.0
    while _queued(array_id) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _queued(array_id), f"array {array_id} still queued after 120 s"
    again = run_sweep(spec, poll_s=0.5, timeout_s=60, echo=lines.append)
    assert [p.status for p in again] == ["done (earlier)"] * 2, format_sweep(spec, again)
    for point in again:
        record = json.loads((point.run_dir / "slurm.json").read_text())
        assert record["state"] == "COMPLETED" and record["job_id"] == array_id, record
        summary = json.loads((point.run_dir / "summary.json").read_text())
        assert summary["run"]["slurm_job"] == record
        assert point.summary is not None and point.summary["run"]["slurm_job"] == record


def _queued(job_id: str) -> bool:
    """Whether Slurm still lists a task of the job (array)."""
    listed = subprocess.run(
        ["squeue", "-h", "-j", job_id, "-o", "%i"], capture_output=True, text=True, timeout=30
    )
    return bool(listed.stdout.strip())
