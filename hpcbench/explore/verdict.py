"""From the runs of every candidate to the verdict, the table and ``explore.json``. Pure.

Each run contributes its common-window throughput (``summary.json``'s
``throughput.common_window_img_s``). Per candidate: the mean, the sample standard deviation,
Student's t 95 % interval of the mean, and the speedup against the baseline (one rank on the
whole node) with its own interval (:func:`hpcbench.stats.ratio_ci`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hpcbench.plan.candidates import Candidate, CandidateSet, display_label
from hpcbench.stats import Ratio, mean, mean_ci, ratio_ci, sample_std
from hpcbench.text import format_figure, format_table


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run of one candidate: where it is and its headline (None when it failed)."""

    label: str
    repeat: int
    run_dir: str
    common_window_img_s: float | None
    message: str = ""
    # The validity checks its summary.json says it failed (the run still counts: the table
    # names them so a reader can judge).
    failed_checks: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CandidateResult:
    """A candidate's runs and statistics (None where too few runs succeeded)."""

    candidate: Candidate
    runs: tuple[RunRecord, ...]
    mean_img_s: float | None
    std_img_s: float | None
    ci95_img_s: tuple[float, float] | None
    speedup: Ratio | None

    @property
    def values(self) -> list[float]:
        return [r.common_window_img_s for r in self.runs if r.common_window_img_s is not None]


@dataclass(frozen=True, slots=True)
class Exploration:
    """Every candidate's result, the baseline and best labels, and the verdict sentence."""

    results: tuple[CandidateResult, ...]
    baseline: str
    best: str | None
    verdict: str

    def result(self, label: str) -> CandidateResult:
        for result in self.results:
            if result.candidate.label == label:
                return result
        raise KeyError(label)


def _result(
    candidate: Candidate, runs: Sequence[RunRecord], baseline: Sequence[float], is_baseline: bool
) -> CandidateResult:
    values = [r.common_window_img_s for r in runs if r.common_window_img_s is not None]
    enough = len(values) >= 2
    speedup = None
    if enough and len(baseline) >= 2 and mean(baseline) > 0:
        # The baseline against its own runs: exactly 1, whatever their noise.
        speedup = Ratio(1.0, 1.0, 1.0, None) if is_baseline else ratio_ci(values, baseline)
    return CandidateResult(
        candidate=candidate,
        runs=tuple(runs),
        mean_img_s=mean(values) if values else None,
        std_img_s=sample_std(values) if enough else None,
        ci95_img_s=mean_ci(values) if enough else None,
        speedup=speedup,
    )


def judge(candidates: CandidateSet, runs: Sequence[RunRecord]) -> Exploration:
    """Statistics per candidate, the best (highest mean) and the verdict sentence."""
    by_label: dict[str, list[RunRecord]] = {c.label: [] for c in candidates.candidates}
    for run in runs:
        by_label[run.label].append(run)
    baseline = candidates.baseline.label
    baseline_values = [
        r.common_window_img_s for r in by_label[baseline] if r.common_window_img_s is not None
    ]
    results = tuple(
        _result(
            c,
            sorted(by_label[c.label], key=lambda r: r.repeat),
            baseline_values,
            c.label == baseline,
        )
        for c in candidates.candidates
    )
    measured = sorted(
        (r for r in results if r.mean_img_s is not None),
        key=lambda r: -(r.mean_img_s or 0.0),
    )
    best = measured[0].candidate.label if measured else None
    return Exploration(results, baseline, best, verdict_sentence(results, baseline, measured))


def _percent(ratio: Ratio) -> str:
    """``7.5 % ± 1.2 %``: the speedup and the half-width of its (symmetric) interval."""
    return f"{(ratio.value - 1) * 100:.1f} % ± {(ratio.high - ratio.value) * 100:.1f} %"


def _compare(faster: CandidateResult, slower: CandidateResult) -> Ratio | None:
    if len(faster.values) < 2 or len(slower.values) < 2:
        return None
    return ratio_ci(faster.values, slower.values)


def verdict_sentence(
    results: Sequence[CandidateResult], baseline: str, measured: Sequence[CandidateResult]
) -> str:
    """Whether the best beats the baseline and the runner-up beyond noise, in one sentence.

    "Beyond noise" means the 95 % interval of the ratio of means excludes 1.
    """
    if not measured:
        return "no candidate produced a result"
    best = measured[0]
    name = display_label(best.candidate.label)
    if len(results) == 1:
        return f"{name} is the only layout this node allows: nothing to compare it with"
    if len(measured) == 1:
        return f"only {name} produced a result: nothing to compare it with"
    runner = measured[1]
    runner_name = display_label(runner.candidate.label)
    base_name = display_label(baseline)
    if best.candidate.label == baseline:
        ratio = _compare(best, runner)
        if ratio is None:
            return (
                f"{name} (the baseline) has the highest mean; too few runs succeeded to judge "
                f"the noise"
            )
        if ratio.beyond_noise:
            return (
                f"{name} (the baseline) is the fastest: {_percent(ratio)} faster than the "
                f"runner-up {runner_name}, beyond noise"
            )
        return (
            f"{name} (the baseline) is only {_percent(ratio)} faster than the runner-up "
            f"{runner_name}, within noise: no layout beats the baseline beyond noise"
        )
    against_base = best.speedup
    if against_base is None:
        return f"{name} has the highest mean; too few runs succeeded to judge the noise"
    if against_base.beyond_noise:
        text = f"{name} is {_percent(against_base)} faster than {base_name} (the baseline)"
    else:
        text = (
            f"{name} is {_percent(against_base)} faster than {base_name} (the baseline), "
            f"within noise"
        )
    if runner.candidate.label == baseline:
        return text
    ratio = _compare(best, runner)
    if ratio is None:
        return f"{text}; too few runs of the runner-up {runner_name} to compare"
    if ratio.beyond_noise:
        return f"{text}, and {_percent(ratio)} faster than the runner-up {runner_name}"
    return (
        f"{text}, but only {_percent(ratio)} faster than the runner-up {runner_name}, within noise"
    )


def _interval(pair: tuple[float, float] | None) -> list[float] | None:
    return None if pair is None else [pair[0], pair[1]]


def explore_json(exploration: Exploration, command: str) -> dict[str, Any]:
    """The stable ``explore.json`` contract (docs/quickstart.md lists the fields)."""
    candidates = []
    for result in exploration.results:
        c = result.candidate
        speedup = result.speedup
        candidates.append(
            {
                "label": c.label,
                "ranks": c.ranks,
                "gpus_per_rank": c.gpus_per_rank,
                "cpus_per_rank": c.cpus_per_rank,
                "layout": c.layout,
                "runs": [
                    {"run_dir": r.run_dir, "common_window_img_s": r.common_window_img_s}
                    for r in result.runs
                ],
                "mean_img_s": result.mean_img_s,
                "std_img_s": result.std_img_s,
                "ci95_img_s": _interval(result.ci95_img_s),
                "speedup_vs_baseline": None if speedup is None else speedup.value,
                "speedup_ci95": None if speedup is None else [speedup.low, speedup.high],
            }
        )
    return {
        "baseline": exploration.baseline,
        "best": exploration.best,
        "verdict": exploration.verdict,
        "command": command,
        "candidates": candidates,
    }


def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}".replace(",", " ")


def format_exploration(exploration: Exploration, rate: str = "img/s") -> str:
    """One line per candidate: shape, runs, mean ± interval, speedup, layout and how found.

    ``rate`` is the unit of the model's samples (``seq/s`` for a language model).
    """
    header = [
        "candidate", "runs", f"mean {rate}", "std", f"95% CI {rate}", "speedup", "95% CI",
        "layout", "found as",
    ]  # fmt: skip
    rows = []
    for result in exploration.results:
        c = result.candidate
        ok = len(result.values)
        ci = result.ci95_img_s
        speedup = result.speedup
        mark = " *" if c.label == exploration.best else ""
        rows.append(
            [
                c.label + mark,
                f"{ok}/{len(result.runs)}",
                _number(result.mean_img_s),
                _number(result.std_img_s),
                "-" if ci is None else f"{format_figure(ci[0])} – {format_figure(ci[1])}",
                "-" if speedup is None else f"{speedup.value:.3f}",
                "-" if speedup is None else f"{speedup.low:.3f} – {speedup.high:.3f}",
                c.layout,
                c.how,
            ]
        )
    lines = format_table(header, rows, right=[False] * len(header), rule=False).splitlines()
    failed = [r for result in exploration.results for r in result.runs if r.message]
    lines += [f"{r.label} run {r.repeat}: {r.message} ({r.run_dir})" for r in failed]
    invalid = [
        r
        for result in exploration.results
        for r in result.runs
        if r.failed_checks and not r.message
    ]
    lines += [
        f"{r.label} run {r.repeat}: counted, but its validity checks failed: "
        f"{', '.join(r.failed_checks)} (see {r.run_dir}/summary.json)"
        for r in invalid
    ]
    lines.append(f"* best; verdict: {exploration.verdict}")
    return "\n".join(lines)
