"""CPU lists and masks in the spellings of Linux, numactl and Slurm.

Pure helpers shared by the topology readers, the planner and the launchers. CPU numbers here
are always OS CPU ids (what ``/sys/devices/system/cpu/cpuN`` and ``sched_getaffinity`` use).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


class CpuListError(ValueError):
    """A CPU-list string is malformed."""


# Linux caps CONFIG_NR_CPUS at 8192; a far larger id is a typo, and expanding a range such as
# "0-99999999999" would exhaust memory before any check could refuse it.
MAX_CPU_ID = 65535


def parse_cpulist(text: str) -> tuple[int, ...]:
    """Parse a Linux CPU list (``"0-3,8,10-11"``) into sorted, unique ids.

    Accepts the stride form ``"0-10:2"`` that sysfs and taskset understand.

    >>> parse_cpulist("0-3,8,10-11")
    (0, 1, 2, 3, 8, 10, 11)
    >>> parse_cpulist("0-6:2")
    (0, 2, 4, 6)
    >>> parse_cpulist("")
    ()
    >>> parse_cpulist("3-1")
    Traceback (most recent call last):
    ...
    hpcbench.cpulist.CpuListError: range '3-1' ends before it starts
    >>> parse_cpulist("0-99999999")
    Traceback (most recent call last):
    ...
    hpcbench.cpulist.CpuListError: CPU 99999999 in '0-99999999' is above the largest CPU id 65535
    """
    cpus: set[int] = set()
    text = text.strip()
    if not text:
        return ()
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise CpuListError(f"empty item in CPU list {text!r}")
        stride = 1
        if ":" in part:
            part, _, stride_text = part.partition(":")
            stride = _int(stride_text, text)
            if stride < 1:
                raise CpuListError(f"stride must be at least 1 in {text!r}")
        if "-" in part:
            lo_text, _, hi_text = part.partition("-")
            lo, hi = _int(lo_text, text), _int(hi_text, text)
            if hi < lo:
                raise CpuListError(f"range '{part}' ends before it starts")
            if hi > MAX_CPU_ID:
                raise CpuListError(f"CPU {hi} in {text!r} is above the largest CPU id {MAX_CPU_ID}")
            cpus.update(range(lo, hi + 1, stride))
        else:
            cpus.add(_int(part, text))
    return tuple(sorted(cpus))


def is_decimal(text: str) -> bool:
    """Whether ``text`` is a non-negative integer written in ASCII digits.

    ``str.isdigit()`` alone accepts "²" and other digits that ``int()`` refuses.

    >>> is_decimal("12"), is_decimal("²"), is_decimal(""), is_decimal("-1")
    (True, False, False, False)
    """
    return text.isascii() and text.isdigit()


def _int(word: str, whole: str) -> int:
    word = word.strip()
    if not is_decimal(word):
        raise CpuListError(f"{word!r} is not a non-negative integer in CPU list {whole!r}")
    return int(word)


def format_cpulist(cpus: Iterable[int]) -> str:
    """Format ids as a compact Linux CPU list.

    >>> format_cpulist([0, 1, 2, 3, 8, 10, 11])
    '0-3,8,10-11'
    >>> format_cpulist([])
    ''
    """
    ordered = sorted(set(cpus))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def cpus_to_mask(cpus: Iterable[int]) -> int:
    """Bit mask with bit ``n`` set for each CPU ``n``.

    >>> hex(cpus_to_mask([0, 1, 4]))
    '0x13'
    """
    mask = 0
    for cpu in cpus:
        mask |= 1 << cpu
    return mask


def mask_to_cpus(mask: int) -> tuple[int, ...]:
    """Inverse of :func:`cpus_to_mask`.

    >>> mask_to_cpus(0x13)
    (0, 1, 4)
    """
    cpus = []
    bit = 0
    while mask:
        if mask & 1:
            cpus.append(bit)
        mask >>= 1
        bit += 1
    return tuple(cpus)


def format_hex_mask(cpus: Iterable[int]) -> str:
    """Slurm's ``mask_cpu`` spelling of a CPU set: ``0x`` and hex digits, no separators.

    >>> format_hex_mask([0, 1, 2, 3])
    '0xF'
    >>> format_hex_mask(range(36, 54))
    '0x3FFFF000000000'
    """
    return f"0x{cpus_to_mask(cpus):X}"


def parse_sysfs_mask(text: str) -> tuple[int, ...]:
    """Parse the comma-grouped hex mask of sysfs ``cpumap``/``local_cpus`` files.

    >>> parse_sysfs_mask("00000000,0000000f")
    (0, 1, 2, 3)
    >>> parse_sysfs_mask("ff000000,00000000")
    (56, 57, 58, 59, 60, 61, 62, 63)
    """
    digits = text.strip().replace(",", "")
    if not digits:
        return ()
    try:
        return mask_to_cpus(int(digits, 16))
    except ValueError as exc:
        raise CpuListError(f"{text.strip()!r} is not a hex CPU mask") from exc


def row_ranges(rows: int, parts: int) -> list[tuple[int, int]]:
    """Split ``rows`` into ``parts`` contiguous, near-equal ``(start, stop)`` ranges.

    >>> row_ranges(64, 3)
    [(0, 22), (22, 43), (43, 64)]
    """
    size, extra = divmod(rows, parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + size + (1 if i < extra else 0)
        out.append((start, stop))
        start = stop
    return out


def split_cpus(cpus: Sequence[int], parts: int) -> list[tuple[int, ...]]:
    """Split a rank's cores into ``parts`` contiguous, near-equal slices (some empty when short).

    >>> split_cpus((0, 1, 2, 3, 4), 2)
    [(0, 1, 2), (3, 4)]
    >>> split_cpus((), 2)
    [(), ()]
    """
    return [tuple(cpus[a:b]) for a, b in row_ranges(len(cpus), parts)]
