"""One root exception and one subclass per area.

The CLI catches :class:`HpcbenchError` at the top and prints ``str(error)`` as one line:
what was wrong, where (file and key path), the bad value and what would be valid. Usage and
configuration mistakes exit 2; failures of a run (a rank died, a job was cancelled) exit 1.
"""

from __future__ import annotations


class HpcbenchError(Exception):
    """Root of every error hpcbench reports to a user."""

    exit_code = 2


class ConfigError(HpcbenchError):
    """A site config, spec, sweep or reference file is missing, malformed or invalid."""


class TopologyError(HpcbenchError):
    """A topology source cannot be read or describes an impossible node."""


class PlanError(HpcbenchError):
    """A placement request cannot be satisfied or an explicit layout breaks a rule."""


class UsageError(HpcbenchError):
    """A command-line value is invalid."""


class RunError(HpcbenchError):
    """A benchmark run failed (a rank died, timed out or the job ended early)."""

    exit_code = 1


class BarrierError(RunError):
    """This rank gave up at a barrier because of other ranks: ``culprits`` never arrived or
    aborted the run. The launcher blames them, not this rank."""

    def __init__(self, message: str, culprits: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.culprits = culprits

    # What the culprits did, as the launcher's headline says it ("rank 1 <cause>").
    cause = "held up the others"


class BarrierTimeout(BarrierError):
    """Some ranks (``culprits``) never arrived at a barrier within its timeout."""

    cause = "did not arrive at a barrier in time"


class BarrierAborted(BarrierError):
    """Another rank (``culprits[0]``) failed and aborted the barrier."""

    cause = "aborted the run"


class MetricsError(HpcbenchError):
    """A metrics file is missing, unfinished, truncated or of an unknown format."""


class SlurmError(RunError):
    """Slurm refused a job or the job ended in a failed state."""


class ArchiveError(HpcbenchError):
    """An archive operation failed."""


def closest(word: str, choices: list[str] | tuple[str, ...]) -> str:
    """Return ' (did you mean X?)' for the closest choice, or '' when none is close.

    >>> closest("partiton", ["partition", "account"])
    " (did you mean 'partition'?)"
    >>> closest("zzz", ["partition"])
    ''
    """
    import difflib

    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def excerpt(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to about ``limit`` characters, for echoing a bad value in one line.

    >>> excerpt("x" * 100, limit=10)
    "'xxxxxxxx… (100 characters)"
    >>> excerpt("ok")
    "'ok'"
    """
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f" ({len(value)} characters)" if isinstance(value, str) else ""
    return text[: limit - 1] + "…" + size
