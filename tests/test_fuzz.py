"""Bad input, generated: site configs, YAML structure, plan syntax, sweep specs, command lines.

Property of every test: the input is accepted, or refused with one :class:`HpcbenchError`
(on the command line: exit 2 and exactly one ``hpcbench: error:`` line naming what and where),
never another exception and never a traceback.

Examples per property: ``HPCBENCH_FUZZ_EXAMPLES`` (default 200, what CI runs); the larger run
recorded in docs/reliability.md used ``HPCBENCH_FUZZ_EXAMPLES=3000``. Run with
``--hypothesis-show-statistics`` to see how many inputs each property tried.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from hpcbench.cli import main
from hpcbench.errors import HpcbenchError
from hpcbench.site import load_site

REPO = Path(__file__).resolve().parent.parent
SITE = REPO / "site_configs" / "hpe-apollo6500-gen10.yaml"
EXAMPLES = int(os.environ.get("HPCBENCH_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    # The default (CI) run tries the same inputs every time, so a red CI is reproducible and
    # never random; a run with HPCBENCH_FUZZ_EXAMPLES set explores (seeded or not).
    derandomize="HPCBENCH_FUZZ_EXAMPLES" not in os.environ,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def one_line(error: BaseException) -> str:
    text = str(error)
    assert text and "\n" not in text, f"not one line: {text!r}"
    assert "Traceback" not in text
    return text


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """Run the console entry point in this process; (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def assert_refused_in_one_line(code: int, stderr: str) -> str:
    lines = stderr.rstrip("\n").split("\n")  # not splitlines(): \x1e is no line break here
    assert code == 2, (code, stderr)
    assert len(lines) == 1 and lines[0].startswith("hpcbench: error: "), stderr
    return lines[0]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("fuzz")


# ------------------------------------------------------------------------------ site configs
_SCALARS = (
    st.none() | st.booleans() | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=True) | st.text(max_size=12)
)  # fmt: skip
_TREES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
_BASE_SITE = yaml.safe_load(SITE.read_text())


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, (*prefix, index))


_SITE_PATHS = [p for p in _paths(_BASE_SITE) if p]


@st.composite
def mutated_sites(draw: st.DrawFn) -> Any:
    """The shipped Apollo config with one to three values replaced, deleted or added."""
    data = copy.deepcopy(_BASE_SITE)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_SITE_PATHS))
        parent = data
        try:
            for key in path[:-1]:
                parent = parent[key]
            action = draw(st.sampled_from(["replace", "delete", "add"]))
            if action == "delete":
                del parent[path[-1]]
            elif action == "add" and isinstance(parent, dict):
                parent[draw(st.text(max_size=8))] = draw(_TREES)
            else:
                parent[path[-1]] = draw(_TREES)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced this path
    return data


def _check_site_text(scratch: Path, text: str) -> None:
    path = scratch / "site.yaml"
    path.write_text(text)
    try:
        load_site(path)
    except HpcbenchError as exc:
        message = one_line(exc)
        assert "site.yaml" in message, message  # where
        event("refused")
        return
    event("accepted")


@FUZZ
@given(mutated_sites())
def test_mutated_site_configs(scratch: Path, data: Any) -> None:
    _check_site_text(scratch, yaml.safe_dump(data, allow_unicode=True))


@FUZZ
@given(_TREES)
def test_arbitrary_yaml_as_a_site_config(scratch: Path, data: Any) -> None:
    _check_site_text(scratch, yaml.safe_dump(data, allow_unicode=True))


@FUZZ
@given(
    st.text(alphabet=st.sampled_from(list("ab:- \n\t{}[],&*!|>'\"%@`#?0123456789.")), max_size=80)
)
def test_yaml_syntax_soup_as_a_site_config(scratch: Path, text: str) -> None:
    _check_site_text(scratch, text)


@FUZZ
@given(st.binary(max_size=64))
def test_binary_site_config(scratch: Path, data: bytes) -> None:
    path = scratch / "site.yaml"
    path.write_bytes(data)
    try:
        load_site(path)
    except HpcbenchError as exc:
        one_line(exc)


# ------------------------------------------------------------------------------- plan syntax
_LAYOUT_TEXT = st.text(alphabet=st.sampled_from(list("0123456789,;-: x")), max_size=16) | st.text(
    max_size=10
)


@FUZZ
@given(gpus=_LAYOUT_TEXT | st.none(), cpus=_LAYOUT_TEXT | st.none())
# Found by the 3000-example run: "²".isdigit() is True but int("²") fails.
@example(gpus="0,²", cpus=None)
@example(gpus=None, cpus="0-²;3")
# Found by CI's 200 examples: a huge range expanded element by element never finished.
@example(gpus="0-99999999999", cpus=None)
@example(gpus=None, cpus="0-99999999999")
def test_plan_layout_syntax(gpus: str | None, cpus: str | None) -> None:
    """``--gpus "0,2;4,6"`` / ``--cpus "0-17;18-35"`` on the Apollo node (8 GPUs, 2 x 20 cores)."""
    argv = ["plan", "--site", str(SITE), "--json"]
    if gpus is not None:
        argv += ["--gpus", gpus]
    if cpus is not None:
        argv += ["--cpus", cpus]
    if gpus is not None or cpus is not None:
        argv.append("--accept-warnings")
    code, _, err = run_cli(argv)
    if code == 0:
        event("accepted")
        return
    line = assert_refused_in_one_line(code, err)
    assert "Traceback" not in err
    assert any(word in line for word in ("gpus", "cpus", "GPU", "CPU", "rank")), line
    event("refused")


_FLAG_VALUES = st.sampled_from(
    ["0", "1", "-1", "2", "3", "8", "64", "auto", "", " ", "x", "1.5", "1e9", "nan", "0,2;4,6",
     "0-17;18-35", "999999999999", "-", ";", "ü", "a\tb", "$(x)"]
)  # fmt: skip
# A command-line argument cannot hold a NUL byte (argv entries are C strings), and a path with
# a line break is echoed as given: arguments are drawn without both.
_ARG_TEXT = st.text(
    alphabet=st.characters(blacklist_characters="\x00\n\r", codec="utf-8"),
    max_size=8,
)
_PLAN_FLAGS = ["--ranks", "--gpus-per-rank", "--cores-per-rank", "--gpus", "--cpus", "--nodes"]
_SPEC_FLAGS = ["--batch-size", "--duration-s", "--num-batches", "--warmup-batches",
               "--prefetchers", "--queue-depth", "--barrier", "--barrier-timeout-s",
               "--precision", "--backend", "--model", "--option", "--telemetry-hz"]  # fmt: skip
_SWITCHES = ["--hwthreads", "--numa", "--accept-warnings", "--strict-binding", "--json"]


@st.composite
def command_lines(draw: st.DrawFn, command: str, flags: list[str]) -> list[str]:
    argv = [command, "--site", str(SITE)]
    for _ in range(draw(st.integers(0, 5))):
        flag = draw(st.sampled_from(flags + _SWITCHES))
        argv.append(flag)
        if flag not in _SWITCHES:
            argv.append(draw(_FLAG_VALUES | _ARG_TEXT))
    if draw(st.booleans()):
        argv.append(draw(st.sampled_from(["--bogus", "-Z", "--ranks=", "extra-arg", "--"])))
    return argv


@FUZZ
@given(command_lines("plan", _PLAN_FLAGS))
@example(["plan", "--site", str(SITE), "--ranks", "²"])
@example(["plan", "--site", str(SITE), "--gpus-per-rank", "²"])
def test_plan_command_lines(argv: list[str]) -> None:
    code, _, err = run_cli(argv)
    if code != 0:
        assert_refused_in_one_line(code, err)
    event("accepted" if code == 0 else "refused")


@FUZZ
@given(command_lines("render", _PLAN_FLAGS + _SPEC_FLAGS))
def test_render_command_lines(scratch: Path, argv: list[str]) -> None:
    here = os.getcwd()
    os.chdir(scratch)  # render creates its run directory under ./hpcbench-runs
    try:
        code, _, err = run_cli(argv)
    finally:
        os.chdir(here)
    if code != 0:
        assert_refused_in_one_line(code, err)
    event("accepted" if code == 0 else "refused")


@FUZZ
@given(
    st.sampled_from(["aggregate", "report", "topo", "archive", "check", "data", "sweep", "nope"]),
    st.lists(_FLAG_VALUES | _ARG_TEXT, max_size=3),
)
def test_other_command_lines(scratch: Path, command: str, args: list[str]) -> None:
    """Commands given paths and values that do not exist or do not parse."""
    here = os.getcwd()
    os.chdir(scratch)  # anything a command creates lands in the scratch folder
    try:
        code, _, err = run_cli([command, *args])
    finally:
        os.chdir(here)
    if command in ("archive", "data") and not args:
        assert code == 2 and err.startswith("Usage: hpcbench")  # a bare group shows its help
    elif code not in (0, 1):
        assert_refused_in_one_line(code, err)
    assert "Traceback" not in err
    event(f"exit {code}")


# ------------------------------------------------------------------------------ sweep specs
_SETTING_NAMES = ["backend", "model", "batch_size", "precision", "duration_s", "num_batches",
                  "warmup_batches", "barrier", "ranks", "gpus_per_rank", "gpus", "cpus",
                  "layout", "nodes", "options", "numa", "accept_warnings", "bogus"]  # fmt: skip
_GRID_VALUES = (
    _SCALARS | _FLAG_VALUES
    | st.dictionaries(st.text(max_size=6), _SCALARS, max_size=2)
    | st.lists(_SCALARS, max_size=2)
)  # fmt: skip


@st.composite
def sweep_specs(draw: st.DrawFn) -> Any:
    spec: dict[str, Any] = {"site": str(SITE), "grid": {}}
    for name in draw(st.lists(st.sampled_from(_SETTING_NAMES), min_size=0, max_size=3)):
        spec["grid"][name] = draw(st.lists(_GRID_VALUES, max_size=3) | _GRID_VALUES)
    for name in draw(st.lists(st.sampled_from(_SETTING_NAMES), max_size=2)):
        spec.setdefault("base", {})[name] = draw(_GRID_VALUES)
    if draw(st.booleans()):
        key = draw(st.sampled_from(["name", "max_parallel", "time_limit_min", "out", "extra"]))
        spec[key] = draw(_SCALARS)
    return spec


@FUZZ
@given(sweep_specs())
def test_sweep_specs(scratch: Path, data: Any) -> None:
    from hpcbench.slurm.sweep import load_sweep, plan_points

    path = scratch / "sweep.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    try:
        spec = load_sweep(path, out=scratch / "sweep-out")
        points = plan_points(spec)
    except HpcbenchError as exc:
        message = one_line(exc)
        assert "sweep.yaml" in message or "sweep point" in message, message
        event("refused")
        return
    assert points
    event("accepted")


# ------------------------------------------------------------------------------ YAML structure
_YAML_KEYS = ["name", "description", "grid", "base", "references", "defaults", "notes", "x"]


@st.composite
def yaml_structures(draw: st.DrawFn) -> str:
    """YAML text shaped to strain the loader: nesting depth, alias fan-out, integer digits and
    file size around the bounds (hpcbench.configfile), under a key the loaders know or not."""
    from hpcbench.configfile import MAX_FILE_BYTES

    lines = []
    levels = draw(st.integers(0, 10))
    fan = draw(st.integers(1, 12))
    if levels:
        lines += ["anchors:", "  - &a0 [lol, 1]"]
        lines += [f"  - &a{i} [{', '.join([f'*a{i - 1}'] * fan)}]" for i in range(1, levels + 1)]
    leaf = draw(st.sampled_from(["int", "alias", "text", "mapping"]))
    if leaf == "int":
        value = draw(st.sampled_from(["", "-", "0x", "0o", "+"])) + "7" * draw(st.integers(1, 400))
    elif leaf == "alias" and levels:
        value = f"*a{draw(st.integers(0, levels))}"
    elif leaf == "mapping":
        value = "{value: 1, tolerance_pct: 5}"
    else:
        value = "text"
    depth = draw(st.integers(0, 120))
    opening, closing = draw(st.sampled_from([("[", "]"), ("{a: ", "}")]))
    lines.append(f"{draw(st.sampled_from(_YAML_KEYS))}: {opening * depth}{value}{closing * depth}")
    padding = draw(st.sampled_from([0, 0, 0, 10_000, MAX_FILE_BYTES + 1]))
    return "\n".join(lines) + "\n" + ("#" * padding + "\n" if padding else "")


@FUZZ
@given(yaml_structures())
@example(
    "description:\n"
    + "\n".join(
        ["  - &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
        + [f"  - &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    )
    + "\n"
)  # the alias bomb of the issue
@example("name: " + "[" * 900 + "]" * 900 + "\n")
@example("defaults: " + "7" * 100_000 + "\n")
def test_yaml_structure(scratch: Path, text: str) -> None:
    """Site config, sweep spec and reference file loaders on the same text: accepted, or one
    line naming the file, short (an echoed value is an excerpt)."""
    from hpcbench.archive.references import load_references
    from hpcbench.configfile import MAX_MESSAGE_CHARS
    from hpcbench.slurm.sweep import load_sweep

    path = scratch / "structure.yaml"
    path.write_text(text)
    for load in (load_site, load_sweep, load_references):
        try:
            load(path)
        except HpcbenchError as exc:
            message = one_line(exc)
            assert "structure.yaml" in message and len(message) <= MAX_MESSAGE_CHARS, message
            event(f"{load.__name__}: refused")
            continue
        event(f"{load.__name__}: accepted")


# ------------------------------------------------------------------------------ rank files
# Root and timed-group attributes the readers rely on, plus one they do not know.
_RANK_ATTRS = ["schema_version", "rank", "world_size", "run_id", "launch_id", "host",
               "complete", "batch_size", "num_devices", "local_rank", "node", "pid",
               "flops_per_image", "tail_batches", "plan_json", "binding_json", "config_json",
               "slurm_json", "devices_json", "identity_json", "threads_json",
               "deadline_ns", "unknown"]  # fmt: skip
_TIMED_ATTRS = ["t_begin_ns", "t_finish_ns", "clock_step_ns"]
_COLUMNS = ["t_start_ns", "t_end_ns", "images", "device", "data_wait_ns"]
_INT64 = st.integers(-(2**63), 2**63 - 1)
_ATTR_VALUES = (
    _INT64 | st.booleans() | st.floats(allow_nan=True)
    | st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
    | st.sampled_from(["null", "{}", "[]", '{"cpus": [-1]}', '{"gpus": "x"}', "{not json"])
)  # fmt: skip
_COLUMN_DTYPES = ["int8", "int16", "int32", "int64", "uint64", "float64"]


@st.composite
def rank_file_edits(draw: st.DrawFn) -> list[tuple[str, Any]]:
    """1-3 edits of a finished rank file: attributes set or deleted, columns replaced or one
    of their rows set (to extremes as well as plausible values)."""
    edits: list[tuple[str, Any]] = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["attr", "del attr", "timed attr", "column", "row"]))
        if kind == "attr":
            edits.append((kind, (draw(st.sampled_from(_RANK_ATTRS)), draw(_ATTR_VALUES))))
        elif kind == "del attr":
            edits.append((kind, draw(st.sampled_from(_RANK_ATTRS))))
        elif kind == "timed attr":
            edits.append((kind, (draw(st.sampled_from(_TIMED_ATTRS)), draw(_INT64))))
        else:
            phase = draw(st.sampled_from(["timed", "warmup"]))
            name = draw(st.sampled_from(_COLUMNS))
            if kind == "column":
                dtype = draw(st.sampled_from(_COLUMN_DTYPES))
                values = draw(st.lists(_INT64, max_size=30))
                edits.append((kind, (phase, name, dtype, values)))
            else:
                edits.append((kind, (phase, name, draw(st.integers(0, 39)), draw(_INT64))))
    return edits


def _apply_edit(f: Any, kind: str, what: Any) -> None:
    import numpy as np

    if kind == "attr":
        f.attrs[what[0]] = what[1]
    elif kind == "del attr":
        if what in f.attrs:
            del f.attrs[what]
    elif kind == "timed attr":
        f["timed"].attrs[what[0]] = np.int64(what[1])
    elif kind == "column":
        phase, name, dtype, values = what
        del f[phase][name]
        info = np.iinfo(dtype) if dtype != "float64" else None
        data = np.asarray(
            values if info is None else [min(max(v, info.min), info.max) for v in values],
            dtype=dtype,
        )
        f[phase].create_dataset(name, data=data)
    else:
        phase, name, row, value = what
        dataset = f[phase][name]
        if row < dataset.shape[0] and dataset.dtype.kind == "f":
            dataset[row] = float(value)
        elif row < dataset.shape[0]:
            info = np.iinfo(dataset.dtype)
            dataset[row] = min(max(value, info.min), info.max)


@pytest.fixture(scope="module")
def rank_run(scratch: Path) -> Path:
    """A finished two-rank run (40 batches of 50 ms a rank) to copy and damage."""
    from tests.rankfiles import T0_NS, iteration_batches, write_rank

    run_dir = scratch / "rank-run"
    run_dir.mkdir()
    batches = iteration_batches(T0_NS, [50.0] * 40, num_devices=1, batch_size=8)
    for rank in (0, 1):
        write_rank(run_dir, rank, 2, batches, warmup=batches)
    return run_dir


@FUZZ
@given(rank_file_edits())
@example([("row", ("timed", "images", 0, -5))])
@example([("row", ("timed", "t_start_ns", 0, -(2**63)))])
@example([("attr", ("complete", "False"))])
@example([("timed attr", ("clock_step_ns", 3600 * 10**9))])
def test_rank_file_attributes_and_columns(
    scratch: Path, rank_run: Path, edits: list[tuple[str, Any]]
) -> None:
    """Damaged rank files: summarised with sane figures, or refused in one line naming the
    file; never another exception, never a negative or infinite throughput."""
    import math
    import shutil

    import h5py

    from hpcbench.aggregate import summarize_run
    from hpcbench.errors import MetricsError

    run_dir = scratch / "damaged-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.copytree(rank_run, run_dir)
    with h5py.File(run_dir / "rank-00001.h5", "r+") as f:
        for kind, what in edits:
            _apply_edit(f, kind, what)
    try:
        summary = summarize_run(run_dir, allow_partial=True)
    except MetricsError as exc:
        message = one_line(exc)
        assert str(run_dir) in message, message
        event("refused")
        return
    event("accepted")
    for key in ("common_window_img_s", "dlbs_adjusted_img_s"):
        value = summary["throughput"].get(key)
        assert value is None or (math.isfinite(value) and value >= 0), (key, value)
    for row in summary["ranks"]:
        own = row["own_img_s"]
        assert row["images"] >= 0 and (own is None or (math.isfinite(own) and own >= 0)), row
