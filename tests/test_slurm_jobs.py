"""Real jobs on the local Slurm cluster: binding inside jobs, submit, two nodes, failures."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpcbench.metrics import read_rank_file
from hpcbench.plan.launch import cuda_visible_devices
from hpcbench.plan.model import Plan
from hpcbench.plan.planner import PlanRequest
from hpcbench.site import load_site
from hpcbench.slurm.inputs import JobInputs, JobSettings, job_inputs
from hpcbench.slurm.submit import (
    JobTracker,
    explain_failure,
    prepare,
    sbatch,
    wait_for_job,
)
from hpcbench.slurm.sweep import point_request, point_spec
from hpcbench.spec import SpecChoices

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(240)]

# The planner issue's layouts scaled to the local node (2 cores as 2 fake sockets, 4 fake GPUs).
LAYOUTS = {
    "socket-per-rank-all-gpus": {"ranks": 2},
    "socket-per-rank-one-gpu": {"ranks": 2, "gpus_per_rank": 1},
    "one-rank-whole-node": {"ranks": 1},
    "explicit-remote-gpus": {"ranks": 2, "gpus": "0,2;1,3", "accept_warnings": True},
    # Swapped order: local task 0 on the last CPU. Accepting warnings keeps it valid on nodes
    # with more than 2 CPUs, where CPU 1 is not on the socket of GPU 2.
    "explicit-cpus-swapped": {"ranks": 2, "cpus": "1;0", "gpus": "2;0", "accept_warnings": True},
    # The fake nodes share the host's 2 real CPUs, so ranks of two nodes are co-pinned. A batch
    # count would leave finished ranks loading the CPU a late rank needs (by design: load until
    # the end barrier); a shared deadline keeps every rank idle until the last one arrives.
    "two-nodes": {
        "ranks": 2,
        "gpus_per_rank": 1,
        "nodes": 2,
        "num_batches": None,
        "duration_s": 2.0,
    },
}
SPEC = {"backend": "cpu", "num_batches": 3, "warmup_batches": 1, "batch_size": 8}


def _inputs(site: Path, **settings: object) -> JobInputs:
    """The job of ``settings`` (sweep keys: placement and spec in one flat mapping)."""
    merged = {**SPEC, **settings}
    return job_inputs(JobSettings(site=site), point_request(merged), point_spec(merged))


def _wait(job_id: str, run_dir: Path, world_size: int):  # type: ignore[no-untyped-def]
    tracker = JobTracker(job_id, run_dir / "submitit")
    return wait_for_job(
        tracker, run_dir, world_size, poll_s=0.5, timeout_s=180, echo=lambda _: None
    )


def test_binding_inside_real_jobs_equals_plan(slurm_site: Path, slurm_nodes: int, tmp_path: Path):
    """Every layout runs as a real job; each rank's affinity and GPUs equal its plan."""
    submitted = []
    for name, flags in LAYOUTS.items():
        if int(flags.get("nodes", 1)) > slurm_nodes:  # type: ignore[call-overload]
            pytest.fail(
                f"layout {name} needs {flags['nodes']} nodes, the cluster has {slurm_nodes}"
            )
        inputs = _inputs(slurm_site, **flags)
        run_dir, script = prepare(inputs, tmp_path / name, ["test", name])
        submitted.append((name, inputs.plan, run_dir, sbatch(script)))
    for name, plan, run_dir, job_id in submitted:
        state = _wait(job_id, run_dir, plan.world_size)
        assert state.state == "COMPLETED", f"{name}: {explain_failure(state, run_dir, 0)}"
        _check_rank_files(name, plan, run_dir)


def _check_rank_files(name: str, plan: Plan, run_dir: Path) -> None:
    nodenames = set()
    for placement in plan.ranks:
        rank_file = read_rank_file(run_dir / f"rank-{placement.rank:05d}.h5")
        binding = rank_file.json_attr("binding_json")
        slurm = rank_file.json_attr("slurm_json")
        where = f"{name} rank {placement.rank}"
        assert binding["cpus"] == list(placement.cpus), where
        assert binding["cuda_visible_devices"] == cuda_visible_devices(placement), where
        assert int(rank_file.attrs["local_rank"]) == placement.local_rank, where
        assert int(rank_file.attrs["node"]) == placement.node, where
        nodenames.add((placement.node, slurm["nodename"]))
    # Ranks of different plan nodes ran on different slurmd nodes.
    assert len({n for _, n in nodenames}) == plan.nodes, f"{name}: {sorted(nodenames)}"


def _hpcbench(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "hpcbench", *args], capture_output=True, text=True, timeout=200
    )
    if check and done.returncode != 0:
        raise AssertionError(f"hpcbench {' '.join(args)} failed: {done.stderr[-2000:]}")
    return done


def _submit_flags(site: Path, *timed: str) -> list[str]:
    """Flags of a small CPU job; ``timed`` replaces the default ``--num-batches 3``."""
    timed = timed or ("--num-batches", "3")
    return ["--site", str(site), "--backend", "cpu", *timed, "--batch-size", "8"]


def test_submit_two_ranks_summary_agrees(slurm_site: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    archive = tmp_path / "archive"
    done = _hpcbench(
        "submit", *_submit_flags(slurm_site), "--ranks", "2", "--out", str(out),
        "--archive", str(archive),
    )  # fmt: skip
    assert "COMPLETED" in done.stderr
    # submit prints the verdict, then each failed check on a line of its own.
    verdict = next(x for x in done.stdout.splitlines() if x.startswith("validity ("))
    assert verdict.startswith("validity (default rules): "), done.stdout
    if "INVALID" in verdict:
        assert done.stdout.split(verdict, 1)[1].splitlines()[1].startswith("  "), done.stdout
    listed = json.loads(_hpcbench("archive", "list", "-a", str(archive), "--json").stdout)
    assert len(listed) == 1 and listed[0]["complete"] is True, listed
    summary = json.loads((out / "summary.json").read_text())
    ranks = summary["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1]
    for rank in ranks:
        assert rank["cpus"] == rank["cpus_actual"], rank
        assert rank["gpus_visible"] == ",".join(str(g) for g in rank["gpus"]), rank
    assert ranks[0]["cpus"] != ranks[1]["cpus"]
    job = summary["run"]["slurm_job"]
    assert job["state"] == "COMPLETED" and job["job_id"].isdigit()
    # The site is its name:, in the run directory and in the archive (not the file's stem).
    site_name = load_site(slurm_site).name
    assert summary["run"]["site"] == site_name and site_name != slurm_site.stem
    references = tmp_path / "refs.yaml"
    references.write_text(
        f"version: 1\nreferences:\n  - match: {{site: {site_name}}}\n"
        "    figures: {throughput.common_window_img_s: 0.001}\n"
    )
    for target in (out, archive):
        # Matched: one outcome (a 3-batch job may well be judged invalid; not the point here).
        done = _hpcbench("check", str(target), "-r", str(references), "--json", check=False)
        assert "no reference" not in done.stderr
        assert [o["figure"] for o in json.loads(done.stdout)] == [
            "throughput.common_window_img_s"
        ], done.stderr
    assert job["slurm_version"].count(".") == 2
    assert job["nodes"] and all(n.startswith("node") for n in job["nodes"])
    # What ran is what render shows for the same flags (in its own run directory).
    other = tmp_path / "rendered"
    rendered = _hpcbench("render", *_submit_flags(slurm_site), "--ranks", "2", "--out", str(other))
    assert rendered.stdout.replace(str(other), str(out)) == (out / "job.sbatch").read_text()


def test_rendered_script_runs_with_plain_sbatch(slurm_site: Path, tmp_path: Path) -> None:
    """render -o job.sbatch, then sbatch --wait job.sbatch: the run ends with its summary."""
    out, script = tmp_path / "run", tmp_path / "job.sbatch"
    flags = [*_submit_flags(slurm_site), "--ranks", "2", "--warmup-batches", "2"]
    _hpcbench("render", *flags, "--out", str(out), "-o", str(script))
    done = subprocess.run(
        ["sbatch", "--parsable", "--wait", str(script)],
        capture_output=True,
        text=True,
        timeout=200,
        cwd=tmp_path,
    )
    job_id = done.stdout.strip().split(";")[0]
    logs = sorted(p.name for p in (out / "logs").iterdir())
    assert done.returncode == 0, (done.stderr, logs)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is True
    assert summary["run"]["world_size"] == 2 and summary["run"]["batch_size"] == 8
    assert summary["run"]["slurm"]["job_id"] == job_id
    # The job's own log ends with the aggregated result; srun's binding report (verbose) goes
    # to each task's stderr, the rank logs, not to the job's (docs/slurm.md says so).
    assert "run " in (out / "logs" / f"slurm-{job_id}.out").read_text()
    assert "cpu-bind=MASK" in (out / "logs" / "rank-00000.err").read_text()
    assert "cpu-bind" not in (out / "logs" / f"slurm-{job_id}.err").read_text()


def test_aggregate_after_no_wait_records_how_the_job_ended(
    slurm_site: Path, tmp_path: Path
) -> None:
    """submit --no-wait leaves slurm.json PENDING; a later aggregate asks Slurm and updates it."""
    out = tmp_path / "run"
    _hpcbench("submit", *_submit_flags(slurm_site), "--ranks", "2", "--out", str(out), "--no-wait")
    record = json.loads((out / "slurm.json").read_text())
    assert record["state"] == "PENDING"
    state = _wait(record["job_id"], out, 2)
    assert state.state == "COMPLETED", explain_failure(state, out, 2)
    _hpcbench("aggregate", str(out))
    record = json.loads((out / "slurm.json").read_text())
    assert record["state"] == "COMPLETED" and record["nodes"], record
    summary = json.loads((out / "summary.json").read_text())
    assert summary["run"]["slurm_job"] == record


def test_two_node_job(slurm_site: Path, slurm_nodes: int, tmp_path: Path) -> None:
    assert slurm_nodes >= 2, "scripts/test.sh starts the cluster with --nodes 2"
    out = tmp_path / "run"
    flags = ["--ranks", "2", "--gpus-per-rank", "1", "--nodes", "2", "--out", str(out)]
    # A shared deadline, not a batch count: see LAYOUTS["two-nodes"].
    _hpcbench("submit", *_submit_flags(slurm_site, "--duration-s", "2"), *flags)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["run"]["world_size"] == 4
    assert summary["run"]["slurm_job"]["nodes"] == ["node1", "node2"]
    spec = json.loads((out / "spec.json").read_text())
    assert spec["barrier"] == "file"  # shm cannot span nodes
    for rank in summary["ranks"]:
        assert rank["cpus"] == rank["cpus_actual"], rank


def test_sbatch_refusal_shows_slurms_message(slurm_site: Path, tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    text = slurm_site.read_text().replace("partition: debug", "partition: no-such-partition")
    site.write_text(text)
    (tmp_path / "templates").symlink_to(slurm_site.parent / "templates")
    done = _hpcbench("submit", *_submit_flags(site), "--out", str(tmp_path / "r"), check=False)
    assert done.returncode == 1
    assert "sbatch refused" in done.stderr and "invalid partition" in done.stderr.lower()


def test_dead_rank_is_named_with_its_stderr(slurm_site: Path, tmp_path: Path) -> None:
    inputs = _inputs(slurm_site, ranks=2)
    run_dir, script = prepare(inputs, tmp_path / "r", ["test"])
    # Rank 1 finds no placement for itself in a plan that only has rank 0's entry.
    plan = json.loads((run_dir / "plan.json").read_text())
    plan["ranks"][1]["rank"] = 7
    (run_dir / "plan.json").write_text(json.dumps(plan))
    job_id = sbatch(script)
    state = _wait(job_id, run_dir, 2)
    assert state.state == "FAILED"
    message = explain_failure(state, run_dir, 2)
    assert f"job {job_id} ended FAILED" in message
    # Whichever node Slurm picked (node1 may be busy with another job on a shared cluster).
    assert re.search(r"rank 1 on node\d+: Exited with exit code 2", message), message
    assert "its stderr ends:" in message and "rank 1" in message


def test_cancelled_job_says_cancelled(slurm_site: Path, tmp_path: Path) -> None:
    inputs = job_inputs(
        JobSettings(site=slurm_site),
        PlanRequest(ranks=2),
        SpecChoices(changes={"backend": "cpu", "duration_s": 120.0}),
    )
    run_dir, script = prepare(inputs, tmp_path / "r", ["test"])
    job_id = sbatch(script)
    _wait_running(job_id)
    subprocess.run(["scancel", job_id], check=True)
    state = _wait(job_id, run_dir, 2)
    assert state.state == "CANCELLED"
    assert explain_failure(state, run_dir, 2).startswith(f"job {job_id} ended CANCELLED")


def test_interrupted_submit_leaves_the_job_running_and_says_so(
    slurm_site: Path, tmp_path: Path
) -> None:
    """Ctrl-C while submit follows its job: the job is Slurm's and keeps running; submit says
    how to cancel or collect it, and exits 130."""
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpcbench", "submit",
         *_submit_flags(slurm_site, "--duration-s", "120"), "--ranks", "2", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    job_id = ""
    try:
        deadline = time.monotonic() + 60.0
        while not job_id and time.monotonic() < deadline and proc.poll() is None:
            if (out / "slurm.json").is_file():
                job_id = json.loads((out / "slurm.json").read_text())["job_id"]
            time.sleep(0.2)
        assert job_id, f"submit recorded no job within 60 s: {proc.poll()}"
        _wait_running(job_id)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130, stderr
        line = (
            f"job {job_id} keeps running (not cancelled): 'scancel {job_id}' cancels it; "
            f"once it ended, 'hpcbench aggregate {out.resolve()}' collects it"
        )
        said = [x for x in stderr.splitlines() if x]  # click writes a blank line on Ctrl-C
        assert said[-2:] == [line, "hpcbench: aborted"], stderr
        queued = subprocess.run(
            ["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, check=True
        )
        assert queued.stdout.strip() == "RUNNING"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        if job_id:
            subprocess.run(["scancel", job_id], check=False)
            _wait(job_id, out, 2)


def _wait_running(job_id: str, timeout_s: float = 60.0) -> None:
    """Return once Slurm reports the job RUNNING, so that cancelling it stops started ranks."""
    deadline = time.monotonic() + timeout_s
    state = ""
    while time.monotonic() < deadline:
        state = subprocess.run(
            ["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, check=True
        ).stdout.strip()
        if state == "RUNNING":
            return
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} not RUNNING within {timeout_s:g} s (last state {state!r})")


def test_numactl_wrapper_variant_in_a_real_job(slurm_site: Path, tmp_path: Path) -> None:
    """srun_binding: false: srun starts ranks unbound and the wrapper pins them with numactl."""
    import os

    cpus = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
    gpus = "".join(f"        - {{index: {g}, model: fake, numa_node: 0}}\n" for g in range(4))
    site = tmp_path / "wrapper.yaml"
    site.write_text(
        "name: wrapper\nnode_types:\n  local:\n    topology:\n      numa_nodes:\n"
        f'        - {{id: 0, package: 0, cpus: "{cpus}"}}\n      gpus:\n{gpus}'
        "    slurm: {partition: debug, srun_binding: false}\n"
    )
    inputs = _inputs(site, ranks=2)
    run_dir, script = prepare(inputs, tmp_path / "r", ["test"])
    assert "numactl --physcpubind=" in script.read_text()
    state = _wait(sbatch(script), run_dir, 2)
    assert state.state == "COMPLETED", explain_failure(state, run_dir, 2)
    _check_rank_files("numactl-wrapper", inputs.plan, run_dir)


@pytest.mark.parametrize(
    ("flags", "planned", "wrong", "message"),
    [
        # Both tasks of map_gpu:0,2 reported global_list=0 on a cluster with device cgroups.
        ({"ranks": 2, "gpus_per_rank": 1}, "map_gpu:0,2", "map_gpu:0,0",
         "rank 1: gpus: planned GPUs 2, srun bound global GPUs 0 (gpu-bind global_list)"),
        # mask_gpu:0x3,0xC ran with global_list=0,1 for both ranks and no mismatch recorded.
        ({"ranks": 2}, "mask_gpu:0x3,0xC", "mask_gpu:0x3,0x3",
         "rank 1: gpus: planned GPUs 2,3, srun bound global GPUs 0,1 (gpu-bind global_list)"),
    ],
)  # fmt: skip
def test_gpus_are_compared_by_identity_not_index(
    slurm_site: Path,
    tmp_path: Path,
    flags: dict[str, object],
    planned: str,
    wrong: str,
    message: str,
) -> None:
    """The issue's two observations, reproduced by binding rank 1 to rank 0's GPUs."""
    from hpcbench.aggregate import aggregate_run

    inputs = _inputs(slurm_site, **flags)
    runs = {}
    for name in ("as-planned", "rebound"):
        run_dir, script = prepare(inputs, tmp_path / name, ["test", name])
        text = script.read_text()
        assert f"--gpu-bind=verbose,{planned}" in text
        if name == "rebound":
            script.write_text(text.replace(planned, wrong))
        runs[name] = (run_dir, sbatch(script))
    for run_dir, job_id in runs.values():
        state = _wait(job_id, run_dir, 2)
        assert state.state == "COMPLETED", explain_failure(state, run_dir, 2)

    good = aggregate_run(runs["as-planned"][0])
    binding = next(c for c in good["validity"]["checks"] if c["name"] == "binding")
    # The fake cluster's NUMA node 1 does not exist on the host: rank 1's memory policy differs
    # from its plan in every job here. The GPUs, though, are the planned ones.
    assert "gpus:" not in binding["why"] and "GPU" not in binding["why"], binding["why"]
    for row in good["ranks"]:
        identity = row["gpu_identity"]
        assert identity["source"] == "slurm_gpu_bind" and identity["actual"] == row["gpus"]

    bad = aggregate_run(runs["rebound"][0])
    binding = next(c for c in bad["validity"]["checks"] if c["name"] == "binding")
    assert binding["passed"] is False and bad["validity"]["valid"] is False
    assert message in binding["why"]
    assert f"GPU 0 on {bad['ranks'][0]['host']} is bound to ranks 0, 1" in binding["why"]
    # CUDA_VISIBLE_DEVICES alone said nothing wrong: rank 1 saw GPUs numbered from 0, the
    # same as a task renumbered by ConstrainDevices.
    rank1 = bad["ranks"][1]
    assert rank1["gpus_visible"] == ",".join(str(g) for g in range(len(rank1["gpus"])))
    assert message.removeprefix("rank 1: ") in rank1["binding_mismatches"]
    assert not any(m.startswith("gpus:") for m in bad["ranks"][0]["binding_mismatches"])
