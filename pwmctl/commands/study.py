"""`pwmctl study`: the paper's pedagogical experiments, run on CPU in minutes.

Each study prints its table, and writes a PNG figure and ``results.json`` into ``--out`` (default
``$PWM_HOME/studies/<study>-<YYYYmmdd-HHMMSS>/``, a new folder per run; studies are not registry
artifacts). ``--format json`` prints the results document instead of the table.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from pwm_core.errors import PwmError
from pwmctl.console import Progress, State, emit, info, render_table, state

app = typer.Typer(
    help="The paper's pedagogical studies: the ball-wall landscape (Figure 2) and policy-gradient "
    "variance / ESNR through a simulator vs world models (Figure 3).",
    no_args_is_help=True,
)

RESULTS = "results.json"


def parse_horizons(text: str) -> tuple[int, ...]:
    """``"1..50"`` (inclusive range), ``"1,2,4,8"``, or a mix (``"1..4,8,16"``) -> sorted unique horizons."""
    out: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        m = re.fullmatch(r"(\d+)\s*\.\.\s*(\d+)", part)
        if m and 1 <= int(m[1]) <= int(m[2]):
            out.update(range(int(m[1]), int(m[2]) + 1))
        elif part.isdigit() and int(part) >= 1:
            out.add(int(part))
        else:
            raise PwmError(f"--horizons: {part!r} is not a positive integer or a range like 1..50")
    return tuple(sorted(out))


def _out_dir(st: State, out: Path | None, name: str) -> Path:
    from pwm_core.studies.common import default_out_dir

    return (out or default_out_dir(st.home, name)).expanduser()


def _table(title: str, rows: list[dict[str, Any]]) -> Table:
    table = Table(title=title)
    for key in rows[0]:
        table.add_column(key, justify="left" if key == "model" else "right", no_wrap=key == "model")
    for row in rows:
        table.add_row(*[_fmt(v) for v in row.values()])
    return table


def _fmt(v: Any) -> str:
    if v is None:
        return "inf/nan"
    if isinstance(v, float):
        return f"{v:.3g}" if v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e4) else f"{v:.3f}"
    return str(v)


def _finish(st: State, results: dict[str, Any], out_dir: Path, figure: Path, table: Table) -> None:
    from pwm_core.studies.common import write_json

    results["files"] = {"figure": str(figure), "results": str(out_dir / RESULTS)}
    write_json(out_dir / RESULTS, results)

    def human() -> None:
        typer.echo(render_table(table))
        typer.echo(f"wrote {figure} and {out_dir / RESULTS} in {results['seconds']['total']:.0f} s")

    emit(st, results, human)


@app.command("ball-wall")
def ball_wall(
    ctx: typer.Context,
    seed: int = typer.Option(0, "--seed", help="Torch seed set before each model (the official script: 0)."),
    quick: bool = typer.Option(False, "--quick", help="Coarse grid and short training: seconds, for CI."),
    out: Path = typer.Option(
        None, "--out", "-o", help="Output folder \\[default: $PWM_HOME/studies/ball-wall-<time>]."
    ),
    landscape: str = typer.Option(
        "analytic",
        "--landscape",
        help="analytic (the official closed form) | sim (the Warp simulator: blocked balls bounce).",
    ),
    official_decoder_bug: bool = typer.Option(
        False,
        "--official-decoder-bug",
        help="Let the SimNorm read-out's gradients accumulate as the official script does (its SimNorm fit).",
    ),
) -> None:
    """Figure 2: fit an MLP and a SimNorm MLP to the discontinuous ball-wall landscape, descend from -pi.

    Models: 'MLP (Mish+LayerNorm)' is the official script's model that the paper's figure calls 'ReLU';
    'MLP (ReLU)' is an actual ReLU MLP; 'SimNorm MLP' is the paper's SimNorm model. About 10-40 s on CPU.
    """
    from pwm_core.studies.ball_wall import BallWallConfig, plot_ball_wall, run_ball_wall, table_rows

    st = state(ctx)
    if landscape not in ("analytic", "sim"):
        raise PwmError(f"--landscape must be analytic or sim, got {landscape!r}")
    overrides = {"seed": seed, "landscape": landscape, "official_decoder_bug": official_decoder_bug}
    cfg = BallWallConfig.quick(**overrides) if quick else BallWallConfig(**overrides)
    out_dir = _out_dir(st, out, "ball-wall")
    results = run_ball_wall(cfg, log=lambda m: info(st, m))
    figure = plot_ball_wall(results, out_dir / "ball_wall.png")
    land = results["landscape"]
    title = (
        f"ball-wall ({land['kind']} landscape): J* = {land['J_star']:.2f} at theta = {land['theta_star']:.3f}; "
        "gaps are true J - J*"
    )
    _finish(st, results, out_dir, figure, _table(title, table_rows(results)))


@app.command("gradient-variance")
def gradient_variance(
    ctx: typer.Context,
    horizons: str = typer.Option("1..50", "--horizons", help="Rollout horizons: a range 1..50 and/or a list 1,2,4."),
    samples: int = typer.Option(None, "--samples", min=2, help="Gradient samples per horizon \\[default: 100]."),
    wm_steps: int = typer.Option(None, "--wm-steps", min=1, help="Updates per world model \\[default: 500]."),
    seed: int = typer.Option(0, "--seed", help="Seeds the data, the models, the policy and the samples."),
    quick: bool = typer.Option(False, "--quick", help="Tiny data, models and sample counts: seconds, for CI."),
    out: Path = typer.Option(
        None, "--out", "-o", help="Output folder \\[default: $PWM_HOME/studies/gradient-variance-<time>]."
    ),
) -> None:
    """Figure 3: policy-gradient variance and ESNR vs horizon, through the differentiable double pendulum
    and through world models trained with horizons 3 and 16 (no synthetic boost on the true ESNR).

    Collects data, trains both world models (the bulk of the 2-4 minutes on CPU), then measures.
    """
    from pwm_core.studies.gradient_variance import (
        GradientVarianceConfig,
        plot_gradient_variance,
        run_gradient_variance,
        table_rows,
    )

    st = state(ctx)
    overrides: dict[str, Any] = {"seed": seed}
    if horizons != "1..50" or not quick:
        overrides["horizons"] = parse_horizons(horizons)
    for key, value in (("samples", samples), ("wm_steps", wm_steps)):
        if value is not None:
            overrides[key] = value
    cfg = GradientVarianceConfig.quick(**overrides) if quick else GradientVarianceConfig(**overrides)
    out_dir = _out_dir(st, out, "gradient-variance")
    with Progress(st, "world models", total=cfg.wm_steps * len(cfg.wm_horizons)) as bar:
        results = run_gradient_variance(cfg, log=bar.log, on_step=bar.update)
    figure = plot_gradient_variance(results, out_dir / "gradient_variance.png")
    title = (
        f"policy-gradient variance and ESNR vs horizon H (double pendulum, {cfg.samples} samples, "
        f"{results['policy_parameters']} policy parameters)"
    )
    _finish(st, results, out_dir, figure, _table(title, table_rows(results)))
