"""Hostile values: nothing a user or a site config passes as a value may run as a command.

Rendered job scripts are run with bash, with ``srun``/``sbatch``/``numactl`` replaced by stubs
on PATH that only record their arguments (the numactl-wrapper variant's srun also runs the
wrapper, as a real srun would); every hostile value tries to create a marker file, and no
marker may appear. Site-config ``setup`` lines are shell by design (the site config is trusted
like a shell script): a test shows they do run, so the trust model in docs/reliability.md is
the behaviour. Also here: owner-only modes of run directories and barrier state, and a scan of
the package for code-loading formats (pickle and friends).
"""

from __future__ import annotations

import ast
import os
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hpcbench.errors import HpcbenchError, UsageError
from hpcbench.plan.planner import PlanRequest, make_plan
from hpcbench.runtime.rundir import create_run_dir
from hpcbench.site import load_site
from hpcbench.slurm.render import ArrayPoint, JobRequest, render_array, render_job
from hpcbench.spec import RunSpec

REPO = Path(__file__).resolve().parent.parent
SITE = REPO / "site_configs" / "pcie-workstation-4gpu.yaml"
MARKER_NAME = "pwned"

# Each template tries to run `touch <marker>`; {m} is the marker's absolute path.
ATTACKS = (
    "$(touch {m})",
    "`touch {m}`",
    "'; touch {m}; '",
    '"; touch {m}; "',
    "x; touch {m}",
    "x && touch {m} #",
    "x | touch {m}",
    "${{IFS}}$(touch${{IFS}}{m})",
    "a b\t$(touch {m}) 'c' \"d\"",
    "\\'$(touch {m})\\'",
    ">{m}",
    "x\\ntouch {m}",
)

STUB_SRUN = r"""#!/bin/bash
printf '%s\0' "$@" >> "$STUB_LOG/srun.args"
printf '\n' >> "$STUB_LOG/srun.args"
# Like srun, run the command after the options; only the numactl-wrapper step is run here
# (the rank itself would need a cluster), so the wrapper's own quoting is exercised too.
while [[ $# -gt 0 && $1 == -* ]]; do shift; done
if [[ ${2:-} == *rank-wrapper.sh ]]; then
    SLURM_LOCALID=0 "$@"
fi
exit 0
"""
STUB_RECORD = r"""#!/bin/bash
printf '%s\0' "$@" >> "$STUB_LOG/{name}.args"
printf '\n' >> "$STUB_LOG/{name}.args"
exit 0
"""


@pytest.fixture
def stubs(tmp_path: Path) -> dict[str, str]:
    """A PATH whose srun, sbatch, numactl and python3 only record their arguments."""
    bin_dir = tmp_path / "stub-bin"
    log = tmp_path / "stub-log"
    bin_dir.mkdir()
    log.mkdir()
    (bin_dir / "srun").write_text(STUB_SRUN)
    for name in ("sbatch", "numactl", "python3"):
        (bin_dir / name).write_text(STUB_RECORD.replace("{name}", name))
    for path in bin_dir.iterdir():
        path.chmod(0o700)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "STUB_LOG": str(log), "HOME": str(tmp_path)}


def _site_with(tmp_path: Path, node_changes: dict[str, Any], slurm: dict[str, Any]) -> Path:
    data = yaml.safe_load(SITE.read_text())
    node = data["node_types"]["workstation"]
    node.update(node_changes)
    node["slurm"] = {**node.get("slurm", {}), **slurm}
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _run_script(
    script: str, workdir: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    path = workdir / "job.sbatch"
    path.write_text(script)
    return subprocess.run(
        ["bash", str(path)], cwd=workdir, env=env, capture_output=True, text=True, timeout=60
    )


def _markers(root: Path) -> list[Path]:
    # bin/ holds the python stub, whose path is the attack value itself (see _python_stub).
    return [p for p in root.rglob(f"*{MARKER_NAME}*") if not p.is_dir() and "bin" not in p.parts]


def _python_stub(path: str) -> None:
    """An interpreter at ``path`` that only records its arguments (the script's aggregate step)."""
    stub = Path(path)
    stub.parent.mkdir(parents=True, exist_ok=True)
    stub.write_text(STUB_RECORD.replace("{name}", "python"))
    stub.chmod(0o700)


def _render(tmp_path: Path, value: str, srun_binding: bool) -> tuple[str, str]:
    """A job script with ``value`` everywhere a value can go; returns (script, run_dir)."""
    site = _site_with(
        tmp_path,
        {"data_root": f"{tmp_path}/data {value}"},
        {"partition": value, "account": value, "qos": value, "srun_binding": srun_binding,
         "extra_sbatch": [f"--comment={value}"], "gres_name": value},
    )  # fmt: skip
    node_type = load_site(site).node_type(None)
    plan = make_plan(node_type.topology, PlanRequest(ranks=2, reserved_cores=(0, 32)))
    spec = RunSpec(data=f"{tmp_path}/shards {value}", stage_data=True)
    run_dir = f"{tmp_path}/runs/{value}"
    request = JobRequest(
        plan=plan,
        spec=spec,
        node_type=node_type,
        run_dir=run_dir,
        job_name=value,
        site_name=value,
        python=f"{tmp_path}/bin/{value}",
    )
    return render_job(request), run_dir


@pytest.mark.parametrize("srun_binding", [True, False], ids=["srun-binding", "numactl-wrapper"])
@pytest.mark.parametrize("attack", ATTACKS)
def test_rendered_job_runs_no_injected_command(
    tmp_path: Path, stubs: dict[str, str], attack: str, srun_binding: bool
) -> None:
    marker = tmp_path / MARKER_NAME
    value = attack.format(m=marker)
    script, run_dir = _render(tmp_path, value, srun_binding)
    _python_stub(f"{tmp_path}/bin/{value}")
    done = _run_script(script, tmp_path, stubs)
    assert _markers(tmp_path) == [], script
    assert done.returncode == 0, done.stderr
    # The aggregate step got the run directory as one argument too.
    aggregate = (Path(stubs["STUB_LOG"]) / "python.args").read_text().split("\0")
    assert aggregate[:4] == ["-m", "hpcbench", "aggregate", run_dir], aggregate
    # The value reached srun as one argument, unchanged: quoted, not dropped or split.
    calls = (Path(stubs["STUB_LOG"]) / "srun.args").read_text().split("\n")
    rank_step = [c.split("\0") for c in calls if "hpcbench.runtime.rank" in c]
    assert rank_step, calls
    assert f"{tmp_path}/bin/{value}" in rank_step[-1]
    assert run_dir in rank_step[-1]
    # The run directory the script made is the one named, literally.
    assert Path(run_dir, "logs").is_dir()
    if not srun_binding:
        numactl = (Path(stubs["STUB_LOG"]) / "numactl.args").read_text().split("\0")
        assert f"{tmp_path}/bin/{value}" in numactl


@pytest.mark.parametrize("where", ["job_name", "run_dir", "partition", "site_name"])
def test_line_breaks_in_values_are_refused(tmp_path: Path, where: str) -> None:
    """A newline would end a #SBATCH line or a command: refused, one line, before any file."""
    marker = tmp_path / MARKER_NAME
    value = f"x\ntouch {marker}"
    # With a setup line the site name is shown in a comment line of the script.
    site = _site_with(
        tmp_path, {"setup": ["true"]}, {"partition": value} if where == "partition" else {}
    )
    node_type = load_site(site).node_type(None)
    plan = make_plan(node_type.topology, PlanRequest(ranks=2, reserved_cores=(0, 32)))
    fields: dict[str, Any] = {"job_name": "ok", "run_dir": f"{tmp_path}/run"}
    if where == "job_name":
        fields["job_name"] = value
    elif where == "run_dir":
        fields["run_dir"] = f"{tmp_path}/{value}"
    elif where == "site_name":
        fields["site_name"] = value
    request = JobRequest(plan=plan, spec=RunSpec(), node_type=node_type, **fields)
    with pytest.raises(UsageError, match="line break") as caught:
        render_job(request)
    assert "\n" not in str(caught.value).replace("\\n", "")
    assert _markers(tmp_path) == []


def test_array_script_quotes_point_paths(tmp_path: Path, stubs: dict[str, str]) -> None:
    marker = tmp_path / MARKER_NAME
    node_type = load_site(SITE).node_type(None)
    plan = make_plan(node_type.topology, PlanRequest(ranks=2, reserved_cores=(0, 32)))
    points = []
    for index, attack in enumerate(ATTACKS[:-1]):
        point_dir = tmp_path / "sweep" / attack.format(m=marker)
        point_dir.mkdir(parents=True)
        script = point_dir / "job.sbatch"
        script.write_text(f"echo point {index} ran\n")
        points.append(ArrayPoint(index, str(script), plan))
    text = render_array(points, node_type, str(tmp_path / "sweep"), job_name=ATTACKS[0])
    for point in points:
        env = {**stubs, "SLURM_ARRAY_TASK_ID": str(point.index)}
        done = _run_script(text, tmp_path, env)
        assert done.returncode == 0, done.stderr
        assert done.stdout == f"point {point.index} ran\n"
    assert _markers(tmp_path) == []


def test_site_setup_lines_are_trusted_shell(tmp_path: Path, stubs: dict[str, str]) -> None:
    """The documented trust model: setup lines run as written (like a shell profile)."""
    marker = tmp_path / "setup-ran"
    site = _site_with(tmp_path, {"setup": [f"touch {marker}", "export OMP_PROC_BIND=close"]}, {})
    node_type = load_site(site).node_type(None)
    plan = make_plan(node_type.topology, PlanRequest(ranks=2, reserved_cores=(0, 32)))
    request = JobRequest(plan=plan, spec=RunSpec(), node_type=node_type, run_dir=f"{tmp_path}/r")
    done = _run_script(render_job(request), tmp_path, stubs)
    assert done.returncode == 0, done.stderr
    assert marker.exists()


# Fragments of shell syntax; a generated value is a few of them joined.
_FRAGMENTS = st.sampled_from(
    ["$(", ")", "`", "'", '"', ";", "&&", "||", "|", "&", " ", "\t", "\\", "#", "!", "*", "?",
     "~", "${IFS}", "$((1+1))", "<(", ">", "<", "{a,b}", "%", "=", "--", "-x", "ü", "$0", "$@",
     "touch MARKER", "touch${IFS}MARKER", "MARKER"]
)  # fmt: skip
SHELL_FUZZ_EXAMPLES = 60


@settings(
    max_examples=SHELL_FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(_FRAGMENTS, min_size=1, max_size=8).map("".join))
def test_generated_shell_fragments_never_run(
    tmp_path: Path, stubs: dict[str, str], fragments: str
) -> None:
    """Hypothesis joins shell fragments into values; the rendered script runs none of them."""
    # One fresh folder per example: hypothesis runs every example in the same tmp_path and may
    # try the same value twice (replaying a failure, or by chance).
    work = Path(tempfile.mkdtemp(prefix="w", dir=tmp_path))
    marker = work / MARKER_NAME
    value = fragments.replace("MARKER", str(marker))
    try:
        script, _ = _render(work, value, srun_binding=True)
    except HpcbenchError as exc:
        event(f"refused: {type(exc).__name__}")
        return  # refused with a message (e.g. a value the site schema rejects): nothing runs
    event("rendered and run")
    _run_script(script, work, stubs)
    assert _markers(work) == [], value


# --------------------------------------------------------------------------- owner-only
def test_run_directory_is_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    node_type = load_site(SITE).node_type(None)
    plan = make_plan(node_type.topology, PlanRequest(ranks=2, reserved_cores=(0, 32)))
    old = os.umask(0)
    try:
        run_dir, _ = create_run_dir(tmp_path / "a" / "run", plan=plan, spec=RunSpec(), argv=[])
    finally:
        os.umask(old)
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((run_dir / "logs").stat().st_mode) == 0o700
    for path in run_dir.iterdir():
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_job_script_is_owner_only(tmp_path: Path) -> None:
    from hpcbench.plan.planner import PlanRequest
    from hpcbench.slurm.inputs import JobSettings, job_inputs
    from hpcbench.slurm.submit import prepare
    from hpcbench.spec import SpecChoices

    inputs = job_inputs(JobSettings(site=SITE), PlanRequest(ranks=2), SpecChoices())
    _, script = prepare(inputs, tmp_path / "run", ["test"])
    assert stat.S_IMODE(script.stat().st_mode) & 0o077 == 0


# ------------------------------------------------------------------ no code-loading formats
# Modules and calls that execute code or rebuild arbitrary objects from a file's bytes.
_FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle",
                      "joblib"}  # fmt: skip
_FORBIDDEN_CALLS = {"eval", "exec", "torch.load", "yaml.unsafe_load", "yaml.full_load"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def code_loading_uses(source: str) -> list[str]:
    """Code-loading imports and calls in one module's source (``np.load`` must pass
    ``allow_pickle=False``; ``yaml.load`` must name a SafeLoader subclass).

    >>> code_loading_uses("import pickle\\nx = eval('1')")
    ['import pickle', 'eval()']
    >>> code_loading_uses("np.load(p, allow_pickle=False)")
    []
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name in _FORBIDDEN_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module in _FORBIDDEN_MODULES:
            found.append(f"from {node.module} import")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            keywords = {k.arg: k.value for k in node.keywords}
            if name in _FORBIDDEN_CALLS:
                found.append(f"{name}()")
            elif name.endswith(("np.load", "numpy.load")):
                flag = keywords.get("allow_pickle")
                if not (isinstance(flag, ast.Constant) and flag.value is False):
                    found.append(f"{name}() without allow_pickle=False")
            elif name == "yaml.load":
                loader = _dotted(keywords["Loader"]) if "Loader" in keywords else ""
                if loader in ("", "yaml.Loader", "yaml.UnsafeLoader", "yaml.FullLoader"):
                    found.append(f"yaml.load(Loader={loader or 'default'})")
    return found


def test_package_reads_no_code_loading_format() -> None:
    """Nothing in hpcbench unpickles, evals or torch.loads; run directories, archives, site
    configs and datasets are JSON, YAML (safe), HDF5 and .npy without pickles. submitit's own
    job folder is the one exception, and hpcbench never loads a result from it."""
    offenders = {}
    for path in sorted((REPO / "hpcbench").rglob("*.py")):
        uses = code_loading_uses(path.read_text())
        if uses:
            offenders[str(path.relative_to(REPO))] = uses
    assert offenders == {}
    # The Slurm side asks submitit only for job states (sacct), never for a pickled result.
    submit = (REPO / "hpcbench" / "slurm" / "submit.py").read_text()
    assert ".result(" not in submit and ".results(" not in submit


def test_site_yaml_python_tags_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / MARKER_NAME
    site = tmp_path / "site.yaml"
    site.write_text(
        SITE.read_text().replace(
            "name: pcie-workstation-4gpu",
            f"name: !!python/object/apply:os.system ['touch {marker}']",
        )
    )
    with pytest.raises(HpcbenchError):
        load_site(site)
    assert not marker.exists()


def test_hostile_node_type_names_cannot_reach_a_script(tmp_path: Path) -> None:
    data = yaml.safe_load(SITE.read_text())
    data["node_types"] = {"x$(touch pwned)": data["node_types"]["workstation"]}
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump(data))
    with pytest.raises(HpcbenchError):
        load_site(site)
