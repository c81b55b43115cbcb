"""``hpcbench check``: reference figures, pass / regression (exit 1) / bad file (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpcbench.aggregate.validity import CHECKS
from hpcbench.archive import add_run
from hpcbench.archive.references import Expected, load_references
from tests.archive_runs import make_run
from tests.test_archive import cli

REFERENCES = """\
version: 1
defaults: {tolerance_pct: 5}
references:
  - name: r50 2x2 GPUs
    match: {site: testsite, partition: gpu, model: resnet50, layout: "0,1;2,3", batch_size: 128}
    figures:
      throughput.common_window_img_s: 10000
      latency_ms.p99: {value: 52, tolerance_pct: 10}
  - match: {model: vit_b_16}
    figures:
      throughput.common_window_img_s: {value: 1000, direction: higher}
"""


@pytest.fixture
def references(tmp_path: Path) -> Path:
    path = tmp_path / "references.yaml"
    path.write_text(REFERENCES)
    return path


def test_reference_file_loads(references: Path) -> None:
    first, second = load_references(references)
    assert first.name == "r50 2x2 GPUs"
    assert first.figures == (
        Expected("throughput.common_window_img_s", 10000.0, 5.0, "higher"),
        Expected("latency_ms.p99", 52.0, 10.0, "lower"),
    )
    assert second.name == "model=vit_b_16"


def test_passing_run(tmp_path: Path, references: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path, "good", iteration_ms=50.0)  # 10 240 img/s, p99 50 ms
    code, out, err = cli(capsys, "check", str(run), "--references", str(references))
    assert code == 0, out + err
    assert out.count("pass ") == 2 and "+2.4%" in out
    assert "2 of 2 figures passed" in out


def test_regression_exits_1(
    tmp_path: Path, references: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 60 ms iterations: 8 533 img/s (limit 9 500) and p99 60 ms (limit 57.2 ms).
    run = make_run(tmp_path, "slow", iteration_ms=60.0)
    code, out, err = cli(capsys, "check", str(run), "--references", str(references), "--json")
    assert code == 1
    outcomes = {o["figure"]: o for o in json.loads(out)}
    assert outcomes["throughput.common_window_img_s"]["status"] == "FAIL"
    assert outcomes["throughput.common_window_img_s"]["limit"] == pytest.approx(9500.0)
    assert outcomes["latency_ms.p99"]["status"] == "FAIL"
    assert "FAILED: 0 of 2" in err


def test_archive_check_incomplete_and_where(
    tmp_path: Path, references: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "archive"
    add_run(archive, make_run(tmp_path, "good", iteration_ms=50.0))
    add_run(archive, make_run(tmp_path, "vit", model="vit_b_16", iteration_ms=100.0))
    code, out, _ = cli(capsys, "check", str(archive), "-r", str(references))
    assert code == 0 and "3 of 3 figures passed over 2 runs" in out
    # A partial run never passes an acceptance test, whatever its numbers.
    add_run(archive, make_run(tmp_path, "partial", complete=False))
    code, out, _ = cli(capsys, "check", str(archive), "-r", str(references))
    assert code == 1 and "incomplete" in out
    code, out, _ = cli(
        capsys, "check", str(archive), "-r", str(references), "--where", "complete=true"
    )
    assert code == 0


def test_nothing_matched_fails(
    tmp_path: Path, references: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = make_run(tmp_path, "other", model="alexnet")
    code, _, err = cli(capsys, "check", str(run), "-r", str(references))
    assert code == 1 and "no reference" in err
    # Each reference's match, and beside it what the run has for those keys.
    assert "reference 'r50 2x2 GPUs' match: site=testsite partition=gpu model=resnet50" in err
    assert "site=testsite partition=gpu model=alexnet (not resnet50)" in err
    assert "model=alexnet (not vit_b_16)" in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            REFERENCES.replace("partition: gpu", "partiton: gpu"),
            "references[0].match.partiton: unknown key 'partiton' (did you mean 'partition'?)",
        ),
        (
            REFERENCES.replace("tolerance_pct: 10", "tolerence_pct: 10"),
            "unknown key 'tolerence_pct' (did you mean 'tolerance_pct'?)",
        ),
        (
            REFERENCES.replace("latency_ms.p99", "latency_ms.p999"),
            "unknown figure 'latency_ms.p999' (did you mean 'latency_ms.p99'?)",
        ),
        (REFERENCES.replace("defaults", "default"), "unknown key 'default'"),
        (REFERENCES.replace("tolerance_pct: 5", "tolerance_pct: -5"), "less than the minimum"),
        ("references: [\n", "malformed YAML at line"),
        (REFERENCES.replace("10000", ".nan"), "must be a finite number, got nan"),
        ("version: 1\n", "(top level): 'references' is missing"),
        (REFERENCES.replace("10000", "lots"), "give a number or {value, tolerance_pct, direction}"),
    ],
)
def test_bad_reference_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    run = make_run(tmp_path, "good")
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    code, _, err = cli(capsys, "check", str(run), "-r", str(path))
    assert code == 2
    assert message in err and str(path) in err
    assert err.count("\n") == 1


def test_target_must_be_run_or_archive(
    tmp_path: Path, references: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(capsys, "check", str(tmp_path), "-r", str(references))
    assert code == 2 and "neither a run directory" in err


def host_site(tmp_path: Path, name: str = "mycluster") -> Path:
    """A site config describing this host (one NUMA node, its CPUs), in a file not named NAME."""
    import os

    cpus = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
    path = tmp_path / "site-v2.yaml"
    path.write_text(
        f"name: {name}\nnode_types:\n  cpu:\n    topology:\n      numa_nodes:\n"
        f'        - {{id: 0, package: 0, cpus: "{cpus}"}}\n'
    )
    return path


def test_local_run_with_site_is_checked_by_the_sites_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One identity for a site, its name: in the run directory and in the archive alike."""
    import subprocess
    import sys

    run, archive = tmp_path / "run", tmp_path / "archive"
    done = subprocess.run(
        [sys.executable, "-m", "hpcbench", "run", "--site", str(host_site(tmp_path)),
         "--ranks", "1", "--backend", "cpu", "--num-batches", "3", "--batch-size", "8",
         "--out", str(run)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["run"]["site"] == "mycluster" and summary["run"]["partition"] == "cpu"
    references = tmp_path / "refs.yaml"
    references.write_text(
        "version: 1\nreferences:\n  - match: {site: mycluster, partition: cpu}\n"
        "    figures: {throughput.common_window_img_s: 0.001}\n"
        # A 3-batch smoke run: too little work to be valid, which this test is not about.
        "    accept_invalid: true\n"
    )
    add_run(archive, run)
    for target in (run, archive):
        # Matched (one outcome for the run); whether a 3-batch run passes is not the point here.
        _, out, err = cli(capsys, "check", str(target), "-r", str(references), "--json")
        assert "no reference" not in err
        assert [o["figure"] for o in json.loads(out)] == ["throughput.common_window_img_s"]


def test_an_invalid_run_fails_unless_the_reference_accepts_it(
    tmp_path: Path, references: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 20 iterations: 20 timed batches per GPU, fewer than the 50 of enough_work.
    run = make_run(tmp_path, "short", iteration_ms=50.0, iterations=20)
    code, out, err = cli(capsys, "check", str(run), "--references", str(references))
    assert code == 1
    assert out.count("invalid ") == 2
    assert f"short: validity (default rules): INVALID, 1 of {len(CHECKS)} checks failed" in out
    assert "short: enough_work: 20 timed batches on the least-used device < 50" in out
    accepting = tmp_path / "accepting.yaml"
    second = "  - match: {model: vit_b_16}"
    accepting.write_text(REFERENCES.replace(second, "    accept_invalid: true\n" + second))
    code, out, err = cli(capsys, "check", str(run), "--references", str(accepting))
    assert code == 0, out + err


def test_a_reference_on_images_per_joule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = make_run(tmp_path, "cpu-like", iteration_ms=50.0)
    path = tmp_path / "energy.yaml"
    path.write_text(
        "version: 1\nreferences:\n  - match: {model: resnet50}\n"
        "    figures: {telemetry.total.images_per_j: 10}\n"
    )
    code, out, _ = cli(capsys, "check", str(run), "--references", str(path))
    # The synthetic ranks have no telemetry: the figure is missing, not invented.
    assert code == 1 and "missing" in out and "telemetry.total.images_per_j" in out
