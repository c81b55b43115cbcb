"""Slurm hostlist expressions (``SLURM_JOB_NODELIST``, ``sacct``'s NodeList) expanded to names."""

from __future__ import annotations

import re

from hpcbench.errors import SlurmError

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside brackets.

    >>> _split_top("a[1-2,4],b,c[0-1]")
    ['a[1-2,4]', 'b', 'c[0-1]']
    """
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise SlurmError(f"node list {text!r}: ']' without '['")
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise SlurmError(f"node list {text!r}: '[' without ']'")
    parts.append(text[start:])
    return parts


def _expand_ranges(body: str, whole: str) -> list[str]:
    """``1-3,7`` → ['1', '2', '3', '7'], keeping zero padding (``01-03`` → 01, 02, 03)."""
    out: list[str] = []
    for item in body.split(","):
        match = _RANGE.match(item)
        if not match:
            raise SlurmError(f"node list {whole!r}: bad range {item!r}")
        first, last = match.group(1), match.group(2) or match.group(1)
        if int(last) < int(first):
            raise SlurmError(f"node list {whole!r}: range {item!r} runs backwards")
        width = len(first) if first.startswith("0") else 0
        out += [str(n).zfill(width) for n in range(int(first), int(last) + 1)]
    return out


def expand_nodelist(text: str) -> list[str]:
    """Expand a Slurm hostlist into node names, in Slurm's order.

    >>> expand_nodelist("node[1-3]")
    ['node1', 'node2', 'node3']
    >>> expand_nodelist("gpu[01-02,10],login1")
    ['gpu01', 'gpu02', 'gpu10', 'login1']
    >>> expand_nodelist("rack[1-2]-n[1-2]")
    ['rack1-n1', 'rack1-n2', 'rack2-n1', 'rack2-n2']
    >>> expand_nodelist("")
    []
    >>> expand_nodelist("n[3-1]")
    Traceback (most recent call last):
    ...
    hpcbench.errors.SlurmError: node list 'n[3-1]': range '3-1' runs backwards
    """
    text = text.strip()
    if not text or text in ("(null)", "None assigned"):
        return []
    names: list[str] = []
    for part in _split_top(text):
        names += _expand_one(part, text)
    return names


def _expand_one(part: str, whole: str) -> list[str]:
    open_at = part.find("[")
    if open_at < 0:
        return [part]
    close_at = part.index("]", open_at)
    prefix, body, rest = part[:open_at], part[open_at + 1 : close_at], part[close_at + 1 :]
    tails = _expand_one(rest, whole) if rest else [""]
    return [prefix + n + tail for n in _expand_ranges(body, whole) for tail in tails]
