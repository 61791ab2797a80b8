"""The root Typer app: global options, error handling, and the command tree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from pwmctl import __version__
from pwmctl.commands.data_export import FORMATS as FILE_FORMATS  # `data export --format parquet`
from pwmctl.console import EXIT_USAGE, State, default_home, stderr

try:  # typer carries its own copy of click since 0.2x
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover - older typer, on click itself
    from click.exceptions import NoArgsIsHelpError, UsageError  # type: ignore[assignment]

_GLOBAL_WITH_VALUE = ("--format", "--home")
_GLOBAL_FLAGS = ("-q", "--quiet", "-v", "-vv", "--verbose")


def hoist_global_options(args: list[str]) -> list[str]:
    """Let global options follow the command too (`pwmctl ls --format json`): move them to the front.
    `--format` with a file format (`data export --format parquet`) stays with its command."""
    front, rest, i = [], [], 0
    while i < len(args):
        a = args[i]
        if a == "--":
            rest.extend(args[i:])
            break
        if a == "--format" and i + 1 < len(args) and args[i + 1] in FILE_FORMATS:
            rest += args[i : i + 2]
            i += 2
            continue
        if a in _GLOBAL_WITH_VALUE and i + 1 < len(args):
            front += args[i : i + 2]
            i += 2
            continue
        name, _, value = a.partition("=")
        if (name in _GLOBAL_WITH_VALUE and value not in FILE_FORMATS) or a in _GLOBAL_FLAGS:
            front.append(a)
        else:
            rest.append(a)
        i += 1
    return front + rest


class PwmGroup(typer.core.TyperGroup):
    """Root group: global options anywhere on the line; user errors raised anywhere below, and usage
    errors (an option out of its range, an unknown option or command), become one line on stderr and
    exit code 2."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, hoist_global_options(list(args)))

    def invoke(self, ctx: typer.Context) -> Any:
        from pwm_core.errors import PwmError
        from registry.errors import RegistryError

        try:
            return super().invoke(ctx)
        except (PwmError, RegistryError) as e:
            stderr.print(f"[bold red]error:[/] {e}", soft_wrap=True, markup=True, highlight=False)
            raise typer.Exit(EXIT_USAGE) from None
        except NoArgsIsHelpError:
            raise  # a group called bare: its help, as click prints it
        except UsageError as e:
            hint = f"; see '{e.ctx.command_path} --help'" if e.ctx is not None else ""
            message = escape(e.format_message().rstrip("."))
            stderr.print(f"[bold red]error:[/] {message}{hint}", soft_wrap=True, highlight=False)
            raise typer.Exit(EXIT_USAGE) from None


app = typer.Typer(
    cls=PwmGroup,
    name="pwmctl",
    help="PWM toolkit: collect data, pre-train multi-task world models, extract and evaluate policies.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pwmctl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    home: Path = typer.Option(
        None, "--home", envvar="PWM_HOME", help="Registry folder (default ~/.pwm).", show_default=False
    ),
    format: str = typer.Option("human", "--format", help="human | json (one JSON document on stdout)."),
    verbose: int = typer.Option(0, "-v", "--verbose", count=True, help="More detail."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Only results and errors."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    if format not in ("human", "json"):
        raise typer.BadParameter(
            f"{format!r} is not one of human, json (or, for data export, {', '.join(FILE_FORMATS)})",
            param_hint="--format",
        )
    ctx.obj = State(home=(home or default_home()).expanduser(), format=format, verbosity=-1 if quiet else verbose)


def _register() -> None:
    from pwmctl.commands import (
        artifacts,
        collect,
        config,
        data,
        data_export,
        data_rechunk,
        evaluate,
        extract,
        finetune,
        hub,
        importing,
        plot,
        pretrain,
        quickstart,
        runs,
        shac,
        study,
        system,
    )

    app.command("quickstart", rich_help_panel="Start here")(quickstart.quickstart)
    app.command("collect", rich_help_panel="Data")(collect.collect)
    app.add_typer(data.app, name="data", rich_help_panel="Data")
    data.app.command("export")(data_export.export)
    data.app.command("rechunk")(data_rechunk.rechunk)
    app.command("pretrain", rich_help_panel="Training")(pretrain.pretrain)
    app.command("import-checkpoint", rich_help_panel="Training")(importing.import_checkpoint)
    app.command("extract", rich_help_panel="Training")(extract.extract)
    app.command("finetune", rich_help_panel="Training")(finetune.finetune)
    app.command("shac", rich_help_panel="Training")(shac.shac)
    app.command("eval", rich_help_panel="Evaluation")(evaluate.evaluate_cmd)
    app.command("plot", rich_help_panel="Evaluation")(plot.plot)
    app.add_typer(runs.app, name="runs", rich_help_panel="Training")
    for name, fn in (
        ("ls", artifacts.ls),
        ("show", artifacts.show),
        ("rm", artifacts.rm),
        ("verify", artifacts.verify),
    ):
        app.command(name, rich_help_panel="Artifacts")(fn)
    app.command("push", rich_help_panel="Sharing")(hub.push)
    app.command("pull", rich_help_panel="Sharing")(hub.pull)
    app.add_typer(config.app, name="config", rich_help_panel="System")
    app.command("tasks", rich_help_panel="System")(system.tasks)
    app.command("doctor", rich_help_panel="System")(system.doctor)
    app.add_typer(study.app, name="study", rich_help_panel="Research")


_register()


def main() -> None:
    app()
