"""Aggregation figures on rank files whose answers are known by construction."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcbench.aggregate import aggregate_run, figures, format_summary, read_summary, summarize_run
from hpcbench.aggregate.load import read_result_ranks
from hpcbench.cli import main
from hpcbench.errors import MetricsError, UsageError
from tests.rankfiles import (
    NS_PER_MS,
    T0_NS,
    Batches,
    iteration_batches,
    worked_example,
    write_rank,
)

NS_PER_S = 1_000_000_000


# ---------------------------------------------------------------------------- DLBS example
def test_worked_example_matches_design(tmp_path: Path) -> None:
    worked_example(tmp_path)
    summary = aggregate_run(tmp_path)
    own = [row["own_img_s"] for row in summary["ranks"]]
    assert [round(v, 1) for v in own] == [10291.5, 9102.2]
    assert round(summary["throughput"]["dlbs_adjusted_img_s"], 1) == 19883.5
    assert summary["throughput"]["dlbs_adjusted_reason"] is None
    assert summary["throughput"]["dlbs_mean_iteration_ms"] == pytest.approx(51.5)
    assert summary["throughput"]["sum_own_img_s"] == pytest.approx(sum(own))
    # Common window = [T0, T0 + 9.95 s] (rank 0 ends first): all of rank 0's 102 400 images,
    # plus rank 1's batches that ended by then: 50 × 52 + 100 × 54 = 8000 ms, then
    # (9950 − 8000) / 65 = 30 iterations of 65 ms end exactly at the window's end: 180 in all.
    rank1_images = 180 * 4 * 128
    expected = (102400 + rank1_images) / 9.95
    assert summary["throughput"]["common_window_img_s"] == pytest.approx(expected, rel=1e-9)
    assert summary["window"]["length_s"] == pytest.approx(9.95)
    # Effective: images / (start arrive → end release): 1 ms before T0 until 1 ms after 11.25 s.
    assert summary["ranks"][0]["dlbs_effective_img_s"] == pytest.approx(102400 / 11.252)
    assert round(summary["throughput"]["dlbs_effective_sum_img_s"], 1) == 18201.2
    assert summary["throughput"]["dlbs_reported_img_s"] == pytest.approx(
        max(summary["throughput"]["dlbs_adjusted_img_s"], 2 * 102400 / 11.252)
    )
    assert summary["complete"] is True


def test_contract_keys_and_files(tmp_path: Path) -> None:
    worked_example(tmp_path)
    returned = aggregate_run(tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary == json.loads(json.dumps(returned))
    for key in (
        "common_window_img_s",
        "sum_own_img_s",
        "dlbs_adjusted_img_s",
        "dlbs_adjusted_reason",
        "dlbs_effective_sum_img_s",
    ):
        assert key in summary["throughput"]
    assert {"start_ns", "end_ns"} <= set(summary["window"])
    assert "start_s" in summary["skew"]
    assert set(summary["latency_ms"]) == {"p50", "p90", "p99", "max"}
    assert isinstance(summary["complete"], bool)
    row = summary["ranks"][1]
    for key in ("rank", "gpus", "images", "own_img_s", "t_begin_ns", "t_finish_ns"):
        assert key in row
    assert row["gpus"] == [4, 5, 6, 7]
    assert row["gpus_visible"] == "4,5,6,7"
    assert row["cpus"] == row["cpus_actual"] == [4, 5, 6, 7]
    run = summary["run"]
    assert run["layout"] == "0,1,2,3;4,5,6,7"
    assert run["cpu_layout"] == "0-3;4-7"
    assert (run["model"], run["batch_size"], run["world_size"], run["nodes"]) == (
        "resnet50",
        128,
        2,
        1,
    )
    assert run["hosts"] == ["node001"]
    # result.h5 holds both ranks whole plus the aggregate table.
    ranks = read_result_ranks(tmp_path / "result.h5")
    assert [r.rank for r in ranks] == [0, 1]
    assert len(ranks[1].timed) == 800
    with h5py.File(tmp_path / "result.h5", "r") as f:
        assert f["aggregate/own_img_s"][()].round(1).tolist() == [10291.5, 9102.2]
        assert json.loads(f.attrs["summary_json"])["throughput"] == summary["throughput"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_format_summary_mentions_the_figures(tmp_path: Path) -> None:
    worked_example(tmp_path)
    text = format_summary(aggregate_run(tmp_path))
    assert "19 883.5" in text
    assert "10 291.5" in text and "9 102.2" in text


def test_format_summary_speaks_the_models_unit_and_counts_in_words(tmp_path: Path) -> None:
    """One format for every figure, the unit of the model's samples, "1 rank" not "1 ranks"."""
    worked_example(tmp_path)
    summary = aggregate_run(tmp_path)
    text = format_summary(summary)
    assert "2 ranks on 1 node," in text and "(s)" not in text
    assert "19 883.5 img/s" in text and "seq/s" not in text and "images/s" not in text
    bert_dir = tmp_path / "bert"
    bert_dir.mkdir()
    write_rank(
        bert_dir, 0, 1, iteration_batches(T0_NS, [50.0] * 200, num_devices=1, batch_size=32),
        attrs={"model": "bert_base"},
    )  # fmt: skip
    bert = aggregate_run(bert_dir)
    text = format_summary(bert)
    steady = next(c for c in bert["validity"]["checks"] if c["name"] == "steady_state")
    assert steady["why"].startswith("seq/s per third of the window 640.0 / 640.0 / 640.0")
    assert "1 rank on 1 node," in text
    assert "640.0 seq/s" in text and "img/s" not in text  # 32 sequences every 50 ms
    assert "own seq/s" in text and "sequences" in text and "images" not in text


def test_format_summary_prints_each_binding_that_differs_from_the_plan(tmp_path: Path) -> None:
    worked_example(tmp_path)
    summary = aggregate_run(tmp_path)
    assert "binding differs" not in format_summary(summary)
    summary["ranks"][1]["binding_mismatches"] = [
        "memory: planned bind to node 1, got bind to 0",
        "cpus: planned 4-7, got 0-7",
    ]
    lines = format_summary(summary).splitlines()
    assert [line for line in lines if "binding differs" in line] == [
        "rank 1: binding differs from the plan: memory: planned bind to node 1, got bind to 0; "
        "cpus: planned 4-7, got 0-7"
    ]


# ---------------------------------------------------------------------------- common window
def test_offset_windows_and_straddling_batches(tmp_path: Path) -> None:
    # Rank 0: 10 batches of 100 ms on one device from T0; rank 1 starts 250 ms later.
    # Window = [T0+250 ms, T0+1000 ms]. Rank 0: batch 2 (200–300 ms) straddles: half counts,
    # batches 3..9 count fully → 7.5 batches. Rank 1 (250..1250 ms): batches ending by 1000 ms:
    # 250–350 … 850–950 = 7 full, batch 950–1050 has 50 ms of 100 inside → 7.5 batches.
    B = 10
    r0 = Batches.of(
        T0_NS + np.arange(10) * 100 * NS_PER_MS, T0_NS + np.arange(1, 11) * 100 * NS_PER_MS, B
    )
    shift = 250 * NS_PER_MS
    r1 = Batches.of(r0.t_start_ns + shift, r0.t_end_ns + shift, B)
    write_rank(tmp_path, 0, 2, r0)
    write_rank(tmp_path, 1, 2, r1)
    summary = summarize_run(tmp_path)
    assert summary["window"]["start_ns"] == T0_NS + shift
    assert summary["window"]["end_ns"] == T0_NS + 1000 * NS_PER_MS
    assert summary["window"]["images"] == pytest.approx(15 * B)
    assert summary["throughput"]["common_window_img_s"] == pytest.approx(15 * B / 0.75)
    assert [row["window_images"] for row in summary["ranks"]] == pytest.approx([75.0, 75.0])
    assert summary["skew"]["begin_s"] == pytest.approx(0.25)
    assert summary["skew"]["finish_s"] == pytest.approx(0.25)
    # Own throughput ignores the window: 100 images per second each.
    assert [row["own_img_s"] for row in summary["ranks"]] == pytest.approx([100.0, 100.0])


def test_windows_that_do_not_overlap_give_undefined_headline(tmp_path: Path) -> None:
    r0 = Batches.of([T0_NS], [T0_NS + NS_PER_S], 8)
    r1 = Batches.of([T0_NS + 2 * NS_PER_S], [T0_NS + 3 * NS_PER_S], 8)
    write_rank(tmp_path, 0, 2, r0)
    write_rank(tmp_path, 1, 2, r1)
    summary = summarize_run(tmp_path)
    assert summary["throughput"]["common_window_img_s"] is None
    assert "do not overlap" in summary["throughput"]["common_window_reason"]
    assert summary["throughput"]["sum_own_img_s"] == pytest.approx(16.0)


def test_one_rank_much_slower(tmp_path: Path) -> None:
    # Rank 0: 4 GPUs × 5 ms iterations for 2 s; rank 1: 1 s of 4 × 50 ms iterations, then
    # still running for 1 more second. Window is [T0, T0 + 2 s] (rank 0 finishes first).
    fast = iteration_batches(T0_NS, [5.0] * 400, num_devices=4, batch_size=32)
    slow = iteration_batches(T0_NS, [50.0] * 60, num_devices=4, batch_size=32)
    write_rank(tmp_path, 0, 2, fast, num_devices=4)
    write_rank(tmp_path, 1, 2, slow, num_devices=4)
    summary = summarize_run(tmp_path, dlbs_trim=10)
    own = [row["own_img_s"] for row in summary["ranks"]]
    assert own == pytest.approx([4 * 32 / 0.005, 4 * 32 / 0.05])
    # In the window rank 1 completed 40 iterations: the headline is the true aggregate rate.
    assert summary["throughput"]["common_window_img_s"] == pytest.approx((400 + 40) * 4 * 32 / 2.0)
    # DLBS adjusted averages iteration times across ranks: 8·32·1000 / mean(5, 50).
    assert summary["throughput"]["dlbs_adjusted_img_s"] == pytest.approx(8 * 32 * 1000 / 27.5)
    assert summary["skew"]["finish_s"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------- DLBS undefined
def test_unequal_gpu_counts(tmp_path: Path) -> None:
    write_rank(tmp_path, 0, 2, iteration_batches(T0_NS, [10.0] * 300, 4, 64), num_devices=4)
    write_rank(tmp_path, 1, 2, iteration_batches(T0_NS, [10.0] * 300, 2, 64), num_devices=2)
    summary = summarize_run(tmp_path)
    tp = summary["throughput"]
    assert tp["dlbs_adjusted_img_s"] is None
    assert "unequal GPU counts (4, 2)" in tp["dlbs_adjusted_reason"]
    # Everything else is still defined: 6 GPUs × 64 images every 10 ms.
    assert tp["common_window_img_s"] == pytest.approx(6 * 64 / 0.01)
    assert tp["per_device_img_s"] == pytest.approx(64 / 0.01)
    assert [len(row["devices"]) for row in summary["ranks"]] == [4, 2]
    assert summary["ranks"][1]["devices"][1]["own_img_s"] == pytest.approx(6400.0)


def test_unequal_batch_sizes(tmp_path: Path) -> None:
    write_rank(tmp_path, 0, 2, iteration_batches(T0_NS, [10.0] * 300, 1, 64))
    write_rank(tmp_path, 1, 2, iteration_batches(T0_NS, [10.0] * 300, 1, 128))
    reason = summarize_run(tmp_path)["throughput"]["dlbs_adjusted_reason"]
    assert "unequal batch sizes (64, 128)" in reason


@pytest.mark.parametrize(
    ("k", "trim", "defined"), [(100, 50, False), (101, 50, True), (5, 2, True), (4, 2, False)]
)
def test_k_against_twice_trim(tmp_path: Path, k: int, trim: int, defined: bool) -> None:
    for rank in range(2):
        write_rank(tmp_path, rank, 2, iteration_batches(T0_NS, [20.0] * k, 2, 16), num_devices=2)
    tp = summarize_run(tmp_path, dlbs_trim=trim)["throughput"]
    if defined:
        assert tp["dlbs_adjusted_img_s"] == pytest.approx(4 * 16 * 1000 / 20.0)
        assert tp["dlbs_adjusted_reason"] is None
    else:
        assert tp["dlbs_adjusted_img_s"] is None
        assert tp["dlbs_adjusted_reason"] == (
            f"rank 0 has K={k} iterations, not more than 2N={2 * trim} (trim N={trim})"
        )
        assert tp["dlbs_reported_img_s"] == tp["dlbs_effective_sum_img_s"]


def test_iterations_group_completions_in_end_time_order() -> None:
    # Two devices whose batches complete out of order in the file: iterations are pairs of
    # completions sorted by end time, timed from the previous pair's last completion.
    ends = T0_NS + np.array([30, 10, 12, 25, 41, 40]) * NS_PER_MS
    times = figures.dlbs_iteration_times_ms(ends, T0_NS, 2)
    assert times.tolist() == [12.0, 18.0, 11.0]


def test_effective_without_barriers_is_undefined(tmp_path: Path) -> None:
    path = write_rank(tmp_path, 0, 1, Batches.of([T0_NS], [T0_NS + NS_PER_S], 8))
    with h5py.File(path, "r+") as f:
        del f["barriers"]
    tp = summarize_run(tmp_path, dlbs_trim=0)["throughput"]
    assert tp["dlbs_effective_sum_img_s"] is None
    assert "rank 0 recorded no 'start'/'end' barrier events" in tp["dlbs_effective_reason"]


# ---------------------------------------------------------------------------- skew, latency
def test_skew_and_latency(tmp_path: Path) -> None:
    # Latencies 1..100 ms across two ranks; start releases 3 µs apart, end releases 2 ms apart.
    lat = np.arange(1, 101) * NS_PER_MS
    starts = T0_NS + np.arange(100) * 200 * NS_PER_MS
    write_rank(
        tmp_path, 0, 2, Batches.of(starts[:50], starts[:50] + lat[:50], 1),
        t_begin_ns=T0_NS, start_barrier=(T0_NS - 10, T0_NS),
        end_barrier=(T0_NS + 30 * NS_PER_S, T0_NS + 30 * NS_PER_S),
    )  # fmt: skip
    write_rank(
        tmp_path, 1, 2, Batches.of(starts[50:], starts[50:] + lat[50:], 1),
        t_begin_ns=T0_NS, start_barrier=(T0_NS - 10, T0_NS + 3000),
        end_barrier=(T0_NS + 30 * NS_PER_S, T0_NS + 30 * NS_PER_S + 2 * NS_PER_MS),
    )  # fmt: skip
    summary = summarize_run(tmp_path)
    assert summary["skew"]["start_s"] == pytest.approx(3e-6)
    assert summary["skew"]["end_s"] == pytest.approx(2e-3)
    assert summary["latency_ms"] == {"p50": 50.5, "p90": 90.1, "p99": 99.01, "max": 100.0}
    assert summary["ranks"][1]["latency_ms"]["max"] == 100.0


# ---------------------------------------------------------------------------- efficiency
def test_efficiency_against_single_rank_reference(tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    ref.mkdir()
    write_rank(ref, 0, 1, iteration_batches(T0_NS, [10.0] * 100, 4, 32), num_devices=4)
    run = tmp_path / "run"
    run.mkdir()
    for rank in range(2):
        write_rank(run, rank, 2, iteration_batches(T0_NS, [12.5] * 80, 4, 32), num_devices=4)
    summary = aggregate_run(run, reference=ref)
    eff = summary["efficiency"]
    assert eff["reference_img_s"] == pytest.approx(128 / 0.01)
    assert eff["ideal_img_s"] == pytest.approx(2 * 128 / 0.01)
    assert eff["value"] == pytest.approx(0.8)
    with pytest.raises(UsageError, match="single-rank run is needed"):
        aggregate_run(ref, reference=run)


# ---------------------------------------------------------------------------- bad runs
def test_missing_rank_is_named(tmp_path: Path) -> None:
    write_rank(tmp_path, 0, 3, Batches.of([T0_NS], [T0_NS + NS_PER_S], 8))
    write_rank(tmp_path, 2, 3, Batches.of([T0_NS], [T0_NS + NS_PER_S], 8))
    with pytest.raises(MetricsError, match=r"rank-00001\.h5 missing.*--allow-partial"):
        aggregate_run(tmp_path)
    assert not (tmp_path / "summary.json").exists()
    summary = aggregate_run(tmp_path, allow_partial=True)
    assert summary["complete"] is False
    assert summary["excluded_ranks"] == [{"rank": 1, "reason": "rank-00001.h5 missing"}]
    assert [row["rank"] for row in summary["ranks"]] == [0, 2]
    assert summary["throughput"]["common_window_img_s"] == pytest.approx(16.0)


def test_unfinished_part_file_is_named(tmp_path: Path) -> None:
    write_rank(tmp_path, 0, 2, Batches.of([T0_NS], [T0_NS + NS_PER_S], 8))
    write_rank(tmp_path, 1, 2, Batches.of([T0_NS], [T0_NS + NS_PER_S], 8), complete=False)
    with pytest.raises(MetricsError, match=r"rank-00001\.h5\.part left"):
        aggregate_run(tmp_path)
    summary = aggregate_run(tmp_path, allow_partial=True)
    assert summary["complete"] is False
    assert "did not finish" in summary["excluded_ranks"][0]["reason"]
    assert "INCOMPLETE" in format_summary(summary)
    with h5py.File(tmp_path / "result.h5", "r") as f:
        assert f.attrs["complete"] == False  # noqa: E712 (numpy bool)
        assert list(f["ranks"]) == ["rank-00000"]


def test_fewer_files_than_plan(tmp_path: Path) -> None:
    write_rank(tmp_path, 0, 2, Batches.of([T0_NS], [T0_NS + NS_PER_S], 8))
    plan = {"ranks": [{"rank": r, "node": 0, "local_rank": r, "cpus": [r], "gpus": [r],
                       "mem_nodes": [0]} for r in range(2)]}  # fmt: skip
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(MetricsError, match=r"1 of 2 rank files not finished: rank-00001\.h5"):
        aggregate_run(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "no_bounds"])
def test_corrupt_rank_file_is_named(tmp_path: Path, damage: str) -> None:
    write_rank(tmp_path, 0, 2, Batches.of([T0_NS], [T0_NS + NS_PER_S], 8))
    path = write_rank(tmp_path, 1, 2, Batches.of([T0_NS], [T0_NS + NS_PER_S], 8))
    if damage == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif damage == "garbage":
        path.write_bytes(b"not an hdf5 file at all")
    else:
        with h5py.File(path, "r+") as f:
            del f["timed"].attrs["t_finish_ns"]
    with pytest.raises(MetricsError, match=r"rank-00001\.h5"):
        aggregate_run(tmp_path, allow_partial=True)


def test_no_rank_files(tmp_path: Path) -> None:
    with pytest.raises(MetricsError, match="no rank files"):
        aggregate_run(tmp_path)


# ---------------------------------------------------------------------------- CLI
def test_cli_aggregate_json_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    worked_example(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["aggregate", str(tmp_path), "--json", "--dlbs-trim", "100"])
    assert exit_.value.code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["throughput"]["dlbs_adjusted_img_s"] is None
    assert out["throughput"]["dlbs_trim"] == 100
    (tmp_path / "rank-00001.h5").unlink()
    with pytest.raises(SystemExit) as exit_:
        main(["aggregate", str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("hpcbench: error: ") and "rank-00001.h5 missing" in err
    assert err.count("\n") == 1


def test_read_summary_prefers_file_and_computes_otherwise(tmp_path: Path) -> None:
    worked_example(tmp_path)
    computed = read_summary(tmp_path)
    assert not (tmp_path / "summary.json").exists()
    aggregate_run(tmp_path)
    copy = tmp_path.parent / "copy"
    shutil.copytree(tmp_path, copy)
    for rank_path in copy.glob("rank-*.h5"):
        rank_path.unlink()
    assert read_summary(copy)["throughput"] == computed["throughput"]


# ---------------------------------------------------------------------------- properties
@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 1000), st.integers(0, 200), st.integers(1, 64)),
        min_size=1,
        max_size=30,
    ),
    st.integers(0, 1200),
    st.integers(0, 600),
)
def test_window_images_match_a_per_batch_computation(
    batches: list[tuple[int, int, int]], window_start: int, window_length: int
) -> None:
    starts = np.array([b[0] for b in batches], dtype=np.int64) + T0_NS
    ends = starts + np.array([b[1] for b in batches], dtype=np.int64)
    images = np.array([b[2] for b in batches], dtype=np.int32)
    w0, w1 = T0_NS + window_start, T0_NS + window_start + window_length
    expected = 0.0
    for start, end, count in zip(starts.tolist(), ends.tolist(), images.tolist()):
        if w1 <= w0:
            continue
        if end == start:
            expected += count if w0 <= end <= w1 else 0
        else:
            expected += count * max(0, min(end, w1) - max(start, w0)) / (end - start)
    assert figures.images_in_window(starts, ends, images, w0, w1) == pytest.approx(expected)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(0, 10**10), min_size=1, max_size=200),
    st.lists(st.integers(0, 200), max_size=5),
)
def test_latency_percentiles_match_numpy(values: list[int], cuts: list[int]) -> None:
    array = np.array(values, dtype=np.int64)
    expected = np.percentile(array.astype(np.float64), [50, 90, 99]) / NS_PER_MS
    # Pooled over sorted runs (one per rank, some possibly empty) as over one array.
    runs = [np.sort(part) for part in np.split(array, sorted(c % (len(values) + 1) for c in cuts))]
    for got in (figures.latency_ms(array), figures.pooled_latency_ms(runs)):
        assert [got["p50"], got["p90"], got["p99"]] == pytest.approx(expected.tolist(), abs=1e-6)
        assert got["max"] == pytest.approx(max(values) / NS_PER_MS)


def test_rank_file_named_for_another_rank(tmp_path: Path) -> None:
    path = write_rank(tmp_path, 0, 6, Batches.of([T0_NS], [T0_NS + NS_PER_S], 8))
    write_rank(tmp_path, 1, 6, Batches.of([T0_NS], [T0_NS + NS_PER_S], 8))
    path.rename(tmp_path / "rank-00005.h5")
    with pytest.raises(MetricsError, match=r"rank-00005\.h5: attribute rank=0"):
        aggregate_run(tmp_path, allow_partial=True)
    (tmp_path / "rank-00005.h5").rename(tmp_path / "rank-00009.h5")
    with pytest.raises(MetricsError, match=r"rank-00009\.h5: rank 9 is outside the world size 6"):
        aggregate_run(tmp_path, allow_partial=True)


def test_per_device_images_with_a_partial_batch(tmp_path: Path) -> None:
    starts = T0_NS + np.array([0, 0, 100, 100]) * NS_PER_MS
    batches = Batches.of(starts, starts + 100 * NS_PER_MS, [8, 8, 3, 8], [0, 1, 0, 1])
    write_rank(tmp_path, 0, 1, batches, num_devices=2, batch_size=8)
    devices = summarize_run(tmp_path, dlbs_trim=0)["ranks"][0]["devices"]
    assert [(d["device"], d["batches"], d["images"]) for d in devices] == [(0, 2, 11), (1, 2, 16)]
    assert [d["own_img_s"] for d in devices] == pytest.approx([55.0, 80.0])


@pytest.mark.parametrize("allow_partial", [False, True])
def test_no_finished_rank_is_said_without_suggesting_allow_partial(
    tmp_path: Path, allow_partial: bool
) -> None:
    """A cancelled job leaves only .part files: --allow-partial cannot help, so say so."""
    for rank in range(2):
        write_rank(tmp_path, rank, 2, Batches.of([T0_NS], [T0_NS + NS_PER_S], 8), complete=False)
    with pytest.raises(MetricsError) as info:
        aggregate_run(tmp_path, allow_partial=allow_partial)
    message = str(info.value)
    assert "none of the 2 ranks finished (rank-00000.h5.part left" in message
    assert message.endswith("nothing to aggregate, even with --allow-partial")
