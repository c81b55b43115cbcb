"""JSON files of a run: written atomically, read with one clear error naming the file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hpcbench.errors import ConfigError, HpcbenchError


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename (mode 0600).

    A reader sees the old file or the new one, never half of one.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


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
