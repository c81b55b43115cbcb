"""The run directory's files: every name in one place, and the rank status file's read/write.

One run directory (``hpcbench run``, ``render``, ``submit``, a sweep point) holds::

    run.json               RunInfo: run id, host, command, software versions (RUN_FILE)
    plan.json              the launch plan: every rank's placement (PLAN_FILE)
    spec.json              the benchmark spec every rank runs (SPEC_FILE)
    topology.json          the node the plan was made for (TOPOLOGY_FILE)
    site-config.yaml       a private copy of the site config (SITE_COPY)
    .hpcbench-claim        the exclusive claim taken before anything is written (CLAIM_FILE)
    job.sbatch             the rendered Slurm script (JOB_SCRIPT)
    slurm.json             the submitted job: id, state, script (SLURM_FILE)
    submitit/              the job tracker's folder (SUBMITIT_DIR)
    .barriers/             file-barrier state while ranks run (BARRIER_DIR)
    rank-00000.h5          one rank's metrics; ``.part`` until the rank finished
    logs/rank-00000.out    a rank's stdout, ``.err`` its stderr
    logs/rank-00000.status.json   a rank's last published progress
    logs/stable-00000.json        a rank's --until-stable windows
    result.h5, summary.json       the aggregate (RESULT_FILE, SUMMARY_FILE)

The templates receive these names as data (``job.files``), so a rendered script spells them
as this module does. Everything here is a name or a small JSON read/write: no probing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcbench.errors import HpcbenchError
from hpcbench.jsonfile import read_json

RUN_FILE = "run.json"
PLAN_FILE = "plan.json"
SPEC_FILE = "spec.json"
TOPOLOGY_FILE = "topology.json"
SITE_COPY = "site-config.yaml"
CLAIM_FILE = ".hpcbench-claim"
JOB_SCRIPT = "job.sbatch"
SLURM_FILE = "slurm.json"
SUBMITIT_DIR = "submitit"
BARRIER_DIR = ".barriers"
LOGS_DIR = "logs"
RESULT_FILE = "result.h5"
SUMMARY_FILE = "summary.json"
PART_SUFFIX = ".part"
# The numactl wrapper the rendered script writes when srun does not bind (srun_binding: false).
RANK_WRAPPER = "rank-wrapper.sh"
# srun's --output/--error pattern for a rank's logs: %5t is the task id (= the rank) padded to
# five digits, the name rank_log_stem gives.
SRUN_RANK_LOG_STEM = "rank-%5t"


def rank_file_name(rank: int) -> str:
    """The metrics file of ``rank`` (``.part`` appended while it is written).

    >>> rank_file_name(3)
    'rank-00003.h5'
    """
    return f"rank-{rank:05d}.h5"


def template_names() -> dict[str, str]:
    """The names a rendered script spells (``job.files`` in the templates)."""
    return {
        "plan": PLAN_FILE,
        "spec": SPEC_FILE,
        "logs": LOGS_DIR,
        "result": RESULT_FILE,
        "summary": SUMMARY_FILE,
        "rank_wrapper": RANK_WRAPPER,
        "rank_log": SRUN_RANK_LOG_STEM,
    }


def rank_log_stem(rank: int) -> str:
    """What a rank's logs are called under ``logs/`` before their suffix.

    >>> rank_log_stem(12)
    'rank-00012'
    """
    return f"rank-{rank:05d}"


@dataclass(frozen=True, slots=True)
class RunFiles:
    """The paths of one run directory (``root``)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def run_info(self) -> Path:
        return self.root / RUN_FILE

    @property
    def plan(self) -> Path:
        return self.root / PLAN_FILE

    @property
    def spec(self) -> Path:
        return self.root / SPEC_FILE

    @property
    def topology(self) -> Path:
        return self.root / TOPOLOGY_FILE

    @property
    def site_copy(self) -> Path:
        return self.root / SITE_COPY

    @property
    def claim(self) -> Path:
        return self.root / CLAIM_FILE

    @property
    def job_script(self) -> Path:
        return self.root / JOB_SCRIPT

    @property
    def slurm_record(self) -> Path:
        return self.root / SLURM_FILE

    @property
    def submitit(self) -> Path:
        return self.root / SUBMITIT_DIR

    @property
    def barriers(self) -> Path:
        return self.root / BARRIER_DIR

    @property
    def logs(self) -> Path:
        return self.root / LOGS_DIR

    @property
    def result(self) -> Path:
        return self.root / RESULT_FILE

    @property
    def summary(self) -> Path:
        return self.root / SUMMARY_FILE

    def rank_file(self, rank: int) -> Path:
        """A finished rank's metrics file."""
        return self.root / rank_file_name(rank)

    def rank_part(self, rank: int) -> Path:
        """A rank's metrics file while it is written (renamed to :meth:`rank_file` when done)."""
        return self.root / (rank_file_name(rank) + PART_SUFFIX)

    def rank_out(self, rank: int) -> Path:
        return self.logs / f"{rank_log_stem(rank)}.out"

    def rank_err(self, rank: int) -> Path:
        return self.logs / f"{rank_log_stem(rank)}.err"

    def rank_status(self, rank: int) -> Path:
        """Where a rank publishes its progress for the launcher."""
        return self.logs / f"{rank_log_stem(rank)}.status.json"

    def rank_stable(self, rank: int) -> Path:
        """A rank's --until-stable record."""
        return self.logs / f"stable-{rank:05d}.json"

    def read_status(self, rank: int) -> dict[str, Any]:
        """A rank's last published status; {} before its first one or when it cannot be read.

        Progress only (the metrics file is the record), so an unreadable status is not an error.
        """
        try:
            data = read_json(self.rank_status(rank), "rank status file")
        except HpcbenchError:
            return {}
        return data if isinstance(data, dict) else {}

    def write_status(self, rank: int, status: dict[str, Any]) -> None:
        """Publish a rank's status; OSError on failure, which the rank logs once and otherwise
        ignores (progress is not the record).

        Rewritten in place, not through a temporary file and a rename: a rank publishes every
        half second, and each rename frees the replaced file's block. On a file system mounted
        with online discard (ext4 ``discard``, as on this project's VMs) the journal commit then
        waits for the discards, and a rank's main thread sat in that rename for up to a minute,
        unable to act on SIGTERM. A reader may catch a write half done: it then sees no status
        (:meth:`read_status` gives {}), and the next read sees the whole one.
        """
        data = (json.dumps({"rank": rank, **status}, indent=2) + "\n").encode()
        fd = os.open(self.rank_status(rank), os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
        finally:
            os.close(fd)
