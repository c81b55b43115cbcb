"""The exploration's picture: one bar per candidate (its mean), its 95 % interval, its runs.

Needs matplotlib (the ``plot`` extra); :func:`write_picture` returns None without it.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from hpcbench.explore.verdict import Exploration
from hpcbench.plan.candidates import display_label


def write_picture(exploration: Exploration, path: Path, rate: str = "img/s") -> Path | None:
    """Draw ``path`` (PNG); None when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [r for r in exploration.results if r.mean_img_s is not None]
    labels = [display_label(r.candidate.label) for r in results]
    means = [r.mean_img_s or 0.0 for r in results]
    below = [m - r.ci95_img_s[0] if r.ci95_img_s else 0.0 for m, r in zip(means, results)]
    above = [r.ci95_img_s[1] - m if r.ci95_img_s else 0.0 for m, r in zip(means, results)]
    colours = [
        "tab:green"
        if r.candidate.label == exploration.best
        else "tab:grey"
        if r.candidate.label == exploration.baseline
        else "tab:blue"
        for r in results
    ]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(results) + 2.0), 4.5))
    positions = list(range(len(results)))
    ax.bar(positions, means, color=colours, alpha=0.75, yerr=[below, above], capsize=6)
    for x, result in zip(positions, results):
        values = result.values
        ax.plot([x] * len(values), values, "k.", markersize=6, zorder=3)
    baseline = next((r for r in results if r.candidate.label == exploration.baseline), None)
    if baseline is not None and baseline.mean_img_s is not None:
        ax.axhline(baseline.mean_img_s, color="tab:grey", linestyle="--", linewidth=1)
    ax.set_xticks(positions, labels)
    per = "GPUs" if any(r.candidate.plan.ranks[0].gpus for r in results) else "CPUs"
    ax.set_xlabel(
        f"layout: ranks × {per} per rank\n"
        "bar: mean · whisker: 95 % interval (Student's t) · dots: runs · dashed: baseline",
        fontsize=8,
    )
    ax.set_ylabel(f"common-window throughput ({rate})")
    ax.set_title(textwrap.fill(exploration.verdict, 80), fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".part.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
