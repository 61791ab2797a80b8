"""Output conventions shared by every command.

Humans get Rich tables and progress on stderr; ``--format json`` prints exactly one JSON document
on stdout. User errors print one line on stderr and exit with code 2.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

stderr = Console(stderr=True, highlight=False)

EXIT_USAGE = 2


@dataclass
class State:
    """Global options, set by the root callback and read by every command."""

    home: Path
    format: str = "human"  # "human" | "json"
    verbosity: int = 0  # -1 quiet, 0 normal, 1+ verbose

    @property
    def json(self) -> bool:
        return self.format == "json"

    @property
    def quiet(self) -> bool:
        """No progress or info lines: -q, or --format json (unless -v asks for them on stderr)."""
        return self.verbosity < 0 or (self.json and self.verbosity <= 0)

    def registry(self):
        from registry import Registry

        return Registry(self.home)


def state(ctx: typer.Context) -> State:
    """The root context's State (commands may be nested in sub-apps)."""
    root = ctx.find_root()
    if not isinstance(root.obj, State):  # called without the root callback (tests of sub-apps)
        root.obj = State(home=default_home())
    return root.obj


def default_home() -> Path:
    return Path(os.environ.get("PWM_HOME") or Path.home() / ".pwm").expanduser()


def fail(message: str) -> typer.Exit:
    """Print one error line and return the exit to raise: ``raise fail("...")``."""
    stderr.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    return typer.Exit(EXIT_USAGE)


def info(st: State, message: str) -> None:
    """A human-facing line on stderr (silent with -q or --format json)."""
    if not st.quiet:
        stderr.print(message, soft_wrap=True)


def emit(st: State, document: Any, human: Callable[[], None] | None = None) -> None:
    """Print the result: one JSON document on stdout, or the human rendering on stderr/stdout."""
    if st.json:
        sys.stdout.write(json.dumps(document, indent=2, default=_json_default) + "\n")
    elif human is not None:
        human()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class Progress:
    """Progress for long loops: a Rich bar on a terminal, a plain line every few seconds otherwise
    (SLURM/CI logs), nothing with -q / --format json. ``update(advance, **fields)``.

    With a ``unit`` ("bytes", "episodes", ...) the plain lines are quieter: none before ``every_s`` has
    passed, so a short job prints just its final line; "bytes" shows sizes, speed and ETA. ``start``:
    what was done before (a resumed download), not counted in the speed."""

    def __init__(
        self,
        st: State,
        description: str,
        total: int | None,
        every_s: float = 10.0,
        unit: str | None = None,
        start: int = 0,
    ):
        self.enabled = not st.quiet
        self.tty = stderr.is_terminal
        self.description, self.total, self.every_s, self.unit = description, total, every_s, unit
        self.done, self.fields, self._t0 = start, {}, time.monotonic()
        self._start, self._last = start, (self._t0 if unit else 0.0)
        self._bar = None

    def __enter__(self) -> Progress:
        if self.enabled and self.tty:
            from rich.progress import BarColumn, DownloadColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress
            from rich.progress import TimeRemainingColumn, TransferSpeedColumn

            counts = [DownloadColumn(), TransferSpeedColumn()] if self.unit == "bytes" else [MofNCompleteColumn()]
            self._bar = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                *counts,
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[status]}"),
                console=stderr,
                refresh_per_second=4,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=self.total, completed=self.done, status="")
        return self

    def update(self, advance: int = 1, **fields: Any) -> None:
        self.done += advance
        self.fields.update(fields)
        if not self.enabled:
            return
        status = "  ".join(f"{k} {_fmt(v)}" for k, v in self.fields.items())
        if self._bar is not None:
            self._bar.update(self._task, advance=advance, status=status)
        elif time.monotonic() - self._last >= self.every_s or self.done == self.total:
            self._last = time.monotonic()
            stderr.print(
                f"{self.description} {self._counts()} [{time.monotonic() - self._t0:.0f}s] {status}".rstrip(),
                soft_wrap=True,
            )

    def _counts(self) -> str:
        if self.unit != "bytes":
            return f"{self.done}{f'/{self.total}' if self.total else ''}{f' {self.unit}' if self.unit else ''}"
        rate = (self.done - self._start) / max(time.monotonic() - self._t0, 1e-9)
        shown = f"{human_size(self.done)}{f' / {human_size(self.total)}' if self.total else ''}, {human_size(rate)}/s"
        if self.total and self.done < self.total and rate > 0:
            shown += f", ETA {_duration((self.total - self.done) / rate)}"
        return shown

    def set_total(self, total: int | None) -> None:
        self.total = total
        if self._bar is not None:
            self._bar.update(self._task, total=total)

    def log(self, message: str) -> None:
        if self.enabled:
            (self._bar.console if self._bar else stderr).print(message, soft_wrap=True)

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


class ByteProgress:
    """A download's ``progress(done, total)`` callback as a byte :class:`Progress` (sizes, speed, ETA; quiet
    plain lines off a terminal) that starts at the bytes a resumed download already had. A context manager."""

    def __init__(self, st: State, description: str) -> None:
        self.st, self.description, self.bar = st, description, None

    def __enter__(self) -> ByteProgress:
        return self

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = Progress(self.st, self.description, total, every_s=60, unit="bytes", start=done).__enter__()
        self.bar.update(done - self.bar.done)

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


class ProgressCallback:
    """Drives a :class:`Progress` from the training loop (a ``pwm_core.train.loop.Callback``): advances
    to the loop's position and shows the latest value of each of ``fields`` seen so far."""

    def __init__(self, bar: Progress, fields: tuple[str, ...] = (), rename: dict[str, str] | None = None) -> None:
        self.bar, self.fields, self.rename = bar, fields, rename or {}

    def on_start(self, state) -> None:
        self.bar.update(state.step - self.bar.done)

    def on_step(self, state) -> None:
        if state.total != self.bar.total:  # a time budget fitted the total
            self.bar.set_total(state.total)
        shown = {self.rename.get(k, k): state.metrics[k] for k in self.fields if k in state.metrics}
        self.bar.update(state.step - self.bar.done, **shown)

    def on_interrupt(self, state) -> None: ...

    def on_end(self, state) -> None: ...


def _duration(seconds: float) -> str:
    """3h05m, 4m10s, 12s."""
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"
    return str(v)


@contextmanager
def interrupts_as_keyboard_interrupt() -> Iterator[None]:
    """Treat SIGTERM and SIGHUP (a closed terminal) like Ctrl-C inside the block, so long jobs save their work."""
    import signal

    def _raise(signum, frame):
        raise KeyboardInterrupt

    signums = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None]
    previous = {s: signal.signal(s, _raise) for s in signums}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def render_table(table) -> str:
    """A Rich table as plain text at least 120 columns wide (tables print on stdout, logs on stderr)."""
    console = Console(width=max(120, shutil.get_terminal_size().columns), record=True, file=io.StringIO())
    console.print(table)
    return console.export_text().rstrip()
