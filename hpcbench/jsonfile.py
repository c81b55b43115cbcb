"""Files written atomically (JSON and any bytes), JSON read with one clear error naming the file.

Every temp-file-then-rename write in hpcbench goes through :func:`write_atomic`, so a reader
sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpcbench.errors import ConfigError, HpcbenchError


def write_atomic(
    path: Path,
    data: bytes | str,
    *,
    mode: int | None = 0o600,
    durable: bool = False,
    check: Callable[[Path], object] | None = None,
) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    The file gets ``mode`` whatever the umask; ``None`` gives what ``open`` would (0666 less
    the umask), for files other users may read (a shared data set). ``durable`` fsyncs the
    bytes before the rename (archive records must survive a crash; run files are rewritten by
    the next run anyway).
    ``check`` is called with the temporary path before the rename: when it raises, ``path`` is
    left as it was. On any failure the temporary file is removed.
    """
    payload = data.encode("utf-8") if isinstance(data, str) else data
    # mkstemp, not a pid-derived name: two threads of one process may write the same file.
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(tmp_name, _default_mode() if mode is None else mode)
        if check is not None:
            check(Path(tmp_name))
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _default_mode() -> int:
    """0666 less the umask, read without changing it (``os.umask`` would, for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o644


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename (mode 0600).

    A reader sees the old file or the new one, never half of one.
    """
    write_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(
    path: Path, what: str, error: type[HpcbenchError] = ConfigError, hint: str = ""
) -> Any:
    """Parse the JSON file ``path``; a missing or malformed file raises ``error`` in one line.

    ``what`` names the file's role ("plan file"), ``hint`` is appended to the not-found message.

    >>> read_json(Path("/nonexistent/plan.json"), "plan file")
    Traceback (most recent call last):
    ...
    hpcbench.errors.ConfigError: /nonexistent/plan.json: plan file not found
    """
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise error(f"{path}: {what} not found{hint}") from exc
    except json.JSONDecodeError as exc:
        raise error(f"{path}: {what} is not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read the {what} ({exc})") from exc
