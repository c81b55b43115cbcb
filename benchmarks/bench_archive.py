"""Archive under concurrent writers: nothing lost, nothing half-written, index equal to a rebuild.

Builds one real run (rank files aggregated by ``aggregate_run``) and clones it into RUNS run
directories with distinct run ids, then starts WRITERS ``hpcbench archive add`` processes at
once, each adding its share (as the tasks of a job array would). With ``--kill N`` it also
SIGKILLs N further writers mid-way, to show that a killed writer leaves no half run. Then it
checks: every run listed, every archived file matching its recorded sha256, the incremental
index byte-equal to a rebuilt one; and times ``list`` and ``rebuild-index``.

    .venv/bin/python benchmarks/bench_archive.py                    # 64 runs, 16 writers
    .venv/bin/python benchmarks/bench_archive.py --runs 256 --writers 32 --kill 8
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hpcbench.archive import Archive  # noqa: E402
from tests.archive_runs import make_run  # noqa: E402


def clone(template: Path, target: Path, run_id: str) -> None:
    shutil.copytree(template, target)
    for name in ("run.json", "summary.json"):
        data = json.loads((target / name).read_text())
        if name == "run.json":
            data["run_id"] = run_id
        else:
            data["run"]["run_id"] = run_id
        (target / name).write_text(json.dumps(data))


def add_command(archive: Path, run_dirs: list[Path]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "hpcbench",
        "archive",
        "add",
        *map(str, run_dirs),
        "--to",
        str(archive),
    ]


def verify(archive: Archive) -> int:
    """Check every archived file against its recorded checksum; return the files checked."""
    checked = 0
    for run_id in archive.run_ids():
        folder = archive.runs_dir / run_id
        record = json.loads((folder / "record.json").read_text())
        for name, info in record["files"].items():
            digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()
            if digest != info["sha256"]:
                raise SystemExit(f"CORRUPT: {folder / name}")
            checked += 1
    return checked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=64)
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--kill", type=int, default=0, help="extra writers SIGKILLed mid-way")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-archive-"))
    try:
        template = make_run(work / "template", "template", iterations=200)
        runs = []
        for i in range(args.runs):
            run_dir = work / "runs" / f"run-{i:05d}"
            clone(template, run_dir, run_dir.name)
            runs.append(run_dir)
        archive_dir = work / "archive"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        shares = [runs[i :: args.writers] for i in range(args.writers)]
        t0 = time.perf_counter()
        writers = [
            subprocess.Popen(add_command(archive_dir, s), env=env, stdout=subprocess.DEVNULL)
            for s in shares
            if s
        ]
        # Doomed writers re-add random runs and are killed at random moments.
        doomed = [
            subprocess.Popen(
                add_command(archive_dir, random.sample(runs, min(8, len(runs)))),
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(args.kill)
        ]
        for process in doomed:
            time.sleep(random.uniform(0.2, 1.0))
            process.send_signal(signal.SIGKILL)
        failed = sum(p.wait(timeout=600) != 0 for p in writers)
        killed = sum(p.wait(timeout=60) == -signal.SIGKILL for p in doomed)
        staging_left = len(list((archive_dir / "staging").iterdir()))
        add_s = time.perf_counter() - t0
        archive = Archive(archive_dir)
        t1 = time.perf_counter()
        listed = archive.entries()
        list_s = time.perf_counter() - t1
        incremental = archive.index_snapshot()
        files_checked = verify(archive)
        t2 = time.perf_counter()
        report = archive.rebuild_index(stale_after_s=0.0)
        rebuild_s = time.perf_counter() - t2
        result = {
            "runs": args.runs,
            "writers": args.writers,
            "writers_killed": args.kill,
            "killed_before_exit": killed,
            "staging_left_by_killed": staging_left,
            "writer_failures": failed,
            "listed": len(listed),
            "files_verified": files_checked,
            "index_equals_rebuild": archive.index_snapshot() == incremental,
            "entries_rewritten_by_rebuild": report.rewritten,
            "stale_staging_removed": len(report.stale),
            "bytes_per_run": sum(
                p.stat().st_size for p in (archive.runs_dir / "run-00000").iterdir()
            ),
            "add_wall_s": round(add_s, 2),
            "list_s": round(list_s, 3),
            "rebuild_s": round(rebuild_s, 3),
        }
        if args.json:
            print(json.dumps(result))
        else:
            for key, value in result.items():
                print(f"{key:>30}: {value}")
        if failed or len(listed) != args.runs or not result["index_equals_rebuild"]:
            raise SystemExit("bench_archive: FAILED")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
