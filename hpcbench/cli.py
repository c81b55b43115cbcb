"""The ``hpcbench`` command: a click group whose subcommands live in their own modules.

Subcommands are imported only when used, so ``hpcbench --help`` stays fast and a heavy
dependency of one command (torch, matplotlib) never slows down another.
Every :class:`~hpcbench.errors.HpcbenchError` becomes one line on stderr and its exit code.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from hpcbench import __version__
from hpcbench.errors import HpcbenchError

# name -> (module, attribute, one-line help). Keep sorted by the order a user meets them.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "topo": ("hpcbench.commands.topo", "topo", "Show a node's topology or write a site config."),
    "plan": ("hpcbench.commands.plan", "plan", "Place ranks on cores, GPUs and NUMA memory."),
    "run": ("hpcbench.commands.run", "run", "Run a benchmark on this machine; print the result."),
    "data": ("hpcbench.commands.data", "data", "Make or show a dataset of preprocessed tensors."),
    "render": (
        "hpcbench.commands.render",
        "render",
        "Write the sbatch script of a run (pure: never calls Slurm).",
    ),
    "submit": (
        "hpcbench.commands.submit",
        "submit",
        "Submit a run to Slurm, follow it and print its result.",
    ),
    "sweep": (
        "hpcbench.commands.sweep",
        "sweep",
        "Run a grid of benchmark points as one Slurm job array (or locally).",
    ),
    "explore": (
        "hpcbench.commands.explore",
        "explore",
        "Measure every sensible layout of a node, repeated, and say which is fastest.",
    ),
    "aggregate": (
        "hpcbench.commands.aggregate",
        "aggregate",
        "Merge a run's rank files into result.h5 and summary.json.",
    ),
    "report": (
        "hpcbench.commands.report",
        "report",
        "Compare runs in a table; draw timeline, throughput and latency plots.",
    ),
    "archive": (
        "hpcbench.commands.archive",
        "archive",
        "Store runs; list, compare, export and report across them.",
    ),
    "check": (
        "hpcbench.commands.check",
        "check",
        "Check a run or an archive against reference figures.",
    ),
}


class LazyGroup(click.Group):
    """A group that imports a subcommand's module on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module, attr, _ = entry
        command = getattr(importlib.import_module(module), attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{module}.{attr} is not a click command")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Use the short help from COMMANDS so that --help imports no subcommand module.
        rows = [(name, helptext) for name, (_, _, helptext) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hpcbench")
def cli() -> None:
    """Plan, launch and measure multi-process multi-GPU inference benchmarks on HPC nodes."""


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the CLI, turning hpcbench errors into one line."""
    try:
        result: Any = cli.main(args=argv, prog_name="hpcbench", standalone_mode=False)
    except HpcbenchError as error:
        click.echo(f"hpcbench: error: {error}", err=True)
        sys.exit(error.exit_code)
    except click.exceptions.Abort:
        click.echo("hpcbench: aborted", err=True)
        sys.exit(130)
    except click.ClickException as error:
        if type(error).__name__ == "NoArgsIsHelpError":  # click >= 8.2: a bare group
            error.show()
            sys.exit(2)
        # click's own usage errors (unknown option, bad choice): one line like every other
        # error (click would print usage and hint lines around it), naming the command.
        ctx = getattr(error, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        click.echo(f"hpcbench: error: {error.format_message()}{hint}", err=True)
        sys.exit(2)
    except click.exceptions.Exit as exit_:
        sys.exit(exit_.exit_code)
    except KeyboardInterrupt:
        click.echo("hpcbench: interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)
    # A command may return an exit status (e.g. `check` exits 1 on a regression).
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    main()
