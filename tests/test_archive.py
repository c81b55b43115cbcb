"""The archive: atomic adds, concurrency, index rebuild, queries, export and compare."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hpcbench.archive import Archive, add_run, add_runs
from hpcbench.archive.compare import compare_runs
from hpcbench.cli import main
from hpcbench.errors import ArchiveError
from tests.archive_runs import expected_img_s, make_run

REPO = Path(__file__).resolve().parent.parent


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``hpcbench ARGV`` in-process; return (exit code, stdout, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (code if isinstance(code, int) else 1), out, err


@pytest.fixture
def archive_dir(tmp_path: Path) -> Path:
    return tmp_path / "archive"


def test_add_stores_run_files_and_is_idempotent(tmp_path: Path, archive_dir: Path) -> None:
    run = make_run(tmp_path / "runs", "run-a")
    (run / "submitit.pkl").write_bytes(b"not for us")
    os.symlink("/etc/hostname", run / "link.json")
    assert add_run(archive_dir, run) == "run-a"
    folder = archive_dir / "runs" / "run-a"
    names = sorted(p.name for p in folder.iterdir())
    assert names == [
        "job.sbatch",
        "plan.json",
        "record.json",
        "result.h5",
        "run.json",
        "site.yaml",
        "spec.json",
        "summary.json",
    ]
    record = json.loads((folder / "record.json").read_text())
    assert record["complete"] is True
    assert record["files"]["summary.json"]["bytes"] == (run / "summary.json").stat().st_size

    first = Archive(archive_dir).index_snapshot()
    result = Archive(archive_dir).add(run)
    assert (result.added, result.run_id) == (False, "run-a")
    assert Archive(archive_dir).index_snapshot() == first
    assert list((archive_dir / "staging").iterdir()) == []


def test_same_id_with_other_contents_is_refused(tmp_path: Path, archive_dir: Path) -> None:
    add_run(archive_dir, make_run(tmp_path / "one", "run-a", batch=128))
    other = make_run(tmp_path / "two", "run-a", batch=64)
    with pytest.raises(ArchiveError, match=r"already archived .* with different files"):
        add_run(archive_dir, other)
    assert (
        json.loads((archive_dir / "runs/run-a/summary.json").read_text())["run"]["batch_size"]
        == 128
    )


def test_a_re_aggregated_run_replaces_its_archived_copy_when_asked(
    tmp_path: Path, archive_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """aggregate --dlbs-trim rewrites summary.json; the refusal names the way forward."""
    run = make_run(tmp_path / "runs", "run-a", iterations=60)
    add_run(archive_dir, run)
    code, _, err = cli(capsys, "aggregate", str(run), "--dlbs-trim", "10")
    assert code == 0, err
    code, _, err = cli(capsys, "archive", "add", str(run), "--to", str(archive_dir))
    assert code == 2 and "already archived" in err and "archive add --replace" in err
    code, out, err = cli(capsys, "archive", "add", "--replace", str(run), "--to", str(archive_dir))
    assert code == 0 and "added: run-a" in out, err
    archived = json.loads((archive_dir / "runs/run-a/summary.json").read_text())
    assert archived == json.loads((run / "summary.json").read_text())
    assert [e["run_id"] for e in Archive(archive_dir).entries()] == ["run-a"]
    assert list((archive_dir / "staging").iterdir()) == []
    # Adding the same version again, --replace or not, changes nothing.
    assert Archive(archive_dir).add(run, replace=True).added is False


def test_incomplete_run_stays_marked(
    tmp_path: Path, archive_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = make_run(tmp_path, "run-partial", complete=False)
    code, out, _ = cli(capsys, "archive", "add", str(run), "--to", str(archive_dir))
    assert code == 0 and "INCOMPLETE" in out
    (entry,) = Archive(archive_dir).entries()
    assert entry["complete"] is False
    code, out, _ = cli(capsys, "archive", "list", "-a", str(archive_dir))
    assert "run-partial" in out and " NO " in out


def test_bad_run_directories(
    tmp_path: Path, archive_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    unaggregated = tmp_path / "raw"
    unaggregated.mkdir()
    code, _, err = cli(capsys, "archive", "add", str(unaggregated), "--to", str(archive_dir))
    assert code == 2 and "aggregate the run first" in err
    hostile = make_run(tmp_path, "run-h")
    (hostile / "run.json").write_text(json.dumps({"run_id": "../../escape"}))
    code, _, err = cli(capsys, "archive", "add", str(hostile), "--to", str(archive_dir))
    assert code == 2 and "not a safe name" in err
    assert not (tmp_path / "escape").exists()
    with pytest.raises(ArchiveError, match="2 run"):
        add_runs(archive_dir, [unaggregated, hostile])


def test_run_id_with_a_trailing_line_break_is_refused(
    tmp_path: Path, archive_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # re.match(r"...$") matches before a final newline: the check is a full match.
    run = make_run(tmp_path, "nl-run")
    (run / "run.json").write_text(json.dumps({"run_id": "nl-run\n"}))
    code, _, err = cli(capsys, "archive", "add", str(run), "--to", str(archive_dir))
    assert code == 2 and "not a safe name" in err.splitlines()[0]
    assert not (archive_dir / "runs").exists() or list((archive_dir / "runs").iterdir()) == []
    (run / "run.json").write_text(json.dumps({"run_id": "r" * 10_000}))
    code, _, err = cli(capsys, "archive", "add", str(run), "--to", str(archive_dir))
    assert code == 2 and "not a safe name" in err and len(err.splitlines()[0]) < 400


def test_only_files_inside_the_run_directory_are_archived(
    tmp_path: Path, archive_dir: Path
) -> None:
    # A private config elsewhere, named by run.json: the archive must not follow the path
    # (it would copy the archiver's secret with the archive's mode).
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    secret = private / "secrets.yaml"
    secret.write_text("name: s\nnode_types: {}\npassword: hunter2\n")
    secret.chmod(0o600)
    run = make_run(tmp_path / "runs", "run-a")
    info = json.loads((run / "run.json").read_text())
    info["site"] = str(secret)
    (run / "run.json").write_text(json.dumps(info))
    add_run(archive_dir, run)
    folder = archive_dir / "runs" / "run-a"
    assert not (folder / "site-config.yaml").exists()
    assert not any("hunter2" in p.read_text(errors="replace") for p in folder.iterdir())


def test_not_an_archive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "stuff.txt").write_text("x")
    code, _, err = cli(capsys, "archive", "list", "-a", str(tmp_path))
    assert code == 2 and "not an hpcbench archive" in err
    code, _, err = cli(capsys, "archive", "add", str(tmp_path), "--to", str(tmp_path))
    assert code == 2


def _add_processes(archive_dir: Path, run_dirs: list[Path]) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return [
        subprocess.Popen(
            [sys.executable, "-m", "hpcbench", "archive", "add", str(r), "--to", str(archive_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        for r in run_dirs
    ]


def test_sixteen_concurrent_adds_lose_nothing(
    tmp_path: Path, archive_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = [make_run(tmp_path / "runs", f"run-{i:02d}", iterations=4) for i in range(16)]
    # The same run added by 4 more writers at once: exactly one copy must result.
    processes = _add_processes(archive_dir, runs + [runs[0]] * 4)
    for process in processes:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err.decode()
    code, out, _ = cli(capsys, "archive", "list", "-a", str(archive_dir), "--json")
    assert code == 0
    listed = json.loads(out)
    assert sorted(e["run_id"] for e in listed) == [f"run-{i:02d}" for i in range(16)]
    assert all(e["complete"] for e in listed)
    assert list((archive_dir / "staging").iterdir()) == []
    incremental = Archive(archive_dir).index_snapshot()
    assert len(incremental) == 16
    # A rebuild from the runs alone, in a fresh index, gives the same bytes.
    for path in (archive_dir / "index").iterdir():
        path.unlink()
    code, out, _ = cli(capsys, "archive", "rebuild-index", "-a", str(archive_dir))
    assert code == 0 and "16 runs, 16 entries" in out
    assert Archive(archive_dir).index_snapshot() == incremental


def test_index_heals_and_rebuild_drops_orphans(tmp_path: Path, archive_dir: Path) -> None:
    for name in ("run-a", "run-b"):
        add_run(archive_dir, make_run(tmp_path, name))
    archive = Archive(archive_dir)
    incremental = archive.index_snapshot()
    # A writer killed between publishing the run and writing its entry: listing still shows it.
    (archive_dir / "index" / "run-b.json").unlink()
    assert [e["run_id"] for e in archive.entries()] == ["run-a", "run-b"]
    assert archive.index_snapshot() == incremental
    # A run folder removed by hand leaves an orphan entry that the rebuild drops.
    import shutil

    shutil.rmtree(archive_dir / "runs" / "run-a")
    (archive_dir / "staging" / "run-x.host.1.dead").mkdir()
    os.utime(archive_dir / "staging" / "run-x.host.1.dead", (0, 0))
    report = archive.rebuild_index()
    assert report.orphans == ("run-a.json",)
    assert report.stale == ("run-x.host.1.dead",)
    assert list(archive.index_snapshot()) == ["run-b.json"]


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two models, two batches, three repeats of one configuration (read-only for tests)."""
    tmp_path = tmp_path_factory.mktemp("populated")
    archive_dir = tmp_path / "archive"
    runs = [
        make_run(tmp_path, "r50-b128-1", iteration_ms=50.0),
        make_run(tmp_path, "r50-b128-2", iteration_ms=51.0),
        make_run(tmp_path, "r50-b128-3", iteration_ms=49.0),
        make_run(tmp_path, "r50-b256", batch=256, iteration_ms=90.0),
        make_run(tmp_path, "vit-b128", model="vit_b_16", iteration_ms=80.0),
    ]
    add_runs(archive_dir, runs)
    return archive_dir


def _ids(out: str) -> list[str]:
    return [e["run_id"] for e in json.loads(out)]


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        (["run.model=resnet50"], ["r50-b128-1", "r50-b128-2", "r50-b128-3", "r50-b256"]),
        (["model=vit_b_16"], ["vit-b128"]),
        (["run.model=resnet50", "batch_size=256"], ["r50-b256"]),
        (["throughput.common_window_img_s>10240"], ["r50-b128-3", "r50-b256"]),
        (
            ["throughput.common_window_img_s<=10240", "model!=vit_b_16"],
            ["r50-b128-1", "r50-b128-2"],
        ),
        (["run_id~-[23]$"], ["r50-b128-2", "r50-b128-3"]),
        (["spec.batch_size=256"], ["r50-b256"]),
        (["run.hosts=node001", "partition=gpu", "site=testsite"], None),
        (["complete=false"], []),
    ],
)
def test_list_where(
    populated: Path, capsys: pytest.CaptureFixture[str], where: list[str], expected: Any
) -> None:
    args = [arg for w in where for arg in ("--where", w)]
    code, out, err = cli(capsys, "archive", "list", "-a", str(populated), "--json", *args)
    assert code == 0, err
    everything = ["r50-b128-1", "r50-b128-2", "r50-b128-3", "r50-b256", "vit-b128"]
    assert _ids(out) == (everything if expected is None else expected)


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("run.modle=resnet50", "did you mean 'run.model'"),
        ("throughput.common_window_img_s>fast", "needs a number"),
        ("no operator", "expected KEY=VALUE"),
    ],
)
def test_list_where_errors(
    populated: Path, capsys: pytest.CaptureFixture[str], where: str, message: str
) -> None:
    code, _, err = cli(capsys, "archive", "list", "-a", str(populated), "--where", where)
    assert code == 2 and message in err
    assert err.count("\n") == 1  # one line, no traceback


def test_list_sort_and_text(populated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(
        capsys,
        "archive",
        "list",
        "-a",
        str(populated),
        "--json",
        "--sort",
        "-throughput.common_window_img_s",
    )
    assert _ids(out) == ["r50-b256", "r50-b128-3", "r50-b128-1", "r50-b128-2", "vit-b128"]
    code, out, _ = cli(capsys, "archive", "list", "-a", str(populated), "--sort", "batch_size")
    assert code == 0 and out.strip().endswith("5 runs")
    assert "10 240.0" in out  # the one format of every figure (hpcbench.text.format_figure)
    code, out, _ = cli(capsys, "archive", "show", "-a", str(populated), "r50-b25")
    assert code == 0 and "run r50-b256" in out and "result.h5" in out
    code, _, err = cli(capsys, "archive", "show", "-a", str(populated), "r50-b128")
    assert code == 2 and "ambiguous" in err


def test_export_has_varied_parameters_and_figures(
    populated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli(capsys, "archive", "export", "-a", str(populated), "--csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 5
    columns = list(rows[0])
    # Varied: model and batch size (params and spec). Constant: layout, site, precision.
    assert {"model", "batch_size", "spec.model", "spec.batch_size"} <= set(columns)
    assert not {"layout", "site", "precision", "world_size"} & set(columns)
    by_id = {r["run_id"]: r for r in rows}
    layout = ((0, 1), (2, 3))
    assert float(by_id["r50-b256"]["throughput.common_window_img_s"]) == pytest.approx(
        expected_img_s(layout, 256, 90.0)
    )
    assert by_id["r50-b128-1"]["throughput.dlbs_adjusted_img_s"] == ""  # undefined: K <= 2N
    code, out, _ = cli(
        capsys,
        "archive",
        "export",
        "-a",
        str(populated),
        "--json",
        "--where",
        "model=vit_b_16",
        "--all-params",
    )
    (row,) = json.loads(out)
    assert row["layout"] == "0,1;2,3" and row["model"] == "vit_b_16"
    code, _, err = cli(capsys, "archive", "export", "-a", str(populated))
    assert code == 2 and "--csv or --json" in err


def test_compare_judges_against_repeat_spread(
    populated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = Archive(populated)
    entries = archive.entries()
    a, b = archive.entry("r50-b128-1"), archive.entry("r50-b128-2")
    rows = {r.key: r for r in compare_runs(entries, a, b)}
    headline = rows["throughput.common_window_img_s"]
    assert headline.ratio == pytest.approx(50.0 / 51.0)
    assert headline.spread_a is not None and headline.spread_a.n == 3
    assert headline.verdict == "within noise"
    # The bigger batch is a change well beyond the 2 % spread of the b128 repeats.
    rows = {r.key: r for r in compare_runs(entries, a, archive.entry("r50-b256"))}
    assert rows["throughput.common_window_img_s"].verdict == "better"
    assert rows["latency_ms.p50"].verdict == "worse"  # 90 ms against 50 ms
    # Two single runs of other configurations: no repeats, no verdict either way.
    rows = {
        r.key: r
        for r in compare_runs(entries, archive.entry("r50-b256"), archive.entry("vit-b128"))
    }
    assert rows["throughput.common_window_img_s"].verdict == "no repeats"
    code, out, _ = cli(capsys, "archive", "compare", "-a", str(populated), "r50-b128-1", "r50-b256")
    assert code == 0
    assert "differs in: batch_size: 128 -> 256" in out and "n=3 ±2.0%" in out
    code, out, _ = cli(
        capsys, "archive", "compare", "-a", str(populated), "r50-b128-1", "r50-b256", "--json"
    )
    data = json.loads(out)
    assert data["figures"][0]["ratio"] == pytest.approx(256 * 50.0 / (128 * 90.0))


def test_submitted_run_site_config_and_failed_job(
    tmp_path: Path, archive_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = tmp_path / "configs" / "bigcluster.yaml"
    site.parent.mkdir()
    site.write_text("name: big-cluster\nnode_types:\n  a100x8: {topology: {}}\n")
    run = make_run(tmp_path / "runs", "job-ok")
    (run / "site.yaml").unlink()
    # What 'hpcbench submit' leaves: run.json names the site config and node type, the config
    # itself is copied into the run directory when it is created; slurm.json.
    info = json.loads((run / "run.json").read_text())
    info.update(site=str(site), node_type="a100x8")
    (run / "run.json").write_text(json.dumps(info))
    (run / "site-config.yaml").write_bytes(site.read_bytes())
    (run / "slurm.json").write_text(json.dumps({"job_id": "77", "state": "COMPLETED"}))
    add_run(archive_dir, run)
    entry = Archive(archive_dir).entry("job-ok")
    assert (entry["params"]["site"], entry["params"]["partition"]) == ("big-cluster", "a100x8")
    assert (archive_dir / "runs/job-ok/site-config.yaml").read_text() == site.read_text()
    assert entry["complete"] is True

    # Every rank file finished, but Slurm killed the job at its time limit: not complete.
    late = make_run(tmp_path / "runs", "job-timeout")
    (late / "slurm.json").write_text(json.dumps({"job_id": "78", "state": "TIMEOUT"}))
    add_run(archive_dir, late)
    entry = Archive(archive_dir).entry("job-timeout")
    assert entry["summary"]["complete"] is True
    assert (entry["complete"], entry["incomplete_reason"]) == (False, "Slurm job ended TIMEOUT")
    code, out, _ = cli(
        capsys, "archive", "list", "-a", str(archive_dir), "--json", "-w", "complete=false"
    )
    assert code == 0
    assert _ids(out) == ["job-timeout"]


def test_failed_copy_leaves_no_half_run(
    tmp_path: Path, archive_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hpcbench.archive.store as store

    real_copy = store._copy_file
    calls = {"n": 0}

    def failing_copy(src: Path, dst: Path, mode: int) -> tuple[int, str]:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device", str(dst))
        return real_copy(src, dst, mode)

    monkeypatch.setattr(store, "_copy_file", failing_copy)
    with pytest.raises(ArchiveError, match="No space left on device"):
        add_run(archive_dir, make_run(tmp_path, "run-a"))
    assert Archive(archive_dir).entries() == []
    assert list((archive_dir / "staging").iterdir()) == []
    monkeypatch.setattr(store, "_copy_file", real_copy)
    assert add_run(archive_dir, tmp_path / "run-a") == "run-a"


def test_unreadable_run_file_is_refused_before_publishing(
    tmp_path: Path, archive_dir: Path
) -> None:
    run = make_run(tmp_path, "run-a")
    (run / "spec.json").write_text("{not json")
    with pytest.raises(ArchiveError, match=r"spec\.json: spec is not valid JSON"):
        add_run(archive_dir, run)
    assert Archive(archive_dir).run_ids() == []
    assert list((archive_dir / "staging").iterdir()) == []
