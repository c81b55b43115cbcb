"""Cross-run reports: exploration, weak/strong scaling, multi- vs single-process, plots.

Every run is built so that its iteration time is known; then ``t_N`` (ms per iteration, one
batch on every device) equals the iteration time and the efficiencies follow by hand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hpcbench.archive import Archive, add_runs
from hpcbench.archive.tables import (
    Config,
    configurations,
    draw_scaling,
    exploration_table,
    multiprocess_table,
    plot_scaling,
    scaling_charts,
    strong_scaling_table,
    weak_scaling_table,
)
from tests.archive_runs import make_run
from tests.test_archive import cli

ONE = ((0,),)
TWO = ((0,), (1,))
FOUR = ((0,), (1,), (2,), (3,))


@pytest.fixture(scope="module")
def scaling_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scaling")
    runs = [
        # Weak scaling, resnet50, 128 per GPU: 50, 55, 62.5 ms → 100, 90.9, 80 %.
        make_run(root, "w1", layout=ONE, batch=128, iteration_ms=50.0),
        make_run(root, "w2", layout=TWO, batch=128, iteration_ms=55.0),
        make_run(root, "w4", layout=FOUR, batch=128, iteration_ms=62.5),
        # Strong scaling, vit, global batch 256: 100, 55, 31.25 ms → 100, 90.9, 80 %.
        make_run(root, "s1", model="vit", layout=ONE, batch=256, iteration_ms=100.0),
        make_run(root, "s2", model="vit", layout=TWO, batch=128, iteration_ms=55.0),
        make_run(root, "s4", model="vit", layout=FOUR, batch=64, iteration_ms=31.25),
        # Same four GPUs, resnet50 batch 64: one process 50 ms, 2 ranks 45 ms, 4 ranks 40 ms,
        # plus a repeat of the single-process run (52 ms) to show a spread.
        make_run(root, "p1", layout=((0, 1, 2, 3),), batch=64, iteration_ms=50.0),
        make_run(root, "p1-again", layout=((0, 1, 2, 3),), batch=64, iteration_ms=52.0),
        make_run(root, "p2", layout=((0, 1), (2, 3)), batch=64, iteration_ms=45.0),
        make_run(root, "p4", layout=FOUR, batch=64, iteration_ms=40.0),
        # Incomplete runs never enter a table.
        make_run(root, "broken", layout=TWO, batch=128, iteration_ms=10.0, complete=False),
    ]
    archive = root / "archive"
    add_runs(archive, runs)
    return archive


def _entries(archive: Path) -> list[dict[str, Any]]:
    return Archive(archive).entries()


def test_weak_scaling(scaling_archive: Path) -> None:
    table = weak_scaling_table(configurations(_entries(scaling_archive)))
    rows = [d for d in table.data if d["model"] == "resnet50" and d["batch_size"] == "128"]
    assert [(d["devices"], round(d["t_ms"], 3)) for d in rows] == [(1, 50.0), (2, 55.0), (4, 62.5)]
    assert [d["efficiency_pct"] for d in rows] == pytest.approx([100.0, 100 * 50 / 55, 80.0])


def test_strong_scaling(scaling_archive: Path) -> None:
    table = strong_scaling_table(configurations(_entries(scaling_archive)))
    rows = [d for d in table.data if d["model"] == "vit"]
    assert [d["devices"] for d in rows] == [1, 2, 4]
    assert [d["global_batch"] for d in rows] == ["256"] * 3
    assert [d["efficiency_pct"] for d in rows] == pytest.approx([100.0, 100 * 100 / 110, 80.0])


def test_multiprocess_against_single_process(scaling_archive: Path) -> None:
    table = multiprocess_table(configurations(_entries(scaling_archive)))
    (two, four) = [d for d in table.data if d["batch_size"] == "64"]
    # The single-process baseline is the best repeat's mean: mean of 50 and 52 ms runs.
    single = (4 * 64 * 1000 / 50 + 4 * 64 * 1000 / 52) / 2
    assert two["single_img_s"] == pytest.approx(single)
    assert (two["ranks"], two["layout"]) == (2, "0,1;2,3")
    assert two["ratio"] == pytest.approx(4 * 64 * 1000 / 45 / single)
    assert four["ratio"] == pytest.approx(4 * 64 * 1000 / 40 / single)


def test_exploration_table(scaling_archive: Path) -> None:
    table = exploration_table(configurations(_entries(scaling_archive)))
    assert table.headers[:2] == ("model", "batch_size")
    text = table.format()
    assert "±" in text  # the repeated single-process configuration shows its spread
    assert "broken" not in text
    cell = {(d["model"], d["batch_size"], d["layout"]): d for d in table.data}
    assert cell[("resnet50", "64", "0,1,2,3")]["repeats"] == 2
    assert cell[("vit", "256", "0")]["img_s"] == pytest.approx(2560.0)


def test_report_command_and_plot(
    scaling_archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plots = tmp_path / "plots"
    code, out, err = cli(
        capsys, "archive", "report", "-a", str(scaling_archive), "--plot", str(plots)
    )
    assert code == 0, err
    for title in ("Exploration", "Weak scaling", "Strong scaling", "Multi-process"):
        assert title in out
    pngs = sorted(p.name for p in plots.iterdir())
    assert pngs == [
        "scaling_testsite_gpu_resnet50_torch_fp16.png",
        "scaling_testsite_gpu_vit_torch_fp16.png",
    ]
    assert (plots / pngs[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, out, _ = cli(
        capsys, "archive", "report", "-a", str(scaling_archive), "--json", "--where", "model=vit"
    )
    data = json.loads(out)
    assert len(data["Strong scaling (global batch fixed): efficiency 100·t1/(N·tN)"]) == 3


@pytest.fixture(scope="module")
def two_sites_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sites")
    runs = [
        make_run(root, f"{site}-{n}", site=site, layout=layout, batch=64, iteration_ms=ms)
        for site, ms in (("alpha", 50.0), ("beta", 80.0))
        for n, layout in (("1", ONE), ("2", TWO))
    ]
    # The same per-node layout on two nodes: 4 ranks, 4 GPUs.
    runs.append(
        make_run(root, "alpha-2x2", site="alpha", layout=TWO, nodes=2, batch=64, iteration_ms=60)
    )
    archive = root / "archive"
    add_runs(archive, runs)
    return archive


def test_scaling_charts_never_mix_sites(two_sites_archive: Path, tmp_path: Path) -> None:
    charts = scaling_charts(configurations(_entries(two_sites_archive)))
    assert [(c.site, c.model, c.device_kind) for c in charts] == [
        ("alpha", "resnet50", "GPU"),
        ("beta", "resnet50", "GPU"),
    ]
    for chart, members in charts.items():
        assert {m.p("site") for m in members} == {chart.site}
    paths = plot_scaling(_entries(two_sites_archive), tmp_path)
    assert [p.name for p in paths] == [
        "scaling_alpha_gpu_resnet50_torch_fp16.png",
        "scaling_beta_gpu_resnet50_torch_fp16.png",
    ]


def test_nodes_are_part_of_the_layout(two_sites_archive: Path) -> None:
    configs = [c for c in configurations(_entries(two_sites_archive)) if c.p("site") == "alpha"]
    table = exploration_table(configs)
    assert table.headers[-3:] == ("0", "0;1", "2×(0;1)")
    cell = {d["layout"]: d["img_s"] for d in table.data}
    assert cell["0;1"] == pytest.approx(2 * 64 * 1000 / 50.0)
    assert cell["2×(0;1)"] == pytest.approx(4 * 64 * 1000 / 60.0)
    weak = weak_scaling_table(configs)
    assert [(d["devices"], d["nodes"], d["layout"]) for d in weak.data] == [
        (1, 1, "0"),
        (2, 1, "0;1"),
        (4, 2, "2×(0;1)"),
    ]


def _cpu_config(
    model: str, ranks: int, img_s: float, backend: str = "torch", gpus: tuple[int, ...] = ()
) -> Config:
    params = {
        "site": "laptop",
        "partition": None,
        "model": model,
        "backend": backend,
        "precision": "fp32",
        "batch_size": 4,
        "world_size": ranks,
        "nodes": 1,
        "layout": ";".join(str(r) for r in range(ranks)),
        "devices": ranks,
        "gpus_total": None,
        "gpus_per_rank": None,
    }
    return Config(params=params, gpu_set=gpus, throughputs=(img_s,))


def test_cpu_runs_are_drawn_as_cpu_devices_under_their_model_name() -> None:
    members = [_cpu_config("bert_base", 1, 0.9), _cpu_config("bert_base", 2, 1.7)]
    ((chart, grouped),) = scaling_charts(members).items()
    assert chart.file_name == "scaling_laptop_bert_base_torch_fp32_cpu.png"
    fig = draw_scaling(chart, grouped)
    devices_ax, _ = fig.axes
    assert devices_ax.get_xlabel().startswith("CPU devices")
    title = fig.get_suptitle()
    assert title.startswith("bert_base (torch, fp32) on CPU devices")
    assert devices_ax.get_ylabel() == "common-window throughput (seq/s)"
    labels = [t.get_text() for t in devices_ax.get_legend().get_texts()]
    assert labels == ["B=4, 1 device/rank", "B=4, 1 process"]
    assert not any("GPU" in text for text in [*labels, title, devices_ax.get_xlabel()])


def test_the_cpu_backend_runs_on_cpu_devices_where_the_plan_gave_gpus() -> None:
    # hpcbench submit --backend cpu on a GPU node: the plan lists GPUs, the cores compute.
    members = [_cpu_config("mlp", 2, 5000.0, backend="cpu", gpus=(0, 1, 2, 3))]
    ((chart, _),) = scaling_charts(members).items()
    assert chart.device_kind == "CPU device"
    assert chart.file_name == "scaling_laptop_mlp_cpu_fp32.png"
    assert multiprocess_table(members).rows == ()


def test_tables_give_throughput_in_the_models_unit(scaling_archive: Path) -> None:
    images = configurations(_entries(scaling_archive))
    assert exploration_table(images).note == "throughput in img/s"
    assert "img/s" in weak_scaling_table(images).headers
    bert = [_cpu_config("bert_base", 1, 0.9), _cpu_config("bert_base", 2, 1.7)]
    assert exploration_table(bert).note == "throughput in seq/s"
    assert "seq/s" in weak_scaling_table(bert).headers
    mixed = weak_scaling_table([*bert, _cpu_config("mlp", 1, 100.0), _cpu_config("mlp", 2, 190.0)])
    assert "samples/s" in mixed.headers
    assert mixed.format().endswith("\nsamples: images for mlp; sequences for bert_base")
