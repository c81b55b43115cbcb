"""Index entries of the archive: what one run's entry holds, derived from its files, and checked.

An entry is a cache of a run folder (:mod:`hpcbench.archive.store` writes it under ``index/``):
the summary, the spec, the parameters (:func:`hpcbench.archive.query.run_params`) and whether
the run is a complete measurement. Everything here reads files and returns data; nothing writes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hpcbench.errors import ArchiveError, ConfigError, excerpt
from hpcbench.jsonfile import read_json
from hpcbench.runfiles import RUN_FILE, RunFiles
from hpcbench.text import noun

ENTRY_FORMAT = 1


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """A JSON file that must hold an object; ArchiveError naming the file otherwise."""
    data = read_json(path, what, ArchiveError)
    if not isinstance(data, dict):
        raise ArchiveError(f"{path}: {what} must be a JSON object, got {type(data).__name__}")
    return data


def entry_from_folder(
    folder: Path,
    *,
    run_id: str,
    archived_at: str | None,
    source: str | None,
    file_names: Iterable[str],
) -> dict[str, Any]:
    """An index entry from a run's files (an archived run folder or a run directory)."""
    from hpcbench.archive.query import run_params

    files = RunFiles(folder)
    summary = read_json_object(files.summary, "summary")
    spec: dict[str, Any] | None = None
    if files.spec.is_file():
        spec = read_json_object(files.spec, "spec")
    run_info: dict[str, Any] = {}
    if files.run_info.is_file():
        run_info = read_json_object(files.run_info, RUN_FILE)
    site_doc = site_document(folder, file_names)
    complete, reason = completeness(summary, slurm_record(folder))
    plan: dict[str, Any] | None = None
    if files.plan.is_file():
        plan = read_json_object(files.plan, "plan")
    entry = {
        "format": ENTRY_FORMAT,
        "run_id": run_id,
        "archived_at": archived_at,
        "source": source,
        "complete": complete,
        "incomplete_reason": reason,
        "params": run_params(summary, spec, run_info, site_doc, plan),
        "summary": summary,
        "spec": spec,
    }
    # NaN/Infinity parse from a foreign summary.json but are not JSON: the index says null;
    # strings that are not UTF-8 (a path in another encoding) are escaped.
    safe: dict[str, Any] = json_safe(entry)
    return safe


def json_safe(value: Any) -> Any:
    r"""``value`` with every non-finite float replaced by None and every string valid UTF-8.

    >>> json_safe({"a": [float("nan"), 1.5], "b": float("inf"), "c": "x\udcff"})
    {'a': [None, 1.5], 'b': None, 'c': 'x\\udcff'}
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return utf8_text(value)
    if isinstance(value, dict):
        return {utf8_text(str(k)): json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def utf8_text(value: str) -> str:
    r"""``value`` as valid UTF-8: lone surrogates (undecodable bytes of a file name) escaped.

    >>> utf8_text("runs/caf\udce9")
    'runs/caf\\udce9'
    """
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


# What an index entry holds and the type of each field (None allowed where the tuple says).
_ENTRY_FIELDS: dict[str, tuple[type, ...]] = {
    "format": (int,),
    "run_id": (str,),
    "archived_at": (str, type(None)),
    "source": (str, type(None)),
    "complete": (bool,),
    "incomplete_reason": (str, type(None)),
    "params": (dict,),
    "summary": (dict,),
    "spec": (dict, type(None)),
}


def check_entry(data: Any, where: Path, run_id: str) -> dict[str, Any]:
    """An index entry read back, checked against its schema: ArchiveError naming the field.

    >>> check_entry([], Path("i/r.json"), "r")
    Traceback (most recent call last):
    ...
    hpcbench.errors.ArchiveError: i/r.json: damaged index entry (a JSON list, not an object); ...
    """
    hint = "; run 'hpcbench archive rebuild-index'"
    if not isinstance(data, dict):
        kind = "null" if data is None else f"a JSON {type(data).__name__}"
        raise ArchiveError(f"{where}: damaged index entry ({kind}, not an object){hint}")
    for key, kinds in _ENTRY_FIELDS.items():
        if key not in data:
            raise ArchiveError(f"{where}: damaged index entry (no {key!r}){hint}")
        value = data[key]
        if not isinstance(value, kinds) or (kinds == (int,) and isinstance(value, bool)):
            raise ArchiveError(
                f"{where}: damaged index entry ({key}: {excerpt(value)} is not "
                f"{' or '.join('null' if k is type(None) else k.__name__ for k in kinds)}){hint}"
            )
    if data["format"] != ENTRY_FORMAT:
        raise ArchiveError(f"{where}: index entry format {data['format']} is not {ENTRY_FORMAT}")
    if data["run_id"] != run_id:
        raise ArchiveError(
            f"{where}: index entry names run {excerpt(data['run_id'])}, not {run_id!r}{hint}"
        )
    return data


# Slurm job states after which a run is not a complete measurement, even when every rank
# file happens to be finished (e.g. a TIMEOUT after the timed phase, during aggregation).
FAILED_JOB_STATES = frozenset(
    {
        "CANCELLED",
        "TIMEOUT",
        "FAILED",
        "NODE_FAIL",
        "PREEMPTED",
        "OUT_OF_MEMORY",
        "BOOT_FAIL",
        "DEADLINE",
    }
)


def slurm_record(folder: Path) -> Mapping[str, Any] | None:
    """``slurm.json`` (written by ``hpcbench submit``) when present and readable."""
    path = RunFiles(folder).slurm_record
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def completeness(
    summary: Mapping[str, Any], slurm_record: Mapping[str, Any] | None
) -> tuple[bool, str | None]:
    """Whether a run is a complete measurement, and why not.

    >>> completeness({"complete": True}, {"state": "TIMEOUT"})
    (False, 'Slurm job ended TIMEOUT')
    >>> completeness({"complete": True}, None)
    (True, None)
    >>> completeness({}, None)
    (False, 'summary.json does not say complete: true')
    """
    if summary.get("complete") is not True:
        excluded = summary.get("excluded_ranks")
        if isinstance(excluded, list) and excluded:
            ranks = [str(e.get("rank")) for e in excluded if isinstance(e, Mapping)]
            return False, f"aggregated without {noun(len(ranks), 'rank')} {', '.join(ranks)}"
        return False, "summary.json does not say complete: true"
    jobs = [slurm_record]
    run = summary.get("run")
    if isinstance(run, Mapping):
        jobs.append(run.get("slurm_job"))
    for job in jobs:
        if isinstance(job, Mapping):
            state = str(job.get("state") or "").split()[0:1]
            if state and state[0] in FAILED_JOB_STATES:
                return False, f"Slurm job ended {state[0]}"
    return True, None


def site_document(folder: Path, files: Iterable[str]) -> dict[str, Any] | None:
    """The site config copied with the run (a YAML file with ``node_types``), if any.

    Read through the one config loader, so a damaged or hostile copy (an alias bomb, a huge
    file) is skipped quickly instead of hanging the archive.
    """
    from hpcbench.configfile import read_yaml_file

    for name in sorted(files):
        if not name.endswith((".yaml", ".yml")):
            continue
        try:
            data = read_yaml_file(folder / name, "site config")
        except ConfigError:
            continue
        if isinstance(data, dict) and "node_types" in data:
            return data
    return None
