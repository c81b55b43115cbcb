"""hpcbench explore: the verdict (pure), a local exploration on this machine recomputed from
its runs' own summary.json files, resuming, and one job array on the local Slurm cluster."""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from hpcbench.cpulist import format_cpulist
from hpcbench.errors import RunError, UsageError
from hpcbench.explore import LocalTarget, runs
from hpcbench.explore.verdict import RunRecord, format_exploration, judge
from hpcbench.plan.candidates import enumerate_candidates
from hpcbench.site import load_site
from hpcbench.spec import RunSpec, SpecChoices
from hpcbench.stats import t_quantile
from tests.topologies import flat_vm

APOLLO = enumerate_candidates(load_site("hpe-apollo6500-gen10").node_type(None).topology)


def _records(values: dict[str, list[float | None]]) -> list[RunRecord]:
    return [
        RunRecord(label, n + 1, f"/runs/{label}-{n}", v)
        for label, runs in values.items()
        for n, v in enumerate(runs)
    ]


# Hand-checked: e.g. the first row, 107.5 / 100 = 1.075; relative variances 0.25/(3·107.5²) and
# 1/(3·100²); Welch df 2.83, t 3.35: half-width 3.35 · 1.075 · 0.00637 = 2.3 %.
@pytest.mark.parametrize(
    ("values", "best", "verdict"),
    [
        (
            {"1x8": [100.0, 101.0, 99.0], "2x4": [107.0, 107.5, 108.0],
             "4x2": [103.0, 104.0, 102.0], "8x1": [90.0, 91.0, 89.0]},
            "2x4",
            "2 × 4 is 7.5 % ± 2.3 % faster than 1 × 8 (the baseline), and 4.4 % ± 2.1 % faster "
            "than the runner-up 4 × 2",
        ),
        (
            {"1x8": [100.0, 101.0, 99.0], "2x4": [107.0, 107.5, 108.0],
             "4x2": [106.0, 109.0, 107.0], "8x1": [90.0, 91.0, 89.0]},
            "2x4",
            "2 × 4 is 7.5 % ± 2.3 % faster than 1 × 8 (the baseline), but only 0.2 % ± 3.2 % "
            "faster than the runner-up 4 × 2, within noise",
        ),
        (
            {"1x8": [100.0, 110.0, 90.0], "2x4": [102.0, 103.0, 101.0],
             "4x2": [50.0, 51.0, 49.0], "8x1": [40.0, 41.0, 39.0]},
            "2x4",
            "2 × 4 is 2.0 % ± 25.0 % faster than 1 × 8 (the baseline), within noise",
        ),
        (
            {"1x8": [120.0, 121.0, 119.0], "2x4": [100.0, 101.0, 99.0],
             "4x2": [50.0, 51.0, 49.0], "8x1": [40.0, 41.0, 39.0]},
            "1x8",
            "1 × 8 (the baseline) is the fastest: 20.0 % ± 2.5 % faster than the runner-up 2 × 4, "
            "beyond noise",
        ),
        (
            {"1x8": [100.0, 102.0, 98.0], "2x4": [99.0, 100.0, 101.0],
             "4x2": [None, None, None], "8x1": [40.0, None, None]},
            "1x8",
            "1 × 8 (the baseline) is only 0.0 % ± 4.2 % faster than the runner-up 2 × 4, within "
            "noise: no layout beats the baseline beyond noise",
        ),
    ],
)  # fmt: skip
def test_verdict_sentences(values: dict[str, list[float | None]], best: str, verdict: str) -> None:
    exploration = judge(APOLLO, _records(values))
    assert exploration.best == best
    assert exploration.verdict == verdict


def test_failed_runs_leave_no_statistics() -> None:
    exploration = judge(
        APOLLO,
        _records({"1x8": [100.0, 101.0], "2x4": [None, 107.0], "4x2": [None, None], "8x1": []}),
    )
    two_by_four = exploration.result("2x4")
    assert two_by_four.mean_img_s == 107.0
    assert two_by_four.std_img_s is None and two_by_four.ci95_img_s is None
    assert two_by_four.speedup is None
    assert exploration.result("4x2").mean_img_s is None
    assert exploration.best == "2x4"
    assert "too few runs" in exploration.verdict


def test_table_shows_the_unit_and_names_runs_that_failed_validity_checks(tmp_path: Path) -> None:
    run_dir = tmp_path / "p000"
    run_dir.mkdir()
    checks = [{"name": "duration", "passed": False}, {"name": "clock", "passed": True}]
    summary = {
        "complete": True,
        "throughput": {"common_window_img_s": 5.0},
        "validity": {"valid": False, "rules": "default", "checks": checks},
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    assert runs.read_headline(run_dir) == (5.0, "", ("duration",))
    records = _records({"1x8": [100.0, 101.0], "2x4": [107.0, 108.0]})
    records[1] = replace(records[1], failed_checks=("duration",))
    text = format_exploration(judge(APOLLO, records), "seq/s")
    assert text.splitlines()[0].split()[2:4] == ["mean", "seq/s"]
    assert (
        "1x8 run 2: counted, but its validity checks failed: duration "
        "(see /runs/1x8-1/summary.json)"
    ) in text


def test_a_node_with_one_layout_says_so() -> None:
    one = enumerate_candidates(flat_vm(gpus=1, cores=4))
    exploration = judge(one, [RunRecord("1x1", n, f"/r{n}", 100.0 + n) for n in (1, 2, 3)])
    assert exploration.best == "1x1"
    assert exploration.verdict == (
        "1 × 1 is the only layout this node allows: nothing to compare it with"
    )
    assert exploration.result("1x1").speedup is not None


def _hpcbench(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run(
        [sys.executable, "-m", "hpcbench", *args],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=600,
    )  # fmt: skip


def _headlines(candidate: dict) -> np.ndarray:
    values = []
    for run in candidate["runs"]:
        summary = json.loads((Path(run["run_dir"]) / "summary.json").read_text())
        own = summary["throughput"]["common_window_img_s"]
        assert run["common_window_img_s"] == own
        values.append(own)
    return np.array(values)


def _recompute(explore: dict) -> None:
    """Every figure of explore.json from the runs' own summary.json files."""
    baseline = next(c for c in explore["candidates"] if c["label"] == explore["baseline"])
    b = _headlines(baseline)
    for candidate in explore["candidates"]:
        x = _headlines(candidate)
        n = len(x)
        m, s = x.mean(), x.std(ddof=1)
        half = t_quantile(0.975, n - 1) * s / math.sqrt(n)
        assert candidate["mean_img_s"] == pytest.approx(m, rel=1e-12)
        assert candidate["std_img_s"] == pytest.approx(s, rel=1e-9)
        assert candidate["ci95_img_s"] == pytest.approx([m - half, m + half], rel=1e-9)
        if candidate is baseline:
            assert candidate["speedup_vs_baseline"] == 1.0
            assert candidate["speedup_ci95"] == [1.0, 1.0]
            continue
        ratio = m / b.mean()
        va = s**2 / (n * m**2)
        vb = b.var(ddof=1) / (len(b) * b.mean() ** 2)
        df = (va + vb) ** 2 / (va**2 / (n - 1) + vb**2 / (len(b) - 1))
        width = t_quantile(0.975, df) * ratio * math.sqrt(va + vb)
        assert candidate["speedup_vs_baseline"] == pytest.approx(ratio, rel=1e-12)
        assert candidate["speedup_ci95"] == pytest.approx([ratio - width, ratio + width], rel=1e-9)
    best = max(explore["candidates"], key=lambda c: c["mean_img_s"])
    assert explore["best"] == best["label"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_local_exploration_is_interleaved_recomputable_and_resumable(tmp_path: Path) -> None:
    out = tmp_path / "explore"
    args = ["explore", "--backend", "cpu", "--duration-s", "1", "--repeats", "3", "--out", str(out)]
    done = _hpcbench(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    explore = json.loads((out / "explore.json").read_text())
    assert set(explore) == {"baseline", "best", "verdict", "command", "candidates"}
    candidates = explore["candidates"]
    assert len(candidates) >= 2
    labels = [c["label"] for c in candidates]
    assert explore["baseline"] == labels[0] and candidates[0]["ranks"] == 1
    for c in candidates:
        assert set(c) == {
            "label", "ranks", "gpus_per_rank", "cpus_per_rank", "layout", "runs", "mean_img_s",
            "std_img_s", "ci95_img_s", "speedup_vs_baseline", "speedup_ci95",
        }  # fmt: skip
        assert len(c["runs"]) == 3
    _recompute(explore)
    # Interleaved: the runs started in the order A B A B A B, each with its candidate's plan.
    runs = sorted(
        (json.loads((Path(r["run_dir"]) / "run.json").read_text())["created"], r["run_dir"], c)
        for c in candidates
        for r in c["runs"]
    )
    assert [c["label"] for _, _, c in runs] == labels * 3
    for _, run_dir, c in runs:
        plan = json.loads((Path(run_dir) / "plan.json").read_text())
        assert ";".join(format_cpulist(r["cpus"]) for r in plan["ranks"]) == c["layout"]
    assert explore["verdict"] in done.stdout
    assert f"run the winner: {explore['command']}" in done.stdout
    assert (out / "explore.png").stat().st_size > 0
    # The winner's command is hpcbench run with the winner's placement flags.
    winner = next(c for c in candidates if c["label"] == explore["best"])
    words = shlex.split(explore["command"])
    assert words[:2] == ["hpcbench", "run"]
    assert words[words.index("--ranks") + 1] == str(winner["ranks"])
    assert words[words.index("--backend") + 1] == "cpu"

    # Resume: everything is done, nothing runs again, the figures stay; --archive adds every run.
    archive = tmp_path / "archive"
    again = _hpcbench(*args, "--archive", str(archive), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "6 done earlier, 0 to run" in again.stderr
    assert "archived 6 runs in" in again.stderr
    assert json.loads((out / "explore.json").read_text())["candidates"] == candidates
    listed = _hpcbench("archive", "list", "-a", str(archive), "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 6
    # Another exploration into the same folder is refused in one line, and nothing is lost.
    other = _hpcbench(*args, "--batch-size", "32", cwd=tmp_path)
    assert other.returncode == 2
    errors = [line for line in other.stderr.splitlines() if not line.startswith("explore: ")]
    assert errors == [
        f"hpcbench: error: {out} holds another exploration (its explore-request.json differs: "
        "other candidates, settings or node type); choose another --out"
    ]
    assert json.loads((out / "explore.json").read_text())["candidates"] == candidates
    # More repeats: the earlier runs stay, one more run of each candidate follows them.
    more = _hpcbench(*args[:-4], "--repeats", "4", "--out", str(out), cwd=tmp_path)
    assert more.returncode == 0, more.stderr
    assert "6 done earlier, 2 to run" in more.stderr
    extended = json.loads((out / "explore.json").read_text())
    for old, new in zip(candidates, extended["candidates"]):
        assert new["runs"][:3] == old["runs"] and len(new["runs"]) == 4
    _recompute(extended)


def _fail(calls: list[Path]) -> object:
    def run_local(**kwargs: object) -> object:
        out = kwargs["out"]
        assert isinstance(out, Path)
        calls.append(out)
        raise RunError(f"rank 0 exited 2 ({out.name})")

    return run_local


def test_a_first_round_failing_everywhere_stops_the_exploration(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[Path] = []
    monkeypatch.setattr("hpcbench.runtime.local_run.run_local", _fail(calls))
    lines: list[str] = []
    todo = runs.points(APOLLO, 3, tmp_path)
    local = LocalTarget(load_site("hpe-apollo6500-gen10").node_type(None).topology)
    failures = runs.run_local_points(
        APOLLO, todo, spec=SpecChoices(), local=local, argv=[], use_numactl=None, echo=lines.append
    )
    assert [p.name for p in calls] == ["p000", "p001", "p002", "p003"]
    assert sorted(failures) == [0, 1, 2, 3]
    assert lines[-1] == "explore: every candidate failed its first run; stopping here"


def test_exploration_record_guards_a_folder(tmp_path: Path) -> None:
    assert runs.check_same_exploration(tmp_path, {"candidates": ["1x2"]}, node="n1") == "n1"
    assert runs.check_same_exploration(tmp_path, {"candidates": ["1x2"]}) == "n1"
    # Nothing finished yet: a corrected command may take the folder over.
    assert runs.check_same_exploration(tmp_path, {"candidates": ["2x1"]}) is None
    (tmp_path / "p000").mkdir()
    (tmp_path / "p000" / "summary.json").write_text("{}")
    with pytest.raises(UsageError, match="holds another exploration"):
        runs.check_same_exploration(tmp_path, {"candidates": ["1x2"]})
    runs.check_same_exploration(tmp_path, {"candidates": ["2x1"]}, node="n2")
    with pytest.raises(UsageError, match="the earlier runs used node n2, not n3"):
        runs.check_same_exploration(tmp_path, {"candidates": ["2x1"]}, node="n3")


def test_dry_run_lists_the_interleaved_order(tmp_path: Path) -> None:
    done = _hpcbench(
        "explore", "--site", "hpe-apollo6500-gen10", "--repeats", "2", "--dry-run",
        "--layouts=-8x1", "--out", str(tmp_path / "x"), cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "run order (6 runs): 1x8 2x4 4x2 1x8 2x4 4x2"
    assert "explore: candidate 4x2: one rank per PCIe switch; layout 0,1;2,3;4,5;6,7" in done.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--slurm"], "--slurm needs --site"),
        (["--nodelist", "node1"], "--nodelist is for --slurm runs"),
        (["--repeats", "1"], "Invalid value for '--repeats'"),
        (["--backend", "cpu", "--model", "nosuch"], "the cpu backend runs mlp, not 'nosuch'"),
    ],
)
def test_bad_explore_flags_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    done = _hpcbench("explore", "--out", str(tmp_path / "x"), *args, cwd=tmp_path)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if not line.startswith("explore: ")]
    assert len(errors) == 1 and message in errors[0], done.stderr
    assert not (tmp_path / "x").exists()  # checked before the folder is claimed


def _fake_slurm(bin_dir: Path, sinfo_nodes: str) -> Path:
    """``sinfo`` that logs its arguments and lists ``sinfo_nodes``; ``sbatch`` that refuses."""
    bin_dir.mkdir()
    log = bin_dir / "sinfo.args"
    (bin_dir / "sinfo").write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {log}\n'
        'if [ "$1" = "--version" ]; then echo "slurm 22.05.8"; exit 0; fi\n'
        f"printf '{sinfo_nodes}'\n"
    )
    (bin_dir / "sbatch").write_text("#!/bin/sh\necho 'sbatch: error: test refuses' >&2\nexit 1\n")
    for tool in ("sinfo", "sbatch"):
        (bin_dir / tool).chmod(0o755)
    return log


def test_slurm_node_is_picked_in_the_sites_slurm_partition(tmp_path: Path) -> None:
    log = _fake_slurm(tmp_path / "bin", "gpu01 drain\\ngpu02 mix\\ngpu03 idle\\n")
    env_path = f"{tmp_path / 'bin'}:{os.environ['PATH']}"
    out = tmp_path / "x"
    (tmp_path / "spec.json").write_text(json.dumps(RunSpec(backend="cpu", model="mlp").to_json()))
    done = subprocess.run(
        [sys.executable, "-m", "hpcbench", "explore", "--slurm", "--site", "hpe-apollo6500-gen10",
         "--spec", "spec.json", "--num-batches", "3", "--out", str(out)],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env={**os.environ, "PATH": env_path,
             "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )  # fmt: skip
    # The node type is 'gpu' in the site config; its Slurm partition is 'gpu' too, named by the
    # site's slurm block: sinfo is asked about that partition, and the idle node wins.
    assert "-h -N -o %N %t -p gpu" in log.read_text()
    assert "explore: every run on node gpu03, one at a time" in done.stderr
    assert done.returncode == 1 and "sbatch refused" in done.stderr
    # The --spec file's spec is recorded (as JSON); flags not given are left out.
    record = json.loads((out / "sweep.json").read_text())
    assert record["base"] == {"num_batches": 3}
    assert record["base_spec"] == RunSpec(backend="cpu", model="mlp").to_json()
    script = next(out.glob("array-*.sbatch")).read_text()
    assert (
        "#SBATCH --nodelist=gpu03" in script
        and "#SBATCH --array=0,1,2,3,4,5,6,7,8,9,10,11%1" in script
    )


@pytest.mark.slurm
@pytest.mark.timeout(300)
def test_slurm_exploration_is_one_job_array_on_one_node(slurm_site: Path, tmp_path: Path) -> None:
    out = tmp_path / "explore"
    args = [
        "explore", "--slurm", "--site", str(slurm_site), "--backend", "cpu", "--num-batches", "3",
        "--warmup-batches", "1", "--repeats", "2", "--poll-s", "0.5", "--wait-timeout-s", "240",
        "--out", str(out),
    ]  # fmt: skip
    done = _hpcbench(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    explore = json.loads((out / "explore.json").read_text())
    assert [c["label"] for c in explore["candidates"]] == ["1x4", "2x2"]
    _recompute(explore)
    run_dirs = sorted(Path(r["run_dir"]) for c in explore["candidates"] for r in c["runs"])
    records = [json.loads((d / "slurm.json").read_text()) for d in run_dirs]
    assert len({r["job_id"] for r in records}) == 1, records  # one job array
    assert [r["array_task_id"] for r in records] == [0, 1, 2, 3]  # interleaved: A B A B
    hosts = {json.loads((d / "run.json").read_text())["host"] for d in run_dirs}
    node = json.loads((out / "explore-request.json").read_text())["node"]
    arrays = list(out.glob("array-*.sbatch"))
    assert len(arrays) == 1
    script = arrays[0].read_text()
    assert f"#SBATCH --nodelist={node}" in script and "#SBATCH --array=0,1,2,3%1" in script
    assert len(hosts) == 1, hosts
    assert explore["command"].startswith(f"hpcbench render --site {slurm_site} --ranks ")
    assert explore["command"].endswith("-o job.sbatch")
    # Resume: nothing is submitted again.
    again = _hpcbench(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "submitted" not in again.stderr and "4 done earlier, 0 to run" in again.stderr
