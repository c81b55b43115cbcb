"""Words and numbers as a person reads them: counts with their plural, figures in one format."""

from __future__ import annotations


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
