"""The one training loop: ``Loop(step, ...).run()`` with callbacks, as SB3's ``learn()`` + callbacks.

Pre-training, extraction, fine-tuning and SHAC all run through it, from the CLI or a notebook alike.
The loop calls ``step()`` until ``done()``; after every step each callback sees the step's metrics
(and may add to them: validation, evaluation), in the order given. Cross-cutting behaviour lives in
callbacks, written once:

- :class:`Checkpoint`: every N steps and every T seconds of wall time, at an interruption and at the end;
- :class:`Every`: run a function every N steps (validation, evaluation) and merge its metrics;
- :class:`JsonlMetrics`, :class:`TensorBoardMetrics`, :class:`WandbMetrics`: live metrics sinks;
- :class:`RunStatus`: ``status.json`` in the run folder (state, step, pid, heartbeat) for ``pwmctl runs``.

Signals: inside :meth:`Loop.run`, SIGINT, SIGTERM and SIGHUP (a closed terminal or SSH session) ask the
loop to stop after the current step; the callbacks' ``on_interrupt`` then save the work (a consistent
state: never half an update). A second signal stops at once (KeyboardInterrupt).
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STOP_SIGNALS = tuple(s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGHUP")) if s is not None)
CHECKPOINT_EVERY_S = 600.0  # default wall-time checkpoint interval: a crash loses minutes, not hours


@dataclass
class LoopState:
    """What callbacks see: the step count, the metrics of the step just done, timing."""

    step: int  # steps done so far (after a resume: counting the earlier ones)
    total: int | None  # the planned number of steps (None: the loop ends on ``done()`` only)
    start_step: int  # the step the loop started from
    t0: float = field(default_factory=time.monotonic)  # monotonic time at the start of run()
    metrics: dict[str, float] = field(default_factory=dict)  # the last step's, plus what callbacks add
    stop_requested: int | None = None  # the signal number that asked the loop to stop
    finish: bool = False  # a callback ends the run early as if it were done (e.g. a time budget)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    @property
    def steps_per_s(self) -> float:
        return (self.step - self.start_step) / max(self.elapsed, 1e-9)


class Callback:
    """Hooks of the loop; override what you need. ``on_step`` may add entries to ``state.metrics``."""

    def on_start(self, state: LoopState) -> None: ...

    def on_step(self, state: LoopState) -> None: ...

    def on_interrupt(self, state: LoopState) -> None: ...

    def on_end(self, state: LoopState) -> None: ...


@dataclass
class LoopResult:
    state: LoopState
    interrupted: bool  # stopped by a signal (its checkpoint saved by the callbacks) before done()
    signal: int | None = None


class Loop:
    """Calls ``step()`` until ``done()`` (default: ``position() >= total``), running the callbacks.

    ``step`` returns a dict of float metrics; ``position`` returns the step count (it may advance by
    more than one per call, e.g. env steps); ``total`` is shown by progress callbacks.
    """

    def __init__(
        self,
        step: Callable[[], dict[str, float]],
        position: Callable[[], int],
        total: int | None,
        callbacks: Sequence[Callback] = (),
        done: Callable[[], bool] | None = None,
        handle_signals: bool = True,
        agree: Callable[[bool], bool] | None = None,
    ) -> None:
        """``agree(flag)``: under data parallelism, True on every rank when any rank's flag is True
        (:func:`pwm_core.train.distributed.any_rank`), so all ranks stop after the same step."""
        if done is None and total is None:
            raise ValueError("give the loop a total or a done() test")
        self.step, self.position, self.total = step, position, total
        self.callbacks = list(callbacks)
        self._done = done
        self.handle_signals, self.agree = handle_signals, agree

    def run(self) -> LoopResult:
        state = LoopState(step=self.position(), total=self.total, start_step=self.position())

        def done() -> bool:  # state.total may be lowered by a callback (TimeBudget)
            return state.finish or (self._done() if self._done is not None else self.position() >= (state.total or 0))

        with self._signals(state):
            for cb in self.callbacks:
                cb.on_start(state)
            while not done():
                if self._stopping(state):
                    break
                state.metrics = dict(self.step())
                state.step = self.position()
                for cb in self.callbacks:
                    cb.on_step(state)
            if state.stop_requested is not None and not done():
                for cb in self.callbacks:
                    cb.on_interrupt(state)
                return LoopResult(state, True, state.stop_requested)
            for cb in self.callbacks:
                cb.on_end(state)
        return LoopResult(state, False)

    def _stopping(self, state: LoopState) -> bool:
        asked = state.stop_requested is not None
        if self.agree is not None and self.agree(asked) and not asked:
            state.stop_requested = -1  # another rank was signalled
        return state.stop_requested is not None

    @contextmanager
    def _signals(self, state: LoopState) -> Iterator[None]:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            yield
            return

        def ask_to_stop(signum, frame):
            if state.stop_requested is not None:  # the second signal: stop now
                raise KeyboardInterrupt
            state.stop_requested = signum

        previous = {s: signal.signal(s, ask_to_stop) for s in STOP_SIGNALS}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


# ------------------------------------------------------------------------------------ callbacks
class Checkpoint(Callback):
    """``save()`` every ``every_steps`` steps (0: never by count), every ``every_s`` seconds of wall time
    (0: never by time), at an interruption and, with ``at_end``, when the loop finishes."""

    def __init__(
        self, save: Callable[[], None], every_steps: int = 0, every_s: float = CHECKPOINT_EVERY_S, at_end: bool = True
    ) -> None:
        self.save, self.every_steps, self.every_s, self.at_end = save, every_steps, every_s, at_end
        self._last = time.monotonic()
        self.saves = 0

    def on_start(self, state: LoopState) -> None:
        self._last = time.monotonic()

    def on_step(self, state: LoopState) -> None:
        by_count = self.every_steps and state.step % self.every_steps == 0
        by_time = self.every_s and time.monotonic() - self._last >= self.every_s
        if by_count or by_time:
            self._save()

    def on_interrupt(self, state: LoopState) -> None:
        self._save()

    def on_end(self, state: LoopState) -> None:
        if self.at_end:
            self._save()

    def _save(self) -> None:
        self.save()
        self.saves += 1
        self._last = time.monotonic()


class Every(Callback):
    """Run ``fn()`` every ``n`` steps (0: never) and, with ``at_end``, after the last step; its dict of
    metrics is merged into the step's (under ``prefix``) and passed to ``then`` (e.g. a log line)."""

    def __init__(
        self,
        n: int,
        fn: Callable[[], dict[str, float]],
        prefix: str = "",
        at_end: bool = True,
        then: Callable[[LoopState, dict[str, float]], None] | None = None,
    ) -> None:
        self.n, self.fn, self.prefix, self.at_end, self.then = n, fn, prefix, at_end, then
        self.last: dict[str, float] | None = None

    def on_step(self, state: LoopState) -> None:
        last_step = state.total is not None and state.step >= state.total
        if (self.n and state.step % self.n == 0) or (self.at_end and last_step):
            out = self.fn()
            self.last = out
            state.metrics.update({f"{self.prefix}{k}": v for k, v in out.items()})
            if self.then is not None:
                self.then(state, out)


class OnStep(Callback):
    """Call ``fn(state)`` after every step (e.g. a log line when a metric appears)."""

    def __init__(self, fn: Callable[[LoopState], None]) -> None:
        self.fn = fn

    def on_step(self, state: LoopState) -> None:
        self.fn(state)


class TimeBudget(Callback):
    """End the run after ``seconds`` of wall time, as if it were done (the usual end: final evaluation,
    checkpoint, publish). It fits the planned total to the budget, so schedules that run over the planned
    steps (extraction's lr decay) end with it: at ``fit_at`` fractions of the budget it measures the step
    rate (since the last fit; the first fit since ``warmup`` of the budget had passed, as the first steps
    are slow: allocations, first calls, compiling) and sets the total to the steps done plus what fits in
    the time left, never above the total first planned, calling ``set_total(n)`` on each change. When the
    steps reach the fitted total with more than ``slack`` of the budget left (a slow stretch, e.g. a
    compile or another job, made a fit too low), it fits again instead of ending: the budget is used.
    Put it first: callbacks that act "at the last step" then see the fitted total."""

    def __init__(
        self,
        seconds: float,
        set_total: Callable[[int], None] | None = None,
        fit_at: Sequence[float] = (0.1, 0.3, 0.6),
        warmup: float = 0.03,
        min_steps: int = 3,
        slack: float = 0.02,
    ) -> None:
        self.seconds, self.set_total, self.min_steps = seconds, set_total, min_steps
        self.fit_at, self.warmup, self.slack = sorted(fit_at), warmup, slack
        self.fitted: int | None = None  # the total after the last fit
        self.fits: list[int] = []  # every fitted total, in order
        self._t0 = time.monotonic()
        self._start = 0
        self._planned: int | None = None
        self._mark: tuple[float, int] | None = None  # (time, step) when the warm-up ended
        self._last: tuple[float, int] | None = None  # (time, step) of the last fit (the mark before the first)
        self._next = 0  # index of the next fit in fit_at

    def on_start(self, state: LoopState) -> None:
        self._t0, self._start, self._planned = time.monotonic(), state.step, state.total
        self._mark = self._last = None
        self._next = 0

    def on_step(self, state: LoopState) -> None:
        now = time.monotonic()
        elapsed = now - self._t0
        warm = elapsed >= self.warmup * self.seconds and state.step - self._start >= self.min_steps
        if self._mark is None and warm:
            self._mark = self._last = (now, state.step)
        if elapsed >= self.seconds:  # this is the last step: "at the end" callbacks after this one see it
            state.total, state.finish = state.step, True
            return
        if self._mark is None or self._last is None or self._planned is None:
            return
        due = self._next < len(self.fit_at) and elapsed >= self.fit_at[self._next] * self.seconds
        early = state.total is not None and state.step >= state.total and elapsed < (1 - self.slack) * self.seconds
        if early and state.step < self._planned and state.step - self._mark[1] >= self.min_steps:
            due = True
        if not due or state.step - self._mark[1] < self.min_steps:
            return
        while self._next < len(self.fit_at) and elapsed >= self.fit_at[self._next] * self.seconds:
            self._next += 1
        # the rate since the last fit: a slow stretch before it (compiling, a busy machine) is not carried on
        since = self._last if state.step - self._last[1] >= self.min_steps else self._mark
        rate = (state.step - since[1]) / max(now - since[0], 1e-9)
        fits = min(state.step + int(rate * (self.seconds - elapsed)), self._planned)
        fits = max(fits, state.step)
        self._last = (now, state.step)
        if fits != state.total:
            state.total = fits
            if self.set_total is not None:
                self.set_total(fits)
        self.fitted = state.total
        self.fits.append(state.total)


class KeepBest(Callback):
    """Keep the state with the best ``key`` seen so far (e.g. a real-env ``eval_return``): whenever a step's
    metrics hold a better value, ``snapshot()`` (a dict of tensors) is written to ``path`` (safetensors,
    atomically, with its step and score), so a resumed run keeps its best too. Attributes ``best``,
    ``best_step`` (None until the first score)."""

    def __init__(self, key: str, snapshot: Callable[[], dict], path: str | os.PathLike) -> None:
        self.key, self.snapshot, self.path = key, snapshot, Path(path)
        self.best: float | None = None
        self.best_step: int | None = None

    def on_start(self, state: LoopState) -> None:
        meta = read_best(self.path)
        if meta is not None and meta[0] <= state.step:
            self.best_step, self.best = meta
        elif meta is not None:  # found after the checkpoint this run resumes from: that future is redone
            self.path.unlink()

    def on_step(self, state: LoopState) -> None:
        value = state.metrics.get(self.key)
        if value is None or not math.isfinite(value) or (self.best is not None and value <= self.best):
            return
        from safetensors.torch import save

        from pwm_core.io import atomic_write

        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in self.snapshot().items()}
        data = save(tensors, metadata={"step": str(state.step), "score": repr(float(value)), "key": self.key})
        atomic_write(self.path, lambda f: f.write(data))
        self.best, self.best_step = float(value), state.step


def read_best(path: str | os.PathLike) -> tuple[int, float] | None:
    """(step, score) of a :class:`KeepBest` file, or None when there is none."""
    path = Path(path)
    if not path.exists():
        return None
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    return int(meta["step"]), float(meta["score"])


def load_best(path: str | os.PathLike) -> dict:
    """The tensors a :class:`KeepBest` saved."""
    from safetensors.torch import load_file

    return load_file(str(path))


class MetricsSink(Callback, ABC):
    """Writes the step's metrics every ``every`` steps (and the last step's) to some destination; a sink
    implements :meth:`write` (and :meth:`close` if it holds a resource)."""

    def __init__(self, every: int = 1, rate_key: str = "steps_per_s") -> None:
        self.every, self.rate_key = max(int(every), 1), rate_key

    def on_step(self, state: LoopState) -> None:
        last_step = state.total is not None and state.step >= state.total
        extra = any(k.startswith(("val/", "eval")) for k in state.metrics)  # never drop an evaluation
        if state.step % self.every == 0 or last_step or extra:
            self.write(state.step, {self.rate_key: state.steps_per_s, **state.metrics})

    @abstractmethod
    def write(self, step: int, metrics: dict[str, float]) -> None:
        """Record ``metrics`` (floats, plus the rate under ``rate_key``) for ``step``."""

    def close(self) -> None: ...

    def on_interrupt(self, state: LoopState) -> None:
        self.close()

    def on_end(self, state: LoopState) -> None:
        self.close()


class JsonlMetrics(MetricsSink):
    """One JSON line per logged step, ``{"<step_key>": n, ...}``, flushed at once (``tail -f`` shows it)."""

    def __init__(
        self, path: str | os.PathLike, every: int = 1, step_key: str = "step", rate_key: str = "steps_per_s"
    ) -> None:
        super().__init__(every, rate_key)
        self.path, self.step_key = Path(path), step_key

    def on_start(self, state: LoopState) -> None:
        """A resumed run drops the rows logged after its checkpoint: they are about to be redone."""
        if not self.path.exists():
            return
        rows = read_jsonl(self.path)
        keep = [r for r in rows if not isinstance(r.get(self.step_key), (int, float)) or r[self.step_key] <= state.step]
        if len(keep) != len(rows):
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
            os.replace(tmp, self.path)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        append_jsonl(self.path, {self.step_key: step, **metrics})


class TensorBoardMetrics(MetricsSink):
    """TensorBoard event files in ``logdir`` (``tensorboard --logdir $PWM_HOME/runs``); needs the
    ``tensorboard`` package (``pip install 'pwmctl[tensorboard]'``)."""

    def __init__(self, logdir: str | os.PathLike, every: int = 1, rate_key: str = "steps_per_s") -> None:
        super().__init__(every, rate_key)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # torch's writer needs the tensorboard package
            raise LoggerUnavailable(
                "TensorBoard logging needs the tensorboard package: "
                "pip install 'pwmctl[tensorboard]' (or pip install tensorboard)"
            ) from e
        self.writer = SummaryWriter(str(logdir), flush_secs=10)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbMetrics(MetricsSink):
    """Weights & Biases (``pip install wandb``); offline unless ``WANDB_MODE`` says otherwise, files in
    ``dir``. ``wandb sync`` uploads an offline run later."""

    def __init__(
        self, dir: str | os.PathLike, name: str, config: dict[str, Any], every: int = 1, rate_key: str = "steps_per_s"
    ) -> None:
        super().__init__(every, rate_key)
        try:
            import wandb
        except ImportError as e:
            raise LoggerUnavailable("W&B logging needs the wandb package: pip install wandb") from e
        os.environ.setdefault("WANDB_MODE", "offline")
        self.run = wandb.init(dir=str(dir), name=name, config=config, project="pwmctl", reinit=True)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(dict(metrics), step=step)

    def close(self) -> None:
        import wandb

        self.run.finish()
        # finish() returns before W&B's service process has written the run file (on a busy machine the
        # .wandb file held only its header when finish() returned); tearing the service down waits for it, so
        # the metrics are on disk when the sink closes. It also ends any other W&B run of this process.
        wandb.teardown()


class LoggerUnavailable(RuntimeError):
    """A requested metrics logger cannot run here (its package is missing)."""


LOGGERS = ("jsonl", "tensorboard", "wandb")


class RunStatus(Callback):
    """``status.json`` in the run folder: state (running | interrupted | finished), step, total, pid,
    the latest metrics and a heartbeat, rewritten at most every ``every_s`` seconds and at every event,
    so another terminal can watch the run (``pwmctl runs ls | show``)."""

    def __init__(self, run: str | os.PathLike, command: str, every_s: float = 5.0) -> None:
        self.path, self.command, self.every_s = Path(run) / STATUS, command, every_s
        self._last = 0.0
        self._seen: dict[str, float] = {}

    def on_start(self, state: LoopState) -> None:
        self._write(state, "running")

    def on_step(self, state: LoopState) -> None:
        self._seen.update(state.metrics)
        if time.monotonic() - self._last >= self.every_s:
            self._write(state, "running")

    def on_interrupt(self, state: LoopState) -> None:
        self._write(state, "interrupted")

    def on_end(self, state: LoopState) -> None:
        self._write(state, "finished")

    def _write(self, state: LoopState, status: str) -> None:
        self._last = time.monotonic()
        doc = {
            "command": self.command,
            "state": status,
            "step": state.step,
            "total": state.total,
            "pid": os.getpid(),
            "updated": time.time(),
            "elapsed_s": round(state.elapsed, 1),
            "steps_per_s": state.steps_per_s,
            "metrics": self._seen,
        }
        write_status(self.path.parent, doc)


def run_callbacks(
    run: str | os.PathLike,
    command: str,
    save: Callable[[], None] | None = None,
    *,
    checkpoint_every: int = 0,
    checkpoint_every_s: float = CHECKPOINT_EVERY_S,
    log_every: int = 1,
    loggers: Sequence[str] = ("jsonl",),
    name: str | None = None,
    config: dict | None = None,
    step_key: str = "step",
    rate_key: str = "steps_per_s",
) -> list[Callback]:
    """The callbacks every pwmctl run has: ``status.json``, the metrics sinks named in ``loggers``
    (jsonl always; tensorboard and wandb write under ``run``/tb and ``run``/wandb) and, given ``save``,
    checkpoints by steps, by wall time and at an interruption. Raises :class:`LoggerUnavailable` when a
    logger's package is missing, before anything runs."""
    run = Path(run)
    unknown = sorted(set(loggers) - set(LOGGERS))
    if unknown:
        raise LoggerUnavailable(f"unknown logger {', '.join(unknown)}: use {', '.join(LOGGERS)}")
    sinks: list[Callback] = [JsonlMetrics(run / METRICS, log_every, step_key, rate_key)]
    if "tensorboard" in loggers:
        sinks.append(TensorBoardMetrics(run / "tb", log_every, rate_key))
    if "wandb" in loggers:
        sinks.append(WandbMetrics(run / "wandb", name or run.name, config or {}, log_every, rate_key))
    out: list[Callback] = [*sinks, RunStatus(run, command)]
    if save is not None:
        out.append(Checkpoint(save, checkpoint_every, checkpoint_every_s))
    return out


# ------------------------------------------------------------------------------------- run files
STATUS = "status.json"
METRICS = "metrics.jsonl"


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    """Append one JSON line and flush it (a reader sees whole lines as they come)."""
    with open(path, "a") as f:
        f.write(json.dumps(row, default=_plain) + "\n")
        f.flush()


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Every whole line; a torn last line (a writer killed mid-line) is skipped."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def write_status(run: str | os.PathLike, doc: dict) -> None:
    """Replace ``status.json`` atomically (a reader never sees half a file)."""
    path = Path(run) / STATUS
    tmp = path.with_name(f".{STATUS}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, default=_plain))
    os.replace(tmp, path)


def read_status(run: str | os.PathLike) -> dict | None:
    try:
        return json.loads((Path(run) / STATUS).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _plain(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")
