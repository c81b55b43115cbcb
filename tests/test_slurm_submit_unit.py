"""Pure parts of submission: failure explanations, job records, node lists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpcbench.errors import SlurmError
from hpcbench.slurm.nodelist import expand_nodelist
from hpcbench.slurm.submit import (
    JobState,
    add_job_to_summary,
    explain_failure,
    job_record,
    put_job_record,
    wait_for_job,
)


def _run_dir(tmp_path: Path, job_err: str, rank_errs: dict[int, str]) -> Path:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "slurm-42.err").write_text(job_err)
    for rank, text in rank_errs.items():
        (logs / f"rank-{rank:05d}.err").write_text(text)
    return tmp_path


def test_first_rank_that_exited_is_the_culprit(tmp_path: Path) -> None:
    # With --kill-on-bad-exit, srun reports the killed ranks too; the cause is the one that exited.
    job_err = (
        "srun: error: gpu07: task 0: Killed\n"
        "srun: error: gpu08: task 3: Exited with exit code 1\n"
        "srun: error: gpu07: tasks 1-2: Killed\n"
    )
    rank_err = "cpu-bind=MASK - gpu08, task  3  1 [99]: mask 0x2 set\nTraceback\nRunError: boom\n"
    run_dir = _run_dir(tmp_path, job_err, {3: rank_err})
    message = explain_failure(JobState("42", "FAILED", "1:0"), run_dir, 4)
    assert message == (
        "job 42 ended FAILED (exit code 1:0); rank 3 on gpu08: Exited with exit code 1; "
        "its stderr ends: Traceback | RunError: boom"
    )


def test_timeout_lists_ranks_without_results(tmp_path: Path) -> None:
    run_dir = _run_dir(
        tmp_path, "slurmstepd: error: *** JOB 42 CANCELLED DUE TO TIME LIMIT ***\n", {}
    )
    (run_dir / "rank-00001.h5").write_bytes(b"")
    message = explain_failure(JobState("42", "TIMEOUT", "0:0"), run_dir, 3)
    assert message.startswith("job 42 ended TIMEOUT; ranks without a result file: [0, 2]")
    assert "DUE TO TIME LIMIT" in message


def test_job_record_expands_nodes_and_array_ids() -> None:
    record = job_record(
        JobState("77_3", "COMPLETED", "0:0", "node[1-2]"),
        submitted_at="t",
        script=Path("/r/job.sbatch"),
        version="22.05.8",
    )
    assert record["job_id"] == "77" and record["array_task_id"] == 3
    assert record["nodes"] == ["node1", "node2"]
    assert record["slurm_version"] == "22.05.8" and record["script"] == "job.sbatch"


@pytest.mark.parametrize(
    ("seen", "nodes"),
    [
        # The ranks' SLURM_JOB_NODELIST wins over a NodeList polled while the job completed.
        ({"job_id": "77", "nodelist": "node[1-2]"}, ["node1", "node2"]),
        ({"job_id": "78", "nodelist": "node[1-2]"}, ["node1"]),  # another job's ranks: not used
        (None, ["node1"]),  # not run under Slurm (or no rank file said): the controller's list
    ],
)
def test_job_nodes_are_the_allocation_the_ranks_saw(
    tmp_path: Path, seen: dict[str, str] | None, nodes: list[str]
) -> None:
    record = job_record(
        JobState("77", "COMPLETED", "0:0", "node1"),  # node2 already left the list
        submitted_at="t",
        script=Path("/r/job.sbatch"),
        version="22.05.8",
    )
    summary = put_job_record(tmp_path, {"run": {"slurm": seen}}, record)
    assert summary["run"]["slurm_job"]["nodes"] == nodes
    assert json.loads((tmp_path / "summary.json").read_text())["run"]["slurm_job"]["nodes"] == nodes


@pytest.mark.parametrize("job_aggregated", [True, False])
def test_the_jobs_own_summary_is_not_computed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, job_aggregated: bool
) -> None:
    """A rendered job aggregates itself as its last step; submit reuses that summary."""
    import hpcbench.aggregate

    calls: list[Path] = []

    def aggregate_run(run_dir: Path) -> dict[str, object]:
        calls.append(run_dir)
        return {"run": {"run_id": "from-submit"}}

    monkeypatch.setattr(hpcbench.aggregate, "aggregate_run", aggregate_run)
    if job_aggregated:
        (tmp_path / "summary.json").write_text(json.dumps({"run": {"run_id": "from-job"}}))
        (tmp_path / "result.h5").write_bytes(b"")
    record = job_record(
        JobState("77", "COMPLETED", "0:0", "node1"),
        submitted_at="t",
        script=Path("j"),
        version=None,
    )
    summary = add_job_to_summary(tmp_path, record)
    assert summary["run"]["run_id"] == ("from-job" if job_aggregated else "from-submit")
    assert calls == ([] if job_aggregated else [tmp_path])
    assert summary["run"]["slurm_job"]["job_id"] == "77"


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("node1", ["node1"]),
        ("node[1-2]", ["node1", "node2"]),
        ("gpu[008-010],cpu1", ["gpu008", "gpu009", "gpu010", "cpu1"]),
        ("a[1,3-4]b", ["a1b", "a3b", "a4b"]),
        ("r[1-2]n[01-02]", ["r1n01", "r1n02", "r2n01", "r2n02"]),
        ("None assigned", []),
    ],
)
def test_expand_nodelist(text: str, names: list[str]) -> None:
    assert expand_nodelist(text) == names


@pytest.mark.parametrize("text", ["n[1-", "n]1[", "n[a-b]", "n[2-1]"])
def test_bad_nodelist_is_an_error(text: str) -> None:
    with pytest.raises(SlurmError, match="node list"):
        expand_nodelist(text)


class _Tracker:
    """Answers with the given states in turn; a SlurmError in the list is raised instead."""

    def __init__(self, answers: list[JobState | SlurmError]) -> None:
        self.job_id = "7"
        self.answers = answers

    def state(self, refresh: bool = True) -> JobState:
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, SlurmError):
            raise answer
        return answer


def test_wait_survives_a_controller_that_misses_polls(tmp_path: Path) -> None:
    silent = SlurmError("scontrol show job -o 7: no answer after 20 s")
    tracker = _Tracker([JobState("7", "RUNNING"), silent, silent, JobState("7", "COMPLETED")])
    lines: list[str] = []
    state = wait_for_job(tracker, tmp_path, 1, poll_s=0.01, echo=lines.append)  # type: ignore[arg-type]
    assert state.state == "COMPLETED"
    assert sum("did not answer" in line for line in lines) == 1, lines


def test_wait_gives_up_on_a_controller_silent_too_long(tmp_path: Path) -> None:
    silent = SlurmError("scontrol show job -o 7: no answer after 20 s")
    tracker = _Tracker([JobState("7", "RUNNING"), silent])
    with pytest.raises(SlurmError, match=r"job 7: Slurm has not answered for .* squeue -j 7"):
        wait_for_job(
            tracker,  # type: ignore[arg-type]
            tmp_path,
            1,
            poll_s=0.01,
            controller_timeout_s=0.05,
            echo=lambda _: None,
        )
