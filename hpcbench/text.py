"""Words and numbers as a person reads them: counts with their plural, figures in one format."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def noun(count: int, word: str, many: str | None = None) -> str:
    """``word`` as ``count`` of them are called: ``rank``, ``ranks`` (``many`` when irregular).

    >>> noun(1, "rank"), noun(3, "rank"), noun(0, "entry", "entries")
    ('rank', 'ranks', 'entries')
    """
    return word if count == 1 else (many or word + "s")


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 core``, ``2 cores``.

    >>> plural(1, "rank"), plural(2, "rank"), plural(18, "physical core")
    ('1 rank', '2 ranks', '18 physical cores')
    """
    return f"{count} {noun(count, word, many)}"


def format_figure(value: float | None) -> str:
    """A throughput or any other measured figure: one decimal, thousands grouped by a space
    (the SI way, unambiguous whatever the reader's decimal mark); ``-`` when there is none.

    >>> format_figure(6382.84), format_figure(12.0), format_figure(None)
    ('6 382.8', '12.0', '-')
    """
    return "-" if value is None else f"{value:,.1f}".replace(",", " ")


def format_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    right: Sequence[bool] | None = None,
    rule: bool = True,
) -> str:
    """Plain aligned columns, two spaces apart: every table hpcbench prints.

    ``right`` says which columns are right-aligned (numbers); by default a cell is when it
    reads as a number, and a header follows its first row. ``rule`` draws dashes under the
    headers.

    >>> print(format_table(["model", "img/s"], [["resnet50", "1 234.5"]]))
    model       img/s
    --------  -------
    resnet50  1 234.5
    >>> print(format_table(["rank", "cpus"], [["0", "0-3"], ["12", "4"]], right=[True, False],
    ...                    rule=False))
    rank  cpus
       0  0-3
      12  4
    """
    rows = [list(map(str, r)) for r in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]

    def numeric(text: str) -> bool:
        stripped = text.replace(",", "").replace("%", "").replace("±", "").strip()
        try:
            float(stripped.split()[0])
        except (ValueError, IndexError):
            return False
        return True

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if (numeric(c) if right is None else right[i]) else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths))
        ]
        return "  ".join(parts).rstrip()

    def header_right(i: int) -> bool:
        if right is not None:
            return right[i]
        return bool(rows) and numeric(rows[0][i])

    out = [
        "  ".join(
            h.rjust(w) if header_right(i) else h.ljust(w)
            for i, (h, w) in enumerate(zip(headers, widths))
        ).rstrip()
    ]
    if rule:
        out.append("  ".join("-" * w for w in widths))
    out.extend(line(r) for r in rows)
    return "\n".join(out)
